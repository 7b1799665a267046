"""Shared by the tests of the exercise checks (tests/test_checks_*.py)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from checks.core import CheckFailed

# What a check says when a function is right on its fixed examples only.
FRESH_CASE_WORDS = ("fixed examples", "drawn at random", "seed", "hard-coded")


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


def key(value):
    """A hashable fingerprint of a function's arguments: equal inputs, equal keys."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return ("tensor", tuple(value.shape), str(value.dtype), value.double().numpy().tobytes())
    if isinstance(value, torch.nn.Module):
        return ("module", type(value).__name__, key(list(value.state_dict().values())))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return ("dataclass", type(value).__name__, key(dataclasses.asdict(value)))
    if isinstance(value, dict):
        return ("dict", tuple((key(k), key(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(key(item) for item in value))
    if value is None or isinstance(value, int | float | str | bytes):
        return value
    return ("object", type(value).__qualname__)  # a tokenizer, say: known by its kind only


def _detached(answer):
    """The answer without autograd history (a remembered number has none)."""
    if isinstance(answer, torch.Tensor):
        return answer.detach()
    if isinstance(answer, list | tuple):
        return type(answer)(_detached(item) for item in answer)
    return answer


class Memoriser:
    """A learner's function that only remembers the answers to a check's fixed examples.

    Pass `record` to a check once: it answers with `right` and remembers every answer. Then
    `replay` gives the remembered answer to an input it has seen, and to any other input the
    answer it remembered first: the hard-coded function a check must reject.
    """

    def __init__(self, right):
        self.right, self.answers = right, {}

    def record(self, *args, **kwargs):
        answer = self.right(*args, **kwargs)
        self.answers.setdefault(key((args, kwargs)), copy.deepcopy(_detached(answer)))
        return answer

    def replay(self, *args, **kwargs):
        remembered = self.answers.get(key((args, kwargs)))
        if remembered is None:
            remembered = next(iter(self.answers.values()))
        return copy.deepcopy(remembered)


def rejects_remembered_answers(check_function, right) -> str:
    """`check_function` passes `right`, and rejects a function that replays right's answers to
    the fixed examples, saying that the answer must be computed."""
    memoriser = Memoriser(right)
    check_function(memoriser.record)
    return fails(check_function, memoriser.replay, *FRESH_CASE_WORDS)
