"""tasks.py's execution cache: emptied when the package or the pins change, kept otherwise.

book/conftest.py lets nbval skip a chapter only when the book build ran it against the current package,
so the cache must never survive a change of the code a chapter calls.
"""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tasks(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("tasks_under_test", ROOT / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "bncourse").mkdir()
    (tmp_path / "bncourse" / "core.py").write_text("x = 1\n")
    for name in module.INSTALL_INPUTS:
        (tmp_path / name).write_text("numpy\n")
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "JUPYTER_CACHE", tmp_path / "_build" / ".jupyter_cache")
    monkeypatch.setattr(module, "CACHE_STAMP", module.JUPYTER_CACHE / "bncourse-inputs.sha256")
    return module


def test_cache_kept_while_nothing_changes(tasks):
    tasks._fresh_execution_cache()
    record = tasks.JUPYTER_CACHE / "global.db"
    record.write_text("executed chapters")
    tasks._fresh_execution_cache()
    assert record.read_text() == "executed chapters"


@pytest.mark.parametrize("changed", ["bncourse/core.py", "bncourse/new_module.py", "requirements.txt"])
def test_cache_emptied_when_package_or_pins_change(tasks, changed):
    tasks._fresh_execution_cache()
    record = tasks.JUPYTER_CACHE / "global.db"
    record.write_text("executed chapters")
    (tasks.ROOT / changed).write_text("x = 2\n")
    tasks._fresh_execution_cache()
    assert not record.exists()
    assert tasks.CACHE_STAMP.read_text() == tasks.book_inputs_digest()


def test_a_cache_without_stamp_is_not_trusted(tasks):
    tasks.JUPYTER_CACHE.mkdir(parents=True)
    record = tasks.JUPYTER_CACHE / "global.db"
    record.write_text("executed by an older tasks.py")
    tasks._fresh_execution_cache()
    assert not record.exists()
