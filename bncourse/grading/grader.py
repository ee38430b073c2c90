"""Grading submissions: answers in, sandboxed run, values judged here, results out.

For one submission (a notebook, or a directory of notebooks), :meth:`Grader.grade`

1. parses each notebook as JSON and works out which exercise it is;
2. takes **only the answer cells** from it (everything else comes from the released
   template in ``book/exercises/``);
3. generates the hidden cases of each exercise in this trusted process, seeded from
   the answer code, writes their inputs as ``.npy`` into a fresh directory, and
   keeps the expected values to itself;
4. runs one sandboxed process for all exercises (``sandbox.py`` + ``runner.py``);
   when an exercise times out or the process dies, the run restarts after that
   exercise, so one infinite loop costs only its own exercise;
5. loads the exported ``.npy`` files with ``allow_pickle=False`` and judges them
   (``judge.py``): the score is computed here, from values, and nothing the
   sandbox claims can change it;
6. returns Gradescope's ``results.json`` structure.

:func:`grade_batch` does this for many submissions in parallel, atomically writes
``<out>/<name>/results.json`` and ``<out>/grades.csv``, and on a rerun skips any
submission whose results are already there for the same submission and grader.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib.util
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

from .exercises import EXERCISES, Exercise, get_exercise
from .judge import JudgeError, judge_value, load_output
from .notebooks import (AnswerError, Answers, NotebookError, cell_role, cell_source, extract_answers,
                        identify_exercise, read_notebook, strip_magics)
from .results import read_results, write_grades_csv, write_results
from .sandbox import RUNNER, LaunchResult, Limits, Sandbox
from .spec import Case, case_plan

__all__ = ["GRADER_VERSION", "Submission", "collect_submissions", "Grader", "grade_batch",
           "load_generators", "default_paths"]

GRADER_VERSION = "1"
VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")


def default_paths() -> dict[str, Path]:
    """Where the repository keeps the hidden tests, the released templates and the solutions."""
    root = Path(__file__).resolve().parents[2]
    return {"hidden": root / "tests" / "hidden", "templates": root / "book" / "exercises",
            "solutions": root / "solutions"}


@dataclass(frozen=True)
class Submission:
    """One student's submission: a notebook file or a directory of notebooks."""

    name: str
    path: Path

    @property
    def is_dir(self) -> bool:
        return self.path.is_dir()

    def digest(self) -> str:
        """SHA-256 of the submission's bytes (of every file, with names, for a directory)."""
        h = hashlib.sha256()
        files = sorted(p for p in self.path.rglob("*") if p.is_file()) if self.is_dir else [self.path]
        for p in files:
            h.update(str(p.relative_to(self.path) if self.is_dir else p.name).encode() + b"\0")
            try:
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
            except OSError as err:
                h.update(f"unreadable: {err}".encode())
        return h.hexdigest()


def _safe_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return name[:120] or "submission"


def collect_submissions(paths: list[str | Path]) -> list[Submission]:
    """Submissions from command-line paths; ``ValueError`` for missing paths or clashing names.

    A file is one submission named after its stem (``alice.ipynb`` -> ``alice``);
    a directory is one submission named after the directory.
    """
    subs: dict[str, Submission] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ValueError(f"expected a submission file or directory, got {raw!r}, which does not exist")
        name = _safe_name(path.name if path.is_dir() else path.stem)
        if name in subs:
            raise ValueError(f"two submissions would share the results directory {name!r}: "
                             f"{subs[name].path} and {path}; rename one")
        subs[name] = Submission(name, path)
    return list(subs.values())


