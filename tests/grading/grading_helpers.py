"""Building submissions for the grading tests: solution/stub copies, mutants, hostile notebooks."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from bncourse.grading.exercises import EXERCISES, get_exercise
from bncourse.grading.grader import default_paths
from bncourse.grading.notebooks import cell_role, cell_source
from bncourse.grading.sandbox import Limits

PATHS = default_paths()
ROOT = PATHS["solutions"].parent
# Short per-exercise timeouts keep the infinite-loop cases cheap; correct answers need ~0.1 s.
TEST_LIMITS = Limits(timeout=4.0)


def load(ex_id: str, version: str = "solutions") -> dict:
    """A notebook as JSON: ``version`` is ``"solutions"`` or ``"templates"`` (the student version)."""
    return json.loads((PATHS[version] / get_exercise(ex_id).notebook).read_text())


def answer_source(ex_id: str) -> str:
    nb = load(ex_id)
    return "\n\n".join(cell_source(c) for c in nb["cells"] if cell_role(c)[0] == "answer")


def with_answer(ex_id: str, code: str, version: str = "templates") -> dict:
    """The notebook of ``ex_id`` with its (single) answer cell replaced by ``code``."""
    nb = load(ex_id, version)
    answers = [c for c in nb["cells"] if cell_role(c)[0] == "answer"]
    assert len(answers) == 1, "these helpers assume one answer cell per exercise"
    answers[0]["source"] = code
    return nb


def mutate(ex_id: str, replacements: list[tuple[str, str]]) -> dict:
    """The solution notebook of ``ex_id`` with each ``old`` replaced by ``new`` in its answer cell.

    Every ``old`` must occur in the answer, so a mutant can never silently be the solution.
    """
    code = answer_source(ex_id)
    for old, new in replacements:
        assert old in code, f"mutation target not found in {ex_id}: {old!r}"
        code = code.replace(old, new)
    assert code != answer_source(ex_id)
    return with_answer(ex_id, code, version="solutions")


def bare(nb: dict) -> dict:
    """A copy of ``nb`` as an editor that drops metadata and cell ids leaves it."""
    nb = json.loads(json.dumps(nb))
    nb["metadata"] = {}
    for cell in nb["cells"]:
        cell.pop("id", None)
        cell["metadata"] = {}
    return nb


def write_nb(path: Path, nb: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb, indent=1))
    return path


def full_directory(path: Path, overrides: dict[str, dict] | None = None) -> Path:
    """A directory submission: every solution notebook, with some replaced by ``overrides``."""
    path.mkdir(parents=True, exist_ok=True)
    for ex in EXERCISES:
        if overrides and ex.id in overrides:
            write_nb(path / ex.notebook, overrides[ex.id])
        else:
            shutil.copyfile(PATHS["solutions"] / ex.notebook, path / ex.notebook)
    return path


def results_of(out: Path, name: str) -> dict:
    return json.loads((out / name / "results.json").read_text())


def exercise_scores(results: dict) -> dict[str, float]:
    return {ex: v["score"] for ex, v in results["extra_data"]["bncourse"]["exercises"].items()}


def all_outputs(results: dict) -> str:
    return results["output"] + "\n" + "\n".join(t["output"] for t in results["tests"])


def leftovers(pid: int | None = None, settle: float = 3.0) -> tuple[list[str], list[str]]:
    """``(processes, work dirs)`` a grading process ``pid`` (default: this one) left behind.

    Processes: its children running the sandbox runner, and any process whose command line
    names one of its work directories (an orphan of the plain-process sandbox, bubblewrap's
    inner process). Those still dying get ``settle`` seconds (bubblewrap's inner process
    is killed when its parent dies, a moment after it).
    """
    deadline = time.monotonic() + settle
    while True:
        found = _leftovers(os.getpid() if pid is None else pid)
        if found == ([], []) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def runner_leftovers(base: str) -> tuple[list[bytes], list[str]]:
    """Sandboxed processes (the runner) still running from the folder ``base``, and what is left in it."""
    procs = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"runner.py" in cmdline and base.encode() in cmdline:
            procs.append(cmdline)
    return procs, sorted(os.listdir(base))


def _leftovers(pid: int) -> tuple[list[str], list[str]]:
    prefix = f"bncourse-grade-{pid}-"
    procs = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
            with open(f"/proc/{entry}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
                ppid = int(ppid)
        except (OSError, ValueError, IndexError):
            continue
        if state == "Z":
            continue
        if prefix in cmd or (ppid == pid and "runner.py" in cmd):
            procs.append(f"{entry}: {cmd[:200]}")
    dirs = sorted(str(p) for p in Path(tempfile.gettempdir()).glob(prefix + "*"))
    return procs, dirs
