"""The checks of exercises/11_applications.ipynb pass right answers, and fail wrong ones with the
diagnosis of their mistake (every wrong answer here is one a learner could write)."""

from __future__ import annotations

import ast
import math
import random
from collections import Counter

import pytest
import torch
from check_helpers import FRESH_CASE_WORDS, rejects_remembered_answers, unwritten

from checks import applications as check
from checks.core import CheckFailed
from minigpt import tasks
from minigpt.hf import state_dict_to_hf

pytestmark = pytest.mark.usefixtures("one_thread")

LN2 = math.log(2)


def fails(check_function, *answers_and_words):
    """Like check_helpers.fails, for checks of several answers: the words come last."""
    *answers, words = answers_and_words
    with pytest.raises(CheckFailed) as failure:
        check_function(*answers)
    message = str(failure.value)
    for word in words:
        assert word in message, f"{word!r} not in: {message}"
    return message


# --- exercise 1: bits per byte (eq. 11.2) ------------------------------------------------------


def bits_per_byte(loss, tokens, text):
    return loss / LN2 * len(tokens) / len(text.encode("utf-8"))


def test_bits_per_byte_passes_a_right_answer(capsys):
    check.check_bits_per_byte(bits_per_byte)
    check.check_bits_per_byte(lambda loss, tokens, text: torch.tensor(
        bits_per_byte(loss, tokens, text)))  # a one-element tensor is a number too
    assert "✓ bits per byte" in capsys.readouterr().out


def _bytes(text):
    return len(text.encode("utf-8"))


@pytest.mark.parametrize("wrong, words", [
    (lambda loss, t, text: loss * len(t) / _bytes(text), ["in nats", "ln 2"]),
    (lambda loss, t, text: loss / math.log(10) * len(t) / _bytes(text), ["ln 10"]),
    (lambda loss, t, text: loss * LN2 * len(t) / _bytes(text), ["multiplied by ln 2"]),
    (lambda loss, t, text: math.log2(loss) * len(t) / _bytes(text), ["log₂ of the loss"]),
    (lambda loss, t, text: loss / LN2, ["tokens-per-byte factor"]),
    (lambda loss, t, text: loss / LN2 * _bytes(text) / len(t), ["bytes per token"]),
    (lambda loss, t, text: loss / LN2 * len(t) / len(text), ["characters", "bytes"]),
    (lambda loss, t, text: loss / LN2 * len(t), ["whole text"]),
    (lambda loss, t, text: loss, ["in nats", "tokens-per-byte factor"]),
], ids=["nats", "log10", "times-ln2", "log2-of-loss", "no-factor", "inverted-factor",
        "characters", "total-bits", "raw-loss"])
def test_bits_per_byte_names_the_mistake(wrong, words):
    fails(check.check_bits_per_byte, wrong, words)


def test_bits_per_byte_unknown_mistake_gives_the_formula():
    fails(check.check_bits_per_byte, lambda loss, t, text: bits_per_byte(loss, t, text) + 0.1,
          ["N_tokens / N_bytes", "utf-8"])


def test_bits_per_byte_needs_a_number():
    fails(check.check_bits_per_byte, unwritten, ["not written yet"])
    fails(check.check_bits_per_byte, lambda loss, t, text: None, ["is None"])


# --- exercise 2: greedy answers (eq. 11.3) ----------------------------------------------------


def greedy(model, prompt, end, max_new_tokens, *, stop=True, keep_end=False, with_prompt=False,
           position=-1, last_only=False, pick=None):
    ids, answer = list(prompt), []
    for _ in range(max_new_tokens):
        logits, _ = model(torch.tensor([ids[-1:] if last_only else ids]))
        row = logits[0, position]
        token = int(pick(row)) if pick else int(row.argmax())
        if stop and token == end:
            if keep_end:
                answer.append(token)
            break
        ids.append(token)
        answer.append(token)
    return list(prompt) + answer if with_prompt else answer


