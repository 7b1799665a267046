"""The checks of exercises/10_finetuning.ipynb: they pass right answers (the solutions' and the
package's own), and fail each wrong one with the diagnosis of its mistake."""

from __future__ import annotations

import functools
import math
import re

import pytest
import torch
import torch.nn.functional as F
from check_helpers import fails, rejects_remembered_answers, unwritten
from torch import nn

from checks import finetuning as check
from minigpt import GPT
from minigpt import finetune as ft
from minigpt.lora import LoRALinear, apply_lora, count_parameters

pytestmark = pytest.mark.usefixtures("one_thread")



# --------------------------------------------------------------------------- eq. (10.4)

def lora_counts(config, rank, targets, per_matrix="lora", square=False, every=False, blocks=None,
                head=False, frozen=False, tied=True, adapters_in_total=True):
    C, V, P, L = config.n_embd, config.vocab_size, config.block_size, config.n_layer
    shapes = {"qkv_proj": (C, 3 * C), "out_proj": (C, C), "fc": (C, 4 * C), "proj": (4 * C, C)}
    size = {"lora": lambda i, o: rank * (i + o), "full": lambda i, o: i * o,
            "A": lambda i, o: rank * i, "B": lambda i, o: rank * o}[per_matrix]
    names = shapes if every else targets
    block = sum(size(*((C, C) if square == "all" or (square and name == "qkv_proj")
                       else shapes[name])) for name in names)
    block += sum(i * o + o for i, o in (shapes[n] for n in names)) if frozen else 0
    trainable = block * (blocks or L) + (rank * (C + V) if head else 0)
    base = V * C * (1 if tied else 2) + P * C + L * (12 * C * C + 13 * C) + 2 * C
    return trainable, base + (trainable if adapters_in_total else 0)


def test_lora_counts_pass_the_closed_form_and_the_package(capsys):
    def by_the_package(config, rank, targets):
        with torch.device("meta"):
            counted = count_parameters(apply_lora(GPT(config), rank=rank, targets=targets))
        return counted["trainable"], counted["total"]

    check.check_lora_counts(lora_counts)
    check.check_lora_counts(by_the_package)
    check.check_lora_counts(lambda *a: [torch.tensor(n) for n in lora_counts(*a)])
    assert capsys.readouterr().out.count("✓ LoRA parameter counts") == 3


@pytest.mark.parametrize("mistake, words", [
    (dict(per_matrix="full"), ["d_in·d_out", "full finetuning"]),
    (dict(per_matrix="A"), ["counted A", "not B"]),
    (dict(per_matrix="B"), ["counted B", "not A"]),
    (dict(square=True), ["qkv_proj as C × C", "C → 3C"]),
    (dict(square="all"), ["every targeted matrix as C × C"]),
    (dict(every=True), ["all four linear layers"]),
    (dict(blocks=1), ["one block instead of n_layer"]),
    (dict(head=True), ["output head", "not adapted"]),
    (dict(frozen=True), ["frozen weights", "only A and B train"]),
    (dict(per_matrix="A", blocks=1), ["counted A", "one block"]),
    (dict(tied=False), ["total", "tied to the token embedding", "counted once"]),
    (dict(adapters_in_total=False), ["left the adapters out of the total"]),
])
def test_lora_counts_name_the_mistake(mistake, words):
    fails(check.check_lora_counts, functools.partial(lora_counts, **mistake), *words)


def test_lora_counts_explain_an_unknown_mistake():
    fails(check.check_lora_counts, lambda c, r, t: (lora_counts(c, r, t)[0] + r * c.n_embd,
                                                    lora_counts(c, r, t)[1]), "+1·r·C", "eq. 10.4")
    fails(check.check_lora_counts, lambda c, r, t: (lora_counts(c, r, t)[0],
                                                    lora_counts(c, r, t)[1] + 7),
          "eq. 7.5", "+7")


def test_lora_counts_need_a_pair_of_whole_numbers():
    fails(check.check_lora_counts, lambda c, r, t: lora_counts(c, r, t)[0], "pair (trainable")
    fails(check.check_lora_counts, lambda c, r, t: (lora_counts(c, r, t)[0] + 0.5, 0),
          "not a whole number")
    fails(check.check_lora_counts, unwritten, "not written yet")


# --------------------------------------------------------------------------- eq. (10.1)

