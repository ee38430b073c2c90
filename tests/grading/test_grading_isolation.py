"""The review's attacks on the sandbox, in process mode (as root here) and in bubblewrap.

Each test builds its submission programmatically, grades it, and asserts the score, the
message, and that no sandboxed process and no work directory is left behind.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from bncourse.grading.grader import Grader, Submission, collect_submissions, grade_batch
from bncourse.grading.sandbox import detect_sandbox, student_python

from grading_helpers import (PATHS, ROOT, TEST_LIMITS, all_outputs, answer_source,
                             full_directory, load, runner_leftovers, with_answer, write_nb)

SIG = "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module", params=["process", "bwrap"])
def mode_grader(request):
    try:
        sandbox = detect_sandbox(request.param)
    except ValueError as err:
        pytest.skip(f"{request.param} sandbox not usable here: {err}")
    return Grader(PATHS["hidden"], PATHS["templates"], sandbox, TEST_LIMITS)


@pytest.fixture(autouse=True)
def scratch(monkeypatch, tmp_path):
    """Work directories of this test go to a fresh directory (``tmp_path`` stays where it was)."""
    base = tempfile.mkdtemp(prefix="bncourse-isolation-test-")
    os.chmod(base, 0o711)  # nobody must reach its work directory inside
    monkeypatch.setattr(tempfile, "tempdir", base)
    yield Path(base)
    monkeypatch.undo()
    procs, dirs = runner_leftovers(base)
    os.rmdir(base) if not dirs else None
    assert procs == [], procs
    assert dirs == [], dirs


def _grade(grader: Grader, tmp_path: Path, name: str, body: str) -> dict:
    path = write_nb(tmp_path / f"{name}.ipynb", with_answer("ex01", body))
    results = grader.grade(Submission(name, path))
    assert runner_leftovers(tempfile.gettempdir()) == ([], [])
    return results


def test_import_cheat_finds_no_course_code(mode_grader, tmp_path):
    # The review's cheat: put the grader's site-packages (and the checkout) on sys.path, then
    # answer with the course's own reference implementation.
    sites = str(Path(sys.prefix) / "lib" / "python3*" / "site-packages")
    body = (f"import sys, glob\nsys.path[:0] = glob.glob({sites!r}) + [{str(ROOT)!r}]\n"
            "from bncourse.functional import batchnorm_forward as _reference\n"
            + SIG + "    return _reference(x, gamma, beta, eps)\n")
    results = _grade(mode_grader, tmp_path, "import_cheat", body)
    assert results["score"] == 0.0
    text = all_outputs(results)
    assert "No module named 'bncourse'" in text or "PermissionError" in text, text[:1500]


class _Listener(threading.Thread):
    """A TCP listener on 127.0.0.1 that records every connection it accepts."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stop = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.sock.close()


def test_no_socket_to_localhost(mode_grader, tmp_path):
    listener = _Listener()
    try:
        body = ("import socket\ntry:\n"
                f"    socket.create_connection(('127.0.0.1', {listener.port}), timeout=2).sendall(b'LEAK')\n"
                "    net = 'connected'\nexcept OSError as err:\n    net = type(err).__name__\n"
                "raise RuntimeError(f'NET:{net}')\n")
        results = _grade(mode_grader, tmp_path, "socket", body)
    finally:
        listener.close()
    assert listener.accepted == 0
    assert results["score"] == 0.0
    assert "NET:PermissionError" in all_outputs(results)  # seccomp: no socket of any family


def test_no_write_to_tmp(mode_grader, tmp_path):
    token = uuid.uuid4().hex
    targets = [f"/tmp/bncourse-attack-{token}", f"/var/tmp/bncourse-attack-{token}",
               f"/dev/shm/bncourse-attack-{token}"]
    body = (f"written = []\nfor p in {targets!r}:\n    try:\n        open(p, 'w').write('x')\n"
            "        written.append(p)\n    except OSError:\n        pass\n"
            "raise RuntimeError(f'WROTE:{written}')\n")
    try:
        results = _grade(mode_grader, tmp_path, "tmp_write", body)
        assert [p for p in targets if os.path.exists(p)] == []
    finally:
        for p in targets:
            if os.path.exists(p):
                os.unlink(p)
    assert results["score"] == 0.0
    assert "WROTE:[]" in all_outputs(results)


