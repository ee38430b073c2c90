"""``bncourse release``: generate the student notebooks from ``solutions/``.

In an answer cell, every region between ``### BEGIN SOLUTION`` and
``### END SOLUTION`` (the nbgrader convention) becomes a stub that raises
``NotImplementedError``, indented like the markers. In any cell, a region between
``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` (nbgrader's habit) is
dropped, markers included. Everything else is kept, outputs are dropped, and the
cells that raise in the student version are tagged ``raises-exception`` (honoured
by Jupyter Book and nbval): every public check (it calls a stub) and every answer
cell whose stub sits at the top level. The output is a pure function of the
solution notebook, so a test can compare ``book/exercises/`` with what this module
generates.

Release never destroys work: a notebook in the output directory whose answer cells
differ from the stubs (someone answered it there) is not overwritten unless
``force`` is given; :class:`AnsweredError` names the files instead.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from .exercises import EXERCISES, Exercise
from .notebooks import cell_role, cell_source, read_notebook

__all__ = ["BEGIN", "END", "HIDDEN_BEGIN", "HIDDEN_END", "RAISES", "AnsweredError", "strip_solutions",
           "strip_hidden_tests", "student_notebook", "answered_cells", "release", "dumps", "PACKAGE_COPY"]

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
HIDDEN_BEGIN = "### BEGIN HIDDEN TESTS"
HIDDEN_END = "### END HIDDEN TESTS"
# The released notebooks also ship inside the package, so `bncourse check` reads the public
# checks from there and never from the student's own (editable) notebook.
PACKAGE_COPY = Path(__file__).with_name("released")


# The first code cell of every released notebook: in Colab (or any Jupyter kernel without the
# course's package) it installs the package from the repository, pinned to the course's version;
# in the course's environment, and in the grader's sandbox (no ipykernel there), it does nothing.
INSTALL_CELL = """\
# Set-up for Colab and other hosted notebooks: installs the course's package `bncourse` when it is
# missing (the public checks use it). In the course's own environment this cell does nothing.
import importlib
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("bncourse") is None and "ipykernel" in sys.modules:
    source = os.environ.get("BNCOURSE_INSTALL_FROM", "bncourse @ git+{repository}@v{version}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", source], check=True)
    importlib.invalidate_caches()"""


def course_release_info(root: Path | None = None) -> tuple[str, str]:
    """``(repository URL, version)`` from the repository's ``_config.yml`` and ``pyproject.toml``."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    try:
        config = (root / "_config.yml").read_text(encoding="utf-8")
        project = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"expected _config.yml and pyproject.toml in {root} ({err})") from None
    url = re.search(r"^repository:\s*\n(?:\s+.*\n)*?\s+url:\s*(\S+)", config, re.MULTILINE)
    version = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
    if not url or not version:
        raise ValueError(f"expected repository.url in {root / '_config.yml'} and version in "
                         f"{root / 'pyproject.toml'}")
    return url.group(1).rstrip("/"), version.group(1)


def install_cell(exercise: Exercise, repository: str, version: str) -> dict[str, Any]:
    """The set-up cell that installs ``bncourse`` where it is missing (Colab); role ``setup``."""
    return {"cell_type": "code", "execution_count": None, "id": f"{exercise.id}-install",
            "metadata": {"bncourse": {"setup": True}}, "outputs": [],
            "source": INSTALL_CELL.format(repository=repository, version=version)}


class AnsweredError(ValueError):
    """Release would overwrite notebooks whose answer cells hold someone's work."""

    def __init__(self, names: list[str], out_dir: Path) -> None:
        self.names = names
        super().__init__(
            f"not overwriting {len(names)} notebook(s) in {out_dir} whose answer cells differ from the "
            f"stubs (someone's answers?): {', '.join(names)}. Move them elsewhere (students work in "
            "my-exercises/, see `python3 tasks.py lab`), or rerun with --force to discard those answers.")
RAISES = "raises-exception"
STUB = "# YOUR CODE HERE\n{indent}raise NotImplementedError()"


def _marker(stripped: str) -> str:
    """``### BEGIN SOLUTION`` for nbgrader's marker and otter's ``# BEGIN SOLUTION`` alike."""
    if stripped.startswith("#") and stripped.lstrip("#").strip() in ("BEGIN SOLUTION", "END SOLUTION"):
        return "### " + stripped.lstrip("#").strip()
    return stripped


