"""``bncourse check NOTEBOOK``: the grader's verdict on the public checks, before you submit.

What runs, and where:

1. Only the **answer cells** are taken from the student's notebook (as the grader does);
   the set-up and check cells come from the released notebooks shipped inside the package
   (``bncourse/grading/released/``), never from the student's file, so an edited check
   cannot pass.
2. They run in the grader's own sandbox (:func:`~bncourse.grading.sandbox.detect_sandbox`,
   remembered for an hour by :mod:`.sandbox_cache`; :meth:`Sandbox.run`) under the grader's
   limits (time, memory, output): the same
   interpreter environment, where a module the grader does not have cannot be imported.
   The public checks need the course's NumPy references (``bncourse.functional``,
   ``gradcheck``, ``layers``); a copy of those three modules is put on the path only after
   the answer cells have run, and an answer that imports ``bncourse`` is reported.
3. The report lists first what would cost points when graded (a missing module, time over
   the limit, too much output, memory, a helper defined outside the answer cells), then each
   check with its location first. Exit status 0 only when the answer cells ran and every
   public check passed within the limits.

Printing is counted through ``print`` (``sys.stdout.write`` is not counted). On Windows
the sandbox's POSIX parts (resource limits, process groups, seccomp) are not available:
the checks run in a plain child process with the wall-clock limit only, and the report
says so.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from .exercises import EXERCISES, Exercise
from .notebooks import (AnswerError, NotebookError, cell_role, cell_source, extract_answers,
                        identify_exercise, read_notebook, strip_magics)
from .release import PACKAGE_COPY
from .sandbox import RUNNER, LaunchResult, Limits, Sandbox, describe_names, restored_setup_names
from .sandbox_cache import cached_sandbox, forget

__all__ = ["check_notebook", "check_cells", "answer_imports", "outside_helpers"]

# The course modules the public checks use, copied next to the run (NumPy only).
CHECK_MODULES = ("functional.py", "gradcheck.py", "layers.py")
OUTPUT_LIMIT_ERROR = "_BnCheckOutputLimit"
MAX_DETAIL_LINES = 8
START_MARGIN = 3.0  # wall-clock seconds for the interpreter, NumPy and the set-up cell


def _templates(templates_dir: Path | None) -> dict[str, dict]:
    found = {}
    directory = Path(templates_dir) if templates_dir is not None else PACKAGE_COPY
    for ex in EXERCISES:
        path = directory / ex.notebook
        if path.exists():
            try:
                found[ex.id] = read_notebook(path)
            except NotebookError:
                pass
    return found


# -- static look at the answer (what the run alone would explain badly) ------------------


def answer_imports(code: str) -> dict[str, int]:
    """Top-level module names the answer imports anywhere (also inside functions) -> first line."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return {}
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            found.setdefault(name.split(".")[0], node.lineno)
    return found


def _bound_and_loaded(tree: ast.AST) -> tuple[set[str], set[str]]:
    bound, loaded = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return bound, loaded


def _top_level_names(code: str) -> set[str]:
    try:
        tree = ast.parse(strip_magics(code))
    except SyntaxError:
        return set()
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def outside_helpers(answer_code: str, setup_code: str, other_cells: list[str]) -> list[str]:
    """Names the answer uses that only a non-answer cell of the student's notebook defines."""
    try:
        bound, loaded = _bound_and_loaded(ast.parse(answer_code))
    except SyntaxError:
        return []
    available = bound | _top_level_names(setup_code) | set(dir(builtins))
    elsewhere = set().union(*map(_top_level_names, other_cells)) if other_cells else set()
    return sorted((loaded - available) & elsewhere)


# -- the cells that run -------------------------------------------------------------------


def check_cells(template: dict, answer_code: str) -> list[dict[str, str]]:
    """The template's set-up cells, the student's answers (once), the template's checks, in order."""
    cells, answers_placed, n_check = [], False, 0
    for cell in template["cells"]:
        if cell.get("cell_type") != "code":
            continue
        role, detail = cell_role(cell)
        if role == "setup":
            cells.append({"label": "the set-up cell", "role": "setup", "code": _setup_code(cell_source(cell))})
        elif role == "answer" and not answers_placed:
            cells.append({"label": "your answer cell", "role": "answer", "code": strip_magics(answer_code)})
            answers_placed = True
        elif role == "check":
            n_check += 1
            cells.append({"label": f"Check {n_check}", "role": "check", "name": detail or "",
                          "code": cell_source(cell)})
    return cells


def _setup_code(code: str) -> str:
    """The set-up cell as the grader runs it: IPython lines (the Colab install) become ``pass``."""
    return strip_magics(code)


