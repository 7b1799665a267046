"""Automatic checks for the course exercises (exercises/ and solutions/ import them).

One module per course notebook (`checks.attention` for 03, ...). Each exercise's check calls the
learner's function, compares it with the `minigpt` package and with an independent reference,
and, when something is off, says *what* is off: a wrong shape, a factor of √d_k, a mask that
lets the future leak. A check that passes prints one line; one that fails raises `CheckFailed`.
"""

from checks.core import CheckFailed, passed

__all__ = ["CheckFailed", "passed"]
