"""Utilities for any torch model with batch-norm layers (torch's or ``bncourse.nn``'s).

- Finding the layers: :func:`is_batchnorm`, :func:`batchnorm_modules`.
- Their running statistics: :func:`set_bn_momentum`, :func:`recalibrate_bn`
  (re-estimate them after training), :func:`freeze_bn_statistics` (stop updating
  them while the rest trains).
- Looking without touching: :func:`run_in_mode` runs a block in training or eval
  mode and restores the mode and the buffers afterwards, so a measurement taken
  during training leaves no trace in it.

Model surgery that swaps torch's layers for the course's is in :mod:`bncourse.nn.convert`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .batchnorm import _BatchNorm

__all__ = [
    "is_batchnorm",
    "batchnorm_modules",
    "set_bn_momentum",
    "recalibrate_bn",
    "freeze_bn_statistics",
    "run_in_mode",
]


def is_batchnorm(module: nn.Module) -> bool:
    """True for torch's ``BatchNorm1d/2d/3d`` (and its other batch norms) and ``bncourse.nn``'s.

    The course's layers deliberately do not subclass torch's private ``_BatchNorm``
    (its forward would call torch's kernel), so both base classes are checked.
    """
    return isinstance(module, (nn.modules.batchnorm._BatchNorm, _BatchNorm))


def batchnorm_modules(model: nn.Module, *, required: bool = False) -> list[nn.Module]:
    """The batch-norm layers of ``model`` in forward (registration) order.

    Args:
        required: raise ``ValueError`` if there is none (for functions that only make
            sense on a model with BN) instead of returning an empty list.
    """
    layers = [m for m in model.modules() if is_batchnorm(m)]
    if required and not layers:
        raise ValueError(f"expected a model with batch-norm layers, got {type(model).__name__} with none")
    return layers


def set_bn_momentum(model: nn.Module, momentum: float | None) -> int:
    """Set ``momentum`` of every batch-norm layer (PyTorch's convention: the weight of
    the *new* batch statistic in the running average; None = cumulative average).

    Returns the number of layers changed.
    """
    if momentum is not None and not 0.0 <= momentum <= 1.0:
        raise ValueError(f"expected momentum in [0, 1] or None, got {momentum!r}")
    layers = batchnorm_modules(model, required=True)
    for bn in layers:
        bn.momentum = momentum
    return len(layers)


@contextmanager
def run_in_mode(model: nn.Module, train_mode: bool, *, restore_buffers: bool = True) -> Iterator[None]:
    """Run a block with ``model`` in training (or eval) mode, then restore its mode
    and, by default, every buffer.

    A forward pass in training mode updates BN's running statistics; restoring the
    buffers (a copy is taken on entry) makes a measurement invisible to the training
    it observes. ``restore_buffers=False`` keeps whatever the block did to them (and
    skips the copy), for a block that means to change them or cannot.

    Example::

        with torch.no_grad(), run_in_mode(model, train_mode=True):
            z = model(x)  # BN normalizes with x's statistics; running stats unchanged
    """
    saved = {name: b.detach().clone() for name, b in model.named_buffers()} if restore_buffers else {}
    was_training = model.training
    model.train(train_mode)
    try:
        yield
    finally:
        model.train(was_training)
        if restore_buffers:
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(saved[name])


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 256, *, dropout: bool = True) -> nn.Module:
    """Re-estimate every BN layer's running statistics from the data ``x``, in place.

    The recipe: reset the running statistics, switch ``momentum`` to None (so they
    become the plain average over the batches that follow instead of an exponential
    average dominated by the last few), run ``x`` through the model in training mode in
    batches of ``batch_size`` without gradients, then restore each layer's momentum and
    the model's train/eval mode. Only the BN buffers change; the weights do not.

    ``model.train()`` also switches dropout on, so by default the statistics are those of
    the training-time network, dropout included (what ``torch.optim.swa_utils.update_bn``
    does too). ``dropout=False`` runs every dropout layer in eval mode during the pass:
    the statistics are then those the network sees at test time, which removes the
    *variance shift* of a BN layer placed after dropout (Li et al., 2019).

    With equal batches the running mean is then exactly the mean over ``x`` of the
    layer's input, and the running variance the average of the batches' unbiased
    variances (close to the variance over ``x`` when batches are large).

    Args:
        model: a model with batch-norm layers (torch's or ``bncourse.nn``'s).
        x: inputs ``(N, ...)``, e.g. the training set; the last batch is dropped if
            it is smaller than ``batch_size`` (unless it is the only one), so every
            batch weighs the same.
        batch_size: rows per forward pass, >= 2.
        dropout: leave dropout active during the pass (True) or switch it off (False).

    Returns:
        ``model``, for chaining.
    """
    layers = batchnorm_modules(model, required=True)
    if not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"expected batch_size an int >= 2, got {batch_size!r}")
    if len(x) < 2:
        raise ValueError(f"expected at least 2 inputs to estimate statistics from, got {len(x)}")
    momenta = [bn.momentum for bn in layers]
    try:
        for bn in layers:
            bn.reset_running_stats()
            bn.momentum = None
        # The point is to change the buffers: restore only the mode.
        with run_in_mode(model, train_mode=True, restore_buffers=False):
            if not dropout:  # run_in_mode puts every module's mode back on exit
                for m in model.modules():
                    if isinstance(m, nn.modules.dropout._DropoutNd):
                        m.eval()
            n_full = max(len(x) // batch_size, 1)
            for k in range(n_full):
                model(x[k * batch_size : (k + 1) * batch_size])
    finally:
        for bn, m in zip(layers, momenta):
            bn.momentum = m
    return model


def freeze_bn_statistics(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Make every BN layer run in eval mode even while the model trains.

    A forward pre-hook sets the layer's ``training`` flag to False just before each
    call, whatever ``model.train()`` did: the layer then normalizes with its running
    statistics and never updates them, while its ``weight`` and ``bias`` (and the
    other layers) keep training. This is what "freezing BN" means when fine-tuning
    (Keras does it for a ``BatchNormalization`` layer with ``trainable = False``,
    which also freezes its weight and bias).

    Returns:
        The hook handles; call ``h.remove()`` on each to undo.
    """

    def force_eval(module: nn.Module, _inputs: tuple) -> None:
        module.training = False

    return [bn.register_forward_pre_hook(force_eval) for bn in batchnorm_modules(model, required=True)]
