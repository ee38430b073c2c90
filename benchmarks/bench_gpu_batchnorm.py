#!/usr/bin/env python3
"""Batch norm on one GPU: torch's fused kernels vs the course's layers, and memory layout.

    python benchmarks/bench_gpu_batchnorm.py [--repeats 30] [--json out.json]

Needs CUDA (exits with a message otherwise). For an (N, C, H, W) input, times
training-mode forward + backward (CUDA events, median of interleaved rounds) of

- ``torch.nn.BatchNorm2d`` (cuDNN's fused kernels), NCHW and channels_last;
- ``bncourse.nn.BatchNorm2d`` and ``bncourse.nn.SyncBatchNorm`` without a process
  group (elementwise ops and reductions, no fused kernel);

in float32 and under ``torch.autocast(float16)``, and prints each as a ratio to
torch's NCHW layer in the same precision. Ratios from one run are comparable;
there is no multi-GPU measurement here (SyncBatchNorm's all-reduce latency needs
several GPUs).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from torch import nn

from bncourse.nn import BatchNorm2d, SyncBatchNorm

SHAPE = (32, 128, 56, 56)


def _case(module: nn.Module, x: torch.Tensor, up: torch.Tensor, amp: bool):
    def run() -> None:
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            y = module(x)
        y.backward(up)

    return run


def _time(cases: dict, repeats: int) -> dict[str, float]:
    names = list(cases)
    times: dict[str, list[float]] = {n: [] for n in names}
    for round_ in range(repeats + 3):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            cases[name]()
            end.record()
            torch.cuda.synchronize()
            if round_ >= 3:
                times[name].append(start.elapsed_time(end))
    return {n: statistics.median(t) for n, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs CUDA: no GPU visible")
    dev = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, x of shape {SHAPE}")
    results = {}
    for precision, amp in (("float32", False), ("autocast float16", True)):
        x = torch.randn(SHAPE, device=dev, requires_grad=True)
        x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
        dtype = torch.float16 if amp else torch.float32
        # Under autocast the conv before BN would hand it float16: feed float16 directly.
        xin = x.detach().to(dtype).requires_grad_(True)
        xin_cl = x_cl.detach().to(dtype).requires_grad_(True)
        up = torch.randn(SHAPE, device=dev, dtype=dtype)
        up_cl = up.to(memory_format=torch.channels_last)
        c = SHAPE[1]
        cases = {
            "torch BatchNorm2d (cuDNN), NCHW": _case(nn.BatchNorm2d(c).to(dev), xin, up, amp),
            "torch BatchNorm2d, channels_last": _case(nn.BatchNorm2d(c).to(dev), xin_cl, up_cl, amp),
            "bncourse.nn.BatchNorm2d": _case(BatchNorm2d(c).to(dev), xin, up, amp),
            "bncourse.nn.SyncBatchNorm (no group)": _case(SyncBatchNorm(c).to(dev), xin, up, amp),
        }
        for name in list(cases):
            try:
                cases[name]()
            except Exception as e:  # e.g. a layer that does not accept float16 input yet
                print(f"  {name}: skipped, {type(e).__name__}: {e}")
                del cases[name]
        times = _time(cases, args.repeats)
        base = times["torch BatchNorm2d (cuDNN), NCHW"]
        print(f"\n{precision}: forward + backward, median ms and ratio to torch NCHW")
        for name, ms in times.items():
            print(f"  {name:40s} {ms:8.3f} ms  x{ms / base:5.2f}")
        results[precision] = times
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "shape": SHAPE, "ms": results}, f, indent=1)


if __name__ == "__main__":
    main()