def test_greedy_passes_a_right_answer(capsys):
    check.check_greedy_answer(greedy)
    check.check_greedy_answer(lambda *args: torch.tensor(greedy(*args)))  # ids as a tensor
    assert "✓ greedy answers" in capsys.readouterr().out


def _sample(row):
    """A draw from softmax(row), seeded by the row itself: reproducible, and not the argmax."""
    generator = torch.Generator().manual_seed(int(row.abs().sum() * 1000))
    return torch.multinomial(torch.softmax(row, -1), 1, generator=generator)


@pytest.mark.parametrize("options, words", [
    (dict(stop=False), ["runs on past the end token"]),
    (dict(keep_end=True), ["end token is part of the answer"]),
    (dict(with_prompt=True), ["starts with the prompt"]),
    (dict(with_prompt=True, stop=False), ["starts with the prompt", "past the end token"]),
    (dict(with_prompt=True, keep_end=True), ["starts with the prompt", "ends with the end"]),
    (dict(position=0), ["*first* position", "logits[0, -1]"]),
    (dict(last_only=True), ["only the latest token"]),
    (dict(pick=_sample), ["most likely next token", "argmax"]),
    (dict(pick=lambda row: row.argmin()), ["most likely next token", "argmax"]),
], ids=["no-stop", "keeps-end", "with-prompt", "prompt-no-stop", "prompt-and-end",
        "first-position", "last-token-only", "sampled", "argmin"])
def test_greedy_names_the_mistake(options, words):
    fails(check.check_greedy_answer, lambda *args: greedy(*args, **options), words)


def test_greedy_says_where_an_answer_stops_too_soon():
    fails(check.check_greedy_answer, lambda *args: greedy(*args)[:1],
          ["stops after", "not the end token"])


def test_greedy_wants_its_own_loop_and_a_list_of_ids():
    def with_generate(model, prompt, end, max_new_tokens):
        return model.generate(torch.tensor([prompt]), max_new_tokens, temperature=0)

    fails(check.check_greedy_answer, with_generate, ["model.generate", "yourself"])
    fails(check.check_greedy_answer, lambda *args: torch.tensor([greedy(*args)]),
          ["batch of one"])
    fails(check.check_greedy_answer, lambda *args: str(greedy(*args)), ["string"])
    fails(check.check_greedy_answer, unwritten, ["not written yet"])


# --- exercise 3: exact match (eq. 11.4) -------------------------------------------------------


def exact_match(predictions, references, norm=None, share="mean", strict=True):
    def normalise(text):
        return "\n".join(line.rstrip() for line in text.strip().splitlines())

    norm = norm or normalise
    hits = sum(norm(p) == norm(r) for p, r in zip(predictions, references, strict=strict))
    return {"mean": hits / len(references), "count": hits,
            "miss": 1 - hits / len(references)}[share]


def test_exact_match_passes_right_answers(capsys):
    import minigpt.finetune as ft

    check.check_exact_match(exact_match)
    check.check_exact_match(ft.exact_match)
    assert "✓ exact match" in capsys.readouterr().out


def _rstrip_lines(text):
    return "\n".join(line.rstrip() for line in text.splitlines())


def _strip_punctuation(text):
    return "".join(c for c in _rstrip_lines(text.strip()) if c.isalnum() or c.isspace())


@pytest.mark.parametrize("options, words", [
    (dict(norm=lambda t: t), ["raw strings"]),
    (dict(norm=str.strip), ["ends of the whole text only"]),
    (dict(norm=_rstrip_lines), ["not at the start of the text"]),
    (dict(norm=lambda t: "\n".join(line.strip() for line in t.strip().splitlines())),
     ["indentation"]),
    (dict(norm=lambda t: " ".join(t.split())), ["collapsed"]),
    (dict(norm=lambda t: _rstrip_lines(t.strip()).lower()), ["lower-cased"]),
    (dict(norm=_strip_punctuation), ["punctuation"]),
    (dict(share="count"), ["number of matches"]),
    (dict(share="miss"), ["do *not* match"]),
    (dict(norm=lambda t: t.strip().lower(), share="count"),
     ["ends of the whole text only", "lower-cased", "number of matches"]),
], ids=["raw", "ends-only", "lines-only", "indentation", "collapsed", "case-folded",
        "punctuation", "count", "misses", "three-at-once"])
