"""The program that runs students' code, inside the sandbox. Standard library + NumPy only.

The grader copies this file into a fresh directory and runs it as
``python -I -S runner.py MODE plan.json EVENTS_FD`` in a sandbox (see ``sandbox.py``). It
must not import ``bncourse``: the package is not importable in the sandbox.

Before any student code runs it (1) drops root if it was started as root inside
bubblewrap, (2) lowers its own resource limits (CPU time, address space, file size,
open files, processes, core dumps), (3) restricts the file system with Landlock where
the kernel has it (read only the interpreter's standard library and the allowed
packages, write only its working directory), and (4) installs a seccomp filter,
through libseccomp when it is installed (else a hand-written BPF for x86-64 and arm64),
that forbids new processes, signals to other processes, sockets, tracing, unlinking
and renaming files, and kernel interfaces such as io_uring, bpf and keyctl. It
reports what it managed in its first event; the grader tells the instructor.

Modes:

- ``grade``: for each exercise in the plan, run the template's set-up code and
  the student's answer code in a fresh namespace, then each hidden case's steps,
  and save the exported values as ``.npy`` (never pickles) in the output
  directory. The grader judges those files in its own process; nothing this
  process says about scores counts.
- ``cells``: run a list of notebook cells in one namespace (``bncourse check``).

In both modes what the set-up cell defines (its names, its functions' code, the functions
of the modules it imported) is put back after the answer has run (and, in ``grade``,
before every step of a hidden case), and an event names whatever student code had
changed: the hidden cases and the checks build on the released set-up.

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
DISK_MB = 0
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
    for name in ("fork", "vfork", "socket", "socketpair", "tkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "ptrace",
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
        process_vm_writev=311, socket=41, socketpair=53, pidfd_send_signal=424, pidfd_open=434, pidfd_getfd=438,
        unshare=272, setns=308, mount=165, kexec_load=246, bpf=321)),
    "aarch64": (0xC00000B7, dict(
        clone=220, clone3=435, kill=129, tkill=130, tgkill=131, rt_sigqueueinfo=138,
        rt_tgsigqueueinfo=240, ptrace=117, process_vm_readv=270, process_vm_writev=271, socket=198, socketpair=199,
        pidfd_send_signal=424, pidfd_open=434, pidfd_getfd=438, unshare=97, setns=268,
        mount=40, kexec_load=104, bpf=280)),
}


def _seccomp_rules(mypid):
    """The deny rules, by name: ``(errno, syscall, [(arg, op, a, b), ...])``; ``op`` as libseccomp's enum.

    Everything not listed is allowed: the filter takes away what a numerical answer never
    needs (processes, signals to others, sockets, kernel interfaces with a record of
    escapes) and what could hide disk use from the grader (unlinking, renaming over a
    file, anonymous and ``O_TMPFILE`` files) or plant links for it to follow.
    """
    NE, MASKED_EQ = 1, 7
    EPERM, ENOSYS = 1, 38
    rules = [(EPERM, name, []) for name in (
        "fork", "vfork", "execve", "execveat", "tkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
        "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open", "pidfd_send_signal",
        "pidfd_getfd", "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount",
        "open_tree", "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr",
        "kexec_load", "kexec_file_load", "bpf", "perf_event_open", "keyctl", "add_key", "request_key",
        "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd", "init_module",
        "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct", "quotactl",
        "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
        "personality", "syslog", "vhangup", "lookup_dcookie", "name_to_handle_at", "open_by_handle_at",
        "socket", "socketpair", "memfd_create", "memfd_secret", "mknod", "mknodat",
        "unlink", "unlinkat", "rmdir", "rename", "renameat", "renameat2",
        "link", "linkat", "symlink", "symlinkat")]
    rules.append((ENOSYS, "clone3", []))  # glibc then falls back to clone, whose flags we can see
    rules.append((ENOSYS, "openat2", []))  # its flags sit in a struct the filter cannot read
    rules.append((EPERM, "clone", [(0, MASKED_EQ, 0x00010000, 0)]))  # without CLONE_THREAD: a process
    for name in ("kill", "tgkill"):
        rules.append((EPERM, name, [(0, NE, mypid, 0)]))
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile:
        rules.append((EPERM, "open", [(1, MASKED_EQ, tmpfile, tmpfile)]))
        rules.append((EPERM, "openat", [(2, MASKED_EQ, tmpfile, tmpfile)]))
    return rules


def install_libseccomp(mypid):
    """The filter of :func:`_seccomp_rules`, compiled by libseccomp for this machine's architecture."""
    import ctypes

    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        return None

    class ArgCmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                    ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]

    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(ArgCmp)]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_load.restype = ctypes.c_int
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ALLOW, KILL_PROCESS = 0x7FFF0000, 0x80000000
    ctx = lib.seccomp_init(ALLOW)
    if not ctx:
        return "libseccomp: seccomp_init failed"
    try:
        lib.seccomp_attr_set(ctx, 1, KILL_PROCESS)  # SCMP_FLTATR_ACT_BADARCH: other ABIs (x32, i386)
        for errno, name, args in _seccomp_rules(mypid):
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # not a system call on this architecture
            array = (ArgCmp * max(len(args), 1))(*[ArgCmp(*a) for a in args])
            rc = lib.seccomp_rule_add_array(ctx, 0x00050000 | errno, nr, len(args), array)
            if rc < 0:
                return "libseccomp: rule for %s failed (%d)" % (name, rc)
        rc = lib.seccomp_load(ctx)  # also sets no_new_privs
        return "installed (libseccomp)" if rc == 0 else "libseccomp: seccomp_load failed (%d)" % rc
    finally:
        lib.seccomp_release(ctx)


