"""Checks for exercises/11_applications.ipynb (course notebook: notebooks/11_applications.ipynb).

Bits per byte for any tokenizer (eq. 11.2), greedy answers that stop at the end token (11.3),
exact match (11.4), the parse rate of generated code (11.6), a finetuning task of the learner's
own built from the standard library with its baseline (section 5), and the export of a model to
GPT-2's tensor layout (11.7). Each check compares the learner's answer with `minigpt`
(`finetune.generate_response`, `GPT.generate`, `finetune.exact_match`, `tasks.parse_rate`,
`tasks.baseline_predictions`, `hf.state_dict_to_hf`) and with an independent reference (the
log-probabilities summed by hand, a greedy loop recomputed from scratch, Hugging Face's
`generate`, `GPT2LMHeadModel` and `transformers.pipeline`, answers known by construction), and
names the typical mistake when the answer reproduces one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Mapping

import torch

from checks.core import (
    CheckFailed,
    as_number,
    as_tensor,
    call,
    close,
    combine_mistakes,
    diagnose_all,
    find_mistake,
    fresh_case,
    fresh_seed,
    passed,
    require,
    show,
)
from minigpt import GPT, GPTConfig

LN2 = math.log(2)


def _transformers():
    """The transformers module, quietly; None where it is not installed."""
    try:
        with warnings.catch_warnings():  # tqdm asks for ipywidgets when imported in a notebook
            warnings.filterwarnings("ignore", message="IProgress not found")
            import transformers
    except ImportError:
        return None
    return transformers


@contextlib.contextmanager
def _quiet_transformers(transformers):
    """No progress bars or notices from transformers while a check runs; restored afterwards."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _fresh_int(generator, low: int, high: int) -> int:
    """An integer in [low, high), drawn with `generator`."""
    return int(torch.randint(low, high, (), generator=generator))


def _pick(generator, items: list):
    """One of `items`, drawn with `generator`."""
    return items[_fresh_int(generator, 0, len(items))]


