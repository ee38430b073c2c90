"""Work directories of the sandbox: removed however a student left them, and after killed runs.

A work directory is ``<tmp>/bncourse-grade-<pid>-<random>``, created 0700 by the grader.
:func:`remove_tree` deletes one without recursion or long paths (a student may nest
thousands of directories and make them unreadable); :func:`clean_stale_workdirs` removes
those whose grading process no longer exists (it was killed before it could clean up).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

__all__ = ["DYNAMIC_UIDS", "WORKDIR_PREFIX", "make_workdir", "remove_tree", "clean_stale_workdirs"]

WORKDIR_PREFIX = "bncourse-grade-"
# systemd's range for dynamic users: uids with no passwd entry that own no files elsewhere. A grader
# running as root hands each launch's work dir to one of them (see sandbox.py).
DYNAMIC_UIDS = range(61184, 65520)


def make_workdir() -> Path:
    """A fresh 0700 work directory named after this process (so a later run can tell it is stale)."""
    return Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))


def remove_tree(path: Path) -> None:
    """Remove a work directory, however deep or unreadable student code made it; never raises.

    Walks with directory file descriptors (``openat``/``unlinkat``), one level at a time,
    so depth costs neither recursion nor path length nor more than two open descriptors.
    """
    path = Path(path)
    nofollow = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_DIRECTORY", 0) | os.O_RDONLY
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return
        os.chmod(path, stat.S_IRWXU)
        fd = os.open(path, nofollow)
    except OSError:
        _fallback_rmtree(path)
        return
    names: list[str] = []  # the directories entered below ``path``
    try:
        while True:
            descend = None
            with os.scandir(fd) as it:
                entries = list(it)
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        descend = descend or entry.name
                    else:
                        os.unlink(entry.name, dir_fd=fd)
                except OSError:
                    pass
            if descend is not None:
                try:
                    os.chmod(descend, stat.S_IRWXU, dir_fd=fd)
                    child = os.open(descend, nofollow, dir_fd=fd)
                except OSError:
                    try:  # an empty directory we may not enter can still be removed
                        os.rmdir(descend, dir_fd=fd)
                        continue
                    except OSError:
                        break
                os.close(fd)
                fd = child
                names.append(descend)
                continue
            if not names:
                break
            parent = os.open("..", nofollow, dir_fd=fd)
            os.close(fd)
            fd = parent
            try:
                os.rmdir(names.pop(), dir_fd=fd)
            except OSError:
                break
    except OSError:
        pass
    finally:
        os.close(fd)
    try:
        os.rmdir(path)
    except OSError:
        _fallback_rmtree(path)


def _fallback_rmtree(path: Path) -> None:
    try:
        shutil.rmtree(path, ignore_errors=True)
    except RecursionError:
        pass


def clean_stale_workdirs(tmp: str | None = None) -> list[str]:
    """Remove work directories that killed runs of this user left in the temporary directory.

    A work directory is named ``bncourse-grade-<pid>-...``; it is stale when no process
    ``<pid>`` exists any more. Returns the removed paths.
    """
    tmp = tmp or tempfile.gettempdir()
    removed = []
    try:
        entries = list(os.scandir(tmp))
    except OSError:
        return removed
    for entry in entries:
        m = re.fullmatch(re.escape(WORKDIR_PREFIX) + r"(\d+)-.*", entry.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            owner = entry.stat(follow_symlinks=False).st_uid
            ours = owner == os.geteuid() or (os.geteuid() == 0 and owner in DYNAMIC_UIDS)
            if not ours or not entry.is_dir(follow_symlinks=False):
                continue
            os.kill(int(m.group(1)), 0)
            continue  # that process is alive: maybe another batch
        except ProcessLookupError:
            pass
        except OSError:
            continue
        # A killed grader's sandbox dies with it, but not in the same instant: while its last
        # writes land, a removal can leave the directory behind. Retry for a moment.
        deadline = time.monotonic() + 3.0
        remove_tree(Path(entry.path))
        while os.path.lexists(entry.path) and time.monotonic() < deadline:
            time.sleep(0.1)
            remove_tree(Path(entry.path))
        removed.append(entry.path)
    return removed
