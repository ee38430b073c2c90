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
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .exercises import EXERCISES, Exercise, exercise_for_notebook, get_exercise

__all__ = [
    "NotebookError",
    "AnswerError",
    "read_notebook",
    "read_regular_file",
    "display_name",
    "parse_notebook",
    "cell_source",
    "cell_role",
    "identify_exercise",
    "Answers",
    "extract_answers",
    "strip_magics",
    "foreign_format_hint",
]

MAX_NOTEBOOK_BYTES = 20_000_000


class NotebookError(ValueError):
    """The file is not a readable Jupyter notebook (the message says why, for the student)."""


class AnswerError(ValueError):
    """The answer cells of an exercise cannot be found in a submission."""


def display_name(name: str) -> str:
    """A file name safe to show in messages, JSON and CSV: undecodable bytes as ``\\xNN``, no control characters.

    Names from ``os.listdir`` or the command line may hold bytes that are not UTF-8 (kept by
    Python as lone surrogates, which cannot be written as UTF-8) and terminal escapes.
    """
    try:
        raw = os.fsencode(name)
    except (UnicodeError, TypeError):
        raw = str(name).encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= 160 else text[:150] + "..."


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISLNK, "symbolic link"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return "special file"


def read_regular_file(path: str | Path, max_bytes: int, follow_symlinks: bool = False) -> bytes:
    """The bytes of the regular file at ``path``, at most ``max_bytes``; :class:`NotebookError` otherwise.

    ``lstat`` comes first: a symbolic link (unless ``follow_symlinks``), a FIFO, a device or
    a socket is refused without being opened, so it can neither point the grader at a file
    it may read (a solution) nor make it block (a FIFO) or read forever (``/dev/zero``).
    The file is then opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked again with ``fstat``.
    """
    path = Path(path)
    name = display_name(path.name)
    try:
        info = os.stat(path) if follow_symlinks else os.lstat(path)
    except OSError as err:
        raise NotebookError(f"cannot read {name}: {err.strerror or err}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = _file_kind(info.st_mode)
        hint = (" (submit the notebook file itself, not a link to it)" if kind == "symbolic link"
                else "")
        raise NotebookError(f"{name} is a {kind}, not a regular file; the grader reads only regular "
                            f"files{hint}")
    if info.st_size > max_bytes:
        raise NotebookError(f"{name} is {info.st_size / 1e6:.0f} MB; expected a notebook under "
                            f"{max_bytes / 1e6:.0f} MB (clear the outputs before submitting)")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise NotebookError(f"cannot read {name}: {err.strerror or err}") from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise NotebookError(f"{name} changed while it was being read; expected a regular file")
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as err:
        raise NotebookError(f"cannot read {name}: {err.strerror or err}") from None
    finally:
        os.close(fd)
    if total > max_bytes:
        raise NotebookError(f"{name} is larger than {max_bytes / 1e6:.0f} MB; expected a notebook under "
                            f"{max_bytes / 1e6:.0f} MB (clear the outputs before submitting)")
    return b"".join(chunks)


def parse_notebook(data: bytes, name: str = "notebook") -> dict[str, Any]:
    """Parse notebook bytes into a dict with a ``cells`` list; :class:`NotebookError` otherwise.

    Whatever the bytes hold (a 5,000-digit number, nesting 100,000 deep, a lone UTF-16
    surrogate escape), the result is a notebook or a :class:`NotebookError`, never another
    exception. Lone surrogates, which could not be written back as UTF-8, become U+FFFD.
    """
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
    except (ValueError, RecursionError, MemoryError) as err:  # ValueError: also too-long integers
        raise NotebookError(
            f"{name} is not valid notebook JSON ({display_name(str(err)[:120])}); was it saved from Jupyter?"
        ) from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        if isinstance(nb, dict) and "worksheets" in nb:
            raise NotebookError(f"{name} is an old (nbformat 3) notebook; expected nbformat 4")
        raise NotebookError(f"{name} is JSON but not a Jupyter notebook (no list of cells)")
    if "\\ud" in text.lower():  # a \uD800-\uDFFF escape: maybe a lone surrogate
        try:
            json.dumps(nb, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            nb = json.loads(_SURROGATE.sub(r"\1\\ufffd", text))
        except (ValueError, RecursionError):
            raise NotebookError(f"{name} is not valid notebook JSON (too deeply nested)") from None
    cells = [c for c in nb["cells"] if isinstance(c, dict)]
    nb["cells"] = cells
    return nb


# A \uD800-\uDFFF escape not preceded by an odd number of backslashes. Pairs become lone
# halves here too, which is fine: only notebooks that had a lone one are rewritten.
_SURROGATE = re.compile(r"(?<!\\)((?:\\\\)*)\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def read_notebook(path: str | Path, follow_symlinks: bool = True) -> dict[str, Any]:
    """Read and parse the notebook at ``path`` (see :func:`read_regular_file`, :func:`parse_notebook`).

    The grader passes ``follow_symlinks=False`` for submissions; any file must be a
    regular file under :data:`MAX_NOTEBOOK_BYTES`.
    """
    path = Path(path)
    data = read_regular_file(path, MAX_NOTEBOOK_BYTES, follow_symlinks=follow_symlinks)
    return parse_notebook(data, display_name(path.name))


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
    metadata, cell ids (``ex03-...``), the content (the released template, from
    ``templates`` keyed by exercise id, sharing clearly the most unchanged cells), the
    functions and classes its code cells define (all those one exercise asks for, and more
    of them than for any other exercise), and last the file name. Returns
    ``(None, reason)`` when nothing matches.
    """
    ids = {ex.id for ex in EXERCISES}
    meta = nb.get("metadata")
    info = meta.get("bncourse") if isinstance(meta, dict) else None
    if isinstance(info, dict) and isinstance(info.get("exercise"), str) and info["exercise"] in ids:
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
    if templates:  # content before the file name: alex01.ipynb may well hold Exercise 6
        submitted = {_normalized(c) for c in nb["cells"]}
        hits = sorted(
            ((sum(1 for c in template["cells"] if cell_role(c)[0] != "answer" and cell_source(c).strip()
                  and _normalized(c) in submitted), ex_id) for ex_id, template in templates.items()),
            reverse=True)
        if hits and hits[0][0] >= 2 and (len(hits) == 1 or hits[0][0] > hits[1][0]):
            return get_exercise(hits[0][1]), "content"
    defined = _defined_names(nb)
    by_names = sorted(((sum(n in defined for n in ex.names), ex.id) for ex in EXERCISES
                       if all(n in defined for n in ex.names)), reverse=True)
    if by_names and (len(by_names) == 1 or by_names[0][0] > by_names[1][0]):
        return get_exercise(by_names[0][1]), "the functions it defines"
    base = Path(file_name).name
    if exercise_for_notebook(base) is not None:
        return exercise_for_notebook(base), "file name"
    m = re.search(r"ex(\d\d)", base)
    if m and f"ex{m.group(1)}" in ids:
        return get_exercise(f"ex{m.group(1)}"), "file name"
    return None, "no bncourse metadata, content, definitions or file name matched any exercise"


_DEFINITION = re.compile(r"^(?:def|class)\s+([A-Za-z_]\w*)", re.MULTILINE)


def _defined_names(nb: dict[str, Any]) -> set[str]:
    """Top-level ``def``/``class`` names in the code cells (one linear pass)."""
    return {m.group(1) for c in nb["cells"] if c.get("cell_type") == "code"
            for m in _DEFINITION.finditer(cell_source(c))}


def foreign_format_hint(nb: dict[str, Any]) -> str | None:
    """One line for a notebook made for nbgrader or otter-grader: what to submit instead."""
    nbgrader = any(isinstance(c.get("metadata"), dict) and "nbgrader" in c["metadata"] for c in nb["cells"])
    otter = any(re.search(r"^\s*#\s*(BEGIN|END) (QUESTION|SOLUTION|TESTS|PROMPT)\b", cell_source(c),
                          re.MULTILINE) for c in nb["cells"][:2000])
    if nbgrader:
        return ("it carries nbgrader cell metadata, which this course does not use: submit the exercise "
                "notebook from book/exercises/ with your code in its answer cell")
    if otter:
        return ("it uses otter-grader markers (# BEGIN QUESTION / SOLUTION), which this course does not "
                "use: submit the exercise notebook from book/exercises/ with your code in its answer cell")
    return None


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
    picked: set[int] = set()  # a set: a notebook of 100,000 cells must stay linear
    for t_index, _ in slots:
        before = max((s for t, s in t_to_s.items() if t < t_index), default=-1)
        after = min((s for t, s in t_to_s.items() if t > t_index), default=len(sub_cells))
        for s in range(before + 1, after):
            cell = sub_cells[s]
            if (cell.get("cell_type") == "code" and s not in picked
                    and s_keys[s] not in template_keys and cell_source(cell).strip()):
                picked.add(s)
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