def _random_gpt(seed: int, **sizes) -> GPT:
    """A small GPT whose biases and layer norms are not 0 and 1, built without moving the
    learner's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT(GPTConfig(**sizes)).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
    return model


# ---------------------------------------------------------------------------------------------
# Exercise 1: bits per byte (eq. 11.2)

# (tokenizer, text): prose, code and non-ASCII text, in GPT-2's BPE and in bytes
BPB_CASES = [
    ("gpt2", "The cat sat on the mat, and the dog watched it from the door."),
    ("gpt2", "def area(width, height):\n    return width * height\n"),
    ("gpt2", "Café au lait, naïve façade — 東京 in Unicode 😀"),
    ("byte", "def f(x):\n    return x + 1\n"),
    ("byte", "Café au lait, naïve façade — 東京"),
]

BPB_KNOBS = {
    "unit": {"ln2": None,
             "nats": "left the loss in nats: a loss in nats becomes bits by dividing by ln 2 "
                     "(log₂ p = ln p / ln 2, eq. 11.2)",
             "log10": "divided by ln 10: that gives decimal digits (bans); bits need ln 2",
             "times": "multiplied by ln 2; nats become bits by *dividing* by ln 2",
             "log2": "took log₂ of the loss; the loss is already a logarithm (of p), so only "
                     "its unit changes: divide it by ln 2"},
    "scale": {"tokens/bytes": None,
              "none": "left out the tokens-per-byte factor: the loss is per *token*, and a "
                      "GPT-2 token covers several bytes, so bits per byte = bits per token × "
                      "N_tokens / N_bytes",
              "bytes/tokens": "multiplied by bytes per token; bits per token × (tokens per "
                              "byte) = bits per byte, so the factor is N_tokens / N_bytes",
              "tokens/chars": "counted characters, len(text), where eq. (11.2) counts bytes, "
                              "len(text.encode('utf-8')): 'é', '東' and '😀' are 2, 3 and 4 "
                              "bytes",
              "total": "returned the bits of the whole text (loss × N_tokens / ln 2); divide "
                       "by the number of bytes"},
}


def _bpb_variant(loss, n_tokens, n_bytes, n_chars, unit="ln2", scale="tokens/bytes") -> float:
    per_token = {"ln2": loss / LN2, "nats": loss, "log10": loss / math.log(10),
                 "times": loss * LN2, "log2": math.log2(loss)}[unit]
    factor = {"tokens/bytes": n_tokens / n_bytes, "none": 1.0, "bytes/tokens": n_bytes / n_tokens,
              "tokens/chars": n_tokens / n_chars, "total": n_tokens}[scale]
    return per_token * factor


@torch.no_grad()
def _bpb_case(tokenizer_name: str, text: str):
    """(tokens, mean loss in nats per token, bits per byte summed by hand) of a small random
    model reading `text`, each token predicted from the ones before it and a start token."""
    from minigpt.tokenizer import ByteTokenizer, gpt2_tokenizer

    if tokenizer_name == "gpt2":
        tokenizer, start = gpt2_tokenizer(), 50256  # <|endoftext|> starts a text
        model = _random_gpt(1, vocab_size=50257, block_size=64, n_layer=1, n_head=2, n_embd=16)
    else:
        tokenizer, start = ByteTokenizer(), 3  # the byte 0x03, minigpt's end-of-text byte
        model = _random_gpt(2, vocab_size=256, block_size=64, n_layer=1, n_head=2, n_embd=16)
    tokens = tokenizer.encode(text)
    assert tokenizer.decode(tokens) == text
    inputs, targets = torch.tensor([[start] + tokens[:-1]]), torch.tensor([tokens])
    logits, loss = model(inputs, targets)  # loss: mean nats per token (the package's own)
    log2_p = torch.log_softmax(logits[0], -1).gather(-1, targets[0, :, None]) / LN2
    by_hand = -log2_p.sum().item() / len(text.encode("utf-8"))  # bits of the text / its bytes
    return tokens, loss.item(), by_hand


def check_bits_per_byte(bits_per_byte) -> None:
    """bits_per_byte(loss, tokens, text): mean loss in nats per token -> bits per byte."""
    cases, answers = [], []
    for tokenizer_name, text in BPB_CASES:
        tokens, loss, by_hand = _bpb_case(tokenizer_name, text)
        sizes = (len(tokens), len(text.encode("utf-8")), len(text))
        assert math.isclose(_bpb_variant(loss, *sizes), by_hand, rel_tol=1e-5)
        what = (f"bits_per_byte(loss={loss:.4f}, {len(tokens)} {tokenizer_name} tokens, a text of "
                f"{sizes[1]} bytes)")
        answers.append(as_number(call(bits_per_byte, loss, list(tokens), text), what))
        cases.append((what, loss, sizes, by_hand))
    for (what, loss, sizes, expected), answer in zip(cases, answers, strict=True):
        if math.isclose(answer, expected, rel_tol=1e-5):
            continue
        variants = ((why, [_bpb_variant(loss, *sizes, **choice) for _, loss, sizes, _ in cases])
                    for why, choice in combine_mistakes(BPB_KNOBS))
        mistake = find_mistake(answers, variants, rtol=1e-5)
        message = f"{what} = {answer:.4g}, expected {expected:.4g}"
        if mistake:
            raise CheckFailed(f"{message}: you {mistake}")
        raise CheckFailed(f"{message}: bits per byte = (loss / ln 2) × N_tokens / N_bytes, with "
                          "N_bytes = len(text.encode('utf-8'))")
    with fresh_case(fresh_seed()) as generator:  # a loss and a text no one knew in advance
        from minigpt.tokenizer import gpt2_tokenizer

        words = ["the", "cat", "def", "return", "Café", "naïve", "東京", "😀", "x = 1", "\n"]
        text = " ".join(_pick(generator, words) for _ in range(_fresh_int(generator, 2, 20)))
        loss = round(0.5 + 7 * float(torch.rand((), generator=generator)), 4)
        tokens = gpt2_tokenizer().encode(text)
        sizes = (len(tokens), len(text.encode("utf-8")), len(text))
        what = (f"bits_per_byte(loss={loss}, {len(tokens)} gpt2 tokens, the text {text!r} of "
                f"{sizes[1]} bytes)")
        answer = as_number(call(bits_per_byte, loss, list(tokens), text), what)
        expected = _bpb_variant(loss, *sizes)
        require(math.isclose(answer, expected, rel_tol=1e-5),
                f"{what} = {answer:.4g}, expected {expected:.4g}")
    passed("bits per byte, eq. (11.2)")


# ---------------------------------------------------------------------------------------------
# Exercise 2: greedy answers that stop at the end token (eq. 11.3)

GREEDY_SIZES = dict(vocab_size=16, block_size=32, n_layer=1, n_head=2, n_embd=16)
# (model seed, prompt, max_new_tokens, where the end token is): the end token is chosen from
# the model's own greedy path, so that the answer stops early, at once, or never
GREEDY_CASES = [
    (0, [7], 12, "after 3"),
    (0, [1, 2, 3, 4, 5], 10, "never"),
    (0, [1, 2, 3, 4, 5], 10, "first"),
    (2, [7], 16, "after 2"),
    (2, [5, 9, 2, 14, 0, 3, 8, 8, 1, 6, 12, 4, 7, 11, 10, 13, 2, 5, 9, 1], 12, "after 1"),
]


class _IdTokenizer:
    """The tokenizer interface `minigpt.finetune.generate_response` needs, over bare ids."""

    def __init__(self, end: int, vocab_size: int):
        self.eot_token, self.vocab_size = end, vocab_size

    def decode(self, ids):
        return list(ids)


@torch.no_grad()
def _argmax_path(model, prompt, max_new_tokens, end=None, position=-1, context="all"):
    """Greedy continuation recomputed from scratch at every step (the slow, obvious loop)."""
    ids, new = list(prompt), []
    for _ in range(max_new_tokens):
        window = ids if context == "all" else ids[-1:]
        logits, _ = model(torch.tensor([window]))
        token = int(logits[0, position].argmax())
        if token == end:
            break
        ids.append(token)
        new.append(token)
    return new


def _end_token(path: list[int], where: str, vocab_size: int) -> int:
    """An end token that stops the greedy path `path` where the case wants it to."""
    if where == "first":
        return path[0]
    if where.startswith("after"):
        k = int(where.split()[1])
        for i in range(k, len(path)):
            if path[i] not in path[:i]:
                return path[i]
    return next(t for t in range(vocab_size) if t not in path)  # "never" (or no fresh token)


def _greedy_references(model, prompt, max_new_tokens, end, expected) -> None:
    """minigpt's generate and generate_response, and Hugging Face's generate, agree."""
    import minigpt.finetune as ft

    idx = torch.tensor([prompt])
    new = model.generate(idx, max_new_tokens, temperature=0, eos_token=end)[0, len(prompt):]
    new = new.tolist()
    assert (new[:new.index(end)] if end in new else new) == expected
    tokenizer = _IdTokenizer(end, model.config.vocab_size)
    assert ft.generate_response(model, tokenizer, prompt, max_new_tokens) == expected
    transformers = _transformers()
    if transformers is None:
        return
    from minigpt.hf import to_hf

    with _quiet_transformers(transformers):
        out = to_hf(model).generate(idx, max_new_tokens=max_new_tokens, do_sample=False,
                                    eos_token_id=end, pad_token_id=end)[0, len(prompt):].tolist()
    assert (out[:out.index(end)] if end in out else out) == expected


class _NoGenerate:
    """model.generate raises while the learner's loop runs: the loop is the exercise."""

    def __init__(self, model):
        self.model = model

    def _refuse(self, *args, **kwargs):
        raise CheckFailed("your function called model.generate; write the loop of eq. (11.3) "
                          "yourself: logits of the last position, argmax, stop at the end token "
                          "(model.generate is what the check compares with)")

    def __enter__(self):
        self.model.generate = self._refuse
        return self.model

    def __exit__(self, *exc):
        del self.model.generate
        return False


