"""Hidden cases for Exercise 7: class BatchNorm1d, compared with torch.nn.BatchNorm1d itself."""

from __future__ import annotations

import threading

import numpy as np

from bncourse.grading.spec import Case, call, expect, get, put

from _common import dims, sample

_TORCH_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}
# torch's intra-op threads only slow these tiny tensors down (badly, on a loaded machine), and
# the setting is process-wide: take a lock, use one thread, restore the caller's setting.
_TORCH_LOCK = threading.Lock()


def _run(name, points, rng, c, batches, *, kwargs=None, eval_batch=None, dtype=np.float32,
         set_affine=False, export_state=True, export_count=False):
    """Feed the same batches to the student's layer and to torch's; expect torch's results."""
    import torch

    kwargs = dict(kwargs or {})
    dtype = np.dtype(dtype)
    torch_layer = torch.nn.BatchNorm1d(c, dtype=getattr(torch, _TORCH_DTYPES[dtype]), **kwargs)
    # The dtype travels as a string ("float64"), which NumPy accepts wherever it takes a dtype.
    extra = {"dtype": dtype.name} if dtype != np.float32 else {}
    steps = [call("BatchNorm1d", c, store="layer", **kwargs, **extra)]
    expected = {}
    if set_affine:
        weight = rng.uniform(0.5, 2.0, size=c).astype(dtype)
        bias = rng.normal(size=c).astype(dtype)
        steps += [put("layer", "weight", weight), put("layer", "bias", bias)]
        with torch.no_grad():
            torch_layer.weight.copy_(torch.from_numpy(weight))
            torch_layer.bias.copy_(torch.from_numpy(bias))
    for k, x in enumerate(batches):
        x = x.astype(dtype)
        steps.append(call("layer", x, store=f"train{k}"))
        with torch.no_grad():
            expected[f"train{k}"] = expect(torch_layer(torch.from_numpy(x)).numpy(), dtype=dtype)
    if export_state and torch_layer.track_running_stats:
        steps += [get("layer", "running_mean", "running_mean"), get("layer", "running_var", "running_var")]
        expected["running_mean"] = expect(torch_layer.running_mean.numpy(), dtype=None,
                                          rtol=1e-4 if dtype == np.float32 else 1e-9, atol=1e-6)
        expected["running_var"] = expect(torch_layer.running_var.numpy(), dtype=None,
                                         rtol=1e-4 if dtype == np.float32 else 1e-9, atol=1e-6)
    if export_count:
        steps.append(get("layer", "num_batches_tracked", "num_batches_tracked"))
        expected["num_batches_tracked"] = expect(np.int64(torch_layer.num_batches_tracked.item()),
                                                 dtype=None, exact=True)
    if eval_batch is not None:
        x = eval_batch.astype(dtype)
        steps += [call("layer.eval"), call("layer", x, store="eval_out")]
        torch_layer.eval()
        with torch.no_grad():
            expected["eval_out"] = expect(torch_layer(torch.from_numpy(x)).numpy(), dtype=dtype)
    return Case(name, points, steps, expected)


def _batches(rng, count, shape):
    c = shape[1]
    loc = rng.normal(size=(1, c) + (1,) * (len(shape) - 2)) * 2
    return [sample(rng, shape, np.float64, loc=loc, scale=rng.uniform(0.5, 3.0)) for _ in range(count)]


def cases(rng: np.random.Generator) -> list[Case]:
    import torch

    with _TORCH_LOCK:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _cases(rng)
        finally:
            torch.set_num_threads(threads)


def _cases(rng: np.random.Generator) -> list[Case]:
    c, n = dims(rng, 2, 6), dims(rng, 4, 16)
    out = [_run("three training steps, default arguments: outputs and running statistics", 2,
                rng, c, _batches(rng, 3, (n, c)))]
    c, n = dims(rng, 2, 6), dims(rng, 4, 16)
    out.append(_run("training then evaluation on a new batch", 2, rng, c, _batches(rng, 2, (n, c)),
                    eval_batch=_batches(rng, 1, (dims(rng, 1, 5), c))[0], export_state=False))
    c, n = dims(rng, 2, 6), dims(rng, 4, 16)
    out.append(_run("momentum=None (cumulative average) over four steps", 1, rng, c,
                    _batches(rng, 4, (n, c)), kwargs={"momentum": None}))
    c, n, length = dims(rng, 2, 5), dims(rng, 2, 6), dims(rng, 2, 6)
    out.append(_run("3-D input (N, C, L), momentum=0.3, then evaluation", 1, rng, c,
                    _batches(rng, 2, (n, c, length)), kwargs={"momentum": 0.3},
                    eval_batch=_batches(rng, 1, (3, c, length))[0]))
    c, n = dims(rng, 2, 6), dims(rng, 4, 16)
    out.append(_run("affine=False", 1, rng, c, _batches(rng, 2, (n, c)), kwargs={"affine": False}))
    c, n = dims(rng, 2, 6), dims(rng, 4, 16)
    out.append(_run("track_running_stats=False: evaluation still uses the batch", 1, rng, c,
                    _batches(rng, 1, (n, c)), kwargs={"track_running_stats": False},
                    eval_batch=_batches(rng, 1, (n, c))[0]))
    c, n = dims(rng, 2, 6), dims(rng, 4, 16)
    out.append(_run("float64 layer with weight and bias set from outside, eps=1e-3", 1, rng, c,
                    _batches(rng, 2, (n, c)), kwargs={"eps": 1e-3}, dtype=np.float64,
                    set_affine=True, eval_batch=_batches(rng, 1, (2, c))[0]))
    c, n = dims(rng, 2, 6), dims(rng, 4, 16)
    out.append(_run("num_batches_tracked counts training steps", 1, rng, c, _batches(rng, 3, (n, c)),
                    export_state=False, export_count=True))
    return out
