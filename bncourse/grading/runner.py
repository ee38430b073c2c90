"""The program that runs students' code, inside the sandbox. Standard library + NumPy only.

The grader copies this file into a fresh directory and runs it as
``python -I -S runner.py MODE plan.json EVENTS_FD`` in a sandbox (see ``sandbox.py``). It
must not import ``bncourse``: the package is not importable in the sandbox.

Before any student code runs it lowers its own resource limits (CPU time,
address space, file size, processes, core dumps) and, on Linux x86-64 and
arm64, installs a seccomp filter that forbids starting processes, signalling
any process but itself, tracing and reading other processes' memory.

Modes:

- ``grade``: for each exercise in the plan, run the template's set-up code and
  the student's answer code in a fresh namespace, then each hidden case's steps,
  and save the exported values as ``.npy`` (never pickles) in the output
  directory. The grader judges those files in its own process; nothing this
  process says about scores counts.
- ``cells``: run a list of notebook cells in one namespace (``bncourse check``).

Progress and errors go to file descriptor EVENTS_FD (a pipe to the grader) as JSON lines, so the student's
prints on stdout cannot be confused with them (they can forge them, which only
changes messages, never scores).
"""

import json
import os
import sys
import time
import traceback

EVENTS_FD = 3
STARTED = time.perf_counter()
MEMORY_MB = 0
MAX_MESSAGE = 600


def emit(event):
    event["t"] = round(time.perf_counter() - STARTED, 4)
    try:
        os.write(EVENTS_FD, (json.dumps(event) + "\n").encode("utf-8", "replace"))
    except (OSError, ValueError, TypeError):
        pass  # the channel may be closed by student code; the grader copes


# -- protections -------------------------------------------------------------------


def apply_limits(limits):
    """setrlimit for each ``{"RLIMIT_X": [soft, hard]}``; returns what was applied."""
    import resource

    applied = {}
    for name, (soft, hard) in limits.items():
        which = getattr(resource, name, None)
        if which is None:
            continue
        _, cur_hard = resource.getrlimit(which)
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
            soft = min(soft, hard)
        try:
            resource.setrlimit(which, (soft, hard))
            applied[name] = [soft, hard]
        except (ValueError, OSError) as err:
            applied[name] = "failed: %s" % err
    return applied


def _bpf_program(arch_id, mypid, table):
    """A classic-BPF seccomp program. ``table`` maps syscall names to numbers for this arch."""
    import struct

    LD_W_ABS, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, KILL = 0x7FFF0000, 0x80000000
    EPERM, ENOSYS = 0x00050000 | 1, 0x00050000 | 38
    prog = []  # (code, jt, jf, k) with jt/jf as labels or ints

    def ins(code, k, jt=0, jf=0):
        prog.append([code, jt, jf, k])

    ins(LD_W_ABS, 4)  # seccomp_data.arch
    ins(JEQ, arch_id, 0, "kill")
    ins(LD_W_ABS, 0)  # seccomp_data.nr
    if table.get("x32"):
        ins(JGE, 0x40000000, "eperm", 0)
    for name in ("fork", "vfork", "tkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "ptrace",
                 "process_vm_readv", "process_vm_writev", "pidfd_send_signal", "pidfd_open",
                 "pidfd_getfd", "unshare", "setns", "mount", "kexec_load", "bpf"):
        if name in table:
            ins(JEQ, table[name], "eperm", 0)
    ins(JEQ, table["clone3"], "enosys", 0)  # makes libc fall back to clone, which we can inspect
    ins(JEQ, table["clone"], "clone", 0)
    ins(JEQ, table["kill"], "own_pid", 0)
    ins(JEQ, table["tgkill"], "own_pid", 0)
    ins(RET, ALLOW)
    labels = {"clone": len(prog)}
    ins(LD_W_ABS, 16)  # low half of args[0]: the clone flags
    ins(JSET, 0x00010000, "allow", "eperm")  # CLONE_THREAD: threads are fine, processes are not
    labels["own_pid"] = len(prog)
    ins(LD_W_ABS, 16)  # low half of args[0]: the target pid
    ins(JEQ, mypid, "allow", "eperm")
    labels["allow"] = len(prog)
    ins(RET, ALLOW)
    labels["eperm"] = len(prog)
    ins(RET, EPERM)
    labels["enosys"] = len(prog)
    ins(RET, ENOSYS)
    labels["kill"] = len(prog)
    ins(RET, KILL)
    blob = b""
    for index, (code, jt, jf, k) in enumerate(prog):
        jt = labels[jt] - index - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - index - 1 if isinstance(jf, str) else jf
        blob += struct.pack("=HBBI", code, jt, jf, k)
    return blob, len(prog)


