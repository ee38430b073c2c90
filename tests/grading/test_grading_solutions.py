"""The solutions score full marks, the stubs score 0; results are Gradescope-shaped,
deterministic, atomic and resumable."""

from __future__ import annotations

import csv
import json
import shutil

from bncourse.grading.exercises import EXERCISES
from bncourse.grading.grader import Submission, collect_submissions, grade_batch

from grading_helpers import PATHS, exercise_scores, results_of

GRADESCOPE_TEST_KEYS = {"name", "number", "score", "max_score", "output", "visibility"}
TOTAL = sum(ex.points for ex in EXERCISES)
# Exercises graded on behaviour rather than arithmetic (fixing given code, training a network): their
# hidden cases compare values without requiring a dtype.
NOT_ABOUT_DTYPES = {"ex11", "ex13", "ex14"}
# Exercise 14 is graded by one training run in the sandbox (its cost): one scale case, one training case.
FEW_CASES = {"ex14"}


def _check_gradescope_format(results: dict) -> None:
    assert set(results) >= {"score", "execution_time", "output", "visibility", "stdout_visibility",
                            "tests", "extra_data"}
    assert isinstance(results["score"], float)
    for test in results["tests"]:
        assert set(test) == GRADESCOPE_TEST_KEYS, test.keys()
        assert 0 <= test["score"] <= test["max_score"]
        assert test["visibility"] in {"visible", "hidden", "after_due_date", "after_published"}
    assert abs(sum(t["score"] for t in results["tests"]) - results["score"]) < 1e-6
    json.dumps(results)


def test_solutions_full_marks_stubs_zero(grader, tmp_path):
    subs = collect_submissions([PATHS["solutions"], PATHS["templates"],
                                *(PATHS["solutions"] / ex.notebook for ex in EXERCISES[:3])])
    grade_batch(grader, subs, tmp_path, jobs=2, progress=None)
    solutions = results_of(tmp_path, "solutions")
    _check_gradescope_format(solutions)
    assert solutions["score"] == TOTAL, solutions["output"]
    assert all(t["output"] == "passed" for t in solutions["tests"])
    assert exercise_scores(solutions) == {ex.id: 10.0 for ex in EXERCISES}

    stubs = results_of(tmp_path, "exercises")
    _check_gradescope_format(stubs)
    assert stubs["score"] == 0.0
    assert exercise_scores(stubs) == {ex.id: 0.0 for ex in EXERCISES}
    assert all("NotImplementedError" in t["output"] for t in stubs["tests"])

    for ex in EXERCISES[:3]:  # a single notebook is graded as its own exercise only
        single = results_of(tmp_path, ex.notebook.removesuffix(".ipynb"))
        assert exercise_scores(single) == {ex.id: 10.0}

    with open(tmp_path / "grades.csv") as f:
        rows = {row["submission"]: row for row in csv.DictReader(f)}
    assert rows["solutions"]["score"] == f"{TOTAL:g}" and rows["solutions"]["max_score"] == f"{TOTAL:g}"
    assert rows["exercises"]["score"] == "0" and rows["exercises"]["ex05"] == "0"


def test_hidden_cases_are_worth_the_exercise_points(grader):
    for ex in EXERCISES:
        cases = grader.cases_for(ex)
        assert len(cases) >= (2 if ex.id in FEW_CASES else 5), ex.id
        assert sum(c.points for c in cases) == ex.points
        if ex.id in NOT_ABOUT_DTYPES:
            continue
        dtypes = {e.dtype for c in cases for e in c.expected.values() if e.dtype is not None}
        assert {"float32", "float64"} <= {str(d) for d in dtypes}, (ex.id, dtypes)


def test_cases_depend_on_the_seed_and_exercise_only(grader):
    ex = EXERCISES[0]
    a1, a2 = grader.cases_for(ex), grader.cases_for(ex)
    b = grader.cases_for(ex, seed=grader.seed + 1)
    x_a1, x_a2, x_b = (c[0].steps[0].args[0] for c in (a1, a2, b))
    assert (x_a1 == x_a2).all()
    assert x_a1.shape != x_b.shape or not (x_a1 == x_b).all()


def test_same_submission_same_results(grader, tmp_path):
    sub = Submission("solutions", PATHS["solutions"])
    first, second = grader.grade(sub), grader.grade(sub)
    strip = lambda r: [(t["name"], t["score"], t["output"]) for t in r["tests"]]  # noqa: E731
    assert strip(first) == strip(second)
    assert first["score"] == second["score"] == TOTAL


def test_resume_grades_only_what_is_missing(grader, tmp_path):
    subs_dir = tmp_path / "subs"
    subs_dir.mkdir()
    for ex in EXERCISES[:3]:
        shutil.copyfile(PATHS["templates"] / ex.notebook, subs_dir / f"student_{ex.id}.ipynb")
    subs = collect_submissions(sorted(subs_dir.iterdir()))
    out = tmp_path / "out"
    grade_batch(grader, subs, out, jobs=2, progress=None)
    stamps = {s.name: (out / s.name / "results.json").stat().st_mtime_ns for s in subs}
    (out / "student_ex02" / "results.json").unlink()  # as if interrupted before this one
    log = []

    class Log:
        def write(self, text):
            log.append(text)

        def flush(self):
            pass

    grade_batch(grader, subs, out, jobs=2, progress=Log())
    text = "".join(log)
    assert "student_ex01: 0/10 (already graded)" in text
    assert "student_ex03: 0/10 (already graded)" in text
    assert "student_ex02: 0/10 (already graded)" not in text
    assert (out / "student_ex01" / "results.json").stat().st_mtime_ns == stamps["student_ex01"]
    assert (out / "student_ex02" / "results.json").exists()
    assert not list(out.rglob("*.tmp")), "atomic writes leave no temporary files"
    # A changed submission is graded again even though results exist.
    shutil.copyfile(PATHS["solutions"] / EXERCISES[0].notebook, subs_dir / "student_ex01.ipynb")
    grade_batch(grader, subs, out, jobs=2, progress=None)
    assert results_of(out, "student_ex01")["score"] == 10.0


def test_clashing_names_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in "ab":
        shutil.copyfile(PATHS["templates"] / EXERCISES[0].notebook, tmp_path / d / "alice.ipynb")
    try:
        collect_submissions([tmp_path / "a" / "alice.ipynb", tmp_path / "b" / "alice.ipynb"])
    except ValueError as err:
        assert "alice" in str(err)
    else:
        raise AssertionError("expected a ValueError for two submissions named alice")
