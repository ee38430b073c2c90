"""bncourse.lab.across_devices and the byte counts of bncourse.lab.distributed (single process, fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bncourse.lab import across_devices as A
from bncourse.lab.data import load_digits_split
from bncourse.lab.distributed import global_batches, gradient_bytes_per_step, sync_bn_bytes_per_step
from bncourse.nn import BatchRenorm1d, GhostBatchNorm1d, GhostBatchNorm2d, GroupNorm, SyncBatchNorm


@pytest.fixture(scope="module")
def data():
    return load_digits_split()


def test_build_model_swaps_only_the_normalization():
    bn = A.build_model("bn", 3)
    ghost = A.build_model("ghost", 3, ghost=4)
    renorm = A.build_model("renorm", 3, steps=100)
    assert isinstance(ghost.norm1, GhostBatchNorm1d) and ghost.norm1.virtual_batch_size == 4
    assert isinstance(renorm.norm2, BatchRenorm1d) and renorm.norm2.limits() == (1.0, 0.0)
    assert isinstance(A.build_model("gn", 3).norm3, GroupNorm)
    assert torch.equal(bn.fc1.weight, ghost.fc1.weight) and torch.equal(bn.out.weight, renorm.out.weight)
    assert isinstance(A.build_model("ghost", 0, arch="cnn", ghost=2).norm1, GhostBatchNorm2d)
    with pytest.raises(ValueError, match="expected kind"):
        A.build_model("ln", 0)


def test_accumulation_is_ghost_batch_norm_not_the_large_batch(data):
    out = A.accumulation_gradients(data, micro_batch=8, k=4, seed=1)
    assert out["rel_accumulated_vs_ghost"] < 1e-5
    assert out["rel_accumulated_vs_large"] > 0.05
    assert out["num_batches_tracked"] == (4, 1)


def test_ghost_sweep_shapes_and_group_norm_has_no_gap(data):
    out = A.ghost_sweep(data, 16, [4, None], [0], steps=3, extra=("gn",))
    assert set(out) == {"ghost 4", "bn", "gn"}
    assert all(v.shape == (1,) for d in out.values() for v in d.values())
    assert out["gn"]["train_eval_gap"][0] == 0


def test_float16_sums():
    s = A.float16_sums([1000, 20000, 70000], mean=1.0)
    assert np.all(np.abs(s["float32 accumulator"] / s["exact"] - 1) < 1e-6)
    assert np.isfinite(s["float16 result"][:2]).all() and np.isinf(s["float16 result"][2])
    assert s["float16 accumulator"][2] <= 4096 < s["exact"][2] / 10


def test_global_batches_match_the_training_loop():
    batches = global_batches(10, 4, 5, seed=0)
    gen = torch.Generator().manual_seed(0)
    first, second = torch.randperm(10, generator=gen), torch.randperm(10, generator=gen)
    assert [b.tolist() for b in batches] == [first[:4].tolist(), first[4:8].tolist(), second[:4].tolist(),
                                              second[4:8].tolist(), torch.randperm(10, generator=gen)[:4].tolist()]


def test_bytes_per_step():
    model = SyncBatchNorm.convert_sync_batchnorm(A.build_model("bn", 0))
    assert gradient_bytes_per_step(model) == 4 * sum(p.numel() for p in model.parameters())
    assert sync_bn_bytes_per_step(model) == 3 * ((2 * 100 + 2) * 8 + 2 * 100 * 4)
    assert sync_bn_bytes_per_step(A.build_model("bn", 0)) == 0
