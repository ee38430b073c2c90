"""Repository hygiene: notebooks are committed clean, and the README's commands are what CI runs."""

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked_or_new_notebooks():
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.ipynb"],
        cwd=ROOT, capture_output=True, text=True,
    )
    if out.returncode != 0:  # not a git checkout (e.g. an unpacked archive): scan the tree
        return sorted(p for p in ROOT.rglob("*.ipynb") if not any(s.startswith((".", "_build")) for s in p.relative_to(ROOT).parts))
    return sorted(ROOT / line for line in out.stdout.splitlines() if line)


NOTEBOOKS = _tracked_or_new_notebooks()


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [
        i for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs or execution counts; clear them before committing"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^python3 tasks\.py \w+$", readme, flags=re.M)
    assert commands == ["python3 tasks.py lab", "python3 tasks.py book", "python3 tasks.py test"], commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 tasks.py test" in ci.splitlines()


def test_every_chapter_in_toc_exists():
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [ch["file"] for ch in part.get("chapters", [])]
    for name in files:
        assert any((ROOT / f"{name}{ext}").exists() for ext in (".md", ".ipynb")), name


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("*.ipynb")), ids=lambda p: p.name)
def test_exercises_read_well_outside_the_book(path):
    """Students open exercises in JupyterLab or Colab, where MyST roles show as raw text."""
    nb = json.loads(path.read_text())
    text = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    roles = re.findall(r"\{(?:cite|cite:\w+|doc|ref|numref|eq)\}`[^`]*`", text)
    assert not roles, f"{path.name}: write these as plain links, they show raw outside the book: {roles}"
