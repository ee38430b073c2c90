"""The hidden cases' expected values agree with PyTorch, computed independently here."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from bncourse.functional import fold_batchnorm_arrays  # noqa: E402
from bncourse.grading.exercises import get_exercise  # noqa: E402
from bncourse.grading.references import (GRAPH_NODES, batchnorm_graph_gradients,  # noqa: E402
                                         running_stats_update)
from bncourse.grading.spec import Var  # noqa: E402

SEEDS = (0, 1, 2)


def _t(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def _close(got, want, rtol=1e-9, atol=1e-9):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=rtol, atol=atol)


def test_graph_gradients_match_autograd():
    rng = np.random.default_rng(0)
    x, dout = rng.normal(size=(7, 4)), rng.normal(size=(7, 4))
    gamma, beta, eps = rng.normal(size=4), rng.normal(size=4), 1e-3
    nodes = {"x": _t(x).requires_grad_(), "gamma": _t(gamma).requires_grad_(),
             "beta": _t(beta).requires_grad_()}
    nodes["mu"] = nodes["x"].mean(0)
    nodes["xc"] = nodes["x"] - nodes["mu"]
    nodes["var"] = (nodes["xc"] ** 2).mean(0)
    nodes["std"] = torch.sqrt(nodes["var"] + eps)
    nodes["istd"] = 1 / nodes["std"]
    nodes["xhat"] = nodes["xc"] * nodes["istd"]
    for v in nodes.values():
        v.retain_grad()
    (nodes["gamma"] * nodes["xhat"] + nodes["beta"]).backward(_t(dout))
    ours = batchnorm_graph_gradients(dout, x, gamma, beta, eps)
    assert set(ours) == set(GRAPH_NODES)
    for name in GRAPH_NODES:
        _close(ours[name], nodes[name].grad.numpy())


def test_running_stats_match_torch():
    rng = np.random.default_rng(1)
    layer = torch.nn.BatchNorm1d(3, momentum=0.3, dtype=torch.float64)
    mean, var = np.zeros(3), np.ones(3)
    for _ in range(3):
        x = rng.normal(2.0, 3.0, size=(6, 3))
        layer(_t(x))
        mean, var = running_stats_update(mean, var, x, 0.3)
    _close(mean, layer.running_mean.numpy())
    _close(var, layer.running_var.numpy())


def test_fold_matches_linear_then_batchnorm_in_torch():
    rng = np.random.default_rng(2)
    linear = torch.nn.Linear(5, 3, dtype=torch.float64)
    bn = torch.nn.BatchNorm1d(3, eps=1e-3, dtype=torch.float64).eval()
    with torch.no_grad():
        bn.running_mean.copy_(_t(rng.normal(size=3)))
        bn.running_var.copy_(_t(rng.uniform(0.5, 2, size=3)))
        bn.weight.copy_(_t(rng.normal(size=3)))
        bn.bias.copy_(_t(rng.normal(size=3)))
        x = _t(rng.normal(size=(8, 5)))
        expected = bn(linear(x)).numpy()
    w, b = fold_batchnorm_arrays(linear.weight.detach().numpy(), linear.bias.detach().numpy(),
                                 bn.running_mean.numpy(), bn.running_var.numpy(),
                                 bn.weight.detach().numpy(), bn.bias.detach().numpy(), eps=1e-3)
    _close(x.numpy() @ w.T + b, expected)


def _inputs(grader, ex_id, seed):
    """(case, list of input arrays and scalars of its first call) for each hidden case."""
    for case in grader.cases_for(get_exercise(ex_id), seed=seed):
        step = case.steps[0] if case.steps[0].op == "call" and case.steps[0].target[0].islower() else None
        yield case, step


@pytest.mark.parametrize("seed", SEEDS)
def test_forward_cases_match_torch(grader, seed):
    """Exercises 1, 5 and 6: every expected output equals torch's functional version."""
    for ex_id, fn in (("ex01", "batchnorm_forward"), ("ex05", "spatial_batchnorm_forward"),
                      ("ex06", None)):
        for case, step in _inputs(grader, ex_id, seed):
            args = [a for a in step.args if not isinstance(a, Var)]
            eps = args[3] if fn == "batchnorm_forward" and len(args) > 3 else 1e-5
            if step.target in ("batchnorm_forward", "spatial_batchnorm_forward"):
                x, gamma, beta = (_t(a) for a in args[:3])
                want = F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps)
                got = next(e for name, e in case.expected.items() if name.startswith("out")).value
            elif step.target == "layernorm_forward":
                x, gamma, beta = (_t(a) for a in args[:3])
                want = F.layer_norm(x, tuple(x.shape[1:]), gamma, beta)
                got = case.expected["out"].value
            elif step.target == "groupnorm_forward":
                x, groups, gamma, beta = _t(args[0]), args[1], _t(args[2]), _t(args[3])
                want = F.group_norm(x, groups, gamma, beta)
                got = case.expected["out"].value
            else:
                continue
            _close(got, want.numpy(), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("seed", SEEDS)
def test_backward_cases_match_autograd(grader, seed):
    """Exercises 4 and 5: dx, dgamma, dbeta equal torch autograd through batch_norm."""
    for ex_id in ("ex04", "ex05"):
        for case, step in _inputs(grader, ex_id, seed):
            if ex_id == "ex04":
                dout, x_hat, inv_std, gamma = step.args
                # Rebuild an input with exactly this x_hat and inv_std: x = x_hat / inv_std.
                x = _t(x_hat / inv_std).requires_grad_()
                eps = 0.0
            else:
                if step.target != "spatial_batchnorm_backward":
                    continue
                dout, x_np, gamma = step.args
                x, eps = _t(x_np).requires_grad_(), 1e-5
            g = _t(gamma).requires_grad_()
            b = torch.zeros_like(g, requires_grad=True)
            if ex_id == "ex04":
                # x_hat / inv_std has mean 0 and variance var(x_hat) / inv_std^2 = var_orig,
                # so batch norm of it with eps = 1/inv_std^2 - var_orig reproduces the forward.
                var = (x.detach() ** 2).mean(0)
                eps_t = 1.0 / _t(inv_std) ** 2 - var
                out = g * (x - x.mean(0)) / torch.sqrt(((x - x.mean(0)) ** 2).mean(0) + eps_t) + b
            else:
                out = F.batch_norm(x, None, None, g, b, training=True, eps=eps)
            out.backward(_t(dout))
            tol = dict(rtol=1e-5, atol=1e-5) if np.asarray(gamma).dtype == np.float32 else dict(rtol=1e-7, atol=1e-8)
            checked = 0
            for name, want in (("dx", x.grad), ("dgamma", g.grad), ("dbeta", b.grad)):
                if name in case.expected:  # ex04 judges dx and (dgamma, dbeta) in separate cases
                    _close(case.expected[name].value, want.numpy(), **tol)
                    checked += 1
            assert checked, case.name


@pytest.mark.parametrize("seed", SEEDS)
def test_fold_and_eval_cases_match_torch(grader, seed):
    for case, step in _inputs(grader, "ex08", seed):
        weight, bias, mean, var, gamma, beta, *rest = step.args
        eps = rest[0] if rest else 1e-5
        x = _t(np.random.default_rng(seed).normal(size=(4, weight.shape[1])))
        with torch.no_grad():
            y = x @ _t(weight).T + (_t(bias) if bias is not None else 0)
            want = F.batch_norm(y, _t(mean), _t(var), _t(gamma), _t(beta), training=False, eps=eps)
        w, b = ("weight", "bias") if "weight" in case.expected else ("weight1", "bias1")  # fold twice: the first
        got = x.numpy() @ case.expected[w].value.T + case.expected[b].value
        _close(got, want.numpy(), rtol=1e-7, atol=1e-7)
    for case, step in _inputs(grader, "ex02", seed):
        if step.target != "batchnorm_eval":
            continue
        x, mean, var, gamma, beta = (_t(a) for a in step.args)
        want = F.batch_norm(x, mean, var, gamma, beta, training=False)
        _close(case.expected["out"].value, want.numpy(), rtol=1e-7, atol=1e-7)


def test_merged_moments_match_torch_on_the_concatenated_data():
    from bncourse.grading.references import merge_moments

    rng = np.random.default_rng(0)
    chunks = [rng.normal(loc, 1.0, size=(n, 3)) for loc, n in ((0.0, 0), (5.0, 1), (-2.0, 700), (1e3, 4), (0.0, 0))]
    counts = np.array([len(c) for c in chunks])
    means = np.array([c.mean(axis=0) if len(c) else np.zeros(3) for c in chunks])
    m2s = np.array([((c - m) ** 2).sum(axis=0) for c, m in zip(chunks, means)])
    mean, var = merge_moments(counts, means, m2s)
    everything = _t(np.concatenate(chunks))
    _close(mean, everything.mean(dim=0), rtol=1e-12)
    _close(var, everything.var(dim=0, unbiased=False), rtol=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
def test_rmsnorm_cases_match_torch(grader, seed):
    for case in grader.cases_for(get_exercise("ex12"), seed=seed):
        step = case.steps[0]
        if step.target == "rmsnorm_forward":
            x, weight, eps = step.args
            want = F.rms_norm(_t(x), weight.shape, _t(weight), eps=eps).numpy()
            _close(case.expected["out"].value, want, rtol=1e-10, atol=1e-10)
        else:
            dout, x, weight, eps = step.args
            xt, wt = _t(x).requires_grad_(), _t(weight).requires_grad_()
            F.rms_norm(xt, weight.shape, wt, eps=eps).backward(_t(dout))
            for name, grad in (("dx", xt.grad), ("dweight", wt.grad)):
                if name in case.expected:
                    _close(case.expected[name].value, grad.numpy(), rtol=1e-8, atol=1e-8)