def load_generators(hidden_dir: Path) -> dict[str, Callable[..., list[Case]]]:
    """Import ``cases(rng)`` from each exercise's hidden-case file in ``hidden_dir``."""
    hidden_dir = Path(hidden_dir).resolve()
    generators = {}
    sys.path.insert(0, str(hidden_dir))
    try:
        for ex in EXERCISES:
            path = hidden_dir / ex.hidden
            if not path.exists():
                raise ValueError(f"expected the hidden cases of {ex.id} in {path}, which does not exist")
            spec = importlib.util.spec_from_file_location(f"_bncourse_hidden_{ex.id}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            generators[ex.id] = module.cases
    finally:
        sys.path.remove(str(hidden_dir))
        sys.modules.pop("_common", None)
    return generators


@dataclass
class _Run:
    """One exercise of one submission: its answers (or the problem why there are none) and cases."""

    exercise: Exercise
    cases: list[Case]
    answers: Answers | None = None
    problem: str | None = None
    notebook: str | None = None
    answer_error: str | None = None
    case_errors: dict[int, str] = field(default_factory=dict)
    case_done: set[int] = field(default_factory=set)
    started: bool = False
    ended: bool = False
    killed: str | None = None
    killed_case: int | None = None
    judged: list[tuple[int, list[str]]] = field(default_factory=list)  # (values correct, messages) per case


class Grader:
    """Grades submissions against the hidden cases. Thread-safe: :meth:`grade` may run in parallel.

    Args:
        hidden_dir: directory of the hidden-case generators (``tests/hidden``).
        templates_dir: the released notebooks (``book/exercises``).
        sandbox: from :func:`bncourse.grading.sandbox.detect_sandbox`.
        limits: per-submission resource limits.
        seed: base seed of the hidden cases (combined with each answer's code).
        visibility: Gradescope visibility of the tests.
        exercises: ids of the exercises this assignment grades; ``None`` grades
            what a notebook submission contains, or every exercise for a directory.
    """

    def __init__(self, hidden_dir: Path, templates_dir: Path, sandbox: Sandbox,
                 limits: Limits | None = None, seed: int = 0, visibility: str = "visible",
                 exercises: list[str] | None = None) -> None:
        limits = limits or Limits()
        if visibility not in VISIBILITIES:
            raise ValueError(f"expected visibility in {VISIBILITIES}, got {visibility!r}")
        self.exercises = [get_exercise(e).id for e in exercises] if exercises else None
        self.sandbox, self.limits, self.seed, self.visibility = sandbox, limits, int(seed), visibility
        self.templates: dict[str, dict[str, Any]] = {}
        self.setup_code: dict[str, str] = {}
        h = hashlib.sha256(f"{GRADER_VERSION}|{seed}|{self.exercises}|{limits}|{visibility}|"
                           f"{sandbox.kind}".encode())
        # Anything that can change a score: the grading code, the references, templates, hidden cases.
        package = RUNNER.parents[1]
        for source in [*sorted(RUNNER.parent.glob("*.py")), package / "functional.py", package / "layers.py"]:
            h.update(source.read_bytes())
        for ex in EXERCISES:
            path = Path(templates_dir) / ex.notebook
            if not path.exists():
                raise ValueError(f"expected the released notebook {path}; run `bncourse release` first")
            h.update(path.read_bytes())
            template = read_notebook(path)
            self.templates[ex.id] = template
            self.setup_code[ex.id] = "\n\n".join(
                cell_source(c) for c in template["cells"] if cell_role(c)[0] == "setup")
        for extra in sorted(Path(hidden_dir).glob("*.py")):  # the generators and their helpers
            h.update(extra.read_bytes())
        self.fingerprint = h.hexdigest()
        self.generators = load_generators(Path(hidden_dir))

    # -- cases ------------------------------------------------------------------------
    def cases_for(self, exercise: Exercise, code: str) -> list[Case]:
        """The hidden cases of ``exercise`` for this answer code (deterministic)."""
        digest = hashlib.sha256(f"{self.seed}|{exercise.id}|{code}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        cases = self.generators[exercise.id](rng)
        total = sum(c.points for c in cases)
        if abs(total - exercise.points) > 1e-9:
            raise ValueError(f"the hidden cases of {exercise.id} are worth {total} points, "
                             f"expected {exercise.points}")
        return cases

    # -- one submission ------------------------------------------------------------
    def grade(self, sub: Submission) -> dict[str, Any]:
        """Grade one submission; always returns a results dict, whatever the submission holds."""
        started = time.monotonic()
        notes: list[str] = []
        found = self._find_notebooks(sub, notes)
        graded = self.exercises or ([ex.id for ex in EXERCISES] if sub.is_dir else list(found))
        for ex_id, (fname, _) in found.items():
            if ex_id not in graded:
                notes.append(f"{fname} is {get_exercise(ex_id).label}, which this assignment does not "
                             f"grade (it grades {', '.join(graded)})")
        runs = []
        for ex_id in graded:
            ex = get_exercise(ex_id)
            run = _Run(ex, [])
            if ex_id not in found:
                run.problem = (f"no notebook for {ex.label} in this submission "
                               f"(expected a notebook like {ex.notebook})")
            else:
                run.notebook, nb = found[ex_id]
                try:
                    run.answers = extract_answers(self.templates[ex_id], nb, ex)
                except AnswerError as err:
                    run.problem = str(err)
            run.cases = self.cases_for(ex, run.answers.code if run.answers else "")
            runs.append(run)
        output_head = ""
        protections = None
        launches = 0
        if any(r.answers for r in runs):
            output_head, protections, launches = self._execute([r for r in runs if r.answers is not None])
        return self._results(sub, runs, notes, time.monotonic() - started, output_head, protections,
                             launches)

    def _find_notebooks(self, sub: Submission, notes: list[str]) -> dict[str, tuple[str, dict]]:
        if sub.is_dir:
            files = sorted(p for p in sub.path.rglob("*") if p.is_file()
                           and ".ipynb_checkpoints" not in p.parts and not p.name.startswith("."))
            others = [p.name for p in files if p.suffix != ".ipynb"]
            files = [p for p in files if p.suffix == ".ipynb"]
            if others:
                notes.append(f"ignored {len(others)} file(s) that are not notebooks: "
                             + ", ".join(others[:5]) + (" ..." if len(others) > 5 else ""))
            if not files:
                notes.append("no .ipynb notebook found in this submission")
        else:
            files = [sub.path]
            if sub.path.suffix != ".ipynb":
                notes.append(f"{sub.path.name} does not end in .ipynb; expected a Jupyter notebook")
        found: dict[str, tuple[str, dict]] = {}
        for path in files:
            label = str(path.relative_to(sub.path)) if sub.is_dir else path.name
            try:
                nb = read_notebook(path)
            except NotebookError as err:
                notes.append(str(err))
                continue
            ex, how = identify_exercise(nb, path.name, self.templates)
            if ex is None:
                notes.append(f"{label} is not one of this course's exercise notebooks ({how})")
            elif ex.id in found:
                notes.append(f"{label} is a second notebook for {ex.label}; graded {found[ex.id][0]}")
            else:
                found[ex.id] = (label, nb)
        return found

    def _execute(self, runs: list[_Run]) -> tuple[str, dict | None, int]:
        """Run the answers of ``runs`` in the sandbox, restarting after a fatal exercise; judge."""
        workdir = Path(tempfile.mkdtemp(prefix="bncourse-grade-"))
        try:
            os.chmod(workdir, 0o755)
            self.sandbox.prepare(workdir)
            inside = self.sandbox.inside(workdir)
            plans, arrays = {}, {}
            for run in runs:
                ex_id = run.exercise.id
                plans[ex_id] = {
                    "id": ex_id, "setup": self.setup_code[ex_id],
                    "answer": strip_magics(run.answers.code),
                    "cases": [case_plan(c, f"{ex_id}-{k}", arrays) for k, c in enumerate(run.cases)],
                }
            np.savez(workdir / "inputs.npz", **arrays)  # all hidden inputs up front, one file
            if self.sandbox.run_as is not None:
                os.lchown(workdir / "inputs.npz", *self.sandbox.run_as)
            by_id = {r.exercise.id: r for r in runs}
            remaining = [r.exercise.id for r in runs]
            output_parts, protections, launches = [], None, 0
            while remaining:
                plan = {"inputs": str(inside / "inputs.npz"), "out_dir": str(inside / "out"),
                        "exercises": [plans[e] for e in remaining]}
                result = self.sandbox.run(workdir, "grade", plan, self.limits, exercises=len(remaining))
                launches += 1
                output_parts.append(result.output[:4000])
                protections = protections or next(
                    (e for e in result.events if e.get("ev") == "ready"), None)
                current = self._apply_events(result, by_id, remaining)
                finished = (result.killed is None and result.returncode == 0
                            and any(e.get("ev") == "done" for e in result.events))
                if finished:
                    for e in remaining:
                        if not by_id[e].started:
                            by_id[e].killed = "was not run: the grading run ended early"
                    break
                if current is None:
                    unstarted = [e for e in remaining if not by_id[e].started]
                    if unstarted and not any(by_id[e].started for e in remaining):
                        msg = self._failure_message(result, None, None)
                        for e in unstarted:
                            by_id[e].killed = f"could not run: {msg}"
                        break
                else:
                    run = by_id[current]
                    run.killed = self._failure_message(result, run.exercise.label, run.killed_case)
                remaining = [e for e in remaining if not by_id[e].started]
            self._judge(runs, workdir / "out")
            return "\n".join(output_parts)[:8000], protections, launches
        finally:
            _rmtree(workdir)

    @staticmethod
    def _apply_events(result: LaunchResult, by_id: dict[str, _Run], remaining: list[str]) -> str | None:
        """Record what the runner reported; return the exercise that was running when it stopped."""
        current = None
        for event in result.events:
            kind, ex_id = event.get("ev"), event.get("ex")
            run = by_id.get(ex_id) if isinstance(ex_id, str) and ex_id in remaining else None
            if run is None:
                continue
            if kind == "start":
                run.started, current = True, ex_id
            elif kind == "answer_error" and run.answer_error is None:
                run.answer_error = str(event.get("msg", ""))[:800]
            elif kind == "case_start" and isinstance(event.get("case"), int):
                run.killed_case = event["case"]
            elif kind == "case" and isinstance(event.get("case"), int):
                if event.get("ok"):
                    run.case_done.add(event["case"])
                else:
                    run.case_errors.setdefault(event["case"], str(event.get("msg", ""))[:800])
                run.killed_case = None
            elif kind == "end":
                run.ended = True
                if current == ex_id:
                    current = None
        return current

    def _failure_message(self, result: LaunchResult, label: str | None, case: int | None) -> str:
        where = f" in {label}" if label else " before any exercise started"
        if label and case is not None:
            where += f", hidden case {case + 1}"
        lim = self.limits
        if result.killed == "timeout":
            return f"timed out after {lim.timeout:g} s{where}; the rest of this exercise was not run"
        if result.killed == "total-timeout":
            return f"the run exceeded its total time limit{where}"
        if result.killed == "disk":
            return (f"wrote more than {lim.disk_mb} MB or {lim.max_files} files{where}; "
                    "the run was stopped")
        if result.killed == "output":
            return (f"printed more than {lim.output_bytes:,} bytes of output{where}; the run was stopped "
                    "(remove the prints from your functions)")
        rc = result.returncode
        sig = -rc if rc is not None and rc < 0 else None
        if sig is None and self.sandbox.kind == "bwrap" and rc is not None and 128 < rc < 128 + 65:
            sig = rc - 128  # bubblewrap reports a child killed by a signal as 128 + signal
        if sig is not None:
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            if name == "SIGXCPU":
                return f"used more than its CPU-time limit{where}"
            if name == "SIGXFSZ":
                return f"tried to write a file larger than {lim.file_mb} MB{where}"
            if name == "SIGKILL":
                return f"was killed (SIGKILL, most likely for using too much memory){where}"
            if name == "SIGSEGV":
                return f"crashed (segmentation fault){where}"
            if name == "SIGSYS":
                return f"made a forbidden system call{where}"
            return f"was stopped by signal {name}{where}"
        if label is None:
            tail = result.output.strip().splitlines()[-1:] or [""]
            return f"the sandbox failed to start (exit code {rc}): {tail[0][:200]}"
        return (f"ended the grading process (exit code {rc}; os._exit(), or a crash){where}; "
                "the rest of this exercise was not run")

    def _judge(self, runs: list[_Run], out_dir: Path) -> None:
        for run in runs:
            run.judged = []
            for k, case in enumerate(run.cases):
                passed, messages = 0, []
                for var in sorted(case.expected):
                    try:
                        got = load_output(out_dir, f"{run.exercise.id}-{k}-{var}.npy")
                    except JudgeError as err:
                        messages.append(str(err))
                        continue
                    if got is None:
                        messages.append(f"{var}: no value came back")
                        continue
                    ok, msg = judge_value(got, case.expected[var], var)
                    passed += ok
                    if not ok:
                        messages.append(msg)
                run.judged.append((passed, messages))

    # -- results -------------------------------------------------------------------
    def _case_result(self, run: _Run, k: int, case: Case) -> tuple[float, str]:
        if run.problem:
            return 0.0, run.problem
        passed, messages = run.judged[k]
        n = len(case.expected)
        score = round(case.points * passed / n, 4)
        if passed == n:
            return score, "passed"
        reason = None
        if run.answer_error:
            reason = f"your answer cell failed before the tests could run: {run.answer_error}"
        elif k in run.case_errors:
            reason = f"your code raised an error: {run.case_errors[k]}"
        elif run.killed and k not in run.case_done:
            reason = run.killed
        elif k not in run.case_done:
            reason = "not run (the grading run stopped before this case)"
        elif any(m.endswith("no value came back") for m in messages):
            reason = ("your code ran, but its results never reached the grader (does your code "
                      "replace NumPy functions, or files in its working directory?)")
        # With a reason, "no value came back" adds nothing; other value messages still help.
        details = [m for m in messages if not (reason and m.endswith("no value came back"))]
        parts = ([reason] if reason else []) + details
        prefix = f"{passed} of {n} values correct. " if n > 1 and passed else ""
        return score, prefix + "; ".join(parts)

    def _results(self, sub: Submission, runs: list[_Run], notes: list[str], seconds: float,
                 student_output: str, protections: dict | None, launches: int) -> dict[str, Any]:
        tests, per_ex, summary = [], {}, []
        for run in runs:
            ex = run.exercise
            score = 0.0
            for k, case in enumerate(run.cases):
                s, msg = self._case_result(run, k, case)
                score += s  # sandbox warnings go to the top-level output only (issue 14)
                tests.append({"name": f"{ex.label}: hidden case {k + 1}, {case.name}",
                              "number": f"{ex.number}.{k + 1}", "score": s, "max_score": case.points,
                              "output": msg, "visibility": self.visibility})
            problem = run.problem or (f"answer cell failed: {run.answer_error}" if run.answer_error else
                                      run.killed)
            per_ex[ex.id] = {"score": round(score, 4), "max_score": ex.points, "problem": problem,
                             "notebook": run.notebook,
                             "answers_found_by": run.answers.method if run.answers else None}
            summary.append(f"{ex.label}: {score:g}/{ex.points:g}" + (f" -- {problem}" if problem else ""))
        total = float(round(sum(v["score"] for v in per_ex.values()), 4))
        max_total = sum(v["max_score"] for v in per_ex.values())
        if not runs:
            tests.append({"name": "Submission", "number": "0", "score": 0.0, "max_score": 0.0,
                          "output": "; ".join(notes) or "nothing to grade", "visibility": self.visibility})
        head = (["Graded in a bubblewrap sandbox: no network, no access to course files, resource limits."]
                if self.sandbox.kind == "bwrap" else [f"WARNING: {w}" for w in self.sandbox.warnings])
        output = "\n".join(head + summary + ([f"Note: {n}" for n in notes]))
        return {
            "score": total,
            "execution_time": round(seconds, 3),
            "output": output,
            "visibility": self.visibility,
            "stdout_visibility": "hidden",
            "tests": tests,
            "extra_data": {"bncourse": {
                "submission": sub.name, "sha256": sub.digest(), "fingerprint": self.fingerprint,
                "grader_version": GRADER_VERSION, "sandbox": self.sandbox.kind,
                "sandbox_warnings": self.sandbox.warnings, "protections": protections,
                "launches": launches, "max_score": max_total, "exercises": per_ex, "notes": notes,
                "student_output": student_output,
            }},
        }


def _rmtree(path: Path) -> None:
    """Remove a sandbox directory even if student code made parts of it unreadable."""
    def fix(func: Callable, p: str, _exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            if not os.path.islink(p) and os.path.isdir(p):
                os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass
    shutil.rmtree(path, onerror=fix)


def _internal_error(sub: Submission, grader: Grader, err: BaseException) -> dict[str, Any]:
    detail = "".join(traceback.format_exception_only(type(err), err)).strip()
    return {
        "score": 0.0, "output": f"The grader itself failed on this submission ({detail}). "
                                "This is not your fault; your instructor has been told.",
        "visibility": grader.visibility, "stdout_visibility": "hidden",
        "tests": [{"name": "Grader error", "number": "0", "score": 0.0, "max_score": 0.0,
                   "output": detail, "visibility": grader.visibility}],
        "extra_data": {"bncourse": {"submission": sub.name, "sha256": None, "internal_error": detail,
                                    "traceback": traceback.format_exc()[-4000:],
                                    "fingerprint": grader.fingerprint, "notes": [f"grader error: {detail}"],
                                    "exercises": {}, "max_score": 0.0}},
    }


def grade_batch(grader: Grader, submissions: list[Submission], out_dir: Path, jobs: int = 2,
                progress: TextIO | None = sys.stderr, resume: bool = True) -> list[tuple[str, dict]]:
    """Grade ``submissions`` with ``jobs`` in parallel into ``out_dir``; returns ``(name, results)``.

    Each ``results.json`` is written as soon as its submission is graded, atomically;
    with ``resume``, submissions whose results exist for the same submission bytes
    and the same grader fingerprint are not graded again. ``grades.csv`` is written
    at the end for the whole batch.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total, done = len(submissions), 0
    lock = threading.Lock()
    rows: list[tuple[str, dict]] = []
    started = time.monotonic()

    def one(sub: Submission) -> tuple[dict, bool, float]:
        t0 = time.monotonic()
        path = out_dir / sub.name / "results.json"
        if resume:
            old = read_results(path)
            info = (old or {}).get("extra_data", {}).get("bncourse", {})
            if old and info.get("fingerprint") == grader.fingerprint and info.get("sha256") == sub.digest():
                return old, True, time.monotonic() - t0
        try:
            results = grader.grade(sub)
        except Exception as err:  # a grader bug must not stop the batch
            results = _internal_error(sub, grader, err)
        write_results(path, results)
        return results, False, time.monotonic() - t0

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(one, sub): sub for sub in submissions}
        for future in concurrent.futures.as_completed(futures):
            sub = futures[future]
            results, cached, seconds = future.result()
            with lock:
                done += 1
                rows.append((sub.name, results))
                if progress is not None:
                    width = 24
                    filled = int(width * done / max(total, 1))
                    max_score = results.get("extra_data", {}).get("bncourse", {}).get("max_score", 0)
                    progress.write(
                        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {sub.name}: "
                        f"{results['score']:g}/{max_score:g}"
                        + (" (already graded)" if cached else f" ({seconds:.1f} s)") + "\n")
                    progress.flush()
    write_grades_csv(out_dir / "grades.csv", rows)
    if progress is not None:
        progress.write(f"graded {total} submission(s) in {time.monotonic() - started:.1f} s; "
                       f"results in {out_dir}/<name>/results.json and {out_dir / 'grades.csv'}\n")
    return rows
