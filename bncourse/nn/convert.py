"""Swap torch's batch-norm modules in a model for the course's own."""

from __future__ import annotations

import warnings

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm as _TorchBatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm
from .fused import FusedBatchNorm1d, FusedBatchNorm2d, FusedBatchNorm3d

__all__ = ["replace_batchnorm", "fuser_method_mapping"]

# Most specific first: a subclass of torch's BatchNorm2d becomes ours too.
_REPLACEMENTS: tuple[tuple[type[nn.Module], type[_BatchNorm]], ...] = (
    (nn.BatchNorm1d, BatchNorm1d),
    (nn.BatchNorm2d, BatchNorm2d),
    (nn.BatchNorm3d, BatchNorm3d),
)
_FUSED = {BatchNorm1d: FusedBatchNorm1d, BatchNorm2d: FusedBatchNorm2d, BatchNorm3d: FusedBatchNorm3d}


def replace_batchnorm(model: nn.Module, fused: bool = False) -> nn.Module:
    """Replace every ``torch.nn.BatchNorm1d/2d/3d`` in ``model`` by ``bncourse.nn``'s.

    Recursive over submodules; each new layer gets the old one's arguments,
    state (parameters, running statistics, ``num_batches_tracked``), device,
    dtype, ``requires_grad`` flags and train/eval mode, so the model computes
    the same function afterwards. The new parameters are new tensors: build
    the optimizer *after* replacing. Returns ``model`` (changed in place), or
    the new layer if ``model`` itself is a batch-norm module. ``fused=True``
    puts in ``FusedBatchNorm*d`` (:mod:`bncourse.nn.fused`) instead.

    - A module registered under several names (shared weights) becomes one
      new module registered under the same names.
    - A subclass of torch's batch norm that overrides ``forward`` is left as
      it is, with a warning: replacing it would drop its behaviour.
    - Other normalization modules (``SyncBatchNorm``, ``InstanceNorm*``,
      ``LayerNorm``, ``GroupNorm``) and other lazy modules are left as they are.

    Raises:
        ValueError: a lazy batch-norm module that has not seen an input yet
            (its number of features is still unknown).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(model).__name__}")
    return _replace(model, "", {}, fused)


def _replace(module: nn.Module, path: str, done: dict[int, nn.Module], fused: bool) -> nn.Module:
    """``module`` converted (or itself), with its children replaced; ``done`` maps id(old) -> new."""
    if id(module) in done:
        return done[id(module)]
    new = _convert(module, path or type(module).__name__, fused)
    if new is None:
        new = module
        # _modules, not named_children(), which skips a child's second name.
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            replacement = _replace(child, f"{path}.{name}" if path else name, done, fused)
            if replacement is not child:
                setattr(module, name, replacement)
    done[id(module)] = new
    return new


def _convert(module: nn.Module, path: str, fused: bool = False) -> _BatchNorm | None:
    lazy = isinstance(module, LazyModuleMixin) and module.has_uninitialized_params()
    if lazy and isinstance(module, _TorchBatchNorm):  # LazyBatchNorm*d before its first input
        raise ValueError(
            f"expected an initialized batch-norm module at {path!r}, got an uninitialized "
            f"{type(module).__name__}: run one forward pass before replacing it"
        )
    our_cls = next((ours for theirs, ours in _REPLACEMENTS if isinstance(module, theirs)), None)
    if our_cls is None:
        return None
    if fused:
        our_cls = _FUSED[our_cls]
    if type(module).forward is not _TorchBatchNorm.forward:
        warnings.warn(
            f"replace_batchnorm: left {path!r} ({type(module).__name__}) as it is: it overrides "
            "forward, and replacing it would drop that behaviour",
            stacklevel=3,
        )
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


def fuser_method_mapping() -> dict[tuple[type[nn.Module], ...], object]:
    """Fusion rules that let ``torch.ao.quantization.fuse_modules`` fold the course's layers.

    torch looks fusers up by the exact types of the modules, so its defaults
    know only its own batch norm. Pass this as
    ``fuse_modules(model, names, fuse_custom_config_dict={"additional_fuser_method_mapping":
    fuser_method_mapping()})``: every default rule that pairs a convolution,
    transposed convolution or ``Linear`` (and an optional ``ReLU``) with
    ``torch.nn.BatchNorm*d`` is repeated for ``bncourse.nn.BatchNorm*d``
    (evaluation-mode folding; quantization-aware training wants torch's own
    module types).
    """
    from torch.ao.quantization.fuser_method_mappings import _DEFAULT_OP_LIST_TO_FUSER_METHOD

    ours = {theirs: ours for theirs, ours in _REPLACEMENTS}
    mapping = {}
    for types, fuser in _DEFAULT_OP_LIST_TO_FUSER_METHOD.items():
        if types[0] in ours or not any(t in ours for t in types):
            continue  # BN + ReLU builds torch's own intrinsic module, which checks types
        mapping[tuple(ours.get(t, t) for t in types)] = fuser
    return mapping
