"""The vocabulary every check is written in: call the learner's code, compare, explain."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import numbers
import os
import secrets
import sys

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


def diagnose(actual, mistakes: dict[str, object], rtol: float = 1e-4,
             atol: float = 1e-5) -> str | None:
    """The diagnosis of the first typical mistake that `actual` reproduces, or None.

    mistakes: {diagnosis for the learner: the value that mistake produces}. Values are tensors
    (same shape, within tolerance), numbers (within tolerance) or anything compared with ==.
    A mistake whose value is None is skipped (it cannot be computed for this input).
    """
    for message, value in mistakes.items():
        if value is not None and _reproduces(actual, value, rtol, atol):
            return message
    return None


def diagnose_all(answers: list, mistakes: list[dict[str, object]], rtol: float = 1e-4,
                 atol: float = 1e-5) -> str | None:
    """The first typical mistake that reproduces the learner's answer in *every* case, or None.

    answers[i]: the learner's answer to case i (None: no answer there, e.g. the code raised);
    mistakes[i]: that case's {diagnosis: value}, as for `diagnose` (a value of None: the mistake
    cannot be computed for that case). A mistake is named only if no case contradicts it, so a
    coincidence in one case cannot mislead. Candidates come in the order of the first case that
    names them. Use the same diagnosis text in every case (no case-specific numbers in it).
    """
    candidates = list(dict.fromkeys(message for table in mistakes for message in table))
    for message in candidates:
        values = [table.get(message) for table in mistakes]
        if all(value is None for value in values):
            continue
        if all(answer is None or value is None or _reproduces(answer, value, rtol, atol)
               for answer, value in zip(answers, values, strict=True)):
            return message
    return None


def close_or_diagnose(actual, expected: torch.Tensor, what: str,
                      mistakes: dict[str, object] | None = None, rtol: float = 1e-4,
                      atol: float = 1e-5, factors: dict[str, float] | None = None) -> None:
    """Like `close`, but first name the typical mistake the wrong answer reproduces, if any."""
    if _reproduces(actual, expected, rtol, atol):
        return
    diagnosis = diagnose(actual, mistakes or {}, rtol, atol)
    if diagnosis is not None:
        raise CheckFailed(f"{what} is not right: {diagnosis}")
    close(actual, expected, what, rtol=rtol, atol=atol, factors=factors)


def _reproduces(actual, value, rtol: float, atol: float) -> bool:
    if isinstance(value, torch.Tensor):
        if not isinstance(actual, torch.Tensor) or tuple(actual.shape) != tuple(value.shape):
            return False
        actual = actual.detach().to(value.dtype)
        return torch.allclose(actual, value, rtol=rtol, atol=atol, equal_nan=True)
    if isinstance(value, float):
        if isinstance(actual, torch.Tensor) and actual.numel() == 1:
            actual = actual.item()
        if not isinstance(actual, int | float) or isinstance(actual, bool):
            return False
        if math.isnan(value) or math.isnan(actual):
            return math.isnan(value) and math.isnan(actual)
        return math.isclose(actual, value, rel_tol=rtol, abs_tol=atol)
    try:
        return bool(actual == value)
    except (TypeError, ValueError, RuntimeError):
        return False


# ------------------------------------------------------------ numbers, value answers, mistakes

def answered(value, what: str):
    """A value exercise's answer; `None` (its TODO left in place) becomes a clear message."""
    if value is None:
        raise CheckFailed(f"{what} is not answered yet: replace the `None` in its TODO cell with "
                          "your answer")
    return value


