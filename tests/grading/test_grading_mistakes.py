"""Typical mistakes lose points on the right exercise and nowhere else.

Each mistake of ``typical_mistakes.MISTAKES`` is submitted as a directory together with the
untouched solutions of the other exercises, all in one batch (the ``graded_mistakes`` fixture).
"""

from __future__ import annotations

import pytest

from bncourse.grading.exercises import EXERCISES

from grading_helpers import exercise_scores
from typical_mistakes import MISTAKES, PUBLIC_CHECKS_CATCH


def test_at_least_ten_mistakes_cover_every_exercise():
    assert len(MISTAKES) >= 10
    assert {m.exercise for m in MISTAKES} == {ex.id for ex in EXERCISES}


def test_every_mistake_of_the_exercises_whose_checks_catch_all_must_fail_check():
    assert [m.name for m in MISTAKES if m.exercise in PUBLIC_CHECKS_CATCH and not m.check_fails] == []


@pytest.mark.parametrize("name, ex_id", [(m.name, m.exercise) for m in MISTAKES], ids=[m.name for m in MISTAKES])
def test_mistake_loses_points_on_its_exercise_only(graded_mistakes, name, ex_id):
    results = graded_mistakes[name]
    scores = exercise_scores(results)
    assert scores[ex_id] < 10.0, f"{name!r} kept all points: {results['output']}"
    others = {ex: s for ex, s in scores.items() if ex != ex_id}
    assert all(s == 10.0 for s in others.values()), f"{name!r} cost points elsewhere: {others}"
    failed = [t for t in results["tests"] if t["score"] < t["max_score"]]
    assert failed and all(t["number"].startswith(f"{int(ex_id[2:])}.") for t in failed)
    assert all(t["output"] and t["output"] != "passed" for t in failed)