def test_exact_match_names_the_mistake(options, words):
    fails(check.check_exact_match, lambda p, r: exact_match(p, r, **options), words)


def test_exact_match_must_refuse_lists_of_different_lengths():
    fails(check.check_exact_match, lambda p, r: exact_match(p, r, strict=False),
          ["should fail", "strict=True"])
    fails(check.check_exact_match, unwritten, ["not written yet"])


# --- exercise 4: does the body parse? (eq. 11.6) ----------------------------------------------


def code_parses(prompt, body, *, empty=False, any_parse=False, async_ok=True, newline="\n",
                catch=True):
    if not empty and not body.strip():
        return False
    try:
        tree = ast.parse(prompt + newline + body)
    except SyntaxError:
        if not catch:
            raise
        return False
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef) if async_ok else ast.FunctionDef
    return any_parse or (len(tree.body) == 1 and isinstance(tree.body[0], kinds))


def test_code_parses_passes_right_answers(capsys):
    check.check_code_parses(code_parses)
    check.check_code_parses(tasks.code_parses)
    assert "✓ code_parses" in capsys.readouterr().out


@pytest.mark.parametrize("options, words", [
    (dict(empty=True), ["empty body", "body.strip()"]),
    (dict(any_parse=True), ["without indentation", "exactly one statement"]),
    (dict(async_ok=False), ["async def", "AsyncFunctionDef"]),
    (dict(newline=""), ["without a newline"]),
    (dict(empty=True, any_parse=True), ["empty body", "without indentation"]),
    (dict(catch=False), ["raised SyntaxError", "return False"]),
], ids=["empty", "any-parse", "no-async", "no-newline", "two-at-once", "uncaught"])
def test_code_parses_names_the_mistake(options, words):
    fails(check.check_code_parses, lambda p, b: code_parses(p, b, **options), words)


def test_code_parses_wants_a_bool():
    fails(check.check_code_parses, lambda p, b: ast.parse(p), ["True or False"])
    fails(check.check_code_parses, lambda p, b: code_parses(p, b) and b.startswith("    if"),
          ["parse prompt + '\\n' + body"])
    fails(check.check_code_parses, unwritten, ["not written yet"])


# --- exercise 5: a task of your own and its baseline (section 5) ------------------------------


def build_name_task(functions, *, split=lambda f: tasks.module_split(f.module),
                    answer=lambda f: f.qualname.rsplit(".", 1)[-1], private=False, min_words=2,
                    meta=True, instruction=lambda f: "Name a function that does this.",
                    order=None):
    data = {name: [] for name in tasks.SPLITS}
    for f in functions:
        name = f.qualname.rsplit(".", 1)[-1]
        if (name.startswith("_") and not private) or len(f.summary.split()) < min_words:
            continue
        example = {"instruction": instruction(f), "input": f.summary, "output": answer(f)}
        if meta:
            example["meta"] = {"module": f.module, "function": f.qualname}
        data[split(f)].append(example)
    if order:
        data = {name: sorted(examples, key=order) for name, examples in data.items()}
    return data


def majority_baseline(train, test):
    return [Counter(e["output"] for e in train).most_common(1)[0][0]] * len(test)


def test_name_task_passes_right_answers(capsys):
    check.check_name_task(build_name_task, majority_baseline)
    check.check_name_task(build_name_task, lambda train, test: tasks.baseline_predictions(
        "qa", train, test))
    assert "✓ a task from the standard library" in capsys.readouterr().out