def _probe_cell(modules: list[str], strict: bool) -> dict[str, str]:
    """Which of ``modules`` the run's environment lacks; ``strict`` (a plain process, whose environment
    is the student's own): everything but the standard library and NumPy counts as missing."""
    extra = " or (m not in sys.stdlib_module_names and m != 'numpy')" if strict else ""
    code = ("import importlib.util as _bn_util, sys\n"
            f"_bn_missing = [m for m in {modules!r} if _bn_util.find_spec(m) is None{extra}]\n"
            "if _bn_missing:\n"
            "    raise ModuleNotFoundError('MISSING:' + ','.join(_bn_missing))\n")
    return {"label": "the module probe", "role": "probe", "code": code}


def _print_counter_cell(limit: int) -> dict[str, str]:
    code = (
        "import builtins as _bn_builtins, sys as _bn_sys\n"
        f"class {OUTPUT_LIMIT_ERROR}(BaseException):\n    pass\n"
        "_bn_printed = [0]\n"
        "def print(*args, sep=' ', end='\\n', file=None, flush=False):\n"
        "    if file is None or file is _bn_sys.stdout:\n"
        "        text = (' ' if sep is None else sep).join(map(str, args)) + ('\\n' if end is None else end)\n"
        "        _bn_printed[0] += len(text.encode('utf-8', 'replace'))\n"
        f"        if _bn_printed[0] > {int(limit)}:\n"
        f"            raise {OUTPUT_LIMIT_ERROR}('printed more than {int(limit):,} bytes')\n"
        "    _bn_builtins.print(*args, sep=sep, end=end, file=file, flush=flush)\n")
    return {"label": "the output counter", "role": "internal", "code": code}


def _checklib_cell(path: str) -> dict[str, str]:
    return {"label": "the checks' references", "role": "internal",
            "code": f"import sys as _bn_sys\n_bn_sys.path.insert(0, {path!r})\n"}


def _write_checklib(workdir: Path) -> Path:
    package = Path(__file__).resolve().parents[1]
    lib = workdir / "checklib" / "bncourse"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text('"""The references the public checks use (a copy)."""\n')
    for name in CHECK_MODULES:
        shutil.copyfile(package / name, lib / name)
    return workdir / "checklib"


# -- running ------------------------------------------------------------------------------


