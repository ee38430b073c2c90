"""Writing results: Gradescope's ``results.json`` per submission and ``grades.csv`` per batch.

Both are written atomically (a temporary file in the same directory, then
``os.replace``), so an interrupted run leaves either the old file or the new
one, never half of one; that is what makes a rerun able to skip finished work.

``results.json`` follows Gradescope's autograder specification: top-level
``score``, ``execution_time``, ``output``, ``visibility``, ``stdout_visibility``,
``extra_data`` and ``tests``, each test with ``name``, ``number``, ``score``,
``max_score``, ``output`` and ``visibility``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "write_results", "read_results", "write_grades_csv", "exercise_scores",
           "collect_rows", "csv_cell"]


FILE_MODE = 0o640  # the instructor's group (TAs) may read results; nobody else
DIR_MODE = 0o750
MAX_RESULTS_BYTES = 50_000_000


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0640) via a temporary file and ``os.replace``."""
    path = Path(path)
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        os.chmod(path.parent, DIR_MODE)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_results(path: Path, results: dict[str, Any]) -> None:
    # ensure_ascii: any lone surrogate that slipped into a message is escaped, never an encoding error.
    atomic_write(path, json.dumps(results, indent=2, sort_keys=False) + "\n")


def read_results(path: Path) -> dict[str, Any] | None:
    """A previously written ``results.json``, or ``None`` if missing, unreadable or not ours."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_RESULTS_BYTES + 1)
        if len(data) > MAX_RESULTS_BYTES:
            return None
        results = json.loads(data.decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)
    return results if isinstance(results, dict) and "score" in results and "tests" in results else None


def collect_rows(out_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(name, results)`` for every ``<out_dir>/<name>/results.json`` (each batch into it adds rows)."""
    rows = []
    try:
        entries = sorted(os.scandir(out_dir), key=lambda e: e.name)
    except OSError:
        return rows
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            results = read_results(Path(entry.path) / "results.json")
            if results is not None:
                rows.append((entry.name, results))
    return rows


def exercise_scores(results: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """``{exercise id: (score, max_score)}`` from a results dict's ``extra_data``."""
    info = _info(results).get("exercises", {})
    scores = {}
    for ex, v in (info.items() if isinstance(info, dict) else []):
        try:
            scores[str(ex)] = (float(v["score"]), float(v["max_score"]))
        except (TypeError, KeyError, ValueError):
            continue
    return scores


def write_grades_csv(path: Path, rows: list[tuple[str, dict[str, Any]]]) -> None:
    """One line per submission: name, score, max score, one column per exercise, notes, source file.

    ``rows`` pairs each submission name with its results dict. Every text cell goes
    through :func:`csv_cell` (no control characters, no formula); scores are rounded
    to 2 decimals.
    """
    exercise_ids = sorted({ex for _, r in rows for ex in exercise_scores(r)})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["submission", "score", "max_score", *exercise_ids, "notes", "source"])
    for name, results in sorted(rows, key=lambda row: row[0]):
        per_ex = exercise_scores(results)
        info = _info(results)
        notes = info.get("notes", [])
        notes = [str(n) for n in notes] if isinstance(notes, list) else [str(notes)]
        writer.writerow([
            csv_cell(name),
            _fmt(results.get("score", 0.0)),
            _fmt(info.get("max_score", sum(m for _, m in per_ex.values()))),
            *(_fmt(per_ex[ex][0]) if ex in per_ex else "" for ex in exercise_ids),
            csv_cell(" | ".join(notes)[:500]),
            csv_cell(info.get("source", "")),
        ])
    atomic_write(path, buf.getvalue())


# C0 and C1 controls, DEL, and the invisible format characters that reorder text (bidi).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]+")
_FORMULA_START = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")  # and full-width forms


def csv_cell(value: Any) -> str:
    """A text cell a spreadsheet shows as text (OWASP's CSV-injection rule).

    Control characters become spaces (tab and CR included, so nothing hides a leading
    ``=``), surrounding space is trimmed, and a cell that still starts with ``=``, ``+``,
    ``-`` or ``@`` gets a leading ``'``; the csv module quotes embedded quotes and commas.
    """
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    text = _CONTROL.sub(" ", text).strip()
    return "'" + text if text.startswith(_FORMULA_START) else text


def _info(results: dict[str, Any]) -> dict[str, Any]:
    extra = results.get("extra_data")
    info = extra.get("bncourse") if isinstance(extra, dict) else None
    return info if isinstance(info, dict) else {}


def _fmt(x: Any) -> str:
    """A score with at most 2 decimals: ``8``, ``7.5``, ``6.67``."""
    try:
        value = round(float(x), 2) + 0.0
    except (TypeError, ValueError):
        return ""
    return f"{value:.2f}".rstrip("0").rstrip(".")
