"""Fixtures for the grading tests: one sandbox probe and one grader per session, and the grade
of every typical mistake (graded once, read by the mistake and the agreement tests)."""

from __future__ import annotations

import pytest

from bncourse.grading.exercises import EXERCISES
from bncourse.grading.grader import Grader, collect_submissions, default_paths, grade_batch
from bncourse.grading.sandbox import detect_sandbox

from grading_helpers import TEST_LIMITS, full_directory, mutate, results_of
from typical_mistakes import MISTAKES


@pytest.fixture(scope="session")
def sandbox():
    return detect_sandbox("auto")


@pytest.fixture(scope="session")
def grader(sandbox):
    paths = default_paths()
    return Grader(paths["hidden"], paths["templates"], sandbox, TEST_LIMITS)


@pytest.fixture(scope="session")
def dir_grader(sandbox):
    """A grader for an assignment made of all the exercises."""
    paths = default_paths()
    return Grader(paths["hidden"], paths["templates"], sandbox, TEST_LIMITS,
                  exercises=[ex.id for ex in EXERCISES])


@pytest.fixture(scope="session")
def graded_mistakes(dir_grader, tmp_path_factory):
    """``results.json`` of each typical mistake by name, each submitted with the other exercises'
    solutions as one directory, all in one batch."""
    root = tmp_path_factory.mktemp("mistakes")
    paths = [full_directory(root / "subs" / f"mutant{k:02d}", {m.exercise: mutate(m.exercise, m.replacements)})
             for k, m in enumerate(MISTAKES)]
    grade_batch(dir_grader, collect_submissions(paths), root / "out", jobs=2, progress=None)
    return {m.name: results_of(root / "out", f"mutant{k:02d}") for k, m in enumerate(MISTAKES)}
