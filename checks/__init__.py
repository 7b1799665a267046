"""Automatic checks for the course exercises (exercises/ and solutions/ import them).

One module per course notebook (`checks.attention` for 03, ...). Each exercise's check calls the
learner's function, compares it with the `minigpt` package and with an independent reference,
and, when something is off, says *what* is off: a wrong shape, a factor of √d_k, a mask that
lets the future leak. A check that passes prints one line; one that fails raises `CheckFailed`.

After its fixed, seeded examples every check of a function runs one more case drawn at random
(`core.fresh_case`), so that answers remembered for the fixed examples fail; a measured quantity
must also move with the seed by about its sampling noise (`core.require_measured`). The fresh
cases leave the global random state as they found it, so a notebook's later cells are unchanged.
"""

from checks.core import CheckFailed, passed

__all__ = ["CheckFailed", "passed"]
