#!/usr/bin/env python3
"""Batch normalization, forward + backward: native torch vs the course's versions.

    .venv/bin/python benchmarks/bench_batchnorm.py [--repeats 20] [--threads N]

For each size, times (interleaved rounds, median) training-mode forward +
backward of torch's native layer, ``bncourse.nn``, the naive autograd
version and the NumPy core, and prints each as a ratio to native torch, with
the bytes each keeps for backward. Then the two NumPy backward passes
(graph walk vs compact formula), and inference with and without batch norm
folded into the convolution before it. Ratios from one run are comparable;
absolute times on a shared machine are not.
"""

from __future__ import annotations

import argparse
import platform

import torch

from bncourse.lab import bench

SIZES = [(256, 4096), (64, 64, 32, 32)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per size (median)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{platform.processor() or platform.machine()}; float32; "
        f"median of {args.repeats} interleaved rounds"
    )
    for shape in SIZES:
        cases = bench.batchnorm_training_cases(shape)
        times = bench.time_interleaved(cases, repeats=args.repeats)
        saved = bench.saved_bytes_report(shape)
        native = times[bench.NATIVE]
        print(f"\nforward + backward, x of shape {shape} ({saved['input'] / 2**20:.1f} MiB)")
        print(f"  {'version':34s} {'median ms':>10s} {'x native':>9s} {'saved for backward':>19s}")
        for name, seconds in times.items():
            kept = saved[name] / 2**20
            note = " (NumPy cache)" if name == bench.NUMPY else ""
            ratio = seconds / native
            print(f"  {name:34s} {seconds * 1e3:10.2f} {ratio:8.2f}x {kept:14.3f} MiB{note}")

    for shape in SIZES:
        t = bench.time_interleaved(bench.numpy_backward_cases(shape), repeats=args.repeats)
        print(
            f"\nNumPy backward only, {shape}: compact {t['compact'] * 1e3:.2f} ms, "
            f"staged graph walk {t['staged'] * 1e3:.2f} ms "
            f"({t['staged'] / t['compact']:.2f}x the compact)"
        )

    print()
    for channels, kernel in ((32, 3), (32, 1)):
        t = bench.time_interleaved(
            bench.folding_cases(channels=channels, kernel_size=kernel), repeats=args.repeats
        )
        print(
            f"inference, Conv2d({channels}, {channels}, {kernel}) + BatchNorm2d "
            f"on (32, {channels}, 16, 16): "
            f"unfolded {t['conv + bn'] * 1e3:.2f} ms, folded {t['folded conv'] * 1e3:.2f} ms "
            f"({t['conv + bn'] / t['folded conv']:.2f}x speedup)"
        )


if __name__ == "__main__":
    main()