@pytest.mark.parametrize("options, words", [
    (dict(split=lambda f: tasks.module_split(f.qualname)), ["split by *module*"]),
    (dict(split=lambda f: random.Random(f.qualname).choice(tasks.SPLITS)),
     ["split by *module*"]),
    (dict(split=lambda f: "train"), ["tasks.module_split"]),
    (dict(answer=lambda f: f.qualname), ["qualified name", "after the last dot"]),
    (dict(answer=lambda f: f.qualname.rsplit(".", 1)[-1].upper()), ["expected"]),
    (dict(private=True), ["underscore"]),
    (dict(min_words=0), ["two words or more"]),
    (dict(min_words=3), ["is missing"]),
    (dict(meta=False), ["'meta'"]),
    (dict(instruction=lambda f: f"Name {f.qualname}."), ["same instruction"]),
    (dict(order=lambda e: e["output"]), ["order"]),
], ids=["split-by-function", "random-split", "all-in-train", "qualname", "upper-case",
        "private-kept", "no-summary-filter", "too-strict", "no-meta", "many-instructions",
        "reordered"])
def test_name_task_names_the_mistake(options, words):
    fails(check.check_name_task, lambda functions: build_name_task(functions, **options),
          majority_baseline, words)


def test_name_task_wants_a_dict_of_splits():
    fails(check.check_name_task, lambda functions: [], majority_baseline, ["should be a dict"])
    fails(check.check_name_task, lambda functions: {"train": []}, majority_baseline,
          ["'train', 'val' and 'test'"])
    fails(check.check_name_task, unwritten, majority_baseline, ["not written yet"])


@pytest.mark.parametrize("wrong, words", [
    (lambda train, test: majority_baseline(test, test), ["*test* split"]),
    (lambda train, test: majority_baseline(train + test, test), ["*test* split"]),
    (lambda train, test: [Counter(e["output"] for e in train).most_common()[-1][0]] * len(test),
     ["*least* common"]),
    (lambda train, test: majority_baseline(train, test)[0], ["string", "one prediction per"]),
    (lambda train, test: majority_baseline(train, train), ["predictions for"]),
    (lambda train, test: [train[0]] * len(test), ["should hold answers (strings)"]),
    (lambda train, test: [e["output"] for e in test], ["differ from example to example"]),
    (lambda train, test: ["None"] * len(test), ["not the most common training answer"]),
], ids=["from-test", "from-train-and-test", "least-common", "a-string", "wrong-length",
        "examples-not-answers", "copies-answers", "a-constant"])
def test_majority_baseline_names_the_mistake(wrong, words):
    fails(check.check_name_task, build_name_task, wrong, words)


# --- exercise 6: export to GPT-2's layout (eq. 11.7) ------------------------------------------

