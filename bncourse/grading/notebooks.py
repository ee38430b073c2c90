"""Reading exercise notebooks: cell roles, which exercise a notebook is, and its answers.

Cells of an exercise notebook carry their role in metadata (set in
``solutions/`` and kept by ``bncourse release``):

- ``{"bncourse": {"setup": true}}``: set-up code (imports, seeds), run before the answers;
- ``{"bncourse": {"answer": "ex03"}}``: an answer cell of exercise ``ex03``, with the
  ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers in the solution version;
- ``{"bncourse": {"check": "<name>"}}``: a public check.

Students' notebooks go through many editors, which may drop metadata or cell
ids. :func:`extract_answers` therefore finds answer cells by cell id, then by
metadata, then by position between the unchanged cells around them, and last
by looking for the definitions the exercise asks for.

Notebooks are handled as plain JSON dicts (``json.loads``), never executed here.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .exercises import EXERCISES, Exercise, exercise_for_notebook, get_exercise

__all__ = [
    "NotebookError",
    "AnswerError",
    "read_notebook",
    "parse_notebook",
    "cell_source",
    "cell_role",
    "identify_exercise",
    "Answers",
    "extract_answers",
    "strip_magics",
]

MAX_NOTEBOOK_BYTES = 20_000_000


class NotebookError(ValueError):
    """The file is not a readable Jupyter notebook (the message says why, for the student)."""


class AnswerError(ValueError):
    """The answer cells of an exercise cannot be found in a submission."""


def parse_notebook(data: bytes, name: str = "notebook") -> dict[str, Any]:
    """Parse notebook bytes into a dict with a ``cells`` list; :class:`NotebookError` otherwise."""
    if len(data) > MAX_NOTEBOOK_BYTES:
        raise NotebookError(
            f"{name} is {len(data) / 1e6:.0f} MB; expected a notebook under "
            f"{MAX_NOTEBOOK_BYTES / 1e6:.0f} MB (clear the outputs before submitting)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NotebookError(f"{name} is not a text file; expected a Jupyter notebook (.ipynb)") from None
    try:
        nb = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise NotebookError(
            f"{name} is not valid notebook JSON ({str(err)[:120]}); was it saved from Jupyter?"
        ) from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        if isinstance(nb, dict) and "worksheets" in nb:
            raise NotebookError(f"{name} is an old (nbformat 3) notebook; expected nbformat 4")
        raise NotebookError(f"{name} is JSON but not a Jupyter notebook (no list of cells)")
    cells = [c for c in nb["cells"] if isinstance(c, dict)]
    nb["cells"] = cells
    return nb


def read_notebook(path: str | Path) -> dict[str, Any]:
    """Read and parse the notebook at ``path`` (see :func:`parse_notebook`)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_NOTEBOOK_BYTES:
            return parse_notebook(b"x" * (MAX_NOTEBOOK_BYTES + 1), path.name)
        data = path.read_bytes()
    except OSError as err:
        raise NotebookError(f"cannot read {path.name}: {err.strerror or err}") from None
    return parse_notebook(data, path.name)


def cell_source(cell: dict[str, Any]) -> str:
    """A cell's source as one string (notebooks store it as a string or a list of lines)."""
    src = cell.get("source", "")
    if isinstance(src, list):
        return "".join(s for s in src if isinstance(s, str))
    return src if isinstance(src, str) else ""


def cell_role(cell: dict[str, Any]) -> tuple[str, str | None]:
    """``("setup"|"answer"|"check"|"other", detail)``: detail is the exercise id or check name."""
    meta = cell.get("metadata")
    info = meta.get("bncourse") if isinstance(meta, dict) else None
    if isinstance(info, dict):
        if isinstance(info.get("answer"), str):
            return "answer", info["answer"]
        if isinstance(info.get("check"), str):
            return "check", info["check"]
        if info.get("setup") is True:
            return "setup", None
    return "other", None


def _normalized(cell: dict[str, Any]) -> str:
    return f"{cell.get('cell_type')}:" + "\n".join(
        line.rstrip() for line in cell_source(cell).strip().splitlines()
    )


