#!/usr/bin/env python3
"""The course's entry points; each sets up `.venv/` itself first.

    python3 tasks.py lab    # students: install what the exercises need, copy them into
                            # my-exercises/ (never overwriting yours) and open JupyterLab there
    python3 tasks.py book   # build the whole book, executing every notebook, into _build/html/
    python3 tasks.py test   # unit tests + nbval over every notebook

Needs only Python 3.10 or newer (3.11 recommended) and pip. `lab` installs only NumPy, the CPU
build of torch, JupyterLab and `bncourse` (a few hundred MB); `book` and `test` install the whole
toolchain, a superset, and reinstall it when requirements.txt or pyproject.toml change.
`python3 tasks.py lab --no-launch` does everything but start JupyterLab.
Extra arguments after `test` go to pytest (e.g. `python3 tasks.py test -k layers`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".bncourse-installed"
INSTALL_INPUTS = ["requirements.txt", "pyproject.toml"]
RELEASED = ROOT / "book" / "exercises"
MY_EXERCISES = ROOT / "my-exercises"
# What the exercises need (the versions come from requirements.txt, one source of truth).
LAB_PACKAGES = {"numpy": "numpy", "torch": "torch", "jupyterlab": "jupyterlab"}
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


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


def _venv_python() -> Path:
    """The python of .venv/, creating the virtual environment first if it is not there."""
    if sys.version_info < (3, 10):
        sys.exit(f"Python 3.10+ is needed (3.11 recommended), this is {sys.version.split()[0]}")
    python = BIN / "python"
    if not python.exists():
        print(f"Creating the virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    return python


def ensure_venv() -> None:
    python = _venv_python()
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
    package = [p for p in (ROOT / "bncourse").rglob("*") if p.suffix in (".py", ".c")]
    files = sorted(package) + [ROOT / name for name in INSTALL_INPUTS]
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


def _requirement(name: str) -> str:
    """The line of requirements.txt that pins ``name`` (without its comment), or ``name`` itself."""
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        head = spec.replace(">", "=").replace("<", "=").replace("~", "=").replace("!", "=").split("=", 1)[0]
        if head.strip().lower() == name:
            return spec
    return name


def _missing(python: Path, modules: list[str]) -> list[str]:
    """The modules that ``python`` cannot find (without importing them: torch takes seconds)."""
    code = ("import importlib.util as u, sys; "
            "print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))")
    done = subprocess.run([str(python), "-c", code, *modules], capture_output=True, text=True)
    return done.stdout.split() if done.returncode == 0 else list(modules)


def _reachable(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except Exception:  # no network, DNS, proxy, TLS: use the default index
        return False


def ensure_lab_venv() -> None:
    """Install what the exercises need into .venv/ when something is missing; a no-op otherwise."""
    python = _venv_python()
    missing = _missing(python, [*LAB_PACKAGES, "bncourse"])
    if not missing:
        return
    started = time.monotonic()
    print(f"Installing what the exercises need ({', '.join(missing)}) into {VENV}", flush=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    if "torch" in missing:
        if _reachable(TORCH_CPU_INDEX + "/torch/"):  # the CPU build: no CUDA download on a laptop
            _run([*pip, _requirement("torch"), "--index-url", TORCH_CPU_INDEX,
                  "--extra-index-url", "https://pypi.org/simple"])
        else:
            print(f"({TORCH_CPU_INDEX} is not reachable; installing torch from the default index)", flush=True)
            _run([*pip, _requirement("torch")])
    _run([*pip, _requirement("numpy"), _requirement("jupyterlab"), "-e", "."])
    print(f"Installed in {time.monotonic() - started:.0f} s", flush=True)


def copy_exercises(released: Path = RELEASED, mine: Path = MY_EXERCISES) -> list[str]:
    """Copy each released exercise notebook into ``mine`` unless a notebook of that name is there.

    Never overwrites: a notebook already in ``mine`` holds the student's work. Returns the names added.
    """
    mine.mkdir(exist_ok=True)
    added = []
    for source in sorted(released.glob("ex*.ipynb")):
        target = mine / source.name
        if target.exists():
            continue
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(source, tmp)
        try:
            os.link(tmp, target)  # fails if the target appeared meanwhile: still never overwrites
        except FileExistsError:
            pass
        except OSError:  # no hard links on this file system
            if not target.exists():
                os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        added.append(source.name)
    return added


def lab(args: list[str]) -> int:
    launch = "--no-launch" not in args
    added = copy_exercises()
    kept = sorted(p.name for p in MY_EXERCISES.glob("ex*.ipynb") if p.name not in added)
    if added:
        print(f"Copied {len(added)} exercise(s) into {MY_EXERCISES.name}/: {', '.join(added)}", flush=True)
    if kept:
        print(f"Kept your {len(kept)} notebook(s) in {MY_EXERCISES.name}/ as they are", flush=True)
    print(f"Work in {MY_EXERCISES.name}/; check an answer with: "
          f"{BIN.relative_to(ROOT) / 'bncourse'} check {MY_EXERCISES.name}/ex01_forward.ipynb", flush=True)
    if not launch:
        return 0
    cmd = [str(BIN / "jupyter"), "lab", *[a for a in args if a != "--no-launch"]]
    print("+", " ".join(cmd), f"(in {MY_EXERCISES.name}/; stop it with Ctrl-C)", flush=True)
    try:
        return subprocess.run(cmd, cwd=MY_EXERCISES, env=_env()).returncode
    except KeyboardInterrupt:
        return 0


# Chapters whose numbers are timings: they run alone, inside the build, never beside another kernel.
RUN_ALONE = {"book/performance.ipynb"}


def _toc_notebooks() -> list[str]:
    files = []
    for line in (ROOT / "_toc.yml").read_text().splitlines():
        name = line.strip().removeprefix("- ").strip()
        if name.startswith(("file:", "root:")):
            path = name.split(":", 1)[1].strip() + ".ipynb"
            if (ROOT / path).is_file():
                files.append(path)
    return files


def execute_chapters(args: list[str]) -> int:
    """(Run by the venv's Python.) Execute the chapters missing from the cache, one per core.

    The book build then finds them in jupyter-cache and only renders them. Each kernel gets one
    thread, so kernels running side by side do not fight over the cores.
    """
    from jupyter_cache import get_cache
    from jupyter_cache.executors import load_executor

    os.environ["OMP_NUM_THREADS"] = "1"
    cache = get_cache(str(JUPYTER_CACHE))
    todo = []
    for path in _toc_notebooks():
        if path in RUN_ALONE:
            continue
        record = cache.add_nb_to_project(str(ROOT / path))
        try:
            cache.match_cache_notebook(cache.get_project_notebook(record.pk).nb)
        except KeyError:
            todo.append(record.pk)
    if not todo:
        return 0
    import bncourse.nn

    bncourse.nn.fused_available()  # build the C kernels once, before the kernels all want them
    result = load_executor("local-parallel", cache=cache).run_and_cache(filter_pks=todo, timeout=600)
    print(f"Executed {len(result.succeeded)} chapter(s) in parallel; "
          f"{len(result.excepted) + len(result.errored)} failed and run again in the build", flush=True)
    return 0


def book(args: list[str]) -> int:
    started = time.monotonic()
    _fresh_execution_cache()
    subprocess.run([str(BIN / "python"), str(ROOT / "tasks.py"), "execute-chapters"], cwd=ROOT, env=_env())
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


COMMANDS = {"lab": lab, "book": book, "test": test, "execute-chapters": execute_chapters}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        return 2
    if argv[0] == "lab":
        if not os.environ.get("BNCOURSE_LAB_SKIP_INSTALL"):  # set by the test of `lab` only
            ensure_lab_venv()
    else:
        ensure_venv()
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
