"""The typical mistakes the grading tests submit: one table for the grade and for ``check``.

Each mistake is a solution notebook whose answer cell is changed by string replacement (every
target must be present, see ``grading_helpers.mutate``). ``exercise`` is the one exercise it
must lose points on (and no other); ``check_fails`` says the public checks must fail on it too
(``check`` and the grade agree). Where ``check_fails`` is False, the checks are not required to
see the mistake: only the hidden cases are.
"""

from __future__ import annotations

from typing import NamedTuple


class Mistake(NamedTuple):
    name: str
    exercise: str
    replacements: list[tuple[str, str]]
    check_fails: bool = False


# Exercises whose public checks are meant to catch every typical mistake.
PUBLIC_CHECKS_CATCH = {"ex09", "ex10", "ex11", "ex12", "ex13", "ex14"}

SPATIAL_FORWARD_BODY = """    axes = (0, 2, 3)
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=axes, keepdims=True)
    x_hat = centered / np.sqrt(var + eps)
    return gamma.reshape(1, -1, 1, 1) * x_hat + beta.reshape(1, -1, 1, 1)"""
# The classic reshape bug: (N, C, H, W) reshaped to (N*H*W, C) without moving the channel axis.
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
# The same bug in the backward, consistent with the forward: a gradient check of the student's
# own forward passes.
SPATIAL_RESHAPE_BACKWARD = """    c = x.shape[1]
    flat, d = x.reshape(-1, c), dout.reshape(-1, c)
    m = flat.shape[0]
    inv_std = 1.0 / np.sqrt(flat.var(axis=0) + eps)
    x_hat = (flat - flat.mean(axis=0)) * inv_std
    dbeta, dgamma = d.sum(axis=0), (d * x_hat).sum(axis=0)
    dx = (gamma * inv_std / m) * (m * d - dbeta - x_hat * dgamma)
    return dx.reshape(x.shape), dgamma, dbeta"""

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

# Replacements that more than one mistake makes.
ONE_PASS_VARIANCE = ("var = (centered * centered).mean(axis=0)", "var = (x * x).mean(axis=0) - mean * mean")
GROUPS_AS_CHANNELS = ("rows = x.reshape(n * num_groups, -1)", "rows = x.reshape(n * c, -1)")
NOT_TRANSPOSED_BACK = ("layer(rows).reshape(n, h, w, c).transpose(0, 3, 1, 2)", "layer(rows).reshape(n, c, h, w)")
NEVER_SWITCHES_BACK = ("    finally:\n        model.train(was_training)\n", "    finally:\n        pass\n")
NO_ALPHA = '"alpha": np.zeros(DEPTH)'