BLOCK_NAMES = {"ln_1": "ln_1", "attn.c_attn": "attn.qkv_proj", "attn.c_proj": "attn.out_proj",
               "ln_2": "ln_2", "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}


def export(model, *, transpose=lambda name, w: w.t(), prefix="transformer.", names=BLOCK_NAMES,
           embeddings=lambda w: w, head=False):
    ours = model.state_dict()
    out = {f"{prefix}wte.weight": embeddings(ours["token_emb.weight"]),
           f"{prefix}wpe.weight": embeddings(ours["pos_enc.embedding.weight"]),
           f"{prefix}ln_f.weight": ours["ln_f.weight"], f"{prefix}ln_f.bias": ours["ln_f.bias"]}
    for i in range(model.config.n_layer):
        for hf_name, name in names.items():
            weight = ours[f"blocks.{i}.{name}.weight"]
            if not hf_name.startswith("ln"):
                weight = transpose(hf_name, weight)
            out[f"{prefix}h.{i}.{hf_name}.weight"] = weight
            out[f"{prefix}h.{i}.{hf_name}.bias"] = ours[f"blocks.{i}.{name}.bias"]
    if head:
        out["lm_head.weight"] = ours["lm_head.weight"]
    return out


def test_export_passes_right_answers(capsys):
    check.check_export(export)
    check.check_export(lambda model: export(model, head=True))  # the tied head, written out
    check.check_export(state_dict_to_hf)
    assert "✓ export to GPT-2's layout" in capsys.readouterr().out


NOT_SQUARE = ("attn.c_attn", "mlp.c_fc", "mlp.c_proj")  # (C, 3C), (C, 4C), (4C, C)


def _transpose_to_fit(name, weight):
    """Transpose only where the shape demands it: every Conv1D weight but the square one."""
    return weight.t() if name in NOT_SQUARE else weight


@pytest.mark.parametrize("options, words", [
    (dict(transpose=lambda name, w: w), ["nn.Linear's (out, in)", "transpose it"]),
    (dict(transpose=_transpose_to_fit), ["square", "does not show in the shape"]),
    (dict(embeddings=lambda w: w.t()), ["embeddings", "keep theirs"]),
    (dict(prefix=""), ["prefix 'transformer.'"]),
    (dict(names={**BLOCK_NAMES, "ln_1": "ln_2", "ln_2": "ln_1"}), ["holds blocks.0.ln_2",
                                                                   "mixed up"]),
], ids=["no-transpose", "transpose-to-fit", "embeddings-transposed", "no-prefix",
        "norms-swapped"])
def test_export_names_the_mistake(options, words):
    fails(check.check_export, lambda model: export(model, **options), words)


def test_export_wants_gpt2_names_in_a_dict():
    fails(check.check_export, lambda model: model.state_dict(), ["minigpt's names"])
    fails(check.check_export, lambda model: list(export(model).values()), ["should be a dict"])
    fails(check.check_export, lambda model: {k: v for k, v in export(model).items()
                                             if "ln_f" not in k}, ["missing", "ln_f"])
    fails(check.check_export, unwritten, ["not written yet"])


def test_export_says_how_far_off_new_numbers_are():
    def noisy(model):
        out = export(model)
        out["transformer.h.1.mlp.c_fc.bias"] = out["transformer.h.1.mlp.c_fc.bias"] + 0.01
        return out

    fails(check.check_export, noisy, ["transformer.h.1.mlp.c_fc.bias", "largest difference"])


# --- every check: answers remembered for the fixed examples are not enough ---------------------


def test_name_task_rejects_a_baseline_typed_in_from_the_fixed_examples():
    def typed(train, test):  # right on the standard library, "close" for any small example
        return majority_baseline(train, test) if len(train) > 100 else ["close"] * len(test)

    fails(check.check_name_task, build_name_task, typed, FRESH_CASE_WORDS[:2])


def test_export_rejects_a_depth_hard_coded_from_the_fixed_model():
    def two_blocks(model):
        model.config.n_layer, depth = 2, model.config.n_layer  # the fixed model's depth
        try:
            return export(model)
        finally:
            model.config.n_layer = depth

    # a depth of 1, 3 or 4 is drawn: 3 and 4 leave blocks missing, 1 makes it raise
    fails(check.check_export, two_blocks, ["drawn at random"])


@pytest.mark.parametrize("check_function, right", [
    (check.check_bits_per_byte, bits_per_byte),
    (check.check_greedy_answer, greedy),
    (check.check_exact_match, exact_match),
    (check.check_code_parses, code_parses),
], ids=["bits_per_byte", "greedy_answer", "exact_match", "code_parses"])
def test_checks_reject_answers_remembered_for_their_fixed_examples(check_function, right):
    rejects_remembered_answers(check_function, right)


def test_an_error_raised_on_the_fresh_case_becomes_a_message():
    from checks.core import CheckFailed, fresh_case

    with pytest.raises(CheckFailed, match=r"raised KeyError: 'blocks.1' on a new case drawn at "
                                          r"random \(seed 7\)"):
        with fresh_case(7):
            {}["blocks.1"]  # noqa: B018  (what a hard-coded depth does on a shallower model)
