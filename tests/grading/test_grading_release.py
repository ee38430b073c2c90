"""``bncourse release``: book/exercises/ is exactly what release generates from solutions/."""

from __future__ import annotations

import concurrent.futures
import json
import sys
import tempfile
from pathlib import Path

import pytest

from bncourse.grading.exercises import EXERCISES
from bncourse.grading.notebooks import cell_role, cell_source
from bncourse.grading.release import BEGIN, END, RAISES, release, strip_solutions
from bncourse.grading.sandbox import Limits, Sandbox

from grading_helpers import PATHS, load


def test_book_exercises_are_what_release_generates(tmp_path):
    assert release(PATHS["solutions"], PATHS["templates"], check=True) == [], (
        "book/exercises/ is out of date: run `bncourse release`")
    release(PATHS["solutions"], tmp_path)
    for ex in EXERCISES:
        assert (tmp_path / ex.notebook).read_bytes() == (PATHS["templates"] / ex.notebook).read_bytes()
    assert sorted(p.name for p in PATHS["templates"].glob("*.ipynb")) == sorted(ex.notebook for ex in EXERCISES)


def test_release_check_notices_a_hand_edit(tmp_path):
    release(PATHS["solutions"], tmp_path)
    path = tmp_path / EXERCISES[0].notebook
    nb = json.loads(path.read_text())
    nb["cells"][0]["source"] += " edited"
    path.write_text(json.dumps(nb))
    assert release(PATHS["solutions"], tmp_path, check=True) == [EXERCISES[0].notebook]


def test_strip_solutions_keeps_indentation_and_reports_top_level():
    code = f"def f(x):\n    '''doc'''\n    {BEGIN}\n    return x\n    {END}\n"
    stub, top = strip_solutions(code)
    assert stub == "def f(x):\n    '''doc'''\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"
    assert not top
    stub, top = strip_solutions(f"{BEGIN}\nanswer = 42\n{END}\n")
    assert top and "42" not in stub and "raise NotImplementedError()" in stub


@pytest.mark.parametrize("bad", [f"{BEGIN}\nx = 1\n", f"x = 1\n{END}\n", f"{BEGIN}\n{BEGIN}\n{END}\n", "x = 1\n"])
def test_strip_solutions_rejects_broken_markers(bad):
    with pytest.raises(ValueError, match="expected"):
        strip_solutions(bad)


def test_notebooks_are_clean_and_students_see_no_solutions():
    for ex in EXERCISES:
        for version in ("solutions", "templates"):
            nb = load(ex.id, version)
            assert nb["metadata"]["kernelspec"]["name"] == "python3"
            assert nb["metadata"]["bncourse"]["exercise"] == ex.id
            for cell in nb["cells"]:
                if cell["cell_type"] == "code":
                    assert cell["outputs"] == [] and cell["execution_count"] is None, (ex.id, version)
            titles = [c for c in nb["cells"] if c["cell_type"] == "markdown"
                      and cell_source(c).startswith("# ")]
            assert len(titles) == 1, (ex.id, "one # title per notebook")
        solution = "\n".join(cell_source(c) for c in load(ex.id)["cells"] if cell_role(c)[0] == "answer")
        released = load(ex.id, "templates")["cells"]
        student = "\n".join(cell_source(c) for c in released)
        assert BEGIN in solution and BEGIN not in student and END not in student
        student = "\n".join(cell_source(c) for c in released if cell_role(c)[0] == "answer")
        hidden_lines = [line.strip() for region in solution.split(BEGIN)[1:]
                        for line in region.split(END)[0].splitlines() if len(line.strip()) > 25]
        assert hidden_lines and not any(line in student for line in hidden_lines), ex.id


def _raising_cells(nb: dict) -> set[str]:
    """Run every code cell of ``nb`` in order in one fresh process; the ids of the cells that raise."""
    code_cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    cells = [{"label": c["id"], "role": "cell", "code": cell_source(c)} for c in code_cells]
    local = Sandbox("local", sys.executable, [])
    with tempfile.TemporaryDirectory() as tmp:
        local.prepare(Path(tmp))
        result = local.run(Path(tmp), "cells", {"cells": cells}, Limits(timeout=120), per_exercise=False)
    done = {e["index"]: e for e in result.events if e.get("ev") == "cell"}
    assert len(done) == len(cells), result.output
    return {code_cells[i]["id"] for i, e in done.items() if not e["ok"]}


def test_exactly_the_tagged_cells_raise_in_the_student_version():
    notebooks = {ex.id: load(ex.id, "templates") for ex in EXERCISES}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        raised = dict(zip(notebooks, pool.map(_raising_cells, notebooks.values())))
    for ex_id, nb in notebooks.items():
        tagged = {c["id"] for c in nb["cells"] if RAISES in c.get("metadata", {}).get("tags", [])}
        assert tagged, ex_id
        assert raised[ex_id] == tagged, (ex_id, raised[ex_id] ^ tagged)


def test_the_index_page_lists_every_exercise():
    index = (PATHS["templates"] / "index.md").read_text()
    for ex in EXERCISES:
        assert f"]({ex.notebook})" in index, ex.notebook
        assert all(f"`{name}`" in index for name in ex.names), ex.names
