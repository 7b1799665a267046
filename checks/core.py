"""The vocabulary every check is written in: call the learner's code, compare, explain."""

from __future__ import annotations

import math

import torch


class CheckFailed(AssertionError):
    """The learner's answer is not right yet; the message says what to look at."""


def passed(name: str) -> None:
    print(f"✓ {name}: correct")


def call(function, *args, **kwargs):
    """Run the learner's function; a TODO left in place becomes a clear message."""
    try:
        return function(*args, **kwargs)
    except NotImplementedError:
        raise CheckFailed(
            f"`{function.__name__}` is not written yet: replace the `raise NotImplementedError` "
            "in its TODO cell with your code"
        ) from None


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def as_tensor(value, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise CheckFailed(f"{what} should be a torch.Tensor, got {type(value).__name__}")
    return value


def same_shape(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    actual = as_tensor(actual, what)
    if tuple(actual.shape) != tuple(expected.shape):
        hint = ""
        if sorted(actual.shape) == sorted(expected.shape):
            hint = " (the same sizes in another order: a transpose or a view in the wrong place?)"
        raise CheckFailed(f"{what} has shape {tuple(actual.shape)}, expected "
                          f"{tuple(expected.shape)}{hint}")


def close(actual, expected: torch.Tensor, what: str, rtol: float = 1e-4, atol: float = 1e-5,
          factors: dict[str, float] | None = None) -> None:
    """`actual` equals `expected` within tolerance; otherwise say how it differs.

    factors: named constants a common mistake would multiply the answer by, e.g.
    {"√d_k": 8.0}; if actual/expected is one of them (or its inverse), the message says so.
    """
    same_shape(actual, expected, what)
    actual = actual.detach().to(expected.dtype)
    if not torch.isfinite(actual).all():
        raise CheckFailed(f"{what} contains NaN or inf values (an exp() that overflowed, or a "
                          "division by zero?)")
    if torch.allclose(actual, expected, rtol=rtol, atol=atol):
        return
    message = (f"{what} is not right: largest difference "
               f"{(actual - expected).abs().max().item():.3g}")
    ratio = _constant_ratio(actual, expected)
    if ratio is not None:
        message += f"; it is {ratio:.4g} times the right answer"
        for name, factor in (factors or {}).items():
            if math.isclose(ratio, factor, rel_tol=1e-3):
                message += f" — a factor of {name} too large"
            elif math.isclose(ratio, 1 / factor, rel_tol=1e-3):
                message += f" — a factor of {name} too small"
    raise CheckFailed(message)


def _constant_ratio(actual: torch.Tensor, expected: torch.Tensor) -> float | None:
    mask = expected.abs() > 1e-6
    if not mask.any():
        return None
    ratios = actual[mask] / expected[mask]
    if torch.allclose(ratios, ratios.mean().expand_as(ratios), rtol=1e-3, atol=1e-6):
        return ratios.mean().item()
    return None
