"""The exercise registry: one entry per graded exercise.

Each :class:`Exercise` says which notebook holds it (in ``solutions/`` and, as
released, in ``book/exercises/``), which functions or classes the student must
define there, how many points it is worth, and which file in the hidden-test
directory (``tests/hidden/`` by default) generates its hidden cases.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Exercise", "EXERCISES", "get_exercise", "exercise_for_notebook"]


@dataclass(frozen=True)
class Exercise:
    """One graded exercise.

    Attributes:
        id: short stable id used in notebook metadata and results, e.g. ``"ex03"``.
        number: the number students see ("Exercise 3").
        title: one line describing what is graded.
        notebook: file name of the exercise notebook (same in ``solutions/`` and ``book/exercises/``).
        names: functions or classes the answer cells must define.
        points: the exercise's total; its hidden cases' points add up to it.
        hidden: file name of the hidden-case generator in the hidden-test directory.
    """

    id: str
    number: int
    title: str
    notebook: str
    names: tuple[str, ...]
    points: float
    hidden: str

    @property
    def label(self) -> str:
        """``"Exercise 3 (backward by walking the graph)"``: how messages name it."""
        return f"Exercise {self.number} ({self.title})"


EXERCISES: tuple[Exercise, ...] = (
    Exercise("ex01", 1, "batch norm forward, training mode", "ex01_forward.ipynb",
             ("batchnorm_forward",), 10.0, "ex01_forward.py"),
    Exercise("ex02", 2, "running statistics and evaluation mode", "ex02_running_stats.ipynb",
             ("update_running_stats", "batchnorm_eval"), 10.0, "ex02_running_stats.py"),
    Exercise("ex03", 3, "backward by walking the computational graph", "ex03_backward_graph.ipynb",
             ("batchnorm_backward_graph",), 10.0, "ex03_backward_graph.py"),
    Exercise("ex04", 4, "the compact backward", "ex04_backward_compact.ipynb",
             ("batchnorm_backward_compact",), 10.0, "ex04_backward_compact.py"),
    Exercise("ex05", 5, "spatial batch norm for (N, C, H, W)", "ex05_spatial.ipynb",
             ("spatial_batchnorm_forward", "spatial_batchnorm_backward"), 10.0, "ex05_spatial.py"),
    Exercise("ex06", 6, "layer norm and group norm", "ex06_layer_group_norm.ipynb",
             ("layernorm_forward", "groupnorm_forward"), 10.0, "ex06_layer_group_norm.py"),
    Exercise("ex07", 7, "matching torch.nn.BatchNorm1d", "ex07_torch_batchnorm1d.ipynb",
             ("BatchNorm1d",), 10.0, "ex07_torch_batchnorm1d.py"),
    Exercise("ex08", 8, "folding batch norm into a linear layer", "ex08_fold.ipynb",
             ("fold_batchnorm",), 10.0, "ex08_fold.py"),
    Exercise("ex09", 9, "merging batch statistics across devices", "ex09_merge_statistics.ipynb",
             ("merge_statistics",), 10.0, "ex09_merge_statistics.py"),
    Exercise("ex10", 10, "the backward pass of layer norm and group norm",
             "ex10_layer_group_norm_backward.ipynb", ("layernorm_backward", "groupnorm_backward"), 10.0,
             "ex10_layer_group_norm_backward.py"),
    Exercise("ex11", 11, "find the bug: evaluation mode, a reshape, no_grad", "ex11_find_the_bug.ipynb",
             ("BatchNorm1d", "batchnorm2d", "evaluate"), 10.0, "ex11_find_the_bug.py"),
    Exercise("ex12", 12, "RMSNorm forward and backward", "ex12_rmsnorm.ipynb",
             ("rmsnorm_forward", "rmsnorm_backward"), 10.0, "ex12_rmsnorm.py"),
    Exercise("ex13", 13, "training a network with your own batch norm", "ex13_train_digits.ipynb",
             ("BatchNorm", "train_digits"), 10.0, "ex13_train_digits.py"),
    Exercise("ex14", 14, "making a 30-layer network trainable", "ex14_make_it_trainable.ipynb",
             ("build_network",), 10.0, "ex14_make_it_trainable.py"),
)

_BY_ID = {ex.id: ex for ex in EXERCISES}
_BY_NOTEBOOK = {ex.notebook: ex for ex in EXERCISES}


def get_exercise(exercise_id: str) -> Exercise:
    """The exercise with this id; ``ValueError`` naming the known ids otherwise."""
    try:
        return _BY_ID[exercise_id]
    except KeyError:
        raise ValueError(
            f"expected an exercise id among {sorted(_BY_ID)}, got {exercise_id!r}"
        ) from None


def exercise_for_notebook(file_name: str) -> Exercise | None:
    """The exercise whose notebook has this file name, or ``None``."""
    return _BY_NOTEBOOK.get(file_name)
