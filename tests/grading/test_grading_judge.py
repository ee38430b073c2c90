"""Output files from the sandbox are read defensively and judged with clear messages."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from bncourse.grading.judge import JudgeError, judge_value, load_output, parse_npy
from bncourse.grading.spec import expect, expect_labels


def _npy(array, allow_pickle=False):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def test_plain_arrays_round_trip():
    for a in (np.arange(6.0).reshape(2, 3), np.float32(3.5), np.asfortranarray(np.ones((3, 2))),
              np.array([1, 2], dtype=np.int64)):
        b = parse_npy(_npy(a))
        assert b.dtype == np.asarray(a).dtype and np.array_equal(b, a)


@pytest.mark.parametrize("data, message", [
    (_npy(np.array([{"a": 1}], dtype=object), allow_pickle=True), "plain numbers"),
    (_npy(np.array(["text"])), "plain numbers"),
    (_npy(np.zeros(3, dtype=[("a", "f8")])), "plain numbers"),
    (_npy(np.zeros(10))[:-8], "truncated"),
    (b"not an npy file at all", "not a valid .npy"),
])
def test_anything_but_plain_numbers_is_refused(data, message):
    with pytest.raises(JudgeError, match=message):
        parse_npy(data)


def test_a_header_promising_a_huge_array_allocates_nothing():
    header = _npy(np.zeros(1))
    lying = header.replace(b"(1,)", b"(10000000000000,)")
    with pytest.raises(JudgeError, match="truncated"):
        parse_npy(lying)


def test_symlinks_and_fifos_are_not_followed(tmp_path):
    secret = tmp_path / "secret.npy"
    np.save(secret, np.ones(3))
    (tmp_path / "link.npy").symlink_to(secret)
    with pytest.raises(JudgeError, match="could not be opened safely"):
        load_output(tmp_path, "link.npy")
    os.mkfifo(tmp_path / "fifo.npy")
    with pytest.raises(JudgeError, match="not a regular file"):
        load_output(tmp_path, "fifo.npy")
    assert load_output(tmp_path, "missing.npy") is None
    assert np.array_equal(load_output(tmp_path, "secret.npy"), np.ones(3))


def test_judge_messages():
    want = expect(np.array([1.0, 2.0], dtype=np.float32).astype(np.float64), dtype=np.float32)
    assert judge_value(np.array([1.0, 2.0], np.float32), want, "out") == (True, "out: correct")
    ok, msg = judge_value(np.array([1.0, 2.0]), want, "out")
    assert not ok and "dtype float64, expected float32" in msg
    ok, msg = judge_value(np.array([[1.0, 2.0]], np.float32), want, "out")
    assert not ok and "shape (1, 2), expected (2,)" in msg
    ok, msg = judge_value(np.array([1.0, np.nan], np.float32), want, "out")
    assert not ok and "NaN" in msg
    ok, msg = judge_value(np.array([1.0, 2.1], np.float32), want, "out")
    assert not ok and "1 of 2 values wrong" in msg and "2.0" not in msg  # no expected values leak
    exact = expect(np.int64(3), dtype=None, exact=True)
    assert judge_value(np.array(3), exact, "n")[0] and not judge_value(np.array(4), exact, "n")[0]


def test_labels_are_judged_by_accuracy_on_the_scored_rows():
    want = expect_labels(np.array([0, 1, 2, 3, -1, -1, 4, 5, 6, 7]), at_least=0.75)  # 8 scored rows
    ok, msg = judge_value(np.array([0, 1, 2, 3, 9, 9, 4, 5, 0, 0]), want, "labels")  # 6 of 8 right
    assert ok and "0.750" in msg
    ok, msg = judge_value(np.array([0, 1, 2, 0, 9, 9, 4, 5, 0, 0]), want, "labels")  # 5 of 8
    assert not ok and msg == "labels: accuracy 0.625 on 8 examples, at least 0.750 needed"
    ok, msg = judge_value(np.array([0.0, 1.0, np.nan, 3, 0, 0, 4, 5, 6, 7]), want, "labels")
    assert not ok and "NaN" in msg
    ok, msg = judge_value(np.arange(9), want, "labels")
    assert not ok and "shape (9,)" in msg
    with pytest.raises(ValueError, match="labels"):
        expect_labels(np.array([0.5, 1.0]), 0.9)
