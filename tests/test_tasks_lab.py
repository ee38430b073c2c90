"""`python3 tasks.py lab`: the student's set-up copies the exercises and never overwrites their work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lab(root: Path) -> subprocess.CompletedProcess:
    # The install step is skipped: this test is about the notebooks, and must not touch the network.
    env = {**os.environ, "BNCOURSE_LAB_SKIP_INSTALL": "1"}
    return subprocess.run([sys.executable, str(root / "tasks.py"), "lab", "--no-launch"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)


def test_lab_twice_keeps_an_edited_notebook_and_adds_new_exercises(tmp_path):
    shutil.copyfile(ROOT / "tasks.py", tmp_path / "tasks.py")
    shutil.copyfile(ROOT / "requirements.txt", tmp_path / "requirements.txt")
    released = tmp_path / "book" / "exercises"
    released.mkdir(parents=True)
    for nb in sorted((ROOT / "book" / "exercises").glob("ex*.ipynb"))[:2]:
        shutil.copyfile(nb, released / nb.name)
    first = _lab(tmp_path)
    assert first.returncode == 0, first.stderr
    mine = tmp_path / "my-exercises"
    names = sorted(p.name for p in released.glob("*.ipynb"))
    assert sorted(p.name for p in mine.glob("*.ipynb")) == names
    edited = mine / names[0]
    nb = json.loads(edited.read_text())
    nb["cells"][0]["source"] = "my answers live here"
    edited.write_text(json.dumps(nb))
    before = edited.read_bytes()
    later = sorted((ROOT / "book" / "exercises").glob("ex*.ipynb"))[2]  # an exercise released later
    shutil.copyfile(later, released / later.name)
    second = _lab(tmp_path)
    assert second.returncode == 0, second.stderr
    assert edited.read_bytes() == before
    assert (mine / later.name).read_bytes() == later.read_bytes()
    assert f"Copied 1 exercise(s) into my-exercises/: {later.name}" in second.stdout
    assert not list(mine.glob(".*.tmp"))


def test_my_exercises_is_git_ignored():
    assert "my-exercises/" in (ROOT / ".gitignore").read_text().splitlines()


def test_lab_installs_versions_from_requirements():
    sys.path.insert(0, str(ROOT))
    try:
        import tasks
    finally:
        sys.path.remove(str(ROOT))
    assert tasks._requirement("torch").startswith("torch==")
    assert tasks._requirement("jupyterlab").startswith("jupyterlab>=")
    assert tasks._requirement("numpy").startswith("numpy>=")
    assert tasks._reachable("http://127.0.0.1:9/", timeout=1.0) is False  # nothing listens on port 9


def _plan(monkeypatch, missing: list[str], reachable: bool) -> list[list[str]]:
    """The pip commands `lab` would run when ``missing`` modules are absent (nothing is installed)."""
    sys.path.insert(0, str(ROOT))
    try:
        import tasks
    finally:
        sys.path.remove(str(ROOT))
    commands: list[list[str]] = []
    monkeypatch.setattr(tasks, "_missing", lambda python, modules: [m for m in modules if m in missing])
    monkeypatch.setattr(tasks, "_reachable", lambda url, timeout=3.0: reachable)
    monkeypatch.setattr(tasks, "_run", commands.append)
    monkeypatch.setattr(tasks.Path, "exists", lambda self: True)  # the venv's python "exists"
    tasks.ensure_lab_venv()
    return commands


def test_lab_installs_only_what_is_missing_and_torch_from_the_cpu_index(monkeypatch):
    assert _plan(monkeypatch, [], reachable=True) == []  # a full environment: nothing to do
    cpu = _plan(monkeypatch, ["torch", "jupyterlab"], reachable=True)
    assert "--index-url" in cpu[0] and "https://download.pytorch.org/whl/cpu" in cpu[0]
    assert any(arg.startswith("torch==") for arg in cpu[0])
    assert any(arg.startswith("jupyterlab") for arg in cpu[1]) and "-e" in cpu[1]
    offline = _plan(monkeypatch, ["torch"], reachable=False)
    assert "--index-url" not in offline[0] and any(arg.startswith("torch==") for arg in offline[0])
    for command in cpu + offline:  # never the book's toolchain
        assert not any(arg.startswith(("jupyter-book", "playwright", "-r")) for arg in command), command