def _as_ids(value, what: str) -> list[int]:
    if isinstance(value, str):
        raise CheckFailed(f"{what} is a string; return the answer's token ids, a list of ints")
    if isinstance(value, torch.Tensor):
        if value.dim() == 2 and value.size(0) == 1:
            raise CheckFailed(f"{what} has shape {tuple(value.shape)}, a batch of one; return "
                              "the answer's ids as a flat list")
        require(value.dim() == 1, f"{what} should be a list of token ids, got a tensor of shape "
                                  f"{tuple(value.shape)}")
        value = value.tolist()
    require(isinstance(value, list | tuple), f"{what} should be a list of token ids, got "
                                             f"{type(value).__name__}")
    require(all(isinstance(t, int) and not isinstance(t, bool) for t in value),
            f"{what} should hold ints (token ids), got {[type(t).__name__ for t in value][:3]}")
    return list(value)


def _greedy_mistakes(model, prompt, max_new_tokens, end, expected) -> dict:
    path = _argmax_path(model, prompt, max_new_tokens)
    stopped = len(expected) < max_new_tokens
    return {
        "the answer runs on past the end token: stop as soon as the most likely token is "
        "<end> (eq. 11.3)": path if stopped else None,
        "the end token is part of the answer; it marks where the answer stops, and is left "
        "out of it": expected + [end] if stopped else None,
        "the answer starts with the prompt; return only the new tokens": list(prompt) + expected,
        "the answer starts with the prompt, and runs on past the end token; return only the "
        "new tokens, and stop at <end>": list(prompt) + path if stopped else None,
        "the answer starts with the prompt and ends with the end token; return only the new "
        "tokens, without <end>": list(prompt) + expected + [end] if stopped else None,
        "each token was read off the logits of the *first* position; the next token is "
        "predicted by the last one, logits[0, -1]":
            _argmax_path(model, prompt, max_new_tokens, end, position=0),
        "the model saw only the latest token at each step; feed it the whole sequence, prompt "
        "and answer so far": _argmax_path(model, prompt, max_new_tokens, end, context="last"),
    }


def _first_wrong_step(model, prompt, answer, max_new_tokens, end, what: str) -> str:
    """The first step at which `answer` leaves the greedy path, in words."""
    if len(answer) > max_new_tokens:
        return f"{what} has {len(answer)} tokens, more than max_new_tokens={max_new_tokens}"
    for step, token in enumerate(answer):
        best = _argmax_path(model, list(prompt) + answer[:step], 1)[0]
        if token != best:
            return (f"{what}: at step {step + 1} your answer has token {token}, but the most "
                    f"likely next token after the prompt and the answer so far is {best}. "
                    "Eq. (11.3) takes the argmax at every step (sampling gives other tokens)")
    best = _argmax_path(model, list(prompt) + answer, 1)[0]
    return (f"{what} stops after {len(answer)} tokens, but the most likely next token is {best}, "
            f"not the end token {end}: stop only at <end>, or when max_new_tokens are spent")


def check_greedy_answer(greedy_answer) -> None:
    """greedy_answer(model, prompt, end, max_new_tokens) -> the answer's ids, eq. (11.3)."""
    answers, tables, cases = [], [], []
    for seed, prompt, max_new_tokens, where in GREEDY_CASES:
        case = _greedy_case(seed, prompt, max_new_tokens, where)
        what, model, prompt, max_new_tokens, end, expected = case
        answer = _greedy_of(greedy_answer, model, prompt, end, max_new_tokens, what)
        answers.append(answer)
        tables.append(_greedy_mistakes(model, prompt, max_new_tokens, end, expected))
        cases.append(case)
    for answer, (what, model, prompt, max_new_tokens, end, expected) in zip(answers, cases,
                                                                              strict=True):
        if answer == expected:
            continue
        diagnosis = diagnose_all(answers, tables)
        if diagnosis is not None:
            raise CheckFailed(f"{what} = {answer}, expected {expected}: {diagnosis}")
        raise CheckFailed(_first_wrong_step(model, prompt, answer, max_new_tokens, end, what))
    seed = fresh_seed()
    with fresh_case(seed) as generator:  # a model, a prompt and an end no one knew in advance
        prompt = torch.randint(0, GREEDY_SIZES["vocab_size"], (_fresh_int(generator, 1, 8),),
                               generator=generator).tolist()
        where = _pick(generator, ["never", "first", "after 1", "after 2", "after 3"])
        what, model, prompt, max_new_tokens, end, expected = _greedy_case(
            seed, prompt, _fresh_int(generator, 1, 15), where)
        answer = _greedy_of(greedy_answer, model, prompt, end, max_new_tokens, what)
        if answer != expected:
            raise CheckFailed(_first_wrong_step(model, prompt, answer, max_new_tokens, end,
                                                what))
    passed("greedy answers, eq. (11.3) (== GPT.generate, generate_response and transformers)")


def _greedy_case(seed: int, prompt: list[int], max_new_tokens: int, where: str):
    """(what, model, prompt, max_new_tokens, end, expected answer) of one greedy case."""
    model = _random_gpt(seed, **GREEDY_SIZES)
    end = _end_token(_argmax_path(model, prompt, max_new_tokens), where,
                     GREEDY_SIZES["vocab_size"])
    expected = _argmax_path(model, prompt, max_new_tokens, end)
    _greedy_references(model, prompt, max_new_tokens, end, expected)
    what = (f"greedy_answer(model, a prompt of {len(prompt)} token"
            f"{'s' if len(prompt) > 1 else ''}, end={end}, max_new_tokens={max_new_tokens})")
    return what, model, prompt, max_new_tokens, end, expected


def _greedy_of(greedy_answer, model, prompt, end, max_new_tokens, what) -> list[int]:
    with _NoGenerate(model), torch.no_grad():
        return _as_ids(call(greedy_answer, model, list(prompt), end, max_new_tokens),
                       f"{what}'s result")


