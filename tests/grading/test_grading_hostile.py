"""A corpus of broken and hostile submissions, graded in one batch.

Every submission gets a results.json with a score (0 where nothing was earned)
and a message saying what happened; the batch finishes; a correct submission
in the same batch gets full marks.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest

from bncourse.grading.grader import Grader, collect_submissions, grade_batch

from grading_helpers import (PATHS, ROOT, TEST_LIMITS, all_outputs, answer_source, exercise_scores,
                             full_directory, load, results_of, with_answer, write_nb)

SIG = "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n"
TOKEN = uuid.uuid4().hex
OUTSIDE = [str(ROOT / f"PWNED-{TOKEN}"), f"/tmp/PWNED-{TOKEN}", str(PATHS["hidden"] / f"PWNED-{TOKEN}"),
           f"/PWNED-{TOKEN}", f"/dev/shm/PWNED-{TOKEN}", f"/pylib/PWNED-{TOKEN}"]
SECRETS = [str(PATHS["hidden"] / "ex01_forward.py"), str(PATHS["solutions"] / "ex01_forward.ipynb"),
           str(ROOT / "bncourse" / "grading" / "grader.py")]


def _bodies() -> dict[str, str]:
    solution = answer_source("ex01")
    return {
        "control": solution,
        "syntax_error": SIG + "    return x +\n",
        "exception": SIG + "    raise ValueError('my bug')\n",
        "toplevel_exception": "import numpy as np\n1 / 0\n",
        "infinite_loop": SIG + "    while True:\n        pass\n",
        "memory_bomb": SIG + "    hog = []\n    while True:\n        hog.append(bytearray(10**8))\n",
        "sys_exit": "import sys\nsys.exit(0)\n",
        "os_exit": "import os\n" + SIG + "    os._exit(3)\n",
        "fork_bomb": "import os\n" + SIG + "    while True:\n        os.fork()\n",
        "subprocess": "import subprocess\n" + SIG + "    subprocess.run(['sh', '-c', 'echo hi'])\n",
        "output_flood": SIG + "    while True:\n        print('x' * 1000)\n",
        "wrong_shape": solution.replace("return out, (x_hat, inv_std, gamma)",
                                        "return out.T, (x_hat, inv_std, gamma)"),
        "wrong_dtype": solution.replace("return out, (x_hat, inv_std, gamma)",
                                        "return out.astype(np.float64), None"),
        "nan": SIG + "    return np.full(x.shape, np.nan, x.dtype), None\n",
        "not_an_array": SIG + "    return {'out': 'hello'}, None\n",
        "object_array": "import numpy as np\n" + SIG + "    return np.array([object()] * len(x)), None\n",
        "returns_one_value": solution.replace("return out, (x_hat, inv_std, gamma)", "return out"),
        "patch_numpy": "import numpy as np\nnp.allclose = lambda *a, **k: True\n"
                       "np.testing.assert_allclose = lambda *a, **k: None\n"
                       "np.save = lambda *a, **k: None\n" + SIG + "    return x * 0, None\n",
        "fake_results": (
            "import os, json, numpy as np\n" + SIG +
            "    for fd in range(3, 64):\n"
            "        try:\n"
            "            os.write(fd, b'{\"ev\": \"case\", \"ex\": \"ex01\", \"case\": 0, \"ok\": true}\\n')\n"
            "        except OSError:\n"
            "            pass\n"
            "    for name in ('results.json', 'out/results.json', '/sandbox/results.json'):\n"
            "        try:\n"
            "            open(name, 'w').write(json.dumps({'score': 100, 'tests': []}))\n"
            "        except OSError:\n"
            "            pass\n"
            "    return np.zeros_like(x), None\n"),
        "pickle_output": (
            "import os, pickle, numpy as np\n" + SIG +
            "    for k in range(8):\n"
            "        for d in ('out', '/sandbox/out'):\n"
            "            try:\n"
            "                np.save(f'{d}/ex01-{k}-out.npy', np.array([{'x': 1}], dtype=object), allow_pickle=True)\n"
            "            except OSError:\n"
            "                pass\n"
            "    raise RuntimeError('wrote pickles')\n"),
        "symlink_output": (
            "import os\n" + SIG +
            "    for k in range(8):\n"
            "        for d in ('out', '/sandbox/out'):\n"
            "            try:\n"
            f"                os.symlink({SECRETS[0]!r}, f'{{d}}/ex01-{{k}}-out.npy')\n"
            "            except OSError:\n"
            "                pass\n"
            "    raise RuntimeError('made symlinks')\n"),
        "read_secrets": (
            solution + "\nimport os\nleak = []\n"
            f"for p in {SECRETS!r}:\n"
            "    try:\n"
            "        open(p).read()\n"
            "        leak.append(p)\n"
            "    except OSError:\n"
            "        pass\n"
            f"for d in {[str(ROOT), str(PATHS['hidden'])]!r}:\n"
            "    try:\n"
            "        os.listdir(d)\n"
            "        leak.append(d)\n"
            "    except OSError:\n"
            "        pass\n"
            "raise RuntimeError(f'LEAK:{leak}')\n"),
        "write_outside": (
            "import os\nwritten = []\n"
            f"for p in {OUTSIDE!r}:\n"
            "    try:\n"
            "        open(p, 'w').write('x')\n"
            "        written.append(p)\n"
            "    except OSError:\n"
            "        pass\n"
            "raise RuntimeError(f'WROTE:{written}')\n"),
        "network": (
            "import socket\nreached = []\n"
            "try:\n"
            "    socket.create_connection(('1.1.1.1', 53), timeout=2).close()\n"
            "    reached.append('1.1.1.1')\n"
            "except OSError:\n"
            "    pass\n"
            "raise RuntimeError(f'NET:{reached}')\n"),
        "disk_filler": ("import os\n" + SIG + "    k = 0\n    while True:\n"
                        "        open(f'junk{k}', 'wb').write(b'x' * 10**7)\n        k += 1\n"),
        "file_bomb": ("import os\n" + SIG + "    k = 0\n    while True:\n"
                      "        open(f'f{k}', 'w').close()\n        k += 1\n"),
        "kill_grader": ("import os, signal\n" + solution +
                        "\nfor pid in (os.getppid(), -1, 1):\n"
                        "    try:\n"
                        "        os.kill(pid, signal.SIGKILL)\n"
                        "    except OSError:\n"
                        "        pass\n"),
        "magics": "%matplotlib inline\n!echo hi\n" + solution,
    }


@pytest.fixture(scope="module")
def batch(grader, dir_grader, sandbox, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    subs = root / "subs"
    subs.mkdir()
    names = []
    for name, body in _bodies().items():
        write_nb(subs / f"{name}.ipynb", with_answer("ex01", body))
        names.append(name)
    (subs / "not_json.ipynb").write_text("hello, grader")
    (subs / "binary.ipynb").write_bytes(os.urandom(3000))
    (subs / "truncated.ipynb").write_text(json.dumps(load("ex01", "templates"))[:500])
    (subs / "json_not_notebook.ipynb").write_text('{"a": [1, 2, 3]}')
    (subs / "essay.txt").write_text("I did not do the homework")
    other = {"cells": [{"cell_type": "code", "metadata": {}, "source": "print('hello')", "outputs": [],
                        "execution_count": None}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    write_nb(subs / "other_course.ipynb", other)
    nb = load("ex01", "templates")
    nb["cells"] = [c for c in nb["cells"] if c.get("id") != "ex01-answer-1"]
    write_nb(subs / "answer_deleted.ipynb", nb)
    edited = with_answer("ex01", "import numpy as np\n" + SIG + "    return x, None\n")
    for cell in edited["cells"]:  # editing the checks and set-up must change nothing
        if cell["id"].startswith("ex01-check") or cell["id"] == "ex01-setup":
            cell["source"] = "import numpy as np\nnp.mean = lambda *a, **k: 0\nassert True\n"
    write_nb(subs / "edited_checks.ipynb", edited)
    loop = with_answer("ex03", "def batchnorm_backward_graph(dout, x, gamma, beta, eps=1e-5):\n"
                               "    while True:\n        pass\n")
    exit_ = with_answer("ex02", "import os\ndef update_running_stats(*args, **kwargs):\n    os._exit(0)\n")
    directories = [full_directory(root / "dirs" / "loop_in_ex03", {"ex03": loop}),
                   full_directory(root / "dirs" / "exit_in_ex02", {"ex02": exit_})]
    wrong_assignment = write_nb(root / "wrong" / "wrong_assignment.ipynb", load("ex05"))
    out = root / "out"
    files = collect_submissions(sorted(subs.iterdir()))
    grade_batch(grader, files, out, jobs=2, progress=None)
    grade_batch(dir_grader, collect_submissions(directories), out, jobs=2, progress=None)
    ex03_only = Grader(PATHS["hidden"], PATHS["templates"], sandbox, TEST_LIMITS, exercises=["ex03"])
    grade_batch(ex03_only, collect_submissions([wrong_assignment]), out, jobs=1, progress=None)
    names = [s.name for s in files] + ["loop_in_ex03", "exit_in_ex02", "wrong_assignment"]
    leaked = [p for p in OUTSIDE if os.path.exists(p)]
    for path in leaked:  # only possible without bubblewrap; do not leave litter behind
        os.unlink(path)
    results = {name: results_of(out, name) for name in names}
    results["_leaked_paths"] = leaked
    return results


ZERO_WITH_MESSAGE = {
    "syntax_error": "SyntaxError",
    "exception": "ValueError: my bug",
    "toplevel_exception": "ZeroDivisionError",
    "infinite_loop": "timed out after 4 s in Exercise 1",
    "memory_bomb": "MemoryError: out of memory (the grader allows 1024 MB)",
    "sys_exit": "sys.exit()",
    "os_exit": "ended the grading process (exit code 3",
    "fork_bomb": "PermissionError",
    "subprocess": "PermissionError",
    "output_flood": "printed more than 1,000,000 bytes of output in Exercise 1",
    # Stopped by the grader's poll, or (bubblewrap's tmpfs) refused by the file system first.
    "disk_filler": "more than 256 MB",
    "file_bomb": "wrote more than 256 MB or 2000 files in Exercise 1",
    "wrong_shape": "expected (",
    "nan": "contains NaN",
    "not_an_array": "should be a NumPy array",
    "object_array": "should be a numeric array",
    "returns_one_value": "should return 2 values",
    "patch_numpy": "your code redefines `np.allclose`, `np.save`",  # put back before the cases run
    "fake_results": "values wrong",
    "pickle_output": "wrote pickles",
    "symlink_output": "made symlinks",
    "not_json": "not valid notebook JSON",
    "binary": "not a text file",
    "truncated": "not valid notebook JSON",
    "json_not_notebook": "not a Jupyter notebook",
    "essay": "does not end in .ipynb",
    "other_course": "not one of this course's exercise notebooks",
    "answer_deleted": "could not find the answer cell of Exercise 1",
    "edited_checks": "values wrong",
}


def test_every_submission_has_results(batch):
    assert set(ZERO_WITH_MESSAGE) <= set(batch)
    for name, results in batch.items():
        if name.startswith("_"):
            continue
        assert isinstance(results["score"], float), name
        assert results["tests"], name


@pytest.mark.parametrize("name", sorted(ZERO_WITH_MESSAGE))
def test_broken_submission_scores_zero_with_a_message(batch, name):
    results = batch[name]
    assert results["score"] == 0.0, (name, results["output"])
    assert ZERO_WITH_MESSAGE[name] in all_outputs(results), all_outputs(results)[:2000]


def test_wrong_dtype_loses_the_float32_cases(batch):
    results = batch["wrong_dtype"]
    float32 = [t for t in results["tests"] if "float32" in t["name"]]
    assert float32 and all(t["score"] == 0 for t in float32)
    assert all("dtype float64, expected float32" in t["output"] for t in float32)
    assert 0 < results["score"] < 10


def test_a_correct_submission_in_the_same_batch_gets_full_marks(batch):
    assert batch["control"]["score"] == 10.0
    assert batch["magics"]["score"] == 10.0, "IPython magics in an answer cell are ignored"


def test_forged_results_change_nothing(batch):
    # The sandbox wrote "ok" events and a results.json claiming 100 points: the score is still 0.
    results = batch["fake_results"]
    assert results["score"] == 0.0
    assert all(t["score"] == 0 for t in results["tests"])


def test_signals_cannot_reach_the_grader(batch):
    assert batch["kill_grader"]["score"] == 10.0  # the batch went on; the student's answer was right


def test_failures_cost_only_their_exercise(batch):
    loop = exercise_scores(batch["loop_in_ex03"])
    assert loop.pop("ex03") == 0.0 and set(loop.values()) == {10.0}
    assert "timed out after 4 s in Exercise 3" in batch["loop_in_ex03"]["output"]
    exit_ = exercise_scores(batch["exit_in_ex02"])
    assert exit_.pop("ex02") == 0.0 and set(exit_.values()) == {10.0}
    assert "ended the grading process" in batch["exit_in_ex02"]["output"]


def test_a_notebook_of_another_exercise(batch):
    results = batch["wrong_assignment"]
    assert results["score"] == 0.0
    text = all_outputs(results)
    assert "no notebook for Exercise 3" in text
    assert "is Exercise 5 (spatial batch norm for (N, C, H, W)), which this assignment does not grade" in text


def test_sandbox_isolation(batch, sandbox):
    landlock = str((sandbox.probe or {}).get("ready", {}).get("landlock", ""))
    if sandbox.kind != "bwrap" and not landlock.startswith("installed"):
        # Without namespaces and without Landlock, only permissions guard files: the instructor is told.
        assert any("NOT protected from" in w for w in sandbox.warnings)
        pytest.skip(f"neither bubblewrap nor Landlock here ({landlock}); the instructor is warned (checked)")
    assert "LEAK:[]" in all_outputs(batch["read_secrets"]), "the sandbox could read course files"
    assert "WROTE:[]" in all_outputs(batch["write_outside"]), "the sandbox could write outside its dir"
    assert "NET:[]" in all_outputs(batch["network"]), "the sandbox reached the network"
    assert batch["_leaked_paths"] == []
