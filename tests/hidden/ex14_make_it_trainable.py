"""Hidden cases for Exercise 14: build_network(seed) in the sandbox, trained and judged outside it.

The sandbox only calls the student's ``build_network`` with a seed drawn here and exports the
network as numbers (the set-up cell's ``network_vector``). The grader then rebuilds it with the
released set-up cell's ``network_from_vector`` in its own process, checks the scale of the initial
logits on digits the sandbox never sees, trains it with the set-up cell's ``train_network`` and
scores ``predict`` on the held-out digits. Nothing the student's code does inside the sandbox can
change the training or its verdict; only the network it builds counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bncourse.grading.spec import Case, Var, call, expect_verdict

from _common import digits

TARGET = 0.85


def _scale_verdict(probe: np.ndarray):
    def verdict(vector: np.ndarray, setup: dict[str, Any], answer: str) -> tuple[bool, str]:
        scale = setup["logit_scale"](setup["network_from_vector"](vector), probe)
        if -1.0 <= scale <= 1.0:
            return True, "passed"
        return False, (f"the initial logits have standard deviation 10**{scale:.1f}; keep it between 0.1 and 10 "
                       "(what does each layer do to the scale?)")
    return verdict


def _training_verdict(train_seed: int):
    def verdict(vector: np.ndarray, setup: dict[str, Any], answer: str) -> tuple[bool, str]:
        x_train, y_train, x_test, y_test = (a.copy() for a in digits())
        net = setup["train_network"](setup["network_from_vector"](vector), x_train, y_train, train_seed)
        accuracy = float(np.mean(setup["predict"](net, x_test) == y_test))
        if accuracy >= TARGET:
            return True, "passed"
        return False, f"accuracy {accuracy:.3f} on the held-out digits after training; at least {TARGET} needed"
    return verdict


def cases(rng: np.random.Generator) -> list[Case]:
    x_train = digits()[0]
    build_seed, train_seed = (int(s) for s in rng.integers(0, 2**31 - 1, size=2))
    probe = x_train[rng.choice(len(x_train), size=256, replace=False)].copy()
    build = [call("build_network", build_seed, store="net"), call("network_vector", Var("net"), store="network")]
    return [
        Case("the initial logits have a standard deviation between 0.1 and 10", 1,
             build, {"network": expect_verdict(_scale_verdict(probe))}),
        Case(f"after the set-up cell's 150 training steps: at least {TARGET:.0%} accuracy on "
             f"{len(digits()[3])} held-out digits", 9,
             build, {"network": expect_verdict(_training_verdict(train_seed))}),
    ]

