"""Checks for exercises/10_finetuning.ipynb (the course notebook: notebooks/10_finetuning.ipynb).

LoRA's parameter count (eq. 10.4), the instruction targets with the prompt masked (eq. 10.1), a
LoRA layer (eq. 10.3), merging and unmerging it (eq. 10.5), the last real token of a padded batch
(eq. 10.2) and ROUGE-L (eq. 10.6). Each answer is compared with `minigpt.lora` or
`minigpt.finetune` and with an independent reference: Hugging Face GPT-2's layer shapes, a dense
ΔW, a cross-entropy summed by hand over the response, each sequence run alone without padding,
a brute-force LCS and Google's `rouge-score`. A wrong answer is matched against the usual
mistakes — the full matrix counted, a forgotten α/r, B initialised at random, the first response
token masked, an unmerge that drifts, the padding position read — and the message names the one
it looks like.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from checks.core import (
    CheckFailed,
    as_number,
    as_tensor,
    call,
    close,
    close_or_diagnose,
    combine_mistakes,
    diagnose_all,
    find_mistake,
    fresh_case,
    fresh_seed,
    passed,
    require,
    same_shape,
    show,
)
from minigpt import finetune as ft
from minigpt.lora import LoRALinear, apply_lora, count_parameters
from minigpt.model import GPT, GPTConfig


def _seeded_randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _linear(d_in: int, d_out: int, seed: int, bias: bool = True) -> nn.Linear:
    """A seeded nn.Linear, made without moving the learner's random numbers."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(d_in, d_out, bias=bias)


def _fresh_int(generator, low: int, high: int) -> int:
    """An integer in [low, high), drawn with `generator`."""
    return int(torch.randint(low, high, (), generator=generator))


def _tiny_gpt(vocab_size: int, block_size: int, seed: int) -> GPT:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2,
                             n_embd=16)).eval()


# ---------------------------------------------------------------- eq. (10.4): the count

# (config, rank, targets): GPT-2 small and medium, and small shapes where every term shows
COUNT_CASES = [
    (GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768), 8,
     ("qkv_proj", "out_proj")),
    (GPTConfig(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024), 16,
     ("qkv_proj", "out_proj", "fc", "proj")),
    (GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=4, n_embd=64), 4,
     ("qkv_proj",)),
    (GPTConfig(vocab_size=65, block_size=16, n_layer=3, n_head=4, n_embd=48), 1,
     ("fc", "proj")),
    (GPTConfig(vocab_size=1000, block_size=64, n_layer=1, n_head=2, n_embd=32), 2,
     ("out_proj", "fc")),
]
LINEARS = ("qkv_proj", "out_proj", "fc", "proj")


def _shapes(C: int, layout: str = "true") -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of a block's four linear layers (notebooks 04 and 06)."""
    true = {"qkv_proj": (C, 3 * C), "out_proj": (C, C), "fc": (C, 4 * C), "proj": (4 * C, C)}
    if layout == "square":
        return dict.fromkeys(true, (C, C))
    if layout == "qkv_square":
        return {**true, "qkv_proj": (C, C)}
    return true


TRAINABLE_KNOBS = {
    "per_matrix": {"lora": None,
                   "full": "counted d_in·d_out, the whole matrix: that is what full finetuning "
                           "trains; LoRA trains A (r × d_in) and B (d_out × r), r·(d_in + d_out) "
                           "numbers (eq. 10.4)",
                   "A": "counted A (r × d_in) but not B (d_out × r): eq. (10.4) has both, "
                        "r·(d_in + d_out)",
                   "B": "counted B (d_out × r) but not A (r × d_in): eq. (10.4) has both, "
                        "r·(d_in + d_out)",
                   "product": "multiplied r·d_in·d_out: A and B are two separate matrices, so "
                              "their sizes add, r·d_in + d_out·r"},
    "layout": {"true": None,
               "square": "treated every targeted matrix as C × C: qkv_proj maps C → 3C "
                         "(queries, keys and values at once), fc C → 4C and proj 4C → C",
               "qkv_square": "treated qkv_proj as C × C: it maps C → 3C (queries, keys and "
                             "values fused in one matrix), so its adapter has r·(C + 3C)"},
    "which": {"targets": None,
              "all": "adapted all four linear layers of a block, whatever `targets` says"},
    "layers": {"all": None, "one": "counted one block instead of n_layer of them"},
    "head": {False: None,
             True: "added an adapter on the output head: the targets are linear layers of the "
                   "blocks; lm_head (tied to the token embedding) is not adapted"},
    "frozen": {False: None,
               True: "counted the frozen weights of the targeted layers as trainable too: "
                     "with LoRA, W (and its bias) stays frozen; only A and B train"},
}

TOTAL_KNOBS = {
    "head": {"once": None,
             "twice": "counted the output head as a V × C matrix of its own: it is tied to the "
                      "token embedding (eq. 7.3), one tensor, counted once (a state_dict lists "
                      "it under two names; model.parameters() yields it once)"},
    "adapters": {"added": None,
                 "missing": "left the adapters out of the total: the adapted model holds the "
                            "base's parameters *and* A and B"},
}


def _trainable_variant(config, rank, targets, per_matrix="lora", layout="true", which="targets",
                       layers="all", head=False, frozen=False) -> int:
    C, r = config.n_embd, rank
    names = LINEARS if which == "all" else targets
    size = {"lora": lambda i, o: r * (i + o), "full": lambda i, o: i * o,
            "A": lambda i, o: r * i, "B": lambda i, o: o * r,
            "product": lambda i, o: r * i * o}[per_matrix]
    shapes = _shapes(C, layout)
    block = sum(size(*shapes[name]) for name in names)
    if frozen:
        block += sum(i * o + o for i, o in (_shapes(C)[name] for name in names))
    count = block * (config.n_layer if layers == "all" else 1)
    return count + (r * (C + config.vocab_size) if head else 0)


@functools.lru_cache(maxsize=16)
def _package_counts(index: int) -> tuple[int, int, int]:
    """(trainable, total, base total) from minigpt itself, built on the meta device."""
    config, rank, targets = COUNT_CASES[index]
    with torch.device("meta"):
        base = GPT(config).num_params()
        adapted = count_parameters(apply_lora(GPT(config), rank=rank, targets=targets))
    return adapted["trainable"], adapted["total"], base


