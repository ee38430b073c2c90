"""``bncourse release``: book/exercises/ is exactly what release generates from solutions/."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bncourse.grading.exercises import EXERCISES
from bncourse.grading.notebooks import cell_role, cell_source
from bncourse.grading.release import (BEGIN, END, HIDDEN_BEGIN, HIDDEN_END, PACKAGE_COPY, RAISES, AnsweredError,
                                      release, strip_hidden_tests, strip_solutions)
from bncourse.grading.sandbox import Limits, Sandbox

from grading_helpers import PATHS, load


def test_book_exercises_are_what_release_generates(tmp_path):
    # Compared in a temporary directory: this test never writes into book/exercises/, and its
    # message suggests no command that could lose anyone's answers (release refuses to).
    release(PATHS["solutions"], tmp_path)
    differ = [ex.notebook for ex in EXERCISES for d in (PATHS["templates"], PACKAGE_COPY)
              if not (d / ex.notebook).exists()
              or (tmp_path / ex.notebook).read_bytes() != (d / ex.notebook).read_bytes()]
    assert not differ, (f"out of date with solutions/: {differ}. `bncourse release` regenerates "
                        "book/exercises/ and the package copy; it refuses to overwrite answered notebooks")
    for d in (PATHS["templates"], PACKAGE_COPY):
        assert sorted(p.name for p in d.glob("*.ipynb")) == sorted(ex.notebook for ex in EXERCISES)
    assert release(PATHS["solutions"], PATHS["templates"], check=True, package_copy=PACKAGE_COPY) == []


def test_release_refuses_to_overwrite_answers_unless_forced(tmp_path):
    release(PATHS["solutions"], tmp_path)
    answered = tmp_path / "ex02_running_stats.ipynb"
    nb = json.loads(answered.read_text())
    stub = next(c for c in nb["cells"] if cell_role(c)[0] == "answer")
    stub["source"] = cell_source(stub).replace("raise NotImplementedError()", "return 1, 2", 1)
    nb["cells"][0]["source"] = "# Exercise 2, my notes"  # a changed non-answer cell: out of date too
    answered.write_text(json.dumps(nb))
    untouched = tmp_path / "ex01_forward.ipynb"
    untouched.write_text(untouched.read_text().replace("# Exercise 1", "# Exercise One"))  # stale, no answer
    before = answered.read_bytes(), untouched.read_bytes()
    with pytest.raises(AnsweredError) as err:
        release(PATHS["solutions"], tmp_path)
    assert err.value.names == ["ex02_running_stats.ipynb"] and "--force" in str(err.value)
    assert (answered.read_bytes(), untouched.read_bytes()) == before  # nothing written at all
    cli = subprocess.run([sys.executable, "-m", "bncourse.cli", "release", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and "ex02_running_stats.ipynb" in cli.stderr, cli.stderr
    assert answered.read_bytes() == before[0]
    assert release(PATHS["solutions"], tmp_path, force=True) == ["ex01_forward.ipynb", "ex02_running_stats.ipynb"]
    assert "return 1, 2" not in answered.read_text()


def test_release_strips_hidden_test_regions(tmp_path):
    code = f"x = 1\n{HIDDEN_BEGIN}\nassert secret() == 3\n{HIDDEN_END}\nassert x == 1\n"
    assert strip_hidden_tests(code) == "x = 1\nassert x == 1\n"
    with pytest.raises(ValueError, match="expected"):
        strip_hidden_tests(f"{HIDDEN_BEGIN}\nx\n")
    solutions = tmp_path / "solutions"
    shutil.copytree(PATHS["solutions"], solutions)
    path = solutions / "ex08_fold.ipynb"
    nb = json.loads(path.read_text())
    check = next(c for c in nb["cells"] if cell_role(c)[0] == "check")
    check["source"] = cell_source(check) + f"\n    {HIDDEN_BEGIN}\nassert 'secret hidden case'\n    {HIDDEN_END}\n"
    path.write_text(json.dumps(nb))
    release(solutions, tmp_path / "out")
    released = (tmp_path / "out" / "ex08_fold.ipynb").read_text()
    assert "secret hidden case" not in released and "HIDDEN TESTS" not in released


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


def test_student_kit_holds_no_solutions_and_checks_work_from_it(tmp_path):
    kit = tmp_path / "kit"
    cli = subprocess.run([sys.executable, "-m", "bncourse.cli", "student-kit", "--out", str(kit)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert sorted(p.name for p in (kit / "exercises").iterdir()) == sorted(ex.notebook for ex in EXERCISES)
    assert {"README.md", "requirements.txt", "pyproject.toml"} <= {p.name for p in kit.iterdir()}
    assert not (kit / "bncourse" / "grading" / "references.py").exists()
    assert not list(kit.rglob("tests")) and not list(kit.rglob("solutions"))
    assert not (kit / "bncourse" / "nn").exists() and not (kit / "bncourse" / "lab").exists()
    for ex in EXERCISES:  # the answer cells' solutions do not reach the kit's notebooks
        solution = "\n".join(cell_source(c) for c in load(ex.id)["cells"] if cell_role(c)[0] == "answer")
        hidden = [line.strip() for region in solution.split(BEGIN)[1:]
                  for line in region.split(END)[0].splitlines() if len(line.strip()) > 25]
        nb = json.loads((kit / "exercises" / ex.notebook).read_text())
        answers = "\n".join(cell_source(c) for c in nb["cells"] if cell_role(c)[0] == "answer")
        assert hidden and not [line for line in hidden if line in answers], ex.id
    # A student of the graded class checks with the kit's own package.
    where = subprocess.run([sys.executable, "-c", "import bncourse; print(bncourse.__file__)"], cwd=kit,
                           capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(str(kit)), where.stdout
    stub = subprocess.run([sys.executable, "-m", "bncourse.cli", "check", "exercises/ex01_forward.ipynb"],
                          cwd=kit, capture_output=True, text=True, timeout=120)
    assert stub.returncode == 1 and "not implemented yet" in stub.stdout, stub.stdout + stub.stderr
    again = subprocess.run([sys.executable, "-m", "bncourse.cli", "student-kit", "--out", str(kit)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "has files" in again.stderr


def test_otter_markers_work_and_nbgrader_metadata_gets_one_line(tmp_path):
    stub, _ = strip_solutions("def f(x):\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION\n")
    assert "return x" not in stub and "raise NotImplementedError()" in stub
    solutions = tmp_path / "solutions"
    shutil.copytree(PATHS["solutions"], solutions)
    path = solutions / "ex08_fold.ipynb"
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if cell_role(c)[0] == "check")
    cell["metadata"] = {"nbgrader": {"grade": True, "grade_id": "fold", "points": 2}}
    path.write_text(json.dumps(nb))
    cli = subprocess.run([sys.executable, "-m", "bncourse.cli", "release", "--solutions", str(solutions),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1 and "nbgrader metadata" in cli.stderr
    assert '{"bncourse": {"answer": "ex08"}}' in cli.stderr
