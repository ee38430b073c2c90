"""``bncourse check NOTEBOOK``: a student's public checks, run locally with clear feedback.

The answer cells come from the student's notebook; the set-up and check cells
come from the released template (``book/exercises/``) when it can be found, so
an accidentally edited check still tests the right thing. The cells run in a
separate Python process (with the student's own packages) under a wall-clock
limit, so an infinite loop ends with a message instead of a hung terminal.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TextIO

from .exercises import EXERCISES
from .notebooks import (AnswerError, NotebookError, cell_role, cell_source, extract_answers,
                        identify_exercise, read_notebook, strip_magics)
from .sandbox import Limits, Sandbox

__all__ = ["check_notebook", "check_cells"]


def _templates(templates_dir: Path | None) -> dict[str, dict]:
    found = {}
    if templates_dir is not None:
        for ex in EXERCISES:
            path = Path(templates_dir) / ex.notebook
            if path.exists():
                try:
                    found[ex.id] = read_notebook(path)
                except NotebookError:
                    pass
    return found


def check_cells(template: dict, answer_code: str) -> list[dict[str, str]]:
    """The cells to run: template set-up, the student's answers (once), template checks, in order."""
    cells, answers_placed, n_check = [], False, 0
    for cell in template["cells"]:
        if cell.get("cell_type") != "code":
            continue
        role, detail = cell_role(cell)
        if role == "setup":
            cells.append({"label": "the set-up cell", "role": "setup", "code": cell_source(cell)})
        elif role == "answer" and not answers_placed:
            cells.append({"label": "your answer cell", "role": "answer", "code": strip_magics(answer_code)})
            answers_placed = True
        elif role == "check":
            n_check += 1
            cells.append({"label": f"Check {n_check}: {detail}", "role": "check", "code": cell_source(cell)})
    return cells


def check_notebook(path: str | Path, templates_dir: Path | None = None, timeout: float = 120.0,
                   out: TextIO = sys.stdout) -> int:
    """Run the public checks of the exercise notebook at ``path``; print feedback; return an exit code.

    Returns 0 when every check passes, 1 when some fail, 2 when the notebook
    cannot be checked at all (not a notebook, not an exercise, no answer cell).
    """
    path = Path(path)
    try:
        nb = read_notebook(path)
    except NotebookError as err:
        print(f"bncourse check: {err}", file=out)
        return 2
    templates = _templates(templates_dir)
    exercise, how = identify_exercise(nb, path.name, templates)
    if exercise is None:
        print(f"bncourse check: {path.name} is not one of the course's exercise notebooks ({how}).",
              file=out)
        return 2
    template = templates.get(exercise.id)
    print(f"{exercise.label}, {exercise.points:g} points -- {path.name}", file=out)
    if template is None:
        print("  (the released notebook was not found, so the checks are taken from your notebook "
              "as they are)", file=out)
        template = nb
    try:
        answers = extract_answers(template, nb, exercise)
    except AnswerError as err:
        print(f"  {err}", file=out)
        return 2
    cells = check_cells(template, answers.code)
    local = Sandbox("local", sys.executable, [])
    with tempfile.TemporaryDirectory(prefix="bncourse-check-") as tmp:
        workdir = Path(tmp)
        local.prepare(workdir)
        result = local.run(workdir, "cells", {"cells": cells}, Limits(timeout=timeout), per_exercise=False)
    outcome = {e["index"]: e for e in result.events if e.get("ev") == "cell" and isinstance(e.get("index"), int)}
    checks = [(i, c) for i, c in enumerate(cells) if c["role"] == "check"]
    passed = 0
    for i, cell in enumerate(cells):
        event = outcome.get(i)
        if cell["role"] != "check" and (event is None or event.get("ok")):
            continue  # set-up and answer cells are reported only when they fail
        if event is None:
            status, detail = "NOT RUN", _stopped(result, timeout)
        elif event.get("ok"):
            passed += 1
            print(f"  PASS     {cell['label']}", file=out)
            continue
        else:
            status = "FAIL" if cell["role"] == "check" else "ERROR in"
            detail = event.get("msg", "")
            if event.get("error") == "NotImplementedError":
                detail = "not implemented yet: replace `raise NotImplementedError()` in your answer cell"
        print(f"  {status:8} {cell['label']}", file=out)
        for line in str(detail).splitlines()[:12]:
            print(f"           {line}", file=out)
        if cell["role"] == "answer":
            print("           (fix this first: the checks below cannot use what this cell defines)", file=out)
        if event is not None and event.get("output"):
            print("           output: " + event["output"].strip().replace("\n", "\n                   ")[:800],
                  file=out)
    total = len(checks)
    if passed == total:
        print(f"All {total} public checks passed. The hidden tests ({exercise.points:g} points) try "
              "more shapes, dtypes and edge cases, so test beyond the checks too.", file=out)
        return 0
    print(f"{passed} of {total} public checks passed.", file=out)
    return 1


def _stopped(result, timeout: float) -> str:
    if result.killed:
        return f"the checks were stopped after {timeout:g} s (an infinite loop?)"
    return f"the check process ended early (exit code {result.returncode})"
