"""``bncourse release``: generate the student notebooks from ``solutions/``.

In an answer cell, every region between ``### BEGIN SOLUTION`` and
``### END SOLUTION`` (the nbgrader convention) becomes a stub that raises
``NotImplementedError``, indented like the markers. Everything else is kept,
outputs are dropped, and the cells that raise in the student version are
tagged ``raises-exception`` (honoured by Jupyter Book and nbval): every public
check (it calls a stub) and every answer cell whose stub sits at the top level.
The output is a pure function of the solution notebook, so a test can compare
``book/exercises/`` with what this module generates.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from .exercises import EXERCISES, Exercise
from .notebooks import cell_role, cell_source, read_notebook

__all__ = ["BEGIN", "END", "RAISES", "strip_solutions", "student_notebook", "release", "dumps"]

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
RAISES = "raises-exception"
STUB = "# YOUR CODE HERE\n{indent}raise NotImplementedError()"


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
        if stripped == BEGIN:
            if inside is not None:
                raise ValueError(f"{where}, line {number}: expected {END} before another {BEGIN}")
            inside = line[: len(line) - len(line.lstrip())]
            top_level = top_level or inside == ""
            out.append(inside + STUB.format(indent=inside))
            regions += 1
        elif stripped == END:
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


def student_notebook(solution: dict[str, Any], exercise: Exercise, where: str = "notebook") -> dict[str, Any]:
    """The released (student) version of a solution notebook."""
    _validate(solution, exercise, where)
    nb = copy.deepcopy(solution)
    for index, cell in enumerate(nb["cells"]):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
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


def release(solutions_dir: Path, out_dir: Path, check: bool = False) -> list[str]:
    """Write (or with ``check=True`` only compare) the student notebooks.

    Returns the names of the files that were (or would be) changed, including
    stale exercise notebooks in ``out_dir`` that no longer have a solution.
    """
    solutions_dir, out_dir = Path(solutions_dir), Path(out_dir)
    changed: list[str] = []
    expected_names = set()
    for exercise in EXERCISES:
        source = solutions_dir / exercise.notebook
        if not source.exists():
            raise ValueError(f"expected the solution notebook {source}, which does not exist")
        text = dumps(student_notebook(read_notebook(source), exercise, str(source)))
        target = out_dir / exercise.notebook
        expected_names.add(target.name)
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current != text:
            changed.append(target.name)
            if not check:
                out_dir.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(".ipynb.tmp")
                tmp.write_text(text, encoding="utf-8")
                tmp.replace(target)
    if out_dir.exists():
        for stale in sorted(out_dir.glob("ex*.ipynb")):
            if stale.name not in expected_names:
                changed.append(stale.name)
                if not check:
                    stale.unlink()
    return changed
