"""The exercises' first cell: installs `bncourse` in a kernel that lacks it (Colab), and does
nothing in the course's environment or in the grader's sandbox.

Tested in a fresh virtual environment without `bncourse` (NumPy comes from the course's
environment through a `.pth` file, nothing is downloaded), installing from a wheel of this checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy

from bncourse.grading.release import course_release_info

ROOT = Path(__file__).resolve().parents[1]
FAKE_KERNEL = "import sys, types\nsys.modules['ipykernel'] = types.ModuleType('ipykernel')  # as in Jupyter\n"


def _install_cell(name: str = "ex03_backward_graph.ipynb") -> str:
    nb = json.loads((ROOT / "book" / "exercises" / name).read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert code["id"].endswith("-install") and code["metadata"]["bncourse"] == {"setup": True}
    return "".join(code["source"])


def _run(python: Path, code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1", **env})


def test_every_exercise_starts_with_the_pinned_install_cell():
    repository, version = course_release_info(ROOT)
    for path in sorted((ROOT / "book" / "exercises").glob("ex*.ipynb")):
        cell = _install_cell(path.name)
        assert f'"bncourse @ git+{repository}@v{version}"' in cell, path.name
        text = path.read_text()
        assert "{cite}" not in text, f"{path.name}: a {{cite}} role shows raw outside the book"


def test_install_cell_in_a_fresh_environment(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, source / name)
    shutil.copytree(ROOT / "bncourse", source / "bncourse", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(source)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    wheel = next(wheels.glob("bncourse-*.whl"))

    fresh = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True).create(fresh)
    python = fresh / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    pylib = tmp_path / "pylib"  # NumPy alone, linked from the course's environment
    pylib.mkdir()
    numpy_dir = Path(numpy.__file__).resolve().parent
    for d in (numpy_dir, numpy_dir.with_name("numpy.libs")):
        if d.is_dir():
            (pylib / d.name).symlink_to(d, target_is_directory=True)
    site = Path(_run(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])", tmp_path).stdout.strip())
    (site / "course_numpy.pth").write_text(str(pylib) + "\n")
    cell = _install_cell()
    assert _run(python, "import bncourse", tmp_path).returncode != 0, "the fresh environment must lack bncourse"

    # No kernel (the grader's sandbox): nothing happens, not even with a source that cannot install.
    quiet = _run(python, cell + "\nimport importlib.util as u; assert u.find_spec('bncourse') is None",
                 tmp_path, BNCOURSE_INSTALL_FROM=str(tmp_path / "missing.whl"))
    assert quiet.returncode == 0, quiet.stderr
    # A Jupyter kernel without bncourse (Colab): installs it, and the checks' imports work at once.
    done = _run(python, FAKE_KERNEL + cell + "\nimport bncourse.gradcheck, bncourse.functional; print('OK')",
                tmp_path, BNCOURSE_INSTALL_FROM=str(wheel))
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr
    # The course's environment: bncourse is there, so nothing is installed (a bad source would fail).
    course = _run(Path(sys.executable), FAKE_KERNEL + cell, tmp_path, BNCOURSE_INSTALL_FROM=str(tmp_path / "no.whl"))
    assert course.returncode == 0, course.stderr


def test_binder_installs_the_package_and_not_the_book_toolchain():
    lines = [l.split("#")[0].strip() for l in (ROOT / "binder" / "requirements.txt").read_text().splitlines()]
    lines = [l for l in lines if l]
    assert "-e ." in lines and any(l.startswith("numpy") for l in lines)
    assert not any(l.startswith(("jupyter-book", "playwright", "nbval", "pytest", "sphinx")) for l in lines)
    torch_pin = next(l for l in (ROOT / "requirements.txt").read_text().splitlines() if l.startswith("torch=="))
    assert torch_pin.split("#")[0].strip() in lines
