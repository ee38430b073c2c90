"""Judging what came back from the sandbox, in the trusted process.

Output files are read defensively: never through a symlink, only regular files,
size-capped, and parsed as ``.npy`` with a plain numeric dtype whose header
promises exactly the bytes present -- before any array is allocated. Nothing
from the sandbox is ever unpickled or executed.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np

from .spec import Expect

__all__ = ["JudgeError", "load_output", "judge_value", "MAX_OUTPUT_BYTES"]

MAX_OUTPUT_BYTES = 64 << 20


class JudgeError(ValueError):
    """An output file that cannot be accepted as an answer (the message is for the student)."""


def _open_no_follow(directory: Path, name: str) -> int:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    dir_flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
    dir_fd = os.open(directory, dir_flags)
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def load_output(directory: Path, name: str, max_bytes: int = MAX_OUTPUT_BYTES) -> np.ndarray | None:
    """The array in ``directory/name``, or ``None`` if there is no such file.

    Raises :class:`JudgeError` for anything that is not a plain numeric ``.npy``
    file (a symlink, a FIFO, a pickle, a lying header, a file too large).
    """
    try:
        fd = _open_no_follow(directory, name)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise JudgeError(f"the output file {name} could not be opened safely ({err.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise JudgeError(f"the output file {name} is not a regular file")
        if info.st_size > max_bytes:
            raise JudgeError(f"the output {name} is {info.st_size} bytes, more than the {max_bytes} allowed")
        chunks, remaining = [], info.st_size + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise JudgeError(f"the output {name} is larger than the {max_bytes} bytes allowed")
    return parse_npy(data, name)


def parse_npy(data: bytes, name: str = "output") -> np.ndarray:
    """Parse ``.npy`` bytes holding a numeric array; :class:`JudgeError` for anything else."""
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, SyntaxError, TypeError, OverflowError, RecursionError) as err:
        raise JudgeError(f"the output {name} is not a valid .npy array ({str(err)[:100]})") from None
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise JudgeError(f"the output {name} has dtype {dtype}; expected plain numbers")
    count = 1
    for dim in shape:
        if not isinstance(dim, int) or dim < 0:
            raise JudgeError(f"the output {name} has an invalid shape {shape}")
        count *= dim
    body = data[fp.tell():]
    if count * dtype.itemsize != len(body):
        raise JudgeError(f"the output {name} is truncated or padded (header says {shape} {dtype})")
    array = np.frombuffer(body, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran else "C").copy()


def _describe(a: np.ndarray) -> str:
    return f"shape {a.shape}, dtype {a.dtype}"


def judge_value(got: np.ndarray, want: Expect, name: str) -> tuple[bool, str]:
    """Compare one answer with its expectation; returns ``(passed, message)``.

    Order of checks: dtype (when ``want.dtype`` is set), shape, NaN/inf where
    the reference is finite, then values within ``atol + rtol * |expected|``.
    Messages say what is wrong without revealing the expected values.
    """
    if want.min_agreement is not None:
        return _judge_labels(got, want, name)
    if want.dtype is not None and got.dtype != want.dtype:
        return False, (f"{name}: dtype {got.dtype}, expected {want.dtype} (keep the input's dtype)")
    if want.exact:
        if got.shape != want.value.shape:
            return False, f"{name}: shape {got.shape}, expected {want.value.shape}"
        if not np.array_equal(got, want.value):
            return False, f"{name}: wrong value"
        return True, f"{name}: correct"
    if got.shape != want.value.shape:
        return False, f"{name}: shape {got.shape}, expected {want.value.shape}"
    got64 = got.astype(np.float64)
    exp64 = want.value.astype(np.float64)
    finite = np.isfinite(exp64)
    bad = finite & ~np.isfinite(got64)
    if bad.any():
        return False, f"{name}: contains NaN or infinity ({int(bad.sum())} of {got.size} values)"
    if (~finite).any() and not np.array_equal(np.isnan(got64), np.isnan(exp64)):
        return False, f"{name}: wrong NaN pattern"
    err = np.abs(got64 - exp64)
    allowed = want.atol + want.rtol * np.abs(exp64)
    wrong = finite & (err > allowed)
    if wrong.any():
        worst = np.unravel_index(np.argmax(np.where(finite, err - allowed, -np.inf)), err.shape)
        return False, (f"{name}: {int(wrong.sum())} of {got.size} values wrong; largest error "
                       f"{float(err[worst]):.2e} at index {tuple(int(i) for i in worst)} "
                       f"(tolerance {want.atol:.0e} + {want.rtol:.0e} x |expected|)")
    return True, f"{name}: correct"


def _judge_labels(got: np.ndarray, want: Expect, name: str) -> tuple[bool, str]:
    """Predicted labels: the share of scored entries equal to the expected ones, against a threshold."""
    if got.shape != want.value.shape:
        return False, f"{name}: shape {got.shape}, expected {want.value.shape} (one label per input row)"
    if got.dtype.kind == "f" and not np.all(np.isfinite(got)):
        return False, f"{name}: contains NaN or infinity; expected integer class labels"
    scored = want.value >= 0
    agreement = float(np.mean(got[scored] == want.value[scored]))
    needed = want.min_agreement
    if agreement + 1e-12 < needed:
        return False, (f"{name}: accuracy {agreement:.3f} on {int(scored.sum())} examples, "
                       f"at least {needed:.3f} needed")
    return True, f"{name}: accuracy {agreement:.3f} (at least {needed:.3f} needed)"