# ---------------------------------------------------------------------------------------------
# Exercise 3: exact match (eq. 11.4)

# (predictions, references): each case separates some of the normalisations below
EXACT_CASES = [
    (["None", "  None\n", "0"], ["None", "None", "False"]),
    (["    return x  \n    return y", "True"], ["    return x\n    return y", "True"]),
    (["\nTrue", "if a:\n    b", "'x'"], ["True", "if a:\nb", "'x'"]),
    (["None", "x"], ["none", "x"]),
    (["Return the path.", "x", "y"], ["Return the path", "x", "y"]),
    (["a  b", "x", "y", "z"], ["a b", "x", "y", "z"]),
    (["1", "2", "3", "4", "5"], ["1", "2", "3", "4", "6"]),
]


def _lines_rstripped(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.splitlines())


NORMALISERS = {
    "right": lambda text: _lines_rstripped(text.strip()),
    "none": lambda text: text,
    "ends": str.strip,
    "lines": _lines_rstripped,
    "both": lambda text: "\n".join(line.strip() for line in text.strip().splitlines()),
    "collapse": lambda text: " ".join(text.split()),
}

EXACT_KNOBS = {
    "norm": {"right": None,
             "none": "compared the raw strings; eq. (11.4) compares them after removing the "
                     "whitespace at the ends of the text and of each line",
             "ends": "removed whitespace at the ends of the whole text only; remove it at the "
                     "end of every line too (trailing spaces inside generated code)",
             "lines": "removed whitespace at the end of each line, but not at the start of the "
                      "text: leading spaces or a leading blank line still count",
             "both": "removed the whitespace at the *start* of every line too: indentation is "
                     "part of code ('if a:\\n    b' is not 'if a:\\nb')",
             "collapse": "collapsed every run of whitespace (' '.join(text.split())): 'a  b' "
                         "became 'a b' and the lines of code ran together; only whitespace at "
                         "the ends of the text and of each line is ignored"},
    "case": {"kept": None, "folded": "lower-cased the texts: exact match is case-sensitive "
                                     "('None' and 'none' are different answers in Python)"},
    "punct": {"kept": None, "removed": "removed punctuation (as SQuAD's normalisation does); "
                                       "eq. (11.4) keeps every character but the whitespace at "
                                       "the ends of lines"},
    "share": {"mean": None,
              "count": "returned the number of matches; EM is their share, divided by N",
              "miss": "returned the share of answers that do *not* match"},
}


def _exact_variant(predictions, references, norm="right", case="kept", punct="kept",
                   share="mean") -> float:
    def normalise(text):
        text = NORMALISERS[norm](text)
        text = text.lower() if case == "folded" else text
        return re.sub(r"[^\w\s]", "", text) if punct == "removed" else text

    hits = sum(normalise(p) == normalise(r) for p, r in zip(predictions, references, strict=True))
    return {"mean": hits / len(references), "count": float(hits),
            "miss": 1 - hits / len(references)}[share]


def check_exact_match(exact_match) -> None:
    """exact_match(predictions, references) -> the share of normalised equal pairs, eq. 11.4."""
    import minigpt.finetune as ft

    answers = []
    for predictions, references in EXACT_CASES:
        what = f"exact_match({predictions!r}, {references!r})"
        answers.append(as_number(call(exact_match, list(predictions), list(references)), what))
    for (predictions, references), answer in zip(EXACT_CASES, answers, strict=True):
        expected = ft.exact_match(predictions, references)
        assert expected == _exact_variant(predictions, references)
        if math.isclose(answer, expected, abs_tol=1e-9):
            continue
        what = f"exact_match({predictions!r}, {references!r})"
        variants = ((why, [_exact_variant(*case, **choice) for case in EXACT_CASES])
                    for why, choice in combine_mistakes(EXACT_KNOBS, max_wrong=3))
        mistake = find_mistake(answers, variants, atol=1e-9)
        message = f"{what} = {answer:.4g}, expected {expected:.4g}"
        raise CheckFailed(f"{message}: you {mistake}" if mistake else
                          f"{message}: normalise each text (strip its ends, then the end of each "
                          "line), compare, and return the share of equal pairs")
    with fresh_case(fresh_seed()) as generator:  # answers no one knew in advance
        predictions, references = _fresh_exact_case(generator)
        while ft.exact_match(predictions, references) in answers:  # unlike every fixed answer
            predictions, references = _fresh_exact_case(generator)
        what = f"exact_match({predictions!r}, {references!r})"
        answer = as_number(call(exact_match, list(predictions), list(references)), what)
        expected = ft.exact_match(predictions, references)
        assert expected == _exact_variant(predictions, references)
        require(math.isclose(answer, expected, abs_tol=1e-9),
                f"{what} = {answer:.4g}, expected {expected:.4g}")
    _check_lengths_must_agree(exact_match)
    passed("exact match, eq. (11.4)")


def _fresh_exact_case(generator) -> tuple[list[str], list[str]]:
    """Predictions and references drawn at random: some equal but for spaces, some not."""
    words = ["None", "none", "True", "return x", "if a:\n    b", "'x'", "0"]
    spaces = ["", " ", "  ", "\n", " \n"]
    references = [_pick(generator, words) for _ in range(_fresh_int(generator, 2, 8))]
    predictions = [_pick(generator, spaces) + (ref if bool(_fresh_int(generator, 0, 2))
                                               else _pick(generator, words))
                   + _pick(generator, spaces) for ref in references]
    return predictions, references


def _check_lengths_must_agree(exact_match) -> None:
    try:
        value = call(exact_match, ["None", "None"], ["None", "None", "0"])
    except CheckFailed:
        raise
    except Exception:  # noqa: BLE001 - any error is the right answer to a mismatched pair
        return
    raise CheckFailed(f"exact_match(2 predictions, 3 references) returned {value!r}; it should "
                      "fail: zip stops at the shorter list, so a missing answer would silently "
                      "not count. Use zip(..., strict=True), or compare the lengths first")