def strip_solutions(source: str, where: str = "cell") -> tuple[str, bool]:
    """Replace each marked region by a stub; returns ``(student source, any stub at top level)``.

    Raises ``ValueError`` for unbalanced or nested markers, naming ``where``.
    """
    out: list[str] = []
    top_level = False
    inside: str | None = None
    regions = 0
    for number, line in enumerate(source.split("\n"), start=1):
        stripped = line.strip()
        if _marker(stripped) == BEGIN:
            if inside is not None:
                raise ValueError(f"{where}, line {number}: expected {END} before another {BEGIN}")
            inside = line[: len(line) - len(line.lstrip())]
            top_level = top_level or inside == ""
            out.append(inside + STUB.format(indent=inside))
            regions += 1
        elif _marker(stripped) == END:
            if inside is None:
                raise ValueError(f"{where}, line {number}: expected {BEGIN} before {END}")
            inside = None
        elif inside is None:
            out.append(line)
    if inside is not None:
        raise ValueError(f"{where}: expected {END} after the last {BEGIN}")
    if regions == 0:
        raise ValueError(f"{where}: expected at least one {BEGIN} / {END} region in an answer cell")
    return "\n".join(out), top_level


def strip_hidden_tests(source: str, where: str = "cell") -> str:
    """Drop every ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS`` region, markers included.

    Raises ``ValueError`` for unbalanced or nested markers, naming ``where``.
    """
    out: list[str] = []
    inside = False
    for number, line in enumerate(source.split("\n"), start=1):
        stripped = line.strip()
        if stripped == HIDDEN_BEGIN:
            if inside:
                raise ValueError(f"{where}, line {number}: expected {HIDDEN_END} before another {HIDDEN_BEGIN}")
            inside = True
        elif stripped == HIDDEN_END:
            if not inside:
                raise ValueError(f"{where}, line {number}: expected {HIDDEN_BEGIN} before {HIDDEN_END}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: expected {HIDDEN_END} after the last {HIDDEN_BEGIN}")
    return "\n".join(out)


def _add_tag(cell: dict[str, Any], tag: str) -> None:
    tags = cell.setdefault("metadata", {}).setdefault("tags", [])
    if tag not in tags:
        tags.append(tag)


def _validate(nb: dict[str, Any], exercise: Exercise, where: str) -> None:
    meta = nb.get("metadata", {}).get("bncourse", {})
    if meta.get("exercise") != exercise.id:
        raise ValueError(f"{where}: expected notebook metadata bncourse.exercise = {exercise.id!r}, "
                         f"got {meta.get('exercise')!r}")
    answers = []
    for index, cell in enumerate(nb["cells"]):
        role, detail = cell_role(cell)
        nbgrader = cell.get("metadata", {}).get("nbgrader") if isinstance(cell.get("metadata"), dict) else None
        if cell.get("cell_type") == "code" and role == "other" and isinstance(nbgrader, dict):
            raise ValueError(
                f"{where}, cell {index}: nbgrader metadata is not read here; mark the cell with "
                f'{{"bncourse": {{"answer": "{exercise.id}"}}}} (an answer), {{"bncourse": {{"check": "<what it '
                'checks>"}} (a public check) or {"bncourse": {"setup": true}} in its metadata instead')
        if cell.get("cell_type") == "code" and role == "other":
            raise ValueError(f"{where}, cell {index}: every code cell needs a bncourse role "
                             "(setup, answer or check) so the grader knows what to do with it")
        if role == "answer":
            if detail != exercise.id:
                raise ValueError(f"{where}, cell {index}: answer cell of {detail!r} in {exercise.id}'s notebook")
            answers.append(cell_source(cell))
        if not isinstance(cell.get("id"), str):
            raise ValueError(f"{where}, cell {index}: expected a cell id (nbformat 4.5)")
    code = "\n".join(answers)
    for name in exercise.names:
        if not re.search(rf"^(def|class)\s+{re.escape(name)}\b", code, re.MULTILINE):
            raise ValueError(f"{where}: expected the answer cells to define {name}")


def student_notebook(solution: dict[str, Any], exercise: Exercise, where: str = "notebook",
                     release_info: tuple[str, str] | None = None) -> dict[str, Any]:
    """The released (student) version of a solution notebook.

    ``release_info`` is ``(repository URL, version)`` for the install cell placed before the
    first code cell (default: :func:`course_release_info` of this repository).
    """
    _validate(solution, exercise, where)
    nb = copy.deepcopy(solution)
    first_code = next(i for i, c in enumerate(nb["cells"]) if c.get("cell_type") == "code")
    nb["cells"].insert(first_code, install_cell(exercise, *(release_info or course_release_info())))
    for index, cell in enumerate(nb["cells"]):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        if HIDDEN_BEGIN in cell_source(cell) or HIDDEN_END in cell_source(cell):
            cell["source"] = strip_hidden_tests(cell_source(cell), f"{where}, cell {index}")
        role, _ = cell_role(cell)
        if role == "answer":
            source, top_level = strip_solutions(cell_source(cell), f"{where}, cell {index}")
            cell["source"] = source
            if top_level:
                _add_tag(cell, RAISES)
        elif role == "check":
            _add_tag(cell, RAISES)
    return nb


