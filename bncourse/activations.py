"""Recording and summarizing activation statistics inside a torch model.

The chapter "Why normalize activations?" looks at how the distribution of each
layer's pre-activations changes with depth (at initialization) and with time
(during training). This module holds what it measures with:

- :class:`ActivationRecorder` registers forward hooks on several modules at once
  and keeps a copy of each one's input (or output) on every forward call;
- :func:`record_layers` runs one batch through a model and returns what the
  hooks saw, leaving the model exactly as it was;
- :func:`layer_statistics`, :func:`saturation_fraction` summarize recordings;
- :class:`PercentileTracker` is an ``on_step`` callback for
  :func:`bncourse.training.train` that follows per-unit percentiles of one
  layer over training, and :func:`drift_summary` condenses them per unit.

The models come from :mod:`bncourse.models`, the training loop from
:mod:`bncourse.training`; nothing here trains or builds a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .training import record_activations

__all__ = [
    "ActivationRecorder",
    "record_layers",
    "layer_statistics",
    "saturation_fraction",
    "PercentileTracker",
    "drift_summary",
]

_WHAT = ("input", "output")


class ActivationRecorder:
    """Keeps a copy of the input (or output) of watched modules on every forward call.

    Use as a context manager so the hooks are removed afterwards::

        acts = {f"layer {i}": m for i, m in enumerate(activation_modules(model), 1)}
        with ActivationRecorder(acts, what="input") as rec:
            model(x)
        rec.records["layer 3"][0]   # input of the 3rd nonlinearity: shape (N, H)

    Args:
        modules: name -> module to watch (all submodules of the same model).
        what: ``"input"`` records the first positional input of each module
            (for a nonlinearity: its pre-activation), ``"output"`` its output.

    Attributes:
        records: name -> list of tensors, one per forward call, detached and
            cloned (so a later in-place update or backward cannot change them).
    """

    def __init__(self, modules: Mapping[str, nn.Module], what: str = "input") -> None:
        if not isinstance(modules, Mapping) or not modules:
            raise ValueError(f"expected a non-empty mapping name -> nn.Module, got {modules!r}")
        for name, m in modules.items():
            if not isinstance(m, nn.Module):
                raise ValueError(f"expected an nn.Module for {name!r}, got {type(m).__name__}")
        if what not in _WHAT:
            raise ValueError(f"expected what='input' or 'output', got {what!r}")
        self.modules = dict(modules)
        self.what = what
        self.records: dict[str, list[torch.Tensor]] = {name: [] for name in self.modules}
        self._handles: list = []

    def _hook(self, name: str):
        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            value = inputs[0] if self.what == "input" else output
            self.records[name].append(value.detach().clone())

        return hook

    def attach(self) -> ActivationRecorder:
        """Register the hooks (a second call does nothing)."""
        if not self._handles:
            self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def remove(self) -> None:
        """Remove the hooks; the records stay."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def clear(self) -> None:
        """Forget the records, keep the hooks."""
        for v in self.records.values():
            v.clear()

    def __enter__(self) -> ActivationRecorder:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.remove()


