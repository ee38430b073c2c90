"""The sandbox: what it binds, what it forbids, the fallback's warnings, no leftover processes."""

from __future__ import annotations

import ast
import os
import tempfile
from pathlib import Path

import pytest

from bncourse.grading.grader import Grader, Submission
from bncourse.grading.sandbox import RUNNER, detect_sandbox

from grading_helpers import (PATHS, ROOT, TEST_LIMITS, all_outputs, answer_source, runner_leftovers, with_answer,
                             write_nb)

IMPORTS = ("ok = []\nfor name in ('bncourse', 'torch', 'sklearn'):\n    try:\n"
           "        __import__(name + '.nn' if name == 'torch' else name)\n        ok.append(name)\n"
           "    except Exception:\n        pass\nraise RuntimeError(f'IMPORTS:{ok}')\n")


def test_runner_needs_only_the_standard_library_and_numpy():
    tree = ast.parse(RUNNER.read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module}
    assert "bncourse" not in modules and "torch" not in modules
    assert modules <= {"json", "os", "sys", "time", "traceback", "resource", "struct", "ctypes",
                       "platform", "contextlib", "io", "numpy"}, modules


def test_bwrap_binds_no_course_files(sandbox, tmp_path):
    if sandbox.kind != "bwrap":
        pytest.skip("bubblewrap is not usable here")
    sandbox.prepare(tmp_path)
    cmd = sandbox.command(tmp_path, ["grade", "/sandbox/plan.json", "3"])
    assert {"--unshare-net", "--unshare-pid", "--unshare-ipc", "--die-with-parent"} <= set(cmd)
    sources = [Path(cmd[i + 1]) for i, a in enumerate(cmd) if a in ("--bind", "--ro-bind", "--ro-bind-try")]
    writable = [Path(cmd[i + 1]) for i, a in enumerate(cmd) if a == "--bind"]
    assert writable == [tmp_path / "out"]
    for src in sources:
        inside_repo = src == ROOT or ROOT in src.parents
        assert not inside_repo or (ROOT / ".venv") in src.parents, f"{src} exposes the repository"
        assert src not in (PATHS["hidden"], PATHS["solutions"]) and src not in PATHS["hidden"].parents \
            or src == Path("/"), src


def test_course_packages_are_not_importable_in_the_sandbox(grader, tmp_path):
    path = write_nb(tmp_path / "imports.ipynb", with_answer("ex01", IMPORTS))
    results = grader.grade(Submission("imports", path))
    assert "IMPORTS:[]" in all_outputs(results)


def test_no_process_outlives_a_timeout(grader, tmp_path, monkeypatch):
    body = "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n    while True:\n        pass\n"
    path = write_nb(tmp_path / "loop.ipynb", with_answer("ex01", body))
    # This test's work directory in a place of its own: other graders may run on this machine.
    base = tempfile.mkdtemp(prefix="bncourse-timeout-test-")
    os.chmod(base, 0o711)
    monkeypatch.setattr(tempfile, "tempdir", base)
    try:
        results = grader.grade(Submission("loop", path))
    finally:
        monkeypatch.undo()
    assert "timed out" in results["output"]
    procs, dirs = runner_leftovers(base)
    assert not procs, procs
    assert dirs == []
    os.rmdir(base)


def test_fallback_without_bubblewrap_warns_loudly_and_still_grades(tmp_path):
    fallback = detect_sandbox("process")
    assert fallback.kind == "process" and fallback.warnings
    grader = Grader(PATHS["hidden"], PATHS["templates"], fallback, TEST_LIMITS)
    control = write_nb(tmp_path / "control.ipynb", with_answer("ex01", answer_source("ex01")))
    fork = write_nb(tmp_path / "fork.ipynb", with_answer(
        "ex01", "import os\ndef batchnorm_forward(x, gamma, beta, eps=1e-5):\n    os.fork()\n"))
    ok = grader.grade(Submission("control", control))
    assert ok["score"] == 10.0
    assert "NOT in bubblewrap" in ok["output"] and "NOT protected from" in ok["output"]
    # Instructors see the warnings; students (tests[].output) never learn what is unprotected.
    assert not any("WARNING" in t["output"] or "bubblewrap" in t["output"] for t in ok["tests"])
    blocked = grader.grade(Submission("fork", fork))
    assert blocked["score"] == 0.0 and "PermissionError" in all_outputs(blocked)
    assert blocked["extra_data"]["bncourse"]["protections"]["seccomp"].startswith("installed")
