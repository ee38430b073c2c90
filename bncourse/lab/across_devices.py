"""Single-process experiments of the chapter "Batch norm across devices".

Data-parallel training splits each global batch over devices. What batch norm
then computes is known exactly, and the tests prove it to 1e-10:

- per-device BN on W devices of ``b`` rows = ghost batch norm
  (:class:`~bncourse.nn.GhostBatchNorm1d`) with ``virtual_batch_size=b`` on the
  global batch (same outputs, same averaged gradients; only the running
  statistics differ: DDP keeps rank 0's, ghost BN averages the ghost batches');
- ``SyncBatchNorm`` = BN on the global batch, whatever the split;
- GroupNorm does not look at the batch.

So a sweep over per-device batch sizes runs here in one process, after the
chapter has checked the first equality with real processes
(``bncourse.lab.distributed``). Also here: gradient accumulation against a
larger batch, Batch Renorm at small batches, and float16 sums.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..nn import (
    BatchNorm1d,
    BatchNorm2d,
    BatchRenorm1d,
    BatchRenorm2d,
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    LinearRamp,
    recalibrate_bn,
)
from .data import DigitsSplit
from .experiments import train_mode_accuracy
from .models import mlp, small_cnn
from .training import evaluate, train

__all__ = [
    "swap_batchnorm",
    "build_model",
    "ghost_sweep",
    "accumulation_gradients",
    "small_batch_comparison",
    "float16_sums",
]

_GHOST = {BatchNorm1d: GhostBatchNorm1d, BatchNorm2d: GhostBatchNorm2d}
_RENORM = {BatchNorm1d: BatchRenorm1d, BatchNorm2d: BatchRenorm2d}


def swap_batchnorm(model: nn.Module, make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Replace each ``bncourse.nn.BatchNorm1d/2d`` of ``model`` by ``make(bn)``, loading its state."""
    for name, child in model.named_children():
        if type(child) in (BatchNorm1d, BatchNorm2d):
            new = make(child)
            new.load_state_dict(child.state_dict())
            setattr(model, name, new)
        else:
            swap_batchnorm(child, make)
    return model


