"""File names and grades.csv: every student keeps a distinct results directory and one safe row.

Two batches go into the same ``--out``: names that used to collapse (``Müller``/``Mäller``,
``张伟``/``李娜``), a name that is not UTF-8, ``grades.csv.ipynb``, names that differ only in
case, a name that is a spreadsheet formula, and a directory whose file names carry formulas
and terminal escapes into the notes. A rerun resumes without grading anything again.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

from bncourse.grading.grader import _apportion, collect_submissions, grade_batch
from bncourse.grading.submissions import result_name
from bncourse.grading.results import csv_cell

from grading_helpers import PATHS, ROOT, leftovers, mutate, results_of, write_nb

SOLUTION = PATHS["solutions"] / "ex01_forward.ipynb"
STUB = PATHS["templates"] / "ex01_forward.ipynb"
NOT_UTF8 = os.fsdecode(b"M\xfcller.ipynb")  # Latin-1, as an old zip tool would write it
FORMULA = '=HYPERLINK("example.invalid","click").ipynb'
NOTE_FILES = ["=cmd|' -C calc'!A0.txt", "\x1b]0;owned\x07\x1b[31mred.txt", "+SUM(A1).txt", "@x.txt",
              "\tTAB.txt"]

FIRST = {"Müller.ipynb": SOLUTION, "Mäller.ipynb": STUB, "张伟.ipynb": SOLUTION, "李娜.ipynb": STUB,
         NOT_UTF8: SOLUTION, "grades.csv.ipynb": SOLUTION}
SECOND = {"Alice.ipynb": SOLUTION, "alice.ipynb": STUB, FORMULA: SOLUTION}


@pytest.fixture(scope="module")
def graded(grader, tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    first, second = root / "first", root / "second"
    for folder, files in ((first, FIRST), (second, SECOND)):
        folder.mkdir()
        for name, source in files.items():
            shutil.copyfile(source, folder / name)
    # A wrong dbeta: 6 of the 7 values of each "other nodes" case (a quarter of the points) pass.
    write_nb(second / "partial.ipynb", mutate("ex03", [("dbeta = dout.sum(axis=0)",
                                                        "dbeta = 2.0 * dout.sum(axis=0)")]))
    evil = second / "evil_dir"
    evil.mkdir()
    shutil.copyfile(SOLUTION, evil / "ex01_forward.ipynb")
    for name in NOTE_FILES:
        (evil / name).write_text("x")
    out = root / "out"
    subs1 = collect_submissions(sorted(first.iterdir()))
    subs2 = collect_submissions(sorted(second.iterdir()))
    grade_batch(grader, subs1, out, jobs=2, progress=None)
    grade_batch(grader, subs2, out, jobs=2, progress=None)
    log = io.StringIO()
    grade_batch(grader, subs1, out, jobs=2, progress=log)  # resumed: the non-UTF-8 name must not crash it
    return {"out": out, "names": {s.path.name: s.name for s in subs1 + subs2}, "resume_log": log.getvalue()}


def test_every_student_has_a_distinct_results_directory(graded):
    names = graded["names"]
    assert len(set(names.values())) == len(names) == len(FIRST) + len(SECOND) + 2
    assert {len({n.casefold() for n in names.values()})} == {len(names)}, "distinct also without case"
    assert names["Müller.ipynb"] == "Müller" and names["Mäller.ipynb"] == "Mäller"
    assert names["张伟.ipynb"] == "张伟" and names["李娜.ipynb"] == "李娜"
    assert re.fullmatch(r"M_ller~[0-9a-f]{10}", names[NOT_UTF8])
    assert re.fullmatch(r"grades\.csv~[0-9a-f]{10}", names["grades.csv.ipynb"])
    assert names["Alice.ipynb"] != names["alice.ipynb"] and "~" in names["alice.ipynb"]
    assert (graded["out"] / "grades.csv").is_file()


def test_each_student_gets_their_own_score(graded):
    out, names = graded["out"], graded["names"]
    expected = {"Müller.ipynb": 10.0, "Mäller.ipynb": 0.0, "张伟.ipynb": 10.0, "李娜.ipynb": 0.0,
                NOT_UTF8: 10.0, "grades.csv.ipynb": 10.0, "Alice.ipynb": 10.0, "alice.ipynb": 0.0,
                FORMULA: 10.0}
    for file, score in expected.items():
        results = results_of(out, names[file])
        assert results["score"] == score, file
        assert "internal_error" not in results["extra_data"]["bncourse"], file
    assert results_of(out, names[NOT_UTF8])["extra_data"]["bncourse"]["source"] == "M\\xfcller.ipynb"


def test_a_resumed_run_skips_everything_already_graded(graded):
    log = graded["resume_log"]
    assert log.count("(already graded)") == len(FIRST), log


def test_grades_csv_has_one_safe_row_per_student_from_both_batches(graded):
    text = (graded["out"] / "grades.csv").read_text(encoding="utf-8")
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", text), "control characters reached grades.csv"
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    assert header[:3] == ["submission", "score", "max_score"] and header[-2:] == ["notes", "source"]
    assert {"ex01", "ex03"} <= set(header)
    assert sorted(r[0] for r in body) == sorted(graded["names"].values())
    for row in body:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), row
    by_name = {r[0]: dict(zip(header, r)) for r in body}
    evil = by_name["evil_dir"]
    assert "'=cmd" not in evil["notes"] and "=cmd|' -C calc'!A0.txt" in evil["notes"]  # inside, harmless
    assert "owned" in evil["notes"] and "\x1b" not in evil["notes"]
    assert by_name[graded["names"][FORMULA]]["source"].startswith("'=HYPERLINK(")


def test_scores_are_rounded_once_to_two_decimals(graded):
    results = results_of(graded["out"], "partial")
    # 10 - 2.5/7 = 9.642857...: rounded once, on the total (not each case's sevenths first)
    assert results["score"] == 9.64
    scores = [results["score"], *(t["score"] for t in results["tests"]),
              *(v["score"] for v in results["extra_data"]["bncourse"]["exercises"].values())]
    assert all(round(s, 2) == s for s in scores), scores
    assert round(sum(t["score"] for t in results["tests"]), 6) == results["score"]
    text = (graded["out"] / "grades.csv").read_text(encoding="utf-8")
    assert "\npartial,9.64,10," in text
    assert not re.search(r"\d\.\d{3}", text)


def test_results_are_readable_by_the_instructors_group_only(graded):
    out = graded["out"]
    assert stat.S_IMODE((out / "grades.csv").stat().st_mode) == 0o640
    for name in graded["names"].values():
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o750, name
        assert stat.S_IMODE((out / name / "results.json").stat().st_mode) == 0o640, name


def test_nothing_is_left_behind(graded):
    assert leftovers() == ([], [])


def test_result_names_never_meet():
    stems = ["Müller", "Mäller", "张伟", "李娜", os.fsdecode(b"M\xfcller"), os.fsdecode(b"M\xe4ller"),
             "grades.csv", "GRADES.CSV", ".hidden", "a/b", "a_b", "", "M_ller", "x" * 300, "x" * 301,
             "Mu\u0308ller", "e\u202etxt.exe"]
    names = [result_name(s) for s in stems]
    assert len(set(names)) == len(stems)
    for name in names:
        assert name and "/" not in name and not name.startswith(".") and name.casefold() != "grades.csv"
        name.encode("utf-8")


def test_csv_cell_and_apportion():
    assert csv_cell('=HYPERLINK("x")') == '\'=HYPERLINK("x")'
    assert csv_cell("\t\r=1+1") == "'=1+1" and csv_cell("-2") == "'-2" and csv_cell("ok") == "ok"
    assert csv_cell("a\x1b[2Jb\u202ec") == "a [2Jb c"
    thirds = [2 / 3] * 3 + [1 / 3] * 3
    cents = _apportion(thirds, 300)
    assert sum(cents) == 300 and all(abs(c - r * 100) < 1 for c, r in zip(cents, thirds))


def test_the_results_folder_is_never_graded_as_a_submission(tmp_path):
    subs = tmp_path / "subs"
    (subs / "out").mkdir(parents=True)  # `bncourse grade subs/* --out subs/out`, run a second time
    shutil.copyfile(SOLUTION, subs / "ann.ipynb")
    run = subprocess.run([sys.executable, "-m", "bncourse.cli", "grade", str(subs / "ann.ipynb"),
                          str(subs / "out"), "--out", str(subs / "out")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "skipping" in run.stderr and "it is the results directory --out" in run.stderr
    assert sorted(p.name for p in (subs / "out").iterdir()) == ["ann", "grades.csv"]
