"""The ``bncourse`` command: check, release, grade (including an interrupted run), autograder-zip."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path


from bncourse.grading.exercises import EXERCISES

from grading_helpers import PATHS, ROOT, with_answer, write_nb

CLI = [sys.executable, "-m", "bncourse.cli"]


def _run(*args, **kwargs):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=ROOT, timeout=300, **kwargs)


def test_check_reports_pass_fail_and_unreadable(tmp_path):
    solved = _run("check", str(PATHS["solutions"] / "ex01_forward.ipynb"))
    assert solved.returncode == 0, solved.stdout + solved.stderr
    assert "All 8 public checks passed" in solved.stdout and "PASS" in solved.stdout
    stub = _run("check", str(PATHS["templates"] / "ex04_backward_compact.ipynb"))
    assert stub.returncode == 1 and "not implemented yet" in stub.stdout
    # An edited check cannot pass a wrong answer: checks come from the released notebook.
    nb = with_answer("ex01", "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n    return x, None\n")
    for cell in nb["cells"]:
        if cell["id"].startswith("ex01-check"):
            cell["source"] = "assert True"
    wrong = _run("check", str(write_nb(tmp_path / "mine.ipynb", nb)))
    assert wrong.returncode == 1 and "FAIL" in wrong.stdout
    (tmp_path / "broken.ipynb").write_text("{")
    broken = _run("check", str(tmp_path / "broken.ipynb"))
    assert broken.returncode == 2 and "not valid notebook JSON" in broken.stdout


def test_release_check_passes_on_the_repository():
    result = _run("release", "--check")
    assert result.returncode == 0, result.stderr


def test_interrupted_grade_resumes_with_only_what_is_missing(tmp_path):
    subs = tmp_path / "subs"
    loop = "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n    while True:\n        pass\n"
    shutil.copyfile(PATHS["solutions"] / "ex01_forward.ipynb", subs.mkdir() or subs / "a_control.ipynb")
    for name in ("b_loop", "c_loop", "d_loop"):
        write_nb(subs / f"{name}.ipynb", with_answer("ex01", loop))
    out = tmp_path / "out"
    args = [*CLI, "grade", *sorted(str(p) for p in subs.iterdir()), "--out", str(out), "--jobs", "1",
            "--timeout", "2"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "a_control" / "results.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # interrupted mid-batch, as hard as it gets
    proc.wait()
    for path in out.rglob("results.json"):
        json.loads(path.read_text())  # whatever was written is complete
    assert not list(out.rglob("*.tmp"))
    assert not (out / "d_loop" / "results.json").exists()
    rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    # The killed run could not remove its work dir (0700, named after its pid); the rerun did.
    assert not list(Path(tempfile.gettempdir()).glob(f"bncourse-grade-{proc.pid}-*"))
    assert "a_control: 10/10 (already graded)" in rerun.stderr
    assert "[" in rerun.stderr and "4/4" in rerun.stderr  # the progress bar
    rows = (out / "grades.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[1].startswith("a_control,10,10")
    assert "timed out after 2 s in Exercise 1" in json.loads((out / "d_loop" / "results.json").read_text())["output"]


def test_autograder_zip_runs_like_gradescope(tmp_path):
    bundle = tmp_path / "autograder.zip"
    result = _run("autograder-zip", "--out", str(bundle), "--exercises", "ex01,ex03")
    assert result.returncode == 0, result.stderr
    root = tmp_path / "autograder"
    with zipfile.ZipFile(bundle) as zf:
        names = set(zf.namelist())
        assert {"setup.sh", "run_autograder", "requirements.txt", "grade_args.txt", "pyproject.toml",
                "bncourse/cli.py", "bncourse/grading/runner.py"} <= names
        assert {f"tests/hidden/{ex.hidden}" for ex in EXERCISES} <= names
        assert {f"book/exercises/{ex.notebook}" for ex in EXERCISES} <= names
        assert not any(n.startswith("solutions/") for n in names)
        assert zf.getinfo("run_autograder").external_attr >> 16 & 0o111
        assert "apt-get install -y --no-install-recommends bubblewrap" in zf.read("setup.sh").decode()
        zf.extractall(root / "source")
    (root / "source" / "run_autograder").chmod(0o755)
    (root / "submission").mkdir()
    shutil.copyfile(PATHS["solutions"] / "ex01_forward.ipynb", root / "submission" / "ex01_forward.ipynb")
    env = {**os.environ, "AUTOGRADER_ROOT": str(root), "BNCOURSE_PYTHON": sys.executable,
           "PYTHONPATH": str(root / "source")}  # the bundled package, not the repository's
    run = subprocess.run([str(root / "source" / "run_autograder")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    results = json.loads((root / "results" / "results.json").read_text())
    assert results["score"] == 10.0  # Exercise 1 solved, Exercise 3 missing
    assert "no notebook for Exercise 3" in results["output"]
    assert {t["number"].split(".")[0] for t in results["tests"]} == {"1", "3"}