# ---------------------------------------------------------------------------------------------
# Exercise 4: does the generated body parse? (eq. 11.6)

AREA = 'def area(width, height):\n    """Return the area of a rectangle."""'
FETCH = 'async def fetch(session, url):\n    """Return the text of a page."""'
# (prompt, body, parses, about): known by construction
PARSE_CASES = [
    (AREA, "    return width * height", True, "a one-line body"),
    (AREA, "    if width < 0:\n        raise ValueError(width)\n    return width * height", True,
     "a body of several lines"),
    (AREA, "    raise NotImplementedError", True, "`raise NotImplementedError`"),
    (FETCH, "    return await session.get(url)", True, "the body of an `async def`"),
    (AREA, "return width * height", False, "a body without indentation"),
    (AREA, "    return width * height\nprint(area(2, 3))", False,
     "a body followed by a statement outside the function"),
    (AREA, "    return (width", False, "a body with a syntax error"),
    (AREA, "", False, "an empty body"),
    (AREA, "  \n", False, "a body of whitespace"),
]

PARSE_KNOBS = {
    "empty": {"refused": None,
              "accepted": "counted an empty body as parsing: the docstring alone makes a valid "
                          "function, so an empty answer would score; require body.strip()"},
    "one_function": {"checked": None,
                     "unchecked": "counted every text that parses: a body without indentation "
                                  "parses too, as statements *after* the function. Require that "
                                  "the module holds exactly one statement, a function"},
    "async_def": {"counted": None,
              "refused": "did not count an `async def` as a function: ast.parse gives "
                         "ast.AsyncFunctionDef for it (the standard library has many)"},
    "newline": {"joined": None,
                "missing": "joined prompt and body without a newline: the body's first line "
                           "then runs on after the docstring; parse prompt + '\\n' + body"},
}


def _parses_variant(prompt, body, empty="refused", one_function="checked",
                    async_def="counted", newline="joined") -> bool:
    import ast

    if empty == "refused" and not body.strip():
        return False
    try:
        tree = ast.parse(prompt + ("\n" if newline == "joined" else "") + body)
    except SyntaxError:
        return False
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef) if async_def == "counted" else ast.FunctionDef
    return one_function == "unchecked" or (len(tree.body) == 1
                                           and isinstance(tree.body[0], kinds))


def _as_bool(value, what: str) -> bool:
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise CheckFailed(f"{what} should be True or False, got {type(value).__name__}")


def check_code_parses(code_parses) -> None:
    """code_parses(prompt, body) -> whether prompt + body is one function Python can parse."""
    from minigpt import tasks

    answers = []
    for prompt, body, expected, about in PARSE_CASES:
        assert tasks.code_parses(prompt, body) == expected == _parses_variant(prompt, body)
        what = f"code_parses for {about} ({body!r})"
        try:
            answers.append(_as_bool(call(code_parses, prompt, body), what))
        except SyntaxError:
            raise CheckFailed(f"{what} raised SyntaxError: a body that does not parse is an "
                              "answer like any other; catch the error and return False") from None
    for (_, body, expected, about), answer in zip(PARSE_CASES, answers, strict=True):
        if answer == expected:
            continue
        variants = ((why, [_parses_variant(p, b, **choice) for p, b, _, _ in PARSE_CASES])
                    for why, choice in combine_mistakes(PARSE_KNOBS))
        mistake = find_mistake(answers, variants)
        message = f"code_parses for {about} ({body!r}) is {answer}, expected {expected}"
        raise CheckFailed(f"{message}: you {mistake}" if mistake else
                          f"{message}: parse prompt + '\\n' + body with ast.parse; it counts if "
                          "the body is not blank and the result is exactly one function")
    rate = sum(answers) / len(answers)
    prompts, bodies = [c[0] for c in PARSE_CASES], [c[1] for c in PARSE_CASES]
    assert math.isclose(rate, tasks.parse_rate(prompts, bodies))  # eq. (11.6): their share
    with fresh_case(fresh_seed()) as generator:  # functions no one knew in advance
        for _ in range(4):
            prompt, body = _fresh_function(generator)
            expected = tasks.code_parses(prompt, body)
            assert expected == _parses_variant(prompt, body)
            what = f"code_parses({prompt!r}, {body!r})"
            answer = _as_bool(call(code_parses, prompt, body), what)
            require(answer == expected, f"{what} is {answer}, expected {expected}")
    passed("code_parses, the indicator of eq. (11.6)")


def _fresh_function(generator) -> tuple[str, str]:
    """A made-up function header with a docstring, and a body that may or may not parse."""
    name = "".join(_pick(generator, list("abcdefgh")) for _ in range(6))
    arg = _pick(generator, ["x", "items", "path", "n"])
    prompt = (f"{_pick(generator, ['def', 'async def'])} {name}({arg}):\n"
              f'    """Return something about {arg}."""')
    body = _pick(generator, [f"    return {arg}", f"    return [{arg}]", f"    if {arg}:\n"
                             f"        return {arg}\n    return None", f"return {arg}",
                             f"    return ({arg}", "", f"    return {arg}\n{name}(1)",
                             f"    yield {arg}", f"    return {arg} +"])
    return prompt, body


# ---------------------------------------------------------------------------------------------
# Exercise 5: a task of your own, and its baseline (notebook section 5)

def _module_in(split: str, number: int) -> str:
    """A made-up module path that `tasks.module_split` puts in `split` (the number-th such)."""
    from minigpt import tasks

    found = (f"demo/module_{i}.py" for i in range(1000))
    return [m for m in found if tasks.module_split(m) == split][number]


# (split of the module, module number, qualname, summary)
MADE_UP = [
    ("train", 0, "read_config", "Read the configuration file."),
    ("train", 0, "Parser.parse_args", "Parse the command-line arguments."),
    ("train", 0, "_helper", "Help the other functions."),
    ("train", 0, "Parser.__init__", "Create a parser."),
    ("train", 0, "flush", "Flush."),
    ("train", 0, "open_file", ""),
    ("train", 1, "Stream.close", "Close the stream."),
    ("train", 1, "get", "Return the value of a key."),
    ("train", 1, "reset", "Reset everything."),
    ("val", 0, "Cache.clear", "Remove every entry."),
    ("test", 0, "Connection.close", "Close the connection."),
    ("test", 0, "fetch_page", "Fetch a page by its address."),
    ("test", 0, "_retry", "Retry a request."),
]


