"""The Gradescope bundle, simulated end to end in a tree laid out like ``/autograder``.

Gradescope's image cannot start bubblewrap (Docker's seccomp profile blocks its
namespaces), so a fake ``bwrap`` that fails comes first on ``PATH`` and forces the
process mode. ``setup.sh`` itself needs apt and the network; the simulation builds what
it builds: a students' venv with only NumPy, and a source directory readable by root only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from bncourse.grading.student_env import package_dirs, student_python

from grading_helpers import PATHS, ROOT, answer_source, load, with_answer, write_nb

NOBODY = (65534, 65534)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
FAKE_BWRAP = "#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n"


@pytest.fixture()
def tree():
    """An ``/autograder``-like tree (reachable by nobody), with a fake failing ``bwrap``."""
    base = Path(tempfile.mkdtemp(prefix="bncourse-gradescope-test-"))
    os.chmod(base, 0o755)
    (base / "fakebin").mkdir()
    (base / "fakebin" / "bwrap").write_text(FAKE_BWRAP)
    (base / "fakebin" / "bwrap").chmod(0o755)
    yield base
    shutil.rmtree(base)


def _bundle(tree: Path, *args: str) -> Path:
    """Build the zip with the CLI, unpack it as Gradescope does; return the autograder root."""
    zip_path = tree / "autograder.zip"
    done = subprocess.run([sys.executable, "-m", "bncourse.cli", "autograder-zip", "--out", str(zip_path), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    root = tree / "autograder"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(root / "source")
    (root / "source" / "run_autograder").chmod(0o755)
    (root / "submission").mkdir()
    return root


def _student_venv(tree: Path, run_as: tuple[int, int] | None) -> Path:
    """What setup.sh makes of /opt/bncourse-student: a venv whose site-packages hold only NumPy."""
    python = student_python(run_as=run_as).python
    venv = tree / "opt" / "bncourse-student"
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next(venv.glob("lib/python3*/site-packages"))
    for d in package_dirs(("numpy",)):
        (site / d.name).symlink_to(d, target_is_directory=True)
    for path in (tree / "opt", *venv.rglob("*")):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
    return venv / "bin" / "python"


def _run(root: Path, tree: Path, env: dict[str, str], **kwargs) -> tuple[dict, str]:
    for old in (root / "results").glob("*"):
        old.unlink()
    env = {**env, "AUTOGRADER_ROOT": str(root), "PATH": f"{tree / 'fakebin'}:/usr/bin:/bin"}
    done = subprocess.run([str(root / "source" / "run_autograder")], env=env, capture_output=True,
                          text=True, timeout=300, **kwargs)
    assert done.returncode == 0, done.stderr
    return json.loads((root / "results" / "results.json").read_text()), done.stderr


def test_bundle_as_root_in_process_mode(tree):
    if not IS_ROOT:
        pytest.skip("Gradescope runs the autograder as root; this simulation needs root")
    root = _bundle(tree)
    args = (root / "source" / "grade_args.txt").read_text().split()
    assert "--exercises" not in args and args[args.index("--memory-mb") + 1] == "512"
    setup = (root / "source" / "setup.sh").read_text()
    assert "/opt/bncourse-student/bin/pip install -r" in setup and "chmod -R go-rwx /opt/bncourse-venv" in setup
    for path in [root / "source", *(root / "source").rglob("*")]:  # setup.sh: root only
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & 0o700)
    env = {"BNCOURSE_PYTHON": sys.executable, "BNCOURSE_STUDENT_PYTHON": str(_student_venv(tree, NOBODY))}

    write_nb(root / "submission" / "ex01_forward.ipynb", load("ex01"))
    write_nb(root / "submission" / "ex03_backward_graph.ipynb", load("ex03", "templates"))
    results, terminal = _run(root, tree, env)
    info = results["extra_data"]["bncourse"]
    assert results["score"] == 10.0 and info["max_score"] == 20.0  # the two exercises present, not all eight
    assert {t["number"].split(".")[0] for t in results["tests"]} == {"1", "3"}
    assert info["sandbox"] == "process" and info["protections"]["uid"] not in (0, None)  # a uid of its own
    assert info["protections"]["limits"]["RLIMIT_AS"][0] == 512 << 20
    assert info["protections"]["landlock"].startswith("installed") or "Landlock" in terminal
    assert "WARNING" in terminal and "NOT in bubblewrap" in terminal  # the instructor is told...
    assert not any("WARNING" in t["output"] or "bubblewrap" in t["output"] for t in results["tests"])  # ...students not

    for old in (root / "submission").iterdir():
        old.unlink()
    cheat = ("import sys, glob\n"
             f"sys.path[:0] = [{str(root / 'source')!r}] + glob.glob({sys.prefix + '/lib/python3*/site-packages'!r})\n"
             "from bncourse.functional import batchnorm_forward as reference\n"
             "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n    return reference(x, gamma, beta, eps)\n")
    write_nb(root / "submission" / "ex01_forward.ipynb", with_answer("ex01", cheat))
    results, _ = _run(root, tree, env)
    text = "\n".join(t["output"] for t in results["tests"])
    assert results["score"] == 0.0
    assert "No module named 'bncourse'" in text or "PermissionError" in text, text[:1000]


def test_bundle_with_fixed_exercises_as_a_non_root_user(tree):
    """``--exercises ex01,ex03``: a missing notebook scores 0 on its exercise; run as nobody."""
    if not IS_ROOT:
        pytest.skip("needs root to switch to nobody")
    try:
        python = student_python(run_as=NOBODY).python
    except ValueError as err:
        pytest.skip(f"no Python that nobody can run: {err}")
    root = _bundle(tree, "--exercises", "ex01,ex03", "--memory-mb", "600")
    write_nb(root / "submission" / "ex01_forward.ipynb", with_answer("ex01", answer_source("ex01")))
    student = _student_venv(tree, NOBODY)
    for path in [tree, *tree.rglob("*")]:
        os.lchown(path, *NOBODY)
    site = [p for p in sys.path if p.endswith("site-packages")]  # the grader's NumPy, for the grader
    env = {"BNCOURSE_PYTHON": python, "BNCOURSE_STUDENT_PYTHON": str(student), "PYTHONPATH": ":".join(site),
           "HOME": str(tree)}
    results, _ = _run(root, tree, env, user=NOBODY[0], group=NOBODY[1], extra_groups=[], cwd=str(tree))
    info = results["extra_data"]["bncourse"]
    assert results["score"] == 10.0 and info["max_score"] == 20.0
    assert "no notebook for Exercise 3" in results["output"]
    assert info["protections"]["limits"]["RLIMIT_AS"][0] == 600 << 20
    assert info["sandbox"] == "process" and info["protections"]["uid"] == NOBODY[0]
    assert PATHS["solutions"].exists()  # the repository was not touched by the run
