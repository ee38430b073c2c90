"""Helpers shared by the hidden-case generators (loaded by path, not as a package)."""

from __future__ import annotations

import ast
import functools

import numpy as np


def sample(rng: np.random.Generator, shape: tuple[int, ...], dtype, loc: float = 0.0,
           scale: float = 1.0) -> np.ndarray:
    """Normal samples with a per-column offset and spread, cast to ``dtype``."""
    return (loc + scale * rng.normal(size=shape)).astype(dtype)


def affine(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> tuple[np.ndarray, np.ndarray]:
    """A random ``(gamma, beta)`` pair; gamma kept away from 0 so every output matters."""
    gamma = (rng.uniform(0.5, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)).astype(dtype)
    beta = rng.normal(size=shape).astype(dtype)
    return gamma, beta


def dims(rng: np.random.Generator, low: int, high: int) -> int:
    return int(rng.integers(low, high + 1))


@functools.lru_cache(maxsize=1)
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The course's digits split (``bncourse.lab.data``, seed 0, 20 % held out) as NumPy arrays.

    ``(x_train, y_train, x_test, y_test)``: float64 inputs standardized with the training
    statistics, int64 labels. Loaded once per grading process; callers must not modify them
    (copy before handing them to a case).
    """
    try:
        from bncourse.lab.data import load_digits_split

        split = load_digits_split(test_fraction=0.2, seed=0)
    except ImportError as err:
        raise ValueError("the hidden cases of Exercises 13 and 14 train on scikit-learn's digits: install "
                         f"scikit-learn and torch in the grader's environment ({err})") from None
    return (split.x_train.numpy().astype(np.float64), split.y_train.numpy().astype(np.int64),
            split.x_test.numpy().astype(np.float64), split.y_test.numpy().astype(np.int64))


_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
# Ways to change at run time what a name refers to, or to run code the source does not show:
# an answer that uses any of them cannot be judged from its source.
_DYNAMIC_NAMES = {"exec", "eval", "compile", "globals", "locals", "vars", "setattr", "__import__", "__builtins__",
                  "builtins", "importlib"}
_DYNAMIC_ATTRIBUTES = {"__code__", "__globals__", "__dict__", "__builtins__", "modules", "FunctionType"}


def _where(lines: list[str], node: ast.AST) -> str:
    text = lines[node.lineno - 1].strip() if 0 < node.lineno <= len(lines) else ""
    return f"line {node.lineno}: `{text}`"


def python_loops(source: str, name: str) -> str | None:
    """Where the function ``name`` defined in ``source`` runs a Python loop, or None if it runs none.

    Read from the source in the trusted process, never run, so nothing the student's code does
    at run time can change the answer. A loop is a ``for`` or ``while`` statement or a
    comprehension in any definition of ``name`` (a ``def``, or an assignment to it anywhere;
    nested functions and lambdas included) or in any definition of a name those mention,
    followed from there: what the set-up cell's ``uses_python_loops`` (the public check)
    finds in the bytecode. Source that rebinds names or builds code at run time (``exec``,
    ``globals()``, ``__code__``, ...) anywhere is reported too: it cannot be judged from the
    source. Returns e.g. ``"line 7: `mean = sum(row for row in x) / len(x)`"``.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None  # the sandbox could not have run it either; its cases fail on their own
    except (RecursionError, MemoryError):
        return "the source is nested too deeply to be read"
    lines = source.split("\n")
    for node in ast.walk(tree):
        dynamic = (isinstance(node, ast.Name) and node.id in _DYNAMIC_NAMES) or (
            isinstance(node, ast.Attribute) and node.attr in _DYNAMIC_ATTRIBUTES) or (
            isinstance(node, (ast.Import, ast.ImportFrom))
            and any(alias.name.split(".")[0] in _DYNAMIC_NAMES for alias in node.names))
        if dynamic:
            return _where(lines, node) + ", which changes or builds code at run time"
    definitions = _global_definitions(tree)
    todo, seen = [name], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for definition in definitions.get(current, []):
            local = _local_names(definition)
            for node in ast.walk(definition):
                if isinstance(node, (ast.For, ast.AsyncFor, ast.While, *_COMPREHENSIONS)):
                    return _where(lines, node)
                if isinstance(node, ast.Name) and node.id not in local:
                    todo.append(node.id)
                elif isinstance(node, ast.Attribute):
                    todo.append(node.attr)
    return None


def _global_definitions(tree: ast.Module) -> dict[str, list[ast.AST]]:
    """What each module-level name may be bound to: its ``def``s and classes anywhere, and the
    functions assigned to it at module level or, under ``global``, inside a function."""
    definitions: dict[str, list[ast.AST]] = {}

    def visit(node: ast.AST, globals_here: set[str] | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                definitions.setdefault(child.name, []).append(child)
                declared = {n for g in ast.walk(child) if isinstance(g, ast.Global) for n in g.names}
                visit(child, declared)
                continue
            # As the public check follows only globals that are functions: an assignment counts
            # when it can bind one (a lambda, another name, what a call returns), not data.
            value = getattr(child, "value", None)
            if isinstance(value, ast.Call):
                value = value.func
            if isinstance(child, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and isinstance(
                    value, (ast.Lambda, ast.Name, ast.Attribute)):
                targets = child.targets if isinstance(child, ast.Assign) else [child.target]
                for target in targets:
                    for leaf in ast.walk(target):
                        if isinstance(leaf, ast.Name) and (globals_here is None or leaf.id in globals_here):
                            definitions.setdefault(leaf.id, []).append(value)
            visit(child, globals_here)

    visit(tree, None)
    return definitions


def _local_names(definition: ast.AST) -> set[str]:
    """A function's parameters and the names it assigns: its own, not the module's (``x`` is not a global ``x``)."""
    if not isinstance(definition, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        return set()
    names = {a.arg for a in ast.walk(definition.args) if isinstance(a, ast.arg)}
    for node in ast.walk(definition):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Global):
            names.difference_update(node.names)
    return names
