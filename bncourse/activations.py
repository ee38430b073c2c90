"""Watching activation statistics inside a torch model.

The chapter "Why normalize activations?" looks at how the distribution of each
layer's pre-activations changes with depth (at initialization) and with time
(during training). This module holds what it needs:

- :func:`plain_mlp` builds a deep fully connected net without normalization,
  with a chosen weight scale, so the effect of the scale can be isolated;
- :class:`ActivationRecorder` registers forward hooks that copy each watched
  module's output on every forward call;
- :func:`activation_percentiles` and :func:`saturation_fraction` summarize a
  recorded tensor;
- :func:`train_tracking_percentiles` trains a model with plain SGD and records
  percentiles of one layer's output on a fixed probe batch as it goes.

Everything runs on the CPU in float32 and takes tensors, not NumPy arrays,
except where the docstring says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "plain_mlp",
    "linear_layers",
    "ActivationRecorder",
    "record_activations",
    "activation_percentiles",
    "saturation_fraction",
    "train_tracking_percentiles",
]

# Name -> module class; the names are what plain_mlp accepts.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
}


def plain_mlp(
    in_features: int,
    hidden_features: int,
    num_hidden: int,
    out_features: int,
    activation: str = "tanh",
    weight_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """A deep MLP without normalization: ``(Linear, activation) * num_hidden, Linear``.

    Every ``Linear`` weight is drawn from ``N(0, weight_scale**2 / fan_in)`` and
    every bias is 0. With ``weight_scale = 1`` a layer keeps the variance of
    its (zero-mean) input, as in LeCun's and Glorot's recipes; ``sqrt(2)`` is
    He's scale for ReLU, which halves the variance. Scales below those make
    the signal shrink geometrically with depth, scales above make it grow.

    Args:
        in_features: input width ``D``; the net maps ``(N, D)`` to ``(N, out_features)``.
        hidden_features: width of every hidden layer.
        num_hidden: number of hidden ``(Linear, activation)`` blocks, >= 1.
        out_features: width of the final ``Linear`` (the logits).
        activation: one of ``ACTIVATIONS`` (``"tanh"``, ``"sigmoid"``, ``"relu"``).
        weight_scale: the factor above, > 0.
        generator: torch generator for the weights, for reproducibility.

    Returns:
        ``nn.Sequential`` whose even-indexed modules are the ``Linear`` layers;
        :func:`linear_layers` picks those out by name.
    """
    for name, v in (("in_features", in_features), ("hidden_features", hidden_features),
                    ("num_hidden", num_hidden), ("out_features", out_features)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"expected {name} to be a positive int, got {v!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"expected activation to be one of {sorted(ACTIVATIONS)}, got {activation!r}"
        )
    if not weight_scale > 0:
        raise ValueError(f"expected weight_scale > 0, got {weight_scale!r}")
    widths = [in_features] + [hidden_features] * num_hidden
    modules: list[nn.Module] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        modules += [_scaled_linear(fan_in, fan_out, weight_scale, generator),
                    ACTIVATIONS[activation]()]
    modules.append(_scaled_linear(hidden_features, out_features, weight_scale, generator))
    return nn.Sequential(*modules)


def _scaled_linear(
    fan_in: int, fan_out: int, scale: float, generator: torch.Generator | None
) -> nn.Linear:
    layer = nn.Linear(fan_in, fan_out)
    with torch.no_grad():
        layer.weight.normal_(0.0, scale / fan_in**0.5, generator=generator)
        layer.bias.zero_()
    return layer


def linear_layers(model: nn.Module, include_output: bool = True) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` submodules of ``model`` in order, keyed ``"layer 1"``, ``"layer 2"``, ...

    Their outputs are the pre-activations the chapter plots. With
    ``include_output=False`` the last one (the logits of :func:`plain_mlp`,
    which no activation follows) is left out.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not include_output:
        layers = layers[:-1]
    if not layers:
        raise ValueError(f"expected a model with nn.Linear layers, got {type(model).__name__} with none")
    return {f"layer {i}": m for i, m in enumerate(layers, start=1)}


class ActivationRecorder:
    """Copies the output of watched modules on every forward call, via forward hooks.

    Use as a context manager so the hooks are removed afterwards::

        with ActivationRecorder(linear_layers(model)) as rec:
            model(x)
        rec.records["layer 3"][0]   # output of the 3rd Linear, shape (N, H)

    Attributes:
        records: name -> list of tensors, one per forward call, each detached
            and cloned (so later in-place updates or autograd do not change it)
            and of the module's output shape.
    """

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        if not isinstance(modules, Mapping) or not modules:
            raise ValueError(
                f"expected a non-empty mapping name -> nn.Module, got {modules!r}"
            )
        for name, m in modules.items():
            if not isinstance(m, nn.Module):
                raise ValueError(
                    f"expected an nn.Module for {name!r}, got {type(m).__name__}"
                )
        self.modules = dict(modules)
        self.records: dict[str, list[torch.Tensor]] = {name: [] for name in self.modules}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self.records[name].append(output.detach().clone())
        return hook

    def attach(self) -> ActivationRecorder:
        """Register the hooks (idempotent)."""
        if not self._handles:
            self._handles = [m.register_forward_hook(self._hook(name))
                             for name, m in self.modules.items()]
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


def record_activations(
    model: nn.Module, x: torch.Tensor, modules: Mapping[str, nn.Module] | None = None
) -> dict[str, torch.Tensor]:
    """One forward pass of ``x`` (no gradients) and the output of each watched module.

    Args:
        model: the net; it is run as it is (train or eval mode unchanged).
        x: its input, e.g. shape ``(N, D)``.
        modules: name -> submodule to watch; defaults to :func:`linear_layers`.

    Returns:
        name -> output tensor of that module for this batch, e.g. ``(N, H)``.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected x to be a torch.Tensor, got {type(x).__name__}")
    modules = linear_layers(model) if modules is None else modules
    with ActivationRecorder(modules) as rec, torch.no_grad():
        model(x)
    return {name: outs[-1] for name, outs in rec.records.items()}


