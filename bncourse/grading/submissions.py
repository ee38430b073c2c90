"""Submissions as the grader meets them: which paths, under which result names, with which files.

Everything here treats the submission as hostile input: nothing is followed through a
symbolic link, directories are walked iteratively with bounds, and the name a result
directory gets is safe as a path and distinct for distinct students (:func:`result_name`).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .notebooks import MAX_NOTEBOOK_BYTES, NotebookError, display_name, read_regular_file

__all__ = ["Submission", "collect_submissions", "result_name", "walk_submission", "RESERVED_NAMES",
           "MAX_DIR_ENTRIES", "MAX_DIR_DEPTH", "MAX_SUBMISSION_BYTES"]

RESERVED_NAMES = frozenset({"grades.csv"})  # files grade_batch writes next to the result directories
MAX_DIR_ENTRIES = 400  # files and folders looked at in one directory submission
MAX_DIR_DEPTH = 6
MAX_SUBMISSION_BYTES = 100_000_000  # all notebooks of one directory submission together


def result_name(stem: str) -> str:
    """The results directory name for a submission called ``stem``: distinct, and safe as a path.

    A name made only of letters and digits (any script, in NFC), ``.``, ``_`` and ``-``, not
    starting with ``.`` and not reserved, is kept as it is (``Müller``, ``张伟``). Any other
    name gets the safe part of it plus ``~`` and 10 hex digits of the SHA-256 of its original
    bytes (``M_ller~3f0c...`` for a non-UTF-8 ``M\\xfcller``). Kept names never contain ``~``,
    so a kept name and a hashed one can never be equal, and two hashed names are equal only if
    the original names were.
    """
    raw = os.fsencode(stem)
    keep = (stem.isprintable() and re.fullmatch(r"[\w.-]+", stem) is not None
            and unicodedata.normalize("NFC", stem) == stem and not stem.startswith(".")
            and stem.casefold() not in RESERVED_NAMES and len(raw) <= 100)
    if keep:
        return stem
    readable = raw.decode("utf-8", "replace")
    base = re.sub(r"[^\w.-]+", "_", unicodedata.normalize("NFC", readable)).strip("._-")[:60]
    return f"{base or 'submission'}~{hashlib.sha256(raw).hexdigest()[:10]}"


def walk_submission(root: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """Files in a directory submission, as ``(label, path)``, without following symbolic links.

    Iterative (a student's tree may be thousands deep), bounded by :data:`MAX_DIR_ENTRIES`
    and :data:`MAX_DIR_DEPTH`; hidden names and ``.ipynb_checkpoints`` are skipped. Every
    non-directory entry is listed, special files included (reading them is refused later,
    with a message). Returns the files and notes about what was not looked at.
    """
    files: list[tuple[str, Path]] = []
    notes: list[str] = []
    stack: list[tuple[Path, tuple[str, ...]]] = [(Path(root), ())]
    seen = 0
    while stack:
        directory, parts = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: os.fsencode(e.name))
        except OSError as err:
            notes.append(f"could not list {display_name('/'.join(parts) or '.')}: {err.strerror}")
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith(".") or entry.name == "__pycache__":
                continue
            seen += 1
            if seen > MAX_DIR_ENTRIES:
                notes.append(f"looked at the first {MAX_DIR_ENTRIES} files and folders only")
                return files, notes
            if entry.is_dir(follow_symlinks=False):
                if len(parts) + 1 >= MAX_DIR_DEPTH:
                    notes.append(f"ignored folders nested deeper than {MAX_DIR_DEPTH} levels")
                    continue
                subdirs.append((Path(entry.path), parts + (entry.name,)))
            else:
                files.append(("/".join(display_name(p) for p in parts + (entry.name,)), Path(entry.path)))
        stack.extend(reversed(subdirs))
    return files, list(dict.fromkeys(notes))


@dataclass(frozen=True)
class Submission:
    """One student's submission: a notebook file or a directory of notebooks.

    ``name`` is the results directory (see :func:`result_name`); ``source`` is the
    original file name as it can be shown (see :func:`~.notebooks.display_name`).
    """

    name: str
    path: Path
    source: str = ""

    @property
    def is_dir(self) -> bool:
        """A real directory (a symbolic link to one is not: it is refused when read)."""
        try:
            return stat.S_ISDIR(os.lstat(self.path).st_mode)
        except OSError:
            return False

    def digest(self) -> str:
        """SHA-256 of what grading depends on: names, modification times and notebook bytes."""
        h = hashlib.sha256()
        files = walk_submission(self.path)[0] if self.is_dir else [(self.path.name, self.path)]
        budget = MAX_SUBMISSION_BYTES  # as in grading: notebooks beyond it are not read
        for label, path in files:
            h.update(os.fsencode(str(label)) + b"\0")
            try:
                info = os.lstat(path)
                h.update(f"{stat.S_IFMT(info.st_mode)}:{info.st_size}:{info.st_mtime_ns}".encode())
            except OSError as err:
                h.update(f"unreadable: {err.strerror}".encode())
                continue
            if path.suffix == ".ipynb" or not self.is_dir:
                budget -= info.st_size
                if budget < 0:
                    continue
                try:
                    h.update(read_regular_file(path, MAX_NOTEBOOK_BYTES))
                except NotebookError as err:
                    h.update(str(err).encode("utf-8", "backslashreplace"))
        return h.hexdigest()


def collect_submissions(paths: list[str | Path]) -> list[Submission]:
    """Submissions from command-line paths; ``ValueError`` for missing paths or clashing names.

    A file is one submission named after its stem (``alice.ipynb`` -> ``alice``); a
    directory is one submission named after the directory. Symbolic links and special
    files are kept as submissions (they are graded 0 with a message, never read through).
    Names that differ only in case get a hash suffix, so that they stay apart on
    case-insensitive file systems; the very same name twice is refused.
    """
    found: list[tuple[str, Path, str]] = []
    for raw in paths:
        path = Path(raw)
        try:
            info = os.lstat(path)
        except OSError:
            raise ValueError(f"expected a submission file or directory, got {display_name(str(raw))!r}, "
                             "which does not exist") from None
        stem = path.name if stat.S_ISDIR(info.st_mode) or not path.suffix else path.stem
        found.append((stem, path, display_name(path.name)))
    by_fold: dict[str, set[str]] = {}
    for stem, _, _ in found:
        by_fold.setdefault(result_name(stem).casefold(), set()).add(stem)
    subs: dict[str, Submission] = {}
    for stem, path, source in found:
        name = result_name(stem)
        if len(by_fold[name.casefold()]) > 1 and "~" not in name:
            name = f"{name}~{hashlib.sha256(os.fsencode(stem)).hexdigest()[:10]}"
        if name in subs:
            raise ValueError(f"two submissions would share the results directory {name!r}: "
                             f"{display_name(str(subs[name].path))} and {display_name(str(path))}; "
                             "rename one")
        subs[name] = Submission(name, path, source)
    return list(subs.values())