def identify_exercise(
    nb: dict[str, Any], file_name: str, templates: dict[str, dict[str, Any]] | None = None
) -> tuple[Exercise | None, str]:
    """Which exercise a notebook is, and how we know (for the message).

    Tries, in order: the notebook's ``bncourse.exercise`` metadata, answer-cell
    metadata, cell ids (``ex03-...``), the file name, and finally the content
    (the released template, from ``templates`` keyed by exercise id, sharing the
    most unchanged cells). Returns ``(None, reason)`` when nothing matches.
    """
    ids = {ex.id for ex in EXERCISES}
    meta = nb.get("metadata")
    info = meta.get("bncourse") if isinstance(meta, dict) else None
    if isinstance(info, dict) and info.get("exercise") in ids:
        return get_exercise(info["exercise"]), "notebook metadata"
    for cell in nb["cells"]:
        role, detail = cell_role(cell)
        if role == "answer" and detail in ids:
            return get_exercise(detail), "answer-cell metadata"
    for cell in nb["cells"]:
        cid = cell.get("id")
        m = re.match(r"(ex\d\d)-", cid) if isinstance(cid, str) else None
        if m and m.group(1) in ids:
            return get_exercise(m.group(1)), "cell ids"
    base = Path(file_name).name
    if exercise_for_notebook(base) is not None:
        return exercise_for_notebook(base), "file name"
    m = re.search(r"ex(\d\d)", base)
    if m and f"ex{m.group(1)}" in ids:
        return get_exercise(f"ex{m.group(1)}"), "file name"
    if templates:
        submitted = {_normalized(c) for c in nb["cells"]}
        best, best_hits = None, 0
        for ex_id, template in templates.items():
            hits = sum(
                1 for c in template["cells"]
                if cell_role(c)[0] != "answer" and cell_source(c).strip() and _normalized(c) in submitted
            )
            if hits > best_hits:
                best, best_hits = ex_id, hits
        if best is not None and best_hits >= 2:
            return get_exercise(best), "content"
    return None, "no bncourse metadata, file name or content matched any exercise"


@dataclass(frozen=True)
class Answers:
    """The answer code of one exercise taken from a submission, and how it was found."""

    cells: tuple[str, ...]
    method: str

    @property
    def code(self) -> str:
        return "\n\n".join(self.cells)


def extract_answers(
    template: dict[str, Any], submission: dict[str, Any], exercise: Exercise
) -> Answers:
    """The submission's answer cells for ``exercise``, matched against the released template.

    Only code from these cells is ever taken from a submission. Raises
    :class:`AnswerError` with a message for the student when none are found.
    """
    slots = [(i, c) for i, c in enumerate(template["cells"])
             if cell_role(c) == ("answer", exercise.id)]
    if not slots:
        raise ValueError(f"the template of {exercise.id} has no answer cells")
    sub_cells = submission["cells"]
    code_cells = [c for c in sub_cells if c.get("cell_type") == "code"]

    # 1. Cell ids, set at release time.
    by_id = {c.get("id"): c for c in code_cells if isinstance(c.get("id"), str)}
    found = [by_id.get(c.get("id")) for _, c in slots]
    if all(f is not None for f in found):
        return Answers(tuple(cell_source(c) for c in found), "cell id")

    # 2. Answer metadata, in order.
    tagged = [c for c in code_cells if cell_role(c) == ("answer", exercise.id)]
    if len(tagged) == len(slots):
        return Answers(tuple(cell_source(c) for c in tagged), "cell metadata")

    # 3. Position: between the unchanged template cells that surround each answer cell.
    answer_positions = {i for i, _ in slots}
    t_keys = [_normalized(c) if i not in answer_positions else f"\0answer{i}"
              for i, c in enumerate(template["cells"])]
    s_keys = [_normalized(c) for c in sub_cells]
    matcher = difflib.SequenceMatcher(a=t_keys, b=s_keys, autojunk=False)
    t_to_s: dict[int, int] = {}
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            t_to_s[block.a + k] = block.b + k
    template_keys = set(t_keys)
    picked: list[int] = []
    for t_index, _ in slots:
        before = max((s for t, s in t_to_s.items() if t < t_index), default=-1)
        after = min((s for t, s in t_to_s.items() if t > t_index), default=len(sub_cells))
        for s in range(before + 1, after):
            cell = sub_cells[s]
            if (cell.get("cell_type") == "code" and s not in picked
                    and s_keys[s] not in template_keys and cell_source(cell).strip()):
                picked.append(s)
    if picked:
        return Answers(tuple(cell_source(sub_cells[s]) for s in sorted(picked)), "cell position")

    # 4. Last resort: any code cell that defines one of the required names.
    pattern = re.compile(r"^\s*(def|class)\s+(" + "|".join(map(re.escape, exercise.names)) + r")\b",
                         re.MULTILINE)
    defining = [cell_source(c) for c in code_cells if pattern.search(cell_source(c))]
    if defining:
        return Answers(tuple(defining), "definitions")
    raise AnswerError(
        f"could not find the answer cell of {exercise.label} in this notebook (the code cell that "
        f"defines {', '.join(exercise.names)}); was it deleted or moved into another notebook?"
    )


_MAGIC = re.compile(r"^(\s*)([%!].*)$")


def strip_magics(code: str) -> str:
    """Replace IPython magics and shell escapes (``%time``, ``!pip``) by ``pass``, keeping line numbers.

    The grader runs answer cells as plain Python, where these lines are syntax errors.
    """
    lines = code.split("\n")
    out = []
    for line in lines:
        m = _MAGIC.match(line)
        out.append(f"{m.group(1)}pass  # IPython line removed by the grader" if m else line)
    return "\n".join(out)