def _run_portable(workdir: Path, python: str, plan: dict[str, Any], limits: Limits) -> LaunchResult:
    """Where ``pass_fds`` and process groups do not exist (Windows): events on stdout, wall clock only.

    In ``cells`` mode the runner captures the cells' own printing, so its stdout carries
    only the JSON event lines (read with a byte cap).
    """
    (workdir / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    started = time.monotonic()
    proc = subprocess.Popen([python, str(workdir / "runner.py"), "cells", str(workdir / "plan.json"), "1"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=workdir)
    chunks: list[bytes] = []
    cap = 4_000_000

    def drain() -> None:
        total = 0
        for line in proc.stdout:
            total += len(line)
            if total <= cap:
                chunks.append(line)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    killed = None
    try:
        proc.wait(timeout=limits.timeout + limits.startup)
    except subprocess.TimeoutExpired:
        killed = "total-timeout"
        proc.kill()
        proc.wait()
    reader.join(2.0)
    events, other = [], []
    for line in chunks:
        try:
            event = json.loads(line)
        except ValueError:
            other.append(line.decode("utf-8", "replace"))
            continue
        if isinstance(event, dict):
            events.append(event)
    text = "".join(other)
    return LaunchResult(events=events, output=text[:16384], output_bytes=len(text), returncode=proc.returncode,
                        killed=killed, seconds=time.monotonic() - started)


def _execute(cells: list[dict[str, str]], sandbox: Sandbox | None, limits: Limits,
             workdir: Path) -> tuple[LaunchResult, str]:
    """Run the cells; returns the result and the sandbox kind that ran them."""
    plan = {"cells": [{"label": c["label"], "code": c["code"], "role": c["role"]} for c in cells]}
    if os.name == "nt" or sandbox is None:
        shutil.copyfile(RUNNER, workdir / "runner.py")
        return _run_portable(workdir, sys.executable, plan, limits), "plain process"
    sandbox.prepare(workdir)
    return sandbox.run(workdir, "cells", plan, limits, per_exercise=False), sandbox.kind


# -- reporting ----------------------------------------------------------------------------


_LOCATION = re.compile(r" \(([^()]*?), (line \d+: `.*`)\)\s*$", re.S)


def _split_location(msg: str, label: str) -> tuple[str, str | None]:
    """``("AssertionError: ...", "line 5: `code`")`` from the runner's ``"... (label, line 5: `code`)"``.

    A location in another cell (the student's function called by a check) keeps that cell's name.
    """
    found = _LOCATION.search(msg)
    if not found:
        return msg, None
    where = found.group(2) if found.group(1) == label else f"{found.group(1)}, {found.group(2)}"
    return msg[:found.start()], where


_NUMPY_HEAD = ("Not equal to tolerance", "Arrays are not equal", "Arrays are not almost equal")


def _condense(text: str) -> str:
    """A NumPy assertion as the check's own sentence first, then how far off; index listings dropped."""
    lines = [line.rstrip() for line in str(text).splitlines() if line.strip()]
    head = next((i for i, line in enumerate(lines) if line.strip().startswith(_NUMPY_HEAD)), None)
    if head is None:
        return str(text)
    sentence = []
    for line in lines[head + 1:]:
        if line.strip().startswith(("Mismatched elements", "Max ", "x:", "y:", "(shapes", "First ",
                                    "Mismatch at")):
            break
        sentence.append(line.strip())
    numbers = [line.strip() for line in lines if line.strip().startswith(("Mismatched elements", "Max "))]
    kind = lines[0].split(":")[0] if lines[0].rstrip().endswith(":") else "AssertionError"
    first = f"{kind}: {' '.join(sentence)}" if sentence else kind
    return "\n".join([first, *numbers, lines[head].strip()])


def _detail_lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in _condense(str(text)).splitlines() if line.strip()]
    if len(lines) > MAX_DETAIL_LINES:
        lines = lines[:MAX_DETAIL_LINES] + [f"... ({len(lines) - MAX_DETAIL_LINES} more lines)"]
    return lines


def _explain(event: dict[str, Any], helpers: list[str], label: str) -> tuple[str, str | None]:
    """A sentence for a failed cell, and its location."""
    head, where = _split_location(str(event.get("msg", "")), label)
    error = event.get("error")
    if error == OUTPUT_LIMIT_ERROR:
        return "printed more than the grader's output limit; it would stop the exercise here", None
    if error == "NotImplementedError":
        return "not implemented yet: replace `raise NotImplementedError()` in your answer cell", where
    name = re.search(r"name '([^']+)' is not defined", head)
    if error == "NameError" and name and name.group(1) in helpers:
        return (f"only the answer cells are run: move `{name.group(1)}` into the answer cell "
                "(it is defined in another cell of your notebook)", where)
    return head, where


def check_notebook(path: str | Path, templates_dir: Path | None = None, out: TextIO = sys.stdout,
                   sandbox: Sandbox | None | str = "auto", limits: Limits | None = None) -> int:
    """Run the public checks of the exercise notebook at ``path`` as the grader would; print a report.

    Args:
        path: the student's notebook.
        templates_dir: released notebooks to take the set-up and checks from (default: the
            copy shipped in the package).
        sandbox: a :class:`Sandbox`, a mode for :func:`detect_sandbox` (``"auto"``), or
            ``None`` for a plain child process (what Windows gets).
        limits: the grader's limits (default: the grader's defaults, :class:`Limits`).

    Returns 0 when the answer cells ran and every check passed within the limits, 1 otherwise,
    2 when the notebook cannot be checked (not a notebook, not an exercise, no answer cell).
    """
    path = Path(path)
    limits = limits or Limits()
    try:
        nb = read_notebook(path)
    except NotebookError as err:
        print(f"bncourse check: {err}", file=out)
        return 2
    templates = _templates(templates_dir)
    exercise, how = identify_exercise(nb, path.name, templates)
    if exercise is None:
        print(f"bncourse check: {path.name} is not one of the course's exercise notebooks ({how}).", file=out)
        return 2
    template = templates.get(exercise.id)
    if template is None:
        print(f"bncourse check: the released notebook of {exercise.label} is missing from the "
              "installed package; reinstall bncourse", file=out)
        return 2
    try:
        answers = extract_answers(template, nb, exercise)
    except AnswerError as err:
        print(f"bncourse check: {err}", file=out)
        return 2
    print(f"{exercise.label}, {exercise.points:g} points -- {path}", file=out)
    return _check(exercise, template, nb, answers.code, sandbox, limits, out)


def _check(exercise: Exercise, template: dict, nb: dict, answer_code: str, sandbox: Sandbox | None | str,
           limits: Limits, out: TextIO) -> int:
    answer_sources = {cell_source(c) for c in nb["cells"] if cell_role(c)[0] == "answer"}
    answer_sources.update(answer_code.split("\n\n"))
    setup = "\n\n".join(cell_source(c) for c in template["cells"] if cell_role(c)[0] == "setup")
    others = [cell_source(c) for c in nb["cells"] if c.get("cell_type") == "code"
              and cell_role(c)[0] != "answer" and cell_source(c) not in answer_sources]
    helpers = outside_helpers(answer_code, setup, others)
    imports = answer_imports(strip_magics(answer_code))
    body = check_cells(template, answer_code)
    mode, remembered = None, False
    if isinstance(sandbox, str):
        mode = sandbox
        sandbox, remembered = cached_sandbox(mode) if os.name != "nt" else (None, False)
    cells = [_probe_cell(sorted(imports), strict=sandbox is None or os.name == "nt"),
             *[c for c in body if c["role"] == "setup"],
             _print_counter_cell(limits.output_bytes)]
    cells += [c for c in body if c["role"] == "answer"]
    check_index = len(cells) + 1
    cells.append({"label": "", "role": "internal", "code": ""})  # replaced below, once the path is known
    cells += [c for c in body if c["role"] == "check"]
    run_limits = dataclasses.replace(limits, startup=START_MARGIN)
    try:
        result, kind = _launch(cells, check_index - 1, sandbox, run_limits)
    except OSError:
        if not remembered:
            raise
        result = None
    if remembered and (result is None or not any(e.get("ev") == "ready" for e in result.events)):
        forget()  # the remembered sandbox no longer starts here: choose again, run again
        sandbox, _ = cached_sandbox(mode)
        result, kind = _launch(cells, check_index - 1, sandbox, run_limits)
    return _report(exercise, cells, result, kind, limits, helpers, imports, out)


def _launch(cells: list[dict[str, str]], lib_index: int, sandbox: Sandbox | None,
            limits: Limits) -> tuple[LaunchResult, str]:
    with tempfile.TemporaryDirectory(prefix="bncourse-check-", ignore_cleanup_errors=True) as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        checklib = _write_checklib(workdir)
        inside = sandbox.inside(workdir) if sandbox is not None and os.name != "nt" else workdir
        cells[lib_index] = _checklib_cell(str(inside / checklib.relative_to(workdir)))
        return _execute(cells, sandbox, limits, workdir)


def _cpu_limit_hit(result: LaunchResult) -> bool:
    """The kernel ended the run at RLIMIT_CPU (SIGXCPU; bubblewrap reports it as 128 + signal)."""
    xcpu = getattr(signal, "SIGXCPU", None)  # not on Windows, where no CPU limit is set
    return xcpu is not None and result.returncode in (-xcpu, 128 + xcpu)


def _report(exercise: Exercise, cells: list[dict[str, str]], result: LaunchResult, kind: str, limits: Limits,
            helpers: list[str], imports: dict[str, int], out: TextIO) -> int:
    events = {e["index"]: e for e in result.events if e.get("ev") == "cell" and isinstance(e.get("index"), int)}
    started = [e["index"] for e in result.events if e.get("ev") == "cell_start" and isinstance(e.get("index"), int)]
    ready = next((e for e in result.events if e.get("ev") == "ready"), {})
    costs: list[str] = []

    probe = events.get(0, {})
    missing = re.findall(r"MISSING:([\w,.]+)", str(probe.get("msg", ""))) if not probe.get("ok", True) else []
    missing_modules = missing[0].split(",") if missing else []
    for module in missing_modules:
        costs.append(f"your answer cell imports `{module}` (line {imports.get(module, '?')}), which the "
                     f"grader does not have: it runs {exercise.label} with NumPy and the standard library")
    for module in sorted(set(imports) & {"bncourse"} - set(missing_modules)):
        costs.append(f"your answer cell imports `{module}` (line {imports[module]}), which the grader does not have")
    for name in helpers:
        costs.append(f"only the answer cells are run: move `{name}` into the answer cell "
                     "(it is defined in another cell of your notebook)")
    restored = {name for event in result.events for name in restored_setup_names(event)}
    if restored:
        costs.append(f"your code redefines {describe_names(restored)}, which the set-up cell defines: the "
                     "grader, like these checks, runs the set-up cell's own (rename yours)")
    student = [i for i, c in enumerate(cells) if c["role"] in ("answer", "check")]
    seconds = sum(float(events[i].get("seconds") or 0.0) for i in student if i in events)
    stopped_at = None
    if result.killed or (started and started[-1] not in events):
        stopped_at = started[-1] if started and started[-1] not in events else None
        where = f" in {cells[stopped_at]['label']}" if stopped_at is not None else ""
        if result.killed == "output":
            costs.append(f"your code printed more than {limits.output_bytes:,} bytes{where}; the grader "
                         "stops the exercise there (remove the prints from your functions)")
        elif result.killed == "disk":
            costs.append(f"your code wrote more than {limits.disk_mb} MB of files{where}")
        elif result.killed or _cpu_limit_hit(result):
            costs.append(f"stopped after {result.seconds:.1f} s{where}: the grader stops an exercise after "
                         f"{limits.timeout:g} s for all its hidden cases (an infinite loop, or Python loops "
                         "over large arrays?)")
        else:
            costs.append(f"the run ended abruptly{where} (exit code {result.returncode}; too much memory, "
                         "a crash, or os._exit()?)")
    elif seconds > limits.timeout:
        costs.append(f"your code took {seconds:.1f} s on the public checks; the grader allows {limits.timeout:g} s "
                     "per exercise for all its hidden cases")
    errors = {events.get(i, {}).get("error"): cells[i]["label"] for i in reversed(student)}  # the first wins
    if "MemoryError" in errors:
        costs.append(f"your code ran out of memory (first in {errors['MemoryError']}): the grader allows "
                     f"{limits.memory_mb} MB")
    if OUTPUT_LIMIT_ERROR in errors:
        costs.append(f"your code printed more than {limits.output_bytes:,} bytes (first in "
                     f"{errors[OUTPUT_LIMIT_ERROR]}); the grader stops the exercise there (remove the "
                     "prints from your functions)")
    costs = list(dict.fromkeys(costs))
    if costs:
        print("Would cost points when graded:", file=out)
        for line in costs:
            print(f"  - {line}", file=out)

    answer_ok = True
    for i, cell in enumerate(cells):
        if cell["role"] != "answer":
            continue
        event = events.get(i)
        if event is not None and not event.get("ok"):
            answer_ok = False
            head, where = _explain(event, helpers, cell["label"])
            print(f"ERROR    your answer cell{', ' + where if where else ''}:", file=out)
            for line in _detail_lines(head):
                print(f"           {line}", file=out)
            print("           (the grader gives 0 for this exercise while this cell fails)", file=out)
    setup_failed = [cells[i]["label"] for i, c in enumerate(cells) if c["role"] in ("setup", "internal")
                    and i in events and not events[i].get("ok")]
    checks = [i for i, c in enumerate(cells) if c["role"] == "check"]
    passed, seen, not_run = 0, {}, []
    for i in checks:
        cell, event = cells[i], events.get(i)
        title = f"{cell['label']} ({cell['name']})" if cell.get("name") else cell["label"]
        if event is None:
            not_run.append(cell["label"])
            continue
        if event.get("ok"):
            passed += 1
            print(f"  PASS   {title}", file=out)
            continue
        head, where = _explain(event, helpers, cell["label"])
        if head in seen:
            print(f"  FAIL   {title}: the same error as {seen[head]}", file=out)
            continue
        print(f"  FAIL   {title}" + (f", {where}" if where else ""), file=out)
        seen[head] = cell["label"]
        for line in _detail_lines(head):
            print(f"           {line}", file=out)
    if not_run:
        print(f"  NOT RUN {', '.join(not_run)} (the run was stopped once, at the grader's time limit)", file=out)
    for label in setup_failed:
        print(f"  (internal: {label} failed; reinstall bncourse if this persists)", file=out)
    unenforced = [name for name, value in (ready.get("limits") or {}).items() if not isinstance(value, list)]
    if kind != "bwrap":
        note = ("a plain process: the time limit and printed output are checked; memory, CPU-time and "
                "file limits are not enforced here" if kind == "plain process"
                else "the grader's fallback sandbox (bubblewrap is not available here)")
        if unenforced:
            note += "; not enforced here: " + ", ".join(unenforced)
        print(f"(checked in {note})", file=out)
    total = len(checks)
    ok = answer_ok and not costs and passed == total and not setup_failed
    if ok:
        print(f"All {total} public checks passed within the grader's limits ({seconds:.1f} s of "
              f"{limits.timeout:g} s). The hidden tests ({exercise.points:g} points) try more shapes, dtypes "
              "and edge cases.", file=out)
        return 0
    extra = f"; {len(costs)} problem(s) would cost points" if costs else ""
    if not answer_ok:
        extra += "; your answer cell failed, so the grader would give 0 points"
    print(f"{passed} of {total} public checks passed{extra}.", file=out)
    return 1
