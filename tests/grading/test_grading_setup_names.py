"""An answer cannot change what the set-up cell defines: the grader and ``check`` run the released set-up.

Exercise 14 is graded by the set-up cell's own training loop (``train_network``) and scale
measure (``logit_scale``) applied to the student's ``build_network``. The student's code runs in
the same namespace, so without protection an untrainable network would earn full marks with an
answer that redefines the loop to train a different network, or rebinds it when called, or swaps
a set-up function's code; Exercise 1's point for a loop-free forward is decided by the set-up's
``uses_python_loops``, which reads bytecode with ``dis``. Each cheat below must score exactly what
the honest answer scores, and both the grader and ``check`` must say which names were put back.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from bncourse.grading.check import check_notebook
from bncourse.grading.grader import collect_submissions, grade_batch
from bncourse.grading.notebooks import cell_role, cell_source

from grading_helpers import answer_source, exercise_scores, load, results_of, with_answer, write_nb

SOLUTION = answer_source("ex14")
UNTRAINABLE = SOLUTION.replace("np.sqrt(gains[k] / sizes[k])", "1.0")  # weights of standard deviation 1
GOOD_NETWORK = SOLUTION.replace("def build_network(seed):", "def _good_network(seed):")
CHEAT_FUNCTIONS = '''
_set_up_training = train_network


def _cheat_training(net, x, y, seed):
    return _set_up_training(_good_network(seed), x, y, seed)


def _cheat_scale(net, x):
    return 0.0
'''
CHEATS = {  # name -> (answer cell, the set-up names it changes)
    "redefines": (UNTRAINABLE + "\n\n" + GOOD_NETWORK + CHEAT_FUNCTIONS
                  + "\ntrain_network, logit_scale = _cheat_training, _cheat_scale\n",
                  {"train_network", "logit_scale"}),
    "rebinds_when_called": (GOOD_NETWORK + CHEAT_FUNCTIONS + "\n\n" + UNTRAINABLE.replace(
        "def build_network(seed):\n",
        "def build_network(seed):\n    global train_network, logit_scale\n"
        "    train_network, logit_scale = _cheat_training, _cheat_scale\n"),
        {"train_network", "logit_scale"}),
    "swaps_code": (UNTRAINABLE + "\n\n" + CHEAT_FUNCTIONS + "\nlogit_scale.__code__ = _cheat_scale.__code__\n",
                   {"logit_scale"}),
}


# Exercise 1 awards a point for a forward without Python loops, decided by the set-up's uses_python_loops.
LOOPING = answer_source("ex01").replace("mean = x.mean(axis=0)", "mean = sum(row for row in x) / x.shape[0]")
LOOPING_CHEATS = {  # name -> (answer cell, what it changes)
    "looping_redefines": (LOOPING + "\n\ndef uses_python_loops(fn):\n    return False\n", "`uses_python_loops`"),
    # the detector reads the bytecode with dis: blind it instead
    "looping_patches_dis": (LOOPING + "\n\ndis.get_instructions = lambda code: iter(())\n", "`dis.get_instructions`"),
}


def _set_up_code() -> str:
    return "\n\n".join(cell_source(c) for c in load("ex14", "templates")["cells"] if cell_role(c)[0] == "setup")


def test_the_cheats_would_work_without_protection():
    """In a plain namespace (no runner), the cheat turns the untrainable answer into a passing one."""
    scores = {}
    for name, answer in (("honest", UNTRAINABLE), ("cheat", CHEATS["redefines"][0])):
        ns: dict = {}
        exec(compile(_set_up_code() + "\n\n" + answer, f"<{name}>", "exec"), ns)
        x_train, y_train = ns["make_classes"](np.random.default_rng(2), 1400)
        x_test, y_test = ns["make_classes"](np.random.default_rng(3), 400)
        net = ns["train_network"](ns["build_network"](1), x_train, y_train, seed=1)
        scale = ns["logit_scale"](ns["build_network"](0), x_train[:256])
        scores[name] = ((ns["predict"](net, x_test) == y_test).mean(), scale)
    assert scores["honest"][0] < 0.85 and not -1.0 <= scores["honest"][1] <= 1.0, scores
    assert scores["cheat"][0] >= 0.85 and scores["cheat"][1] == 0.0, scores


@pytest.fixture(scope="module")
def graded(grader, tmp_path_factory):
    root = tmp_path_factory.mktemp("setup-names")
    answers = {"honest": UNTRAINABLE, **{name: answer for name, (answer, _) in CHEATS.items()}}
    paths = [write_nb(root / "subs" / f"{name}.ipynb", with_answer("ex14", answer)) for name, answer in answers.items()]
    loops = {"looping": LOOPING, **{name: answer for name, (answer, _) in LOOPING_CHEATS.items()}}
    paths += [write_nb(root / "subs" / f"{name}.ipynb", with_answer("ex01", answer)) for name, answer in loops.items()]
    grade_batch(grader, collect_submissions(paths), root / "out", jobs=2, progress=None)
    return {name: results_of(root / "out", name) for name in [*answers, *loops]}


@pytest.mark.parametrize("name", list(CHEATS))
def test_a_cheat_scores_what_the_honest_answer_scores_and_is_named(graded, name):
    honest = exercise_scores(graded["honest"])["ex14"]
    assert honest < 10.0, graded["honest"]["output"]
    results = graded[name]
    assert exercise_scores(results)["ex14"] == honest, results["output"]
    outputs = " ".join(t["output"] for t in results["tests"])
    for redefined in CHEATS[name][1]:
        assert f"`{redefined}`" in outputs, outputs
    assert "the hidden tests ran the set-up cell's own" in outputs
    assert "set-up cell" not in " ".join(t["output"] for t in graded["honest"]["tests"])


@pytest.mark.parametrize("name", list(LOOPING_CHEATS))
def test_a_blinded_loop_detector_earns_nothing(graded, name):
    honest, cheat = (exercise_scores(graded[key])["ex01"] for key in ("looping", name))
    assert honest < 10.0 and cheat == honest, graded[name]["output"]
    assert LOOPING_CHEATS[name][1] in " ".join(t["output"] for t in graded[name]["tests"])


def test_check_runs_the_set_up_names_too_and_says_so(sandbox, tmp_path):
    out = io.StringIO()
    nb = with_answer("ex14", CHEATS["redefines"][0])
    status = check_notebook(write_nb(tmp_path / "cheat.ipynb", nb), out=out, sandbox=sandbox)
    text = out.getvalue()
    assert status == 1, text
    assert "your code redefines `logit_scale`, `train_network`, which the set-up cell defines" in text, text
