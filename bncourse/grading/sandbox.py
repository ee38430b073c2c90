"""Running untrusted code: one isolation design, with bubblewrap where it works and without.

What holds in **both** modes (``"bwrap"`` and ``"process"``):

- **Never root.** When the grader is root, each launch runs as a uid/gid of its own
  (from systemd's dynamic range 61184-65519: no account, no files elsewhere), owning its
  0700 working directory, so runs side by side cannot read or change each other's files:
  in process mode the child is started with that uid/gid and no supplementary groups;
  inside bubblewrap (started by root without a user namespace, so no uid 0 is *mapped*
  in either) the runner drops to it before anything else.
- **A separate interpreter environment** (:class:`StudentPython`): the base interpreter
  (its real path, never a venv launcher) started with ``-I -S -B``, so no ``site``,
  no ``.pth`` files, no environment variables, no user site; ``sys.path`` is its
  standard library plus one directory holding *only* the allowed packages (NumPy;
  others only when asked for). ``bncourse``, the grader's venv, the hidden cases and
  the solutions are not on it. An instructor can name a dedicated environment with
  ``BNCOURSE_STUDENT_PYTHON`` (the Gradescope bundle builds one with only NumPy).
- **Landlock** (Linux >= 5.13, applied by ``runner.py``): reading is allowed only in
  the standard library (not its ``site-packages``), the allowed packages and the shared
  libraries; writing only in the working directory; TCP and signals outside the
  process are denied too on newer kernels. This is what makes the grader's own files
  unreadable in process mode even where their permissions would allow it.
- **seccomp** through libseccomp (rules written by syscall name, so every architecture
  libseccomp knows works), else a hand-written BPF for x86-64/arm64: no new processes,
  no signals to others, no sockets of any family, no ptrace/io_uring/bpf/perf/keyctl,
  no unlink/rename/link/mknod (so disk use cannot hide in unlinked files, and nothing
  is left for the grader to follow).
- **rlimits**: CPU time (the primary time limit, so a shared core does not change a
  grade), address space, file size, open files, processes, no core dumps.
- **This module**, in the trusted process: per-exercise CPU time read from ``/proc``, a
  wall clock only as a generous backstop, the working directory's size and file count
  polled, and every byte read from the sandbox (stdout, events) under a hard cap, even
  without newlines. The whole process group is killed at the end.

What **bubblewrap** adds: new mount, PID, network, IPC and UTS namespaces (the course
files are simply not there; no network interface at all), a read-only root, and a size-
limited tmpfs as the working directory (so even files held open count against
``disk_mb``). Without it (Docker's default seccomp profile blocks the namespaces,
Gradescope, macOS), the process mode relies on the layers above; what it then does not
protect is listed in :attr:`Sandbox.warnings` for the instructor (never in the results
students see).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .student_env import STUDENT_PYTHON_ENV, StudentPython, site_dirs_to_hide, student_python
from .workdirs import DYNAMIC_UIDS
from .watch import CappedReader, EventReader, cpu_seconds, disk_usage, find_runner, kill_group, tmpfs_usage

__all__ = ["Limits", "Sandbox", "LaunchResult", "StudentPython", "detect_sandbox", "student_python",
           "RUNNER", "STUDENT_PYTHON_ENV", "restored_setup_names", "describe_names"]

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
        timeout: CPU seconds allowed for each exercise (all its hidden cases); the whole
            run gets ``RLIMIT_CPU = timeout * exercises + startup``.
        memory_mb: address-space limit (``RLIMIT_AS``) of the sandboxed process.
        output_bytes: stdout + stderr the grader reads before killing the run.
        file_mb: largest file the run may write (``RLIMIT_FSIZE``).
        disk_mb, max_files: what the working directory may hold; polled every 0.2 s by the
            trusted process (and, in bubblewrap, the size of its tmpfs).
        startup: extra seconds per launch for interpreter and NumPy start-up.
        wall_factor: the wall-clock backstop is ``wall_factor`` times the CPU budget, so
            code that sleeps or waits still ends, while a slow shared core changes nothing.
        open_files: ``RLIMIT_NOFILE``.
    """

    timeout: float = 10.0
    memory_mb: int = 1024
    output_bytes: int = 1_000_000
    file_mb: int = 64
    disk_mb: int = 256
    max_files: int = 2000
    startup: float = 10.0
    wall_factor: float = 3.0
    open_files: int = 64

    def rlimits(self, exercises: int, nproc: int | None) -> dict[str, list[int]]:
        cpu = int(self.timeout * max(exercises, 1) + self.startup)
        limits = {
            "RLIMIT_CPU": [cpu, cpu + 1],
            "RLIMIT_AS": [self.memory_mb << 20] * 2,
            "RLIMIT_FSIZE": [self.file_mb << 20] * 2,
            "RLIMIT_NOFILE": [self.open_files] * 2,
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
    ``exercise``/``case`` say where the run was when it ended or was killed;
    ``cpu_seconds`` is the runner's CPU time as the trusted process last read it.
    """

    events: list[dict[str, Any]]
    output: str
    output_bytes: int
    returncode: int | None
    killed: str | None
    seconds: float
    exercise: str | None = None
    case: int | None = None
    cpu_seconds: float | None = None
    events_bytes: int = 0


def restored_setup_names(event: dict[str, Any]) -> list[str]:
    """The set-up names a ``setup_restored`` event says the runner put back (see ``runner.restore_setup``).

    Events can be forged by student code, so this only ever yields a few short identifiers:
    they name things in a message, never change a score.
    """
    names = event.get("names") if event.get("ev") == "setup_restored" else None
    if not isinstance(names, list):
        return []
    return [n for n in names[:20] if isinstance(n, str) and len(n) <= 80
            and all(part.isidentifier() for part in n.split("."))][:10]


def describe_names(names: list[str] | set[str]) -> str:
    """``"`a`, `b`"``: names as they appear in messages."""
    return ", ".join(f"`{name}`" for name in sorted(names))


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
    stdlib: list[str] = field(default_factory=list)
    landlock: bool = True
    probe: dict[str, Any] | None = None
    bwrap: str = "bwrap"
    tmpfs_size: bool = True  # bubblewrap >= 0.7 can size a tmpfs (Ubuntu 22.04 ships 0.6)

    @property
    def packages(self) -> list[Path]:
        return self.numpy_dirs

    @property
    def drops_inside(self) -> bool:
        """bubblewrap started by root: no user namespace, the runner drops to ``run_as`` itself."""
        return self.kind == "bwrap" and self.run_as is not None and _is_root()

    # -- layout inside the sandbox -------------------------------------------------
    def inside(self, workdir: Path) -> Path:
        """The working directory's path as the sandboxed process sees it."""
        return Path("/sandbox") if self.kind == "bwrap" else workdir

    def pylib(self, workdir: Path) -> Path:
        return Path("/pylib") if self.kind == "bwrap" else workdir / "pylib"

    def prepare(self, workdir: Path) -> None:
        """Copy the runner in; in process mode, link the packages into ``pylib``; hand the dir to ``run_as``."""
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

    def landlock_rules(self, workdir: Path) -> list[list[str]]:
        """Landlock rules as the sandboxed process sees the paths: read-only code, one writable dir."""
        rules: list[list[str]] = []
        for entry in self.stdlib:
            path = Path(entry)
            if path.is_dir():
                rules.append([entry, "d"])  # listing the directory is needed by the import system
                for child in sorted(path.iterdir()):
                    if child.name not in ("site-packages", "dist-packages"):
                        rules.append([str(child), "rd"])
            elif path.exists():
                rules.append([entry, "r"])
        multiarch = sysconfig.get_config_var("MULTIARCH") or ""
        system = ["/lib64", "/usr/lib64", "/etc/ld.so.cache", "/usr/share/zoneinfo", "/etc/localtime",
                  "/dev/null", "/dev/urandom", "/sys/devices/system/cpu", "/proc/cpuinfo"]
        if multiarch:
            system += [f"/usr/lib/{multiarch}", f"/lib/{multiarch}"]
        rules += [[p, "rd"] for p in system]
        rules.append(["/dev/null", "w"])
        if self.kind == "bwrap":
            rules.append(["/pylib", "rd"])
        else:
            rules += [[str(d), "rd"] for d in self.numpy_dirs]
            rules.append([str(workdir / "pylib"), "rd"])
        rules.append([str(self.inside(workdir)), "w"])
        return rules

    def command(self, workdir: Path, args: list[str], disk_bytes: int | None = None) -> list[str]:
        """The command line that starts the runner (``disk_bytes``: size of bubblewrap's tmpfs)."""
        if self.kind == "local":
            return [self.python, str(workdir / "runner.py"), *args]
        inner = [self.python, "-I", "-S", "-B", str(self.inside(workdir) / "runner.py"), *args]
        if self.kind != "bwrap":
            return inner
        cmd = [self.bwrap, "--die-with-parent", "--unshare-ipc", "--unshare-pid", "--unshare-net",
               "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
        if self.drops_inside:
            # Root without a user namespace: only the right to change uid survives into the
            # sandbox, and the runner uses it to drop to its uid before anything else.
            cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            # (No --disable-userns, which needs bubblewrap 0.8: seccomp already denies unshare/setns.)
            cmd += ["--unshare-user", "--cap-drop", "ALL",
                    "--uid", str(NOBODY), "--gid", str(NOBODY)]
        cmd += ["--ro-bind", "/usr", "/usr"]
        for name in ("bin", "lib", "lib64", "lib32", "sbin"):
            path = Path("/") / name
            if path.is_symlink():
                cmd += ["--symlink", os.readlink(path), str(path)]
            elif path.is_dir():
                cmd += ["--ro-bind", str(path), str(path)]
        cmd += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        made: set[str] = set()
        for path in self.ro_binds:
            for parent in reversed(path.parents):  # bubblewrap would make them 0700
                if str(parent) != "/" and str(parent) not in made and not str(parent).startswith("/usr"):
                    made.add(str(parent))
                    cmd += ["--perms", "0755", "--dir", str(parent)]
            cmd += ["--ro-bind", str(path), str(path)]
        for path in self.hide:
            cmd += ["--tmpfs", str(path), "--remount-ro", str(path)]
        cmd += ["--perms", "0755", "--dir", "/pylib"]
        for d in self.numpy_dirs:
            cmd += ["--ro-bind", str(d), f"/pylib/{d.name}"]
        # The working directory is a tmpfs of disk_mb: files held open after writing count
        # too. The runner, plan and inputs come in read-only; only out/ goes back to the host.
        # Twice the limit: the grader's poll (which reads this tmpfs's usage) normally stops a run
        # first; the tmpfs size is the hard bound in between polls.
        limit = 2 * (disk_bytes or Limits().disk_mb << 20)
        cmd += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev"]
        cmd += (["--size", str(limit)] if self.tmpfs_size else []) + ["--perms", "0777", "--tmpfs", "/sandbox"]
        for entry in sorted(workdir.iterdir()):
            if entry.name == "out":
                cmd += ["--bind", str(entry), "/sandbox/out"]
            elif not entry.is_symlink() and (entry.is_file() or entry.is_dir()):
                # read-only: the runner, plan, inputs (and `check`'s reference modules)
                cmd += ["--ro-bind", str(entry), f"/sandbox/{entry.name}"]
        cmd += ["--remount-ro", "/", "--chdir", "/sandbox", "--clearenv"]
        for key, value in {**BASE_ENV, "HOME": "/sandbox"}.items():
            cmd += ["--setenv", key, value]
        return cmd + ["--", *inner]

    # -- running ----------------------------------------------------------------------
    def run(self, workdir: Path, mode: str, plan: dict[str, Any], limits: Limits,
            exercises: int = 1, per_exercise: bool = True) -> LaunchResult:
        """Run ``runner.py MODE plan.json`` in ``workdir`` under all limits.

        ``plan`` gets the protections (rlimits, Landlock, seccomp, package path) added and
        is written as ``plan.json``. With ``per_exercise``, a run that has spent more than
        ``limits.timeout`` CPU seconds in one exercise is killed (or ``wall_factor`` times
        that in wall-clock time, for code that sleeps); the whole run is bounded by
        ``RLIMIT_CPU`` and by ``wall_factor`` times its CPU budget in wall-clock time.
        """
        identity = self._take_identity(workdir)
        try:
            return self._launch(workdir, mode, plan, limits, exercises, per_exercise, identity)
        finally:
            if identity is not None and identity != self.run_as:
                _release_uid(identity[0])

    def _take_identity(self, workdir: Path) -> tuple[int, int] | None:
        """When root: a uid/gid of its own for this launch (so runs side by side cannot touch each
        other's files, even without Landlock), owning the whole working directory."""
        if self.run_as is None or self.kind == "local":
            return None
        uid = _take_uid()
        identity = (uid, uid) if uid is not None else self.run_as
        for root, dirs, files in os.walk(workdir):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.lchown(name, *identity)
        os.chmod(workdir, 0o700)  # its own uid only (and the grader, root)
        return identity

    def _launch(self, workdir: Path, mode: str, plan: dict[str, Any], limits: Limits, exercises: int,
                per_exercise: bool, identity: tuple[int, int] | None) -> LaunchResult:
        plan = dict(plan)
        if self.kind != "local":
            plan["limits"] = limits.rlimits(exercises, self.nproc)
            plan["seccomp"] = True
            plan["disk_mb"] = limits.disk_mb
            plan["sys_path"] = [str(self.pylib(workdir))]
            if self.landlock:
                plan["landlock"] = self.landlock_rules(workdir)
            if self.drops_inside:
                plan["drop_to"] = list(identity)
            plan["die_with_parent"] = self.kind == "process"  # bubblewrap: --die-with-parent
        plan_path = workdir / "plan.json"
        plan_path.write_text(json.dumps(plan), encoding="utf-8")
        if identity is not None:
            os.lchown(plan_path, *identity)
        r_events, w_events = os.pipe()
        env = ({**os.environ, "MPLBACKEND": "Agg"} if self.kind == "local"
               else {**BASE_ENV, "HOME": str(self.inside(workdir))})
        kwargs: dict[str, Any] = {}
        if identity is not None and self.kind == "process":
            kwargs.update(user=identity[0], group=identity[1], extra_groups=[], umask=0o077)
        args = [mode, str(self.inside(workdir) / "plan.json"), str(w_events)]
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                self.command(workdir, args, limits.disk_mb << 20), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(w_events,), cwd=workdir, env=env,
                start_new_session=True, **kwargs)
        except BaseException:
            os.close(r_events)
            raise
        finally:
            os.close(w_events)
        output = CappedReader(proc.stdout, limits.output_bytes)
        events = EventReader(r_events)
        cpu_budget = limits.timeout * max(exercises, 1) + limits.startup
        killed = None
        next_disk_check = started + 0.2
        next_cpu_check = started
        runner_pid = proc.pid if self.kind != "bwrap" else None
        cpu: float | None = None
        seen_starts, ex_cpu0 = 0, None
        while proc.poll() is None:
            now = time.monotonic()
            if now >= next_disk_check:
                next_disk_check = now + 0.2
                size, count = disk_usage(workdir, limits.max_files)
                if self.kind == "bwrap" and runner_pid:
                    tmpfs = tmpfs_usage(runner_pid)  # counts files held open after unlinking, too
                    size, count = size + tmpfs[0], count + tmpfs[1]
                if size > limits.disk_mb << 20 or count > limits.max_files:
                    killed = "disk"
                    break
            if now >= next_cpu_check:
                next_cpu_check = now + 0.05
                if runner_pid is None:
                    runner_pid = find_runner(proc.pid)
                cpu = cpu_seconds(runner_pid) if runner_pid else None
                if events.starts != seen_starts or (ex_cpu0 is None and cpu is not None):
                    seen_starts, ex_cpu0 = events.starts, cpu  # CPU time when this exercise began
            since = events.current_since
            if per_exercise and since is not None:
                if cpu is not None and ex_cpu0 is not None and events.starts == seen_starts:
                    over = cpu - ex_cpu0 > limits.timeout or now - since > limits.timeout * limits.wall_factor
                else:  # no CPU clock to read (not Linux): the wall clock decides
                    over = now - since > limits.timeout
                if over:
                    killed = "timeout"
            if not killed and now - started > cpu_budget * (limits.wall_factor if cpu is not None else 1):
                killed = "total-timeout"
            if not killed and (output.exceeded or events.exceeded):
                killed = "output"
            if killed:
                break
            time.sleep(0.01)
        kill_group(proc)
        proc.wait()
        output.join(1.0)
        events.join(1.0)
        return LaunchResult(
            events=events.events, output=output.text(), output_bytes=output.total,
            returncode=proc.returncode, killed=killed, seconds=time.monotonic() - started,
            exercise=events.exercise, case=events.case, cpu_seconds=cpu, events_bytes=events.total)


_DYNAMIC_UIDS = DYNAMIC_UIDS
_uid_lock = threading.Lock()
_uids_taken: set[int] = set()


def _take_uid() -> int | None:
    """A uid of the dynamic range that no account has, no process runs as, and no other launch holds."""
    import pwd

    busy = set()
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                busy.add(os.stat(f"/proc/{entry}").st_uid)
            except OSError:
                pass
    with _uid_lock:
        start = (os.getpid() * 7919) % len(_DYNAMIC_UIDS)  # separate grader processes start apart
        for k in range(len(_DYNAMIC_UIDS)):
            uid = _DYNAMIC_UIDS[(start + k) % len(_DYNAMIC_UIDS)]
            if uid in busy or uid in _uids_taken:
                continue
            try:
                pwd.getpwuid(uid)
                continue
            except KeyError:
                _uids_taken.add(uid)
                return uid
    return None


def _release_uid(uid: int) -> None:
    with _uid_lock:
        _uids_taken.discard(uid)


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# -- choosing a sandbox --------------------------------------------------------------

_PROBE_CELLS = [
    {"label": "probe", "code": "import numpy\nnumpy.ones(3) @ numpy.ones(3)"},
    {"label": "uid", "code": "import os\nassert os.getuid() != 0 and os.geteuid() != 0, 'runs as root'"},
]


def _probe(sandbox: Sandbox, secret: Path | None = None) -> tuple[str | None, dict]:
    """Start the sandbox once: NumPy must import, uid must not be 0; ``(why not or None, facts)``.

    ``facts`` holds the runner's ``ready`` event (what protections it installed) and, with
    ``secret``, whether student code could read that file (one of the grader's own).
    """
    cells = list(_PROBE_CELLS)
    if secret is not None:
        cells.append({"label": "secret", "code": f"open({str(secret)!r}, 'rb').read(1)"})
    with tempfile.TemporaryDirectory(prefix="bncourse-probe-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o711)
        try:
            sandbox.prepare(workdir)
            result = sandbox.run(workdir, "cells", {"cells": cells}, Limits(timeout=20.0), per_exercise=False)
        except OSError as err:
            return f"cannot start it ({err})", {}
        finally:
            if sandbox.run_as is not None:
                for root, dirs, files in os.walk(workdir):
                    for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                        try:
                            os.lchown(name, os.getuid(), os.getgid())
                        except OSError:
                            pass
    outcome = {e.get("index"): e for e in result.events if e.get("ev") == "cell"}
    facts = {"ready": next((e for e in result.events if e.get("ev") == "ready"), {}),
             "secret_readable": bool(outcome.get(2, {}).get("ok")) if secret is not None else None}
    for index in (0, 1):
        event = outcome.get(index)
        if event is None or not event.get("ok"):
            why = (event or {}).get("msg") or (result.output.strip().splitlines()
                                                or [f"exit code {result.returncode}"])[-1]
            return str(why)[:300], facts
    return None, facts


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


def _bwrap_version(bwrap: str) -> tuple[int, ...]:
    """``bwrap --version`` as a tuple, ``(0,)`` if it does not say."""
    try:
        text = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout
        return tuple(int(part) for part in text.split()[-1].split("."))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return (0,)


def _nobody() -> tuple[int, int]:
    try:
        import pwd

        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (ImportError, KeyError):
        return NOBODY, NOBODY


def detect_sandbox(mode: str = "auto", student: str | None = None,
                   packages: tuple[str, ...] = ("numpy",)) -> Sandbox:
    """Pick and probe the sandbox. ``mode``: ``"auto"``, ``"bwrap"`` (required) or ``"process"``.

    ``student``: the student interpreter (default ``$BNCOURSE_STUDENT_PYTHON``, else found
    as :func:`student_python` says); ``packages``: what student code may import besides
    the standard library. Raises ``ValueError`` if ``"bwrap"`` is required but unusable,
    or if no interpreter can run student code without root.
    """
    if mode not in ("auto", "bwrap", "process"):
        raise ValueError(f"expected sandbox mode auto, bwrap or process, got {mode!r}")
    is_root = _is_root()
    run_as = _nobody() if is_root else None
    uid = run_as[0] if run_as else (os.getuid() if hasattr(os, "getuid") else None)
    # RLIMIT_NPROC counts the processes of the real uid: a second layer under seccomp's ban.
    nproc = None if uid is None else _count_processes(uid) + 64
    secret = Path(__file__).resolve().parent / "grader.py"  # one of the grader's own files
    reason = None
    if mode in ("auto", "bwrap"):
        if not sys.platform.startswith("linux"):
            reason = "bubblewrap needs Linux"
        elif shutil.which("bwrap") is None:
            reason = "bwrap is not installed (Debian/Ubuntu: apt-get install -y bubblewrap)"
        else:
            bwrap = shutil.which("bwrap")  # the grader's PATH decides, not the sandbox's
            try:
                env = student_python(student, run_as, packages, for_bwrap=True)
                candidate = Sandbox("bwrap", env.python, list(env.packages), ro_binds=list(env.prefixes),
                                    hide=site_dirs_to_hide(list(env.prefixes)), run_as=run_as, nproc=nproc,
                                    stdlib=list(env.stdlib), bwrap=bwrap, tmpfs_size=_bwrap_version(bwrap) >= (0, 7))
                reason, facts = _probe(candidate, secret)
            except ValueError as err:
                reason, facts = str(err), {}
            if reason is None:
                candidate.probe = facts
                candidate.warnings = _notes(candidate, facts, env)
                return candidate
            reason = f"bwrap is installed but does not work here: {reason}"
        if mode == "bwrap":
            raise ValueError(f"expected a working bubblewrap sandbox: {reason}")
    env = student_python(student, run_as, packages)
    sandbox = Sandbox("process", env.python, list(env.packages), run_as=run_as, nproc=nproc,
                      stdlib=list(env.stdlib))
    why, facts = _probe(sandbox, secret)
    if why is not None:
        raise ValueError(f"expected the process sandbox to start student code as "
                         f"{'nobody' if run_as else 'this user'}, but it failed: {why}")
    sandbox.probe = facts
    sandbox.warnings = [
        "NOT in bubblewrap: " + (reason or "the plain-process sandbox was requested") + ".",
        *_notes(sandbox, facts, env)]
    return sandbox


def _notes(sandbox: Sandbox, facts: dict, env: StudentPython) -> list[str]:
    """What this sandbox does and does not protect, for the instructor."""
    ready = facts.get("ready", {})
    landlock, seccomp = str(ready.get("landlock", "not reported")), str(ready.get("seccomp", "not reported"))
    who = ("a uid of its own per launch (no account, from 61184-65519)" if sandbox.run_as
           else f"uid {ready.get('uid')}")
    notes = []
    if sandbox.kind == "process":
        notes.append(
            f"Student code runs as an ordinary process as {who}, with {env.origin} and only "
            f"{', '.join(d.name for d in env.packages)}; resource limits (CPU time first); Landlock: {landlock}; "
            f"seccomp: {seccomp}.")
        gaps = ["no PID/network namespace (other processes are visible in /proc)"]
        if not landlock.startswith("installed"):
            gaps.append("reading any file that others may read and writing where others may write "
                        "(e.g. /tmp, /dev/shm) -- Landlock is what stops that")
        elif not landlock.startswith("installed (ABI") or int(landlock.split("ABI ")[1].rstrip(")")) < 6:
            gaps.append("signals and abstract sockets are stopped by seccomp only (Landlock ABI < 6)")
        if not seccomp.startswith("installed (libseccomp"):
            gaps.append("seccomp without libseccomp covers processes, signals and sockets only "
                        "(install libseccomp2)" if seccomp.startswith("installed") else
                        "new processes, signals to other processes and the network (no seccomp)")
        notes.append("It is NOT protected from: " + "; ".join(gaps) + ".")
    elif not landlock.startswith("installed") or not seccomp.startswith("installed (libseccomp"):
        notes.append(f"bubblewrap works; inside it, Landlock: {landlock}; seccomp: {seccomp}.")
    if facts.get("secret_readable"):
        notes.append(f"Student code could READ the grader's own files (tried {Path(__file__).parent}/grader.py): "
                     "make them unreadable to that user (chmod -R go-rwx) or use bubblewrap.")
    return notes
