"""``bncourse autograder-zip``: a Gradescope autograder bundle.

Gradescope unpacks the zip into ``/autograder/source``, runs ``setup.sh`` once
as root on Ubuntu to build the image, and then, for every submission, runs
``run_autograder`` with the student's files in ``/autograder/submission``,
expecting ``/autograder/results/results.json``. The bundle holds:

- ``setup.sh``: installs bubblewrap and libseccomp, then builds **two separate
  environments**: the grader's (``/opt/bncourse-venv``: bncourse, torch for the
  hidden cases of Exercise 7) and the students' (``/opt/bncourse-student``: NumPy
  only, nothing of the course). The grader's environment and the source directory
  are made readable by root only; student code runs as ``nobody`` in the students'
  environment, so even where bubblewrap cannot start (Docker's default seccomp
  profile blocks its namespaces) the course's code, hidden cases and templates are
  out of its reach (and Landlock, where the kernel has it, hides them again);
- ``run_autograder``: ``bncourse grade`` on the submission directory with the
  options of ``grade_args.txt``, then copies the result into place (or writes a
  zero result explaining the failure). Sandbox warnings go to the autograder's
  own output, which only instructors see;
- ``requirements.txt`` (grader), ``requirements-student.txt`` (students),
  ``pyproject.toml`` and ``bncourse/``: the package source;
- ``tests/hidden/``: the hidden cases; ``book/exercises/``: the released templates;
- ``grade_args.txt``: the options fixed when the bundle was built: which exercises
  the assignment grades (default: those present in the submission), the per-exercise
  CPU-time limit, and the memory limit (default 512 MB, inside Gradescope's 768 MB
  container).
"""

from __future__ import annotations

import os
import shlex
import sys
import zipfile
from pathlib import Path

from .exercises import EXERCISES, get_exercise

__all__ = ["build_autograder_zip", "present_exercises", "SETUP_SH", "RUN_AUTOGRADER"]

SETUP_SH = r"""#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image (Ubuntu).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SRC="${AUTOGRADER_ROOT:-/autograder}/source"
apt-get update
# bubblewrap is the sandbox where namespaces work; libseccomp compiles the seccomp rules.
apt-get install -y --no-install-recommends bubblewrap libseccomp2 python3 python3-venv python3-pip \
    ca-certificates
# The grader's environment: the course package, and torch (the hidden cases of Exercise 7
# compare with torch.nn.BatchNorm1d in the grader's process, never in the student's).
python3 -m venv /opt/bncourse-venv
/opt/bncourse-venv/bin/pip install --upgrade pip
/opt/bncourse-venv/bin/pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
/opt/bncourse-venv/bin/pip install -r "$SRC/requirements.txt"
/opt/bncourse-venv/bin/pip install "$SRC"
# The students' environment: NumPy only, no course code; student code runs in it as nobody.
python3 -m venv /opt/bncourse-student
/opt/bncourse-student/bin/pip install -r "$SRC/requirements-student.txt"
chmod -R a+rX /opt/bncourse-student
# The grader's files: root only. Student code never runs as root.
chmod -R go-rwx /opt/bncourse-venv "$SRC"
"""

RUN_AUTOGRADER = r"""#!/usr/bin/env bash
# Gradescope runs this for every submission. AUTOGRADER_ROOT and BNCOURSE_PYTHON exist for testing.
set -uo pipefail
ROOT="${AUTOGRADER_ROOT:-/autograder}"
PY="${BNCOURSE_PYTHON:-/opt/bncourse-venv/bin/python}"
# The students' interpreter environment made by setup.sh (NumPy only); without it the grader finds one.
if [ -z "${BNCOURSE_STUDENT_PYTHON:-}" ] && [ -x /opt/bncourse-student/bin/python ]; then
    export BNCOURSE_STUDENT_PYTHON=/opt/bncourse-student/bin/python
fi
SRC="$ROOT/source"
OUT="$(mktemp -d)"
mkdir -p "$ROOT/results"
chmod 700 "$OUT"
read -r -a EXTRA < "$SRC/grade_args.txt" || true
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"  # the bundle's own package first
if ! grep -q -- "--exercises" "$SRC/grade_args.txt"; then
    # No fixed list: grade the exercises this submission contains (not all eight).
    PRESENT="$("$PY" -m bncourse.grading.gradescope present "$ROOT/submission" "$SRC/book/exercises")"
    if [ -n "$PRESENT" ]; then EXTRA+=(--exercises "$PRESENT"); fi
fi
"$PY" -m bncourse.cli grade "$ROOT/submission" --out "$OUT" \
    --hidden "$SRC/tests/hidden" --templates "$SRC/book/exercises" --jobs 1 "${EXTRA[@]}"
if [ -f "$OUT/submission/results.json" ]; then
    cp "$OUT/submission/results.json" "$ROOT/results/results.json"
else
    MSG="The autograder failed before it could grade this submission. Please tell your instructor."
    printf '{"score": 0.0, "output": "%s", "tests": []}\n' "$MSG" > "$ROOT/results/results.json"
fi
rm -rf "$OUT"
"""