def build_model(kind: str, seed: int, *, arch: str = "mlp", ghost: int | None = None, steps: int = 300) -> nn.Module:
    """A digits classifier with one kind of normalization; the same initial weights for every kind.

    Args:
        kind: "bn", "gn", "ghost" (ghost batch norm with ``virtual_batch_size=ghost``) or
            "renorm" (Batch Renorm, r_max 1 -> 3 and d_max 0 -> 5 ramped early in the
            run's ``steps``: the paper's schedule shape, scaled to a short run).
        arch: "mlp" (``lab.models.mlp``: 3 x 100 ReLU units, flat (N, 64) inputs) or
            "cnn" (``lab.models.small_cnn``, (N, 1, 8, 8) inputs).
    """
    if arch not in ("mlp", "cnn"):
        raise ValueError(f"expected arch 'mlp' or 'cnn', got {arch!r}")

    def base(norm: str) -> nn.Module:
        return mlp(activation="relu", norm=norm, seed=seed) if arch == "mlp" else small_cnn(norm=norm, seed=seed)

    if kind in ("bn", "gn"):
        return base(kind)
    if kind == "ghost":
        if ghost is None:
            raise ValueError("expected ghost= the virtual batch size for kind='ghost'")
        return swap_batchnorm(base("bn"), lambda bn: _GHOST[type(bn)](bn.num_features, virtual_batch_size=ghost))
    if kind == "renorm":
        r_max = LinearRamp(1.0, 3.0, steps // 10, steps // 2)
        d_max = LinearRamp(0.0, 5.0, steps // 10, steps // 3)
        return swap_batchnorm(base("bn"), lambda bn: _RENORM[type(bn)](bn.num_features, r_max=r_max, d_max=d_max))
    raise ValueError(f"expected kind 'bn', 'gn', 'ghost' or 'renorm', got {kind!r}")


def _measure(model: nn.Module, data: DigitsSplit, train_batch: int, seed: int) -> dict[str, float]:
    """Test and training accuracy (eval mode) and the train/eval gap on the training set.

    The gap is the training-set accuracy in training mode, in batches of ``train_batch``
    rows as during training (running statistics restored afterwards), minus the
    eval-mode accuracy on the same rows (those of an incomplete last batch are left out).
    """
    test = evaluate(model, data.x_test, data.y_test)[1]
    train_eval = evaluate(model, data.x_train, data.y_train)[1]
    n = len(data.x_train) // train_batch * train_batch  # full batches only, as in training
    x, y = data.x_train[:n], data.y_train[:n]
    gap = train_mode_accuracy(model, x, y, train_batch, seed=seed) - evaluate(model, x, y)[1]
    return {"test": test, "train": train_eval, "train_eval_gap": gap}


def _empty(labels: Sequence[str], n: int) -> dict[str, dict[str, np.ndarray]]:
    return {label: {k: np.empty(n) for k in ("test", "train", "train_eval_gap")} for label in labels}


def ghost_sweep(
    data: DigitsSplit,
    global_batch: int,
    ghost_sizes: Sequence[int | None],
    seeds: Sequence[int],
    *,
    steps: int,
    lr: float = 0.05,
    extra: Sequence[str] = (),
) -> dict[str, dict[str, np.ndarray]]:
    """Train the MLP at ``global_batch`` with BN over ghost batches of each size; measure each.

    ``None`` in ``ghost_sizes`` means plain BN over the whole global batch (what
    ``SyncBatchNorm`` computes). ``extra`` adds other kinds ("gn") at the same batch.
    Every run: ``steps`` SGD steps at ``lr``, batches drawn by ``lab.training.train``.

    Returns:
        label -> {"test", "train", "train_eval_gap"} -> array ``(len(seeds),)``;
        labels are ``"ghost 4"``..., ``"bn"`` and the extra kinds.
    """
    runs = [("bn" if g is None else f"ghost {g}", "bn" if g is None else "ghost", g) for g in ghost_sizes]
    runs += [(kind, kind, None) for kind in extra]
    out = _empty([label for label, _, _ in runs], len(seeds))
    for i, seed in enumerate(seeds):
        for label, kind, g in runs:
            model = build_model(kind, seed, ghost=g)
            train(model, data, steps=steps, batch_size=global_batch, lr=lr, seed=seed, eval_every=steps)
            for k, v in _measure(model, data, global_batch, seed).items():
                out[label][k][i] = v
    return out


def _flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def accumulation_gradients(data: DigitsSplit, micro_batch: int, k: int, seed: int = 0) -> dict[str, object]:
    """One step's gradient three ways, on the same ``k * micro_batch`` rows, same weights (MLP).

    - "accumulated": BN model, ``k`` micro-batches, loss of each scaled by ``1/k``,
      gradients summed (what gradient accumulation does);
    - "large batch": BN model on all rows at once;
    - "ghost": ghost BN with ``virtual_batch_size=micro_batch`` on all rows.

    Also the first BN layer's running mean after the step each way: accumulation
    updates it ``k`` times with micro-batch statistics, the large batch once.

    Returns:
        dict with the three flat gradients, ``rel_accumulated_vs_large`` and
        ``rel_accumulated_vs_ghost`` (relative L2 differences), the running means
        ``running_mean_accumulated``, ``running_mean_large`` and ``batch_mean`` (the
        mean of that layer's input over all rows), and ``num_batches_tracked`` of both.
    """
    idx = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))[: k * micro_batch]
    x, y = data.x_train[idx], data.y_train[idx]
    acc_model, big_model = build_model("bn", seed), build_model("bn", seed)
    ghost_model = build_model("ghost", seed, ghost=micro_batch)
    for chunk in range(k):
        rows = slice(chunk * micro_batch, (chunk + 1) * micro_batch)
        (F.cross_entropy(acc_model(x[rows]), y[rows]) / k).backward()
    F.cross_entropy(big_model(x), y).backward()
    F.cross_entropy(ghost_model(x), y).backward()
    g_acc, g_big, g_ghost = _flat_grad(acc_model), _flat_grad(big_model), _flat_grad(ghost_model)
    with torch.no_grad():
        batch_mean = big_model.fc1(x).mean(0)
    return {
        "accumulated": g_acc,
        "large batch": g_big,
        "ghost": g_ghost,
        "rel_accumulated_vs_large": ((g_acc - g_big).norm() / g_big.norm()).item(),
        "rel_accumulated_vs_ghost": ((g_acc - g_ghost).norm() / g_ghost.norm()).item(),
        "running_mean_accumulated": acc_model.norm1.running_mean.clone(),
        "running_mean_large": big_model.norm1.running_mean.clone(),
        "batch_mean": batch_mean,
        "num_batches_tracked": (int(acc_model.norm1.num_batches_tracked), int(big_model.norm1.num_batches_tracked)),
    }


