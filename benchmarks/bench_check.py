"""How long a student waits for ``bncourse check``: the whole command, as typed, per exercise.

    .venv/bin/python benchmarks/bench_check.py [--repeats 5]

Each exercise's solution notebook is checked ``--repeats`` times with the command line
(``python -m bncourse.cli check NOTEBOOK`` in a fresh process, as a student runs it); the
median wall time is reported, split into its parts measured in one process: start-up and
imports, picking the sandbox afresh (the grader's own probe), and the sandboxed run itself.
The command remembers its sandbox choice for an hour (``sandbox_cache``), as a student's
repeated checks do, so after the first run it does not pay the ``sandbox`` column.
Targets: at most 1 s for the NumPy exercises and 3 s for Exercise 7; the ratio printed is
target / median (at least 1 meets the target). For scale, the script also times
``python -c "import numpy"`` in the same run: a check starts three interpreters that import
NumPy (the command, the sandboxed run, and the probe when the choice is not remembered), so
on a loaded machine its wall time is a few times that floor. (CPU time is not a fair substitute: processes in
bubblewrap's PID namespace are not counted in the parent's children times.) Every run must
pass, so the timing is of a check that works.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bncourse.grading.exercises import EXERCISES  # noqa: E402

TARGETS = {"ex07": 3.0}
DEFAULT_TARGET = 1.0


def _timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True)
    return time.perf_counter() - started


def command_seconds(notebook: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "bncourse.cli", "check", str(notebook)], cwd=ROOT,
                              capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"check failed on {notebook.name}:\n{done.stdout}{done.stderr}")
    return statistics.median(times)


def parts(notebook: Path) -> tuple[float, float, float]:
    """(imports, sandbox detection, check run) in seconds, measured in a fresh process."""
    code = (
        "import time, io; t0 = time.perf_counter()\n"
        "from bncourse.grading.check import check_notebook\n"
        "from bncourse.grading.sandbox import detect_sandbox\n"
        "t1 = time.perf_counter(); s = detect_sandbox('auto'); t2 = time.perf_counter()\n"
        f"assert check_notebook({str(notebook)!r}, out=io.StringIO(), sandbox=s) == 0\n"
        "t3 = time.perf_counter(); print(t1 - t0, t2 - t1, t3 - t2, s.kind)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    imports, detect, run, _ = out.stdout.split()
    return float(imports), float(detect), float(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    floor = statistics.median(
        _timed([sys.executable, "-c", "import numpy"]) for _ in range(args.repeats))
    kind = subprocess.run([sys.executable, "-c", "from bncourse.grading.sandbox import detect_sandbox; "
                           "print(detect_sandbox('auto').kind)"], cwd=ROOT, capture_output=True, text=True).stdout
    print(f"sandbox: {kind.strip()}; median of {args.repeats} runs of `bncourse check` per exercise; "
          f"for scale, `python -c 'import numpy'` takes {floor:.2f} s on this machine now")
    print(f"{'exercise':10} {'median s':>9} {'imports':>8} {'sandbox':>8} {'run':>6} {'target':>7} {'ratio':>6}")
    worst = float("inf")
    for ex in EXERCISES:
        notebook = ROOT / "solutions" / ex.notebook
        seconds = command_seconds(notebook, args.repeats)
        imports, detect, run = parts(notebook)
        target = TARGETS.get(ex.id, DEFAULT_TARGET)
        worst = min(worst, target / seconds)
        print(f"{ex.id:10} {seconds:9.2f} {imports:8.2f} {detect:8.2f} {run:6.2f} {target:7.1f} {target / seconds:6.2f}")
    print(f"worst ratio target/median: {worst:.2f} ({'meets' if worst >= 1 else 'misses'} the targets)")


if __name__ == "__main__":
    main()
