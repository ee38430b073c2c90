"""``check`` and the grade agree: each mistake the grader punishes that the table marks
``check_fails`` fails a public check, and what the text demands (no loops, arguments unchanged,
exact keys) is also graded.

The mistakes marked so are those a review found passing ``check`` while losing points (or the
reverse), and every mistake of the exercises whose checks are meant to catch them all
(``typical_mistakes.PUBLIC_CHECKS_CATCH``).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from bncourse.grading.exercises import get_exercise
from bncourse.grading.grader import collect_submissions, grade_batch

from grading_helpers import ROOT, exercise_scores, mutate, results_of, write_nb
from typical_mistakes import MISTAKES

CAUGHT = [m for m in MISTAKES if m.check_fails]


@pytest.mark.parametrize("mistake", CAUGHT, ids=[m.name for m in CAUGHT])
def test_each_mistake_fails_check_and_loses_points(tmp_path, graded_mistakes, mistake):
    path = write_nb(tmp_path / get_exercise(mistake.exercise).notebook, mutate(mistake.exercise, mistake.replacements))
    result = subprocess.run([sys.executable, "-m", "bncourse.cli", "check", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "FAIL" in result.stdout, \
        f"{mistake.name!r} passes every public check:\n{result.stdout}{result.stderr}"
    score = exercise_scores(graded_mistakes[mistake.name])[mistake.exercise]
    assert score < 10.0, f"{mistake.name}: check fails but the grade is full"


def test_the_gradient_each_backward_exercise_is_about_carries_most_points(grader, tmp_path):
    """ex04: dx = 0 with the two sums the text gives; ex03: only the three one-step nodes right."""
    ex04 = mutate("ex04", [("dx = (gamma * inv_std / n) * (n * dout - dbeta - x_hat * dgamma)",
                            "dx = np.zeros_like(dout)")])
    ex03 = mutate("ex03", [('"istd": distd, "std": dstd, "var": dvar, "xc": dxc,\n            "mu": dmu, "x": dx,',
                            '"istd": 0 * distd, "std": 0 * dstd, "var": 0 * dvar, "xc": 0 * dxc,\n'
                            '            "mu": 0 * dmu, "x": 0 * dx,')])
    subs = [write_nb(tmp_path / "subs" / "ex04.ipynb", ex04), write_nb(tmp_path / "subs" / "ex03.ipynb", ex03)]
    grade_batch(grader, collect_submissions(subs), tmp_path / "out", jobs=2, progress=None)
    assert exercise_scores(results_of(tmp_path / "out", "ex04"))["ex04"] <= 3.0
    assert exercise_scores(results_of(tmp_path / "out", "ex03"))["ex03"] <= 2.0
