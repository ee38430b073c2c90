"""Interruptions and work directories.

Ctrl-C (a real SIGINT to ``bncourse grade``) or SIGTERM cancels what is pending, kills the
running sandbox, writes grades.csv from the results already there and exits within seconds.
Work directories are 0700, removed without recursion even 1,500 levels deep (the answer
that made them still scores), and those left by a killed run are removed by the next one.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bncourse.grading.grader import collect_submissions, grade_batch
from bncourse.grading.workdirs import clean_stale_workdirs, remove_tree

from grading_helpers import PATHS, ROOT, answer_source, leftovers, results_of, with_answer, write_nb

LOOP = "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n    while True:\n        pass\n"


@pytest.mark.parametrize("signum, mode", [(signal.SIGINT, "auto"), (signal.SIGTERM, "auto"),
                                          (signal.SIGINT, "process")])
def test_an_interrupted_batch_writes_grades_csv_and_exits_within_seconds(tmp_path, signum, mode):
    subs = tmp_path / "subs"
    subs.mkdir()
    shutil.copyfile(PATHS["solutions"] / "ex01_forward.ipynb", subs / "a_control.ipynb")
    for name in ("b_loop", "c_loop", "d_loop"):
        write_nb(subs / f"{name}.ipynb", with_answer("ex01", LOOP))
    out = tmp_path / "out"
    log = tmp_path / "stderr.txt"
    args = [sys.executable, "-m", "bncourse.cli", "grade", *sorted(str(p) for p in subs.iterdir()),
            "--out", str(out), "--jobs", "1", "--timeout", "60", "--sandbox", mode]
    with open(log, "w") as err:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        # Wait until the first loop is running in its sandbox.
        while time.monotonic() < deadline and not (
                (out / "a_control" / "results.json").exists() and leftovers(proc.pid, settle=0)[0]):
            time.sleep(0.05)
        assert leftovers(proc.pid, settle=0)[0], "the loop never started"
        started = time.monotonic()
        os.kill(proc.pid, signum)
        code = proc.wait(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stderr = log.read_text()
    assert code == 130, stderr
    assert elapsed < 10, elapsed
    assert "interrupted after 1 of 4 submission(s)" in stderr
    with open(out / "grades.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["submission"], r["score"]) for r in rows] == [("a_control", "10")]
    assert not (out / "b_loop" / "results.json").exists(), "a killed run is not a result"
    assert results_of(out, "a_control")["score"] == 10.0
    assert leftovers(proc.pid) == ([], [])


def test_deep_work_trees_are_removed_and_the_answer_still_scores(grader, tmp_path):
    deep = ("import os\n"
            "_home = os.getcwd()\n"
            "for _ in range(1500):\n"
            "    os.mkdir('d' * 40)\n"
            "    os.chdir('d' * 40)\n"
            "open('leaf', 'w').close()\n"
            "os.chmod('.', 0)\n"
            "os.chdir(_home)\n" + answer_source("ex01"))
    mode = ("import os, stat\n" + answer_source("ex01").replace(
        "    ### BEGIN SOLUTION\n",
        "    ### BEGIN SOLUTION\n    raise RuntimeError('MODE:%o' % stat.S_IMODE(os.stat('.').st_mode))\n"))
    subs = [write_nb(tmp_path / "subs" / "deep.ipynb", with_answer("ex01", deep)),
            write_nb(tmp_path / "subs" / "mode.ipynb", with_answer("ex01", mode))]
    out = tmp_path / "out"
    grade_batch(grader, collect_submissions(subs), out, jobs=2, progress=None)
    deep_results = results_of(out, "deep")
    assert deep_results["score"] == 10.0, deep_results["output"]
    # The host's work dir is 0700. Inside bubblewrap the student sees a tmpfs of its own mount
    # namespace instead (0777 there, so the unprivileged uid can write it; nobody else sees it).
    expected_mode = "MODE:777" if grader.sandbox.kind == "bwrap" else "MODE:700"
    assert expected_mode in results_of(out, "mode")["tests"][0]["output"]
    assert leftovers() == ([], [])


def test_remove_tree_handles_depth_long_paths_and_unreadable_dirs(tmp_path):
    root = tmp_path / "work"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    # 1,200 levels of 60 characters: beyond the recursion limit (1,000) and PATH_MAX (4,096) by far.
    for level in range(1200):
        os.mkdir("x" * 60, dir_fd=fd)
        os.close(os.open(f"f{level}", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
        child = os.open("x" * 60, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.symlink("/etc/passwd", "link", dir_fd=fd)
    os.chmod(fd, 0)
    os.close(fd)
    remove_tree(root)
    assert not root.exists()
    assert Path("/etc/passwd").exists()


def test_work_dirs_of_killed_runs_are_removed_by_the_next_run(grader, tmp_path):
    tmp = Path(tempfile.gettempdir())
    stale = tmp / "bncourse-grade-999999999-stale"  # no such process can exist (pid_max <= 2**22)
    alive = tmp / "bncourse-grade-1-alive"  # pid 1 is alive: maybe another batch, kept
    for d in (stale, alive):
        (d / "sub").mkdir(parents=True, exist_ok=True, mode=0o700)
        (d / "sub" / "answer.py").write_text("secret")
    try:
        grade_batch(grader, [], tmp_path / "out", progress=None)
        assert not stale.exists()
        assert alive.exists()
        assert clean_stale_workdirs() == []
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(alive, ignore_errors=True)


def test_work_dirs_are_private_to_the_grader():
    from bncourse.grading.workdirs import make_workdir, remove_tree

    workdir = make_workdir()
    try:
        assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
    finally:
        remove_tree(workdir)
