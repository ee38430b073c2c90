"""The interpreter environment student code runs in: a real interpreter and only the allowed packages.

Student code never runs in the grader's environment. It gets the base interpreter
(its real path: a venv's launcher is not the interpreter on Python 3.10, and bubblewrap
would not find what it points to) started with ``-I -S -B``, and a ``sys.path`` of the
standard library plus the directories of the allowed packages (NumPy by default) --
never ``bncourse``, the grader's venv or the repository. An instructor can name a
dedicated environment (``BNCOURSE_STUDENT_PYTHON``: a venv made with only NumPy; the
Gradescope bundle builds one); otherwise the grader's own interpreter is used, or, when
the grader is root and user ``nobody`` cannot run it, a system Python of the same version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["StudentPython", "student_python", "package_dirs", "site_dirs_to_hide", "STUDENT_PYTHON_ENV"]

STUDENT_PYTHON_ENV = "BNCOURSE_STUDENT_PYTHON"
# Top-level names in a student environment's site-packages that are tooling, not packages to offer.
_NOT_PACKAGES = {"pip", "setuptools", "pkg_resources", "_distutils_hack", "wheel", "__pycache__"}
_PROBE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


@dataclass(frozen=True)
class StudentPython:
    """The interpreter environment student code runs in.

    Attributes:
        python: the real interpreter binary (never a venv launcher), run with ``-I -S -B``.
        stdlib: its ``sys.path`` under ``-I -S`` (standard library and ``lib-dynload``).
        packages: the directories of the allowed packages (e.g. ``numpy``, ``numpy.libs``),
            offered to student code as one directory of links (``pylib``).
        prefixes: directories bubblewrap must mount for the interpreter to start.
        origin: where it came from, for the instructor.
    """

    python: str
    stdlib: tuple[str, ...]
    packages: tuple[Path, ...]
    prefixes: tuple[Path, ...]
    origin: str


_INFO = ("import json, os, sys\n"
         "v = sys.version_info\n"
         "base = os.path.join(sys.base_exec_prefix, 'bin', 'python%d.%d' % (v[0], v[1]))\n"
         "real = os.path.realpath(base if os.path.exists(base) else sys.executable)\n"
         "print(json.dumps({'real': real, 'version': [v[0], v[1]], 'path': sys.path,\n"
         "                  'prefixes': sorted({os.path.realpath(sys.base_prefix),\n"
         "                                      os.path.realpath(sys.base_exec_prefix)})}))\n")


def _run_as_kwargs(run_as: tuple[int, int] | None) -> dict[str, Any]:
    return {} if run_as is None else {"user": run_as[0], "group": run_as[1], "extra_groups": []}


def _interpreter_info(python: str, run_as: tuple[int, int] | None, isolated_site: bool) -> dict | None:
    """What ``python`` reports about itself when started as ``run_as``; ``None`` if it cannot start."""
    flags = ["-I"] if isolated_site else ["-I", "-S"]
    try:
        done = subprocess.run([python, *flags, "-c", _INFO], capture_output=True, timeout=30, cwd="/",
                              env=dict(_PROBE_ENV), **_run_as_kwargs(run_as))
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    try:
        return json.loads(done.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def package_dirs(names: tuple[str, ...]) -> list[Path]:
    """What student code needs to import ``names`` from the grader's environment: each distribution's
    top-level packages and bundled libraries (``numpy``, ``numpy.libs``), and those of its required
    (non-extra) dependencies, e.g. ``typing_extensions`` or ``sympy`` for ``torch``.
    """
    import importlib.metadata as metadata
    import importlib.util
    import re

    found: dict[str, Path] = {}
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            dist = None
        files = (dist.files or []) if dist is not None else []
        tops = {f.parts[0] for f in files if f.parts}
        tops = {t for t in tops if t not in ("..", "__pycache__", "bin") and t not in _NOT_PACKAGES
                and not t.endswith((".dist-info", ".egg-info", ".pth", ".data"))}
        for top in sorted(tops):
            path = Path(dist.locate_file(top)).resolve()
            if path.exists():
                found[str(path)] = path
        if not tops:  # no RECORD (e.g. a distribution's own package): find the import package itself
            spec = importlib.util.find_spec(name) if name in names else None
            if spec is None or not spec.submodule_search_locations:
                if name in names:
                    raise ValueError(f"expected the package {name!r} in the grader's environment to offer "
                                     "it to student code, but it is not installed")
                continue
            root = Path(next(iter(spec.submodule_search_locations))).resolve()
            for path in (root, root.with_name(f"{name}.libs")):
                if path.exists():
                    found[str(path)] = path
        for requirement in (dist.requires or []) if dist is not None else []:
            if ";" in requirement and "extra" in requirement.split(";", 1)[1]:
                continue
            match = re.match(r"[A-Za-z0-9._-]+", requirement)
            if match:
                todo.append(match.group(0))
    return sorted(found.values())


def _prefix_dirs(info: dict) -> list[Path]:
    """What bubblewrap must mount for this interpreter: its prefixes outside ``/usr``, or its own dir."""
    real = info["real"]
    binds = [Path(p) for p in info["prefixes"] if not (p == "/usr" or p.startswith("/usr/"))]
    if not any(real.startswith(str(p) + os.sep) for p in binds) and not real.startswith("/usr/"):
        binds.append(Path(real).parent)
    return binds


def student_python(python: str | None = None, run_as: tuple[int, int] | None = None,
                   packages: tuple[str, ...] = ("numpy",), for_bwrap: bool = False) -> StudentPython:
    """Find the interpreter environment for student code.

    ``python`` (or ``$BNCOURSE_STUDENT_PYTHON``): a dedicated environment, e.g. a venv made
    with only NumPy; its ``site-packages`` entries are what students get (``ValueError`` if
    ``bncourse`` is among them). Otherwise the grader's own base interpreter (real path)
    with ``packages`` from the grader's environment; in process mode as root, where user
    ``run_as`` cannot run that interpreter (e.g. pyenv under ``/root``), the system's
    ``/usr/bin/pythonX.Y`` or ``/usr/local/bin/pythonX.Y`` of the same version.
    """
    python = python or os.environ.get(STUDENT_PYTHON_ENV) or None
    probe_as = None if for_bwrap else run_as
    if python:
        info = _interpreter_info(python, probe_as, isolated_site=True)
        if info is None:
            who = f"uid {run_as[0]}" if probe_as else "the grader"
            raise ValueError(f"expected a student Python that {who} can run, got {python!r}, which does not start")
        site = [Path(p) for p in info["path"] if Path(p).name in ("site-packages", "dist-packages")]
        found = sorted({entry for d in site if d.is_dir() for entry in d.iterdir()
                        if entry.is_dir() and entry.name not in _NOT_PACKAGES
                        and not entry.name.endswith((".dist-info", ".egg-info"))})
        if any(entry.name == "bncourse" for entry in found):
            raise ValueError(f"expected a student environment without bncourse, but {python} can import it; "
                             "create a separate venv with only NumPy for students")
        bare = _interpreter_info(info["real"], probe_as, isolated_site=False) or info
        return StudentPython(info["real"], tuple(bare["path"]), tuple(p.resolve() for p in found),
                             tuple(_prefix_dirs(info)), f"{python} ({STUDENT_PYTHON_ENV})")
    dirs = tuple(package_dirs(packages))
    version = sys.version_info[:2]
    base = Path(sys.base_exec_prefix) / "bin" / f"python{version[0]}.{version[1]}"
    own = str(base.resolve() if base.exists() else Path(sys.executable).resolve())
    candidates = [own] if for_bwrap else [own, *(f"{d}/python{version[0]}.{version[1]}"
                                                  for d in ("/usr/bin", "/usr/local/bin"))]
    tried = []
    for candidate in dict.fromkeys(candidates):
        info = _interpreter_info(candidate, probe_as, isolated_site=False)
        if info is not None and info["version"] == list(version):
            origin = "the grader's base interpreter" if candidate == own else f"{candidate} (same version)"
            return StudentPython(info["real"], tuple(info["path"]), dirs, tuple(_prefix_dirs(info)), origin)
        tried.append(candidate)
    who = f"user {run_as[0]}" if probe_as else "the grader"
    raise ValueError(
        f"expected a Python {version[0]}.{version[1]} that {who} can run for student code (student code never "
        f"runs as root), tried {', '.join(tried)}. Create a student environment readable by everyone, e.g. "
        f"`python3 -m venv /opt/bncourse-student && /opt/bncourse-student/bin/pip install numpy`, and set "
        f"{STUDENT_PYTHON_ENV}=/opt/bncourse-student/bin/python")


def site_dirs_to_hide(prefixes: list[Path]) -> list[Path]:
    """Site-packages visible through a read-only bind (``/usr/...`` or a prefix): hidden behind a tmpfs."""
    found = set()
    for root in [Path("/usr"), *prefixes]:
        for pattern in ("lib/python3*/site-packages", "lib/python3*/dist-packages", "lib/python3/dist-packages",
                        "local/lib/python3*/site-packages", "local/lib/python3*/dist-packages"):
            found.update(p.resolve() for p in root.glob(pattern) if p.is_dir())
    return sorted(found)
