"""A tiny transformer over the digits, each image read as a sequence of its 8 rows.

Tokens: row ``t`` of an 8x8 digit (8 pixels) is embedded by a Linear layer plus a learned
position embedding. Each block is attention then an MLP, each wrapped in a residual connection
with a normalization layer, placed "pre" (``x + f(norm(x))``, as in most current models) or
"post" (``norm(x + f(x))``, as in Vaswani et al., 2017). The classifier averages the real tokens.

Normalizers (``SeqNorm``): "ln" (LayerNorm over each token's features), "rms" (RMSNorm, ditto),
"bn" (BatchNorm over the features, statistics over every token of every sequence in the batch,
padding included) and "bn_masked" (BatchNorm whose statistics use only the real tokens).

Variable length: ``pad_rows`` turns the (N, 64) digits into (N, T, 9) sequences: the first
``length`` rows of each image, zero rows after them up to ``T``, and a 9th feature that is 1 on
real rows and 0 on padding, which the model reads as its padding mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .. import nn as bnn

__all__ = ["NORM_KINDS", "SeqNorm", "TransformerBlock", "RowTransformer", "pad_rows", "rows", "padded_digits",
           "padding_sensitivity", "first_norm_statistics"]

NORM_KINDS = ("ln", "rms", "bn", "bn_masked")


class SeqNorm(nn.Module):
    """Normalize tokens ``x`` of shape (N, T, D) with a course layer; ``mask`` (N, T) marks real tokens.

    "bn" runs ``bncourse.nn.BatchNorm1d`` on all N*T tokens as one batch of rows; "bn_masked"
    on the real tokens only (padding rows are passed through unchanged and never enter the
    statistics, running ones included). "ln"/"rms" normalize each token on its own, so padding
    cannot affect real tokens.
    """

    def __init__(self, kind: str, features: int) -> None:
        super().__init__()
        if kind not in NORM_KINDS:
            raise ValueError(f"expected a norm kind in {list(NORM_KINDS)}, got {kind!r}")
        self.kind = kind
        self.norm = {"ln": bnn.LayerNorm, "rms": bnn.RMSNorm}.get(kind, bnn.BatchNorm1d)(features)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.kind in ("ln", "rms"):
            return self.norm(x)
        n, t, d = x.shape
        if self.kind == "bn" or mask is None:
            return self.norm(x.reshape(n * t, d)).view(n, t, d)
        out = x.clone()
        out[mask] = self.norm(x[mask])
        return out


class TransformerBlock(nn.Module):
    """Attention and MLP sub-layers with residual connections; (N, T, D) -> (N, T, D)."""

    def __init__(self, dim: int, heads: int, norm: str, placement: str) -> None:
        super().__init__()
        if placement not in ("pre", "post"):
            raise ValueError(f"expected placement 'pre' or 'post', got {placement!r}")
        self.placement = placement
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm1, self.norm2 = SeqNorm(norm, dim), SeqNorm(norm, dim)

    def _attend(self, h: Tensor, mask: Tensor | None) -> Tensor:
        return self.attn(h, h, h, key_padding_mask=None if mask is None else ~mask, need_weights=False)[0]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.placement == "pre":
            x = x + self._attend(self.norm1(x, mask), mask)
            return x + self.mlp(self.norm2(x, mask))
        x = self.norm1(x + self._attend(x, mask), mask)
        return self.norm2(x + self.mlp(x), mask)


class RowTransformer(nn.Module):
    """Digits as sequences of rows -> logits (N, 10).

    Input: (N, 64) flat digits (8 rows of 8, all real) or (N, T, 9) from ``pad_rows`` (8 pixels
    and a real-row flag per token). ``norm`` in ``NORM_KINDS``; ``placement`` "pre" or "post";
    pre-norm models get a final norm before pooling. Seeded; the global RNG is left untouched.
    """

    def __init__(self, norm: str = "ln", placement: str = "pre", dim: int = 32, heads: int = 2,
                 num_blocks: int = 2, max_len: int = 16, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = nn.Linear(8, dim)
            self.position = nn.Parameter(0.1 * torch.randn(max_len, dim))
            self.blocks = nn.ModuleList(TransformerBlock(dim, heads, norm, placement) for _ in range(num_blocks))
            self.final = SeqNorm(norm, dim) if placement == "pre" else None
            self.out = nn.Linear(dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        tokens, mask = _split(x)
        h = self.embed(tokens) + self.position[: tokens.shape[1]]
        for block in self.blocks:
            h = block(h, mask)
        if self.final is not None:
            h = self.final(h, mask)
        if mask is None:
            return self.out(h.mean(1))
        weights = mask.to(h.dtype).unsqueeze(-1)
        return self.out((h * weights).sum(1) / weights.sum(1))


def _split(x: Tensor) -> tuple[Tensor, Tensor | None]:
    if x.dim() == 2 and x.shape[1] == 64:
        return x.view(-1, 8, 8), None
    if x.dim() == 3 and x.shape[2] == 9:
        return x[..., :8], x[..., 8] > 0.5
    raise ValueError(f"expected digits of shape (N, 64) or padded rows (N, T, 9), got {tuple(x.shape)}")


def rows(x: Tensor) -> Tensor:
    """(N, 64) digits -> (N, 8, 9) sequences with every row real (no padding)."""
    return pad_rows(x, torch.full((len(x),), 8), 8)


def pad_rows(x: Tensor, lengths: Sequence[int] | Tensor, total: int) -> Tensor:
    """Keep the first ``lengths[i]`` rows of digit ``i`` and pad with zero rows up to ``total``.

    Args:
        x: (N, 64) digits. lengths: N ints in 1..8. total: sequence length T >= max(lengths).

    Returns:
        (N, T, 9): the kept rows' 8 pixels then zeros, and a last feature 1 on kept rows.
    """
    lengths = torch.as_tensor(lengths)
    if x.dim() != 2 or x.shape[1] != 64 or lengths.shape != (len(x),):
        raise ValueError(f"expected x (N, 64) and N lengths, got {tuple(x.shape)} and {tuple(lengths.shape)}")
    if lengths.min() < 1 or lengths.max() > min(8, total):
        raise ValueError(f"expected lengths in 1..{min(8, total)}, got {lengths.min().item()}..{lengths.max().item()}")
    out = torch.zeros(len(x), total, 9, dtype=x.dtype)
    real = torch.arange(total)[None, :] < lengths[:, None]
    k = min(8, total)
    out[:, :k, :8] = x.view(-1, 8, 8)[:, :k]
    out[..., :8] *= real[..., None]
    out[..., 8] = real.to(x.dtype)
    return out


def padded_digits(data, min_len: int = 3, total: int = 12, seed: int = 0):
    """A copy of a ``DigitsSplit`` whose inputs are ``pad_rows`` sequences (N, total, 9).

    Each image keeps its first ``L`` rows, ``L`` drawn uniformly from ``min_len..8`` (seeded),
    then zero rows up to ``total``: variable-length sequences padded to a common length.
    """
    from dataclasses import replace

    gen = torch.Generator().manual_seed(seed)
    draw = lambda n: torch.randint(min_len, 9, (n,), generator=gen)
    return replace(data, x_train=pad_rows(data.x_train, draw(len(data.x_train)), total),
                   x_test=pad_rows(data.x_test, draw(len(data.x_test)), total))


@torch.no_grad()
def padding_sensitivity(model: RowTransformer, x: Tensor, lengths: Tensor, totals: tuple[int, int] = (8, 16)) -> float:
    """Largest change of the logits (training mode) when the same batch is padded to ``totals[1]`` not ``totals[0]``.

    ``x``: (N, 64) digits; ``lengths``: N ints in 1..8. Zero means the padding cannot reach the
    real tokens. The model's mode and buffers are restored.
    """
    from ..nn.utils import run_in_mode

    with run_in_mode(model, train_mode=True):
        a = model(pad_rows(x, lengths, totals[0]))
        b = model(pad_rows(x, lengths, totals[1]))
    return (a - b).abs().max().item()


@torch.no_grad()
def first_norm_statistics(model: RowTransformer, x: Tensor) -> dict[str, Tensor]:
    """The first block's first norm layer: its running statistics vs those of its input on ``x``.

    ``x``: (N, T, 9) padded sequences. Returns per-feature (D,) tensors ``running_mean``,
    ``running_var`` (BN kinds only, else absent) and the mean/variance of that layer's input
    over the real tokens (``real_mean``, ``real_var``) and over all tokens, padding included
    (``all_mean``, ``all_var``), measured in eval mode.
    """
    from ..nn.utils import run_in_mode

    norm = model.blocks[0].norm1
    seen = {}
    hook = norm.register_forward_hook(lambda m, args, out: seen.update(h=args[0], mask=args[1]))
    try:
        with run_in_mode(model, train_mode=False, restore_buffers=False):
            model(x)
    finally:
        hook.remove()
    h, mask = seen["h"], seen["mask"]
    real, every = h[mask], h.reshape(-1, h.shape[-1])
    out = {"real_mean": real.mean(0), "real_var": real.var(0, unbiased=False),
           "all_mean": every.mean(0), "all_var": every.var(0, unbiased=False)}
    if hasattr(norm.norm, "running_mean"):
        out.update(running_mean=norm.norm.running_mean.clone(), running_var=norm.norm.running_var.clone())
    return out