MISTAKES = [
    # ex01: forward
    Mistake("unbiased variance in the normalization", "ex01",
            [("var = (centered * centered).mean(axis=0)",
              "var = (centered * centered).sum(axis=0) / (x.shape[0] - 1)")]),
    Mistake("eps missing", "ex01", [("np.sqrt(var + eps)", "np.sqrt(var)")]),
    Mistake("ex01 eps outside the square root", "ex01",
            [("inv_std = 1.0 / np.sqrt(var + eps)", "inv_std = 1.0 / (np.sqrt(var) + eps)")], check_fails=True),
    Mistake("statistics over the wrong axis", "ex01",
            [("mean = x.mean(axis=0)", "mean = x.mean(axis=1, keepdims=True)"),
             ("var = (centered * centered).mean(axis=0)", "var = (centered * centered).mean(axis=1, keepdims=True)")]),
    Mistake("one-pass variance E[x^2] - E[x]^2", "ex01", [ONE_PASS_VARIANCE], check_fails=True),
    Mistake("ex01 a Python loop over examples", "ex01",
            [("mean = x.mean(axis=0)", "mean = sum(row for row in x) / x.shape[0]")], check_fails=True),
    # ex02: running statistics
    Mistake("flipped momentum convention (Keras-style)", "ex02",
            [("new_mean = (1 - momentum) * running_mean + momentum * batch_mean",
              "new_mean = momentum * running_mean + (1 - momentum) * batch_mean"),
             ("new_var = (1 - momentum) * running_var + momentum * unbiased_var",
              "new_var = momentum * running_var + (1 - momentum) * unbiased_var")]),
    Mistake("biased variance in the running estimate", "ex02",
            [("unbiased_var = (centered * centered).sum(axis=0) / (n - 1)",
              "unbiased_var = (centered * centered).sum(axis=0) / n")]),
    Mistake("batch statistics in evaluation mode", "ex02",
            [("return gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta",
              "return gamma * (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + eps) + beta")]),
    Mistake("ex02 batchnorm_eval without eps", "ex02",
            [("np.sqrt(running_var + eps)", "np.sqrt(running_var)")], check_fails=True),
    Mistake("ex02 update in place", "ex02",
            [("new_mean = (1 - momentum) * running_mean + momentum * batch_mean",
              "running_mean *= 1 - momentum\n    running_mean += momentum * batch_mean\n    new_mean = running_mean"),
             ("new_var = (1 - momentum) * running_var + momentum * unbiased_var",
              "running_var *= 1 - momentum\n    running_var += momentum * unbiased_var\n    new_var = running_var")],
            check_fails=True),
    # ex03, ex04: backward
    Mistake("backward forgets the path from xc through var", "ex03",
            [("dxc = dxhat * istd + dvar * 2.0 * xc / n", "dxc = dxhat * istd")]),
    Mistake("ex03 an extra dict key", "ex03", [('"beta": dbeta}', '"beta": dbeta, "out": dout}')], check_fails=True),
    Mistake("backward missing the mean term", "ex04",
            [("(n * dout - dbeta - x_hat * dgamma)", "(n * dout - x_hat * dgamma)")]),
    # ex05: spatial
    Mistake("spatial: reshape to (N*H*W, C) without moving the channel axis", "ex05",
            [(SPATIAL_FORWARD_BODY, SPATIAL_RESHAPE_FORWARD)]),
    Mistake("ex05 reshape bug in forward and backward alike", "ex05",
            [(SPATIAL_FORWARD_BODY, SPATIAL_RESHAPE_FORWARD), (SPATIAL_BACKWARD_BODY, SPATIAL_RESHAPE_BACKWARD)],
            check_fails=True),
    Mistake("spatial: statistics per pixel (over the batch axis only)", "ex05", [("axes = (0, 2, 3)", "axes = (0,)")]),
    # ex06: layer and group norm
    Mistake("layer norm over the batch axis", "ex06",
            [(LAYERNORM_BODY,
              "    mean = x.mean(axis=0, keepdims=True)\n    var = x.var(axis=0, keepdims=True)\n"
              "    return gamma * (x - mean) / np.sqrt(var + eps) + beta")]),
    Mistake("ex06 layer norm over the last axis only", "ex06",
            [("rows = x.reshape(x.shape[0], -1)", "rows = x.reshape(-1, x.shape[-1])")], check_fails=True),
    Mistake("group norm normalizing each channel (instance norm)", "ex06", [GROUPS_AS_CHANNELS]),
    Mistake("ex06 group norm returns float64 for float32", "ex06",
            [("return gamma.reshape(1, c, 1, 1) * x_hat + beta.reshape(1, c, 1, 1)",
              "return (gamma.reshape(1, c, 1, 1) * x_hat + beta.reshape(1, c, 1, 1)).astype(np.float64)")],
            check_fails=True),
    # ex07: BatchNorm1d module
    Mistake("BatchNorm1d stores the biased running variance", "ex07", [("f * var * m / (m - 1)", "f * var")]),
    Mistake("BatchNorm1d uses batch statistics in eval mode", "ex07",
            [("if self.training or not self.track_running_stats:", "if True:")]),
    Mistake("BatchNorm1d ignores momentum=None", "ex07", [("f = 1.0 / self.num_batches_tracked", "f = 0.1")]),
    # ex08: folding
    Mistake("fold forgets the running mean in the bias", "ex08",
            [("(bias - running_mean) * scale + beta", "bias * scale + beta")]),
    Mistake("fold scales the columns of the weight", "ex08", [("weight * scale[:, None]", "weight * scale[None, :]")]),
    Mistake("ex08 fold in place", "ex08",
            [("return weight * scale[:, None], (bias - running_mean) * scale + beta",
              "weight *= scale[:, None]\n    bias -= running_mean\n    bias *= scale\n    bias += beta\n"
              "    return weight, bias")], check_fails=True),
    # ex09: merging statistics across devices
    Mistake("merge: unweighted average of the device means", "ex09",
            [("mean = mean + delta * dtype.type(n_k / total)", "mean = mean + delta / dtype.type(k_seen + 1)"),
             ("    for n_k, mean_k, m2_k in zip(counts, means, m2s):",
              "    k_seen = -1\n    for n_k, mean_k, m2_k in zip(counts, means, m2s):\n        k_seen += 1")],
            check_fails=True),
    Mistake("merge: no spread between the devices' means", "ex09",
            [("m2 = m2 + m2_k + delta * delta * dtype.type(n * n_k / total)", "m2 = m2 + m2_k")], check_fails=True),
    Mistake("merge: back to sums of squares (E[x^2] - mean^2)", "ex09", [(MERGE_BODY, MERGE_SUMS_OF_SQUARES)],
            check_fails=True),
    Mistake("merge: divides by the count of an empty device", "ex09",
            [("        if n_k == 0:\n            continue\n", "")], check_fails=True),
    # ex10: norm backward
    Mistake("norm backward: dx without the mean term", "ex10", [("m * g - g.sum(axis=1, keepdims=True)", "m * g")],
            check_fails=True),
    Mistake("layer norm backward: dgamma summed per example instead of over the batch", "ex10",
            [("dgamma = (dout * x_hat.reshape(x.shape)).sum(axis=0)",
              "dgamma = (dout * x_hat.reshape(x.shape)).sum(axis=-1)")], check_fails=True),
    Mistake("group norm backward: statistics per channel instead of per group", "ex10",
            [GROUPS_AS_CHANNELS,
             ("g = (dout * gamma.reshape(shape)).reshape(n * num_groups, -1)",
              "g = (dout * gamma.reshape(shape)).reshape(n * c, -1)")], check_fails=True),
    Mistake("group norm backward: dgamma and dbeta summed over the batch only", "ex10",
            [("axes = (0,) + tuple(range(2, x.ndim))", "axes = (0,)")], check_fails=True),
    Mistake("norm backward: float32 turned into float64", "ex10",
            [("m = rows.shape[1]", "m = np.float64(rows.shape[1])")], check_fails=True),
    # ex11: find the bug
    Mistake("find the bug: evaluation still uses the batch statistics", "ex11",
            [("        if self.training:\n            mean, var = x.mean(axis=0), x.var(axis=0)\n",
              "        mean, var = x.mean(axis=0), x.var(axis=0)\n        if self.training:\n"),
             ("        else:\n            mean, var = self.running_mean, self.running_var\n", "")], check_fails=True),
    Mistake("find the bug: reshape without the transpose", "ex11",
            [("rows = x.transpose(0, 2, 3, 1).reshape(-1, c)", "rows = x.reshape(-1, c)"), NOT_TRANSPOSED_BACK],
            check_fails=True),
    Mistake("find the bug: transposed in but not back", "ex11", [NOT_TRANSPOSED_BACK], check_fails=True),
    Mistake("find the bug: evaluate with no_grad only", "ex11",
            [("    was_training = model.training\n    model.eval()\n", ""), NEVER_SWITCHES_BACK], check_fails=True),
    Mistake("find the bug: evaluate never switches back", "ex11", [NEVER_SWITCHES_BACK], check_fails=True),
    Mistake("find the bug: evaluate always switches back to training", "ex11",
            [("model.train(was_training)", "model.train()")], check_fails=True),
    # ex12: RMSNorm
    Mistake("rmsnorm: subtracts the mean (layer norm)", "ex12",
            [("    return x * inv_rms * weight",
              "    xc = x - x.mean(axis=axes, keepdims=True)\n"
              "    return xc / np.sqrt(np.mean(xc * xc, axis=axes, keepdims=True) + eps) * weight")], check_fails=True),
    Mistake("rmsnorm: eps outside the square root", "ex12",
            [("np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + eps)",
              "(np.sqrt(np.mean(x * x, axis=axes, keepdims=True)) + eps)")], check_fails=True),
    Mistake("rmsnorm: dx without the projection on x_hat", "ex12",
            [("dx = inv_rms * (g - x_hat * np.mean(g * x_hat, axis=axes, keepdims=True))", "dx = inv_rms * g")],
            check_fails=True),
    Mistake("rmsnorm: statistics over the last axis whatever the weight", "ex12",
            [("axes = tuple(range(x.ndim - weight.ndim, x.ndim))", "axes = (-1,)")], check_fails=True),
    Mistake("rmsnorm: dweight summed over the batch axis only", "ex12",
            [("dweight = (dout * x_hat).sum(axis=tuple(range(x.ndim - weight.ndim)))",
              "dweight = (dout * x_hat).sum(axis=0)")], check_fails=True),
    Mistake("rmsnorm: backward turns float32 into float64", "ex12",
            [("g = dout * weight", "g = (dout * weight).astype(np.float64)")], check_fails=True),
    # ex13: training on digits
    Mistake("train digits: predict with the batch's statistics", "ex13",
            [("return self.logits(x, training=False).argmax(axis=1)",
              "return self.logits(x, training=True).argmax(axis=1)")], check_fails=True),
    Mistake("train digits: biased variance in the running estimate", "ex13", [("m * var * n / (n - 1)", "m * var")],
            check_fails=True),
    Mistake("train digits: backward without the mean term", "ex13",
            [("(n * dout - self.dbeta - x_hat * self.dgamma)", "(n * dout - x_hat * self.dgamma)")], check_fails=True),
    Mistake("train digits: gradient ascent", "ex13",
            [("velocity[name] = 0.9 * velocity[name] - lr * grads[name]",
              "velocity[name] = 0.9 * velocity[name] + lr * grads[name]")], check_fails=True),
    # ex14: a deep network that trains
    Mistake("trainable: He initialization alone, no residual", "ex14", [(NO_ALPHA, '"alpha": None')], check_fails=True),
    Mistake("trainable: residual scales that start at 1", "ex14", [(NO_ALPHA, '"alpha": np.ones(DEPTH)')],
            check_fails=True),
    Mistake("trainable: weights of standard deviation 1", "ex14", [("np.sqrt(gains[k] / sizes[k])", "1.0")],
            check_fails=True),
]
