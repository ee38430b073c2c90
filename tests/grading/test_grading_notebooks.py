"""Finding a submission's exercise and answer cells, however the notebook was edited."""

from __future__ import annotations

import copy

import pytest

from bncourse.grading.exercises import get_exercise
from bncourse.grading.notebooks import (AnswerError, NotebookError, extract_answers, identify_exercise,
                                        parse_notebook, strip_magics)

from grading_helpers import load, with_answer

EX = get_exercise("ex02")
MY_CODE = "def update_running_stats(m, v, x, momentum=0.1):\n    return 'mine'\n"


@pytest.fixture
def template():
    return load("ex02", "templates")


@pytest.fixture
def submission():
    return with_answer("ex02", MY_CODE)


def _strip(nb, ids=True, metadata=True):
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        if ids:
            cell.pop("id", None)
        if metadata:
            cell["metadata"] = {}
    if metadata:
        nb["metadata"] = {}
    return nb


def test_answers_by_cell_id(template, submission):
    answers = extract_answers(template, submission, EX)
    assert answers.method == "cell id" and answers.code == MY_CODE


def test_answers_by_metadata_when_ids_are_gone(template, submission):
    answers = extract_answers(template, _strip(submission, metadata=False), EX)
    assert answers.method == "cell metadata" and answers.code == MY_CODE


def test_answers_by_position_when_ids_and_metadata_are_gone(template, submission):
    nb = _strip(submission)
    extra = {"cell_type": "code", "metadata": {}, "source": "print('scratch work')", "outputs": []}
    nb["cells"].insert(3, extra)  # a scratch cell right after the answer
    nb["cells"][-1]["source"] = "assert True  # an edited check"
    answers = extract_answers(template, nb, EX)
    assert answers.method == "cell position"
    assert MY_CODE in answers.code  # the scratch cell comes along, the edited check does not
    assert "edited check" not in answers.code


def test_answers_by_definition_as_a_last_resort(template, submission):
    nb = _strip(submission)
    answer = next(c for c in nb["cells"] if c["source"] == MY_CODE)
    nb["cells"].remove(answer)
    nb["cells"].append(answer)  # moved below the checks: no longer between its neighbours
    answers = extract_answers(template, nb, EX)
    assert answers.method == "definitions" and answers.code == MY_CODE


def test_missing_answer_is_reported(template, submission):
    nb = _strip(submission)
    nb["cells"] = [c for c in nb["cells"] if c["source"] != MY_CODE]
    with pytest.raises(AnswerError, match="could not find the answer cell of Exercise 2"):
        extract_answers(template, nb, EX)


def test_identify_exercise(submission):
    templates = {ex: load(ex, "templates") for ex in ("ex01", "ex02")}
    assert identify_exercise(submission, "whatever.ipynb")[0] is EX
    bare = _strip(submission)
    assert identify_exercise(bare, "ex02_running_stats (1).ipynb")[0] is EX
    assert identify_exercise(bare, "homework.ipynb", templates) == (EX, "content")
    assert identify_exercise({"cells": []}, "homework.ipynb", templates)[0] is None


@pytest.mark.parametrize("data, message", [
    (b"\xff\xfe\x00", "not a text file"),
    (b"{", "not valid notebook JSON"),
    (b"[1, 2]", "not a Jupyter notebook"),
    (b'{"worksheets": []}', "nbformat 3"),
])
def test_parse_errors_say_what_is_wrong(data, message):
    with pytest.raises(NotebookError, match=message):
        parse_notebook(data, "x.ipynb")


def test_strip_magics_keeps_line_numbers():
    code = "%matplotlib inline\nx = 1\nif x:\n    !ls\ny = 2"
    out = strip_magics(code)
    assert out.count("\n") == code.count("\n")
    compile(out, "<test>", "exec")
    assert "x = 1" in out and "y = 2" in out