def instruction_batch(examples, pad_id, masked=lambda n: n - 1, shift=True, pad_y=-100,
                      pad_x=None, left=False, drop_last=True, dtype=torch.long):
    rows = []
    for prompt, response in examples:
        tokens = prompt + response
        x = tokens[:-1] if drop_last else tokens
        y = tokens[1:] if shift else tokens[:-1]
        m = max(masked(len(prompt)), 0)
        rows.append((x, [-100] * m + y[m:]))
    width = max(len(x) for x, _ in rows)

    def pad(seq, fill):
        filling = [fill] * (width - len(seq))
        return filling + seq if left else seq + filling

    return (torch.tensor([pad(x, pad_id if pad_x is None else pad_x) for x, _ in rows],
                         dtype=dtype),
            torch.tensor([pad(y, pad_id if pad_y is None else pad_y) for _, y in rows],
                         dtype=dtype))


def _response_masked(examples, pad_id):
    x, y = [], []
    for prompt, response in examples:
        tokens = prompt + response
        x.append(tokens[:-1])
        y.append(tokens[1:len(prompt)] + [-100] * len(response))
    width = max(map(len, x))
    return (torch.tensor([r + [pad_id] * (width - len(r)) for r in x]),
            torch.tensor([r + [-100] * (width - len(r)) for r in y]))


def test_instruction_batch_passes_right_answers(capsys):
    def with_the_package(examples, pad_id):
        encoded = [(p + r[:-1], [-100] * (len(p) - 1) + r) for p, r in examples]
        return ft.ExampleBatches(encoded, len(encoded), shuffle=False,
                                 pad_id=pad_id).collate(encoded)

    check.check_instruction_batch(instruction_batch)
    check.check_instruction_batch(with_the_package)
    assert capsys.readouterr().out.count("✓ instruction batch") == 2


@pytest.mark.parametrize("mistake, words", [
    (dict(masked=lambda n: n), ["one target too many", "first response token"]),
    (dict(masked=lambda n: n - 2), ["one target too few", "last prompt token"]),
    (dict(masked=lambda n: 0), ["masked nothing", "-100"]),
    (dict(shift=False), ["did not shift", "tokens[1:]"]),
    (dict(pad_y=None), ["padded the targets with pad_id"]),
    (dict(pad_x=-100), ["padded the inputs with -100"]),
    (dict(left=True), ["padded on the left"]),
    (dict(masked=lambda n: n, pad_y=None), ["one target too many", "padded the targets"]),
    (dict(drop_last=False), ["one position too long", "tokens[:-1]"]),
    (dict(dtype=torch.float32), ["torch.long"]),
])
def test_instruction_batch_names_the_mistake(mistake, words):
    fails(check.check_instruction_batch, functools.partial(instruction_batch, **mistake), *words)


def test_instruction_batch_other_mistakes():
    fails(check.check_instruction_batch, _response_masked, "masked the response instead")
    fails(check.check_instruction_batch,
          lambda e, p: (lambda x, y: (x, torch.where(y == 2, 3, y)))(*instruction_batch(e, p)),
          "y[0, 4]", "a response token's target")
    fails(check.check_instruction_batch, lambda e, p: instruction_batch(e, p)[0], "pair (x, y)")
    fails(check.check_instruction_batch, unwritten, "not written yet")


# --------------------------------------------------------------------------- eq. (10.3)

def make_lora(scale="alpha/r", init_b="zero", init_a="random", freeze=True, layout="right",
              output="right", detach=False, parameter=True):
    class Layer(nn.Module):
        def __init__(self, base, rank, alpha):
            super().__init__()
            self.base = base.requires_grad_(not freeze)
            self.s = {"alpha/r": alpha / rank, "none": 1.0, "alpha": alpha,
                      "r/alpha": rank / alpha,
                      "typed": 2.0 if rank == 4 else 1.5}[scale]  # the fixed layers' α/r
            d_in, d_out = base.in_features, base.out_features
            a_shape = {"right": (rank, d_in), "swapped": (d_out, rank),
                       "transposed": (d_in, rank)}[layout]
            b_shape = {"right": (d_out, rank), "swapped": (rank, d_in),
                       "transposed": (rank, d_out)}[layout]
            A = torch.randn(a_shape) / math.sqrt(d_in) if init_a == "random" else \
                torch.zeros(a_shape)
            B = torch.zeros(b_shape) if init_b == "zero" else torch.randn(b_shape)
            self.A = nn.Parameter(A) if parameter else A
            self.B = nn.Parameter(B)

        def forward(self, x):
            A, B = (self.A.detach(), self.B.detach()) if detach else (self.A, self.B)
            if layout == "transposed":
                update = x @ A @ B
            else:
                update = x @ A.T @ B.T
            if output == "update only":
                return self.s * update
            if output == "no bias":
                return F.linear(x, self.base.weight) + self.s * update
            if output == "scaled":
                return self.s * (self.base(x) + update)
            if output == "minus":
                return self.base(x) - self.s * update
            return self.base(x) + self.s * update

    return Layer