@torch.no_grad()
def record_layers(
    model: nn.Module,
    x: torch.Tensor,
    modules: Mapping[str, nn.Module],
    *,
    what: str = "input",
    train_mode: bool = False,
) -> dict[str, torch.Tensor]:
    """One forward pass of ``x`` and the input (or output) of every watched module.

    The multi-layer sibling of :func:`bncourse.training.record_activations`:
    one pass serves all layers. The model runs in eval mode unless
    ``train_mode``; its mode and its buffers (BN's running statistics) are
    restored afterwards, so recording never changes the model.

    Args:
        model: the network.
        x: a batch of inputs, shape ``(N, ...)``.
        modules: name -> submodule of ``model``.
        what: ``"input"`` or ``"output"`` (see :class:`ActivationRecorder`).
        train_mode: run in training mode (BN uses this batch's statistics).

    Returns:
        name -> tensor with the module's input/output shape, e.g. ``(N, H)``, in
        the order of ``modules``.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected x to be a torch.Tensor, got {type(x).__name__}")
    owned = {id(m) for m in model.modules()}
    for name, m in modules.items():
        if id(m) not in owned:
            raise ValueError(f"expected submodules of the model, got {name!r} that is not in it")
    saved = {name: b.clone() for name, b in model.named_buffers()}
    was_training = model.training
    try:
        model.train(train_mode)
        with ActivationRecorder(modules, what=what) as rec:
            model(x)
    finally:
        model.train(was_training)
        for name, b in model.named_buffers():
            b.copy_(saved[name])
    return {name: outs[-1] for name, outs in rec.records.items()}


def layer_statistics(
    values: Mapping[str, torch.Tensor | np.ndarray], q: Sequence[float] = (15, 50, 85)
) -> dict[str, np.ndarray]:
    """Per-layer summary of recordings, pooling all units and examples of a layer.

    Args:
        values: layer name -> activations of any shape (e.g. ``(N, H)``).
        q: percentile levels in [0, 100].

    Returns:
        dict with ``"names"`` ``(L,)`` (the keys, in order), ``"percentiles"``
        ``(L, len(q))``, ``"std"`` ``(L,)`` and ``"mean"`` ``(L,)``, float64.
    """
    q_arr = _check_q(q)
    if not values:
        raise ValueError("expected at least one layer of activations, got an empty mapping")
    arrays = {name: _as_numpy(v).ravel() for name, v in values.items()}
    for name, a in arrays.items():
        if a.size == 0:
            raise ValueError(f"expected activations for {name!r}, got an empty tensor")
    return {
        "names": np.array(list(arrays)),
        "percentiles": np.stack([np.percentile(a, q_arr) for a in arrays.values()]),
        "std": np.array([a.std() for a in arrays.values()]),
        "mean": np.array([a.mean() for a in arrays.values()]),
    }


def saturation_fraction(
    pre_activation: torch.Tensor | np.ndarray, activation: str, tol: float = 0.01
) -> float:
    """Fraction of entries where ``activation`` is flat: its output within ``tol`` of a bound.

    For ``"tanh"`` that is ``|tanh(z)| > 1 - tol``; for ``"sigmoid"``,
    ``sigmoid(z) < tol`` or ``> 1 - tol``. There the derivative is below
    ``2 * tol`` (tanh) or ``tol`` (sigmoid), so almost no gradient flows back
    through the unit. ReLU has no bounded flat side and is not accepted.

    Args:
        pre_activation: the input ``z`` of the nonlinearity, any shape.
        activation: ``"tanh"`` or ``"sigmoid"``.
        tol: in (0, 1).

    Returns:
        a float in [0, 1].
    """
    if activation not in ("tanh", "sigmoid"):
        raise ValueError(f"expected activation 'tanh' or 'sigmoid', got {activation!r}")
    if not 0.0 < tol < 1.0:
        raise ValueError(f"expected tol in (0, 1), got {tol!r}")
    z = _as_numpy(pre_activation)
    if z.size == 0:
        raise ValueError("expected a non-empty tensor of pre-activations, got 0 entries")
    if activation == "tanh":
        flat = np.abs(np.tanh(z)) > 1.0 - tol
    else:
        s = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow in exp
        flat = (s < tol) | (s > 1.0 - tol)
    return float(flat.mean())


class PercentileTracker:
    """``on_step`` callback for :func:`bncourse.training.train`: per-unit percentiles of one layer.

    Every ``every`` updates (and at step 0) the fixed ``probe`` batch goes
    through the model via :func:`bncourse.training.record_activations` (which
    leaves the model untouched), and for each unit ``j`` of ``module``'s input
    (or output) of shape ``(P, H)`` the percentiles ``q`` of the ``P`` values
    in column ``j`` are stored: the distribution that unit takes over the
    probe examples. With the same probe every time, any change comes from the
    weights, not from a different sample.

    Attributes:
        steps: list of the steps measured.
        values: list of ``(H, len(q))`` arrays, one per measured step.
    """

    def __init__(
        self,
        module: nn.Module,
        probe: torch.Tensor,
        every: int = 10,
        q: Sequence[float] = (15, 50, 85),
        what: str = "input",
        train_mode: bool = False,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise ValueError(f"expected an nn.Module to watch, got {type(module).__name__}")
        if not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"expected every to be a positive int, got {every!r}")
        if what not in _WHAT:
            raise ValueError(f"expected what='input' or 'output', got {what!r}")
        self.module, self.probe, self.every = module, probe, int(every)
        self.q = _check_q(q)
        self.what, self.train_mode = what, train_mode
        self.steps: list[int] = []
        self.values: list[np.ndarray] = []

    def __call__(self, step: int, model: nn.Module) -> None:
        if step % self.every:
            return
        a = record_activations(model, self.module, self.probe, train_mode=self.train_mode, what=self.what)
        if a.ndim != 2:
            raise ValueError(f"expected the watched tensor to be (P, H), got shape {tuple(a.shape)}")
        self.steps.append(int(step))
        self.values.append(np.percentile(_as_numpy(a), self.q, axis=0).T)

    def percentiles(self) -> np.ndarray:
        """All measurements stacked: shape ``(T, H, len(q))`` for ``T`` measured steps."""
        if not self.values:
            raise ValueError("expected at least one measurement, got none (was the tracker called?)")
        return np.stack(self.values)


def drift_summary(percentiles: np.ndarray, q: Sequence[float]) -> dict[str, np.ndarray]:
    """How far each unit's distribution moved between the first and the last measurement.

    Distances are in units of the unit's initial spread, the distance between
    its outermost percentiles ``q[0]`` and ``q[-1]`` at the first measurement,
    so "moved by 0.5" means half the width of its initial distribution.

    Args:
        percentiles: shape ``(T, H, len(q))``, as :meth:`PercentileTracker.percentiles`.
        q: sorted percentile levels containing 50.

    Returns:
        dict of ``(H,)`` arrays: ``"median_shift"`` = ``|median_T - median_0| /
        spread_0``, ``"spread_ratio"`` = ``spread_T / spread_0``, and
        ``"spread0"`` = ``spread_0``.
    """
    q_list = [float(v) for v in _check_q(q)]
    p = np.asarray(percentiles, dtype=np.float64)
    if p.ndim != 3 or p.shape[2] != len(q_list) or p.shape[0] < 2:
        raise ValueError(
            f"expected percentiles of shape (T >= 2, H, {len(q_list)}), got shape {p.shape}"
        )
    if 50.0 not in q_list or q_list != sorted(q_list):
        raise ValueError(f"expected sorted percentile levels containing 50, got {q_list}")
    mid = q_list.index(50.0)
    spread0 = p[0, :, -1] - p[0, :, 0]
    if np.any(spread0 <= 0):
        raise ValueError("expected every unit to have a positive initial spread, got a constant unit")
    return {
        "median_shift": np.abs(p[-1, :, mid] - p[0, :, mid]) / spread0,
        "spread_ratio": (p[-1, :, -1] - p[-1, :, 0]) / spread0,
        "spread0": spread0,
    }


def _check_q(q: Sequence[float]) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 1 or q.size == 0 or np.any((q < 0) | (q > 100)):
        raise ValueError(f"expected a non-empty sequence of percentiles in [0, 100], got {q.tolist()}")
    return q


def _as_numpy(a: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy()
    if isinstance(a, np.ndarray):
        return a.astype(np.float64, copy=False)
    raise ValueError(f"expected a torch.Tensor or numpy array, got {type(a).__name__}")