def install_seccomp():
    """Install the filter: through libseccomp, else the hand-written BPF. Returns what was done."""
    status = install_libseccomp(os.getpid())
    if status is not None:
        return status
    return install_bpf()


def install_bpf():
    """Fallback without libseccomp: processes, signals and sockets only, on x86-64 and arm64."""
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
    return "installed (fallback BPF without libseccomp: no socket families, unlink or io_uring rules)"


# Landlock (Linux >= 5.13): file-system rules any process may put on itself.
_LL_FS = {"x": 1 << 0, "w": 1 << 1, "r": 1 << 2, "d": 1 << 3, "md": 1 << 7, "mr": 1 << 8, "t": 1 << 14}
_LL_FILE_RIGHTS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)


def install_landlock(rules):
    """Allow only ``rules`` (``[path, "rxd"]``: read, execute, list; ``"w"``: create and write files).

    Every other file-system access is denied to this process and all it starts, root or
    not; on ABI >= 4 so is every TCP bind/connect, on ABI >= 6 signals outside the process.
    Returns ``"installed (ABI n)"`` or why not.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    long_, u32 = ctypes.c_long, ctypes.c_uint32
    abi = libc.syscall(long_(444), None, ctypes.c_size_t(0), u32(1))  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        return "not available (errno %d: kernel without Landlock, or blocked)" % ctypes.get_errno()
    handled = (1 << 13) - 1
    handled |= (1 << 13) if abi >= 2 else 0  # REFER
    handled |= (1 << 14) if abi >= 3 else 0  # TRUNCATE
    handled |= (1 << 15) if abi >= 5 else 0  # IOCTL_DEV

    class Attr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]

    attr = Attr(handled, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(long_(444), ctypes.byref(attr), ctypes.c_size_t(size), u32(0))
    if ruleset < 0:
        return "landlock_create_ruleset failed: errno %d" % ctypes.get_errno()
    try:
        for path, modes in rules:
            allowed = 0
            for mode in modes:
                allowed |= _LL_FS["x"] | _LL_FS["r"] if mode == "r" else 0
                allowed |= _LL_FS["d"] if mode == "d" else 0
                if mode == "w":
                    allowed |= _LL_FS["w"] | _LL_FS["r"] | _LL_FS["d"] | _LL_FS["md"] | _LL_FS["mr"]
                    allowed |= _LL_FS["t"] if abi >= 3 else 0
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if not os.path.isdir(path):
                    allowed &= _LL_FILE_RIGHTS
                rule = PathBeneath(allowed & handled, fd)
                if libc.syscall(long_(445), ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule), u32(0)):
                    return "landlock_add_rule(%s) failed: errno %d" % (path, ctypes.get_errno())
            finally:
                os.close(fd)
        if libc.prctl(38, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
            return "prctl(PR_SET_NO_NEW_PRIVS) failed: errno %d" % ctypes.get_errno()
        if libc.syscall(long_(446), ctypes.c_int(ruleset), u32(0)):
            return "landlock_restrict_self failed: errno %d" % ctypes.get_errno()
    finally:
        os.close(ruleset)
    return "installed (ABI %d)" % abi


def die_with_parent():
    """SIGKILL this process when the grader dies (even by SIGKILL): no run outlives its grader.

    Set after any change of uid, which clears it; if the grader is already gone, stop now.
    """
    import ctypes

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.prctl(1, ctypes.c_ulong(9), ctypes.c_ulong(0), ctypes.c_ulong(0),
                        ctypes.c_ulong(0)) == 0  # PR_SET_PDEATHSIG, SIGKILL (9 on Linux)
    except (OSError, AttributeError):
        ok = False
    if parent == 1:
        os._exit(1)
    return "set" if ok else "not available"


def drop_privileges(uid, gid):
    """Inside bubblewrap started by root: become ``uid``/``gid`` (all capabilities go with uid 0)."""
    if os.getuid() != 0:
        return "not root (uid %d)" % os.getuid()
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise SystemExit("could not drop root")
    return "uid %d" % uid


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
    elif isinstance(exc, OSError) and exc.errno == 28 and DISK_MB:
        head = "OSError: no space left: your code wrote more than the %d MB allowed" % DISK_MB
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


# -- the set-up cell's names -------------------------------------------------------
# The set-up cell (restored from the released notebook) defines what the hidden cases and the
# checks build on, e.g. Exercise 14's training loop. Student code runs in the same namespace, so
# it could rebind those names (an answer cell with its own `def train_network`, or a function that
# does `global forward; forward = ...` when called), swap a set-up function's code, or replace a
# function of a module the set-up uses (`dis.get_instructions`, `np.maximum`). After the answer, and
# before every step of a hidden case, they are put back, and the results say so.
# This stops an answer that redefines what the exercise says to leave alone; it is not a security
# boundary. Code in this process can reach the runner itself (sys.modules, frames, gc), class
# attributes, builtins, NumPy internals and the files this process exports, and objects it returns
# run its code inside the set-up's functions: a red-team pass found such routes to the points that
# set-up code decides in here (Exercise 1's loop check, 11's ModeProbe, 14's scale and training).
# The sandbox boundary protects what never enters it (references, labels); those verdicts belong
# outside, in the trusted process.

_FUNCTION_PARTS = ("__code__", "__defaults__", "__kwdefaults__")
_CODE_KINDS = ("function", "builtin_function_or_method", "cython_function_or_method", "type", "ufunc",
               "_ArrayFunctionDispatcher")
_MISSING = object()


def _module_functions(module, label):
    """``{(module, attribute): (value, "label.attribute")}`` for the functions and classes of a module
    and of its submodules one level down (``np.random``): what a set-up function may call."""
    parts = {}
    for attr, value in list(vars(module).items()):
        kind = type(value).__name__
        if kind in _CODE_KINDS:
            parts[(module, attr)] = (value, "%s.%s" % (label, attr))
        elif kind == "module" and getattr(value, "__name__", "").startswith(module.__name__ + "."):
            for sub_attr, sub_value in list(vars(value).items()):
                if type(sub_value).__name__ in _CODE_KINDS:
                    parts[(value, sub_attr)] = (sub_value, "%s.%s.%s" % (label, attr, sub_attr))
    return parts


def setup_bindings(ns, before, bindings):
    """Add to ``bindings`` each name the set-up code bound in ``ns`` (``before``: ``ns`` before it ran).

    A function keeps its code, defaults and keyword defaults; a module (``np``, ``dis``) the
    functions and classes it and its submodules hold.
    """
    for name, value in ns.items():
        if name.startswith("__") or (name in before and before[name] is value):
            continue
        kind, parts = type(value).__name__, None
        if kind == "function":
            parts = tuple(getattr(value, part) for part in _FUNCTION_PARTS)
        elif kind == "module":
            parts = _module_functions(value, name)
        bindings[name] = (value, parts)


def restore_setup(ns, bindings):
    """Put back every set-up binding, set-up function and module function that student code changed.

    Returns the names put back (``"train_network"``, ``"dis.get_instructions"``).
    """
    changed = []
    for name, (value, parts) in bindings.items():
        if ns.get(name, _MISSING) is not value:
            ns[name] = value
            changed.append(name)
        if isinstance(parts, tuple):
            now = tuple(getattr(value, part, None) for part in _FUNCTION_PARTS)
            if any(a is not b for a, b in zip(now, parts)):
                for part, original in zip(_FUNCTION_PARTS, parts):
                    setattr(value, part, original)
                changed.append(name)
        elif isinstance(parts, dict):
            for (module, attr), (original, label) in parts.items():
                if vars(module).get(attr, _MISSING) is not original:
                    setattr(module, attr, original)
                    changed.append(label)
    return changed


def report_restored(changed, reported, event):
    """Emit the set-up names restored for the first time (a few, never the same one twice)."""
    new = [name for name in dict.fromkeys(changed) if name not in reported]
    if new:
        reported.update(new)
        event["names"] = sorted(new)[:20]
        emit(event)


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


def run_steps(case, ns, inputs, np, before_step=None):
    env = {}
    for step in case["steps"]:
        if before_step is not None:
            before_step()
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
        bindings, reported = {}, set()

        def protect(ex_id=ex_id, ns=ns, bindings=bindings, reported=reported):
            report_restored(restore_setup(ns, bindings), reported, {"ev": "setup_restored", "ex": ex_id})

        ok = True
        for filename, label, code in (("<setup %s>" % ex_id, "the notebook's set-up cell", ex["setup"]),
                                      ("<answer %s>" % ex_id, "your answer cell", ex["answer"])):
            _register(sources, filename, label, code)
            before = dict(ns)
            try:
                exec(compile(code, filename, "exec"), ns)
            except BaseException as exc:  # noqa: B902 - SystemExit, KeyboardInterrupt too
                emit({"ev": "answer_error", "ex": ex_id, "msg": describe_exception(exc, sources)})
                ok = False
                break
            if filename.startswith("<setup"):
                setup_bindings(ns, before, bindings)
        if ok:  # protect() runs before every step, the first included
            for index, case in enumerate(ex["cases"]):
                emit({"ev": "case_start", "ex": ex_id, "case": index})
                started = time.perf_counter()
                try:
                    env = run_steps(case, ns, inputs, np, before_step=protect)
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
    bindings, reported, previous = {}, set(), None
    for index, cell in enumerate(plan["cells"]):
        filename = "<cell %d>" % index
        _register(sources, filename, cell["label"], cell["code"])
        role = cell.get("role")
        if previous == "answer" and role != "answer":
            # As the grader: the checks see the set-up cell's names, whatever the answer rebound.
            # (Only here: a check cell may rebind a set-up name for the checks after it.)
            report_restored(restore_setup(ns, bindings), reported, {"ev": "setup_restored", "index": index})
        previous = role
        emit({"ev": "cell_start", "index": index})
        captured = io.StringIO()
        started = time.perf_counter()
        before = dict(ns)
        try:
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                exec(compile(cell["code"], filename, "exec"), ns)
            if role == "setup":
                setup_bindings(ns, before, bindings)
            emit({"ev": "cell", "index": index, "ok": True, "seconds": time.perf_counter() - started})
        except BaseException as exc:  # noqa: B902
            emit({"ev": "cell", "index": index, "ok": False, "error": type(exc).__name__,
                  "msg": describe_exception(exc, sources), "output": _short(captured.getvalue(), 2000),
                  "seconds": time.perf_counter() - started})


def main():
    global EVENTS_FD, MEMORY_MB, DISK_MB
    mode, plan_path = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3:
        EVENTS_FD = int(sys.argv[3])
    with open(plan_path, encoding="utf-8") as f:
        plan = json.load(f)
    ready = {"ev": "ready"}
    # Order matters: drop root first, then limits, then Landlock (it needs no_new_privs and
    # must come before the seccomp filter loads), then seccomp; only then any student code.
    if plan.get("drop_to"):
        ready["drop"] = drop_privileges(*plan["drop_to"])
    ready["uid"] = os.getuid() if hasattr(os, "getuid") else None
    if plan.get("die_with_parent") and sys.platform.startswith("linux"):  # bubblewrap has its own
        ready["die_with_parent"] = die_with_parent()
    if plan.get("limits"):
        ready["limits"] = apply_limits(plan["limits"])
        MEMORY_MB = plan["limits"].get("RLIMIT_AS", [0])[0] >> 20
        DISK_MB = int(plan.get("disk_mb", 0))
    if plan.get("landlock") is not None:
        try:
            ready["landlock"] = install_landlock(plan["landlock"])
        except Exception as exc:  # report, never crash: the grader says what is not protected
            ready["landlock"] = "failed: %s" % exc
    if plan.get("seccomp"):
        try:
            ready["seccomp"] = install_seccomp()
        except Exception as exc:
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