class PackageLoRA(nn.Module):
    """LoRALinear under the exercise's names: base, A, B."""

    def __init__(self, base, rank, alpha):
        super().__init__()
        self.inner = LoRALinear(base, rank, alpha)
        self.base, self.A, self.B = base, self.inner.lora_A, self.inner.lora_B

    def forward(self, x):
        return self.inner(x)


def test_lora_layer_passes_right_answers(capsys):
    check.check_lora_layer(make_lora())
    check.check_lora_layer(PackageLoRA)
    assert capsys.readouterr().out.count("✓ LoRA layer") == 2


@pytest.mark.parametrize("mistake, words", [
    (dict(scale="none"), ["factor α/r is missing"]),
    (dict(scale="alpha"), ["scaled by α instead of α/r"]),
    (dict(scale="r/alpha"), ["scaled by r/α"]),
    (dict(init_b="random"), ["B is initialised at random", "no-op"]),
    (dict(init_a="zero"), ["A and B both start at zero"]),
    (dict(init_a="zero", init_b="random"), ["other way round"]),
    (dict(freeze=False), ["still requires a gradient", "requires_grad_(False)"]),
    (dict(layout="swapped"), ["A and B are swapped"]),
    (dict(layout="transposed"), ["stored transposed"]),
    (dict(output="update only"), ["add the frozen layer's own output"]),
    (dict(output="no bias"), ["bias is missing"]),
    (dict(output="scaled"), ["scales the whole output"]),
    (dict(output="minus"), ["subtracted"]),
    (dict(detach=True), ["no gradient reached B"]),
    (dict(parameter=False), ["not a registered nn.Parameter"]),
])
def test_lora_layer_names_the_mistake(mistake, words):
    fails(check.check_lora_layer, make_lora(**mistake), *words)


def test_lora_layer_explains_a_failing_forward_and_an_unwritten_class():
    class Mixed(make_lora()):
        def forward(self, x):
            return self.base(x) + x @ self.A @ self.B  # A is (r, d_in): a shape error

    fails(check.check_lora_layer, Mixed, "forward pass", "x Aᵀ Bᵀ")

    class Unwritten(nn.Module):
        def __init__(self, base, rank, alpha):
            raise NotImplementedError

    fails(check.check_lora_layer, Unwritten, "not written yet")

    class NoAttributes(nn.Module):
        def __init__(self, base, rank, alpha):
            super().__init__()
            self.linear = base

    fails(check.check_lora_layer, NoAttributes, "self.base")


# --------------------------------------------------------------------------- eq. (10.5)

def make_mergeable(scale="alpha/r", restore="copy", guard=True, skip_update=True,
                   in_place=True, no_grad=True, reset=True, tolerant=True, lora_scale="alpha/r"):
    class Mergeable(make_lora(scale=lora_scale)):
        saved = None
        merged = False

        def merge(self):
            if guard and self.merged:
                return
            factor = {"alpha/r": self.s, "none": 1.0}[scale]
            with torch.no_grad() if no_grad else _nothing():
                delta = factor * self.B @ self.A
                self.saved = (self.base.weight.clone() if restore != "reference"
                              else self.base.weight.data)
                if in_place:
                    self.base.weight.add_(delta)
                else:
                    self.base.weight = nn.Parameter(self.base.weight + delta, requires_grad=False)
            self.merged = True

        def unmerge(self):
            if not self.merged:
                if not tolerant:
                    self.base.weight.copy_(self.saved)
                return
            with torch.no_grad():
                if restore == "subtract":
                    self.base.weight.sub_(self.s * self.B @ self.A)
                else:
                    self.base.weight.copy_(self.saved)
            self.merged = not reset
            if not tolerant:
                self.saved = None  # a second unmerge copies None: TypeError

        def forward(self, x):
            if self.merged and skip_update:
                return self.base(x)
            return super().forward(x)

    return Mergeable


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class PackageMergeable(PackageLoRA):
    def merge(self):
        self.inner.merge()

    def unmerge(self):
        self.inner.unmerge()