REQUIREMENTS = """# Installed by setup.sh into /opt/bncourse-venv (torch comes from the CPU index, see setup.sh).
numpy>=1.26,<3
torch==2.13.0
# The digits that Exercises 13 and 14 train on come from scikit-learn (read by the grader, not the sandbox).
scikit-learn>=1.4
"""

STUDENT_REQUIREMENTS = """# Installed by setup.sh into /opt/bncourse-student: all that student code may import.
numpy>=1.26,<3
"""


def build_autograder_zip(out: Path, exercises: list[str] | None = None, hidden: Path | None = None,
                         templates: Path | None = None, timeout: float = 10.0,
                         memory_mb: int = 512) -> Path:
    """Write the bundle to ``out`` and return its path.

    ``exercises`` fixes which exercises the Gradescope assignment grades (e.g.
    ``["ex01", "ex03"]``: a submission missing one scores 0 on it); by default each
    submission is graded on the exercises it contains. ``timeout`` is the CPU-time
    limit per exercise in seconds, ``memory_mb`` the student process's memory limit
    (Gradescope's default container has 768 MB in all).
    """
    from .grader import default_paths

    paths = default_paths()
    hidden = Path(hidden or paths["hidden"])
    templates = Path(templates or paths["templates"])
    package = Path(__file__).resolve().parents[1]
    if memory_mb < 128:
        raise ValueError(f"expected a memory limit of at least 128 MB (NumPy needs about 100), got {memory_mb}")
    ids = [get_exercise(e).id for e in exercises] if exercises else None
    for ex in EXERCISES:
        if not (hidden / ex.hidden).exists():
            raise ValueError(f"expected the hidden cases {hidden / ex.hidden}")
        if not (templates / ex.notebook).exists():
            raise ValueError(f"expected the released notebook {templates / ex.notebook}; run `bncourse release`")
    args = (["--exercises", ",".join(ids)] if ids else []) + [
        "--timeout", f"{timeout:g}", "--memory-mb", str(int(memory_mb))]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        _add_text(zf, "setup.sh", SETUP_SH, executable=True)
        _add_text(zf, "run_autograder", RUN_AUTOGRADER, executable=True)
        _add_text(zf, "requirements.txt", REQUIREMENTS)
        _add_text(zf, "requirements-student.txt", STUDENT_REQUIREMENTS)
        _add_text(zf, "grade_args.txt", " ".join(shlex.quote(a) for a in args) + "\n")
        _add_text(zf, "pyproject.toml", _pyproject())
        for path in sorted(package.rglob("*.py")):
            if "__pycache__" not in path.parts:
                zf.write(path, f"bncourse/{path.relative_to(package)}")
        for path in sorted(hidden.iterdir()):
            if path.is_file() and path.suffix in (".py", ".md"):
                zf.write(path, f"tests/hidden/{path.name}")
        for ex in EXERCISES:
            zf.write(templates / ex.notebook, f"book/exercises/{ex.notebook}")
    return out


def _pyproject() -> str:
    """A minimal pyproject for installing the bundled package (no README, no console scripts needed)."""
    return (
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "bncourse"\nversion = "0.1.0"\nrequires-python = ">=3.10"\n'
        'dependencies = ["numpy>=1.26"]\n\n[project.scripts]\nbncourse = "bncourse.cli:main"\n\n'
        '[tool.setuptools.packages.find]\ninclude = ["bncourse*"]\n'
    )


def _add_text(zf: zipfile.ZipFile, name: str, text: str, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (0o755 if executable else 0o644) << 16
    zf.writestr(info, text)


def present_exercises(submission: Path, templates: Path | None = None, max_files: int = 200) -> list[str]:
    """Ids of the exercises among the notebooks in ``submission`` (what Gradescope grades by default).

    Only regular files are read (``lstat`` first, no symlinks followed, a byte cap), and
    anything unreadable is skipped: the grader reports it properly afterwards.
    """
    from .notebooks import NotebookError, identify_exercise, parse_notebook, read_notebook, read_regular_file

    known = {}
    for ex in EXERCISES:
        if templates is not None and (Path(templates) / ex.notebook).is_file():
            known[ex.id] = read_notebook(Path(templates) / ex.notebook)
    found: set[str] = set()
    seen = 0
    for dirpath, dirnames, filenames in os.walk(submission, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith(".ipynb") or name.startswith(".") or seen >= max_files:
                continue
            seen += 1
            try:
                data = read_regular_file(os.path.join(dirpath, name), 20_000_000)
                ex, _ = identify_exercise(parse_notebook(data, name), name, known)
            except (OSError, NotebookError, ValueError, RecursionError):
                continue
            if ex is not None:
                found.add(ex.id)
    return sorted(found)


if __name__ == "__main__":  # run_autograder: `python -m bncourse.grading.gradescope present SUBMISSION TEMPLATES`
    if len(sys.argv) == 4 and sys.argv[1] == "present":
        print(",".join(present_exercises(Path(sys.argv[2]), Path(sys.argv[3]))))
    else:
        sys.exit("usage: python -m bncourse.grading.gradescope present SUBMISSION_DIR TEMPLATES_DIR")
