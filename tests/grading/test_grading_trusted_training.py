"""Exercise 14's network is trained and judged outside the sandbox: only the network counts.

Inside the sandbox the student's code can reach everything, the runner's own protection
included (a red-team pass turned it off through ``sys.modules``). So the sandbox only builds
the network and exports it as numbers; the grader trains it with the released set-up cell in
its own process. An untrainable network scores 0 however the sandbox is tampered with.
"""

from __future__ import annotations

import numpy as np
import pytest

from bncourse.grading.grader import collect_submissions, grade_batch
from bncourse.grading.notebooks import cell_role, cell_source
from bncourse.grading.spec import expect_verdict

from grading_helpers import answer_source, exercise_scores, load, results_of, with_answer, write_nb

SOLUTION = answer_source("ex14")
UNTRAINABLE = SOLUTION.replace("np.sqrt(gains[k] / sizes[k])", "1.0")
GOOD_NETWORK = SOLUTION.replace("def build_network(seed):", "def _good_network(seed):")
DISABLE_PROTECTION = 'import sys as _s\n_s.modules["__main__"].restore_setup = lambda ns, bindings: []\n'
TAMPERED = {
    # the red team's route: turn the runner's protection off, then train a good network instead
    "protection_off": UNTRAINABLE + "\n\n" + GOOD_NETWORK + "\n" + DISABLE_PROTECTION + '''
_set_up_training = train_network


def train_network(net, x, y, seed, **kwargs):
    return _set_up_training(_good_network(seed), x, y, seed)


def logit_scale(net, x):
    return 0.0
''',
    # numbers that are not a network of this exercise reach the grader
    "wrong_vector": UNTRAINABLE + "\n" + DISABLE_PROTECTION + '''

def network_vector(net):
    return np.zeros(5)
''',
}


def _set_up() -> dict:
    code = "\n\n".join(cell_source(c) for c in load("ex14", "templates")["cells"] if cell_role(c)[0] == "setup")
    ns: dict = {}
    exec(compile(code, "<set-up>", "exec"), ns)
    return ns


def test_network_vector_round_trip_and_refusal():
    setup = _set_up()
    ns: dict = dict(setup)
    exec(compile(SOLUTION, "<answer>", "exec"), ns)
    for alpha in ("zeros", None):
        net = ns["build_network"](3)
        if alpha is None:
            net["alpha"] = None
        back = setup["network_from_vector"](setup["network_vector"](net))
        assert (back["alpha"] is None) == (alpha is None)
        for key in ("W", "b"):
            assert all(np.array_equal(a, b) for a, b in zip(back[key], net[key], strict=True))
    with pytest.raises(ValueError, match="expected a network vector of 8856 numbers, got 5"):
        setup["network_from_vector"](np.zeros(5))


def test_expect_verdict_wants_a_callable():
    with pytest.raises(ValueError, match="callable"):
        expect_verdict("not a function")


@pytest.fixture(scope="module")
def graded(grader, tmp_path_factory):
    root = tmp_path_factory.mktemp("trusted-training")
    answers = {"honest": UNTRAINABLE, "solution": SOLUTION, **TAMPERED}
    paths = [write_nb(root / "subs" / f"{name}.ipynb", with_answer("ex14", code)) for name, code in answers.items()]
    grade_batch(grader, collect_submissions(paths), root / "out", jobs=2, progress=None)
    return {name: results_of(root / "out", name) for name in answers}


def test_only_the_network_counts(graded):
    assert exercise_scores(graded["solution"])["ex14"] == 10.0, graded["solution"]["output"]
    assert exercise_scores(graded["honest"])["ex14"] == 0.0
    tampered = graded["protection_off"]
    assert exercise_scores(tampered)["ex14"] == 0.0, tampered["output"]
    outputs = " ".join(t["output"] for t in tampered["tests"])
    assert "after training; at least 0.85 needed" in outputs and "standard deviation 10**" in outputs, outputs


def test_numbers_that_are_not_a_network_score_zero_with_a_message(graded):
    results = graded["wrong_vector"]
    assert exercise_scores(results)["ex14"] == 0.0
    assert all("expected a network vector of 8856 numbers, got 5" in t["output"] for t in results["tests"])
