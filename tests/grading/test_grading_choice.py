"""Which notebook is graded, and grades that depend on the answer only.

In a directory, per exercise, the notebook with answers wins over Jupyter's unanswered
``-Copy1``, then the newest wins; a notebook is identified by its content before its file
name; the feedback names the file graded and those ignored. The hidden cases depend on the
instructor's seed and secret and the exercise, never on the submission's text.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from bncourse.grading.exercises import get_exercise
from bncourse.grading.grader import SECRET_FILE, Grader, collect_submissions, grade_batch
from bncourse.grading.notebooks import identify_exercise

from grading_helpers import (PATHS, TEST_LIMITS, answer_source, bare, exercise_scores, leftovers, load, mutate,
                             results_of, with_answer, write_nb)

UNBIASED = [("var = (centered * centered).mean(axis=0)",
             "var = (centered * centered).sum(axis=0) / (x.shape[0] - 1)")]


ODD_BATCH = [("mean = x.mean(axis=0)", "mean = x.mean(axis=0) + 0.5 * (x.shape[0] % 2)")]


def _age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


def _only_code(code: str) -> dict:
    return {"cells": [{"cell_type": "code", "metadata": {}, "source": "import numpy as np\n\n" + code,
                       "outputs": [], "execution_count": None}],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


@pytest.fixture(scope="module")
def graded(sandbox, tmp_path_factory):
    root = tmp_path_factory.mktemp("choice")
    subs = root / "subs"
    grader = Grader(PATHS["hidden"], PATHS["templates"], sandbox, TEST_LIMITS, exercises=["ex01", "ex06"])
    # Jupyter's "Make a copy": the copy is unanswered and newer.
    copy = subs / "copy"
    shutil.copyfile(PATHS["solutions"] / "ex01_forward.ipynb", copy.mkdir(parents=True) or
                    copy / "ex01_forward.ipynb")
    _age(copy / "ex01_forward.ipynb", 3600)
    shutil.copyfile(PATHS["templates"] / "ex01_forward.ipynb", copy / "ex01_forward-Copy1.ipynb")
    # Two answered versions under the same names: the newer one is graded, whichever it is.
    for name, newer in (("newer_right", "v2"), ("newer_wrong", "v1")):
        folder = subs / name
        write_nb(folder / "ex01_v1.ipynb", mutate("ex01", UNBIASED))
        write_nb(folder / "ex01_v2.ipynb", load("ex01"))
        _age(folder / ("ex01_v1.ipynb" if newer == "v2" else "ex01_v2.ipynb"), 3600)
    # Metadata stripped, file name says Exercise 1, content is Exercise 6.
    write_nb(subs / "alex01.ipynb", bare(load("ex06")))
    # Only the answer, pasted into a fresh notebook named after Exercise 1: its definitions say 6.
    write_nb(subs / "bob01.ipynb", _only_code(answer_source("ex06")))
    # The same bug, commented differently: wrong only for odd batch sizes, so the grade depended
    # on the random shapes, which used to be seeded from the answer's text.
    bug = mutate("ex01", ODD_BATCH)
    code = next(c["source"] for c in bug["cells"] if c.get("id") == "ex01-answer-1")
    write_nb(subs / "bug_a.ipynb", with_answer("ex01", "# my first try\n" + code, "solutions"))
    write_nb(subs / "bug_b.ipynb", with_answer(
        "ex01", code.replace("\n", "  # a much longer comment that changes the text\n", 3)
        + "\n# and a final remark\n", "solutions"))
    out = root / "out"
    grade_batch(grader, collect_submissions(sorted(subs.iterdir())), out, jobs=2, progress=None)
    return {name: results_of(out, name)
            for name in ("copy", "newer_right", "newer_wrong", "alex01", "bob01", "bug_a", "bug_b")}


def test_the_answered_notebook_beats_a_newer_unanswered_copy(graded):
    results = graded["copy"]
    assert exercise_scores(results)["ex01"] == 10.0
    assert ("2 notebooks are Exercise 1 (batch norm forward, training mode): graded ex01_forward.ipynb "
            "(the one with answers); ignored ex01_forward-Copy1.ipynb (not answered, newer)") in results["output"]
    assert "Exercise 1 (batch norm forward, training mode): 10/10 (graded ex01_forward.ipynb)" in results["output"]


def test_among_answered_notebooks_the_newest_is_graded(graded):
    assert exercise_scores(graded["newer_right"])["ex01"] == 10.0
    assert exercise_scores(graded["newer_wrong"])["ex01"] < 10.0
    assert "graded ex01_v2.ipynb (the newest with answers); ignored ex01_v1.ipynb (answered, older)" \
        in graded["newer_right"]["output"]
    assert "graded ex01_v1.ipynb (the newest with answers); ignored ex01_v2.ipynb (answered, older)" \
        in graded["newer_wrong"]["output"]


def test_content_identifies_the_exercise_before_the_file_name(graded):
    results = graded["alex01"]
    assert exercise_scores(results) == {"ex01": 0.0, "ex06": 10.0}, results["output"]
    assert "no notebook for Exercise 1" in results["output"]


def test_definitions_identify_the_exercise_before_the_file_name(graded):
    results = graded["bob01"]
    assert exercise_scores(results) == {"ex01": 0.0, "ex06": 10.0}, results["output"]


def test_identification_by_definitions_needs_a_clear_winner():
    helper = "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n    pass\n\n"
    spatial = _only_code(helper + answer_source("ex05"))  # reuses Exercise 1's function
    assert identify_exercise(spatial, "homework.ipynb") == (get_exercise("ex05"), "the functions it defines")
    torch_layer = _only_code(helper + "class BatchNorm1d:\n    pass\n")  # one name each: a tie
    assert identify_exercise(torch_layer, "homework.ipynb")[0] is None
    assert identify_exercise(torch_layer, "ex07_torch_batchnorm1d.ipynb")[0] is get_exercise("ex07")


def test_the_same_bug_with_different_comments_gets_the_same_grade(graded):
    a, b = graded["bug_a"], graded["bug_b"]
    assert 0 < a["score"] < 10
    assert [(t["name"], t["score"], t["output"]) for t in a["tests"]] == \
           [(t["name"], t["score"], t["output"]) for t in b["tests"]]


def test_nothing_is_left_behind(graded):
    assert leftovers() == ([], [])


def test_cases_depend_on_the_secret(sandbox, tmp_path):
    ex = get_exercise("ex01")
    plain = Grader(PATHS["hidden"], PATHS["templates"], sandbox, TEST_LIMITS)
    secret = Grader(PATHS["hidden"], PATHS["templates"], sandbox, TEST_LIMITS, secret="s3cret")
    hidden = shutil.copytree(PATHS["hidden"], tmp_path / "hidden")
    (hidden / SECRET_FILE).write_text("s3cret\n")
    bundled = Grader(hidden, PATHS["templates"], sandbox, TEST_LIMITS)
    first = lambda g: g.cases_for(ex)[0].steps[0].args[0]  # noqa: E731
    assert first(plain).shape != first(secret).shape or (first(plain) != first(secret)).any()
    assert first(secret).shape == first(bundled).shape and (first(secret) == first(bundled)).all()
    assert plain.fingerprint != secret.fingerprint
