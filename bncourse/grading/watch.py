"""What the trusted process watches while a sandboxed run goes: pipes, CPU time, disk use.

Everything here reads untrusted data in bounded memory: pipes are read in raw chunks
with a hard cap (never line by line, so a flood without newlines costs nothing), and
``/proc`` and the file system are read with fixed-size reads and counted walks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["CappedReader", "EventReader", "cpu_seconds", "disk_usage", "find_runner", "kill_group",
           "tmpfs_usage"]


def disk_usage(root: Path, max_entries: int) -> tuple[int, int]:
    """Bytes and entries under ``root`` (symlinks not followed), counting at most ``max_entries + 1``."""
    size, count, stack = 0, 0, [str(root)]
    while stack and count <= max_entries:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    count += 1
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        size += entry.stat(follow_symlinks=False).st_size
                    if count > max_entries:
                        break
        except OSError:
            continue
    return size, count


def tmpfs_usage(pid: int) -> tuple[int, int]:
    """Bytes and inodes in use on the sandbox's tmpfs, seen through the runner's root."""
    try:
        st = os.statvfs(f"/proc/{pid}/root/sandbox")
    except OSError:
        return 0, 0
    return (st.f_blocks - st.f_bfree) * st.f_frsize, max(st.f_files - st.f_ffree - 1, 0)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read(4096)
    except OSError:
        return None
    # The command name is in parentheses and may hold anything; the fields follow the last ')'.
    return data[data.rfind(b")") + 2:].decode("ascii", "replace").split()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` (all its threads), from ``/proc``; ``None`` if unreadable."""
    fields = _stat_fields(pid)
    if not fields or len(fields) < 13:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def find_runner(group: int) -> int | None:
    """The runner inside bubblewrap: the process of the launch's process group that is not bwrap."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for name in entries:
        if not name.isdigit() or int(name) == group:
            continue
        fields = _stat_fields(int(name))
        if fields and len(fields) > 2 and fields[2] == str(group):
            try:
                with open(f"/proc/{name}/comm", "rb") as f:
                    if f.read(64).strip() != b"bwrap":
                        return int(name)
            except OSError:
                continue
    return None


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group; bwrap's PID namespace dies with its init."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class CappedReader(threading.Thread):
    """Drains a pipe, keeping the first ``KEEP`` bytes and counting the rest (never more in memory)."""

    KEEP = 16_384

    def __init__(self, stream: Any, limit: int) -> None:
        super().__init__(daemon=True)
        self.stream, self.limit = stream, limit
        self.head = bytearray()
        self.total = 0
        self.start()

    @property
    def exceeded(self) -> bool:
        return self.total > self.limit

    def run(self) -> None:
        fd = self.stream.fileno()
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self.total += len(chunk)
                if len(self.head) < self.KEEP:
                    self.head += chunk[: self.KEEP - len(self.head)]
        except (OSError, ValueError):
            pass
        finally:
            try:
                self.stream.close()
            except OSError:
                pass

    def text(self) -> str:
        return self.head.decode("utf-8", "replace")


class EventReader(threading.Thread):
    """Parses the runner's JSON lines from a file descriptor, in bounded memory.

    Reads raw chunks (never ``for line in stream``, which buffers a line of any length):
    at most ``MAX_LINE`` bytes are held for one line (longer ones are skipped), at most
    ``MAX_BYTES`` are parsed in all and ``MAX_EVENTS`` kept; past that the pipe is still
    drained (so the writer is not blocked) and :attr:`exceeded` tells the grader to stop
    the run. Tracks which exercise and case are running.
    """

    MAX_BYTES = 4_000_000
    MAX_LINE = 65_536
    MAX_EVENTS = 20_000

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.events: list[dict[str, Any]] = []
        self.exercise: str | None = None
        self.case: int | None = None
        self.current_since: float | None = None
        self.starts = 0
        self.total = 0
        self.exceeded = False
        self.start()

    def run(self) -> None:
        buf, skipping = bytearray(), False
        try:
            while True:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                self.total += len(chunk)
                if self.exceeded or self.total > self.MAX_BYTES:
                    self.exceeded = True
                    continue  # drain, keep nothing
                buf += chunk
                while True:
                    end = buf.find(b"\n")
                    if end < 0:
                        break
                    line = bytes(buf[:end])
                    del buf[:end + 1]
                    if skipping:
                        skipping = False
                    else:
                        self._handle(line)
                if len(buf) > self.MAX_LINE:
                    buf.clear()
                    skipping = True
        except OSError:
            pass
        finally:
            os.close(self.fd)

    def _handle(self, line: bytes) -> None:
        if len(self.events) >= self.MAX_EVENTS:
            self.exceeded = True
            return
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            return
        if not isinstance(event, dict):
            return
        self.events.append(event)
        kind = event.get("ev")
        if kind == "start":
            self.exercise, self.case = str(event.get("ex"))[:100], None
            self.current_since = time.monotonic()
            self.starts += 1
        elif kind == "case_start" and type(event.get("case")) is int:
            self.case = event["case"]
        elif kind == "end":
            self.current_since = None
