"""``bncourse student-kit --out DIR``: what the students of a graded class receive.

The repository is the instructor's source (solutions and hidden-case generators live in it,
as in nbgrader's ``source/``). The kit holds only what students need:

- ``exercises/``: the released exercise notebooks (stubs, public checks, set-up cells);
- ``bncourse/`` and ``pyproject.toml``: the part of the package that ``bncourse check`` needs:
  the grading code with the released notebooks inside (the public checks are read from
  there), and the NumPy modules the public checks compare with (``functional``, ``gradcheck``,
  ``layers``); not the references the hidden cases are computed with
  (``grading/references.py``), the torch layers (``nn``) or the chapters' toolkit (``lab``);
- ``requirements.txt``: NumPy, JupyterLab and the package, nothing of the book's toolchain;
- ``README.md``: how to set up, work and check.

Solutions, hidden cases and the book never enter the kit. The public checks compare answers
with the course's own reference implementations, so the kit carries those (for Exercises 1, 4,
6, 7 and 8 they compute what the answer computes): a graded class that must not see them needs
public checks written without them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .exercises import EXERCISES
from .release import PACKAGE_COPY

__all__ = ["write_student_kit", "LEFT_OUT"]

PACKAGE = Path(__file__).resolve().parents[1]
# What `bncourse check` needs from the package; the hidden cases' references stay out.
KIT_MODULES = ("__init__.py", "cli.py", "functional.py", "gradcheck.py", "layers.py", "grading")
LEFT_OUT = ("grading/references.py",)

README = """# {title}: exercises

Set up once (Python 3.10 or newer):

```
python3 -m venv .venv
.venv/bin/pip install -r requirements.txt      # Windows: .venv\\Scripts\\pip install -r requirements.txt
```

Then open `exercises/` in JupyterLab (`.venv/bin/jupyter lab exercises`), answer in the cells
marked `# YOUR CODE HERE`, and check an answer as the grader would:

```
.venv/bin/bncourse check exercises/ex01_forward.ipynb
```

`check` runs your answer cells in the grader's sandbox and limits, then the public checks, and
lists first what would cost points when graded. Submit the notebooks themselves.
"""

REQUIREMENTS = """# What the exercises need; the package is this folder.
numpy>=1.26,<3
jupyterlab>=4.2
-e .
"""


def write_student_kit(out: Path, released: Path = PACKAGE_COPY, title: str = "Batch Normalization") -> list[str]:
    """Write the kit into ``out`` (which must not exist or be empty); returns the files written."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"expected an empty or new directory for the student kit, got {out}, which has files")
    missing = [ex.notebook for ex in EXERCISES if not (Path(released) / ex.notebook).exists()]
    if missing:
        raise ValueError(f"expected the released notebooks in {released}; missing {missing} (run `bncourse release`)")
    (out / "exercises").mkdir(parents=True, exist_ok=True)
    for ex in EXERCISES:
        shutil.copyfile(Path(released) / ex.notebook, out / "exercises" / ex.notebook)

    def ignore(directory: str, names: list[str]) -> list[str]:
        rel = Path(directory).relative_to(PACKAGE)
        return [n for n in names if n == "__pycache__" or n.endswith(".pyc")
                or (rel / n).as_posix() in LEFT_OUT]

    (out / "bncourse").mkdir()
    for name in KIT_MODULES:
        if (PACKAGE / name).is_dir():
            shutil.copytree(PACKAGE / name, out / "bncourse" / name, ignore=ignore)
        else:
            shutil.copyfile(PACKAGE / name, out / "bncourse" / name)
    if released != PACKAGE_COPY:  # the checks inside the kit's package are the ones released here
        shutil.rmtree(out / "bncourse" / "grading" / "released", ignore_errors=True)
        shutil.copytree(released, out / "bncourse" / "grading" / "released",
                        ignore=shutil.ignore_patterns("*.md", ".*"))
    shutil.copyfile(PACKAGE.parent / "pyproject.toml", out / "pyproject.toml")
    (out / "README.md").write_text(README.format(title=title), encoding="utf-8")
    (out / "requirements.txt").write_text(REQUIREMENTS, encoding="utf-8")
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