def _peak_rss_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set size
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def test_events_flood_without_newlines_keeps_the_grader_small(mode_grader, tmp_path):
    # 1.5 GiB into the events pipe, never a newline: the trusted reader must not buffer it.
    body = ("import os, sys\nfd = int(sys.argv[3])\nchunk = b'x' * (1 << 20)\n"
            "for _ in range(1536):\n    os.write(fd, chunk)\n" + answer_source("ex01"))
    if not _peak_rss_reset():
        pytest.skip("cannot reset the peak RSS counter here (/proc/self/clear_refs)")
    before = _peak_rss_mb()
    results = _grade(mode_grader, tmp_path, "events_flood", body)
    growth = _peak_rss_mb() - before
    assert growth < 64, f"the grader's peak RSS grew by {growth:.0f} MB"
    assert results["score"] == 0.0
    assert "printed more than" in results["output"]


def test_unlinked_files_cannot_hide_disk_use(mode_grader, tmp_path):
    # Each way to hold file data without a name in the working directory, then 300 MB into them.
    body = ("import os\nheld, tried = [], []\n"
            "try:\n    f = open('big', 'wb'); os.unlink('big'); held.append(f.fileno()); tried.append('unlink')\n"
            "except OSError as err:\n    tried.append(type(err).__name__)\n"
            "try:\n    held.append(os.open('.', os.O_TMPFILE | os.O_WRONLY, 0o600)); tried.append('tmpfile')\n"
            "except OSError as err:\n    tried.append(type(err).__name__)\n"
            "try:\n    held.append(os.memfd_create('x')); tried.append('memfd')\n"
            "except OSError as err:\n    tried.append(type(err).__name__)\n"
            "for fd in held:\n    for _ in range(50):\n        os.write(fd, b'x' * (1 << 20))\n"
            "raise RuntimeError(f'UNLINKED:{tried}')\n")
    results = _grade(mode_grader, tmp_path, "unlinked", body)
    assert results["score"] == 0.0
    assert "UNLINKED:['PermissionError', 'PermissionError', 'PermissionError']" in all_outputs(results)


def test_student_code_is_never_root(mode_grader, tmp_path):
    body = ("import os\nraise RuntimeError(f'IDS:{os.getuid()},{os.geteuid()},{os.getgid()},{os.getgroups()}')\n")
    results = _grade(mode_grader, tmp_path, "ids", body)
    text = all_outputs(results)
    ids = text[text.index("IDS:") + 4:].split(")")[0]
    uid, euid = (int(v) for v in ids.split(",")[:2])
    assert uid != 0 and euid != 0, ids
    ready = results["extra_data"]["bncourse"]["protections"]
    assert ready["seccomp"].startswith("installed") and ready["uid"] != 0


def test_solutions_full_marks_and_stubs_zero_in_process_mode(tmp_path):
    try:
        sandbox = detect_sandbox("process")
    except ValueError as err:
        pytest.skip(f"process sandbox not usable here: {err}")
    grader = Grader(PATHS["hidden"], PATHS["templates"], sandbox, TEST_LIMITS,
                    exercises=[f"ex0{i}" for i in range(1, 9)])
    solved = grader.grade(Submission("solved", full_directory(tmp_path / "solved")))
    assert solved["score"] == 80.0, solved["output"]
    stubs = full_directory(tmp_path / "stubs", {f"ex0{i}": load(f"ex0{i}", "templates") for i in range(1, 9)})
    assert grader.grade(Submission("stubs", stubs))["score"] == 0.0


NON_ROOT_GRADER = """
import json, sys
sys.path[:0] = {paths!r}
from pathlib import Path
from bncourse.grading.grader import Grader, Submission, collect_submissions, grade_batch
from bncourse.grading.sandbox import detect_sandbox, Limits
sandbox = detect_sandbox("process")
grader = Grader(Path({hidden!r}), Path({templates!r}), sandbox, Limits(timeout=4.0))
out = {{name: grader.grade(Submission(name, Path({subs!r}) / (name + ".ipynb"))) for name in ("good", "cheat")}}
print(json.dumps({{"kind": sandbox.kind, "run_as": sandbox.run_as, "warnings": sandbox.warnings,
                   "scores": {{k: v["score"] for k, v in out.items()}},
                   "cheat": "\\n".join(t["output"] for t in out["cheat"]["tests"])}}))
"""


