"""Running untrusted code: bubblewrap when it works, a limited plain process otherwise.

Protection layers, outermost first:

1. **bubblewrap** (``bwrap``, Linux): a new mount, PID, network, IPC, UTS and
   user namespace. The sandbox sees a read-only ``/usr`` (with any
   ``site-packages`` under it hidden), the interpreter's prefix, NumPy alone at
   ``/pylib``, and its own working directory at ``/sandbox`` -- the only
   writable place (the root and ``/dev`` are remounted read-only). The repository, the hidden tests and the solutions are simply
   not there. ``--die-with-parent``, ``--new-session`` and the PID namespace mean it
   cannot signal the grader or outlive it.
2. **The runner itself** (``runner.py``) lowers its resource limits
   (``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_FSIZE``, ``RLIMIT_NPROC``,
   ``RLIMIT_CORE``) and installs a seccomp filter (no new processes, no signals to
   others, no ptrace) before any student code runs.
3. **This module**, in the trusted process: a wall-clock limit per exercise and per
   launch, a cap on output read through the pipe, and a kill of the whole
   process group (which takes the PID namespace with it) when any is exceeded.

Where bubblewrap is missing or unusable (e.g. inside Docker without user
namespaces), :func:`detect_sandbox` falls back to layers 2 and 3 only, runs as
``nobody`` when the grader is root and the interpreter allows it, and lists what
is then *not* protected in :attr:`Sandbox.warnings`, which the grader prints and
copies into every result.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Limits", "Sandbox", "LaunchResult", "detect_sandbox", "RUNNER"]

RUNNER = Path(__file__).with_name("runner.py")
NOBODY = 65534
BASE_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@dataclass(frozen=True)
class Limits:
    """Resource limits of one submission's run.

    Attributes:
        timeout: wall-clock seconds allowed for each exercise (all its hidden cases).
        memory_mb: address-space limit (``RLIMIT_AS``) of the sandboxed process.
        output_bytes: stdout + stderr the grader reads before killing the run.
        file_mb: largest file the run may write (``RLIMIT_FSIZE``).
        disk_mb, max_files: what the working directory may hold; checked every
            0.2 s by the trusted process, which kills the run beyond either.
        startup: extra wall-clock seconds per launch for interpreter and NumPy start-up.
    """

    timeout: float = 10.0
    memory_mb: int = 1024
    output_bytes: int = 1_000_000
    file_mb: int = 64
    disk_mb: int = 256
    max_files: int = 2000
    startup: float = 10.0

    def rlimits(self, exercises: int, nproc: int | None) -> dict[str, list[int]]:
        cpu = int(self.timeout * max(exercises, 1) + self.startup)
        limits = {
            "RLIMIT_CPU": [cpu, cpu + 1],
            "RLIMIT_AS": [self.memory_mb << 20] * 2,
            "RLIMIT_FSIZE": [self.file_mb << 20] * 2,
            "RLIMIT_CORE": [0, 0],
        }
        if nproc is not None:
            limits["RLIMIT_NPROC"] = [nproc, nproc]
        return limits


@dataclass
class LaunchResult:
    """What came back from one run of the runner.

    ``events`` are the runner's JSON progress lines (trusted for messages only);
    ``killed`` is ``None`` or ``"timeout"``, ``"output"``, ``"total-timeout"``, ``"disk"``;
    ``exercise``/``case`` say where the run was when it ended or was killed.
    """

    events: list[dict[str, Any]]
    output: str
    output_bytes: int
    returncode: int | None
    killed: str | None
    seconds: float
    exercise: str | None = None
    case: int | None = None


@dataclass
class Sandbox:
    """How to run the runner: ``kind`` is ``"bwrap"``, ``"process"``, or ``"local"``.

    ``"local"`` is for ``bncourse check`` on a student's own machine: the student's
    interpreter and packages, no limits but the wall clock.
    """

    kind: str
    python: str
    numpy_dirs: list[Path]
    ro_binds: list[Path] = field(default_factory=list)
    hide: list[Path] = field(default_factory=list)
    run_as: tuple[int, int] | None = None
    nproc: int | None = None
    warnings: list[str] = field(default_factory=list)

    # -- layout inside the sandbox -------------------------------------------------
    def inside(self, workdir: Path) -> Path:
        """The working directory's path as the sandboxed process sees it."""
        return Path("/sandbox") if self.kind == "bwrap" else workdir

    def pylib(self, workdir: Path) -> Path:
        return Path("/pylib") if self.kind == "bwrap" else workdir / "pylib"

    def prepare(self, workdir: Path) -> None:
        """Copy the runner in; in process mode, link NumPy into ``pylib`` and hand the dir to ``run_as``."""
        shutil.copyfile(RUNNER, workdir / "runner.py")
        (workdir / "out").mkdir(exist_ok=True)
        if self.kind == "local":
            return
        if self.kind == "process":
            pylib = workdir / "pylib"
            pylib.mkdir(exist_ok=True)
            for d in self.numpy_dirs:
                link = pylib / d.name
                if not link.exists():
                    link.symlink_to(d, target_is_directory=True)
        if self.run_as is not None:
            uid, gid = self.run_as
            for root, dirs, files in os.walk(workdir):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.lchown(name, uid, gid)

    def command(self, workdir: Path, args: list[str]) -> list[str]:
        if self.kind == "local":
            return [self.python, str(workdir / "runner.py"), *args]
        inner = [self.python, "-I", "-S", str(self.inside(workdir) / "runner.py"), *args]
        if self.kind != "bwrap":
            return inner
        cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
               "--uid", str(NOBODY), "--gid", str(NOBODY), "--hostname", "sandbox",
               "--ro-bind", "/usr", "/usr"]
        for name in ("bin", "lib", "lib64", "lib32", "sbin"):
            path = Path("/") / name
            if path.is_symlink():
                cmd += ["--symlink", os.readlink(path), str(path)]
            elif path.is_dir():
                cmd += ["--ro-bind", str(path), str(path)]
        cmd += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        for path in self.ro_binds:
            cmd += ["--ro-bind", str(path), str(path)]
        for path in self.hide:
            cmd += ["--tmpfs", str(path), "--remount-ro", str(path)]
        for d in self.numpy_dirs:
            cmd += ["--ro-bind", str(d), f"/pylib/{d.name}"]
        # /dev and the root are tmpfs mounts made by bwrap: read-only, so that the working
        # directory (size-watched by the grader) is the only place the code can write.
        cmd += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
                "--bind", str(workdir), "/sandbox", "--remount-ro", "/", "--chdir", "/sandbox", "--clearenv"]
        for key, value in {**BASE_ENV, "HOME": "/sandbox"}.items():
            cmd += ["--setenv", key, value]
        return cmd + ["--", *inner]

    # -- running ----------------------------------------------------------------------
    def run(self, workdir: Path, mode: str, plan: dict[str, Any], limits: Limits,
            exercises: int = 1, per_exercise: bool = True) -> LaunchResult:
        """Run ``runner.py MODE plan.json`` in ``workdir`` under all limits.

        ``plan`` gets the protections (rlimits, seccomp, NumPy path) added and is
        written as ``plan.json``. With ``per_exercise``, a run still inside one
        exercise after ``limits.timeout`` seconds is killed; a run is always
        killed after ``limits.timeout * exercises + limits.startup`` seconds.
        """
        plan = dict(plan)
        if self.kind != "local":
            plan["limits"] = limits.rlimits(exercises, self.nproc)
            plan["seccomp"] = True
            plan["sys_path"] = [str(self.pylib(workdir))]
        plan_path = workdir / "plan.json"
        plan_path.write_text(json.dumps(plan), encoding="utf-8")
        if self.run_as is not None:
            os.lchown(plan_path, *self.run_as)
        r_events, w_events = os.pipe()
        env = ({**os.environ, "MPLBACKEND": "Agg"} if self.kind == "local"
               else {**BASE_ENV, "HOME": str(self.inside(workdir))})
        kwargs: dict[str, Any] = {}
        if self.run_as is not None and self.kind == "process":
            kwargs.update(user=self.run_as[0], group=self.run_as[1], extra_groups=[])
        args = [mode, str(self.inside(workdir) / "plan.json"), str(w_events)]
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                self.command(workdir, args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, pass_fds=(w_events,), cwd=workdir, env=env,
                start_new_session=True, **kwargs)
        finally:
            os.close(w_events)
        output = _CappedReader(proc.stdout, limits.output_bytes)
        events = _EventReader(os.fdopen(r_events, "rb"))
        total_budget = limits.timeout * max(exercises, 1) + limits.startup
        killed = None
        next_disk_check = started + 0.2
        while proc.poll() is None:
            now = time.monotonic()
            if now >= next_disk_check:
                next_disk_check = now + 0.2
                size, count = _usage(workdir, limits.max_files)
                if size > limits.disk_mb << 20 or count > limits.max_files:
                    killed = "disk"
                    break
            if per_exercise and events.current_since is not None and now - events.current_since > limits.timeout:
                killed = "timeout"
            elif now - started > total_budget:
                killed = "total-timeout"
            elif output.exceeded:
                killed = "output"
            if killed:
                break
            time.sleep(0.01)
        _kill_group(proc)
        proc.wait()
        output.join(1.0)
        events.join(1.0)
        return LaunchResult(
            events=events.events, output=output.text(), output_bytes=output.total,
            returncode=proc.returncode, killed=killed, seconds=time.monotonic() - started,
            exercise=events.exercise, case=events.case)


