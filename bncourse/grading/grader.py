"""Grading submissions: answers in, sandboxed run, values judged here, results out.

For one submission (a notebook, or a directory of notebooks), :meth:`Grader.grade`

1. reads each notebook (regular files only, never through a symbolic link, with a byte
   cap), parses it as JSON and works out which exercise it is (by metadata, then
   content, then file name; in a directory, per exercise, the answered and newest
   notebook is graded and the others are named as ignored);
2. takes **only the answer cells** from it (everything else comes from the released
   template in ``book/exercises/``);
3. generates the hidden cases of each exercise in this trusted process, seeded from
   the instructor's secret and seed and the exercise (never from the submission), writes
   their inputs into a fresh 0700 directory, and keeps the expected values to itself;
4. runs one sandboxed process for all exercises (``sandbox.py`` + ``runner.py``);
   when an exercise times out or the process dies, the run restarts after that
   exercise, so one infinite loop costs only its own exercise;
5. loads the exported ``.npy`` files with ``allow_pickle=False`` and judges them
   (``judge.py``): the score is computed here, from values, and nothing the
   sandbox claims can change it;
6. returns Gradescope's ``results.json`` structure.

:func:`grade_batch` does this for many submissions in parallel, atomically writes
``<out>/<name>/results.json`` (``<name>`` from :func:`result_name`: distinct for distinct
file names) and ``<out>/grades.csv`` (every result in ``<out>``), on a rerun skips any
submission whose results are already there for the same submission and grader, and on
Ctrl-C stops within seconds and still writes ``grades.csv``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib.util
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

from .exercises import EXERCISES, Exercise, get_exercise
from .judge import JudgeError, judge_value, load_output
from .notebooks import (AnswerError, Answers, NotebookError, cell_role, cell_source, display_name,
                        extract_answers, foreign_format_hint, identify_exercise, read_notebook, strip_magics)
from .results import collect_rows, read_results, write_grades_csv, write_results
from .sandbox import RUNNER, LaunchResult, Limits, Sandbox, describe_names, restored_setup_names
from .spec import Case, Expect, case_plan
from .submissions import MAX_SUBMISSION_BYTES, Submission, collect_submissions, result_name, walk_submission
from .workdirs import WORKDIR_PREFIX, clean_stale_workdirs, make_workdir, remove_tree

__all__ = ["GRADER_VERSION", "Submission", "collect_submissions", "Grader", "grade_batch",
           "load_generators", "default_paths", "result_name", "walk_submission", "GradingCancelled",
           "SECRET_FILE"]

GRADER_VERSION = "2"
SECRET_FILE = "grading_secret"  # optional, in the hidden-test directory: mixed into every case seed
VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")


def default_paths() -> dict[str, Path]:
    """Where the repository keeps the hidden tests, the released templates and the solutions."""
    root = Path(__file__).resolve().parents[2]
    return {"hidden": root / "tests" / "hidden", "templates": root / "book" / "exercises",
            "solutions": root / "solutions"}


class GradingCancelled(Exception):
    """Raised inside a worker when the batch was interrupted; its result is not written."""


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
    setup_restored: set[str] = field(default_factory=set)  # set-up names the student's code redefined
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
        seed: the instructor's seed of the hidden cases.
        visibility: Gradescope visibility of the tests.
        exercises: ids of the exercises this assignment grades; ``None`` grades
            what a notebook submission contains, or every exercise for a directory.
        secret: the instructor's secret, mixed into the seed of every case; by default
            the bytes of ``<hidden_dir>/grading_secret`` if that file exists.

    The hidden cases depend on (secret, seed, exercise) only -- never on what a student
    wrote -- so every student meets the same cases and a comment cannot change a grade.
    """

    def __init__(self, hidden_dir: Path, templates_dir: Path, sandbox: Sandbox,
                 limits: Limits | None = None, seed: int = 0, visibility: str = "visible",
                 exercises: list[str] | None = None, secret: bytes | str | None = None) -> None:
        limits = limits or Limits()
        if visibility not in VISIBILITIES:
            raise ValueError(f"expected visibility in {VISIBILITIES}, got {visibility!r}")
        self.exercises = [get_exercise(e).id for e in exercises] if exercises else None
        self.sandbox, self.limits, self.seed, self.visibility = sandbox, limits, int(seed), visibility
        if secret is None and (Path(hidden_dir) / SECRET_FILE).is_file():
            secret = (Path(hidden_dir) / SECRET_FILE).read_bytes()[:4096].strip()
        secret = secret.encode() if isinstance(secret, str) else (secret or b"")
        self._secret = hashlib.sha256(b"bncourse-secret|" + secret).hexdigest()
        self._cases: dict[tuple[str, int], list[Case]] = {}
        self._cases_lock = threading.Lock()
        self._cancel = threading.Event()
        self.templates: dict[str, dict[str, Any]] = {}
        self.setup_code: dict[str, str] = {}
        self._setup_namespaces: dict[str, dict[str, Any]] = {}  # filled by _setup_namespace
        self._setup_lock = threading.Lock()
        self.stub_code: dict[str, str] = {}
        h = hashlib.sha256(f"{GRADER_VERSION}|{seed}|{self._secret}|{self.exercises}|{limits}|"
                           f"{visibility}|{sandbox.kind}".encode())
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
            self.stub_code[ex.id] = _code_key("\n\n".join(
                cell_source(c) for c in template["cells"] if cell_role(c) == ("answer", ex.id)))
        for extra in sorted(Path(hidden_dir).glob("*.py")):  # the generators and their helpers
            h.update(extra.read_bytes())
        self.fingerprint = h.hexdigest()
        self.generators = load_generators(Path(hidden_dir))

    # -- cases ------------------------------------------------------------------------
    def cases_for(self, exercise: Exercise, seed: int | None = None) -> list[Case]:
        """The hidden cases of ``exercise`` (deterministic: the secret, the seed and the exercise).

        ``seed`` defaults to the grader's; nothing a student submits takes part. Cached:
        the cases are built once per exercise and shared (read-only) by every submission.
        """
        seed = self.seed if seed is None else int(seed)
        key = (exercise.id, seed)
        with self._cases_lock:
            if key not in self._cases:
                digest = hashlib.sha256(f"{self._secret}|{seed}|{exercise.id}".encode()).digest()
                rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
                cases = self.generators[exercise.id](rng)
                total = sum(c.points for c in cases)
                if abs(total - exercise.points) > 1e-9:
                    raise ValueError(f"the hidden cases of {exercise.id} are worth {total} points, "
                                     f"expected {exercise.points}")
                self._cases[key] = cases
            return self._cases[key]

    def cancel(self) -> None:
        """Stop grading: runs in progress raise :class:`GradingCancelled` at their next step."""
        self._cancel.set()

    def _check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise GradingCancelled("the batch was interrupted")

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
            run = _Run(ex, self.cases_for(ex))
            if ex_id not in found:
                run.problem = (f"no notebook for {ex.label} in this submission "
                               f"(expected a notebook like {ex.notebook})")
            else:
                run.notebook, nb = found[ex_id]
                try:
                    run.answers = extract_answers(self.templates[ex_id], nb, ex)
                except AnswerError as err:
                    hint = foreign_format_hint(nb)
                    run.problem = str(err) + (f"; {hint}" if hint else "")
            runs.append(run)
        output_head = ""
        protections = None
        launches = 0
        if any(r.answers for r in runs):
            output_head, protections, launches = self._execute([r for r in runs if r.answers is not None])
        return self._results(sub, runs, notes, time.monotonic() - started, output_head, protections,
                             launches)

    def _is_answered(self, ex_id: str, nb: dict) -> bool:
        """Whether the notebook's answer cells differ from the released stub."""
        try:
            answers = extract_answers(self.templates[ex_id], nb, get_exercise(ex_id))
        except AnswerError:
            return False
        return _code_key(answers.code) != self.stub_code[ex_id]

    def _find_notebooks(self, sub: Submission, notes: list[str]) -> dict[str, tuple[str, dict]]:
        """``{exercise id: (file label, notebook)}``: per exercise, the one notebook to grade.

        In a directory, several notebooks may be the same exercise (Jupyter's ``-Copy1``,
        an older version): the one with answered cells wins, then the newest, then the first
        by name; the feedback says which file was graded and which were ignored.
        """
        if sub.is_dir:
            files, walk_notes = walk_submission(sub.path)
            notes.extend(walk_notes)
            others = [label for label, p in files if p.suffix != ".ipynb"]
            files = [(label, p) for label, p in files if p.suffix == ".ipynb"]
            if others:
                notes.append(f"ignored {len(others)} file(s) that are not notebooks: "
                             + ", ".join(others[:5]) + (" ..." if len(others) > 5 else ""))
            if not files:
                notes.append("no .ipynb notebook found in this submission")
        else:
            files = [(display_name(sub.path.name), sub.path)]
            if sub.path.suffix != ".ipynb":
                notes.append(f"{display_name(sub.path.name)} does not end in .ipynb; expected a Jupyter notebook")
        candidates: dict[str, list[tuple[bool, int, str, dict]]] = {}
        budget = MAX_SUBMISSION_BYTES
        for k, (label, path) in enumerate(files):
            try:
                info = os.lstat(path)
                budget -= info.st_size
                if budget < 0:
                    notes.append(f"read only the first {k} notebook(s): together the notebooks exceed "
                                 f"{MAX_SUBMISSION_BYTES // 10**6} MB")
                    break
                nb = read_notebook(path, follow_symlinks=False)
                mtime = info.st_mtime_ns
            except NotebookError as err:
                notes.append(str(err) if not sub.is_dir else f"{label}: {err}")
                continue
            except OSError as err:
                notes.append(f"cannot read {label}: {err.strerror}")
                continue
            ex, how = identify_exercise(nb, path.name, self.templates)
            if ex is None:
                hint = foreign_format_hint(nb)
                notes.append(f"{label} is not one of this course's exercise notebooks ({how})"
                             + (f"; {hint}" if hint else ""))
                continue
            candidates.setdefault(ex.id, []).append((self._is_answered(ex.id, nb), mtime, label, nb))
        found: dict[str, tuple[str, dict]] = {}
        for ex_id, cands in candidates.items():
            cands.sort(key=lambda c: (not c[0], -c[1], c[2]))
            answered, _, label, nb = cands[0]
            found[ex_id] = (label, nb)
            if len(cands) > 1:
                ignored = [f"{c[2]} ({'answered' if c[0] else 'not answered'}, "
                           f"{'newer' if c[1] > cands[0][1] else 'older'})" for c in cands[1:]]
                why = ("the one with answers" if answered and not any(c[0] for c in cands[1:])
                       else "the newest" + (" with answers" if answered else ""))
                notes.append(f"{len(cands)} notebooks are {get_exercise(ex_id).label}: graded {label} "
                             f"({why}); ignored {', '.join(ignored)}")
        return found

    def _execute(self, runs: list[_Run]) -> tuple[str, dict | None, int]:
        """Run the answers of ``runs`` in the sandbox, restarting after a fatal exercise; judge."""
        self._check_cancelled()
        # 0700 (mkdtemp's mode): student code and hidden inputs are nobody else's business. The
        # pid in the name lets the next run remove what a killed run left behind.
        workdir = make_workdir()
        try:
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
                self._check_cancelled()
                plan = {"inputs": str(inside / "inputs.npz"), "out_dir": str(inside / "out"),
                        "exercises": [plans[e] for e in remaining]}
                result = self.sandbox.run(workdir, "grade", plan, self.limits, exercises=len(remaining))
                self._check_cancelled()  # a run killed by the interruption says nothing about the answer
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
            remove_tree(workdir)

    @staticmethod
    def _apply_events(result: LaunchResult, by_id: dict[str, _Run], remaining: list[str]) -> str | None:
        """Record what the runner reported; return the exercise that was running when it stopped."""
        current = None
        for event in result.events:
            kind, ex_id = event.get("ev"), event.get("ex")
            run = by_id.get(ex_id) if isinstance(ex_id, str) and ex_id in remaining else None
            if run is None:
                continue
            case = event.get("case")
            # Events can be forged by student code: a case index must be one of this exercise's.
            case = case if type(case) is int and 0 <= case < len(run.cases) else None
            if kind == "start":
                run.started, current = True, ex_id
            elif kind == "answer_error" and run.answer_error is None:
                run.answer_error = _event_text(event.get("msg", ""))
            elif kind == "setup_restored" and len(run.setup_restored) < 10:
                run.setup_restored.update(restored_setup_names(event)[: 10 - len(run.setup_restored)])
            elif kind == "case_start" and case is not None:
                run.killed_case = case
            elif kind == "case" and case is not None:
                if event.get("ok") is True:
                    run.case_done.add(case)
                else:
                    run.case_errors.setdefault(case, _event_text(event.get("msg", "")))
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
                    want = case.expected[var]
                    if want.verdict is not None:
                        ok, msg = self._verdict(run, want, got, var)
                    else:
                        ok, msg = judge_value(got, want, var)
                    passed += ok
                    if not ok:
                        messages.append(msg)
                run.judged.append((passed, messages))

    def _verdict(self, run: _Run, want: Expect, got: np.ndarray, var: str) -> tuple[bool, str]:
        """Run a case's verdict on an exported array, here in the trusted process, with the released set-up."""
        answer = strip_magics(run.answers.code) if run.answers else ""
        try:
            ok, msg = want.verdict(got, self._setup_namespace(run.exercise.id), answer)
        except (ValueError, ArithmeticError) as err:  # the numbers that came back do not fit
            return False, f"{var}: {err}"
        return bool(ok), str(msg)

    def _setup_namespace(self, ex_id: str) -> dict[str, Any]:
        """The names the exercise's released set-up cell defines, run once in this (trusted) process."""
        with self._setup_lock:
            if ex_id not in self._setup_namespaces:
                ns: dict[str, Any] = {"__name__": f"_bncourse_setup_{ex_id}"}
                exec(compile(self.setup_code[ex_id], f"<released set-up of {ex_id}>", "exec"), ns)
                self._setup_namespaces[ex_id] = ns
            return self._setup_namespaces[ex_id]

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
        if run.setup_restored:
            redefined = (f"your code redefines {describe_names(run.setup_restored)}, which the set-up cell "
                         "defines: the hidden tests ran the set-up cell's own")
            reason = f"{reason}; {redefined}" if reason else redefined
        # With a reason, "no value came back" adds nothing; other value messages still help.
        details = [m for m in messages if not (reason and m.endswith("no value came back"))]
        parts = ([reason] if reason else []) + details
        prefix = f"{passed} of {n} values correct. " if n > 1 and passed else ""
        return score, prefix + "; ".join(parts)

    def _results(self, sub: Submission, runs: list[_Run], notes: list[str], seconds: float,
                 student_output: str, protections: dict | None, launches: int) -> dict[str, Any]:
        tests, per_ex, summary, raw_scores = [], {}, [], []
        for run in runs:
            ex = run.exercise
            raw = 0.0
            for k, case in enumerate(run.cases):
                s, msg = self._case_result(run, k, case)
                raw += s
                raw_scores.append(s)
                tests.append({"name": f"{ex.label}: hidden case {k + 1}, {case.name}",
                              "number": f"{ex.number}.{k + 1}", "score": s, "max_score": case.points,
                              "output": msg, "visibility": self.visibility})
            problem = run.problem or (f"answer cell failed: {run.answer_error}" if run.answer_error else
                                      run.killed)
            score = _round_score(raw)
            per_ex[ex.id] = {"score": score, "max_score": ex.points, "problem": problem,
                             "notebook": run.notebook,
                             "answers_found_by": run.answers.method if run.answers else None}
            graded_from = f" (graded {run.notebook})" if sub.is_dir and run.notebook else ""
            summary.append(f"{ex.label}: {score:g}/{ex.points:g}{graded_from}"
                           + (f" -- {problem}" if problem else ""))
        # Round the total once, then share its cents among the tests so that they add up to it.
        total = _round_score(sum(raw_scores))
        for test, cents in zip(tests, _apportion(raw_scores, round(total * 100))):
            test["score"] = cents / 100
        max_total = sum(v["max_score"] for v in per_ex.values())
        if not runs:
            tests.append({"name": "Submission", "number": "0", "score": 0.0, "max_score": 0.0,
                          "output": "; ".join(notes) or "nothing to grade", "visibility": self.visibility})
        # Sandbox warnings are for the instructor: the top-level output and the terminal only,
        # never the per-test outputs that students read.
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
                "submission": sub.name, "source": sub.source or display_name(sub.path.name),
                "sha256": sub.digest(), "fingerprint": self.fingerprint,
                "grader_version": GRADER_VERSION, "sandbox": self.sandbox.kind,
                "sandbox_warnings": self.sandbox.warnings, "protections": protections,
                "launches": launches, "max_score": max_total, "exercises": per_ex, "notes": notes,
                "student_output": student_output,
            }},
        }