def test_process_mode_as_a_non_root_grader(scratch):
    """The grader itself run as nobody: student code gets the same uid, Landlock still hides the course."""
    if not IS_ROOT:
        pytest.skip("needs root to start the grader as another user")
    try:
        env = student_python(run_as=(65534, 65534))
    except ValueError as err:
        pytest.skip(f"no Python that nobody can run: {err}")
    home = scratch / "nobody"  # the non-root grader's submissions and temporary directories
    subs = home / "subs"
    write_nb(subs / "good.ipynb", with_answer("ex01", answer_source("ex01")))
    cheat = (f"import sys\nsys.path[:0] = [{str(ROOT)!r}]\nfrom bncourse.functional import batchnorm_forward as f\n"
             + SIG + "    return f(x, gamma, beta, eps)\n")
    write_nb(subs / "cheat.ipynb", with_answer("ex01", cheat))
    for path in (home, subs, *subs.iterdir()):
        os.chown(path, 65534, 65534)
    site = [p for p in sys.path if p.endswith("site-packages")]
    script = NON_ROOT_GRADER.format(paths=[str(ROOT), *site], hidden=str(PATHS["hidden"]),
                                    templates=str(PATHS["templates"]), subs=str(subs))
    try:
        done = subprocess.run([env.python, "-I", "-S", "-c", script], capture_output=True, timeout=300,
                              user=65534, group=65534, extra_groups=[], cwd="/",
                              env={"PATH": "/usr/bin:/bin", "TMPDIR": str(home)})
        left = sorted(p.name for p in home.iterdir() if p.name != "subs")
    finally:
        shutil.rmtree(home)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert left == []
    report = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert report["kind"] == "process" and report["run_as"] is None
    assert report["scores"] == {"good": 10.0, "cheat": 0.0}, report
    assert "No module named 'bncourse'" in report["cheat"] or "PermissionError" in report["cheat"]


FROM_A_VENV = """
import json, os, shutil, sys, tempfile, types
from pathlib import Path
# No NumPy in this venv: make the packages without running their __init__ (which imports NumPy).
for name, path in (("bncourse", {package!r}), ("bncourse.grading", {package!r} + "/grading")):
    module = types.ModuleType(name)
    module.__path__ = [path]
    sys.modules[name] = module
import bncourse.grading.sandbox as sb
env = sb.student_python(packages=(), for_bwrap=True)
run_as = sb._nobody() if os.geteuid() == 0 else None
box = sb.Sandbox("bwrap", env.python, [], ro_binds=list(env.prefixes), hide=sb.site_dirs_to_hide(list(env.prefixes)),
                 run_as=run_as, stdlib=list(env.stdlib), bwrap=shutil.which("bwrap"))
with tempfile.TemporaryDirectory() as tmp:
    os.chmod(tmp, 0o711)
    box.prepare(Path(tmp))
    code = ("import os, sys\\n"
            "raise RuntimeError('RAN:%d.%d:%d' % (sys.version_info[0], sys.version_info[1], os.getuid()))")
    result = box.run(Path(tmp), "cells", {{"cells": [{{"label": "v", "code": code}}]}}, sb.Limits(timeout=20))
    if run_as:
        for root, dirs, files in os.walk(tmp):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.lchown(name, 0, 0)
cell = [e for e in result.events if e.get("ev") == "cell"]
print(json.dumps({{"python": env.python, "venv": sys.prefix, "msg": cell[0]["msg"] if cell else result.output}}))
"""


