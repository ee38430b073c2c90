"""Hidden cases for Exercise 11: fixing BatchNorm1d (eval mode), batchnorm2d (transpose), evaluate.

Every case depends on one of the three bugs, so the code as given scores 0. The layer computes in
float64 whatever the input (its parameters are float64), so outputs are compared as values only.
"""

from __future__ import annotations

import numpy as np

from bncourse.grading.spec import Case, Var, call, expect, get, put

from _common import dims, sample

MOMENTUM, EPS = 0.1, 1e-5


def _train(mean, var, x):
    """PyTorch's update of the running statistics from rows x (M, C), in float64."""
    n = x.shape[0]
    batch_mean, batch_var = x.mean(axis=0), x.var(axis=0)
    return ((1 - MOMENTUM) * mean + MOMENTUM * batch_mean,
            (1 - MOMENTUM) * var + MOMENTUM * batch_var * n / (n - 1))


def _eval(x, mean, var, weight, bias):
    return weight * (x - mean) / np.sqrt(var + EPS) + bias


def _batches(rng, count, n, c):
    loc, scale = rng.normal(size=c) * 3, rng.uniform(0.5, 3.0, size=c)
    return [sample(rng, (n, c), np.float64, loc=loc, scale=scale) for _ in range(count)]


def _trained_layer(rng, c, steps, set_affine):
    """Steps that build and train the student's layer, and the reference state afterwards."""
    steps_out = [call("BatchNorm1d", c, store="layer")]
    weight, bias = np.ones(c), np.zeros(c)
    if set_affine:
        weight, bias = rng.uniform(0.5, 2.0, size=c), rng.normal(size=c)
        steps_out += [put("layer", "weight", weight), put("layer", "bias", bias)]
    mean, var = np.zeros(c), np.ones(c)
    for k, x in enumerate(_batches(rng, steps, dims(rng, 4, 16), c)):
        steps_out.append(call("layer", x, store=f"train{k}"))
        mean, var = _train(mean, var, x)
    return steps_out, (mean, var, weight, bias)


def _eval_twice(rng):
    c = dims(rng, 2, 6)
    steps, state = _trained_layer(rng, c, 3, set_affine=True)
    x1, x2 = _batches(rng, 2, dims(rng, 3, 10), c)
    steps += [call("layer.eval"), call("layer", x1, store="eval1"), call("layer", x2, store="eval2")]
    return Case("after three training steps, evaluation uses the running statistics (two batches in a row)",
                2, steps, {"eval1": expect(_eval(x1, *state), dtype=None),
                           "eval2": expect(_eval(x2, *state), dtype=None)})


def _eval_single(rng):
    c = dims(rng, 2, 6)
    steps, state = _trained_layer(rng, c, 2, set_affine=False)
    x = sample(rng, (1, c), np.float64, scale=2.0)
    steps += [call("layer.eval"), call("layer", x, store="out")]
    return Case("evaluation of a single example", 1, steps, {"out": expect(_eval(x, *state), dtype=None)})


def _images(rng):
    n, c, h, w = dims(rng, 2, 4), dims(rng, 2, 5), dims(rng, 2, 5), dims(rng, 3, 6)
    h = h if h != w else h + 1  # non-square, so that a wrong axis order shows
    loc = rng.normal(size=(1, c, 1, 1)) * 4
    scale = rng.uniform(0.3, 4.0, size=(1, c, 1, 1))
    return sample(rng, (n, c, h, w), np.float64, loc=loc, scale=scale)


def _rows(x):
    return x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])


def _spatial_output(rng):
    x = _images(rng)
    c = x.shape[1]
    weight, bias = rng.uniform(0.5, 2.0, size=c), rng.normal(size=c)
    rows = _rows(x)
    ref = weight * (rows - rows.mean(axis=0)) / np.sqrt(rows.var(axis=0) + EPS) + bias
    ref = ref.reshape(x.shape[0], x.shape[2], x.shape[3], c).transpose(0, 3, 1, 2)
    steps = [call("BatchNorm1d", c, store="layer"), put("layer", "weight", weight), put("layer", "bias", bias),
             call("batchnorm2d", Var("layer"), x, store="out")]
    return Case(f"batchnorm2d on images {x.shape}: per-channel statistics", 2, steps,
                {"out": expect(ref, dtype=None)})


def _spatial_state(rng):
    x = _images(rng)
    c = x.shape[1]
    mean, var = _train(np.zeros(c), np.ones(c), _rows(x))
    steps = [call("BatchNorm1d", c, store="layer"), call("batchnorm2d", Var("layer"), x, store="out"),
             get("layer", "running_mean", "running_mean"), get("layer", "running_var", "running_var")]
    return Case("batchnorm2d leaves per-channel running statistics", 1, steps,
                {"running_mean": expect(mean, dtype=None), "running_var": expect(var, dtype=None)})


def _evaluate_probe(rng):
    x = rng.normal(size=(dims(rng, 1, 4), 3))
    steps = [call("ModeProbe", store="probe"), call("evaluate", Var("probe"), x, store="out1"),
             call("probe.mark"), call("probe.eval"), call("evaluate", Var("probe"), x, store="out2"),
             call("probe.mark"), get("probe", "history", "history")]
    # [training, grad] during each call and the mode after it: eval + no_grad, then the mode it had.
    return Case("evaluate: evaluation mode and no_grad during the call, the model's own mode after "
                "(from training and from evaluation mode)", 2, steps,
                {"history": expect(np.array([0, 0, 1, 0, 0, 0], dtype=np.int64), dtype=None, exact=True)})


def _evaluate_layer(rng):
    c = dims(rng, 2, 6)
    steps, state = _trained_layer(rng, c, 3, set_affine=True)
    x = _batches(rng, 1, dims(rng, 2, 8), c)[0]
    steps += [call("evaluate", Var("layer"), x, store="out"),
              get("layer", "running_mean", "running_mean")]
    return Case("evaluate on a trained layer: the evaluation output, running statistics untouched", 2, steps,
                {"out": expect(_eval(x, *state), dtype=None),
                 "running_mean": expect(state[0], dtype=None)})


def cases(rng: np.random.Generator) -> list[Case]:
    return [_eval_twice(rng), _eval_single(rng), _spatial_output(rng), _spatial_state(rng),
            _evaluate_probe(rng), _evaluate_layer(rng)]
