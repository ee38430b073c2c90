"""``bncourse check``: the grader's verdict on the public checks, and exit codes that say so.

Each answer below is what a student might write; every one that the grader would punish
must make ``check`` exit non-zero, and say why first.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from bncourse.grading.check import check_notebook
from bncourse.grading.release import PACKAGE_COPY
from bncourse.grading.sandbox import Limits

from grading_helpers import PATHS, ROOT, answer_source, with_answer, write_nb

FORWARD = answer_source("ex01").replace("    ### BEGIN SOLUTION\n", "").replace("    ### END SOLUTION", "")
MEAN_LINE = "    mean = x.mean(axis=0)"


def _check(tmp_path, nb, name="mine", sandbox=None, **kwargs):
    out = io.StringIO()
    code = check_notebook(write_nb(tmp_path / f"{name}.ipynb", nb), out=out, sandbox=sandbox, **kwargs)
    return code, out.getvalue()


def _ex01(code):
    return with_answer("ex01", code)


def test_solution_passes_and_stub_fails(sandbox, tmp_path):
    code, text = _check(tmp_path, _ex01(FORWARD), sandbox=sandbox)
    assert code == 0 and "All" in text and "public checks passed within the grader's limits" in text, text
    out = io.StringIO()
    assert check_notebook(PATHS["templates"] / "ex04_backward_compact.ipynb", out=out, sandbox=sandbox) == 1
    assert "not implemented yet" in out.getvalue()
    assert out.getvalue().count("not implemented yet") == 1  # repeated messages are capped


def test_answer_cell_error_with_passing_checks_is_not_a_pass(sandbox, tmp_path):
    code, text = _check(tmp_path, _ex01(FORWARD + "\nleftover = undefined_name + 1\n"), sandbox=sandbox)
    assert code == 1, text
    assert "ERROR    your answer cell, line 14: `leftover = undefined_name + 1`" in text
    assert "the grader would give 0 points" in text


@pytest.mark.parametrize("module, code", [
    ("scipy", "import scipy.linalg\n" + FORWARD),
    ("torch", FORWARD.replace(MEAN_LINE, "    import torch\n" + MEAN_LINE)),  # imported only when called
    ("bncourse", FORWARD.replace(MEAN_LINE, "    from bncourse.functional import batchnorm_forward as f\n"
                                             + MEAN_LINE)),
])
def test_a_module_the_grader_lacks_fails_first(sandbox, tmp_path, module, code):
    status, text = _check(tmp_path, _ex01(code), sandbox=sandbox)
    assert status == 1, text
    first = text.splitlines()[1:3]
    assert first[0] == "Would cost points when graded:" and f"imports `{module}`" in first[1], text


def test_a_helper_in_another_cell_gets_one_clear_message(sandbox, tmp_path):
    nb = _ex01(FORWARD.replace(MEAN_LINE, "    mean = _helper(x)"))
    nb["cells"].insert(3, {"cell_type": "code", "id": "own", "metadata": {}, "outputs": [], "execution_count": None,
                           "source": "def _helper(x):\n    return x.mean(axis=0)\n"})
    status, text = _check(tmp_path, nb, sandbox=sandbox)
    assert status == 1
    assert "only the answer cells are run: move `_helper` into the answer cell" in text
    assert "NameError" not in text


def test_an_edited_check_cell_cannot_pass(sandbox, tmp_path):
    nb = _ex01("def batchnorm_forward(x, gamma, beta, eps=1e-5):\n    return x, None\n")
    for cell in nb["cells"]:
        if cell["id"].startswith("ex01-check"):
            cell["source"] = "pass"
    status, text = _check(tmp_path, nb, sandbox=sandbox)
    assert status == 1 and "FAIL" in text


def test_time_output_and_memory_over_the_grader_limits_fail(sandbox, tmp_path):
    loop = FORWARD.replace(MEAN_LINE, "    while True:\n        pass")
    status, text = _check(tmp_path, _ex01(loop), "loop", sandbox=sandbox, limits=Limits(timeout=1.0))
    assert status == 1 and "stopped after" in text and "the grader stops an exercise after 1 s" in text, text
    assert text.count("stopped after") == 1 and "NOT RUN" in text
    prints = FORWARD.replace(MEAN_LINE, "    for i in range(200):\n        print('debug', i)\n" + MEAN_LINE)
    status, text = _check(tmp_path, _ex01(prints), "prints", sandbox=sandbox, limits=Limits(output_bytes=5000))
    assert status == 1 and "printed more than 5,000 bytes" in text, text
    memory = FORWARD.replace(MEAN_LINE, "    big = np.ones(3 * 2 ** 27)\n" + MEAN_LINE)  # 3 GB
    status, text = _check(tmp_path, _ex01(memory), "memory", sandbox=sandbox, limits=Limits(memory_mb=1024))
    assert status == 1 and "ran out of memory" in text and "1024 MB" in text, text


def test_without_posix_sandbox_it_still_checks(tmp_path):
    """What Windows gets (no pass_fds, no process groups): a plain child process, said so."""
    code, text = _check(tmp_path, _ex01(FORWARD), sandbox=None)
    assert code == 0 and "plain process" in text, text
    code, text = _check(tmp_path, _ex01("import scipy\n" + FORWARD), sandbox=None)
    assert code == 1 and "imports `scipy`" in text


def test_checks_come_from_the_package_not_from_book_exercises():
    assert sorted(p.name for p in PACKAGE_COPY.glob("*.ipynb")) == sorted(
        p.name for p in PATHS["templates"].glob("*.ipynb"))


def test_cli_help_examples_and_a_closed_pipe():
    cli = [sys.executable, "-m", "bncourse.cli"]
    helped = subprocess.run([*cli, "check", "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "examples:" in helped.stdout and "``" not in helped.stdout
    proc = subprocess.Popen([*cli, "check", str(PATHS["templates"] / "ex01_forward.ipynb")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `| head` that has already exited
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and b"Traceback" not in err and b"BrokenPipe" not in err, err


def test_the_sandbox_choice_is_remembered_and_forgotten_when_it_breaks(tmp_path):
    """`check` remembers the grader's sandbox choice; a remembered sandbox that no longer starts is
    detected afresh, and the check still tells the truth."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    cli = [sys.executable, "-m", "bncourse.cli", "check", str(PATHS["solutions"] / "ex08_fold.ipynb")]
    first = subprocess.run(cli, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    cache = tmp_path / "cache" / "bncourse" / "sandbox.json"
    record = json.loads(cache.read_text())
    good_python = record["sandbox"]["python"]
    record["sandbox"]["python"] = str(tmp_path / "no-such-python")  # the interpreter went away
    cache.write_text(json.dumps(record))
    again = subprocess.run(cli, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(cache.read_text())["sandbox"]["python"] == good_python  # chosen afresh
    stub = subprocess.run([*cli[:-1], str(PATHS["templates"] / "ex08_fold.ipynb")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert stub.returncode == 1  # the remembered sandbox gives the same verdicts