@pytest.mark.parametrize("version", ["3.10", "3.11"])
def test_bwrap_starts_from_a_venv_of_each_python(version, tmp_path):
    """Python 3.10's venv launcher is not the interpreter: the sandbox must use the real one."""
    if shutil.which("bwrap") is None:
        pytest.skip("bwrap is not installed")
    here = detect_sandbox("auto")
    if here.kind != "bwrap":  # e.g. Docker's seccomp profile: no user namespaces
        pytest.skip(f"bubblewrap cannot run here, so the grader uses {here.kind} mode: {' '.join(here.warnings)[:200]}")
    bases = sorted(glob.glob(f"/root/.pyenv/versions/{version}.*/bin/python{version}")) + [
        p for p in (shutil.which(f"python{version}"),) if p]
    if not bases:
        pytest.skip(f"no Python {version} on this machine")
    venv = tmp_path / "venv"
    subprocess.run([bases[0], "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    script = FROM_A_VENV.format(package=str(ROOT / "bncourse"))
    done = subprocess.run([str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if "RAN:" not in report["msg"] and ("namespace" in report["msg"] or "Operation not permitted" in report["msg"]):
        pytest.skip(f"bubblewrap cannot create namespaces here: {report['msg'][:200]}")
    assert not report["python"].startswith(str(venv)), report
    ran = report["msg"].split("RAN:")[1].split(" ")[0].rstrip(")")
    assert ran.split(":")[0] == version and ran.split(":")[1] != "0", report


SYSCALLS_AFTER_FILTER = """
import ctypes, errno, json, os, socket, sys
sys.path.insert(0, {grading!r})
import runner
status = runner.install_bpf() if {fallback!r} else runner.install_seccomp()
libc = ctypes.CDLL(None, use_errno=True)
def denied(nr, *args):
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return rc == -1 and ctypes.get_errno() == errno.EPERM
tried = {{}}
for family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX, socket.AF_NETLINK, getattr(socket, "AF_VSOCK", 40)):
    try:
        socket.socket(family, socket.SOCK_STREAM if family != socket.AF_NETLINK else socket.SOCK_RAW).close()
        tried[f"socket{{int(family)}}"] = False
    except PermissionError:
        tried[f"socket{{int(family)}}"] = True
    except OSError:
        tried[f"socket{{int(family)}}"] = "other error"
try:
    os.fork()
    tried["fork"] = False
except PermissionError:
    tried["fork"] = True
try:
    os.kill(os.getppid(), 0)
    tried["kill_parent"] = False
except PermissionError:
    tried["kill_parent"] = True
os.kill(os.getpid(), 0)  # itself: allowed
if not {fallback!r}:  # x86-64 numbers
    for name, nr in (("io_uring_setup", 425), ("perf_event_open", 298), ("keyctl", 250), ("ptrace", 101),
                     ("bpf", 321), ("unlink", 87), ("memfd_create", 319)):
        tried[name] = denied(nr, 0, 0, 0, 0, 0)
print(json.dumps({{"status": status, "tried": tried}}))
"""


@pytest.mark.parametrize("fallback", [False, True], ids=["libseccomp", "fallback-bpf"])
def test_seccomp_filter_denies_what_it_lists(fallback):
    import platform

    if not sys.platform.startswith("linux") or platform.machine() != "x86_64":
        pytest.skip("the syscall numbers below are x86-64's")
    script = SYSCALLS_AFTER_FILTER.format(grading=str(ROOT / "bncourse" / "grading"), fallback=fallback)
    done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if not fallback and "libseccomp" not in report["status"]:
        pytest.skip(f"libseccomp is not installed here: {report['status']}")
    assert report["status"].startswith("installed"), report
    assert all(v is True for v in report["tried"].values()), report


@pytest.mark.parametrize("mode", ["process", "bwrap"])
def test_torch_is_offered_only_when_asked(mode, scratch):
    """By default student code cannot import torch; a sandbox made with packages=("numpy", "torch") can."""
    pytest.importorskip("torch")
    code = "import torch\nassert float(torch.nn.BatchNorm1d(4)(torch.randn(8, 4)).mean().abs()) < 1e-5\n"
    outcome = {}
    for packages in (("numpy",), ("numpy", "torch")):
        try:
            sandbox = detect_sandbox(mode, packages=packages)
        except ValueError as err:
            pytest.skip(f"{mode} sandbox not usable here: {err}")
        workdir = Path(tempfile.mkdtemp())
        try:
            sandbox.prepare(workdir)
            result = sandbox.run(workdir, "cells", {"cells": [{"label": "torch", "code": code}]},
                                 TEST_LIMITS.__class__(timeout=60.0, memory_mb=2048), per_exercise=False)
        finally:
            shutil.rmtree(workdir)
        cell = [e for e in result.events if e.get("ev") == "cell"]
        outcome[packages] = cell[0] if cell else {"ok": None, "msg": result.output[-300:]}
    assert "No module named 'torch'" in outcome[("numpy",)].get("msg", ""), outcome
    assert outcome[("numpy", "torch")]["ok"] is True, outcome


def test_runs_side_by_side_cannot_touch_each_other(scratch, tmp_path, monkeypatch):
    """Two students graded at once as root, Landlock off: each launch has its own uid, so neither
    can read or change the other's working directory (plan, inputs, outputs)."""
    if not IS_ROOT:
        pytest.skip("separate uids per launch need a root grader")
    try:
        sandbox = detect_sandbox("process")
    except ValueError as err:
        pytest.skip(f"process sandbox not usable here: {err}")
    sandbox.landlock = False  # what is left where the kernel has no Landlock
    os.chmod(scratch, 0o755)  # listable, like /tmp
    grader = Grader(PATHS["hidden"], PATHS["templates"], sandbox, TEST_LIMITS)
    victim = "import time\ntime.sleep(3)\n" + answer_source("ex01")
    spy = ("import glob, os, time\nseen = []\nend = time.time() + 3\n"
           "while time.time() < end and not seen:\n"
           f"    for plan in glob.glob({str(scratch)!r} + '/bncourse-grade-*/plan.json'):\n"
           "        if os.path.dirname(plan) != os.getcwd():\n"
           "            try:\n                open(plan).read(); seen.append('read')\n"
           "            except OSError:\n                pass\n"
           "            try:\n                open(os.path.join(os.path.dirname(plan), 'out', 'x'), 'w').write('x')\n"
           "                seen.append('wrote')\n            except OSError:\n                pass\n"
           "    time.sleep(0.05)\n"
           "raise RuntimeError(f'SPY:{seen}')\n")
    subs = [write_nb(tmp_path / f"{name}.ipynb", with_answer("ex01", body))
            for name, body in (("victim", victim), ("spy", spy))]
    out = tmp_path / "out"
    grade_batch(grader, collect_submissions(subs), out, jobs=2, progress=None)
    victim_results = json.loads((out / "victim" / "results.json").read_text())
    spy_results = json.loads((out / "spy" / "results.json").read_text())
    assert victim_results["score"] == 10.0
    assert "SPY:[]" in all_outputs(spy_results), all_outputs(spy_results)[:1000]


def test_time_limit_counts_cpu_not_waiting(mode_grader, tmp_path):
    """5 s of waiting in an exercise limited to 4 s: CPU time is the limit, so a correct answer on a
    busy or shared core keeps its marks; burning CPU still times out (test_no_process_outlives_a_timeout)."""
    assert mode_grader.limits.timeout == 4.0
    body = "import time\ntime.sleep(5)\n" + answer_source("ex01")
    results = _grade(mode_grader, tmp_path, "waits", body)
    assert results["score"] == 10.0, results["output"]


KILLED_GRADER = """
import sys
sys.path[:0] = {paths!r}
import tempfile
tempfile.tempdir = {scratch!r}
from pathlib import Path
from bncourse.grading.grader import Grader, Submission
from bncourse.grading.sandbox import detect_sandbox, Limits
grader = Grader(Path({hidden!r}), Path({templates!r}), detect_sandbox("process"), Limits(timeout=60.0))
print("grading", flush=True)
grader.grade(Submission("sleeper", Path({sub!r})))
"""


def test_no_run_outlives_a_killed_grader(scratch, tmp_path):
    """The grader killed with SIGKILL mid-run (no cleanup code runs): its sandboxed process dies too."""
    sub = write_nb(tmp_path / "sleeper.ipynb", with_answer("ex01", "import time\ntime.sleep(60)\n"))
    script = KILLED_GRADER.format(paths=[str(ROOT)], scratch=str(scratch), hidden=str(PATHS["hidden"]),
                                  templates=str(PATHS["templates"]), sub=str(sub))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def grading() -> list[bytes]:  # the sandboxed grading run (not the sandbox's start-up probe)
            return [c for c in runner_leftovers(str(scratch))[0] if b"bncourse-grade-" in c]

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not grading():
            time.sleep(0.1)
        assert grading(), proc.stderr.read1(4000) if proc.poll() is not None else "no run started"
        time.sleep(1.0)  # well into its sleep
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and runner_leftovers(str(scratch))[0]:
        time.sleep(0.1)
    assert runner_leftovers(str(scratch))[0] == []
    for leftover in scratch.iterdir():  # a killed grader cannot clean up its work directory
        shutil.rmtree(leftover)


def test_bwrap_is_chosen_wherever_bwrap_itself_works():
    """A regression in the bubblewrap set-up must fail here, not turn the bwrap tests into skips."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.skip("bwrap is not installed")
    plain = subprocess.run([bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "true"],
                           capture_output=True, timeout=30)
    if plain.returncode != 0:
        pytest.skip(f"bwrap cannot create namespaces here: {plain.stderr[-200:]!r}")
    sandbox = detect_sandbox("auto")
    assert sandbox.kind == "bwrap", sandbox.warnings
    assert sandbox.probe["ready"]["uid"] != 0 and sandbox.probe["ready"]["seccomp"].startswith("installed")