def test_merge_passes_right_answers(capsys):
    check.check_merge(make_mergeable())
    check.check_merge(PackageMergeable)
    assert capsys.readouterr().out.count("✓ merge and unmerge") == 2


@pytest.mark.parametrize("mistake, words", [
    (dict(scale="none"), ["lacks the factor α/r"]),
    (dict(restore="subtract"), ["only approximately", "bit for bit", "copy of W"]),
    (dict(restore="reference"), ["reference", "W.clone()"]),
    (dict(guard=False), ["added ΔW again"]),
    (dict(skip_update=False), ["ΔW counts twice"]),
    (dict(in_place=False), ["new object", "in place"]),
    (dict(no_grad=False), ["torch.no_grad()"]),
    (dict(reset=False), ["as if it were merged"]),
    (dict(tolerant=False), ["second time", "must simply do nothing"]),
])
def test_merge_names_the_mistake(mistake, words):
    fails(check.check_merge, make_mergeable(**mistake), *words)


def test_merge_waits_for_the_layer_of_the_previous_exercise():
    class Unwritten(nn.Module):
        def __init__(self, base, rank, alpha):
            raise NotImplementedError

    fails(check.check_merge, Unwritten, "previous exercise", "not written yet")

    class NotMergeable(make_lora()):
        merge = unmerge = unwritten

    fails(check.check_merge, NotMergeable, "`unwritten` is not written yet")

    class NoForward(make_mergeable()):
        forward = unwritten

    fails(check.check_merge, NoForward, "forward pass", "not written yet")
    fails(check.check_merge, _mergeable_on(make_lora(scale="alpha")),
          "previous exercise right first")


def _mergeable_on(layer_class):
    class Mergeable(layer_class):  # a right merge on a LoRA layer whose forward is wrong
        saved = None

        @torch.no_grad()
        def merge(self):
            if self.saved is None:
                self.saved = self.base.weight.clone()
                self.base.weight.add_(self.s * self.B @ self.A)

        @torch.no_grad()
        def unmerge(self):
            if self.saved is not None:
                self.base.weight.copy_(self.saved)
                self.saved = None

        def forward(self, x):
            return self.base(x) if self.saved is not None else super().forward(x)

    return Mergeable


# --------------------------------------------------------------------------- eq. (10.2)

def last_token_states(hidden, idx, how="last"):
    real = idx != ft.PAD_INPUT
    last = real.sum(1) - 1
    rows = torch.arange(idx.size(0))
    if how == "last":
        return hidden[rows, last]
    if how == "gather":
        return hidden.gather(1, last[:, None, None].expand(-1, 1, hidden.size(-1)))[:, 0]
    return {"minus one": lambda: hidden[:, -1], "first": lambda: hidden[:, 0],
            "mean real": lambda: (hidden * real[..., None]).sum(1) / real.sum(1, keepdim=True),
            "mean": lambda: hidden.mean(1), "one past": lambda: hidden[rows, last + 1],
            "keepdim": lambda: hidden[rows, last][:, None],
            "zero pad": lambda: hidden[rows, (idx != 0).sum(1) - 1]}[how]()


def test_last_token_passes_right_answers(capsys):
    check.check_last_token(last_token_states)
    check.check_last_token(functools.partial(last_token_states, how="gather"))
    assert capsys.readouterr().out.count("✓ last real token") == 2


@pytest.mark.parametrize("how, words", [
    ("minus one", ["position T − 1", "padding"]),
    ("zero pad", ["position T − 1", "padding id -1"]),
    ("first", ["first token"]),
    ("mean real", ["averaged the hidden states of the real tokens"]),
    ("mean", ["averaged over every position"]),
    ("one past", ["ran past the end", "n − 1"]),
    ("keepdim", ["(B, C)"]),
])
def test_last_token_names_the_mistake(how, words):
    fails(check.check_last_token, functools.partial(last_token_states, how=how), *words)


