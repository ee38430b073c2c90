"""Verdicts taken outside the sandbox: Exercise 14's training and Exercise 1's loop-free point.

Inside the sandbox the student's code can reach everything, the runner's own protection
included (a red-team pass turned it off through ``sys.modules``). So for Exercise 14 the sandbox
only builds the network and exports it as numbers, and the grader trains it with the released
set-up cell in its own process: an untrainable network scores 0 however the sandbox is tampered
with. For Exercise 1 the grader reads the answer's source for Python loops
(``tests/hidden/_common.py``'s ``python_loops``) instead of asking the set-up cell's
``uses_python_loops`` inside the sandbox.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from bncourse.grading.grader import collect_submissions, grade_batch
from bncourse.grading.notebooks import cell_role, cell_source
from bncourse.grading.spec import expect_verdict

from grading_helpers import PATHS, answer_source, exercise_scores, load, results_of, with_answer, write_nb

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


def _grade(grader, root, ex_id: str, answers: dict[str, str]) -> dict[str, dict]:
    """``results.json`` of each answer of ``ex_id`` by name, all graded in one batch."""
    paths = [write_nb(root / "subs" / f"{name}.ipynb", with_answer(ex_id, code)) for name, code in answers.items()]
    grade_batch(grader, collect_submissions(paths), root / "out", jobs=2, progress=None)
    return {name: results_of(root / "out", name) for name in answers}


@pytest.fixture(scope="module")
def graded(grader, tmp_path_factory):
    answers = {"honest": UNTRAINABLE, "solution": SOLUTION, **TAMPERED}
    return _grade(grader, tmp_path_factory.mktemp("trusted-training"), "ex14", answers)


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


# -- Exercise 1: loops read from the source ---------------------------------------------------

def _python_loops():
    spec = importlib.util.spec_from_file_location("_hidden_common", PATHS["hidden"] / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.python_loops


FORWARD = answer_source("ex01")
LOOPING = FORWARD.replace("mean = x.mean(axis=0)", "mean = sum(row for row in x) / x.shape[0]")
IMPL = LOOPING.replace("def batchnorm_forward", "def _impl")
SOURCES = {  # name -> (answer source, the line python_loops must report, or None)
    "solution": (FORWARD, None),
    "looping": (LOOPING, "mean = sum(row for row in x) / x.shape[0]"),
    "alias": (IMPL + "\nbatchnorm_forward = _impl\n", "mean = sum(row for row in x)"),
    "clean copy never run": (LOOPING + "\nif False:\n" + "\n".join("    " + line for line in FORWARD.split("\n")),
                             "mean = sum(row for row in x)"),
    "rebinds itself when called": (IMPL + "\n\ndef batchnorm_forward(x, gamma, beta, eps=1e-5):\n"
                                   "    global batchnorm_forward\n    batchnorm_forward = _impl\n"
                                   "    return _impl(x, gamma, beta, eps)\n", "mean = sum(row for row in x)"),
    "helper": ("def _mean(x):\n    return sum(r for r in x) / len(x)\n\n"
               "def batchnorm_forward(x, g, b, eps=1e-5):\n    return x - _mean(x), None\n", "return sum(r for r in x)"),
    "factory": ("def make():\n    def f(x, g, b, eps=1e-5):\n        return [r for r in x], None\n    return f\n\n"
                "batchnorm_forward = make()\n", "return [r for r in x], None"),
    "lambda": ("batchnorm_forward = lambda x, g, b, eps=1e-5: (list(map(abs, x)), [r for r in x])\n", "lambda x"),
    "data beside it": ("import numpy as np\nx = np.array([i for i in range(4)])\nmean = [i for i in range(3)]\n"
                       + FORWARD, None),
    "globals()": (FORWARD + "\nglobals()['batchnorm_forward'] = _impl\n", "changes or builds code at run time"),
    "exec": ("exec('def batchnorm_forward(x, g, b, eps=1e-5):\\n    return x, None')\n",
             "changes or builds code at run time"),
    "__code__": (FORWARD + "\nbatchnorm_forward.__code__ = (lambda x, g, b, eps=1e-5: x).__code__\n",
                 "changes or builds code at run time"),
}


@pytest.mark.parametrize("name", list(SOURCES))
def test_python_loops_reads_what_the_answer_can_run(name):
    source, expected = SOURCES[name]
    found = _python_loops()(source, "batchnorm_forward")
    if expected is None:
        assert found is None, found
    else:
        assert found is not None and expected in found, found


EX01_CHEATS = {
    # the red team's route around the in-sandbox check: the runner's protection off, the detector replaced
    "loop_detector_off": LOOPING + "\n" + DISABLE_PROTECTION + "\n\ndef uses_python_loops(fn):\n    return False\n",
    # a looping forward that, once called, points its name at a loop-free copy (for the check that follows)
    "rebinds_itself": FORWARD.replace("def batchnorm_forward", "def _clean") + "\n\n" + LOOPING.replace(
        "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n",
        "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n    global batchnorm_forward\n    batchnorm_forward = _clean\n"),
}


@pytest.fixture(scope="module")
def graded_ex01(grader, tmp_path_factory):
    answers = {"looping": LOOPING, "solution": FORWARD, **EX01_CHEATS}
    return _grade(grader, tmp_path_factory.mktemp("loop-point"), "ex01", answers)


@pytest.mark.parametrize("name", list(EX01_CHEATS))
def test_the_loop_point_goes_by_the_source(graded_ex01, name):
    assert exercise_scores(graded_ex01["solution"])["ex01"] == 10.0, graded_ex01["solution"]["output"]
    honest = exercise_scores(graded_ex01["looping"])["ex01"]
    assert honest == 9.0, graded_ex01["looping"]["output"]
    assert exercise_scores(graded_ex01[name])["ex01"] <= honest, graded_ex01[name]["output"]
    assert "global batchnorm_forward" in EX01_CHEATS["rebinds_itself"]  # the cheat is what it says
    vectorized = next(t for t in graded_ex01[name]["tests"] if "vectorized" in t["name"])
    assert vectorized["score"] == 0 and "runs a Python loop" in vectorized["output"], vectorized
