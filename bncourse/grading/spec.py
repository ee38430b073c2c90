"""Hidden test cases as data: what the sandbox calls, and what the grader expects back.

A hidden case is a short script of *steps* run inside the sandbox against the
student's names (call a function, construct a class, read or set an
attribute, pick an item of a returned dict), followed by a list of *exported*
variables. Inputs are NumPy arrays that the trusted process writes into one
``.npz`` file (no pickles); exported values come back as ``.npy`` files and are judged in the
trusted process against :class:`Expect` values it computed itself. Neither the
expected values nor the code that computes them ever reach the sandbox.

Hidden-case generators (``tests/hidden/exNN_*.py``) build :class:`Case` objects
with :func:`call`, :func:`get`, :func:`put` and :func:`item`::

    x = rng.normal(size=(8, 5))
    Case("float64, N=8, D=5", points=2,
         steps=[call("batchnorm_forward", x, gamma, beta, store=("out", None))],
         expected={"out": expect(reference_out, dtype=x.dtype)})
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Var",
    "Step",
    "Expect",
    "Case",
    "call",
    "get",
    "put",
    "item",
    "expect",
    "expect_labels",
    "expect_verdict",
    "tolerance",
    "case_plan",
]


@dataclass(frozen=True)
class Var:
    """A reference to a value stored by an earlier step (e.g. a layer object or a cache)."""

    name: str


@dataclass(frozen=True)
class Step:
    """One action in the sandbox. Build with :func:`call`, :func:`get`, :func:`put`, :func:`item`."""

    op: str
    target: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    store: str | tuple[str | None, ...] | None = None


def call(target: str, *args: Any, store: str | tuple[str | None, ...] | None = None,
         **kwargs: Any) -> Step:
    """Call ``target`` (a student name, or ``"var.method"``) with ``args``/``kwargs``.

    ``store="out"`` keeps the return value as ``out``; ``store=("out", None)``
    unpacks a returned pair and keeps only the first item.
    """
    return Step("call", target, tuple(args), dict(kwargs), store)


def get(obj: str, attr: str, store: str) -> Step:
    """Store ``getattr(<obj>, attr)`` as ``store``."""
    return Step("getattr", obj, (attr,), {}, store)


def put(obj: str, attr: str, value: Any) -> Step:
    """``setattr(<obj>, attr, value)`` (e.g. load given weights into a student's layer)."""
    return Step("setattr", obj, (attr, value), {}, None)


def item(obj: str, key: str, store: str) -> Step:
    """Store ``<obj>[key]`` as ``store`` (e.g. one gradient out of a returned dict)."""
    return Step("item", obj, (key,), {}, store)


@dataclass(frozen=True)
class Expect:
    """What one exported value must be.

    Attributes:
        value: the expected array, computed in the trusted process (usually in float64).
        dtype: the dtype the answer must have, or ``None`` to accept any real
            dtype (then only the values are compared).
        rtol, atol: the answer passes when ``|got - value| <= atol + rtol * |value|``
            everywhere; ``atol`` is absolute (already scaled by the caller).
        exact: compare exactly (integers, counters).
        min_agreement: for class labels (see :func:`expect_labels`): the answer passes when
            at least this fraction of the scored entries equals ``value`` exactly; entries
            where ``value`` is negative are not scored.
        verdict: for answers judged by running code on them (see :func:`expect_verdict`):
            ``verdict(got, setup, answer) -> (passed, message)``, called in the trusted process
            with the exported array, the namespace of the exercise's released set-up cell and
            the student's answer code as text (never run there).
    """

    value: np.ndarray
    dtype: np.dtype | None
    rtol: float
    atol: float
    exact: bool = False
    min_agreement: float | None = None
    verdict: Callable[[np.ndarray, dict[str, Any], str], tuple[bool, str]] | None = None


def tolerance(dtype: Any, kind: str = "value") -> tuple[float, float]:
    """Default ``(rtol, atol_scale)`` for answers computed in ``dtype``.

    ``kind="grad"`` loosens float32 a little: backward formulas sum ``N`` terms
    that nearly cancel. The absolute tolerance is ``atol_scale * max(1, max|expected|)``.
    """
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return (1e-6, 1e-9) if kind == "value" else (1e-6, 1e-8)
    if dtype == np.float32:
        return (1e-4, 1e-5) if kind == "value" else (1e-3, 1e-4)
    raise ValueError(f"expected a float32 or float64 dtype, got {dtype}")


def expect(value: Any, dtype: Any = "same", kind: str = "value", rtol: float | None = None,
           atol: float | None = None, exact: bool = False) -> Expect:
    """Build an :class:`Expect`.

    Args:
        value: the reference answer (any array-like).
        dtype: the dtype the answer must have; ``"same"`` uses ``value``'s own
            dtype, ``None`` accepts any real dtype.
        kind: ``"value"`` or ``"grad"``, picks the default tolerances of :func:`tolerance`
            for ``dtype`` (float64 defaults when ``dtype`` is ``None``).
        rtol, atol: override the defaults; ``atol`` is then taken as absolute.
        exact: require exact equality (for integer counters).
    """
    value = np.asarray(value)
    required = value.dtype if isinstance(dtype, str) and dtype == "same" else dtype
    required = None if required is None else np.dtype(required)
    base = required if required is not None and required.kind == "f" else np.dtype(np.float64)
    default_rtol, atol_scale = tolerance(base, kind)
    finite = value[np.isfinite(value)] if value.dtype.kind == "f" else value
    scale = max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0
    return Expect(
        value=value,
        dtype=required,
        rtol=default_rtol if rtol is None else float(rtol),
        atol=atol_scale * scale if atol is None else float(atol),
        exact=exact,
    )


def expect_labels(labels: Any, at_least: float) -> Expect:
    """Predicted class labels that must agree with ``labels`` on at least ``at_least`` of the entries.

    For exercises graded on what a trained model achieves (an accuracy), not on exact values.
    Entries of ``labels`` below 0 mark inputs whose prediction is not scored (e.g. noise rows
    mixed into a batch to check that predictions do not depend on the rest of the batch).
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.ndim != 1 or not (labels >= 0).any():
        raise ValueError(f"expected a 1-D integer array of labels with some >= 0, got {labels.dtype} "
                         f"of shape {labels.shape}")
    if not 0.0 < float(at_least) <= 1.0:
        raise ValueError(f"expected at_least in (0, 1], got {at_least!r}")
    return Expect(value=labels, dtype=None, rtol=0.0, atol=0.0, min_agreement=float(at_least))


def expect_verdict(verdict: Callable[[np.ndarray, dict[str, Any], str], tuple[bool, str]],
                   value: Any = None) -> Expect:
    """An exported array judged by ``verdict(got, setup, answer) -> (passed, message)`` in the trusted process.

    For answers whose worth is what trusted code does with them (a network the grader
    trains itself) or how they are written (a forward without Python loops, read from the
    answer's source): the sandbox only exports the numbers, so nothing the student's code
    does in there can change the verdict. ``setup`` is the namespace the exercise's
    released set-up cell defines, run in the trusted process; ``answer`` is the answer
    code the sandbox ran, as text. ``value``: the reference the verdict compares with, if
    it has one (kept for the tests that check the references themselves).
    """
    if not callable(verdict):
        raise ValueError(f"expected a callable verdict, got {type(verdict).__name__}")
    reference = np.zeros(0) if value is None else np.asarray(value)
    return Expect(value=reference, dtype=None, rtol=0.0, atol=0.0, verdict=verdict)


@dataclass
class Case:
    """One hidden test case: a name the student sees, its points, steps, and expectations.

    The case earns ``points * (outputs correct) / (outputs expected)``: an
    answer that gets ``dgamma`` and ``dbeta`` right but ``dx`` wrong earns two
    thirds. ``expected`` maps exported variable names to :class:`Expect`.
    """

    name: str
    points: float
    steps: list[Step]
    expected: dict[str, Expect]

    def __post_init__(self) -> None:
        if self.points <= 0:
            raise ValueError(f"expected a positive number of points, got {self.points!r}")
        if not self.expected:
            raise ValueError(f"case {self.name!r}: expected at least one exported value")


def _encode(value: Any, arrays: list[np.ndarray]) -> dict[str, Any]:
    """Encode a step argument as JSON; arrays go to ``arrays`` and are referenced by index."""
    if isinstance(value, Var):
        return {"var": value.name}
    if isinstance(value, np.ndarray) or isinstance(value, np.generic):
        arrays.append(np.asarray(value))
        return {"npy": len(arrays) - 1}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"json": value}
    raise ValueError(
        "expected a step argument that is a numpy array, a Var, a number, a string or None, "
        f"got {type(value).__name__}"
    )


def case_plan(case: Case, key_prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The JSON the sandbox runner executes for ``case``; its input arrays go into ``arrays``.

    Each input array is added to ``arrays`` under ``f"{key_prefix}-{k}"``; the
    grader saves them all in one ``.npz`` file (``np.savez``, never pickled) and
    the runner loads them with ``allow_pickle=False``, so the sandbox only ever
    receives plain numbers. Returns ``{"name", "steps", "export"}``.
    """
    local: list[np.ndarray] = []
    steps = []
    for step in case.steps:
        store = step.store
        steps.append({
            "op": step.op,
            "target": step.target,
            "args": [_encode(a, local) for a in step.args],
            "kwargs": {k: _encode(v, local) for k, v in step.kwargs.items()},
            "store": list(store) if isinstance(store, tuple) else store,
        })
    keys = []
    for k, array in enumerate(local):
        if array.dtype.kind not in "biuf":
            raise ValueError(f"expected numeric input arrays, got dtype {array.dtype}")
        key = f"{key_prefix}-{k}"
        arrays[key] = array
        keys.append(key)
    for step in steps:
        for arg in list(step["args"]) + list(step["kwargs"].values()):
            if "npy" in arg:
                arg["npy"] = keys[arg["npy"]]
    for name in case.expected:
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise ValueError(f"expected exported names made of letters, digits and _, got {name!r}")
    plan = {"name": case.name, "steps": steps, "export": sorted(case.expected)}
    json.dumps(plan)  # fail here, in the trusted process, if anything is not JSON
    return plan
