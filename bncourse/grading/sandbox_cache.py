"""The grader's sandbox choice, remembered for ``bncourse check`` (one sandbox start saved per check).

:func:`~bncourse.grading.sandbox.detect_sandbox` starts the sandbox once to see that it
works; a student runs ``check`` again and again on the same machine, so the result is kept
for an hour in ``~/.cache/bncourse/sandbox.json`` (or ``$XDG_CACHE_HOME``), keyed on
everything it depends on: the sandbox and runner code, the interpreter, NumPy, the
``bwrap`` binary and the user. A remembered sandbox that fails to start is forgotten and
detected afresh by the caller (:func:`forget`). The grader itself never uses this cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .sandbox import RUNNER, Sandbox, detect_sandbox

__all__ = ["cached_sandbox", "forget"]

MAX_AGE = 3600.0


def _path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bncourse" / "sandbox.json"


def _key(mode: str) -> str:
    h = hashlib.sha256(f"{mode}|{sys.executable}|{sys.version}|{sys.platform}".encode())
    for source in (Path(__file__).with_name("sandbox.py"), RUNNER):
        h.update(source.read_bytes())
    numpy = importlib.util.find_spec("numpy")
    h.update(str(numpy.origin if numpy else None).encode())
    bwrap = shutil.which("bwrap")
    if bwrap:
        stat = os.stat(bwrap)
        h.update(f"{bwrap}|{stat.st_mtime_ns}|{stat.st_size}".encode())
    h.update(str(os.getuid() if hasattr(os, "getuid") else "").encode())
    return h.hexdigest()


def _encode(value: Any) -> Any:
    if isinstance(value, Path):
        return {"path": str(value)}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"path"}:
        return Path(value["path"])
    if isinstance(value, dict) and set(value) == {"tuple"}:
        return tuple(_decode(v) for v in value["tuple"])
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def cached_sandbox(mode: str = "auto") -> tuple[Sandbox, bool]:
    """``(sandbox, remembered)``: the remembered choice when it is fresh, else a new detection."""
    key = _key(mode)
    try:
        data = json.loads(_path().read_text(encoding="utf-8"))
        if data["key"] == key and 0 <= time.time() - data["at"] < MAX_AGE:
            fields = {name: _decode(value) for name, value in data["sandbox"].items()}
            if set(fields) == {f.name for f in dataclasses.fields(Sandbox)}:
                return Sandbox(**fields), True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    sandbox = detect_sandbox(mode)
    record = {"key": key, "at": time.time(),
              "sandbox": {f.name: _encode(getattr(sandbox, f.name)) for f in dataclasses.fields(Sandbox)}}
    try:
        path = _path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        tmp.replace(path)
    except (OSError, TypeError, ValueError):
        pass  # no cache then: every check detects afresh
    return sandbox, False


def forget() -> None:
    """Drop the remembered choice (it failed to start)."""
    try:
        _path().unlink()
    except OSError:
        pass