def _usage(root: Path, max_entries: int) -> tuple[int, int]:
    """Bytes and entries under ``root`` (symlinks not followed), counting at most ``max_entries + 1``."""
    size, count, stack = 0, 0, [str(root)]
    while stack and count <= max_entries:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    count += 1
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        size += entry.stat(follow_symlinks=False).st_size
                    if count > max_entries:
                        break
        except OSError:
            continue
    return size, count


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group; bwrap's PID namespace dies with its init."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _CappedReader(threading.Thread):
    """Drains a pipe, keeping the first ``limit`` bytes and counting the rest."""

    KEEP = 16_384

    def __init__(self, stream: Any, limit: int) -> None:
        super().__init__(daemon=True)
        self.stream, self.limit = stream, limit
        self.head = bytearray()
        self.total = 0
        self.start()

    @property
    def exceeded(self) -> bool:
        return self.total > self.limit

    def run(self) -> None:
        try:
            while True:
                chunk = self.stream.read1(65536) if hasattr(self.stream, "read1") else self.stream.read(65536)
                if not chunk:
                    break
                self.total += len(chunk)
                if len(self.head) < self.KEEP:
                    self.head += chunk[: self.KEEP - len(self.head)]
        except (OSError, ValueError):
            pass
        finally:
            try:
                self.stream.close()
            except OSError:
                pass

    def text(self) -> str:
        return self.head.decode("utf-8", "replace")