def small_batch_comparison(
    data: DigitsSplit,
    batch_size: int,
    seeds: Sequence[int],
    *,
    steps: int,
    lr: float = 0.05,
    recalibration_batch: int = 256,
) -> dict[str, dict[str, np.ndarray]]:
    """BN, BN + recalibration, Batch Renorm and GN (MLP), all trained at a small ``batch_size``.

    "bn + recalibrated" is the BN model of the same run with its running statistics
    re-estimated after training from the training set in batches of
    ``recalibration_batch`` (``bncourse.nn.recalibrate_bn``).

    Returns:
        label -> {"test", "train", "train_eval_gap"} -> array ``(len(seeds),)``.
    """
    out = _empty(("bn", "bn + recalibrated", "renorm", "gn"), len(seeds))
    for i, seed in enumerate(seeds):
        for kind in ("bn", "renorm", "gn"):
            model = build_model(kind, seed, steps=steps)
            train(model, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, eval_every=steps)
            results = {kind: _measure(model, data, batch_size, seed)}
            if kind == "bn":
                recalibrate_bn(model, data.x_train, batch_size=recalibration_batch)
                results["bn + recalibrated"] = _measure(model, data, batch_size, seed)
            for label, measured in results.items():
                for k, v in measured.items():
                    out[label][k][i] = v
    return out


def float16_sums(counts: Sequence[int], mean: float = 1.5, seed: int = 0) -> dict[str, np.ndarray]:
    """A channel's sum of ``n`` positive activations, for each ``n`` in ``counts``, four ways.

    The values are ``mean * (0.5 + U(0, 1))`` (post-ReLU-like, all of one sign) in
    float16, as a float16 layer would hand them to batch norm.

    - "exact": float64 sum of the float16 values;
    - "float32 accumulator": ``x.sum(dtype=torch.float32)``, what BN kernels do;
    - "float16 result": ``x.sum()`` on the float16 tensor: torch accumulates in float32
      but the result is float16, so it is ``inf`` once the sum passes 65504;
    - "float16 accumulator": a deliberately naive running sum kept in float16
      (``numpy.add.accumulate`` with ``dtype=float16``), one value at a time: it stops
      growing once the spacing of float16 numbers exceeds twice the values added.

    Returns:
        dict of arrays ``(len(counts),)``, plus "counts".
    """
    gen = torch.Generator().manual_seed(seed)
    names = ("exact", "float32 accumulator", "float16 result", "float16 accumulator")
    out: dict[str, list[float]] = {k: [] for k in names}
    for n in counts:
        x = (mean * (0.5 + torch.rand(n, generator=gen))).half()
        out["exact"].append(x.double().sum().item())
        out["float32 accumulator"].append(x.sum(dtype=torch.float32).item())
        out["float16 result"].append(x.sum().item())
        out["float16 accumulator"].append(float(np.add.accumulate(x.numpy(), dtype=np.float16)[-1]))
    result = {k: np.asarray(v) for k, v in out.items()}
    result["counts"] = np.asarray(counts)
    return result
