"""bncourse.lab.transformer: shapes, padding, masks and which normalizers see the padding."""

import pytest
import torch

from bncourse import nn as bnn
from bncourse.lab.transformer import RowTransformer, SeqNorm, pad_rows, rows


def test_pad_rows_keeps_rows_and_flags_them():
    x = torch.arange(2 * 64, dtype=torch.float32).view(2, 64) + 1
    p = pad_rows(x, [3, 8], 10)
    assert p.shape == (2, 10, 9)
    assert torch.equal(p[0, :3, :8], x[0].view(8, 8)[:3]) and torch.count_nonzero(p[0, 3:]) == 0
    assert p[0, :, 8].tolist() == [1] * 3 + [0] * 7 and p[1, :, 8].tolist() == [1] * 8 + [0] * 2
    assert torch.equal(rows(x)[..., :8], x.view(2, 8, 8))
    with pytest.raises(ValueError, match="lengths"):
        pad_rows(x, [0, 3], 8)


@pytest.mark.parametrize("norm", ["ln", "rms", "bn", "bn_masked"])
@pytest.mark.parametrize("placement", ["pre", "post"])
def test_model_runs_on_flat_and_padded_input(norm, placement):
    model = RowTransformer(norm, placement, dim=16, seed=0)
    x = torch.randn(6, 64)
    assert model(x).shape == (6, 10)
    out = model(pad_rows(x, [8, 5, 4, 8, 6, 7], 12))
    assert out.shape == (6, 10) and torch.isfinite(out).all()
    out.sum().backward()


def test_flat_input_equals_unpadded_rows():
    model = RowTransformer("ln", dim=16, seed=1)
    x = torch.randn(5, 64)
    torch.testing.assert_close(model(x), model(rows(x)))


@pytest.mark.parametrize("norm, invariant", [("ln", True), ("rms", True), ("bn_masked", True), ("bn", False)])
def test_only_unmasked_bn_lets_padding_change_real_outputs(norm, invariant):
    model = RowTransformer(norm, dim=16, seed=2)
    model.train()
    x, lengths = torch.randn(8, 64), torch.tensor([8, 5, 4, 8, 6, 7, 3, 8])
    short, long = model(pad_rows(x, lengths, 8)), model(pad_rows(x, lengths, 16))
    assert torch.allclose(short, long, atol=1e-5) == invariant


def test_seqnorm_layers_come_from_bncourse():
    assert isinstance(SeqNorm("rms", 4).norm, bnn.RMSNorm)
    assert isinstance(SeqNorm("bn_masked", 4).norm, bnn.BatchNorm1d)
    with pytest.raises(ValueError, match="norm kind"):
        SeqNorm("in", 4)


def test_padded_digits_and_measurements():
    from bncourse.lab.data import load_digits_split
    from bncourse.lab.transformer import first_norm_statistics, padded_digits, padding_sensitivity

    data = padded_digits(load_digits_split(), min_len=3, total=12, seed=0)
    assert data.x_train.shape[1:] == (12, 9)
    lengths = data.x_train[..., 8].sum(1)
    assert lengths.min() >= 3 and lengths.max() <= 8
    x, lens = load_digits_split().x_train[:16], torch.randint(3, 9, (16,))
    assert padding_sensitivity(RowTransformer("ln", dim=16), x, lens) < 1e-5
    assert padding_sensitivity(RowTransformer("bn", dim=16), x, lens) > 1e-3
    stats = first_norm_statistics(RowTransformer("bn", dim=16), data.x_train[:64])
    assert set(stats) == {"real_mean", "real_var", "all_mean", "all_var", "running_mean", "running_var"}
    assert "running_mean" not in first_norm_statistics(RowTransformer("rms", dim=16), data.x_train[:64])
