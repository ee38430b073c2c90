#!/usr/bin/env python3
"""The course's two entry points; each sets up `.venv/` itself first.

    python3 tasks.py book   # build the whole book, executing every notebook, into _build/html/
    python3 tasks.py test   # unit tests + nbval over every notebook

Needs only Python 3.11 and pip. The virtual environment is (re)installed when
requirements.txt or pyproject.toml change; otherwise set-up takes a second.
Extra arguments after `test` go to pytest (e.g. `python3 tasks.py test -k layers`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".bncourse-installed"
INSTALL_INPUTS = ["requirements.txt", "pyproject.toml"]


def _digest() -> str:
    h = hashlib.sha256()
    for name in INSTALL_INPUTS:
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=_env(), check=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV)
    env.setdefault("KERAS_BACKEND", "torch")
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # silence a debugger warning in kernels
    return env


def ensure_venv() -> None:
    if sys.version_info < (3, 10):
        sys.exit(f"Python 3.10+ is needed (3.11 recommended), this is {sys.version.split()[0]}")
    python = BIN / "python"
    if not python.exists():
        print(f"Creating the virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = _digest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    started = time.monotonic()
    _run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    _run([str(python), "-m", "pip", "install", "--quiet", "-r", "requirements.txt", "-e", "."])
    STAMP.write_text(digest)
    print(f"Installed in {time.monotonic() - started:.0f} s", flush=True)


JUPYTER_CACHE = ROOT / "_build" / ".jupyter_cache"
CACHE_STAMP = JUPYTER_CACHE / "bncourse-inputs.sha256"


def book_inputs_digest() -> str:
    """Digest of what a chapter's execution depends on besides its own code: the package and the pins."""
    h = hashlib.sha256()
    files = sorted((ROOT / "bncourse").rglob("*.py")) + [ROOT / name for name in INSTALL_INPUTS]
    for path in files:
        h.update(path.relative_to(ROOT).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _fresh_execution_cache() -> None:
    # jupyter-cache keys a notebook by its own code only; a chapter must run again when the code it
    # calls changes, so the cache is emptied whenever the package or the pins differ from its stamp.
    # book/conftest.py relies on this: nbval skips a chapter only when its cached run is current.
    digest = book_inputs_digest()
    if CACHE_STAMP.is_file() and CACHE_STAMP.read_text() == digest:
        return
    if JUPYTER_CACHE.exists():
        print("The package or the requirements changed: executing every chapter again", flush=True)
        shutil.rmtree(JUPYTER_CACHE)
    JUPYTER_CACHE.mkdir(parents=True)
    CACHE_STAMP.write_text(digest)


def book(args: list[str]) -> int:
    started = time.monotonic()
    _fresh_execution_cache()
    cmd = [str(BIN / "jupyter-book"), "build", ".", "-W", "-n", "--keep-going", *args]
    print("+", " ".join(cmd), flush=True)
    code = subprocess.run(cmd, cwd=ROOT, env=_env()).returncode
    print(f"Book build finished in {time.monotonic() - started:.0f} s (exit {code})", flush=True)
    return code


def test(args: list[str]) -> int:
    started = time.monotonic()
    cmd = [str(BIN / "python"), "-m", "pytest", "--nbval-lax", *args]
    print("+", " ".join(cmd), flush=True)
    code = subprocess.run(cmd, cwd=ROOT, env=_env()).returncode
    print(f"Test suite finished in {time.monotonic() - started:.0f} s (exit {code})", flush=True)
    return code


COMMANDS = {"book": book, "test": test}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        return 2
    ensure_venv()
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