def _event_text(value: Any, limit: int = 800) -> str:
    """A message from the sandbox as text that can be written anywhere (no lone surrogates)."""
    return str(value)[:limit].encode("utf-8", "replace").decode("utf-8")


def _code_key(code: str) -> str:
    """Code compared without trailing spaces and blank lines (is an answer cell still the stub?)."""
    return "\n".join(line.rstrip() for line in code.strip().splitlines() if line.strip())


def _round_score(x: float) -> float:
    return float(round(x + 0.0, 2)) + 0.0  # + 0.0 turns -0.0 into 0.0


def _apportion(raw: list[float], total_cents: int) -> list[int]:
    """Whole cents for each score in ``raw``, adding up to ``total_cents`` (largest remainders)."""
    exact = [max(0.0, r) * 100 for r in raw]
    cents = [int(e + 1e-6) for e in exact]
    order = sorted(range(len(raw)), key=lambda i: exact[i] - cents[i], reverse=True)
    for i in order[:max(0, total_cents - sum(cents))]:
        cents[i] += 1
    return cents


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
    and the same grader fingerprint are not graded again. ``grades.csv`` is written at
    the end with one row for every submission that has a ``results.json`` in ``out_dir``
    (earlier batches into the same directory included).

    On ``KeyboardInterrupt`` (Ctrl-C), pending submissions are cancelled, running
    sandboxes are killed, ``grades.csv`` is written from the results already there, and
    the ``KeyboardInterrupt`` is raised again: a rerun grades only what is missing.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    clean_stale_workdirs()
    grader._cancel.clear()
    total, done = len(submissions), 0
    rows: list[tuple[str, dict]] = []
    started = time.monotonic()

    def one(sub: Submission) -> tuple[dict, bool, float] | None:
        t0 = time.monotonic()
        if grader._cancel.is_set():
            return None
        path = out_dir / sub.name / "results.json"
        try:
            digest = sub.digest()
            if resume:
                old = read_results(path)
                info = (old or {}).get("extra_data", {}).get("bncourse", {})
                if old and info.get("fingerprint") == grader.fingerprint and info.get("sha256") == digest:
                    return old, True, time.monotonic() - t0
            results = grader.grade(sub)
        except GradingCancelled:
            return None
        except Exception as err:  # a grader bug must not stop the batch
            results = _internal_error(sub, grader, err)
        write_results(path, results)
        return results, False, time.monotonic() - t0

    def report(sub: Submission, outcome: tuple[dict, bool, float]) -> None:
        nonlocal done
        results, cached, seconds = outcome
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

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs))
    futures = {pool.submit(one, sub): sub for sub in submissions}
    pending = set(futures)
    try:
        while pending:
            finished, pending = concurrent.futures.wait(
                pending, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                outcome = future.result()
                if outcome is not None:
                    report(futures[future], outcome)
    except BaseException as exc:  # Ctrl-C, SIGTERM (via the CLI), or results that cannot be written
        previous = _ignore_signals()
        try:
            _stop(grader, pool, futures)
            write_grades_csv(out_dir / "grades.csv", collect_rows(out_dir))
            if progress is not None:
                why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"stopped by {exc!r}"
                progress.write(f"{why} after {done} of {total} submission(s); wrote "
                               f"{out_dir / 'grades.csv'} from the results already graded. Run the same "
                               "command again to grade the rest.\n")
                progress.flush()
        finally:
            _restore_signals(previous)
        raise
    pool.shutdown(wait=True)
    write_grades_csv(out_dir / "grades.csv", collect_rows(out_dir))
    if progress is not None:
        progress.write(f"graded {total} submission(s) in {time.monotonic() - started:.1f} s; "
                       f"results in {out_dir}/<name>/results.json and {out_dir / 'grades.csv'}\n")
    return rows


def _stop(grader: Grader, pool: concurrent.futures.ThreadPoolExecutor,
          futures: dict[concurrent.futures.Future, Submission], deadline_s: float = 20.0) -> None:
    """Cancel what has not started, kill the sandboxes of what has, and wait for the workers."""
    grader.cancel()
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + deadline_s
    running = {f for f in futures if not f.done()}
    while running and time.monotonic() < deadline:
        _kill_sandboxes()
        _, running = concurrent.futures.wait(running, timeout=0.1)
    # bubblewrap's inner process dies with its parent, a moment later: wait for it (bounded).
    settle = time.monotonic() + 5.0
    while _kill_sandboxes() and time.monotonic() < settle:
        time.sleep(0.05)


def _kill_sandboxes() -> int:
    """SIGKILL every sandbox process of this grader; returns how many were found.

    Sandboxes run in their own session, so Ctrl-C in the terminal does not reach them. They
    are this process's children that lead their own session (``Sandbox.run`` starts them
    with ``start_new_session=True``; nothing else in the grader does), and any process whose
    command line names one of this process's work directories (bubblewrap's inner process,
    in a session of its own).
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return 0
    me, found = os.getpid(), 0
    marker = f"{WORKDIR_PREFIX}{me}-".encode()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            pid, ppid, session = int(entry.name), int(fields[1]), int(fields[3])
            if fields[0] == "Z":  # already dead, waiting to be reaped
                continue
            if ppid == me and session == pid:
                found += 1
                os.killpg(pid, signal.SIGKILL)
            elif marker in (entry / "cmdline").read_bytes():
                found += 1
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue
    return found


def _ignore_signals() -> Any:
    """Ignore SIGINT and SIGTERM while the interrupted batch cleans up; returns the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(previous: Any) -> None:
    for sig, handler in (previous or {}).items():
        if handler is not None:
            signal.signal(sig, handler)