def _hugging_face_counts(config, rank, targets) -> tuple[int, int] | None:
    """The same count from Hugging Face GPT-2's own layer shapes (Conv1D weights are
    (d_in, d_out)); None if transformers is missing."""
    try:
        with warnings.catch_warnings():  # tqdm's note about ipywidgets is no news to a learner
            warnings.filterwarnings("ignore", message="IProgress not found")
            import transformers
    except ImportError:
        return None
    names = {"attn.c_attn": "qkv_proj", "attn.c_proj": "out_proj", "mlp.c_fc": "fc",
             "mlp.c_proj": "proj"}
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
            n_layer=config.n_layer, n_head=config.n_head, bos_token_id=None, eos_token_id=None))
    trainable = sum(rank * sum(module.weight.shape) for name, module in hf.named_modules()
                    if any(name.endswith(suffix) and names[suffix] in targets
                           for suffix in names))
    return trainable, hf.num_parameters() + trainable


def _as_count(value, what: str) -> int:
    number = as_number(value, what)
    if not number.is_integer():
        raise CheckFailed(f"{what} is {number:g}, which is not a whole number of parameters")
    return int(number)


def _counts_of(answer, what: str) -> tuple[int, int]:
    require(isinstance(answer, tuple | list) and len(answer) == 2,
            f"{what} should return a pair (trainable, total), got {type(answer).__name__}")
    return (_as_count(answer[0], f"the trainable count of {what}"),
            _as_count(answer[1], f"the total of {what}"))


def check_lora_counts(lora_counts) -> None:
    """lora_counts(config, rank, targets) -> (trainable, total) of the adapted GPT (eq. 10.4)."""
    answers, wheres = [], []
    for config, rank, targets in COUNT_CASES:
        where = (f"lora_counts(n_layer={config.n_layer}, n_embd={config.n_embd}, "
                 f"vocab_size={config.vocab_size}, rank={rank}, targets={targets})")
        answers.append(_counts_of(call(lora_counts, copy.deepcopy(config), rank, targets),
                                  where))
        wheres.append(where)
    for index, (config, rank, targets) in enumerate(COUNT_CASES):
        trainable, total, _ = _package_counts(index)
        if config.n_embd <= 64:  # Hugging Face on the small shapes (fast), as an independent count
            reference = _hugging_face_counts(config, rank, targets)
            if reference is not None and reference != (trainable, total):
                raise RuntimeError("minigpt and transformers disagree on the LoRA count")
        assert trainable == _trainable_variant(config, rank, targets)
    _judge_trainable([a[0] for a in answers], wheres)
    _judge_total([a[1] for a in answers], wheres)
    with fresh_case(fresh_seed()) as generator:  # a model and adapters no one knew in advance
        n_head = _fresh_int(generator, 1, 9)
        config = GPTConfig(vocab_size=_fresh_int(generator, 2, 60000), block_size=64,
                           n_layer=_fresh_int(generator, 1, 25), n_head=n_head,
                           n_embd=n_head * _fresh_int(generator, 2, 129))
        rank = _fresh_int(generator, 1, 33)
        chosen = torch.rand(len(LINEARS), generator=generator) < 0.5
        chosen[_fresh_int(generator, 0, len(LINEARS))] = True  # at least one target
        targets = tuple(name for name, keep in zip(LINEARS, chosen.tolist(), strict=True)
                        if keep)
        where = (f"lora_counts(n_layer={config.n_layer}, n_embd={config.n_embd}, "
                 f"vocab_size={config.vocab_size}, rank={rank}, targets={targets})")
        answer = _counts_of(call(lora_counts, copy.deepcopy(config), rank, targets), where)
        with torch.device("meta"):
            adapted = count_parameters(apply_lora(GPT(config), rank=rank, targets=targets))
        expected = (adapted["trainable"], adapted["total"])
        require(answer == expected, f"{where} = ({show(answer[0])}, {show(answer[1])}), but "
                                    f"the adapted model has ({show(expected[0])}, "
                                    f"{show(expected[1])}) (trainable, total)")
    passed("LoRA parameter counts, eq. (10.4)")


def _judge_trainable(answers: list[int], wheres: list[str]) -> None:
    for index, (answer, where) in enumerate(zip(answers, wheres, strict=True)):
        expected = _package_counts(index)[0]
        if answer == expected:
            continue
        message = (f"{where}: trainable = {show(answer)}, but apply_lora leaves "
                   f"{show(expected)} numbers trainable")
        variants = ((why, [_trainable_variant(*case, **choice) for case in COUNT_CASES])
                    for why, choice in combine_mistakes(TRAINABLE_KNOBS))
        mistake = find_mistake(answers, variants)
        if mistake:
            raise CheckFailed(f"{message}: you {mistake}")
        config, rank = COUNT_CASES[index][:2]
        unit = rank * config.n_embd
        hint = ""
        if (answer - expected) % unit == 0:
            hint = f" (the difference is {(answer - expected) // unit:+,}·r·C)"
        raise CheckFailed(f"{message}{hint}: sum r·(d_in + d_out) over the targeted layers of "
                          "every block (eq. 10.4)")


def _judge_total(answers: list[int], wheres: list[str]) -> None:
    def total_variant(index, head="once", adapters="added"):
        trainable, _, base = _package_counts(index)
        config = COUNT_CASES[index][0]
        return (base + (config.vocab_size * config.n_embd if head == "twice" else 0)
                + (trainable if adapters == "added" else 0))

    for index, (answer, where) in enumerate(zip(answers, wheres, strict=True)):
        trainable, expected, base = _package_counts(index)
        if answer == expected:
            continue
        message = (f"{where}: total = {show(answer)}, but the adapted model has "
                   f"{show(expected)} parameters")
        variants = ((why, [total_variant(i, **choice) for i in range(len(COUNT_CASES))])
                    for why, choice in combine_mistakes(TOTAL_KNOBS))
        mistake = find_mistake(answers, variants)
        if mistake:
            raise CheckFailed(f"{message}: you {mistake}")
        raise CheckFailed(f"{message} = {show(base)} of the base (eq. 7.5, the head tied) + "
                          f"{show(trainable)} of the adapters (the difference is "
                          f"{answer - expected:+,})")


# ---------------------------------------------------------- eq. (10.1): the masked targets

IGNORE = ft.IGNORE_INDEX


BYTE_EXAMPLES = [{"instruction": "Add.", "input": "2 3", "output": "5"},
                 {"instruction": "Name a colour.", "output": "Blue."}]

# (what the case is about, [(prompt ids, response ids)] or "bytes", pad_id); every response
# ends with its <end> token; "bytes" stands for BYTE_EXAMPLES in the byte tokenizer
MASK_CASES = [
    ("one example", [([11, 12, 13], [21, 22, 2])], 0),
    ("two examples of different lengths", [([11, 12, 13, 14], [21, 2]),
                                           ([15, 16], [23, 24, 25, 2])], 99),
    ("a one-token prompt beside a longer example", [([7], [31, 2]),
                                                    ([11, 12, 13, 14, 15], [21, 2])], 0),
    ("two Alpaca examples in the byte tokenizer", "bytes", 0),
]


