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
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "write_results", "read_results", "write_grades_csv", "exercise_scores"]


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
    atomic_write(path, json.dumps(results, indent=2, sort_keys=False) + "\n")


def read_results(path: Path) -> dict[str, Any] | None:
    """A previously written ``results.json``, or ``None`` if missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "score" in data and "tests" in data else None


def exercise_scores(results: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """``{exercise id: (score, max_score)}`` from a results dict's ``extra_data``."""
    info = results.get("extra_data", {}).get("bncourse", {}).get("exercises", {})
    return {ex: (float(v["score"]), float(v["max_score"])) for ex, v in info.items()}


def write_grades_csv(path: Path, rows: list[tuple[str, dict[str, Any]]]) -> None:
    """One line per submission: name, score, max score, one column per exercise, and notes.

    ``rows`` pairs each submission name with its results dict.
    """
    exercise_ids = sorted({ex for _, r in rows for ex in exercise_scores(r)})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["submission", "score", "max_score", *exercise_ids, "notes"])
    for name, results in sorted(rows):
        per_ex = exercise_scores(results)
        info = results.get("extra_data", {}).get("bncourse", {})
        writer.writerow([
            name,
            _fmt(results.get("score", 0.0)),
            _fmt(info.get("max_score", sum(m for _, m in per_ex.values()))),
            *(_fmt(per_ex[ex][0]) if ex in per_ex else "" for ex in exercise_ids),
            " | ".join(info.get("notes", []))[:500],
        ])
    atomic_write(path, buf.getvalue())


def _fmt(x: Any) -> str:
    return f"{float(x):g}"