class _EventReader(threading.Thread):
    """Parses the runner's JSON lines; tracks which exercise and case are running."""

    MAX_BYTES = 4_000_000

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.events: list[dict[str, Any]] = []
        self.exercise: str | None = None
        self.case: int | None = None
        self.current_since: float | None = None
        self.start()

    def run(self) -> None:
        read = 0
        try:
            for line in self.stream:
                read += len(line)
                if read > self.MAX_BYTES:
                    break
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                self.events.append(event)
                kind = event.get("ev")
                if kind == "start":
                    self.exercise, self.case = str(event.get("ex")), None
                    self.current_since = time.monotonic()
                elif kind == "case_start" and isinstance(event.get("case"), int):
                    self.case = event["case"]
                elif kind == "end":
                    self.current_since = None
        except (OSError, ValueError):
            pass
        finally:
            self.stream.close()


# -- choosing a sandbox --------------------------------------------------------------


def _numpy_dirs() -> list[Path]:
    import numpy

    root = Path(numpy.__file__).resolve().parent
    dirs = [root]
    libs = root.with_name("numpy.libs")
    if libs.is_dir():
        dirs.append(libs)
    return dirs


def _interpreter() -> tuple[str, list[Path]]:
    """The base interpreter (not a venv launcher) and the prefix directories it needs."""
    base = Path(getattr(sys, "_base_executable", sys.executable) or sys.executable)
    candidates = [base, Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"]
    python = next((p for p in candidates if p.exists()), Path(sys.executable))
    prefixes = {Path(sys.base_prefix).resolve(), Path(sys.base_exec_prefix).resolve()}
    real = python.resolve()
    binds = sorted(p for p in prefixes if not str(p).startswith("/usr/") and str(p) != "/usr")
    if not any(str(real).startswith(str(p) + os.sep) for p in binds) and not str(real).startswith("/usr/"):
        binds.append(real.parent)
    return str(python), binds


def _site_dirs_to_hide(binds: list[Path]) -> list[Path]:
    """Site-packages visible through a read-only bind (e.g. /usr/local/...): hidden behind a tmpfs."""
    roots = [Path("/usr"), *binds]
    found = set()
    for key in ("purelib", "platlib"):
        base_paths = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})
        for scheme_path in {sysconfig.get_paths()[key], base_paths[key]}:
            path = Path(scheme_path).resolve()
            if path.is_dir() and any(path == r or r in path.parents for r in roots):
                found.add(path)
    for p in sys.path:
        path = Path(p).resolve() if p else None
        if path and path.name in ("site-packages", "dist-packages") and path.is_dir() and any(
                r in path.parents for r in roots):
            found.add(path)
    return sorted(found)