_SYSCALLS = {
    "x86_64": (0xC000003E, dict(
        x32=True, fork=57, vfork=58, clone=56, clone3=435, kill=62, tkill=200, tgkill=234,
        rt_sigqueueinfo=129, rt_tgsigqueueinfo=297, ptrace=101, process_vm_readv=310,
        process_vm_writev=311, pidfd_send_signal=424, pidfd_open=434, pidfd_getfd=438,
        unshare=272, setns=308, mount=165, kexec_load=246, bpf=321)),
    "aarch64": (0xC00000B7, dict(
        clone=220, clone3=435, kill=129, tkill=130, tgkill=131, rt_sigqueueinfo=138,
        rt_tgsigqueueinfo=240, ptrace=117, process_vm_readv=270, process_vm_writev=271,
        pidfd_send_signal=424, pidfd_open=434, pidfd_getfd=438, unshare=97, setns=268,
        mount=40, kexec_load=104, bpf=280)),
}


def install_seccomp():
    """Forbid new processes and signals to other processes. Returns ``"installed"`` or why not."""
    import ctypes
    import platform

    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if not sys.platform.startswith("linux") or machine not in _SYSCALLS:
        return "not available on %s/%s" % (sys.platform, machine)
    arch_id, table = _SYSCALLS[machine]
    blob, count = _bpf_program(arch_id, os.getpid(), table)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(blob, len(blob))
    prog = SockFprog(count, ctypes.cast(buffer, ctypes.c_char_p))
    ulong = ctypes.c_ulong
    if libc.prctl(38, ulong(1), ulong(0), ulong(0), ulong(0)) != 0:  # PR_SET_NO_NEW_PRIVS
        return "prctl(PR_SET_NO_NEW_PRIVS) failed: errno %d" % ctypes.get_errno()
    if libc.prctl(22, ulong(2), ctypes.byref(prog), ulong(0), ulong(0)) != 0:  # SECCOMP_MODE_FILTER
        return "prctl(PR_SET_SECCOMP) failed: errno %d" % ctypes.get_errno()
    return "installed"


# -- running code ------------------------------------------------------------------


def _short(text, limit=MAX_MESSAGE):
    text = str(text)
    return text if len(text) <= limit else text[: limit - 15] + " ... (cut)"


def describe_exception(exc, sources):
    """``"ValueError: msg (your answer, line 7: `code`)"`` naming the student's innermost line."""
    if isinstance(exc, SyntaxError) and exc.filename in sources:
        where = "line %s" % exc.lineno
        if exc.text:
            where += ": `%s`" % exc.text.strip()
        return _short("SyntaxError: %s (%s, %s)" % (exc.msg, sources[exc.filename], where))
    name = type(exc).__name__
    if isinstance(exc, SystemExit):
        head = "SystemExit: your code called sys.exit()/exit() (code %r)" % (exc.code,)
    elif isinstance(exc, MemoryError) and MEMORY_MB:
        head = "MemoryError: out of memory (the grader allows %d MB)" % MEMORY_MB
    else:
        head = "%s: %s" % (name, exc) if str(exc) else name
    where = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename in sources:
            lines = sources[frame.filename + ":lines"]
            text = lines[frame.lineno - 1].strip() if 0 < frame.lineno <= len(lines) else ""
            where = "%s, line %d: `%s`" % (sources[frame.filename], frame.lineno, text)
    return _short(head + (" (%s)" % where if where else ""))


def _register(sources, filename, label, code):
    sources[filename] = label
    sources[filename + ":lines"] = code.split("\n")


class StepError(Exception):
    """A problem with what the student's code returned, phrased for the student."""


def _decode(arg, env, inputs, np):
    if "npy" in arg:
        return inputs[arg["npy"]]  # a fresh array on every access: inputs cannot leak between steps
    if "var" in arg:
        return env[arg["var"]]
    return arg["json"]


def _store(result, store, env, what):
    if store is None:
        return
    if isinstance(store, str):
        env[store] = result
        return
    try:
        values = tuple(result)
    except TypeError:
        raise StepError("%s should return %d values %s, but returned a %s"
                        % (what, len(store), tuple(s or "_" for s in store), type(result).__name__)) from None
    if len(values) != len(store):
        raise StepError("%s should return %d values, but returned %d" % (what, len(store), len(values)))
    for name, value in zip(store, values):
        if name:
            env[name] = value


def run_steps(case, ns, inputs, np):
    env = {}
    for step in case["steps"]:
        op, target = step["op"], step["target"]
        args = [_decode(a, env, inputs, np) for a in step["args"]]
        if op == "call":
            kwargs = {k: _decode(v, env, inputs, np) for k, v in step["kwargs"].items()}
            if "." in target:
                obj_name, method = target.split(".", 1)
                if not hasattr(env[obj_name], method):
                    raise StepError("your %s object has no method %s()" % (type(env[obj_name]).__name__, method))
                fn, what = getattr(env[obj_name], method), "%s()" % method
            elif target in env:  # a stored object called directly, e.g. layer(x)
                fn, what = env[target], "calling your %s" % type(env[target]).__name__
            else:
                if target not in ns:
                    raise StepError("your answer does not define %s" % target)
                fn, what = ns[target], target
            _store(fn(*args, **kwargs), step["store"], env, what)
        elif op == "getattr":
            obj = env[target]
            if not hasattr(obj, args[0]):
                raise StepError("your %s has no attribute %s" % (type(obj).__name__, args[0]))
            env[step["store"]] = getattr(obj, args[0])
        elif op == "setattr":
            setattr(env[target], args[0], args[1])
        elif op == "item":
            obj = env[target]
            try:
                env[step["store"]] = obj[args[0]]
            except (KeyError, IndexError, TypeError):
                raise StepError("the %s returned has no item %r" % (type(obj).__name__, args[0])) from None
        else:
            raise StepError("unknown step %r (grader bug)" % op)
    return env


