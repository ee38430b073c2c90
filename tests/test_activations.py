"""Tests of bncourse.lab.activations: hooks, summaries, the training tracker."""

import numpy as np
import pytest
import torch
from torch import nn

from bncourse.lab.activations import (
    ActivationRecorder,
    PercentileTracker,
    drift_summary,
    layer_statistics,
    record_layers,
    saturation_fraction,
)


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def test_recorder_captures_inputs_and_outputs_of_each_module():
    net = _net()
    x = torch.randn(7, 4)
    watched = {"tanh": net[1], "relu": net[3]}
    with ActivationRecorder(watched, what="input") as rec_in, ActivationRecorder(watched, what="output") as rec_out:
        net(x)
        net(x[:2])
    z1 = net[0](x)
    z2 = net[2](torch.tanh(z1))
    assert [t.shape for t in rec_in.records["tanh"]] == [(7, 6), (2, 6)]
    torch.testing.assert_close(rec_in.records["tanh"][0], z1)
    torch.testing.assert_close(rec_out.records["tanh"][0], torch.tanh(z1))
    torch.testing.assert_close(rec_in.records["relu"][0], z2)
    torch.testing.assert_close(rec_out.records["relu"][0], torch.relu(z2))
    # Recordings are detached copies: they neither carry autograd history nor alias the model's tensors.
    assert not rec_in.records["tanh"][0].requires_grad


def test_recorder_removes_hooks_on_exit_and_clear_keeps_them():
    net = _net()
    rec = ActivationRecorder({"tanh": net[1]})
    with rec:
        net(torch.randn(3, 4))
        rec.clear()
        net(torch.randn(2, 4))
    assert len(rec.records["tanh"]) == 1
    net(torch.randn(2, 4))  # after exit, nothing more is recorded
    assert len(rec.records["tanh"]) == 1
    assert len(net[1]._forward_hooks) == 0


def test_recorder_rejects_bad_arguments():
    net = _net()
    with pytest.raises(ValueError, match="non-empty mapping"):
        ActivationRecorder({})
    with pytest.raises(ValueError, match="nn.Module"):
        ActivationRecorder({"a": "not a module"})
    with pytest.raises(ValueError, match="what='input' or 'output'"):
        ActivationRecorder({"a": net[1]}, what="grad")


def test_record_layers_restores_mode_and_bn_buffers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh())
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(16, 4) * 3 + 1
    out = record_layers(net, x, {"bn": net[1], "act": net[2]}, what="output", train_mode=True)
    # Training-mode BN normalizes with this batch: mean 0, biased variance ~1 per channel.
    torch.testing.assert_close(out["bn"].mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["bn"].var(0, unbiased=False), torch.ones(6), atol=1e-3, rtol=0)
    assert net.training
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=f"{k} changed")
    assert list(out) == ["bn", "act"]


def test_record_layers_eval_default_and_foreign_module():
    net = _net()
    x = torch.randn(5, 4)
    out = record_layers(net, x, {"z": net[1]})
    torch.testing.assert_close(out["z"], net[0](x))
    with pytest.raises(ValueError, match="not in it"):
        record_layers(net, x, {"z": nn.Tanh()})
    with pytest.raises(ValueError, match="torch.Tensor"):
        record_layers(net, np.zeros((5, 4)), {"z": net[1]})


def test_layer_statistics_matches_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 4))
    b = torch.tensor(rng.normal(2.0, 3.0, size=(30, 2)))
    st = layer_statistics({"a": a, "b": b}, q=(10, 50, 90))
    assert list(st["names"]) == ["a", "b"]
    np.testing.assert_allclose(st["percentiles"][0], np.percentile(a, [10, 50, 90]))
    np.testing.assert_allclose(st["percentiles"][1], np.percentile(b.numpy(), [10, 50, 90]))
    np.testing.assert_allclose(st["std"], [a.std(), b.numpy().std()])
    np.testing.assert_allclose(st["mean"], [a.mean(), b.numpy().mean()])
    with pytest.raises(ValueError, match="percentiles in \\[0, 100\\]"):
        layer_statistics({"a": a}, q=(50, 101))
    with pytest.raises(ValueError, match="empty"):
        layer_statistics({})


def test_saturation_fraction_counts_flat_units():
    z = torch.tensor([0.0, 0.5, -1.0, 3.0, -4.0, 10.0])
    # |tanh| > 0.99 beyond |z| > atanh(0.99) ~ 2.65: the last three.
    assert saturation_fraction(z, "tanh") == pytest.approx(3 / 6)
    # sigmoid within 0.01 of 0 or 1 beyond |z| > log(99) ~ 4.6: only 10.
    assert saturation_fraction(z, "sigmoid") == pytest.approx(1 / 6)
    assert saturation_fraction(np.array([1e4, -1e4]), "sigmoid") == 1.0  # no overflow
    with pytest.raises(ValueError, match="'tanh' or 'sigmoid'"):
        saturation_fraction(z, "relu")
    with pytest.raises(ValueError, match="tol"):
        saturation_fraction(z, "tanh", tol=0.0)


def test_percentile_tracker_records_every_k_steps_per_unit():
    net = _net()
    probe = torch.randn(40, 4)
    tracker = PercentileTracker(net[1], probe, every=2, q=(15, 50, 85))
    for step in range(5):
        tracker(step, net)
        with torch.no_grad():
            net[0].weight.mul_(1.5)  # widen the pre-activations between measurements
    assert tracker.steps == [0, 2, 4]
    p = tracker.percentiles()
    assert p.shape == (3, 6, 3)
    # The weight was scaled after every step, so the step-4 measurement saw W0 * 1.5**4,
    # and the weight is now W0 * 1.5**5; the bias never changed.
    with torch.no_grad():
        z4 = probe @ (net[0].weight / 1.5).T + net[0].bias
    np.testing.assert_allclose(p[-1], np.percentile(z4.numpy(), [15, 50, 85], axis=0).T, rtol=1e-5, atol=1e-6)
    # A bias shifts percentiles but not their spread, so every spread grew by exactly 1.5**4.
    d = drift_summary(p, (15, 50, 85))
    np.testing.assert_allclose(d["spread_ratio"], 1.5**4, rtol=1e-5)


def test_percentile_tracker_rejects_bad_arguments():
    net = _net()
    with pytest.raises(ValueError, match="positive int"):
        PercentileTracker(net[1], torch.randn(3, 4), every=0)
    with pytest.raises(ValueError, match="no measurement|none"):
        PercentileTracker(net[1], torch.randn(3, 4)).percentiles()


def test_drift_summary_on_known_numbers():
    # Two steps, two units, levels (15, 50, 85).
    p = np.array([
        [[-1.0, 0.0, 1.0], [0.0, 1.0, 4.0]],
        [[-2.0, 1.0, 2.0], [0.0, 1.0, 4.0]],
    ])
    d = drift_summary(p, (15, 50, 85))
    np.testing.assert_allclose(d["spread0"], [2.0, 4.0])
    np.testing.assert_allclose(d["median_shift"], [0.5, 0.0])
    np.testing.assert_allclose(d["spread_ratio"], [2.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        drift_summary(p[:1], (15, 50, 85))
    with pytest.raises(ValueError, match="containing 50"):
        drift_summary(p, (15, 60, 85))
    with pytest.raises(ValueError, match="constant unit"):
        drift_summary(np.zeros((2, 1, 3)), (15, 50, 85))