def _byte_tokenizer():
    from minigpt.tokenizer import ByteTokenizer

    return ByteTokenizer()


def _mask_cases() -> list[tuple[str, list, int]]:
    """The cases with their (prompt ids, response ids + <end>) pairs spelled out."""
    tokenizer = _byte_tokenizer()
    alpaca = [(tokenizer.encode(ft.format_prompt(e["instruction"], e.get("input", ""))),
               tokenizer.encode(e["output"]) + ft.end_ids(tokenizer)) for e in BYTE_EXAMPLES]
    return [(about, alpaca if examples == "bytes" else examples, pad)
            for about, examples, pad in MASK_CASES]


MASK_KNOBS = {
    "mask": {"prompt": None,
             "one_more": "masked one target too many: the target at the last prompt position "
                         "is the *first response token*, and it must be learned — mask "
                         "|P| − 1 targets, not |P|",
             "one_fewer": "masked one target too few: the target at position |P| − 2 is the "
                          "last prompt token, which must not be learned — mask |P| − 1 targets",
             "none": "masked nothing: the prompt's tokens are learned too (that is the "
                     "pretraining loss); set the targets of prompt tokens to -100",
             "response": "masked the response instead of the prompt: the targets to keep are "
                         "the response tokens, the prompt's become -100"},
    "shift": {True: None,
              False: "did not shift the targets: target t is the token *after* position t, "
                     "targets = tokens[1:] (as in pretraining), then the prompt part masked"},
    "pad_target": {"ignore": None,
                   "pad": "padded the targets with pad_id, so the loss would teach the model "
                          "to predict padding: pad the targets with -100"},
    "pad_input": {"pad": None,
                  "ignore": "padded the inputs with -100: inputs are token ids the embedding "
                            "looks up; pad them with pad_id (only the targets get -100)"},
    "side": {"right": None,
             "left": "padded on the left: with no attention mask the real tokens would attend "
                     "to the padding before them; pad on the right, after each sequence, where "
                     "the causal mask hides it"},
}


def _mask_variant(examples, pad_id, mask="prompt", shift=True, pad_target="ignore",
                  pad_input="pad", side="right") -> tuple[torch.Tensor, torch.Tensor]:
    rows = []
    for prompt, response in examples:
        tokens = prompt + response
        x = tokens[:-1]
        y = tokens[1:] if shift else tokens[:-1]
        masked = {"prompt": len(prompt) - 1, "one_more": len(prompt),
                  "one_fewer": len(prompt) - 2, "none": 0}.get(mask)
        if mask == "response":
            y = y[:len(prompt) - 1] + [IGNORE] * (len(y) - len(prompt) + 1)
        else:
            y = [IGNORE] * max(masked, 0) + y[max(masked, 0):]
        rows.append((x, y))
    width = max(len(x) for x, _ in rows)
    fill_x = pad_id if pad_input == "pad" else IGNORE
    fill_y = IGNORE if pad_target == "ignore" else pad_id

    def pad(seq, fill):
        padding = [fill] * (width - len(seq))
        return seq + padding if side == "right" else padding + seq

    return (torch.tensor([pad(x, fill_x) for x, _ in rows]),
            torch.tensor([pad(y, fill_y) for _, y in rows]))


def _package_batch(pad_id) -> tuple[torch.Tensor, torch.Tensor]:
    """minigpt's own route for BYTE_EXAMPLES: encode_example, then ExampleBatches' padding."""
    encoded = [ft.encode_example(e, _byte_tokenizer(), max_length=10**6) for e in BYTE_EXAMPLES]
    return ft.ExampleBatches(encoded, batch_size=len(encoded), shuffle=False,
                             pad_id=pad_id).collate(encoded)


def _response_loss(model: GPT, examples) -> torch.Tensor:
    """Eq. (10.1) by hand: each example alone, -log p of its response tokens, averaged over
    every response token of the batch."""
    total, count = torch.zeros(()), 0
    with torch.no_grad():
        for prompt, response in examples:
            tokens = torch.tensor(prompt + response)
            log_probs = torch.log_softmax(model(tokens[None, :-1])[0][0], dim=-1)  # (T, V)
            positions = torch.arange(len(prompt) - 1, len(tokens) - 1)  # they predict R
            total -= log_probs[positions, tokens[positions + 1]].sum()
            count += len(response)
    return total / count