def export(env, names, prefix, out_dir, np):
    for name in names:
        if name not in env or env[name] is None:
            raise StepError("no value for %s (got None)" % name)
        value = env[name]
        if isinstance(value, (bool, int, float)) or hasattr(value, "__array__") or isinstance(value, (list, tuple)):
            array = np.asarray(value)
        else:
            raise StepError("%s should be a NumPy array, got %s" % (name, type(value).__name__))
        if array.dtype.kind not in "biuf":
            raise StepError("%s should be a numeric array, got dtype %s" % (name, array.dtype))
        np.save(os.path.join(out_dir, "%s-%s.npy" % (prefix, name)), array, allow_pickle=False)


def run_grade(plan):
    import numpy as np

    inputs = np.load(plan["inputs"], allow_pickle=False)
    out_dir = plan["out_dir"]
    for ex in plan["exercises"]:
        ex_id = ex["id"]
        emit({"ev": "start", "ex": ex_id})
        sources = {}
        ns = {"__name__": "__main__", "__builtins__": __builtins__}
        ok = True
        for filename, label, code in (("<setup %s>" % ex_id, "the notebook's set-up cell", ex["setup"]),
                                      ("<answer %s>" % ex_id, "your answer cell", ex["answer"])):
            _register(sources, filename, label, code)
            try:
                exec(compile(code, filename, "exec"), ns)
            except BaseException as exc:  # noqa: B902 - SystemExit, KeyboardInterrupt too
                emit({"ev": "answer_error", "ex": ex_id, "msg": describe_exception(exc, sources)})
                ok = False
                break
        if ok:
            for index, case in enumerate(ex["cases"]):
                emit({"ev": "case_start", "ex": ex_id, "case": index})
                started = time.perf_counter()
                try:
                    env = run_steps(case, ns, inputs, np)
                    export(env, case["export"], "%s-%d" % (ex_id, index), out_dir, np)
                    emit({"ev": "case", "ex": ex_id, "case": index, "ok": True,
                          "seconds": time.perf_counter() - started})
                except BaseException as exc:  # noqa: B902
                    msg = str(exc) if isinstance(exc, StepError) else describe_exception(exc, sources)
                    emit({"ev": "case", "ex": ex_id, "case": index, "ok": False, "msg": _short(msg)})
        emit({"ev": "end", "ex": ex_id})


def run_cells(plan):
    import contextlib
    import io

    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    sources = {}
    for index, cell in enumerate(plan["cells"]):
        filename = "<cell %d>" % index
        _register(sources, filename, cell["label"], cell["code"])
        emit({"ev": "cell_start", "index": index})
        captured = io.StringIO()
        started = time.perf_counter()
        try:
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                exec(compile(cell["code"], filename, "exec"), ns)
            emit({"ev": "cell", "index": index, "ok": True, "seconds": time.perf_counter() - started})
        except BaseException as exc:  # noqa: B902
            emit({"ev": "cell", "index": index, "ok": False, "error": type(exc).__name__,
                  "msg": describe_exception(exc, sources), "output": _short(captured.getvalue(), 2000),
                  "seconds": time.perf_counter() - started})


def main():
    global EVENTS_FD, MEMORY_MB
    mode, plan_path = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3:
        EVENTS_FD = int(sys.argv[3])
    with open(plan_path, encoding="utf-8") as f:
        plan = json.load(f)
    ready = {"ev": "ready", "uid": os.getuid() if hasattr(os, "getuid") else None}
    if plan.get("limits"):
        ready["limits"] = apply_limits(plan["limits"])
        MEMORY_MB = plan["limits"].get("RLIMIT_AS", [0])[0] >> 20
    if plan.get("seccomp"):
        try:
            ready["seccomp"] = install_seccomp()
        except Exception as exc:  # report, never crash: the grader says what is not protected
            ready["seccomp"] = "failed: %s" % exc
    for path in plan.get("sys_path", []):
        sys.path.append(path)
    emit(ready)
    if mode == "grade":
        run_grade(plan)
    elif mode == "cells":
        run_cells(plan)
    else:
        raise SystemExit("unknown mode %r" % mode)
    emit({"ev": "done"})


if __name__ == "__main__":
    main()
