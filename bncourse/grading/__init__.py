"""Graded exercises and the autograder.

- :mod:`.exercises`: the registry (ids, notebooks, names to define, points).
- :mod:`.release`: solution notebooks -> student notebooks (``bncourse release``).
- :mod:`.notebooks`: reading notebooks, finding a submission's answer cells.
- :mod:`.spec`, :mod:`.references`: how hidden cases are written, and the NumPy
  references they need; the cases themselves live in ``tests/hidden/``.
- :mod:`.runner`, :mod:`.sandbox`: running untrusted code (bubblewrap, limits, seccomp).
- :mod:`.judge`, :mod:`.grader`, :mod:`.results`: judging values in the trusted
  process, Gradescope ``results.json`` and ``grades.csv``; :mod:`.submissions`: paths,
  result names and files of submissions; :mod:`.workdirs`: the sandbox's work directories.
- :mod:`.check`: ``bncourse check`` for students; :mod:`.gradescope`: the autograder bundle.

The command line is :mod:`bncourse.cli`.
"""

from .exercises import EXERCISES, Exercise, get_exercise

__all__ = ["EXERCISES", "Exercise", "get_exercise"]