def dumps(nb: dict[str, Any]) -> str:
    """Serialize a notebook the way nbformat writes it, so files are stable byte for byte."""
    import nbformat

    node = nbformat.from_dict(nb)
    nbformat.validate(node)
    return nbformat.writes(node) + "\n"


def _answers(nb: dict[str, Any]) -> dict[str, str]:
    """Answer cells by id (or position), normalized so that line endings and trailing spaces do not count."""
    found = {}
    for k, cell in enumerate(c for c in nb.get("cells", []) if cell_role(c)[0] == "answer"):
        key = cell.get("id") if isinstance(cell.get("id"), str) else f"#{k}"
        found[key] = "\n".join(line.rstrip() for line in cell_source(cell).strip().splitlines())
    return found


def answered_cells(current_text: str, released: dict[str, Any]) -> bool:
    """Whether a notebook on disk holds answers: its answer cells differ from the stubs of ``released``.

    A file that is not a readable notebook counts as answered (it is someone's, and not ours to delete).
    """
    try:
        current = json.loads(current_text)
    except ValueError:
        return True
    if not isinstance(current, dict) or not isinstance(current.get("cells"), list):
        return True
    current["cells"] = [c for c in current["cells"] if isinstance(c, dict)]
    mine, stubs = _answers(current), _answers(released)
    return any(mine.get(key, text) != text for key, text in stubs.items()) or bool(set(mine) - set(stubs))


def release(solutions_dir: Path, out_dir: Path, check: bool = False, force: bool = False,
            package_copy: Path | None = None) -> list[str]:
    """Write (or with ``check=True`` only compare) the student notebooks.

    Returns the names of the files that were (or would be) changed, including
    stale exercise notebooks in ``out_dir`` that no longer have a solution. When
    writing, raises :class:`AnsweredError` (and writes nothing) if a changed notebook
    holds answers, unless ``force``. ``package_copy``, when given, receives the same
    files (the copy shipped inside the package for ``bncourse check``).
    """
    solutions_dir, out_dir = Path(solutions_dir), Path(out_dir)
    planned: dict[str, str | None] = {}  # file name -> new text (None: remove)
    texts: dict[str, str] = {}
    answered: list[str] = []
    for exercise in EXERCISES:
        source = solutions_dir / exercise.notebook
        if not source.exists():
            raise ValueError(f"expected the solution notebook {source}, which does not exist")
        released = student_notebook(read_notebook(source), exercise, str(source))
        text = texts[exercise.notebook] = dumps(released)
        target = out_dir / exercise.notebook
        current = target.read_text(encoding="utf-8", errors="replace") if target.exists() else None
        if current != text:
            planned[target.name] = text
            if current is not None and answered_cells(current, released):
                answered.append(target.name)
    if out_dir.exists():
        for stale in sorted(out_dir.glob("ex*.ipynb")):
            if stale.name not in {ex.notebook for ex in EXERCISES}:
                planned[stale.name] = None
                answered.append(stale.name)  # no stub to compare with: it may be someone's work
    changed = list(planned)
    if package_copy is not None:
        package_copy = Path(package_copy)
        present = {p.name for p in package_copy.glob("*.ipynb")} if package_copy.is_dir() else set()
        for name in sorted(present | set(texts)):
            path = package_copy / name
            if texts.get(name) != (path.read_text(encoding="utf-8") if path.exists() else None):
                changed.append(f"{package_copy.name}/{name}")
    if check:
        return changed
    if answered and not force:
        raise AnsweredError(answered, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in planned.items():
        _write(out_dir / name, text)
    if package_copy is not None:  # holds exactly the released notebooks, nothing else
        package_copy.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            target = package_copy / name
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                _write(target, text)
        for stale in package_copy.glob("*.ipynb"):
            if stale.name not in texts:
                stale.unlink()
    return changed


def _write(target: Path, text: str | None) -> None:
    if text is None:
        target.unlink(missing_ok=True)
        return
    tmp = target.with_suffix(".ipynb.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
