"""Shared by the tests of the exercise checks (tests/test_checks_*.py)."""

from __future__ import annotations

import pytest

from checks.core import CheckFailed


def fails(check_function, answer, *words) -> str:
    """`check_function(answer)` must fail, and its message must contain every one of `words`."""
    with pytest.raises(CheckFailed) as failure:
        check_function(answer)
    message = str(failure.value)
    for word in words:
        assert word in message, f"{word!r} not in: {message}"
    return message


def unwritten(*args, **kwargs):
    """A learner's function with its TODO still in place."""
    raise NotImplementedError
