"""``check`` and the grade agree: each mistake the grader punishes fails a public check, and
what the text demands (no loops, arguments unchanged, exact keys) is also graded.

The mistakes are those a review found passing ``check`` while losing points (or the reverse).
Each is a solution notebook changed by string replacement (every target must be present).
"""

from __future__ import annotations

import io

import pytest

from bncourse.grading.check import check_notebook
from bncourse.grading.grader import collect_submissions, grade_batch

from grading_helpers import exercise_scores, mutate, results_of, write_nb

SPATIAL_FORWARD_BODY = """    axes = (0, 2, 3)
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=axes, keepdims=True)
    x_hat = centered / np.sqrt(var + eps)
    return gamma.reshape(1, -1, 1, 1) * x_hat + beta.reshape(1, -1, 1, 1)"""
# The classic reshape bug, in the forward and (consistently) in the backward: the backward is
# right for this wrong forward, so a gradient check of the student's own forward passes.
SPATIAL_RESHAPE_FORWARD = """    c = x.shape[1]
    flat = x.reshape(-1, c)
    x_hat = (flat - flat.mean(axis=0)) / np.sqrt(flat.var(axis=0) + eps)
    return (gamma * x_hat + beta).reshape(x.shape)"""
SPATIAL_BACKWARD_BODY = """    axes = (0, 2, 3)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    inv_std = 1.0 / np.sqrt((centered * centered).mean(axis=axes, keepdims=True) + eps)
    x_hat = centered * inv_std
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * x_hat).sum(axis=axes)
    g = gamma.reshape(1, -1, 1, 1)
    dx = (g * inv_std / m) * (m * dout - dbeta.reshape(1, -1, 1, 1) - x_hat * dgamma.reshape(1, -1, 1, 1))
    return dx, dgamma, dbeta"""
SPATIAL_RESHAPE_BACKWARD = """    c = x.shape[1]
    flat, d = x.reshape(-1, c), dout.reshape(-1, c)
    m = flat.shape[0]
    inv_std = 1.0 / np.sqrt(flat.var(axis=0) + eps)
    x_hat = (flat - flat.mean(axis=0)) * inv_std
    dbeta, dgamma = d.sum(axis=0), (d * x_hat).sum(axis=0)
    dx = (gamma * inv_std / m) * (m * d - dbeta - x_hat * dgamma)
    return dx.reshape(x.shape), dgamma, dbeta"""

MISTAKES = [
    ("ex01 eps outside the square root", "ex01",
     [("inv_std = 1.0 / np.sqrt(var + eps)", "inv_std = 1.0 / (np.sqrt(var) + eps)")]),
    ("ex01 one-pass variance", "ex01",
     [("var = (centered * centered).mean(axis=0)", "var = (x * x).mean(axis=0) - mean * mean")]),
    ("ex01 a Python loop over examples", "ex01",
     [("mean = x.mean(axis=0)", "mean = sum(row for row in x) / x.shape[0]")]),
    ("ex02 batchnorm_eval without eps", "ex02",
     [("np.sqrt(running_var + eps)", "np.sqrt(running_var)")]),
    ("ex02 update in place", "ex02",
     [("new_mean = (1 - momentum) * running_mean + momentum * batch_mean",
       "running_mean *= 1 - momentum\n    running_mean += momentum * batch_mean\n    new_mean = running_mean"),
      ("new_var = (1 - momentum) * running_var + momentum * unbiased_var",
       "running_var *= 1 - momentum\n    running_var += momentum * unbiased_var\n    new_var = running_var")]),
    ("ex03 an extra dict key", "ex03", [('"beta": dbeta}', '"beta": dbeta, "out": dout}')]),
    ("ex05 reshape bug in forward and backward alike", "ex05",
     [(SPATIAL_FORWARD_BODY, SPATIAL_RESHAPE_FORWARD), (SPATIAL_BACKWARD_BODY, SPATIAL_RESHAPE_BACKWARD)]),
    ("ex06 layer norm over the last axis only", "ex06",
     [("rows = x.reshape(x.shape[0], -1)", "rows = x.reshape(-1, x.shape[-1])")]),
    ("ex06 group norm returns float64 for float32", "ex06",
     [("return gamma.reshape(1, c, 1, 1) * x_hat + beta.reshape(1, c, 1, 1)",
       "return (gamma.reshape(1, c, 1, 1) * x_hat + beta.reshape(1, c, 1, 1)).astype(np.float64)")]),
    ("ex08 fold in place", "ex08",
     [("return weight * scale[:, None], (bias - running_mean) * scale + beta",
       "weight *= scale[:, None]\n    bias -= running_mean\n    bias *= scale\n    bias += beta\n"
       "    return weight, bias")]),
]


@pytest.fixture(scope="module")
def mutants(tmp_path_factory):
    root = tmp_path_factory.mktemp("agreement")
    return {name: (ex_id, write_nb(root / "subs" / f"m{k:02d}.ipynb", mutate(ex_id, replacements)))
            for k, (name, ex_id, replacements) in enumerate(MISTAKES)}


@pytest.fixture(scope="module")
def graded(grader, mutants, tmp_path_factory):
    out = tmp_path_factory.mktemp("agreement-out")
    grade_batch(grader, collect_submissions([p for _, p in mutants.values()]), out, jobs=2, progress=None)
    return {name: exercise_scores(results_of(out, path.stem))[ex_id] for name, (ex_id, path) in mutants.items()}


@pytest.mark.parametrize("name", [m[0] for m in MISTAKES])
def test_each_mistake_fails_check_and_loses_points(sandbox, mutants, graded, name):
    ex_id, path = mutants[name]
    report = io.StringIO()
    assert check_notebook(path, out=report, sandbox=sandbox) == 1, report.getvalue()
    assert "FAIL" in report.getvalue()
    assert graded[name] < 10.0, f"{name}: check fails but the grade is full"


def test_the_gradient_each_backward_exercise_is_about_carries_most_points(grader, tmp_path):
    """ex04: dx = 0 with the two sums the text gives; ex03: only the three one-step nodes right."""
    ex04 = mutate("ex04", [("dx = (gamma * inv_std / n) * (n * dout - dbeta - x_hat * dgamma)",
                            "dx = np.zeros_like(dout)")])
    ex03 = mutate("ex03", [('"istd": distd, "std": dstd, "var": dvar, "xc": dxc,\n            "mu": dmu, "x": dx,',
                            '"istd": 0 * distd, "std": 0 * dstd, "var": 0 * dvar, "xc": 0 * dxc,\n'
                            '            "mu": 0 * dmu, "x": 0 * dx,')])
    subs = [write_nb(tmp_path / "subs" / "ex04.ipynb", ex04), write_nb(tmp_path / "subs" / "ex03.ipynb", ex03)]
    grade_batch(grader, collect_submissions(subs), tmp_path / "out", jobs=2, progress=None)
    assert exercise_scores(results_of(tmp_path / "out", "ex04"))["ex04"] <= 3.0
    assert exercise_scores(results_of(tmp_path / "out", "ex03"))["ex03"] <= 2.0
