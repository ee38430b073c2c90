"""nbval over the book's notebooks, without executing a chapter twice in one CI run.

`python3 tasks.py book` executes every chapter (errors fail the build) and jupyter-cache keeps each
successful execution keyed by the notebook's code. `tasks.py book` empties that cache whenever the
package or the requirements change (see `tasks.py`), so a cached record means: this exact notebook ran
without an error against this exact package. nbval then skips those notebooks, saying so, and executes
every other one (all of them when no book has been built).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tasks_module():
    spec = importlib.util.spec_from_file_location("bncourse_tasks", ROOT / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _executed_by_build(path: Path) -> bool:
    tasks = _tasks_module()
    stamp = tasks.CACHE_STAMP
    if os.environ.get("BNCOURSE_NBVAL_ALL") or not stamp.is_file() or stamp.read_text() != tasks.book_inputs_digest():
        return False
    try:
        import nbformat
        from jupyter_cache import get_cache

        get_cache(tasks.JUPYTER_CACHE).match_cache_notebook(nbformat.read(path, as_version=4))
    except Exception:  # not cached, or a cache this jupyter-cache cannot read: execute it here
        return False
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    verdicts: dict[Path, bool] = {}
    for item in items:
        path = Path(str(item.fspath))
        if path.suffix != ".ipynb" or ROOT / "book" not in path.parents:
            continue
        if path not in verdicts:
            verdicts[path] = _executed_by_build(path)
        if verdicts[path]:
            item.add_marker(pytest.mark.skip(
                reason="executed without error by this checkout's book build (same notebook code, same package; "
                       "set BNCOURSE_NBVAL_ALL=1 to run it again here)"))