def _made_up_functions(made_up=MADE_UP):
    from minigpt import tasks

    return [tasks.Function(module=_module_in(split, number), qualname=qualname, lineno=line,
                           header=f"def {qualname.rsplit('.', 1)[-1]}(self):",
                           docstring=f'"""{summary}"""' if summary else "", summary=summary,
                           body="    pass", defaults=())
            for line, (split, number, qualname, summary) in enumerate(made_up, 1)]


def _fresh_made_up(generator) -> list[tuple]:
    """Made-up functions like MADE_UP, in splits, names and summaries no one knew in advance."""
    names = ["read", "write", "Stream.close", "_helper", "Parser.__init__", "get", "Cache.clear",
             "fetch_page", "open_file", "Queue.put"]
    words = ["Read", "the", "file", "a", "value", "of", "every", "key", "page"]
    made_up = []
    for _ in range(_fresh_int(generator, 4, 14)):
        summary = " ".join(_pick(generator, words) for _ in range(_fresh_int(generator, 0, 5)))
        made_up.append((_pick(generator, ["train", "train", "val", "test"]),
                        _fresh_int(generator, 0, 3), _pick(generator, names),
                        summary + "." if summary else ""))
    return made_up


def _name(function) -> str:
    return function.qualname.rsplit(".", 1)[-1]


def _kept(function) -> bool:
    return not _name(function).startswith("_") and len(function.summary.split()) >= 2


def _reference_task(functions) -> dict[str, list[tuple]]:
    """split -> [(module, qualname, input, output)] of the task, by the rules of the exercise."""
    from minigpt import tasks

    data = {split: [] for split in tasks.SPLITS}
    for f in functions:
        if _kept(f):
            data[tasks.module_split(f.module)].append((f.module, f.qualname, f.summary, _name(f)))
    return data


def _task_shape(data, what: str) -> None:
    from minigpt import tasks

    require(isinstance(data, Mapping), f"{what} should be a dict {{'train': [...], 'val': "
                                       f"[...], 'test': [...]}}, got {type(data).__name__}")
    require(set(data) == set(tasks.SPLITS), f"{what} has the keys {sorted(data)}; expected "
                                             "'train', 'val' and 'test'")
    instructions = set()
    for split in tasks.SPLITS:
        require(isinstance(data[split], list), f"{what}[{split!r}] should be a list of examples")
        for example in data[split]:
            require(isinstance(example, Mapping) and {"instruction", "input", "output",
                                                      "meta"} <= set(example),
                    f"an example in {what}[{split!r}] is {example!r}; each example is a dict "
                    "with 'instruction', 'input', 'output' and 'meta'")
            meta = example["meta"]
            require(isinstance(meta, Mapping) and {"module", "function"} <= set(meta),
                    f"an example's meta is {meta!r}; it should be {{'module': f.module, "
                    "'function': f.qualname}, so that splits can be checked")
            instructions.add(example["instruction"])
    require(len(instructions) == 1 and all(isinstance(i, str) and i.strip()
                                           for i in instructions),
            f"{what}: every example needs the same instruction, one sentence that names the task; "
            f"found {len(instructions)} different ones")


def _task_rows(data) -> dict[str, list[tuple]]:
    return {split: [(e["meta"]["module"], e["meta"]["function"], e["input"], e["output"])
                    for e in examples] for split, examples in data.items()}


def _split_problem(rows) -> str | None:
    """A module whose functions sit in two splits, or a function in the wrong split."""
    from minigpt import tasks

    splits_of = {}
    for split, examples in rows.items():
        for module, *_ in examples:
            splits_of.setdefault(module, set()).add(split)
    for module, splits in splits_of.items():
        if len(splits) > 1:
            return (f"the functions of {module} are in {' and '.join(sorted(splits))}: split by "
                    "*module* — all functions of a file in one split — so that no test function "
                    "has a sibling from its own file in training")
    for split, examples in rows.items():
        for module, qualname, *_ in examples:
            if tasks.module_split(module) != split:
                return (f"{qualname} of {module} is in {split!r}, but tasks.module_split gives "
                        f"{tasks.module_split(module)!r}: use tasks.module_split(f.module), the "
                        "split every task of the course uses")
    return None


def _content_problem(rows, expected) -> str | None:
    """Wrong answers, wrong inputs, examples left in or out: the first one, in words."""
    mine = {row[:2]: row for examples in rows.values() for row in examples}
    right = {row[:2]: row for examples in expected.values() for row in examples}
    for key, (_, qualname, prompt, answer) in mine.items():
        if key not in right:
            continue
        if answer == qualname != _name_of(qualname):
            return (f"the answer for {qualname} is {answer!r}, the qualified name; the task "
                    f"asks for the function's own name, the part after the last dot: "
                    f"{_name_of(qualname)!r}")
        if (prompt, answer) != right[key][2:]:
            return (f"the example for {qualname} is {prompt!r} -> {answer!r}; expected "
                    f"{right[key][2]!r} -> {right[key][3]!r} (input: f.summary; answer: the "
                    "name)")
    for key, (_, qualname, prompt, _) in mine.items():
        if key in right:
            continue
        if _name_of(qualname).startswith("_"):
            return (f"{qualname} is in the task; leave out names that start with an underscore "
                    "(private helpers and dunder methods such as __init__)")
        return (f"{qualname}, summary {prompt!r}, is in the task; keep only summaries of two "
                "words or more (one word, or none, says too little to name a function)")
    for key, row in right.items():
        if key not in mine:
            return (f"{row[1]} of {row[0]} (summary {row[2]!r}) is missing; keep every public "
                    "function whose summary has two words or more")
    return None


