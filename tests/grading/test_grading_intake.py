"""What a submission can do to the trusted process before any of it runs, graded in one batch.

Symbolic links (to a solution, to ``/dev/zero``), a FIFO, crafted JSON (a 5,000-digit
number, a lone surrogate), 100,000 cells, crafted ``.npy`` files, nbgrader and otter
habits: each gets a score and a message, the batch finishes, a correct submission in
the same batch keeps full marks, and no sandbox process or work directory is left.
"""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
import time

import pytest

from bncourse.grading.grader import Submission, collect_submissions, grade_batch
from bncourse.grading.judge import JudgeError, parse_npy
from bncourse.grading.notebooks import NotebookError, foreign_format_hint, parse_notebook

from grading_helpers import (PATHS, all_outputs, answer_source, bare, exercise_scores, leftovers, load,
                             results_of, with_answer, write_nb)

SIG = "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n"


def _crafted_npy_writer() -> str:
    """Answer code that writes crafted .npy files where the grader reads outputs, then fails."""
    headers = [
        "{'descr': '<f8', 'fortran_order': False, 'shape': (" + "9" * 5000 + ",), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': " + "(" * 3000 + ")" * 3000 + ", }",
        "{'descr': ('<f8', (1000000000,)), 'fortran_order': False, 'shape': (4,), }",
        "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
    ]
    return (
        "import os, struct\n" + SIG +
        f"    headers = {headers!r}\n"
        "    for k in range(8):\n"
        "        h = headers[k % len(headers)].encode('latin1')\n"
        "        h += b' ' * (-(len(h) + 11) % 64) + b'\\n'\n"
        "        with open(f'out/ex01-{k}-out.npy', 'wb') as f:\n"
        "            f.write(b'\\x93NUMPY\\x02\\x00' + struct.pack('<I', len(h)) + h + b'\\0' * 32)\n"
        "    raise RuntimeError('wrote crafted npy files')\n")


