"""Fixtures for the grading tests: one sandbox probe and one grader per session."""

from __future__ import annotations

import pytest

from bncourse.grading.exercises import EXERCISES
from bncourse.grading.grader import Grader, default_paths
from bncourse.grading.sandbox import detect_sandbox

from grading_helpers import TEST_LIMITS


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