def _probe(sandbox: Sandbox) -> str | None:
    """Start the sandbox once and import NumPy in it; ``None`` if that works, else why not."""
    with tempfile.TemporaryDirectory(prefix="bncourse-probe-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        try:
            sandbox.prepare(workdir)
            result = sandbox.run(workdir, "cells", {"cells": [{"label": "probe", "code": "import numpy"}]},
                                 Limits(timeout=20.0), per_exercise=False)
        except OSError as err:
            return f"cannot start it ({err})"
        finally:
            if sandbox.run_as is not None:
                for root, dirs, files in os.walk(workdir):
                    for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                        try:
                            os.lchown(name, os.getuid(), os.getgid())
                        except OSError:
                            pass
        ok = [e for e in result.events if e.get("ev") == "cell" and e.get("ok")]
        if ok:
            return None
        return (result.output.strip().splitlines() or [f"exit code {result.returncode}"])[-1][:300]


def _count_processes(uid: int) -> int:
    count = 0
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def detect_sandbox(mode: str = "auto") -> Sandbox:
    """Pick and probe the sandbox. ``mode``: ``"auto"``, ``"bwrap"`` (required) or ``"process"``.

    Raises ``ValueError`` if ``"bwrap"`` is required but unusable.
    """
    if mode not in ("auto", "bwrap", "process"):
        raise ValueError(f"expected sandbox mode auto, bwrap or process, got {mode!r}")
    python, binds = _interpreter()
    numpy_dirs = _numpy_dirs()
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    # RLIMIT_NPROC counts every process of the real uid and does not bind root; the seccomp
    # filter is what stops fork bombs. The limit is a second layer for non-root graders.
    nproc = None if is_root or not hasattr(os, "getuid") else _count_processes(os.getuid()) + 64
    reason = None
    if mode in ("auto", "bwrap"):
        if not sys.platform.startswith("linux"):
            reason = "bubblewrap needs Linux"
        elif shutil.which("bwrap") is None:
            reason = "bwrap is not installed (Debian/Ubuntu: apt-get install -y bubblewrap)"
        else:
            candidate = Sandbox("bwrap", python, numpy_dirs, ro_binds=binds,
                                hide=_site_dirs_to_hide(binds), nproc=nproc)
            reason = _probe(candidate)
            if reason is None:
                return candidate
            reason = f"bwrap is installed but does not work here: {reason}"
        if mode == "bwrap":
            raise ValueError(f"expected a working bubblewrap sandbox: {reason}")
    sandbox = Sandbox("process", python, numpy_dirs, nproc=nproc)
    if is_root:
        trial = Sandbox("process", python, numpy_dirs, run_as=(NOBODY, NOBODY))
        if _probe(trial) is None:
            sandbox = trial
    who = ("root" if is_root and sandbox.run_as is None
           else "nobody" if sandbox.run_as else f"uid {os.getuid()}")
    sandbox.warnings = [
        "NOT SANDBOXED: " + (reason or "the plain-process sandbox was requested") + ".",
        f"Student code runs as an ordinary process (as {who}) with resource limits, a wall-clock "
        "limit, its own session, and a seccomp filter against new processes and signals "
        "(on Linux x86-64/arm64). It is NOT protected from: reading any file that user can read "
        "(the hidden tests and solutions, unless their permissions forbid it), writing where that "
        "user can write, and using the network.",
    ]
    if is_root and sandbox.run_as is None:
        sandbox.warnings.append(
            "It runs AS ROOT (the interpreter is not usable by 'nobody'), so it can also raise its "
            "own resource limits and write any file.")
    return sandbox
