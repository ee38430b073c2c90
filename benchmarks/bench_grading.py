"""Grading throughput: ``bncourse grade`` versus executing every notebook with nbclient.

    .venv/bin/python benchmarks/bench_grading.py [--submissions 100] [--jobs 2] [--nbclient-sample 10]

A submission here is one student's eight exercise notebooks (a directory), the
way a whole-course Gradescope assignment receives them. The batch mixes complete
solutions (60 %), partial work with one exercise left as the stub (20 %) and
untouched stubs (20 %), and the script first checks that every submission got
the score it should, so the timing is of a grader that works.

The usual approach executes each notebook from top to bottom in a fresh Jupyter
kernel (nbclient, as nbgrader's autograde does). Running that on all 800
notebooks would take long, so the script executes a sample of notebooks (by
default 10, cycling through the exercises) with the same parallelism, and
extrapolates: baseline = mean seconds per notebook x 8 notebooks x submissions.
The baseline is optimistic for nbclient: it runs only the public checks, no
hidden tests. The target is a ratio of at least 5.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bncourse.grading.exercises import EXERCISES  # noqa: E402
from bncourse.grading.grader import Grader, collect_submissions, default_paths, grade_batch  # noqa: E402
from bncourse.grading.sandbox import detect_sandbox  # noqa: E402

TARGET = 5.0


def make_submissions(root: Path, count: int) -> dict[str, float]:
    """Write ``count`` directory submissions under ``root``; returns the expected score of each."""
    paths = default_paths()
    expected = {}
    for i in range(count):
        sub = root / f"student{i:03d}"
        sub.mkdir(parents=True)
        kind = i % 5
        stubbed = set(ex.id for ex in EXERCISES) if kind == 4 else (
            {EXERCISES[i % len(EXERCISES)].id} if kind == 3 else set())
        for ex in EXERCISES:
            source = paths["templates"] if ex.id in stubbed else paths["solutions"]
            shutil.copyfile(source / ex.notebook, sub / ex.notebook)
        expected[sub.name] = sum(ex.points for ex in EXERCISES if ex.id not in stubbed)
    return expected


def time_nbclient(sample: int, jobs: int, workdir: Path) -> list[float]:
    """Execute ``sample`` solution notebooks with nbclient, ``jobs`` at a time; seconds per notebook."""
    import nbformat
    from nbclient import NotebookClient

    notebooks = [default_paths()["solutions"] / EXERCISES[k % len(EXERCISES)].notebook for k in range(sample)]

    def run(path: Path) -> float:
        nb = nbformat.read(path, as_version=4)
        started = time.perf_counter()
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(workdir)}}).execute()
        return time.perf_counter() - started

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        per_notebook = list(pool.map(run, notebooks))
    wall = time.perf_counter() - started
    return per_notebook, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submissions", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--nbclient-sample", type=int, default=10)
    parser.add_argument("--sandbox", default="auto", choices=["auto", "bwrap", "process"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        tmp = Path(tmp)
        expected = make_submissions(tmp / "subs", args.submissions)
        sandbox = detect_sandbox(args.sandbox)
        paths = default_paths()
        grader = Grader(paths["hidden"], paths["templates"], sandbox)
        subs = collect_submissions(sorted((tmp / "subs").iterdir()))
        started = time.perf_counter()
        rows = grade_batch(grader, subs, tmp / "out", jobs=args.jobs, progress=None, resume=False)
        ours = time.perf_counter() - started
        wrong = {name: (r["score"], expected[name]) for name, r in rows if r["score"] != expected[name]}
        if wrong:
            print(f"grading is wrong for {len(wrong)} submissions: {dict(list(wrong.items())[:5])}")
            return 1
        per_notebook, nb_wall = time_nbclient(args.nbclient_sample, args.jobs, tmp)

    notebooks_per_sub = len(EXERCISES)
    nb_per_notebook = nb_wall / len(per_notebook)  # wall time per notebook with `jobs` in parallel
    baseline = nb_per_notebook * notebooks_per_sub * args.submissions
    ratio = baseline / ours
    print(json.dumps({"sandbox": sandbox.kind, "submissions": args.submissions, "jobs": args.jobs},
                     sort_keys=True))
    print(f"bncourse grade: {args.submissions} submissions x {notebooks_per_sub} notebooks in {ours:.1f} s "
          f"({ours / args.submissions:.2f} s per submission, {args.jobs} jobs, {sandbox.kind} sandbox); "
          "all scores as expected")
    print(f"nbclient: executed a sample of {len(per_notebook)} notebooks ({args.jobs} at a time) in "
          f"{nb_wall:.1f} s, {nb_per_notebook:.2f} s per notebook (single-notebook times "
          f"{min(per_notebook):.1f}-{max(per_notebook):.1f} s)")
    print(f"nbclient extrapolated to {args.submissions} submissions x {notebooks_per_sub} notebooks: "
          f"{baseline:.0f} s (measured on the sample, not run in full)")
    print(f"speed-up: {ratio:.1f}x (target >= {TARGET:g}x: {'met' if ratio >= TARGET else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
