#!/usr/bin/env python3
"""Batch normalization speed: native torch vs the course's versions, and the memory roofline.

    .venv/bin/python benchmarks/bench_batchnorm.py [--repeats 20] [--threads 2] [--quick] [--statistic min]

Part 1 (every case, one run): training forward + backward on contiguous
``(256, 4096)`` and ``(64, 64, 32, 32)`` inputs, the latter also channels-last,
the evaluation forward, and an evaluation forward + backward (fine-tuning with
the statistics frozen), each timed for ``torch.nn``, ``bncourse.nn`` as it
runs by default (its C kernels, where they can be built) and ``bncourse.nn`` on
its torch-ops path (``use_kernels(False)``), printed as ratios to ``torch.nn``. The roofline column is the least time the layer could take on
this machine if every pass went to memory: the full-tensor reads and writes of
a two-pass forward and backward (6 and 2 for training, 1 and 1 for
evaluation, 3 and 2 with frozen statistics; see ``bench.roofline_passes``) at the read
bandwidth of ``x.sum()`` and the read + write bandwidth of ``x.clone()``,
measured on the same tensor in the same run.

Part 2 (skipped with ``--quick``): the naive autograd version and the NumPy
core, the two NumPy backward passes, and inference with batch norm folded
into the convolution before it.

Ratios from one run are comparable; absolute times on a shared machine are not.
"""

from __future__ import annotations

import argparse
import platform

import torch

from bncourse.lab import bench

SIZES = [(256, 4096), (64, 64, 32, 32)]
LAYER_CASES = [  # (label, shape, mode, memory format)
    ("train", (256, 4096), "train", torch.contiguous_format),
    ("train", (64, 64, 32, 32), "train", torch.contiguous_format),
    ("train channels_last", (64, 64, 32, 32), "train", torch.channels_last),
    ("eval", (256, 4096), "eval", torch.contiguous_format),
    ("eval", (64, 64, 32, 32), "eval", torch.contiguous_format),
    ("frozen (eval + backward)", (64, 64, 32, 32), "frozen", torch.contiguous_format),
]


def layer_table(repeats: int, statistic: str) -> None:
    """Part 1: every case's ratios to torch.nn and the roofline, from one run."""
    fused = "measured" if bench.fused_available() else "n/a (the C kernels cannot be built here)"
    print(f"\n{'case':44s} {'torch.nn':>9s} {'bncourse.nn':>12s} {'bncourse.nn':>12s} {'roofline':>9s} {'torch.nn':>9s}")
    print(f"{'':44s} {'':>9s} {'(default)':>12s} {'torch ops':>12s} {'':>9s} {'':>9s}")
    print(f"{'':44s} {'ms':>9s} {'x torch':>12s} {'x torch':>12s} {'x torch':>9s} {'clones':>9s}")
    for label, shape, mode, fmt in LAYER_CASES:
        cases = bench.layer_cases(shape, mode, memory_format=fmt)
        times = bench.time_interleaved(cases, repeats=repeats, statistic=statistic)
        native, clone = times[bench.NATIVE], times[bench.COPY]
        roofline = bench.roofline_time(mode, times[bench.READ], clone)
        fused_ratio = f"{times[bench.FUSED] / native:11.2f}x" if bench.FUSED in times else "        n/a"
        print(
            f"{label + ' ' + str(shape):44s} {native * 1e3:9.2f} {fused_ratio} {times[bench.OURS] / native:11.2f}x "
            f"{roofline / native:8.2f}x {native / clone:9.1f}"
        )
    x = torch.randn(64, 64, 32, 32)
    t = bench.time_interleaved({"read": x.sum, "copy": x.clone}, repeats=repeats, statistic=statistic)
    x_bytes = x.numel() * x.element_size()
    print(
        f"\nroofline: training reads 6 x bytes(x) and writes 2 x, evaluation 1 and 1, frozen 3 and 2, all from memory (the C kernels re-read a channel from cache). "
        f"Measured on a 16 MiB tensor: read {x_bytes / t['read'] / 1e9:.1f} GB/s (x.sum()), "
        f"read + write {2 * x_bytes / t['copy'] / 1e9:.1f} GB/s (x.clone()). C kernels: {fused}."
    )


def comparison_tables(repeats: int) -> None:
    """Part 2: naive autograd and NumPy, the NumPy backward passes, folding."""
    for shape in SIZES:
        cases = bench.batchnorm_training_cases(shape)
        times = bench.time_interleaved(cases, repeats=repeats)
        saved = bench.saved_bytes_report(shape)
        native = times[bench.NATIVE]
        print(f"\nforward + backward, x of shape {shape} ({saved['input'] / 2**20:.1f} MiB)")
        print(f"  {'version':34s} {'median ms':>10s} {'x native':>9s} {'saved for backward':>19s}")
        for name, seconds in times.items():
            kept = saved[name] / 2**20
            note = " (NumPy cache)" if name == bench.NUMPY else ""
            print(f"  {name:34s} {seconds * 1e3:10.2f} {seconds / native:8.2f}x {kept:14.3f} MiB{note}")

    for shape in SIZES:
        t = bench.time_interleaved(bench.numpy_backward_cases(shape), repeats=repeats)
        print(
            f"\nNumPy backward only, {shape}: compact {t['compact'] * 1e3:.2f} ms, "
            f"staged graph walk {t['staged'] * 1e3:.2f} ms "
            f"({t['staged'] / t['compact']:.2f}x the compact)"
        )

    print()
    for channels, kernel in ((32, 3), (32, 1)):
        t = bench.time_interleaved(
            bench.folding_cases(channels=channels, kernel_size=kernel), repeats=repeats
        )
        print(
            f"inference, Conv2d({channels}, {channels}, {kernel}) + BatchNorm2d "
            f"on (32, {channels}, 16, 16): "
            f"unfolded {t['conv + bn'] * 1e3:.2f} ms, folded {t['folded conv'] * 1e3:.2f} ms "
            f"({t['conv + bn'] / t['folded conv']:.2f}x speedup)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per case (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="part 1 only")
    parser.add_argument(
        "--statistic", choices=("median", "min"), default="median",
        help="per case: median round, or fastest round (on a shared machine load only adds time)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{platform.processor() or platform.machine()}; float32; "
        f"{args.statistic} of {args.repeats} interleaved rounds"
    )
    bench.fused_available()  # compile (or load from the disk cache) the kernels before timing
    layer_table(args.repeats, args.statistic)
    if not args.quick:
        comparison_tables(args.repeats)


if __name__ == "__main__":
    main()