def _name_of(qualname: str) -> str:
    return qualname.rsplit(".", 1)[-1]


def _check_task(build_name_task, functions, what: str) -> dict:
    data = call(build_name_task, list(functions))
    _task_shape(data, what)
    rows, expected = _task_rows(data), _reference_task(functions)
    problem = _split_problem(rows) or _content_problem(rows, expected)
    if problem is None and rows != expected:
        problem = "the examples are right, but not in the order of `functions`; keep that order"
    require(problem is None, f"{what}: {problem}")
    return data


# train: "close" is the majority; test: "get" is, so a majority taken over test shows
BASELINE_TRAIN = ["close", "get", "close", "read", "get", "close"]
BASELINE_TEST = ["get", "clear", "get", "get"]


def _examples(outputs, prefix: str) -> list[dict]:
    return [{"instruction": "Name the function.", "input": f"{prefix} summary {i}",
             "output": output, "meta": {"module": f"{prefix}.py", "function": f"f{i}"}}
            for i, output in enumerate(outputs)]


def _check_baseline(majority_baseline, train, test, what: str) -> None:
    from minigpt import tasks

    predictions = call(majority_baseline, train, test)
    if isinstance(predictions, str):
        raise CheckFailed(f"{what} is the string {predictions!r}; return one prediction per test "
                          "example, a list of len(test) answers")
    require(isinstance(predictions, list | tuple), f"{what} should be a list of predictions, "
                                                   f"got {type(predictions).__name__}")
    require(len(predictions) == len(test), f"{what} has {len(predictions)} predictions for "
                                           f"{len(test)} test examples; give one per example")
    require(all(isinstance(p, str) for p in predictions),
            f"{what} should hold answers (strings), got {type(predictions[0]).__name__}")
    counts = Counter(e["output"] for e in train)
    top = max(counts.values())
    package = tasks.baseline_predictions("qa", train, test)  # the majority rule of minigpt.tasks
    assert counts[package[0]] == top
    guess = predictions[0]
    if len(set(predictions)) == 1 and counts.get(guess) == top:
        return
    in_test = Counter(e["output"] for e in test)
    if len(set(predictions)) > 1:
        problem = ("the predictions differ from example to example; the majority baseline gives "
                   "every test example the same answer")
    elif guess in in_test and in_test[guess] == max(in_test.values()):
        problem = (f"{guess!r} is the most common answer of the *test* split (or of train and test "
                   "together); a baseline may learn from the training answers only, or it has "
                   "seen the answers it is scored on")
    elif guess in counts and counts[guess] == min(counts.values()):
        problem = f"{guess!r} is the *least* common training answer"
    else:
        problem = f"{guess!r} is not the most common training answer"
    raise CheckFailed(f"{what} answers {guess!r}; expected {package[0]!r}, the most common output "
                      f"of the training examples: {problem}")


def check_name_task(build_name_task, majority_baseline) -> None:
    """build_name_task(functions) -> {"train", "val", "test"} examples (summary -> name);
    majority_baseline(train, test) -> the most common training answer, once per test example."""
    from minigpt import tasks

    _check_task(build_name_task, _made_up_functions(),
                f"build_name_task({len(MADE_UP)} made-up functions)")
    _check_baseline(majority_baseline, _examples(BASELINE_TRAIN, "train"),
                    _examples(BASELINE_TEST, "test"),
                    "majority_baseline(6 training examples, 4 test examples)")
    functions = tasks.stdlib_functions()
    data = _check_task(build_name_task, functions,
                       f"build_name_task(the {show(len(functions))} functions of the standard "
                       "library)")
    require(all(data[split] for split in tasks.SPLITS), "every split should hold examples")
    _check_baseline(majority_baseline, data["train"], data["test"],
                    "majority_baseline on your task's train and test splits")
    with fresh_case(fresh_seed()) as generator:  # functions and answers no one knew in advance
        made_up = _fresh_made_up(generator)
        _check_task(build_name_task, _made_up_functions(made_up),
                    f"build_name_task({len(made_up)} made-up functions drawn at random)")
        names = ["open", "read", "clear", "put", "write"]  # not the fixed examples' majority
        train = [_pick(generator, names) for _ in range(_fresh_int(generator, 1, 12))]
        while Counter(train).most_common(2)[-1][1] == Counter(train).most_common(1)[0][1] \
                and len(set(train)) > 1:  # a tie for the majority: add one more vote
            train.append(Counter(train).most_common(1)[0][0])
        test = [_pick(generator, names) for _ in range(_fresh_int(generator, 1, 8))]
        _check_baseline(majority_baseline, _examples(train, "train"), _examples(test, "test"),
                        f"majority_baseline({len(train)} training examples, {len(test)} test "
                        "examples)")
    passed("a task from the standard library (split by module) and its majority baseline")


# ---------------------------------------------------------------------------------------------
# Exercise 6: export to GPT-2's layout (eq. 11.7)

EXPORT_SIZES = dict(vocab_size=50257, block_size=32, n_layer=2, n_head=2, n_embd=16)
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _as_state(value, what: str) -> dict:
    require(isinstance(value, Mapping), f"{what} should be a dict {{GPT-2 name: tensor}}, got "
                                        f"{type(value).__name__}")
    for name, tensor in value.items():
        as_tensor(tensor, f"{what}[{name!r}]")
    return dict(value)


def _names_problem(state: dict, expected: dict) -> str | None:
    extra = sorted(set(state) - set(expected) - {"lm_head.weight"})
    missing = [name for name in expected if name not in state]
    if not missing and not extra:
        return None
    if any(name.startswith(("blocks.", "token_emb.")) for name in state):
        return ("the dict has minigpt's names (e.g. 'blocks.0.attn.qkv_proj.weight'); rename "
                "every tensor to GPT-2's ('transformer.h.0.attn.c_attn.weight'), table above")
    if missing and extra and all(f"transformer.{name}" in expected for name in extra):
        return ("the names lack GPT-2's prefix 'transformer.' (e.g. "
                f"'transformer.{extra[0]}'): GPT2LMHeadModel keeps the network under .transformer")
    parts = []
    if missing:
        parts.append(f"missing {missing[:4]}" + (" ..." if len(missing) > 4 else ""))
    if extra:
        parts.append(f"unexpected {extra[:4]}" + (" ..." if len(extra) > 4 else ""))
    return "the names are not GPT-2's: " + "; ".join(parts)


