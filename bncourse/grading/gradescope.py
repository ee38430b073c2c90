"""``bncourse autograder-zip``: a Gradescope autograder bundle.

Gradescope unpacks the zip into ``/autograder/source``, runs ``setup.sh`` once
as root on Ubuntu to build the image, and then, for every submission, runs
``run_autograder`` with the student's files in ``/autograder/submission``,
expecting ``/autograder/results/results.json``. The bundle holds:

- ``setup.sh``: installs bubblewrap and a virtual environment with the pinned
  requirements and the bncourse package, then makes the source directory
  readable by root only (so even without bubblewrap, the sandboxed ``nobody``
  process cannot read the hidden tests);
- ``run_autograder``: ``bncourse grade`` on the submission directory, then copies
  the result into place (or writes a zero result explaining the failure);
- ``requirements.txt``, ``pyproject.toml`` and ``bncourse/``: the package source;
- ``tests/hidden/``: the hidden cases; ``book/exercises/``: the released templates;
- ``grade_args.txt``: the options fixed when the bundle was built.
"""

from __future__ import annotations

import shlex
import zipfile
from pathlib import Path

from .exercises import EXERCISES, get_exercise

__all__ = ["build_autograder_zip", "SETUP_SH", "RUN_AUTOGRADER"]

SETUP_SH = r"""#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image (Ubuntu).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update
# bubblewrap is the sandbox; without it the grader falls back to a limited process and says so.
apt-get install -y --no-install-recommends bubblewrap python3 python3-venv python3-pip ca-certificates
python3 -m venv /opt/bncourse-venv
/opt/bncourse-venv/bin/pip install --upgrade pip
# The CPU build of torch (the hidden tests of Exercise 7 compare with torch.nn.BatchNorm1d).
/opt/bncourse-venv/bin/pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
/opt/bncourse-venv/bin/pip install -r /autograder/source/requirements.txt
/opt/bncourse-venv/bin/pip install /autograder/source
# Hidden tests and templates: root only. The sandboxed code never runs as root.
chmod -R go-rwx /autograder/source
"""

RUN_AUTOGRADER = r"""#!/usr/bin/env bash
# Gradescope runs this for every submission. AUTOGRADER_ROOT and BNCOURSE_PYTHON exist for testing.
set -uo pipefail
ROOT="${AUTOGRADER_ROOT:-/autograder}"
PY="${BNCOURSE_PYTHON:-/opt/bncourse-venv/bin/python}"
SRC="$ROOT/source"
OUT="$(mktemp -d)"
mkdir -p "$ROOT/results"
chmod 700 "$ROOT/results" "$OUT"
read -r -a EXTRA < "$SRC/grade_args.txt" || true
"$PY" -m bncourse.cli grade "$ROOT/submission" --out "$OUT" \
    --hidden "$SRC/tests/hidden" --templates "$SRC/book/exercises" --jobs 1 "${EXTRA[@]}"
if [ -f "$OUT/submission/results.json" ]; then
    cp "$OUT/submission/results.json" "$ROOT/results/results.json"
else
    MSG="The autograder failed before it could grade this submission. Please tell your instructor."
    printf '{"score": 0.0, "output": "%s", "tests": []}\n' "$MSG" > "$ROOT/results/results.json"
fi
"""

REQUIREMENTS = """# Installed by setup.sh into /opt/bncourse-venv (torch comes from the CPU index, see setup.sh).
numpy>=1.26,<3
torch==2.13.0
# The digits that Exercises 13 and 14 train on come from scikit-learn (read by the grader, not the sandbox).
scikit-learn>=1.4
"""


def build_autograder_zip(out: Path, exercises: list[str] | None = None, hidden: Path | None = None,
                         templates: Path | None = None, timeout: float = 10.0) -> Path:
    """Write the bundle to ``out`` and return its path.

    ``exercises`` fixes which exercises the Gradescope assignment grades (e.g.
    ``["ex03"]`` for an assignment made of Exercise 3); by default every exercise,
    for an assignment where students upload all their notebooks.
    """
    from .grader import default_paths

    paths = default_paths()
    hidden = Path(hidden or paths["hidden"])
    templates = Path(templates or paths["templates"])
    package = Path(__file__).resolve().parents[1]
    ids = [get_exercise(e).id for e in exercises] if exercises else [ex.id for ex in EXERCISES]
    for ex in EXERCISES:
        if not (hidden / ex.hidden).exists():
            raise ValueError(f"expected the hidden cases {hidden / ex.hidden}")
        if not (templates / ex.notebook).exists():
            raise ValueError(f"expected the released notebook {templates / ex.notebook}; run `bncourse release`")
    args = ["--exercises", ",".join(ids), "--timeout", f"{timeout:g}"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        _add_text(zf, "setup.sh", SETUP_SH, executable=True)
        _add_text(zf, "run_autograder", RUN_AUTOGRADER, executable=True)
        _add_text(zf, "requirements.txt", REQUIREMENTS)
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