@pytest.fixture(scope="module")
def batch(grader, tmp_path_factory):
    root = tmp_path_factory.mktemp("intake")
    subs = root / "subs"
    subs.mkdir()
    solution = PATHS["solutions"] / "ex01_forward.ipynb"
    shutil.copyfile(solution, subs / "control.ipynb")
    os.symlink(solution, subs / "link_to_solution.ipynb")
    os.symlink("/dev/zero", subs / "dev_zero.ipynb")
    os.mkfifo(subs / "fifo.ipynb")
    text = json.dumps(load("ex01", "templates"))
    (subs / "huge_int.ipynb").write_text(text[:-1] + ', "x": ' + "7" * 5000 + "}")
    surrogate = with_answer("ex01", answer_source("ex01") + "\n# note \ud800 to self\n")
    (subs / "lone_surrogate.ipynb").write_text(json.dumps(surrogate))  # ensure_ascii: "\ud800"
    many = bare(with_answer("ex01", answer_source("ex01")))
    # Between the set-up and the answer cell: found by position, every one of them is taken as
    # answer code (comments, so that the sandbox has nothing to run). The old list scan took 68 s.
    many["cells"][3:3] = [{"cell_type": "code", "metadata": {}, "source": f"# note {k}", "outputs": [],
                           "execution_count": None} for k in range(100_000)]
    write_nb(subs / "many_cells.ipynb", many)
    write_nb(subs / "crafted_npy.ipynb", with_answer("ex01", _crafted_npy_writer()))
    otter = answer_source("ex01").replace(SIG, SIG + "    # BEGIN SOLUTION\n", 1) + "\n# END SOLUTION\n"
    write_nb(subs / "otter_markers.ipynb", with_answer("ex01", otter))
    nbgrader_ours = bare(with_answer("ex01", answer_source("ex01")))
    for cell in nbgrader_ours["cells"]:
        cell["metadata"]["nbgrader"] = {"grade": False, "solution": cell["cell_type"] == "code",
                                        "locked": False, "grade_id": "cell-x", "schema_version": 3}
    write_nb(subs / "nbgrader_metadata.ipynb", nbgrader_ours)
    foreign = {"cells": [{"cell_type": "code", "metadata": {"nbgrader": {"solution": True, "grade_id": "q1"}},
                          "source": "# YOUR CODE HERE\nraise NotImplementedError()", "outputs": [],
                          "execution_count": None}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    write_nb(subs / "nbgrader_homework.ipynb", foreign)
    # A directory: a /dev/zero link posing as Exercise 1 next to a correct Exercise 2.
    folder = subs / "folder"
    folder.mkdir()
    os.symlink("/dev/zero", folder / "ex01_forward.ipynb")
    shutil.copyfile(PATHS["solutions"] / "ex02_running_stats.ipynb", folder / "ex02_running_stats.ipynb")

    faulthandler.dump_traceback_later(600, exit=True)  # a FIFO that blocks must fail, not hang CI
    try:
        cpu0 = time.process_time()
        many_results = grader.grade(Submission("many_cells", subs / "many_cells.ipynb"))
        many_cpu = time.process_time() - cpu0
        out = root / "out"
        grade_batch(grader, collect_submissions(sorted(subs.iterdir())), out, jobs=2, progress=None)
    finally:
        faulthandler.cancel_dump_traceback_later()
    names = [p.name.removesuffix(".ipynb") for p in subs.iterdir()]
    return {"out": out, "results": {n: results_of(out, n) for n in names}, "many_cpu": many_cpu,
            "many": many_results}


ZERO = {
    "link_to_solution": "link_to_solution.ipynb is a symbolic link, not a regular file",
    "dev_zero": "dev_zero.ipynb is a symbolic link, not a regular file",
    "fifo": "fifo.ipynb is a named pipe (FIFO), not a regular file",
    "huge_int": "not valid notebook JSON (Exceeds the limit (4300 digits)",
    "crafted_npy": "is not a valid .npy array",
    "nbgrader_homework": "it carries nbgrader cell metadata, which this course does not use: submit the "
                         "exercise notebook from book/exercises/",
}


@pytest.mark.parametrize("name", sorted(ZERO))
def test_hostile_files_score_zero_with_a_message(batch, name):
    results = batch["results"][name]
    assert results["score"] == 0.0
    assert ZERO[name] in all_outputs(results), all_outputs(results)[:1500]
    assert "internal_error" not in results["extra_data"]["bncourse"]
    assert "Traceback" not in all_outputs(results)


def test_a_correct_answer_in_the_same_batch_keeps_full_marks(batch):
    assert batch["results"]["control"]["score"] == 10.0


def test_a_directory_with_a_dev_zero_link_grades_the_rest(batch):
    results = batch["results"]["folder"]
    scores = exercise_scores(results)
    assert scores["ex01"] == 0.0 and scores["ex02"] == 10.0
    assert "ex01_forward.ipynb: ex01_forward.ipynb is a symbolic link" in results["output"]


def test_a_lone_surrogate_is_replaced_and_the_answer_graded(batch):
    # U+FFFD stands in for the invalid character: the answer itself is right.
    results = batch["results"]["lone_surrogate"]
    assert results["score"] == 10.0
    json.dumps(results, ensure_ascii=False).encode("utf-8")


def test_a_notebook_of_100000_cells_is_graded_in_linear_time(batch):
    assert batch["results"]["many_cells"]["score"] == 10.0
    assert batch["many"]["score"] == 10.0
    # Trusted CPU of parsing, identifying and extracting (a quadratic scan took 68 s).
    assert batch["many_cpu"] < 5.0, batch["many_cpu"]


def test_otter_and_nbgrader_habits_in_our_notebooks_still_work(batch):
    assert batch["results"]["otter_markers"]["score"] == 10.0
    assert batch["results"]["nbgrader_metadata"]["score"] == 10.0


def test_no_sandbox_process_or_work_directory_is_left(batch):
    assert leftovers() == ([], [])


@pytest.mark.parametrize("header", [
    "{'descr': '<f8', 'fortran_order': False, 'shape': (" + "9" * 5000 + ",), }",
    "{'descr': '<f8', 'fortran_order': False, 'shape': " + "(" * 3000 + ")" * 3000 + ", }",
    "{'descr': ('<f8', (1000000000,)), 'fortran_order': False, 'shape': (4,), }",
    "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (-1,), }",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (10**9, 10**9), }",
    "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (1,), }",
    "{'descr': '<U4', 'fortran_order': False, 'shape': (1,), }",
    "not a dict at all",
])
def test_crafted_npy_headers_are_refused(header):
    h = header.encode("latin1")
    h += b" " * (-(len(h) + 11) % 64) + b"\n"
    data = b"\x93NUMPY\x02\x00" + len(h).to_bytes(4, "little") + h + b"\0" * 64
    with pytest.raises(JudgeError):
        parse_npy(data, "x.npy")
    with pytest.raises(JudgeError):  # a header length far beyond the data
        parse_npy(b"\x93NUMPY\x02\x00" + (2**32 - 1).to_bytes(4, "little") + h, "x.npy")


@pytest.mark.parametrize("text", [
    '{"cells": [], "n": ' + "1" * 5000 + "}",
    "[" * 200_000,
    '{"cells": [' + "[" * 100_000 + "]" * 100_000 + "]}",
    '{"cells": [{"source": "\\udc80", "cell_type": "code"}], "metadata": {"x": "\\ud800\\\\ud800"}}',
])
def test_crafted_notebook_json_is_a_notebook_or_a_notebook_error(text):
    try:
        nb = parse_notebook(text.encode(), "x.ipynb")
    except NotebookError:
        return
    json.dumps(nb, ensure_ascii=False).encode("utf-8")  # whatever came through can be written out


def test_foreign_formats_get_a_one_line_hint():
    otter = {"cells": [{"cell_type": "markdown", "source": "<!-- BEGIN QUESTION -->"},
                       {"cell_type": "code", "source": "# BEGIN SOLUTION\nx = 1\n# END SOLUTION"}]}
    hint = foreign_format_hint(otter)
    assert hint and "otter-grader" in hint and "book/exercises/" in hint and "\n" not in hint
    assert foreign_format_hint({"cells": [{"cell_type": "code", "source": "x = 1", "metadata": {}}]}) is None


def test_odd_json_values_anywhere_in_a_notebook_never_raise_anything_else():
    """Values of the wrong type at random places: a NotebookError/AnswerError, or it works."""
    import copy
    import random

    from bncourse.grading.exercises import EXERCISES
    from bncourse.grading.notebooks import AnswerError, extract_answers, identify_exercise

    templates = {ex.id: load(ex.id, "templates") for ex in EXERCISES}
    weird = [[], {}, None, 10**100, 1.5, float("nan"), True, "ex01", [1, [2]], {"answer": "ex01"},
             {"bncourse": {"exercise": []}}, {"bncourse": {"answer": {}}}, {"bncourse": []}]

    def paths(obj, path=()):
        yield path
        items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
        for key, value in items:
            yield from paths(value, path + (key,))

    rng = random.Random(0)
    solutions = [load(ex.id) for ex in EXERCISES]
    for _ in range(1000):
        nb = copy.deepcopy(rng.choice(solutions))
        candidates = [p for p in paths(nb) if p]
        for _ in range(rng.randint(1, 4)):
            path = rng.choice(candidates)
            try:
                parent = nb
                for key in path[:-1]:
                    parent = parent[key]
                parent[path[-1]] = copy.deepcopy(rng.choice(weird))
            except (KeyError, IndexError, TypeError):
                pass
        try:
            parsed = parse_notebook(json.dumps(nb).encode(), "x.ipynb")
        except NotebookError:
            continue
        identify_exercise(parsed, "x.ipynb", templates)
        foreign_format_hint(parsed)
        for ex in EXERCISES:
            try:
                extract_answers(templates[ex.id], parsed, ex)
            except AnswerError:
                pass


def test_forged_events_with_odd_case_numbers_change_nothing(grader):
    from bncourse.grading.exercises import get_exercise
    from bncourse.grading.grader import Grader, _Run
    from bncourse.grading.sandbox import LaunchResult

    ex = get_exercise("ex01")
    run = _Run(ex, grader.cases_for(ex))
    events = [{"ev": "start", "ex": "ex01"},
              {"ev": "case_start", "ex": "ex01", "case": int("9" * 4300)},
              {"ev": "case", "ex": "ex01", "case": -1, "ok": True},
              {"ev": "case", "ex": "ex01", "case": True, "ok": True},
              {"ev": "case", "ex": "ex01", "case": 0, "ok": "yes"},
              {"ev": "answer_error", "ex": "ex01", "msg": "\udc80" * 2000}]
    result = LaunchResult(events, "", 0, -9, "timeout", 1.0)
    assert Grader._apply_events(result, {"ex01": run}, ["ex01"]) == "ex01"
    assert run.case_done == set() and run.killed_case is None
    assert len(run.answer_error) == 800 and run.answer_error.encode("utf-8")
    assert "timed out" in grader._failure_message(result, ex.label, run.killed_case)


def test_a_directory_is_read_up_to_a_total_byte_budget(grader, tmp_path, monkeypatch):
    import bncourse.grading.grader as grader_module

    folder = tmp_path / "big"
    for ex_id in ("ex01", "ex02", "ex03"):
        nb = load(ex_id)
        nb["cells"].append({"cell_type": "markdown", "metadata": {}, "source": "x" * 400_000})
        write_nb(folder / PATHS["solutions"].joinpath(f"{ex_id}.ipynb").name, nb)
    monkeypatch.setattr(grader_module, "MAX_SUBMISSION_BYTES", 1_000_000)
    results = grader.grade(Submission("big", folder))
    scores = exercise_scores(results)
    assert (scores["ex01"], scores["ex02"], scores["ex03"]) == (10.0, 10.0, 0.0)
    assert "read only the first 2 notebook(s): together the notebooks exceed 1 MB" in results["output"]
