"""Hidden cases for Exercise 14: build_network(seed), trained by the notebook's own loop in the sandbox.

The set-up cell (restored from the released notebook) defines the network family, the training
loop and ``predict``; the grader calls the student's ``build_network`` with a seed drawn here,
checks the scale of the initial logits, trains with ``train_network`` on the digits it passes in,
and scores ``predict`` on the held-out digits by accuracy.
"""

from __future__ import annotations

import numpy as np

from bncourse.grading.spec import Case, Var, call, expect, expect_labels

from _common import digits

TARGET = 0.85


def cases(rng: np.random.Generator) -> list[Case]:
    x_train, y_train, x_test, y_test = (a.copy() for a in digits())
    build_seed, train_seed = (int(s) for s in rng.integers(0, 2**31 - 1, size=2))
    probe = x_train[rng.choice(len(x_train), size=256, replace=False)]
    return [
        Case("the initial logits have a standard deviation between 0.1 and 10", 1,
             [call("build_network", build_seed, store="net"),
              call("logit_scale", Var("net"), probe, store="log10_scale")],
             {"log10_scale": expect(np.float64(0.0), dtype=None, rtol=0.0, atol=1.0)}),
        Case(f"after the set-up cell's 150 training steps: at least {TARGET:.0%} accuracy on "
             f"{len(y_test)} held-out digits", 9,
             [call("build_network", build_seed, store="net"),
              call("train_network", Var("net"), x_train, y_train, train_seed, store="trained"),
              call("predict", Var("trained"), x_test, store="labels")],
             {"labels": expect_labels(y_test, TARGET)}),
    ]
