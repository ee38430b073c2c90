"""Typical mistakes lose points on the right exercise and nowhere else.

Each mutant is a solution notebook whose answer cell is changed by string
replacement (every target must be present, see ``grading_helpers.mutate``),
submitted together with the seven untouched solutions, in one batch.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from bncourse.grading.exercises import EXERCISES, get_exercise
from bncourse.grading.grader import collect_submissions, grade_batch

from grading_helpers import ROOT, exercise_scores, full_directory, mutate, results_of, write_nb

SPATIAL_FORWARD_BODY = """    axes = (0, 2, 3)
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=axes, keepdims=True)
    x_hat = centered / np.sqrt(var + eps)
    return gamma.reshape(1, -1, 1, 1) * x_hat + beta.reshape(1, -1, 1, 1)"""

LAYERNORM_BODY = """    rows = x.reshape(x.shape[0], -1)
    mean = rows.mean(axis=1, keepdims=True)
    centered = rows - mean
    var = (centered * centered).mean(axis=1, keepdims=True)
    x_hat = (centered / np.sqrt(var + eps)).reshape(x.shape)
    return gamma * x_hat + beta"""

MERGE_BODY = """    dtype = means.dtype
    n = 0
    mean = np.zeros(means.shape[1], dtype)
    m2 = np.zeros(means.shape[1], dtype)
    for n_k, mean_k, m2_k in zip(counts, means, m2s):
        n_k = int(n_k)
        if n_k == 0:
            continue
        total = n + n_k
        delta = mean_k - mean
        mean = mean + delta * dtype.type(n_k / total)
        m2 = m2 + m2_k + delta * delta * dtype.type(n * n_k / total)
        n = total
    return mean, m2 / dtype.type(n)"""

MERGE_SUMS_OF_SQUARES = """    n = counts.sum()
    weights = counts.astype(means.dtype)[:, None]
    mean = (weights * means).sum(axis=0) / means.dtype.type(n)
    mean_sq = (m2s + weights * means * means).sum(axis=0) / means.dtype.type(n)
    return mean, mean_sq - mean * mean"""

# (name, exercise, [(old, new), ...])
MUTANTS = [
    ("unbiased variance in the normalization", "ex01",
     [("var = (centered * centered).mean(axis=0)",
       "var = (centered * centered).sum(axis=0) / (x.shape[0] - 1)")]),
    ("eps missing", "ex01", [("np.sqrt(var + eps)", "np.sqrt(var)")]),
    ("statistics over the wrong axis", "ex01",
     [("mean = x.mean(axis=0)", "mean = x.mean(axis=1, keepdims=True)"),
      ("var = (centered * centered).mean(axis=0)", "var = (centered * centered).mean(axis=1, keepdims=True)")]),
    ("one-pass variance E[x^2] - E[x]^2", "ex01",
     [("var = (centered * centered).mean(axis=0)", "var = (x * x).mean(axis=0) - mean * mean")]),
    ("flipped momentum convention (Keras-style)", "ex02",
     [("new_mean = (1 - momentum) * running_mean + momentum * batch_mean",
       "new_mean = momentum * running_mean + (1 - momentum) * batch_mean"),
      ("new_var = (1 - momentum) * running_var + momentum * unbiased_var",
       "new_var = momentum * running_var + (1 - momentum) * unbiased_var")]),
    ("biased variance in the running estimate", "ex02",
     [("unbiased_var = (centered * centered).sum(axis=0) / (n - 1)",
       "unbiased_var = (centered * centered).sum(axis=0) / n")]),
    ("batch statistics in evaluation mode", "ex02",
     [("return gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta",
       "return gamma * (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + eps) + beta")]),
    ("backward forgets the path from xc through var", "ex03",
     [("dxc = dxhat * istd + dvar * 2.0 * xc / n", "dxc = dxhat * istd")]),
    ("backward missing the mean term", "ex04",
     [("(n * dout - dbeta - x_hat * dgamma)", "(n * dout - x_hat * dgamma)")]),
    ("spatial: reshape to (N*H*W, C) without moving the channel axis", "ex05",
     [(SPATIAL_FORWARD_BODY,
       "    c = x.shape[1]\n    flat = x.reshape(-1, c)\n"
       "    x_hat = (flat - flat.mean(axis=0)) / np.sqrt(flat.var(axis=0) + eps)\n"
       "    return (gamma * x_hat + beta).reshape(x.shape)")]),
    ("spatial: statistics per pixel (over the batch axis only)", "ex05",
     [("axes = (0, 2, 3)", "axes = (0,)")]),
    ("layer norm over the batch axis", "ex06",
     [(LAYERNORM_BODY,
       "    mean = x.mean(axis=0, keepdims=True)\n    var = x.var(axis=0, keepdims=True)\n"
       "    return gamma * (x - mean) / np.sqrt(var + eps) + beta")]),
    ("group norm normalizing each channel (instance norm)", "ex06",
     [("rows = x.reshape(n * num_groups, -1)", "rows = x.reshape(n * c, -1)")]),
    ("BatchNorm1d stores the biased running variance", "ex07",
     [("f * var * m / (m - 1)", "f * var")]),
    ("BatchNorm1d uses batch statistics in eval mode", "ex07",
     [("if self.training or not self.track_running_stats:", "if True:")]),
    ("BatchNorm1d ignores momentum=None", "ex07", [("f = 1.0 / self.num_batches_tracked", "f = 0.1")]),
    ("fold forgets the running mean in the bias", "ex08",
     [("(bias - running_mean) * scale + beta", "bias * scale + beta")]),
    ("fold scales the columns of the weight", "ex08", [("weight * scale[:, None]", "weight * scale[None, :]")]),
    ("merge: unweighted average of the device means", "ex09",
     [("mean = mean + delta * dtype.type(n_k / total)", "mean = mean + delta / dtype.type(k_seen + 1)"),
      ("    for n_k, mean_k, m2_k in zip(counts, means, m2s):",
       "    k_seen = -1\n    for n_k, mean_k, m2_k in zip(counts, means, m2s):\n        k_seen += 1")]),
    ("merge: no spread between the devices' means", "ex09",
     [("m2 = m2 + m2_k + delta * delta * dtype.type(n * n_k / total)", "m2 = m2 + m2_k")]),
    ("merge: back to sums of squares (E[x^2] - mean^2)", "ex09", [(MERGE_BODY, MERGE_SUMS_OF_SQUARES)]),
    ("merge: divides by the count of an empty device", "ex09",
     [("        if n_k == 0:\n            continue\n", "")]),
    ("norm backward: dx without the mean term", "ex10",
     [("m * g - g.sum(axis=1, keepdims=True)", "m * g")]),
    ("layer norm backward: dgamma summed per example instead of over the batch", "ex10",
     [("dgamma = (dout * x_hat.reshape(x.shape)).sum(axis=0)",
       "dgamma = (dout * x_hat.reshape(x.shape)).sum(axis=-1)")]),
    ("group norm backward: statistics per channel instead of per group", "ex10",
     [("rows = x.reshape(n * num_groups, -1)", "rows = x.reshape(n * c, -1)"),
      ("g = (dout * gamma.reshape(shape)).reshape(n * num_groups, -1)",
       "g = (dout * gamma.reshape(shape)).reshape(n * c, -1)")]),
    ("group norm backward: dgamma and dbeta summed over the batch only", "ex10",
     [("axes = (0,) + tuple(range(2, x.ndim))", "axes = (0,)")]),
    ("norm backward: float32 turned into float64", "ex10",
     [("m = rows.shape[1]", "m = np.float64(rows.shape[1])")]),
    ("find the bug: evaluation still uses the batch statistics", "ex11",
     [("        if self.training:\n            mean, var = x.mean(axis=0), x.var(axis=0)\n",
       "        mean, var = x.mean(axis=0), x.var(axis=0)\n        if self.training:\n"),
      ("        else:\n            mean, var = self.running_mean, self.running_var\n", "")]),
    ("find the bug: reshape without the transpose", "ex11",
     [("rows = x.transpose(0, 2, 3, 1).reshape(-1, c)", "rows = x.reshape(-1, c)"),
      ("layer(rows).reshape(n, h, w, c).transpose(0, 3, 1, 2)", "layer(rows).reshape(n, c, h, w)")]),
    ("find the bug: transposed in but not back", "ex11",
     [("layer(rows).reshape(n, h, w, c).transpose(0, 3, 1, 2)", "layer(rows).reshape(n, c, h, w)")]),
    ("find the bug: evaluate with no_grad only", "ex11",
     [("    was_training = model.training\n    model.eval()\n", ""),
      ("    finally:\n        model.train(was_training)\n", "    finally:\n        pass\n")]),
    ("find the bug: evaluate never switches back", "ex11",
     [("    finally:\n        model.train(was_training)\n", "    finally:\n        pass\n")]),
    ("find the bug: evaluate always switches back to training", "ex11",
     [("model.train(was_training)", "model.train()")]),
    ("rmsnorm: subtracts the mean (layer norm)", "ex12",
     [("    return x * inv_rms * weight",
       "    xc = x - x.mean(axis=axes, keepdims=True)\n"
       "    return xc / np.sqrt(np.mean(xc * xc, axis=axes, keepdims=True) + eps) * weight")]),
    ("rmsnorm: eps outside the square root", "ex12",
     [("np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + eps)",
       "(np.sqrt(np.mean(x * x, axis=axes, keepdims=True)) + eps)")]),
    ("rmsnorm: dx without the projection on x_hat", "ex12",
     [("dx = inv_rms * (g - x_hat * np.mean(g * x_hat, axis=axes, keepdims=True))", "dx = inv_rms * g")]),
    ("rmsnorm: statistics over the last axis whatever the weight", "ex12",
     [("axes = tuple(range(x.ndim - weight.ndim, x.ndim))", "axes = (-1,)")]),
    ("rmsnorm: dweight summed over the batch axis only", "ex12",
     [("dweight = (dout * x_hat).sum(axis=tuple(range(x.ndim - weight.ndim)))",
       "dweight = (dout * x_hat).sum(axis=0)")]),
    ("rmsnorm: backward turns float32 into float64", "ex12",
     [("g = dout * weight", "g = (dout * weight).astype(np.float64)")]),
    ("train digits: predict with the batch's statistics", "ex13",
     [("return self.logits(x, training=False).argmax(axis=1)", "return self.logits(x, training=True).argmax(axis=1)")]),
    ("train digits: biased variance in the running estimate", "ex13",
     [("m * var * n / (n - 1)", "m * var")]),
    ("train digits: backward without the mean term", "ex13",
     [("(n * dout - self.dbeta - x_hat * self.dgamma)", "(n * dout - x_hat * self.dgamma)")]),
    ("train digits: gradient ascent", "ex13",
     [("velocity[name] = 0.9 * velocity[name] - lr * grads[name]",
       "velocity[name] = 0.9 * velocity[name] + lr * grads[name]")]),
    ("trainable: He initialization alone, no residual", "ex14",
     [('"alpha": np.zeros(DEPTH)', '"alpha": None')]),
    ("trainable: residual scales that start at 1", "ex14",
     [('"alpha": np.zeros(DEPTH)', '"alpha": np.ones(DEPTH)')]),
    ("trainable: weights of standard deviation 1", "ex14",
     [("np.sqrt(gains[k] / sizes[k])", "1.0")]),
]

# Mistakes in the exercises whose public checks are meant to catch every typical mistake: the
# public checks fail on each of these mutants, as the grade drops (they agree both ways).
PUBLIC_CHECKS_CATCH = {"ex09", "ex10", "ex11", "ex12", "ex13", "ex14"}


@pytest.fixture(scope="module")
def graded(dir_grader, tmp_path_factory):
    root = tmp_path_factory.mktemp("mutants")
    paths = []
    for k, (_, ex_id, replacements) in enumerate(MUTANTS):
        paths.append(full_directory(root / "subs" / f"mutant{k:02d}", {ex_id: mutate(ex_id, replacements)}))
    out = root / "out"
    grade_batch(dir_grader, collect_submissions(paths), out, jobs=2, progress=None)
    return {name: results_of(out, f"mutant{k:02d}") for k, (name, _, _) in enumerate(MUTANTS)}


def test_at_least_ten_mistakes_cover_every_exercise():
    assert len(MUTANTS) >= 10
    assert {ex for _, ex, _ in MUTANTS} == {ex.id for ex in EXERCISES}


@pytest.mark.parametrize("name, ex_id", [(m[0], m[1]) for m in MUTANTS], ids=[m[0] for m in MUTANTS])
def test_mistake_loses_points_on_its_exercise_only(graded, name, ex_id):
    results = graded[name]
    scores = exercise_scores(results)
    assert scores[ex_id] < 10.0, f"{name!r} kept all points: {results['output']}"
    others = {ex: s for ex, s in scores.items() if ex != ex_id}
    assert all(s == 10.0 for s in others.values()), f"{name!r} cost points elsewhere: {others}"
    failed = [t for t in results["tests"] if t["score"] < t["max_score"]]
    assert failed and all(t["number"].startswith(f"{int(ex_id[2:])}.") for t in failed)
    assert all(t["output"] and t["output"] != "passed" for t in failed)


@pytest.mark.parametrize("name, ex_id, replacements",
                         [m for m in MUTANTS if m[1] in PUBLIC_CHECKS_CATCH],
                         ids=[m[0] for m in MUTANTS if m[1] in PUBLIC_CHECKS_CATCH])
def test_public_checks_catch_the_mistake(tmp_path, name, ex_id, replacements):
    path = write_nb(tmp_path / get_exercise(ex_id).notebook, mutate(ex_id, replacements))
    result = subprocess.run([sys.executable, "-m", "bncourse.cli", "check", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "FAIL" in result.stdout, \
        f"{name!r} passes every public check:\n{result.stdout}{result.stderr}"