def activation_percentiles(
    a: torch.Tensor | np.ndarray, q: Sequence[float] = (15, 50, 85)
) -> np.ndarray:
    """Percentiles ``q`` (in [0, 100]) of all entries of ``a``, pooled over units and examples.

    Returns a float64 array of shape ``(len(q),)``.
    """
    q = _check_q(q)
    values = _as_numpy(a).ravel()
    if values.size == 0:
        raise ValueError("expected a non-empty tensor of activations, got one with 0 entries")
    return np.percentile(values, q)


def saturation_fraction(
    pre_activation: torch.Tensor | np.ndarray, activation: str, tol: float = 0.01
) -> float:
    """Fraction of entries where ``activation`` is flat: its output within ``tol`` of a bound.

    For ``"tanh"`` that is ``|tanh(z)| > 1 - tol``; for ``"sigmoid"``,
    ``sigmoid(z) < tol`` or ``> 1 - tol``. There the derivative is at most
    about ``2 * tol`` (tanh) or ``tol`` (sigmoid), so almost no gradient flows
    back through the unit. ReLU has no saturated side that is bounded, so it is
    not accepted.

    Args:
        pre_activation: the input ``z`` of the activation, any shape.
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
    if activation == "tanh":
        flat = np.abs(np.tanh(z)) > 1.0 - tol
    else:
        s = 1.0 / (1.0 + np.exp(-z))
        flat = (s < tol) | (s > 1.0 - tol)
    return float(flat.mean())


def train_tracking_percentiles(
    model: nn.Module,
    watch: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    probe: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int = 64,
    record_every: int = 10,
    q: Sequence[float] = (15, 50, 85),
    units: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Train ``model`` with plain SGD on cross-entropy; watch one module's output.

    Every ``record_every`` steps (and before the first), the fixed ``probe``
    batch goes through the model with gradients off, and the percentiles
    ``q`` of ``watch``'s output on it are stored, per unit: for unit ``j``
    they summarize the ``P`` values ``out[:, j]`` over the probe examples, the
    distribution that the next layer sees on its ``j``-th input. Using the
    same probe every time means a change in the percentiles comes from the
    weights, not from a different sample.

    Args:
        model: maps ``(N, D)`` to logits ``(N, K)``; it is trained in place.
        watch: a submodule of ``model`` whose output is tracked.
        x: training inputs ``(N, D)`` float32; y: labels ``(N,)`` int64 in ``[0, K)``.
        probe: inputs ``(P, D)`` used only for the measurements.
        steps: number of SGD steps; each uses a random mini-batch of ``batch_size``.
        lr: learning rate of the SGD step.
        record_every: steps between measurements.
        q: percentiles in [0, 100].
        units: indices of the output units (columns of ``watch``'s ``(P, H)``
            output) to track; ``None`` tracks all ``H``.
        generator: torch generator for the mini-batch sampling.

    Returns:
        dict with ``"step"`` ``(T,)``, ``"percentiles"`` ``(T, U, len(q))`` for
        the ``U`` tracked units, ``"units"`` ``(U,)``, ``"loss"`` ``(steps,)``
        (the mini-batch losses) and ``"q"`` ``(len(q),)``.
    """
    if not isinstance(watch, nn.Module) or not any(m is watch for m in model.modules()):
        raise ValueError("expected watch to be a submodule of model")
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(
            f"expected x of shape (N, D) and y of shape (N,), got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    for name, v in (("steps", steps), ("batch_size", batch_size), ("record_every", record_every)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"expected {name} to be a positive int, got {v!r}")
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    recorded_steps: list[int] = []
    recorded: list[np.ndarray] = []
    losses = np.empty(steps)

    q_arr = _check_q(q)

    def measure(step: int) -> None:
        out = record_activations(model, probe, {"watch": watch})["watch"]
        if out.ndim != 2:
            raise ValueError(f"expected watch to output (P, H), got shape {tuple(out.shape)}")
        recorded_steps.append(step)
        # Percentiles over the probe examples, one row per unit: (H, len(q)).
        recorded.append(np.percentile(_as_numpy(out), q_arr, axis=0).T)

    measure(0)
    width = recorded[0].shape[0]
    cols = np.arange(width) if units is None else np.asarray(units, dtype=np.int64)
    if cols.ndim != 1 or cols.size == 0 or cols.min() < 0 or cols.max() >= width:
        raise ValueError(f"expected unit indices in [0, {width}), got {np.asarray(units).tolist()}")
    for step in range(1, steps + 1):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=generator)
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses[step - 1] = loss.item()
        if step % record_every == 0:
            measure(step)
    return {
        "step": np.asarray(recorded_steps),
        "percentiles": np.stack(recorded)[:, cols, :],
        "units": cols,
        "loss": losses,
        "q": q_arr,
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
