"""bncourse.nn.ResidualBlock and bncourse.lab.resnet: block forms, zero-init gamma, SkipInit."""

import pytest
import torch
from torch import nn

from bncourse import nn as bnn
from bncourse.lab.resnet import residual_blocks, residual_mlp, small_resnet


def test_block_adds_branch_then_activation():
    branch = nn.Linear(4, 4)
    x = torch.randn(3, 4)
    post = bnn.ResidualBlock(branch, nn.ReLU())
    pre = bnn.ResidualBlock(branch)
    assert torch.allclose(post(x), torch.relu(x + branch(x)))
    assert torch.allclose(pre(x), x + branch(x))


def test_gain_is_a_learned_scalar_and_zero_gives_identity():
    block = bnn.ResidualBlock(nn.Linear(4, 4), gain=0.0)
    x = torch.randn(3, 4)
    assert torch.equal(block(x), x)
    block(x).sum().backward()
    assert block.gain.grad is not None and block.gain.grad.abs() > 0
    assert "gain" in dict(block.named_parameters())


def test_block_rejects_a_branch_that_changes_shape():
    with pytest.raises(ValueError, match="keep the shape"):
        bnn.ResidualBlock(nn.Linear(4, 5))(torch.randn(2, 4))


@pytest.mark.parametrize("block", ["post", "pre"])
def test_residual_mlp_shapes_and_layer_count(block):
    model = residual_mlp(4, width=16, block=block, seed=0)
    assert model(torch.randn(5, 64)).shape == (5, 10)
    assert len(residual_blocks(model)) == 4
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 * 4 + 2
    norms = [m for m in model.modules() if isinstance(m, bnn.BatchNorm1d)]
    assert len(norms) == 2 * 4 + 1 + (block == "pre")


def test_zero_init_gamma_makes_every_post_block_the_identity_at_init():
    model = residual_mlp(3, width=16, zero_init_gamma=True, seed=0)
    h = torch.relu(torch.randn(6, 16))  # block inputs are ReLU outputs, >= 0
    for blk in residual_blocks(model):
        assert torch.count_nonzero(blk.branch.norm2.weight) == 0
        assert torch.equal(blk(h), h)
    with pytest.raises(ValueError, match="post-activation"):
        residual_mlp(2, block="pre", zero_init_gamma=True)


@pytest.mark.parametrize("norm", ["bn", "gn", None])
@pytest.mark.parametrize("block", ["post", "pre"])
def test_small_resnet_runs_for_every_normalizer(norm, block):
    model = small_resnet(2, channels=8, norm=norm, block=block, skipinit=norm is None, ws=norm == "gn", seed=1)
    out = model(torch.randn(4, 1, 8, 8))
    assert out.shape == (4, 10)
    out.sum().backward()
    kinds = {type(m).__name__ for m in model.modules()}
    assert ("BatchNorm2d" in kinds) == (norm == "bn") and ("GroupNorm" in kinds) == (norm == "gn")
    assert ("WSConv2d" in kinds) == (norm == "gn")


def test_builders_are_seeded():
    a, b = small_resnet(seed=2), small_resnet(seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="block"):
        residual_mlp(2, block="middle")


def test_block_output_std_grows_without_normalization_only():
    from bncourse.lab.resnet import block_output_std

    x = torch.randn(16, 1, 8, 8)
    plain = block_output_std(small_resnet(8, norm=None, seed=0), x)
    skip = block_output_std(small_resnet(8, norm=None, skipinit=True, seed=0), x)
    assert len(plain) == 8 and plain[-1] > 4 * plain[0]
    assert max(skip) == pytest.approx(min(skip))  # every block is the identity at init
