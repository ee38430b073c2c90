"""The bncourse command: exercises for students, grading for instructors.

    bncourse check NOTEBOOK                 the grader's verdict on your public checks (students)
    bncourse grade SUBMISSION... --out DIR  grade notebooks or directories of notebooks (instructors)
    bncourse release                        regenerate book/exercises/ from solutions/
    bncourse autograder-zip --out FILE      build a Gradescope autograder bundle
    bncourse student-kit --out DIR          what the students of a graded class receive
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

CHECK_HELP = """Run your answer cells the way the grader does (same sandbox, same time, memory and
output limits, NumPy only), then the exercise's public checks taken from the released
notebook inside the package, never from your file: editing a check cannot make it pass.

It prints first what would cost points when graded, then PASS or FAIL for every check with
the line that failed. Exit status: 0 when everything passed, 1 when something failed,
2 when the notebook cannot be checked.

examples:
  bncourse check my-exercises/ex01_forward.ipynb
  .venv/bin/bncourse check my-exercises/ex07_torch_batchnorm1d.ipynb
  for nb in my-exercises/ex0*.ipynb; do bncourse check "$nb" | tail -n 1; done
"""

EPILOG = """examples:
  bncourse check my-exercises/ex01_forward.ipynb
  bncourse release --check
  bncourse grade submissions/* --out results --jobs 2
"""

__all__ = ["main"]


def _paths():
    from .grading.grader import default_paths

    return default_paths()


def _cmd_check(args: argparse.Namespace) -> int:
    from .grading.check import check_notebook

    return check_notebook(args.notebook, Path(args.templates) if args.templates else None)


def _cmd_release(args: argparse.Namespace) -> int:
    from .grading.release import PACKAGE_COPY, AnsweredError, release

    paths = _paths()
    solutions = Path(args.solutions) if args.solutions else paths["solutions"]
    out = Path(args.out) if args.out else paths["templates"]
    # The copy inside the package follows the repository's own release, never a custom --out.
    package_copy = None if args.out else PACKAGE_COPY
    try:
        changed = release(solutions, out, check=args.check, force=args.force, package_copy=package_copy)
    except ValueError as err:  # AnsweredError included: nothing was written
        print(f"bncourse release: {err}", file=sys.stderr)
        return 1 if isinstance(err, AnsweredError) else 2
    if args.check:
        if changed:
            print(f"out of date in {out}: {', '.join(changed)}; `bncourse release` regenerates them "
                  "(it never overwrites answered notebooks without --force)", file=sys.stderr)
            return 1
        print(f"{out} is up to date with {solutions}", file=sys.stderr)
        return 0
    print(f"released {len(changed)} changed notebook(s) into {out}" + (f": {', '.join(changed)}" if changed else ""),
          file=sys.stderr)
    return 0


def _cmd_grade(args: argparse.Namespace) -> int:
    import signal

    from .grading.grader import Grader, collect_submissions, grade_batch
    from .grading.sandbox import Limits, detect_sandbox

    paths = _paths()
    hidden = Path(args.hidden) if args.hidden else paths["hidden"]
    templates = Path(args.templates) if args.templates else paths["templates"]
    out = Path(args.out)
    # SIGTERM (kill, a scheduler's timeout) stops a batch the way Ctrl-C does: grades.csv is written.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        inside_out = [s for s in args.submissions if _same_or_inside(Path(s), out)]
        for path in inside_out:
            print(f"bncourse grade: skipping {path}: it is the results directory --out, not a submission",
                  file=sys.stderr)
        submissions = collect_submissions([s for s in args.submissions if s not in inside_out])
        sandbox = detect_sandbox(args.sandbox)
        limits = Limits(timeout=args.timeout, memory_mb=args.memory_mb, output_bytes=args.max_output)
        exercises = [e.strip() for e in args.exercises.split(",") if e.strip()] if args.exercises else None
        secret = None
        if args.secret_file:
            secret = Path(args.secret_file).read_bytes()[:4096].strip()
            if not secret:
                raise ValueError(f"expected a secret in {args.secret_file}, got an empty file")
        grader = Grader(hidden, templates, sandbox, limits, seed=args.seed, visibility=args.visibility,
                        exercises=exercises, secret=secret)
    except (ValueError, OSError) as err:
        print(f"bncourse grade: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bncourse grade: interrupted before grading started", file=sys.stderr)
        return 130
    if sandbox.kind == "bwrap":
        print("bncourse grade: sandbox: bubblewrap (no network, no course files, resource limits)",
              file=sys.stderr)
    else:
        for warning in sandbox.warnings:
            print(f"bncourse grade: WARNING: {warning}", file=sys.stderr)
    try:
        rows = grade_batch(grader, submissions, out, jobs=args.jobs, resume=not args.no_resume)
    except KeyboardInterrupt:
        return 130
    errors = [name for name, r in rows if r.get("extra_data", {}).get("bncourse", {}).get("internal_error")]
    if errors:
        print(f"bncourse grade: the grader failed on {len(errors)} submission(s): {', '.join(errors)}; "
              "see their results.json", file=sys.stderr)
        return 1
    return 0


def _same_or_inside(path: Path, directory: Path) -> bool:
    try:
        path, directory = path.resolve(), directory.resolve()
    except (OSError, RuntimeError):
        return False
    return path == directory or directory in path.parents


def _cmd_autograder_zip(args: argparse.Namespace) -> int:
    from .grading.gradescope import build_autograder_zip

    paths = _paths()
    exercises = [e.strip() for e in args.exercises.split(",") if e.strip()] if args.exercises else None
    try:
        path = build_autograder_zip(Path(args.out), exercises=exercises,
                                    hidden=Path(args.hidden) if args.hidden else paths["hidden"],
                                    templates=Path(args.templates) if args.templates else paths["templates"],
                                    timeout=args.timeout, memory_mb=args.memory_mb)
    except ValueError as err:
        print(f"bncourse autograder-zip: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _cmd_student_kit(args: argparse.Namespace) -> int:
    from .grading.kit import write_student_kit

    try:
        files = write_student_kit(Path(args.out))
    except ValueError as err:
        print(f"bncourse student-kit: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(files)} files into {args.out}: exercises/, bncourse/, requirements.txt, README.md "
          "(no solutions, no hidden cases)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bncourse", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="the grader's verdict on your exercise's public checks",
                       description=CHECK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebook", help="your exercise notebook (.ipynb), e.g. my-exercises/ex01_forward.ipynb")
    p.add_argument("--templates", help="directory of released notebooks to take the checks from "
                   "(default: the copy inside the package)")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("grade", help="grade submissions into Gradescope results.json files")
    p.add_argument("submissions", nargs="+", help="notebooks, or directories of one student's notebooks")
    p.add_argument("--out", required=True, help="results directory: <out>/<name>/results.json, <out>/grades.csv")
    p.add_argument("--jobs", type=int, default=2, help="submissions graded in parallel (default 2)")
    p.add_argument("--exercises", help="comma-separated exercise ids this assignment grades "
                   "(default: what each notebook is; every exercise for a directory)")
    p.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds per exercise (default 10)")
    p.add_argument("--memory-mb", type=int, default=1024, help="address-space limit in MB (default 1024)")
    p.add_argument("--max-output", type=int, default=1_000_000, help="bytes of output allowed (default 1e6)")
    p.add_argument("--sandbox", choices=["auto", "bwrap", "process"], default="auto",
                   help="auto: bubblewrap if it works, else a limited process with a loud warning")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the hidden cases: every student gets the same cases for a seed (default 0)")
    p.add_argument("--secret-file", help="a file holding the instructor's secret, mixed into the seed "
                   "(default: tests/hidden/grading_secret if present)")
    p.add_argument("--visibility", default="visible",
                   choices=["visible", "hidden", "after_due_date", "after_published"])
    p.add_argument("--hidden", help="directory of the hidden cases (default: tests/hidden)")
    p.add_argument("--templates", help="directory of the released notebooks (default: book/exercises)")
    p.add_argument("--no-resume", action="store_true", help="regrade even if results.json exists")
    p.set_defaults(func=_cmd_grade)

    p = sub.add_parser("release", help="generate book/exercises/ from solutions/")
    p.add_argument("--solutions", help="solution notebooks (default: solutions/)")
    p.add_argument("--out", help="output directory (default: book/exercises/)")
    p.add_argument("--check", action="store_true", help="only report whether the output is up to date")
    p.add_argument("--force", action="store_true",
                   help="overwrite notebooks whose answer cells differ from the stubs (their answers are lost)")
    p.set_defaults(func=_cmd_release)

    p = sub.add_parser("autograder-zip", help="build a Gradescope autograder bundle")
    p.add_argument("--out", default="autograder.zip", help="zip file to write (default autograder.zip)")
    p.add_argument("--exercises", help="comma-separated exercise ids the Gradescope assignment grades, e.g. "
                   "ex01,ex03 (default: the exercises present in each submission)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="CPU seconds per exercise (default 10; the wall clock is only a generous backstop)")
    p.add_argument("--memory-mb", type=int, default=512,
                   help="memory limit of the student process in MB (default 512; Gradescope's container has 768)")
    p.add_argument("--hidden", help="directory of the hidden cases (default: tests/hidden)")
    p.add_argument("--templates", help="directory of the released notebooks (default: book/exercises)")
    p.set_defaults(func=_cmd_autograder_zip)

    p = sub.add_parser("student-kit", help="write what the students of a graded class receive")
    p.add_argument("--out", required=True, help="a new (or empty) directory")
    p.set_defaults(func=_cmd_student_kit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # `bncourse check ... | head`: the reader left, which is fine
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python flushes stdout again at exit
        return 1


if __name__ == "__main__":
    sys.exit(main())