def as_number(value, what: str) -> float:
    """`value` (a Python number or a one-element tensor) as a finite float."""
    if value is None:
        raise CheckFailed(f"{what} is None: a function without a `return`, or a value not "
                          "filled in?")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise CheckFailed(f"{what} should be one number, got a tensor of shape "
                              f"{tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise CheckFailed(f"{what} should be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise CheckFailed(f"{what} is {value} (a division by zero, or an overflow?)")
    return value


def show(x: float) -> str:
    """A number for a message: integers with thousands separators, the rest to 6 digits."""
    if float(x).is_integer() and abs(x) < 1e16:
        return f"{int(x):,}"
    return f"{x:.6g}"


def matches(actual, expected, rtol: float = 1e-6, atol: float = 0.0) -> bool:
    """Whether two answers agree: numbers, tensors, or (nested) lists and tuples of them."""
    if isinstance(expected, (list, tuple)):
        return (isinstance(actual, (list, tuple)) and len(actual) == len(expected)
                and all(matches(a, e, rtol, atol) for a, e in zip(actual, expected, strict=True)))
    if isinstance(expected, torch.Tensor):
        return (isinstance(actual, torch.Tensor) and actual.shape == expected.shape
                and torch.allclose(actual.detach().to(expected.dtype), expected, rtol=rtol,
                                   atol=atol))
    try:
        return math.isclose(float(actual), float(expected), rel_tol=rtol, abs_tol=atol)
    except (TypeError, ValueError):
        return False


def combine_mistakes(knobs: dict[str, dict], max_wrong: int = 2):
    """Every way to get a formula wrong in at most `max_wrong` places, most likely first.

    knobs: {name: {option: None if it is the right option, else what that option gets wrong}}.
    Yields (description, choice) with choice = {name: option}; the right formula (description
    "") comes first, then one mistake at a time, then pairs.
    """
    right = {name: next(o for o, why in options.items() if why is None)
             for name, options in knobs.items()}
    wrong = [(name, option, why) for name, options in knobs.items()
             for option, why in options.items() if why is not None]
    yield "", dict(right)
    for count in range(1, max_wrong + 1):
        for combo in itertools.combinations(wrong, count):
            if len({name for name, _, _ in combo}) < count:
                continue  # two options of the same knob cannot both be chosen
            choice = dict(right)
            choice.update({name: option for name, option, _ in combo})
            yield "; and ".join(why for _, _, why in combo), choice


def find_mistake(answers: list, variants, rtol: float = 1e-6, atol: float = 0.0) -> str | None:
    """The description of the first variant whose results equal all of the learner's answers.

    variants: iterable of (description, results for the same cases as `answers`).
    """
    for description, results in variants:
        if description and matches(answers, results, rtol, atol):
            return description
    return None


# ------------------------------------------------------------ cases nobody can know in advance

def fresh_seed() -> int:
    """A seed drawn anew at every run: a case built from it cannot be known in advance, so a
    function that only remembers the answers to a check's fixed examples cannot pass it.

    The tests of the checks set MINIGPT_CHECK_SEED: a remembered answer that happens to equal
    the fresh case's answer passes by chance, and a test suite must not depend on chance.
    """
    base = os.environ.get(SEED_VARIABLE)
    if base is None:
        return secrets.randbelow(2**31)
    caller = sys._getframe(1).f_code.co_name  # each check its own fixed sequence
    _drawn[caller] = _drawn.get(caller, 0) + 1
    digest = hashlib.sha256(f"{base}:{caller}:{_drawn[caller]}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % 2**31


SEED_VARIABLE = "MINIGPT_CHECK_SEED"
_drawn: dict[str, int] = {}  # seeds drawn so far by each check, for the fixed sequences


@contextlib.contextmanager
def fresh_case(seed: int):
    """Run one more case, drawn from `seed` after the fixed ones, and yield its generator.

    The global torch RNG comes back as it was (a notebook's later cells see the numbers they
    always saw), and a failure inside says that the fixed examples passed but this one did not.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            yield torch.Generator().manual_seed(seed)
        except CheckFailed as failure:
            raise CheckFailed(
                f"your function is right on the check's fixed examples but wrong on a new case "
                f"drawn at random (seed {seed}): {failure}. An answer that holds only for the "
                "fixed examples (hard-coded, or looked up) fails here: compute it from the "
                "arguments") from None
        except Exception as error:  # e.g. a size typed in from the fixed examples: IndexError
            raise CheckFailed(
                f"your function is right on the check's fixed examples but raised "
                f"{type(error).__name__}: {error} on a new case drawn at random (seed {seed}). "
                "Sizes or values typed in from the fixed examples fail here: read them from "
                "the arguments") from None


def require_measured(values: list[float], what: str, n_samples: int,
                     expected_spread: float | None = None) -> None:
    """`values` are one measurement repeated under different seeds: they must differ, and (if
    `expected_spread`, the standard deviation sampling noise gives) spread about that much."""
    if max(values) == min(values):
        raise CheckFailed(
            f"{what} comes out the same, {values[0]:.6g}, for {len(values)} different seeds: "
            "measure it on fresh random draws at every call, do not hard-code it (and do not "
            "call torch.manual_seed inside the function: seeding is the caller's job)")
    if expected_spread is None:
        return
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    if spread < expected_spread / 3:
        raise CheckFailed(
            f"{what} varies by only ±{spread:.3g} from seed to seed, but a measurement over "
            f"{n_samples} random samples varies by about ±{expected_spread:.3g}: use the sample "
            "count you are given, and fresh random draws at every call, not a fixed answer "
            "with a little noise added")
    if spread > 3 * expected_spread:
        raise CheckFailed(
            f"{what} varies by ±{spread:.3g} from seed to seed, but a measurement over "
            f"{n_samples} random samples varies by about ±{expected_spread:.3g}: is it measured "
            "on fewer samples than you were given, or on numbers of another distribution?")
