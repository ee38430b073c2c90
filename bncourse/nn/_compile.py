"""Compile ``_kernels.c`` at the first fused call and load it with ctypes.

The library is linked against the OpenMP runtime that torch itself loaded
(found in ``/proc/self/maps``), so the kernels' parallel loops run on torch's
intra-op threads. With a pool of its own (a Python thread pool, Numba's),
each kernel would wait for torch's threads, which spin for a while after
every operator, to give the cores back: on this course's 2-core machine that
made an evaluation forward twice as slow right after a torch operator.

The build takes about a second with gcc and is cached under
``$BNCOURSE_KERNEL_CACHE`` (default ``~/.cache/bncourse/kernels``), keyed by
the source, the compiler, the OpenMP library and the CPU. Where any of it is
missing (no C compiler, as on most Windows and macOS laptops; a torch without
OpenMP; not Linux), :func:`load` returns None and ``bncourse.nn.fused`` runs
the plain path, with a warning saying why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("_kernels.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-std=c11"]
if platform.machine().lower() in ("x86_64", "amd64"):
    # Where AVX-512 exists, full 64-byte stores write whole cache lines (a few % on the outputs here);
    # gcc for other architectures does not know the option.
    FLAGS.insert(2, "-mprefer-vector-width=512")
_INT64, _DOUBLE, _INT, _PTR = ctypes.c_int64, ctypes.c_double, ctypes.c_int, ctypes.c_void_p
SIGNATURES = {  # argument types of each kernel (pointers are data_ptr() of contiguous tensors)
    "forward_planes": [_PTR, _PTR, _INT64, _INT64, _INT64, _PTR, _PTR, _DOUBLE, _PTR, _PTR, _PTR, _PTR, _PTR, _DOUBLE, _INT],
    "backward_planes": [_PTR, _PTR, _PTR, _INT64, _INT64, _INT64, _PTR, _PTR, _PTR, _INT, _PTR, _PTR, _INT],
    "forward_rows": [_PTR, _PTR, _INT64, _INT64, _PTR, _PTR, _DOUBLE, _PTR, _PTR, _PTR, _PTR, _PTR, _DOUBLE, _INT64, _INT],
    "backward_rows": [_PTR, _PTR, _PTR, _INT64, _INT64, _PTR, _PTR, _PTR, _INT, _PTR, _PTR, _INT64, _INT],
    "affine": [_PTR, _PTR, _INT64, _INT64, _INT64, _PTR, _PTR, _INT],
    "evaluate": [_PTR, _PTR, _INT64, _INT64, _INT64, _PTR, _PTR, _PTR, _PTR, _DOUBLE, _INT],
}


class Unavailable(RuntimeError):
    """Why the kernels cannot be built or loaded here."""


def _torch_openmp_library() -> str:
    """Path of the OpenMP runtime loaded in this process by torch."""
    import torch  # noqa: F401  (loads its OpenMP runtime)

    if not sys.platform.startswith("linux"):
        raise Unavailable(f"the C kernels are built on Linux only (this is {sys.platform})")
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError as error:
        raise Unavailable(f"cannot read /proc/self/maps ({error})") from None
    for line in maps.splitlines():
        path = line.split()[-1]
        if os.path.basename(path).startswith(("libgomp", "libiomp5", "libomp")):
            return path
    raise Unavailable("torch loaded no OpenMP runtime to share")


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def _cache_dir() -> Path:
    root = os.environ.get("BNCOURSE_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bncourse", "kernels"
    )
    return Path(root)


def _compiler() -> str:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise Unavailable("no C compiler (cc or gcc) on PATH")
    return compiler


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise Unavailable(f"{command[0]} failed: {error}") from None
    if done.returncode != 0:
        raise Unavailable(f"{' '.join(command[:2])} ... exited {done.returncode}: {done.stderr[-800:]}")
    return done.stdout


def build() -> Path:
    """The path of the compiled library, building it if the cache has none. Raises :class:`Unavailable`."""
    compiler, openmp = _compiler(), _torch_openmp_library()
    version = _run([compiler, "--version"])
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), compiler, version, " ".join(FLAGS), openmp, _cpu_signature()]).encode()
    ).hexdigest()[:20]
    target = _cache_dir() / f"bn_kernels_{key}.so"
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="build-", dir=target.parent))
    except OSError as error:
        raise Unavailable(f"cannot write the kernel cache {target.parent} ({error})") from None
    try:
        objects = []
        for scalar, suffix in (("float", "f32"), ("double", "f64")):
            obj = work / f"{suffix}.o"
            _run([compiler, *FLAGS, f"-Dscalar={scalar}", f"-DFN(name)=name##_{suffix}", "-c", str(SOURCE), "-o", str(obj)])
            objects.append(str(obj))
        # Linked to torch's own OpenMP file: its soname is already loaded, so it is shared, not loaded twice.
        library = work / "kernels.so"
        _run([compiler, "-shared", *objects, openmp, f"-Wl,-rpath,{os.path.dirname(openmp)}", "-lm", "-o", str(library)])
        os.replace(library, target)  # atomic: a concurrent build of the same key writes the same file
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


_library: ctypes.CDLL | None | bool = None  # False once it failed


def load() -> ctypes.CDLL | None:
    """The kernels (built at the first call), or None with a warning saying why they cannot run here."""
    global _library
    if _library is None:
        if os.environ.get("BNCOURSE_KERNELS", "1") == "0":
            _library = False
            return None
        try:
            library = ctypes.CDLL(str(build()))
            for name, argtypes in SIGNATURES.items():
                for suffix in ("f32", "f64"):
                    function = getattr(library, f"{name}_{suffix}")
                    function.argtypes, function.restype = argtypes, None
        except (Unavailable, OSError, AttributeError) as error:
            warnings.warn(f"bncourse.nn.fused runs the plain path: {error}", RuntimeWarning, stacklevel=3)
            _library = False
        else:
            _library = library
    return _library or None