def test_last_token_names_the_first_padding_position():
    def clamped(hidden, idx):  # one past the last real token, kept inside the batch
        last = (idx != ft.PAD_INPUT).sum(1).clamp(max=idx.size(1) - 1)
        return hidden[torch.arange(idx.size(0)), last]

    fails(check.check_last_token, clamped, "lengths [3, 5]", "first padding position")


# --------------------------------------------------------------------------- eq. (10.6)

def _words(text, split=False, lower=True):
    if split:
        return (text.lower() if lower else text).split()
    return re.findall(r"[a-z0-9]+", text.lower()) if lower else re.findall(r"[A-Za-z0-9]+", text)


def _lcs(a, b):
    L = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            L[i][j] = L[i - 1][j - 1] + 1 if x == y else max(L[i - 1][j], L[i][j - 1])
    return L[-1][-1]


def rouge_l(prediction, reference, split=False, lower=True, score="f", common="lcs",
            guard=True):
    p, r = _words(prediction, split, lower), _words(reference, split, lower)
    n = _lcs(p, r) if common == "lcs" else len(set(p) & set(r))
    if score == "count":
        return n
    if guard and n == 0:
        return 0.0
    P, R = n / len(p), n / len(r)
    return {"f": lambda: 2 * P * R / (P + R), "precision": lambda: P, "recall": lambda: R,
            "mean": lambda: (P + R) / 2}[score]()


def test_rouge_l_passes_right_answers(capsys):
    check.check_rouge_l(rouge_l)
    check.check_rouge_l(lambda p, r: ft.rouge([p], [r])["rougeL"])
    check.check_rouge_l(lambda p, r: torch.tensor(rouge_l(p, r)))
    assert capsys.readouterr().out.count("✓ ROUGE-L") == 3


@pytest.mark.parametrize("mistake, words", [
    (dict(split=True, lower=False), ["split the text on spaces", "case counts"]),
    (dict(split=True), ["split the text on spaces", "'file.' ≠ 'file'"]),
    (dict(lower=False), ["did not lower-case"]),
    (dict(score="precision"), ["precision LCS/|prediction|"]),
    (dict(score="recall"), ["recall LCS/|reference|"]),
    (dict(score="mean"), ["arithmetic mean"]),
    (dict(score="count"), ["length of the common subsequence"]),
    (dict(common="set"), ["regardless of their order", "same order"]),
    (dict(guard=False), ["divided by zero", "return 0"]),
    (dict(lower=False, score="recall"), ["lower-case", "recall"]),
])
def test_rouge_l_names_the_mistake(mistake, words):
    fails(check.check_rouge_l, functools.partial(rouge_l, **mistake), *words)


def test_rouge_l_other_mistakes():
    def substring(prediction, reference):
        p, r = _words(prediction), _words(reference)
        n = max((k for i in range(len(p)) for j in range(len(r))
                 for k in range(1, min(len(p) - i, len(r) - j) + 1) if p[i:i + k] == r[j:j + k]),
                default=0)
        return 2 * n / (len(p) + len(r)) if n else 0.0

    fails(check.check_rouge_l, substring, "common *substring*")
    fails(check.check_rouge_l, lambda p, r: rouge_l(p, r) / 2,
          "left out the factor 2")
    fails(check.check_rouge_l, lambda p, r: round(rouge_l(p, r), 1), "longest common "
          "subsequence has")
    fails(check.check_rouge_l, lambda p, r: None, "None")


# --------------------------------------------------------------------------- fresh cases

@pytest.mark.parametrize("check_function, typed_scale", [
    (check.check_lora_layer, make_lora(scale="typed")),
    (check.check_merge, make_mergeable(lora_scale="typed")),
], ids=["lora_layer", "merge"])
def test_layers_reject_a_scale_typed_in_from_the_fixed_examples(check_function, typed_scale):
    fails(check_function, typed_scale, "drawn at random", "fixed examples", "alpha=")


@pytest.mark.parametrize("check_function, right", [
    (check.check_lora_counts, lora_counts),
    (check.check_instruction_batch, instruction_batch),
    (check.check_last_token, last_token_states),
    (check.check_rouge_l, rouge_l),
], ids=["lora_counts", "instruction_batch", "last_token", "rouge_l"])
def test_checks_reject_answers_remembered_for_their_fixed_examples(check_function, right):
    rejects_remembered_answers(check_function, right)