def _find_source(tensor, ours: dict) -> tuple[str, bool] | None:
    """(minigpt name, transposed?) of the tensor of ours that `tensor` equals, if any."""
    for name, value in ours.items():
        for transposed, candidate in ((False, value), (True, value.t() if value.dim() == 2
                                                       else None)):
            if (candidate is not None and candidate.shape == tensor.shape
                    and torch.equal(tensor.detach().cpu(), candidate)):
                return name, transposed
    return None


def _tensor_problem(name: str, tensor, right, ours: dict) -> str | None:
    conv1d = name.endswith(CONV1D)
    if tuple(tensor.shape) != tuple(right.shape):
        if tensor.dim() == 2 and tuple(tensor.t().shape) == tuple(right.shape):
            if conv1d:
                return (f"{name} has shape {tuple(tensor.shape)}, nn.Linear's (out, in); "
                        f"GPT-2's Conv1D stores (in, out) = {tuple(right.shape)}: transpose it "
                        "(eq. 11.7)")
            return (f"{name} has shape {tuple(tensor.shape)}, transposed: only the four Conv1D "
                    "weights of each block change layout; embeddings are tables looked up by "
                    f"row and keep theirs, {tuple(right.shape)}")
        return f"{name} has shape {tuple(tensor.shape)}, expected {tuple(right.shape)}"
    if torch.equal(tensor.detach().cpu(), right):
        return None
    source = _find_source(tensor, ours)
    if source is None:
        return None  # numbers of its own: `close` below says how far off they are
    origin, transposed = source
    if conv1d and not transposed and tensor.size(0) == tensor.size(1):
        return (f"{name} holds {origin} untransposed: this layer is square (C × C), so a missing "
                "transpose does not show in the shape, but x W and x Wᵀ differ. Transpose every "
                "Conv1D weight, whatever its shape (eq. 11.7)")
    return (f"{name} holds {origin}" + (" transposed" if transposed else "") +
            f": the names are mixed up; check the table of names for {name.split('.')[-2]}")


@torch.no_grad()
def _hf_agrees(state: dict, model: GPT) -> None:
    """GPT2LMHeadModel with the learner's tensors gives minigpt's logits, and a
    transformers.pipeline on a folder holding them gives minigpt's greedy tokens."""
    transformers = _transformers()
    if transformers is None:
        return
    from safetensors.torch import save_file

    from minigpt.hf import config_to_hf, write_gpt2_tokenizer_files

    tensors = {name: t.detach().cpu().clone().contiguous() for name, t in state.items()
               if name != "lm_head.weight"}  # tied to the token embedding, as in GPT-2's files
    with tempfile.TemporaryDirectory() as folder, _quiet_transformers(transformers):
        with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config_to_hf(model.config), f)
        save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        write_gpt2_tokenizer_files(folder)
        hf_model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
        idx = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
        close(hf_model(idx).logits, model(idx)[0], "GPT2LMHeadModel's logits with your tensors",
              atol=1e-5)
        generator = transformers.pipeline("text-generation", model=folder, device="cpu")
        prompt = "Summarize: the cat sat on the mat. Summary:"
        result = generator(prompt, max_new_tokens=8, do_sample=False, return_tensors=True)
    ids = torch.tensor([generator.tokenizer(prompt).input_ids])
    ours = model.generate(ids, 8, temperature=0, eos_token=50256)[0].tolist()
    require(list(result[0]["generated_token_ids"]) == ours,
            "transformers.pipeline on a folder with your tensors does not continue the text as "
            "minigpt does")


def check_export(export_state_dict) -> None:
    """export_state_dict(model) -> {GPT-2 name: tensor} that GPT2LMHeadModel loads, eq. 11.7."""
    model = _random_gpt(3, **EXPORT_SIZES)
    _hf_agrees(_check_export_case(export_state_dict, model), model)
    seed = fresh_seed()
    with fresh_case(seed) as generator:  # a model no one knew in advance
        n_head = _fresh_int(generator, 1, 4)
        sizes = dict(vocab_size=_fresh_int(generator, 50, 300), block_size=16,
                     n_layer=_pick(generator, [1, 3, 4]), n_head=n_head,  # not the fixed 2
                     n_embd=n_head * _fresh_int(generator, 2, 9))
        _check_export_case(export_state_dict, _random_gpt(seed, **sizes))
    passed("export to GPT-2's layout, eq. (11.7) (== minigpt.hf; GPT2LMHeadModel and "
           "transformers.pipeline agree)")


def _check_export_case(export_state_dict, model: GPT) -> dict:
    """The learner's export of `model`, once it equals minigpt.hf's tensor for tensor."""
    from minigpt.hf import state_dict_to_hf

    expected, ours = state_dict_to_hf(model), model.state_dict()
    c = model.config
    what = (f"export_state_dict(model with n_layer={c.n_layer}, n_embd={c.n_embd}, "
            f"vocab_size={c.vocab_size})")
    with torch.no_grad():
        state = _as_state(call(export_state_dict, model), what)
    problem = _names_problem(state, expected)
    require(problem is None, f"{what}: {problem}")
    if "lm_head.weight" in state:
        require(torch.equal(state["lm_head.weight"].detach().cpu(), expected[
            "transformer.wte.weight"]), "lm_head.weight should be the token embedding (tied)")
    for name, right in expected.items():
        problem = _tensor_problem(name, state[name], right, ours)
        require(problem is None, f"{what}: {problem}")
        close(state[name].detach().cpu(), right, f"{what}[{name!r}]", atol=0, rtol=0)
    return state