def _batch_of(answer, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    require(isinstance(answer, tuple | list) and len(answer) == 2,
            f"{what} should return a pair (x, y) of tensors, got {type(answer).__name__}")
    x, y = (as_tensor(t, f"{name} of {what}") for t, name in zip(answer, "xy", strict=True))
    for tensor, name in ((x, "x"), (y, "y")):
        require(tensor.dtype == torch.long,
                f"{name} of {what} has dtype {tensor.dtype}: token ids and targets are "
                "integers, torch.long, as the embedding and cross_entropy expect")
    return x, y


def check_instruction_batch(instruction_batch) -> None:
    """instruction_batch(examples, pad_id) -> (x, y), the prompt's targets -100 (eq. 10.1)."""
    cases = _mask_cases()
    answers = [_batch_of(call(instruction_batch, [(list(p), list(r)) for p, r in examples],
                              pad_id), f"instruction_batch for {about}")
               for about, examples, pad_id in cases]
    model = _tiny_gpt(vocab_size=256, block_size=64, seed=0)
    for number, ((about, examples, pad_id), (x, y)) in enumerate(zip(cases, answers,
                                                                     strict=True)):
        what = f"instruction_batch for {about}"
        expected = _mask_variant(examples, pad_id)
        if MASK_CASES[number][1] == "bytes":
            package = _package_batch(pad_id)
            if not all(torch.equal(e, p) for e, p in zip(expected, package, strict=True)):
                raise RuntimeError("the masked targets disagree with minigpt.finetune")
        with torch.no_grad():  # GPT.forward's loss on these targets is eq. (10.1) by hand
            torch.testing.assert_close(model(*expected)[1], _response_loss(model, examples))
        _same_batch_shape(x, y, expected, what)
        if torch.equal(x, expected[0]) and torch.equal(y, expected[1]):
            continue
        variants = ((why, [_mask_variant(e, p, **choice) for _, e, p in cases])
                    for why, choice in combine_mistakes(MASK_KNOBS))
        mistake = find_mistake(answers, variants)
        if mistake:
            raise CheckFailed(f"{what}: you {mistake}")
        _first_difference(x, y, expected, examples, what)
    with fresh_case(fresh_seed()) as generator:  # examples and a pad id no one knew in advance
        def ids(low: int, high: int) -> list[int]:
            return torch.randint(3, 250, (_fresh_int(generator, low, high),),
                                 generator=generator).tolist()

        examples = [(ids(1, 7), ids(0, 5) + [2]) for _ in range(_fresh_int(generator, 1, 4))]
        pad_id = _fresh_int(generator, 0, 256)
        what = f"instruction_batch for {examples} with pad_id={pad_id}"
        x, y = _batch_of(call(instruction_batch, [(list(p), list(r)) for p, r in examples],
                              pad_id), what)
        expected = _mask_variant(examples, pad_id)
        _same_batch_shape(x, y, expected, what)
        if not (torch.equal(x, expected[0]) and torch.equal(y, expected[1])):
            _first_difference(x, y, expected, examples, what)
    passed("instruction batch, eq. (10.1)")


def _same_batch_shape(x, y, expected, what: str) -> None:
    B, width = expected[0].shape
    if tuple(x.shape) == (B, width + 1):
        raise CheckFailed(f"x of {what} has shape {tuple(x.shape)}, one position too long: the "
                          "inputs are every token but the last, tokens[:-1] (the last token is "
                          f"only a target), so the batch is {(B, width)}")
    same_shape(x, expected[0], f"x of {what}")
    if tuple(y.shape) == (B, width + 1):
        raise CheckFailed(f"y of {what} has shape {tuple(y.shape)}, one position too long: the "
                          "targets are every token but the first, tokens[1:], the same length "
                          "as the inputs")
    same_shape(y, expected[1], f"y of {what}")


def _first_difference(x, y, expected, examples, what: str) -> None:
    """Name the first entry that differs, and what sits at that position."""
    for name, got, want in (("x", x, expected[0]), ("y", y, expected[1])):
        if torch.equal(got, want):
            continue
        b, t = (got != want).nonzero()[0].tolist()
        prompt, response = examples[b]
        if t >= len(prompt) + len(response) - 1:
            role = "padding"
        elif name == "x":
            role = "a prompt token" if t < len(prompt) else "a response token"
        else:
            role = ("the target of a prompt position, which predicts a prompt token"
                    if t < len(prompt) - 1 else "a response token's target")
        raise CheckFailed(f"{name}[{b}, {t}] of {what} is {got[b, t].item()}, expected "
                          f"{want[b, t].item()}: {role} of example {b} (|P| = {len(prompt)}, "
                          f"|R| = {len(response)})")


# ---------------------------------------------------------------- eq. (10.3): a LoRA layer

# (d_in, d_out, rank, alpha, bias): α/r, α, r/α and 1 all differ, so each slip shows
LAYER_CASES = [(12, 20, 4, 8.0, True), (10, 6, 2, 3.0, False)]


def _build(layer_class, base: nn.Linear, rank: int, alpha: float, what: str):
    try:
        return call(layer_class, base, rank, alpha)
    except TypeError as error:
        raise CheckFailed(f"{what} failed: {error}. The class is built as "
                          f"{layer_class.__name__}(base, rank, alpha)") from None


def _parts(layer, what: str) -> tuple[nn.Parameter, nn.Parameter, nn.Linear]:
    for name in ("base", "A", "B"):
        require(hasattr(layer, name), f"{what} has no attribute `{name}`: keep the frozen layer "
                                      "as self.base and the adapter as self.A and self.B")
    A, B, base = layer.A, layer.B, layer.base
    registered = {id(p) for p in layer.parameters()}
    for name, p in (("A", A), ("B", B)):
        require(isinstance(p, nn.Parameter) and id(p) in registered,
                f"{what}: self.{name} is not a registered nn.Parameter, so an optimizer over "
                "layer.parameters() would never update it; wrap it in nn.Parameter(...)")
    return A, B, base


def _check_shapes(A, B, d_in, d_out, rank, what: str) -> None:
    a, b = tuple(A.shape), tuple(B.shape)
    if (a, b) == ((rank, d_in), (d_out, rank)):
        return
    if (a, b) == ((d_out, rank), (rank, d_in)):
        raise CheckFailed(f"{what}: A has shape {a} and B {b} — A and B are swapped. A is the "
                          f"down-projection, r × d_in = {(rank, d_in)}, B the up-projection, "
                          f"d_out × r = {(d_out, rank)} (eq. 10.3)")
    if (a, b) == ((d_in, rank), (rank, d_out)):
        raise CheckFailed(f"{what}: A has shape {a} and B {b} — both are stored transposed. "
                          f"Eq. (10.3) and LoRALinear use A: r × d_in = {(rank, d_in)} and "
                          f"B: d_out × r = {(d_out, rank)}, as nn.Linear stores its weight "
                          "(d_out × d_in)")
    raise CheckFailed(f"{what}: A has shape {a} and B {b}; expected A: r × d_in = "
                      f"{(rank, d_in)} and B: d_out × r = {(d_out, rank)} (eq. 10.3)")


def _check_frozen(layer, A, B, base, d_in, d_out, rank, what: str) -> None:
    require(all(not p.requires_grad for p in base.parameters()),
            f"{what}: the base layer's weight (or bias) still requires a gradient. Freeze it "
            "with requires_grad_(False): with LoRA only A and B train")
    trainable = [name for name, p in layer.named_parameters() if p.requires_grad
                 and p is not A and p is not B]
    require(not trainable, f"{what}: {trainable} still require a gradient; with LoRA only A "
                           "and B train")
    require(A.requires_grad and B.requires_grad,
            f"{what}: A and B must require gradients, they are what trains")
    count = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    require(count == rank * (d_in + d_out),
            f"{what} has {count} trainable numbers; eq. (10.4) says r·(d_in + d_out) = "
            f"{rank * (d_in + d_out)}")


def _check_init(A, B, what: str) -> None:
    a_zero, b_zero = not A.detach().any(), not B.detach().any()
    if a_zero and b_zero:
        raise CheckFailed(f"{what}: A and B both start at zero. Then ∂L/∂B = (α/r)·g·(Ax)ᵀ = 0 "
                          "and ∂L/∂A = (α/r)·Bᵀ·g·xᵀ = 0: the adapter never leaves zero. Start "
                          "B at zero and draw A at random (as nn.Linear initialises a weight)")
    if a_zero:
        raise CheckFailed(f"{what}: A starts at zero and B at random. That is a no-op too, but "
                          "the other way round: eq. (10.3) and LoRALinear start B at zero and "
                          "A at random")
    if not b_zero:
        raise CheckFailed(f"{what}: B is initialised at random, so a fresh adapter is not a "
                          "no-op: it already changes the layer's output, and finetuning would "
                          "start from a perturbed model. Start B at zero: then BAx = 0 and the "
                          "adapted layer is exactly the pretrained one")


def _forward(layer, x, what: str) -> torch.Tensor:
    try:
        return as_tensor(layer(x), f"the output of {what}")
    except NotImplementedError:
        raise CheckFailed(f"the forward pass of {what} is not written yet: replace the "
                          "`raise NotImplementedError` in its TODO cell with your code") from None
    except RuntimeError as error:
        if "shape" in str(error) or "size" in str(error):
            raise CheckFailed(f"the forward pass of {what} failed on an input of shape "
                              f"{tuple(x.shape)} ({error}). A is (r, d_in) and B (d_out, r): the "
                              "update is x Aᵀ Bᵀ, (…, d_in) → (…, r) → (…, d_out), for any "
                              "leading dimensions") from None
        raise


def _forward_mistakes(x, W, b, A, B, rank, alpha) -> dict:
    base = F.linear(x, W, b)
    update = x @ A.T @ B.T
    s = alpha / rank
    return {
        "the factor α/r is missing: h = Wx + (α/r)·BAx (eq. 10.3)": base + update,
        "the update is scaled by α instead of α/r": base + alpha * update,
        "the update is scaled by r/α; eq. (10.3) scales it by α/r": base + (rank / alpha) * update,
        "the update is divided by r but not multiplied by α: the factor is α/r":
            base + update / rank,
        "the output is only the update (α/r)·BAx: add the frozen layer's own output Wx + b":
            s * update,
        "the frozen layer's bias is missing: h = Wx + b + (α/r)·BAx":
            F.linear(x, W) + s * update if b is not None else None,
        "α/r scales the whole output; it scales only the update (α/r)·BAx":
            s * (base + update),
        "the update is subtracted; eq. (10.3) adds it": base - s * update,
    }


def check_lora_layer(layer_class) -> None:
    """layer_class(base, rank, alpha): h = W x + b + (α/r)·B A x, base frozen, B = 0 (eq. 10.3)."""
    for number, case in enumerate(LAYER_CASES):
        _check_lora_case(layer_class, number, *case)
    seed = fresh_seed()
    with fresh_case(seed) as generator:  # a layer and an adapter no one knew in advance
        _check_lora_case(layer_class, seed, *_fresh_layer_case(generator))
    passed("LoRA layer, eq. (10.3)")


def _fresh_layer_case(generator) -> tuple[int, int, int, float, bool]:
    """(d_in, d_out, rank, alpha, bias), with α ≠ r so that a missing α/r shows, and an α/r
    unlike the fixed cases', so that a scale typed in from them shows too."""
    typed = {alpha / rank for _, _, rank, alpha, _ in LAYER_CASES}
    rank, alpha = 1, 1.0
    while alpha == rank or alpha / rank in typed:
        rank = _fresh_int(generator, 1, 6)
        alpha = float(rank + _fresh_int(generator, 1, 16))
    return (_fresh_int(generator, 2, 20), _fresh_int(generator, 2, 20), rank, alpha,
            bool(_fresh_int(generator, 0, 2)))


def _check_lora_case(layer_class, number, d_in, d_out, rank, alpha, bias) -> None:
    base = _linear(d_in, d_out, seed=number, bias=bias)
    W = base.weight.detach().clone()
    b = None if base.bias is None else base.bias.detach().clone()
    what = f"{layer_class.__name__}(nn.Linear({d_in}, {d_out}), rank={rank}, alpha={alpha})"
    layer = _build(layer_class, base, rank, alpha, what)
    A, B, inner = _parts(layer, what)
    _check_shapes(A, B, d_in, d_out, rank, what)
    _check_frozen(layer, A, B, inner, d_in, d_out, rank, what)
    _check_init(A, B, what)
    for shape in ((5, d_in), (2, 3, d_in)):
        x = _seeded_randn(*shape, seed=10 + number)
        with torch.no_grad():
            close_or_diagnose(_forward(layer, x, what), F.linear(x, W, b),
                              f"the output of a fresh {what} (B = 0: it must equal the base "
                              "layer's)", _forward_mistakes(x, W, b, A.detach(),
                                                            torch.zeros_like(B), rank, alpha))
    A_fresh = A.detach().clone()
    _check_trained(layer, A, B, base, W, b, rank, alpha, what, number)
    with torch.no_grad():  # back to a fresh adapter: B = 0
        A.copy_(A_fresh)
        B.zero_()
    _check_gradients(layer, A, B, inner, x, rank, alpha, what, number)


def _check_gradients(layer, A, B, inner, x, rank, alpha, what, number) -> None:
    """At B = 0 only B gets a gradient, (α/r)·Σ g (Ax)ᵀ; the frozen weight gets none."""
    G = _seeded_randn(*x.shape[:-1], B.size(0), seed=20 + number)  # dL/dh
    for p in layer.parameters():
        p.grad = None
    out = _forward(layer, x, what)
    if out.requires_grad:
        (out * G).sum().backward()
    require(B.grad is not None, f"{what}: no gradient reached B after backward(). Is the update "
                                "computed under torch.no_grad(), or from .data / .detach()?")
    x2, G2 = x.reshape(-1, x.size(-1)), G.reshape(-1, G.size(-1))
    expected = (alpha / rank) * G2.T @ (x2 @ A.detach().T)  # (d_out, r)
    close(B.grad, expected, f"∂L/∂B of a fresh {what}",
          factors={"α/r": alpha / rank, "α": alpha, "r": rank})
    require(A.grad is None or not A.grad.any(), f"{what}: A got a nonzero gradient while B = 0; "
                                                "∂L/∂A = (α/r)·Bᵀ·g·xᵀ must vanish there")
    require(all(p.grad is None for p in inner.parameters()),
            f"{what}: the frozen weight received a gradient")
    for p in layer.parameters():
        p.grad = None


def _package_layer(base, rank, alpha, A_value, B_value) -> LoRALinear:
    """minigpt's LoRALinear on a copy of `base`, holding the given A and B."""
    with torch.random.fork_rng(devices=[]):  # its own draw of A must not move the learner's RNG
        reference = LoRALinear(copy.deepcopy(base), rank=rank, alpha=alpha)
    with torch.no_grad():
        reference.lora_A.copy_(A_value)
        reference.lora_B.copy_(B_value)
    return reference


def _check_trained(layer, A, B, base, W, b, rank, alpha, what, number) -> None:
    """With A and B as if trained: the output equals LoRALinear's and F.linear with W + ΔW."""
    d_out, d_in = W.shape
    A_value = _seeded_randn(rank, d_in, seed=30 + number) / math.sqrt(d_in)
    B_value = _seeded_randn(d_out, rank, seed=40 + number)
    with torch.no_grad():
        A.copy_(A_value)
        B.copy_(B_value)
    reference = _package_layer(base, rank, alpha, A_value, B_value)
    x = _seeded_randn(2, 3, d_in, seed=50 + number)
    with torch.no_grad():
        expected = reference(x)
        dense = F.linear(x, W + (alpha / rank) * B_value @ A_value, b)  # the dense ΔW
        torch.testing.assert_close(expected, dense)
        out = _forward(layer, x, what)
    close_or_diagnose(out, expected, f"the output of {what} with A and B as if trained",
                      _forward_mistakes(x, W, b, A_value, B_value, rank, alpha))


# ---------------------------------------------------------------- eq. (10.5): merge, unmerge


def _build_mergeable(layer_class, base, rank, alpha, what):
    try:
        return layer_class(base, rank, alpha)
    except NotImplementedError:
        raise CheckFailed(f"{what} could not be built: it starts from your LoRA layer of the "
                          "previous exercise, which is not written yet — finish that first") \
            from None


def _run_step(layer, step: str, what: str, again: bool = False) -> None:
    """Call layer.merge() or layer.unmerge(); `again`: the call that must do nothing."""
    try:
        call(getattr(layer, step))
    except ValueError as error:
        if "non-leaf" in str(error) or "Parameter" in str(error):
            raise CheckFailed(f"{step}() of {what} replaced the weight with a computed tensor "
                              f"({error}). Change the weight in place, under torch.no_grad(): "
                              "self.base.weight.add_(ΔW)") from None
        raise
    except (TypeError, AttributeError) as error:
        if not again:
            raise
        raise CheckFailed(f"{step}() of {what} failed ({type(error).__name__}: {error}) when "
                          "called a second time: merge() on a merged layer, or unmerge() on a "
                          "layer that is not merged, must simply do nothing") from None
    except RuntimeError as error:
        if "shape" in str(error) or "size" in str(error):
            raise CheckFailed(f"{step}() of {what} failed: {error}. ΔW = (α/r)·B A has the "
                              "shape of W, (d_out, d_in): B (d_out, r) times A (r, d_in)") \
                from None
        raise


def _the_weight(layer, weight: nn.Parameter, step: str, what: str) -> torch.Tensor:
    now = layer.base.weight
    require(now is weight, f"after {step}(), {what}.base.weight is a new object: change the "
                           "weight in place (self.base.weight.add_ / copy_ under "
                           "torch.no_grad()), so that the model, its optimizer and any tied "
                           "tensor keep pointing at the same Parameter")
    require(not now.requires_grad and now.grad_fn is None,
            f"after {step}(), the weight of {what} requires a gradient or carries an autograd "
            "history: run merge and unmerge under torch.no_grad(), and keep W frozen")
    return now.detach().clone()


def check_merge(layer_class) -> None:
    """merge() folds (α/r)·BA into W (eq. 10.5); unmerge() restores W bit for bit."""
    for number, case in enumerate(LAYER_CASES):
        _check_merge_case(layer_class, number, *case)
    seed = fresh_seed()
    with fresh_case(seed) as generator:  # a layer and an adapter no one knew in advance
        _check_merge_case(layer_class, seed, *_fresh_layer_case(generator))
    passed("merge and unmerge, eq. (10.5)")


def _check_merge_case(layer_class, number, d_in, d_out, rank, alpha, bias) -> None:
    base = _linear(d_in, d_out, seed=number, bias=bias)
    what = f"{layer_class.__name__}(nn.Linear({d_in}, {d_out}), rank={rank}, alpha={alpha})"
    layer = _build_mergeable(layer_class, base, rank, alpha, what)
    for name in ("merge", "unmerge"):
        require(callable(getattr(layer, name, None)), f"{what} has no method {name}()")
    A, B, _ = _parts(layer, what)
    _check_merge_cycle(layer, A, B, base, rank, alpha, what, number)


def _check_merge_cycle(layer, A, B, base, rank, alpha, what, number) -> None:
    d_out, d_in = base.weight.shape
    A_value = _seeded_randn(rank, d_in, seed=60 + number) / math.sqrt(d_in)
    B_value = _seeded_randn(d_out, rank, seed=70 + number)
    with torch.no_grad():
        A.copy_(A_value)
        B.copy_(B_value)
    weight, W = layer.base.weight, layer.base.weight.detach().clone()
    bias = layer.base.bias
    delta = (alpha / rank) * B_value @ A_value  # eq. (10.5)
    x = _seeded_randn(4, d_in, seed=80 + number)
    with torch.no_grad():
        h = F.linear(x, W + delta, bias)  # eq. (10.3), and what a merged layer computes
        out = _forward(layer, x, what)
    require(torch.allclose(out, h, rtol=1e-4, atol=1e-5),
            f"the output of {what} before merging is not h = Wx + b + (α/r)·BAx: get the LoRA "
            "layer of the previous exercise right first")
    package = _package_merge(base, A_value, B_value, rank, alpha)

    _run_step(layer, "merge", what)
    merged = _the_weight(layer, weight, "merge", what)
    close_or_diagnose(merged, package, f"the weight of {what} after merge()", {
        "W did not change: merge() must add ΔW = (α/r)·B A to it": W,
        "the merged weight lacks the factor α/r: ΔW = (α/r)·B A": W + B_value @ A_value,
        "ΔW is scaled by α instead of α/r": W + alpha * B_value @ A_value,
        "ΔW is scaled by r/α instead of α/r": W + (rank / alpha) * B_value @ A_value,
        "ΔW was subtracted; merging adds it, W' = W + (α/r)·B A": W - delta,
        "ΔW was added twice": W + 2 * delta,
    })
    with torch.no_grad():
        close_or_diagnose(_forward(layer, x, what), h,
                          f"the output of {what} while merged", {
            "while merged, forward still adds the update (α/r)·BAx, so ΔW counts twice: a "
            "merged layer is just self.base(x)": F.linear(x, W + 2 * delta, bias),
        })
    _run_step(layer, "merge", what, again=True)
    close_or_diagnose(_the_weight(layer, weight, "merge", what), merged,
                      f"the weight of {what} after a second merge()", {
        "merging a merged layer added ΔW again: remember that the layer is merged, and let a "
        "second merge() do nothing": W + 2 * delta,
    })
    _run_step(layer, "unmerge", what)
    _check_restored(_the_weight(layer, weight, "unmerge", what), W, merged, what)
    with torch.no_grad():
        close_or_diagnose(_forward(layer, x, what), h,
                          f"the output of {what} after unmerge()", {
            "after unmerge(), forward no longer adds the update: the layer still behaves as if "
            "it were merged": F.linear(x, W, bias),
        })
    _run_step(layer, "unmerge", what, again=True)
    require(torch.equal(layer.base.weight, W),
            f"unmerge() on a layer that is not merged changed the weight of {what}: it must "
            "do nothing")


def _package_merge(base, A_value, B_value, rank, alpha) -> torch.Tensor:
    """LoRALinear's merge, and its unmerge, which copies W back: exact, unlike a subtraction."""
    reference = _package_layer(base, rank, alpha, A_value, B_value)
    W = reference.weight.detach().clone()
    reference.merge()
    merged = reference.weight.detach().clone()
    reference.unmerge()
    assert torch.equal(reference.weight, W)  # a copy back is exact; (W + ΔW) − ΔW need not be
    return merged


def _check_restored(restored, W, merged, what) -> None:
    if torch.equal(restored, W):
        return
    if torch.equal(restored, merged):
        raise CheckFailed(f"unmerge() left the merged weight of {what} in place. Did you keep "
                          "a *reference* to W (self.base.weight, or its .data) instead of a "
                          "copy? The in-place add changed it too: save W.clone() before "
                          "merging, and copy it back")
    drift = (restored - W).abs().max().item()
    if torch.allclose(restored, W, rtol=1e-5, atol=1e-6):
        raise CheckFailed(f"unmerge() of {what} gives back W only approximately (largest "
                          f"difference {drift:.2g}), not bit for bit: subtracting ΔW again "
                          "rounds differently, (W + ΔW) − ΔW ≠ W in floating point, and the "
                          "error grows with every merge/unmerge. Keep a copy of W when merging "
                          "and copy it back, as LoRALinear does")
    close(restored, W, f"the weight of {what} after unmerge()")


# ------------------------------------------------------ eq. (10.2): the last real token

PAD = ft.PAD_INPUT
# (lengths of the sequences, padded width): a batch padded to a fixed width, one with a
# full-length sequence, a one-token sequence, and a batch without any padding
POOL_CASES = [([3, 5], 6), ([5, 2, 7], 7), ([1, 4], 4), ([6, 6], 6)]


def _pool_batch(lengths, width, seed) -> torch.Tensor:
    ids = torch.randint(1, 50, (len(lengths), width), generator=torch.Generator().manual_seed(seed))
    real = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return ids.masked_fill(~real, PAD)  # (B, T), right-padded with -1


def _pool_mistakes(hidden, idx) -> dict:
    real = idx != PAD
    lengths = real.sum(1)
    rows = torch.arange(idx.size(0))
    mean_real = (hidden * real[..., None]).sum(1) / lengths[:, None]
    beyond = lengths < idx.size(1)
    return {
        "you took position T − 1 of every row, which is padding in a sequence shorter than "
        "the batch (did the padding id -1 count as a real token?); take each sequence's own "
        "last real position, (number of real tokens) − 1": hidden[:, -1],
        "you took the first token: in a causal model it has seen only itself; the last real "
        "token is the one that has attended to the whole text": hidden[:, 0],
        "you averaged the hidden states of the real tokens; eq. (10.2) reads one of them, the "
        "last real token's": mean_real,
        "you averaged over every position, padding included; eq. (10.2) reads the last real "
        "token's hidden state": hidden.mean(1),
        "you took the first padding position, one past the last real token: a sequence of n "
        "tokens ends at index n − 1": hidden[rows, lengths] if beyond.all() else None,
        "you took the second-to-last real token: a sequence of n tokens ends at index n − 1":
            hidden[rows, lengths - 2] if (lengths >= 2).all() else None,
    }


def check_last_token(last_token_states) -> None:
    """last_token_states(hidden, idx) -> (B, C): each sequence's last real token (eq. 10.2)."""
    model = _tiny_gpt(vocab_size=50, block_size=8, seed=1)
    with torch.random.fork_rng(devices=[]):
        classifier = ft.GPTClassifier(model, labels=["a", "b"])
    answers, expecteds, mistakes, whats = [], [], [], []
    for number, (lengths, width) in enumerate(POOL_CASES):
        hidden, idx, expected, what = _pool_case(model, classifier, lengths, width, number)
        out = _pooled_answer(last_token_states, hidden, idx, expected, lengths, what)
        answers.append(out.detach().to(expected.dtype))
        expecteds.append(expected)
        mistakes.append(_pool_mistakes(hidden, idx))
        whats.append(what)
    for out, expected, what in zip(answers, expecteds, whats, strict=True):
        if torch.allclose(out, expected, rtol=1e-5, atol=1e-6):
            continue
        diagnosis = diagnose_all(answers, mistakes, rtol=1e-5, atol=1e-6)
        if diagnosis is not None:
            raise CheckFailed(f"{what} is not right: {diagnosis}")
        close(out, expected, what)
    seed = fresh_seed()
    with fresh_case(seed) as generator:  # lengths and tokens no one knew in advance
        width = _fresh_int(generator, 2, 9)
        lengths = torch.randint(1, width + 1, (_fresh_int(generator, 1, 5),),
                                generator=generator).tolist()
        hidden, idx, expected, what = _pool_case(model, classifier, lengths, width, seed)
        out = _pooled_answer(last_token_states, hidden, idx, expected, lengths, what)
        close(out, expected, what)
    passed("last real token, eq. (10.2)")


def _pool_case(model, classifier, lengths, width, seed):
    """(hidden, idx, expected, what) for a batch of `lengths` padded to `width`."""
    idx = _pool_batch(lengths, width, seed=seed)
    with torch.no_grad():
        hidden = model.hidden_states(idx.masked_fill(idx == PAD, 0))  # (B, T, C)
        expected = classifier.pooled(idx)
        alone = torch.stack([model.hidden_states(idx[b:b + 1, :n])[0, -1]
                             for b, n in enumerate(lengths)])  # no padding at all
    torch.testing.assert_close(expected, alone)
    what = f"last_token_states for sequences of lengths {lengths} padded to {width}"
    return hidden, idx, expected, what


def _pooled_answer(last_token_states, hidden, idx, expected, lengths, what) -> torch.Tensor:
    try:
        out = call(last_token_states, hidden.clone(), idx.clone())
    except (IndexError, RuntimeError) as error:
        if "index" not in str(error) and "bounds" not in str(error):
            raise
        raise CheckFailed(f"{what} failed: {error}. An index ran past the end: a sequence "
                          "of n real tokens ends at index n − 1 (one of them fills the "
                          "whole width)") from None
    out = as_tensor(out, f"the result of {what}")
    if tuple(out.shape) == (len(lengths), 1, hidden.size(-1)):
        raise CheckFailed(f"{what} has shape {tuple(out.shape)}: one hidden state per "
                          f"sequence, shape (B, C) = {tuple(expected.shape)}; index with "
                          "hidden[rows, last] rather than a slice")
    same_shape(out, expected, f"the result of {what}")
    return out


# ---------------------------------------------------------------- eq. (10.6): ROUGE-L

# (prediction, reference): order, case and punctuation, repeats, no shared word, an empty
# answer, a gap inside the common subsequence, a perfect answer
ROUGE_CASES = [
    ("Return the sorted list of keys.", "Return a list of all keys, sorted."),
    ("Close the FILE.", "close the underlying file object"),
    ("file the close", "Close the file."),
    ("the the the", "the cat sat on the mat"),
    ("get the value of x", "Set the value of the x."),
    ("Parse one header line.", "Return True if the socket is open."),
    ("", "Return the path."),
    ("Return the path.", "Return the path."),
]


def _words(text: str, how: str = "rouge") -> list[str]:
    if how == "split":
        return text.split()
    if how == "split_lower":
        return text.lower().split()
    if how == "case":
        return re.findall(r"[A-Za-z0-9]+", text)
    return re.findall(r"[a-z0-9]+", text.lower())


def _lcs(a: tuple, b: tuple) -> int:
    """Longest common subsequence by recursion on the first words (not the notebook's table)."""
    @functools.cache
    def longest(i: int, j: int) -> int:
        if i == len(a) or j == len(b):
            return 0
        if a[i] == b[j]:
            return 1 + longest(i + 1, j + 1)
        return max(longest(i + 1, j), longest(i, j + 1))

    return longest(0, 0)


def _substring(a: list, b: list) -> int:
    return max((k for i in range(len(a)) for j in range(len(b))
                for k in range(1, min(len(a) - i, len(b) - j) + 1) if a[i:i + k] == b[j:j + k]),
               default=0)


def _overlap(a: list, b: list) -> int:
    return sum(min(a.count(w), b.count(w)) for w in set(a))


ROUGE_KNOBS = {
    "words": {"rouge": None,
              "split": "split the text on spaces: punctuation stays stuck to the words ('file.' "
                       "≠ 'file') and case counts; words are lower-cased runs of letters and "
                       "digits, re.findall(r'[a-z0-9]+', text.lower())",
              "split_lower": "split the text on spaces: punctuation stays stuck to the words "
                             "('file.' ≠ 'file'); words are runs of letters and digits, "
                             "re.findall(r'[a-z0-9]+', text.lower())",
              "case": "did not lower-case the words: 'Close' and 'close' are the same word "
                      "for ROUGE"},
    "common": {"lcs": None,
               "substring": "measured the longest common *substring* (words side by side); "
                            "ROUGE-L uses the longest common *subsequence*: the same order, "
                            "gaps allowed",
               "overlap": "counted the shared words regardless of their order (that is "
                          "ROUGE-1); ROUGE-L counts the longest common subsequence, words in "
                          "the same order",
               "set": "counted the distinct words the texts share, regardless of their order; "
                      "ROUGE-L counts the longest common subsequence, words in the same order "
                      "(a repeated word counts each time it is matched)"},
    "score": {"f": None,
              "precision": "returned the precision LCS/|prediction|; ROUGE-L is the F-measure "
                           "2PR/(P + R)",
              "recall": "returned the recall LCS/|reference|; ROUGE-L is the F-measure "
                        "2PR/(P + R)",
              "mean": "took the arithmetic mean (P + R)/2; the F-measure is the harmonic mean, "
                      "2PR/(P + R)",
              "count": "returned the length of the common subsequence; divide it to get P and "
                       "R, then combine them, 2PR/(P + R)",
              "half": "left out the factor 2: 2PR/(P + R) = 2·LCS/(|prediction| + "
                      "|reference|)"},
}


def _rouge_variant(prediction, reference, words="rouge", common="lcs", score="f") -> float:
    p, r = _words(prediction, words), _words(reference, words)
    n = {"lcs": lambda: _lcs(tuple(p), tuple(r)), "substring": lambda: _substring(p, r),
         "overlap": lambda: _overlap(p, r), "set": lambda: len(set(p) & set(r))}[common]()
    if score == "count":
        return float(n)
    if n == 0:
        return 0.0
    precision, recall = n / len(p), n / len(r)
    return {"f": 2 * precision * recall / (precision + recall), "precision": precision,
            "recall": recall, "mean": (precision + recall) / 2,
            "half": n / (len(p) + len(r))}[score]


def _rouge_score(prediction, reference) -> float | None:
    """ROUGE-L F from Google's rouge-score through minigpt; None if it is not installed."""
    try:
        return ft.rouge([prediction], [reference], types=("rougeL",))["rougeL"]
    except ImportError:
        return None


def check_rouge_l(rouge_l) -> None:
    """rouge_l(prediction, reference) -> the ROUGE-L F-measure of eq. (10.6)."""
    answers = []
    for prediction, reference in ROUGE_CASES:
        what = f"rouge_l({prediction!r}, {reference!r})"
        try:
            answers.append(as_number(call(rouge_l, prediction, reference), what))
        except ZeroDivisionError:
            raise CheckFailed(
                f"{what} divided by zero. With no word in common, LCS = 0, so P = R = 0 and "
                "2PR/(P + R) is 0/0 (and an empty prediction has no words to divide by): "
                "return 0 — no shared word, no credit") from None
    for (prediction, reference), answer in zip(ROUGE_CASES, answers, strict=True):
        expected = _rouge_variant(prediction, reference)
        package = _rouge_score(prediction, reference)
        assert package is None or math.isclose(package, expected, abs_tol=1e-12)
        if math.isclose(answer, expected, rel_tol=1e-6, abs_tol=1e-9):
            continue
        what = f"rouge_l({prediction!r}, {reference!r})"
        message = f"{what} = {answer:.4g}, expected {expected:.4g}"
        variants = ((why, [_rouge_variant(*case, **choice) for case in ROUGE_CASES])
                    for why, choice in combine_mistakes(ROUGE_KNOBS))
        mistake = find_mistake(answers, variants, rtol=1e-6, atol=1e-9)
        if mistake:
            raise CheckFailed(f"{message}: you {mistake}")
        p, r = _words(prediction), _words(reference)
        raise CheckFailed(f"{message}: the words are {p} and {r}, their longest common "
                          f"subsequence has {_lcs(tuple(p), tuple(r))} words; then P, R and "
                          "2PR/(P + R), eq. (10.6)")
    with fresh_case(fresh_seed()) as generator:  # two texts no one knew in advance
        words = ["Return", "the", "list", "of", "keys", "file", "Close", "value", "x"]

        def text() -> str:
            picks = torch.randint(0, len(words), (_fresh_int(generator, 1, 9),),
                                  generator=generator).tolist()
            return " ".join(words[i] for i in picks) + "."

        prediction, reference = text(), text()
        what = f"rouge_l({prediction!r}, {reference!r})"
        answer = as_number(call(rouge_l, prediction, reference), what)
        expected = _rouge_variant(prediction, reference)
        package = _rouge_score(prediction, reference)
        assert package is None or math.isclose(package, expected, abs_tol=1e-12)
        require(math.isclose(answer, expected, rel_tol=1e-6, abs_tol=1e-9),
                f"{what} = {answer:.4g}, expected {expected:.4g}")
    passed("ROUGE-L, eq. (10.6)")
