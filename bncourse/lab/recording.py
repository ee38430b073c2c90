"""What a layer sees: copying a module's input (or output) out of a torch model.

One mechanism, three ways to use it:

- :class:`ActivationRecorder` registers forward hooks on several modules at once and
  keeps a copy of each one's input (or output) on every forward call;
- :func:`record_layers` (many modules) and :func:`record_activations` (one) run one
  batch through the model with those hooks and leave the model exactly as it was
  (mode and buffers, via :func:`bncourse.nn.utils.run_in_mode`);
- :class:`ProbeRecorder` is the base of the ``on_step`` callbacks for
  ``bncourse.lab.training.train`` that watch one layer on a fixed probe batch during
  training; :class:`PercentileRecorder` keeps the percentiles of every unit.

The paper's Figure 1(b, c) follows the 15th, 50th and 85th percentiles of one sigmoid's
input over training: :func:`median_drift` and :func:`width_change` turn such bands into
numbers a chapter can compare between networks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..nn.utils import run_in_mode

__all__ = [
    "ActivationRecorder",
    "record_layers",
    "record_activations",
    "ProbeRecorder",
    "PercentileRecorder",
    "LayerPercentiles",
    "median_drift",
    "width_change",
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

    The model runs in eval mode unless ``train_mode`` (then BN normalizes with the
    statistics of this batch, as during training); its mode and its buffers (BN's
    running statistics) are restored afterwards, so recording never changes the model.

    Args:
        model: the network.
        x: a batch of inputs, shape ``(N, ...)``.
        modules: name -> submodule of ``model``.
        what: ``"input"`` or ``"output"`` (see :class:`ActivationRecorder`).
        train_mode: run in training mode instead of eval mode.

    Returns:
        name -> detached tensor with the module's input/output shape, e.g. ``(N, H)``,
        in the order of ``modules``.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected x to be a torch.Tensor, got {type(x).__name__}")
    owned = {id(m) for m in model.modules()}
    for name, m in modules.items():
        if id(m) not in owned:
            raise ValueError(f"expected submodules of the model, got {name!r} that is not in it")
    with ActivationRecorder(modules, what=what) as rec, run_in_mode(model, train_mode):
        model(x)
    for name, outs in rec.records.items():
        if not outs:
            raise ValueError(f"expected every watched module to run in the forward pass, {name!r} did not")
    return {name: outs[-1] for name, outs in rec.records.items()}


def record_activations(
    model: nn.Module, module: nn.Module, x: torch.Tensor, *, train_mode: bool = False, what: str = "input"
) -> torch.Tensor:
    """The input (or output) of one ``module`` when ``model`` runs on ``x``; leaves no trace.

    :func:`record_layers` for a single module: see there for ``train_mode`` and ``what``.

    Returns:
        A detached tensor with the shape of the module's input/output, e.g. ``(N, C)``.
    """
    name = type(module).__name__
    return record_layers(model, x, {name: module}, what=what, train_mode=train_mode)[name]


class ProbeRecorder:
    """Base ``on_step`` callback for ``bncourse.lab.training.train``: watch one layer on a fixed batch.

    At every step divisible by ``every`` (step 0 is the model before training) it runs
    the fixed ``probe`` batch through the model with :func:`record_activations`, which
    leaves the model as it was, appends the step to ``steps`` and hands the recorded
    tensor ``a`` (the module's input or output, ``(P, ...)``) to :meth:`_keep`, which a
    subclass defines to store what it needs. With the same probe every time, any change
    between records comes from the weights, not from a different sample.

    Args:
        module: a submodule of the trained model.
        probe: inputs ``(P, ...)``, P >= 2.
        every: record at steps divisible by this.
        what: ``"input"`` (e.g. a nonlinearity's pre-activation) or ``"output"``.
        train_mode: run the probe in training mode (BN with the probe's own statistics,
            as the layer sees data during training) or in eval mode.

    Attributes:
        steps: the steps recorded, a list of ints.
    """

    def __init__(
        self,
        module: nn.Module,
        probe: torch.Tensor,
        every: int,
        *,
        what: str = "input",
        train_mode: bool = True,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise ValueError(f"expected an nn.Module to watch, got {type(module).__name__}")
        if not isinstance(probe, torch.Tensor) or probe.dim() < 2 or len(probe) < 2:
            raise ValueError(f"expected a probe tensor (P, ...) with P >= 2, got {probe!r:.60}")
        if not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"expected every to be a positive int, got {every!r}")
        if what not in _WHAT:
            raise ValueError(f"expected what='input' or 'output', got {what!r}")
        self.module, self.probe, self.every = module, probe, int(every)
        self.what, self.train_mode = what, train_mode
        self.steps: list[int] = []

    def __call__(self, step: int, model: nn.Module) -> None:
        if step % self.every:
            return
        a = record_activations(model, self.module, self.probe, train_mode=self.train_mode, what=self.what)
        self._keep(a)
        self.steps.append(int(step))

    def _keep(self, a: torch.Tensor) -> None:
        """Store what this recorder needs from one record ``a`` of shape ``(P, ...)``."""
        raise NotImplementedError


class PercentileRecorder(ProbeRecorder):
    """``on_step`` callback: percentiles of every unit of ``module``'s input, every ``every`` steps.

    A :class:`ProbeRecorder` (by default in training mode, so BN normalizes with the
    statistics of ``x`` as it does during training; running statistics are restored,
    so recording does not change the training). For each unit ``j`` of the recorded
    ``(N, C)`` tensor it keeps the percentiles ``q`` of the N values in column ``j``:
    the distribution that unit takes over the probe examples.

    Args:
        module, x, every, train_mode, what: see :class:`ProbeRecorder` (``x`` is the probe).
        q: increasing percentile levels in [0, 100].

    Attributes:
        steps: the steps recorded, a list of T ints (step 0 is the initial model).
        values: after training, an array (T, C, len(q)): for every step and unit (column
            of the module's (N, C) input), the percentiles ``q`` over the N rows of ``x``.
    """

    def __init__(
        self,
        module: nn.Module,
        x: torch.Tensor,
        every: int = 20,
        q: Sequence[float] = (15, 50, 85),
        train_mode: bool = True,
        *,
        what: str = "input",
    ) -> None:
        if not all(0 <= p <= 100 for p in q) or list(q) != sorted(q):
            raise ValueError(f"expected increasing percentiles in [0, 100], got {q!r}")
        super().__init__(module, x, every, what=what, train_mode=train_mode)
        self.q = tuple(q)
        self._values: list[np.ndarray] = []

    def _keep(self, a: torch.Tensor) -> None:
        if a.ndim != 2:
            raise ValueError(f"expected the watched tensor to be (N, C), got shape {tuple(a.shape)}")
        # float64 so that percentiles of float32 activations interpolate without rounding
        self._values.append(np.percentile(a.double().numpy(), self.q, axis=0).T)  # (C, len(q))

    @property
    def values(self) -> np.ndarray:
        """``(T, C, len(q))``: all recordings stacked."""
        if not self._values:
            raise ValueError("expected at least one recording, got none (was the recorder passed as on_step?)")
        return np.stack(self._values)


class LayerPercentiles:
    """``on_step`` callback: percentiles of every unit of *several* layers, one forward pass per record.

    What :class:`PercentileRecorder` keeps for one module, kept for each module of
    ``modules`` from a single pass of the probe ``x`` (so watching two layers costs
    one forward pass, not two). A module may appear under two names.

    Args:
        modules: name -> submodule of the trained model.
        x, every, q, train_mode, what: as for :class:`PercentileRecorder`.

    Attributes:
        steps: the steps recorded (T ints).
        values: name -> ``(T, C, len(q))`` array, as ``PercentileRecorder.values``.
    """

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        x: torch.Tensor,
        every: int = 20,
        q: Sequence[float] = (15, 50, 85),
        train_mode: bool = True,
        *,
        what: str = "input",
    ) -> None:
        if not modules or not all(isinstance(m, nn.Module) for m in modules.values()):
            raise ValueError(f"expected a non-empty mapping of names to nn.Modules, got {modules!r:.80}")
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or len(x) < 2:
            raise ValueError(f"expected a probe tensor (P, C) with P >= 2, got {x!r:.60}")
        if not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"expected every to be a positive int, got {every!r}")
        if not all(0 <= p <= 100 for p in q) or list(q) != sorted(q):
            raise ValueError(f"expected increasing percentiles in [0, 100], got {q!r}")
        if what not in _WHAT:
            raise ValueError(f"expected what='input' or 'output', got {what!r}")
        self.modules, self.x, self.every, self.q = dict(modules), x, int(every), tuple(q)
        self.train_mode, self.what = train_mode, what
        self.steps: list[int] = []
        self._values: dict[str, list[np.ndarray]] = {name: [] for name in self.modules}

    def __call__(self, step: int, model: nn.Module) -> None:
        if step % self.every:
            return
        recorded = record_layers(model, self.x, self.modules, what=self.what, train_mode=self.train_mode)
        for name, a in recorded.items():
            # float64 so that percentiles of float32 activations interpolate without rounding
            self._values[name].append(np.percentile(a.double().numpy(), self.q, axis=0).T)  # (C, len(q))
        self.steps.append(int(step))

    @property
    def values(self) -> dict[str, np.ndarray]:
        """name -> ``(T, C, len(q))``: all recordings stacked."""
        if not self.steps:
            raise ValueError("expected at least one recording, got none (was the recorder passed as on_step?)")
        return {name: np.stack(v) for name, v in self._values.items()}


def _check_bands(bands: np.ndarray) -> np.ndarray:
    bands = np.asarray(bands, dtype=float)
    if bands.ndim not in (2, 3) or bands.shape[-1] != 3 or bands.shape[0] < 2:
        raise ValueError(f"expected percentile bands of shape (T>=2, 3) or (T>=2, C, 3), got {bands.shape}")
    return bands


def median_drift(bands: np.ndarray) -> np.ndarray | float:
    """How far the median travels over training, in units of the band's width.

    ``sum_t |p50[t+1] - p50[t]| / mean_t (p85[t] - p15[t])``: the total path of the
    middle percentile divided by the typical distance between the outer two. A
    distribution that keeps its place relative to its own spread scores low.

    Args:
        bands: (T, 3) low/median/high percentiles of one unit over T recordings, or
            (T, C, 3) for C units.

    Returns:
        A float for (T, 3), an array (C,) for (T, C, 3).
    """
    bands = _check_bands(bands)
    path = np.abs(np.diff(bands[..., 1], axis=0)).sum(axis=0)
    width = (bands[..., 2] - bands[..., 0]).mean(axis=0)
    return path / width


def width_change(bands: np.ndarray) -> np.ndarray | float:
    """``|log(width at the end / width at the start)|``: how much the band widened or narrowed.

    Args and Returns: as ``median_drift`` (0 means the same width; log(10) means ten
    times wider or narrower).
    """
    bands = _check_bands(bands)
    width = bands[..., 2] - bands[..., 0]
    return np.abs(np.log(width[-1] / width[0]))
