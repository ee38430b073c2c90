"""bncourse.lab.recording's shared mechanism: record_activations, ProbeRecorder, and the two
percentile callbacks (recording.PercentileRecorder, activations.PercentileTracker) being one."""

import numpy as np
import pytest
import torch
from torch import nn

from bncourse.lab.activations import PercentileTracker
from bncourse.lab.data import load_digits_split
from bncourse.lab.models import activation_modules, mlp
from bncourse.lab.recording import PercentileRecorder, ProbeRecorder, record_activations, record_layers
from bncourse.lab.training import train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return load_digits_split()


def test_record_activations_leaves_no_trace(data):
    model = mlp(hidden=(8, 6), norm="bn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    act = activation_modules(model)[-1]
    z = record_activations(model, act, data.x_test, train_mode=True)
    assert z.shape == (len(data.x_test), 6)
    # In training mode the input of the sigmoid is batch-normalized: mean ~0, std ~1 per unit (gamma=1, beta=0).
    assert torch.allclose(z.mean(0), torch.zeros(6), atol=1e-4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training
    # the output of the whole model is the model's output
    torch.testing.assert_close(record_activations(model, model, data.x_test, what="output"),
                               model.eval()(data.x_test))
    with pytest.raises(ValueError, match="submodule"):
        record_activations(model, torch.nn.Sigmoid(), data.x_test)
    with pytest.raises(ValueError, match="'input' or 'output'"):
        record_activations(model, act, data.x_test, what="grad")


def test_record_layers_rejects_a_module_the_forward_never_calls():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.unused = nn.Linear(4, 3), nn.Tanh()

        def forward(self, x):
            return self.fc(x)

    net = Net()
    with pytest.raises(ValueError, match="'unused' did not"):
        record_layers(net, torch.randn(5, 4), {"unused": net.unused})


class _Means(ProbeRecorder):
    def __init__(self, module, probe, every):
        super().__init__(module, probe, every, what="output", train_mode=False)
        self.kept = []

    def _keep(self, a):
        self.kept.append(a.mean(0))


def test_probe_recorder_records_every_k_steps_and_hands_the_tensor_to_keep():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train()
    probe = torch.randn(10, 4) + 2
    rec = _Means(net[1], probe, every=3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for step in range(7):
        rec(step, net)
    assert rec.steps == [0, 3, 6]
    # eval mode with fresh running statistics (mean 0, var 1): BN's output is its input
    torch.testing.assert_close(rec.kept[0], net[0](probe).mean(0).detach(), atol=1e-4, rtol=1e-4)
    assert net.training and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    with pytest.raises(NotImplementedError):
        ProbeRecorder(net[1], probe, 1)(0, net)
    for bad in (dict(every=0), dict(probe=torch.randn(1, 4)), dict(what="grad"), dict(module="net")):
        kwargs = dict(module=net[1], probe=probe, every=1) | bad
        with pytest.raises(ValueError):
            ProbeRecorder(kwargs.pop("module"), kwargs.pop("probe"), kwargs.pop("every"), **kwargs)


def test_percentile_tracker_is_the_recorder_in_eval_mode(data):
    model = mlp(hidden=(6, 5), norm="bn", seed=0)
    tracker = PercentileTracker(model.act2, data.x_test, every=4)
    recorder = PercentileRecorder(model.act2, data.x_test, every=4, train_mode=False)
    train(model, data, steps=8, eval_every=4, on_step=lambda s, m: (tracker(s, m), recorder(s, m)))
    assert tracker.steps == recorder.steps == [0, 4, 8]
    np.testing.assert_array_equal(tracker.percentiles(), recorder.values)
    # and differs from the default training-mode recording once the running statistics are used
    in_train_mode = PercentileRecorder(model.act2, data.x_test, every=1)
    in_train_mode(0, model)
    assert not np.allclose(in_train_mode.values[0], recorder.values[-1])
