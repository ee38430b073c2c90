"""Swap torch's batch-norm modules in a model for the course's own."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm

__all__ = ["replace_batchnorm"]

# Most specific first: a subclass of torch's BatchNorm2d becomes ours too.
_REPLACEMENTS: tuple[tuple[type[nn.Module], type[_BatchNorm]], ...] = (
    (nn.BatchNorm1d, BatchNorm1d),
    (nn.BatchNorm2d, BatchNorm2d),
    (nn.BatchNorm3d, BatchNorm3d),
)


def replace_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every ``torch.nn.BatchNorm1d/2d/3d`` in ``model`` by ``bncourse.nn``'s.

    Recursive over submodules; each new layer gets the old one's arguments,
    state (parameters, running statistics, ``num_batches_tracked``), device,
    dtype, ``requires_grad`` flags and train/eval mode, so the model computes
    the same function afterwards. The new parameters are new tensors: build
    the optimizer *after* replacing. Returns ``model`` (changed in place), or
    the new layer if ``model`` itself is a batch-norm module.

    Other normalization modules (``SyncBatchNorm``, ``InstanceNorm*``,
    ``LayerNorm``, ``GroupNorm``) are left as they are.

    Raises:
        ValueError: a lazy batch-norm module that has not seen an input yet
            (its number of features is still unknown).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(model).__name__}")
    new = _convert(model)
    if new is not None:
        return new
    for name, child in model.named_children():
        replacement = replace_batchnorm(child)
        if replacement is not child:
            setattr(model, name, replacement)
    return model


def _convert(module: nn.Module) -> _BatchNorm | None:
    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        raise ValueError(
            f"expected an initialized batch-norm module, got an uninitialized "
            f"{type(module).__name__}: run one forward pass before replacing it"
        )
    our_cls = next((ours for theirs, ours in _REPLACEMENTS if isinstance(module, theirs)), None)
    if our_cls is None:
        return None
    reference = next((t for t in (module.weight, module.running_mean) if t is not None), None)
    factory = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}
    new = our_cls(
        module.num_features,
        eps=module.eps,
        momentum=module.momentum,
        affine=module.affine,
        track_running_stats=module.track_running_stats,
        bias=module.bias is not None,
        **factory,
    )
    new.load_state_dict(module.state_dict(), strict=True)
    for name in ("weight", "bias"):
        old_p, new_p = getattr(module, name), getattr(new, name)
        if old_p is not None:
            new_p.requires_grad_(old_p.requires_grad)
    return new.train(module.training)
