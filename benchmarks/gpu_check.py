#!/usr/bin/env python3
"""bncourse.nn against torch.nn on a CUDA GPU: correctness first, then speed ratios.

    python benchmarks/gpu_check.py [--repeats 50] [--device cuda]

``--device cpu`` runs the correctness checks only, on the CPU (a dry run of
the script where there is no GPU; CPU autocast uses bfloat16 only).

Meant for one short run on a GPU machine (well under 3 minutes on one
H100); CI has no GPU and never runs it. Checks, each against torch.nn on
the same device and inputs, and exits non-zero on the first mismatch:

1. float32 and float64 training steps (output, gradients, running
   statistics) for BatchNorm1d/2d/3d, channels-last included, and eval;
2. double backward (a gradient penalty) in float64;
3. ``torch.autocast("cuda")`` forward + backward of a small conv model, in
   float16 and bfloat16, float32 statistics and buffers;
4. ``model.half()`` with 70,000 values per channel (finite, equal to torch).

Then it times, with CUDA events, training forward + backward and the
evaluation forward of ``torch.nn`` and ``bncourse.nn`` (the C kernels are
CPU-only; on CUDA ``bncourse.nn`` runs its torch-ops path) and prints the
ratios plus the copy-bandwidth roofline, labelled with the device name.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
from torch import nn

import bncourse.nn as bnn
from bncourse.lab.bench import roofline_passes

DEVICE = torch.device("cuda")


def check(name: str, fn) -> None:
    start = time.perf_counter()
    fn()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    print(f"ok   {name} ({time.perf_counter() - start:.1f} s)", flush=True)


def twins(make, dtype=torch.float32):
    torch.manual_seed(0)
    ref = make().to(DEVICE, dtype)
    return bnn.replace_batchnorm(copy.deepcopy(ref)), ref


def same(a, b, **tol) -> None:
    torch.testing.assert_close(a, b, **tol)


def steps() -> None:
    cases = [(nn.BatchNorm1d, (64, 16)), (nn.BatchNorm1d, (8, 16, 10)), (nn.BatchNorm2d, (8, 16, 6, 5)), (nn.BatchNorm3d, (4, 16, 3, 4, 5))]
    for dtype, tol in ((torch.float64, dict(rtol=1e-9, atol=1e-9)), (torch.float32, dict(rtol=1e-4, atol=1e-4))):
        for cls, shape in cases:
            for fmt in (None, torch.channels_last if len(shape) == 4 else None):
                ours, ref = twins(lambda: cls(16), dtype)
                for step in range(3):
                    x = torch.randn(shape, device=DEVICE, dtype=dtype) * 2 + step
                    if fmt is not None:
                        x = x.contiguous(memory_format=fmt)
                    dout = torch.randn_like(x)
                    grads = []
                    for layer in (ours, ref):
                        xi = x.clone().requires_grad_(True)
                        out = layer(xi)
                        out.backward(dout)
                        grads.append((out, xi.grad, layer.weight.grad))
                        layer.zero_grad()
                    for a, b in zip(*grads):
                        same(a, b, **tol)
                for a, b in zip(ours.buffers(), ref.buffers()):
                    same(a, b, **tol)
                ours.eval(), ref.eval()
                same(ours(x), ref(x), **tol)


def double_backward() -> None:
    ours, ref = twins(lambda: nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 1)), torch.float64)
    x = torch.randn(32, 8, device=DEVICE, dtype=torch.float64)
    grads = []
    for model in (ours, ref):
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        (dx,) = torch.autograd.grad(out.sum(), xi, create_graph=True)
        loss = ((dx.norm(dim=1) - 1) ** 2).mean() + out.square().mean()
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    scale = max(g.abs().max().item() for g in grads[1])
    for a, b in zip(*grads):
        same(a, b, rtol=1e-8, atol=1e-11 * scale)


def autocast(dtype: torch.dtype) -> None:
    def make():
        return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 14 * 14, 10))

    ours, ref = twins(make)
    x = torch.randn(64, 3, 16, 16, device=DEVICE)
    results = []
    for model in (ours, ref):
        with torch.autocast(DEVICE.type, dtype=dtype):
            out = model(x)
        out.float().square().mean().backward()
        results.append((out, [p.grad for p in model.parameters()]))
    assert results[0][0].dtype == results[1][0].dtype == dtype
    same(results[0][0], results[1][0], rtol=3e-2, atol=3e-2)
    # A conv bias right before batch norm has gradient 0 in exact arithmetic: compare
    # every gradient at the scale of the largest one.
    scale = max(g.abs().max().item() for g in results[1][1])
    for a, b in zip(results[0][1], results[1][1]):
        same(a, b, rtol=5e-2, atol=2e-2 * scale)
    assert ours[1].running_mean.dtype == torch.float32
    for a, b in zip(ours.buffers(), ref.buffers()):
        same(a, b, rtol=1e-2, atol=1e-2)


def half_model() -> None:
    ours, ref = twins(lambda: nn.BatchNorm2d(2))
    ours.half(), ref.half()
    x = (torch.randn(70, 2, 10, 100, device=DEVICE) * 20 + 30).half()
    a, b = ours(x), ref(x)
    assert torch.isfinite(a).all() and torch.isfinite(ours.running_var).all()
    same(a, b, rtol=1e-2, atol=1e-2)
    same(ours.running_var, ref.running_var, rtol=1e-3, atol=1e-2)


def time_cuda(fns: dict, repeats: int) -> dict[str, float]:
    """Median milliseconds per call, interleaved rounds, CUDA events."""
    times = {name: [] for name in fns}
    for _ in range(3):
        for fn in fns.values():
            fn()
    for round_ in range(repeats):
        names = list(fns)
        names = names[round_ % len(names):] + names[: round_ % len(names)]
        for name in names:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fns[name]()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end))
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def speed(repeats: int) -> None:
    print(f"\nspeed on {torch.cuda.get_device_name()}, float32, median of {repeats} rounds (CUDA events)")
    print(f"{'case':40s} {'torch.nn ms':>11s} {'bncourse.nn':>12s} {'roofline':>9s}")
    for label, shape, mode, fmt in (
        ("train", (256, 4096), "train", torch.contiguous_format),
        ("train", (64, 64, 32, 32), "train", torch.contiguous_format),
        ("train channels_last", (64, 64, 32, 32), "train", torch.channels_last),
        ("train", (256, 256, 28, 28), "train", torch.contiguous_format),
        ("eval", (64, 64, 32, 32), "eval", torch.contiguous_format),
    ):
        c = shape[1]
        cls = (nn.BatchNorm2d, bnn.BatchNorm2d) if len(shape) == 4 else (nn.BatchNorm1d, bnn.BatchNorm1d)
        x = (torch.randn(shape, device=DEVICE) * 2 + 1).contiguous(memory_format=fmt)
        dout = torch.randn_like(x)
        xg = x.clone().requires_grad_(True)
        fns = {}
        for name, klass in zip(("torch", "ours"), cls):
            layer = klass(c).to(DEVICE).train(mode == "train")
            if mode == "train":
                fns[name] = lambda layer=layer: layer(xg).backward(dout)
            else:
                fns[name] = lambda layer=layer: layer(x)
        fns["clone"] = x.clone
        with torch.set_grad_enabled(mode == "train"):
            t = time_cuda(fns, repeats)
        roofline = roofline_passes(mode) / 2 * t["clone"]
        print(f"{label + ' ' + str(shape):40s} {t['torch']:11.3f} {t['ours'] / t['torch']:11.2f}x {roofline / t['torch']:8.2f}x")


def main() -> None:
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run of the checks")
    args = parser.parse_args()
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        sys.exit(0)
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "CPU (dry run)"
    print(f"torch {torch.__version__} on {name}")
    check("training steps and eval, float32/float64, 1d/2d/3d, channels-last", steps)
    check("double backward (gradient penalty), float64", double_backward)
    if DEVICE.type == "cuda":
        check("autocast float16 conv model", lambda: autocast(torch.float16))
    check("autocast bfloat16 conv model", lambda: autocast(torch.bfloat16))
    check("model.half() with 70,000 values per channel", half_model)
    if DEVICE.type == "cuda":
        speed(args.repeats)


if __name__ == "__main__":
    main()
