"""Checks for exercises/07_gpt_model.ipynb (the course notebook: notebooks/07_gpt_model.ipynb).

The parameter count (eq. 7.5), the forward pass written from a model's submodules (eqs. 7.1-7.3),
the FLOPs per token (eq. 7.6) and GPT-2's initialisation (eq. 7.4). Each is compared with
`minigpt.model.GPT` and with an independent reference: Hugging Face `transformers` GPT-2 for the
counts and the logits, PyTorch's `FlopCounterMode` for the FLOPs. A wrong answer is matched
against the usual mistakes (the tied head counted twice, the ×3 of training forgotten, the
residual projections left unscaled, ...), and the message names the one it looks like.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from checks.core import (
    CheckFailed,
    as_number,
    call,
    close,
    combine_mistakes,
    find_mistake,
    fresh_case,
    fresh_seed,
    passed,
    require,
    same_shape,
    show,
)
from minigpt.model import GPT, GPTConfig

# (V, P, C, L, n_head): GPT-2 small and XL, and small shapes where every term is visible
PARAM_CASES = [
    (50257, 1024, 768, 12, 12),
    (50257, 1024, 1600, 48, 25),
    (256, 64, 64, 2, 4),
    (1000, 32, 48, 3, 4),
    (65, 8, 16, 1, 2),
]


@functools.lru_cache(maxsize=16)
def _meta_gpt(V, P, C, L, n_head) -> GPT:
    """A minigpt GPT with shapes only (no memory allocated), for counting."""
    with torch.device("meta"):
        return GPT(GPTConfig(vocab_size=V, block_size=P, n_embd=C, n_layer=L, n_head=n_head))


def _import_transformers():
    with warnings.catch_warnings():  # tqdm's note about ipywidgets is no news to a learner
        warnings.filterwarnings("ignore", message="IProgress not found")
        import transformers
    return transformers


def _hf_params(V, P, C, L, n_head) -> int:
    transformers = _import_transformers()
    GPT2Config, GPT2LMHeadModel = transformers.GPT2Config, transformers.GPT2LMHeadModel
    with torch.device("meta"):
        hf = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=P, n_embd=C, n_layer=L,
                                        n_head=n_head, bos_token_id=None, eos_token_id=None))
    return hf.num_parameters()


def _fresh_int(generator, low: int, high: int) -> int:
    """An integer in [low, high), drawn with `generator`."""
    return int(torch.randint(low, high, (), generator=generator))


def _as_count(value, what: str) -> int:
    number = as_number(value, what)
    if not number.is_integer():
        raise CheckFailed(f"{what} is {number:g}, which is not a whole number of parameters")
    return int(number)


# ------------------------------------------------------------------ eq. (7.5): parameters

PARAM_KNOBS = {
    "head": {0: None, 1: "counted the output head as a V×C matrix of its own: with weight "
                         "tying it *is* the token embedding E (eq. 7.3), so it counts once"},
    "positions": {1: None, 0: "left out the position table P (P×C learned rows, eq. 7.1)"},
    "biases": {1: None, 0: "left out the biases of a block's four linear layers "
                           "(3C + C + 4C + C = 9C per block)"},
    "block_norms": {1: None, 0: "left out the two layer norms inside each block "
                                "(γ and β: 2C each, 4C per block)"},
    "final_norm": {1: None, 0: "left out the final layer norm LN_f (2C)"},
    "mlp_width": {4: None, 1: "gave the feed-forward layer width C instead of 4C"},
    "layers": {"all": None, "one": "counted one block instead of L of them"},
}


def _params_variant(case, head, positions, biases, block_norms, final_norm, mlp_width, layers):
    V, P, C, L, _ = case
    w = mlp_width * C
    block = 4 * C * C + 2 * C * w + biases * (4 * C + w + C) + block_norms * 4 * C
    n_blocks = L if layers == "all" else 1
    return V * C * (1 + head) + P * C * positions + n_blocks * block + final_norm * 2 * C


def check_param_count(gpt_params) -> None:
    """gpt_params(V, P, C, L) -> parameters of a tied GPT-2-style model, eq. (7.5)."""
    answers = []
    for case in PARAM_CASES:
        V, P, C, L, n_head = case
        answers.append(_as_count(call(gpt_params, V, P, C, L),
                                 f"gpt_params(V={V}, P={P}, C={C}, L={L})"))
    for case, answer in zip(PARAM_CASES, answers, strict=True):
        V, P, C, L, n_head = case
        expected = _meta_gpt(V, P, C, L, n_head).num_params()
        # an independent count: Hugging Face's GPT-2 of the same shape (small shapes only: fast)
        if C <= 64 and _hf_params(V, P, C, L, n_head) != expected:
            raise RuntimeError("minigpt and transformers disagree on the parameter count")
        if answer == expected:
            continue
        variants = ((why, [_params_variant(c, **choice) for c in PARAM_CASES])
                    for why, choice in combine_mistakes(PARAM_KNOBS, max_wrong=3))
        mistake = find_mistake(answers, variants)
        where = f"gpt_params(V={V}, P={P}, C={C}, L={L})"
        message = f"{where} = {show(answer)}, but the model has {show(expected)} parameters"
        if mistake:
            raise CheckFailed(f"{message}: you {mistake}")
        difference = answer - expected
        hint = f" (the difference is {difference:+,}"
        if difference % C == 0:
            hint += f" = {difference // C:+,}·C"
        raise CheckFailed(message + hint + "); go through the table of section 4 term by term")
    with fresh_case(fresh_seed()) as generator:  # a model no one knew in advance
        n_head, L = _fresh_int(generator, 1, 9), _fresh_int(generator, 1, 13)
        C, V, P = (n_head * _fresh_int(generator, 2, 65), _fresh_int(generator, 2, 60000),
                   _fresh_int(generator, 1, 2049))
        where = f"gpt_params(V={V}, P={P}, C={C}, L={L})"
        answer = _as_count(call(gpt_params, V, P, C, L), where)
        expected = _meta_gpt(V, P, C, L, n_head).num_params()
        require(answer == expected, f"{where} = {show(answer)}, but the model has "
                                    f"{show(expected)} parameters")
    passed("parameter count, eq. (7.5)")


# ------------------------------------------------------------ eqs. (7.1)-(7.3): forward pass

def _perturbed_gpt(seed: int, **sizes) -> GPT:
    """A small GPT whose biases and layer-norm parameters are not 0 and 1, so that leaving one
    of them out shows in the logits."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**sizes)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _forward_variants(model: GPT, idx: torch.Tensor) -> dict:
    """The logits of eqs. (7.1)-(7.3), and what the usual slips give instead."""
    E, T = model.token_emb.weight, idx.size(1)
    P = model.pos_enc.embedding.weight
    ln_f = model.ln_f

    def stack(h, chained=True):
        h0 = h
        for block in model.blocks:
            h = block(h if chained else h0)
        return h

    with torch.no_grad():
        h0 = E[idx] + P[:T]
        right = ln_f(stack(h0)) @ E.T
        wrong = {
            "left out the position rows P[0..T) of eq. (7.1)": ln_f(stack(E[idx])) @ E.T,
            "skipped the final layer norm LN_f of eq. (7.3)": stack(h0) @ E.T,
            "skipped the transformer blocks of eq. (7.2)": ln_f(h0) @ E.T,
            "fed every block h⁰ instead of the previous block's output (eq. 7.2 chains them)":
                ln_f(stack(h0, chained=False)) @ E.T,
            "returned probabilities (a softmax) instead of logits": right.softmax(-1),
            "returned log-probabilities (a log-softmax) instead of logits":
                right.log_softmax(-1),
        }
        if T < P.size(0):
            wrong["took the position rows P[1..T]: the token at position t gets row t, "
                  "counting from 0"] = ln_f(stack(E[idx] + P[1:T + 1])) @ E.T
    return right, wrong


class _NoShortcut:
    """Make model(idx) and model.hidden_states raise while the learner's function runs."""

    def __init__(self, model: GPT):
        self.model = model

    def _refuse(self, *args, **kwargs):
        raise CheckFailed("your function called model(idx) (or model.hidden_states): write the "
                          "forward pass from the submodules token_emb, pos_enc, blocks, ln_f "
                          "and the embedding matrix, eqs. (7.1)-(7.3)")

    def __enter__(self):
        self.model.forward = self._refuse
        self.model.hidden_states = self._refuse
        return self.model

    def __exit__(self, *exc):
        del self.model.forward, self.model.hidden_states
        return False


def check_forward(forward_from_parts) -> None:
    """forward_from_parts(model, idx) -> logits (B, T, V), built from the model's submodules."""
    cases = [
        (dict(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32), (2, 5)),
        (dict(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32), (1, 16)),
        (dict(vocab_size=50, block_size=12, n_layer=3, n_head=3, n_embd=24), (3, 7)),
        (dict(vocab_size=50, block_size=12, n_layer=3, n_head=3, n_embd=24), (2, 1)),
    ]
    for seed, (sizes, shape) in enumerate(cases):
        _check_forward_case(forward_from_parts, seed, sizes, shape)
    seed = fresh_seed()
    with fresh_case(seed) as generator:  # a model and tokens no one knew in advance
        n_head = _fresh_int(generator, 1, 4)
        sizes = dict(vocab_size=_fresh_int(generator, 40, 120), block_size=16,  # V > C
                     n_layer=_fresh_int(generator, 1, 4), n_head=n_head,
                     n_embd=n_head * 2 * _fresh_int(generator, 2, 7))
        shape = (_fresh_int(generator, 1, 4), _fresh_int(generator, 1, 17))
        _check_forward_case(forward_from_parts, seed, sizes, shape)
    passed("forward pass from the submodules, eqs. (7.1)-(7.3)")


def _check_forward_case(forward_from_parts, seed, sizes, shape) -> None:
    _import_transformers()
    from minigpt.hf import to_hf

    model = _perturbed_gpt(seed, **sizes)
    idx = torch.randint(0, sizes["vocab_size"], shape,
                        generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(idx)[0]
        reference = to_hf(model).eval()(idx).logits  # Hugging Face GPT-2, same weights
    if not torch.allclose(expected, reference, atol=1e-4):
        raise RuntimeError("minigpt and transformers disagree on the logits")
    right, wrong = _forward_variants(model, idx)
    with _NoShortcut(model), torch.no_grad():
        logits = call(forward_from_parts, model, idx)
    what = f"forward_from_parts(model, idx of shape {shape})"
    B, T = shape
    V, C = sizes["vocab_size"], sizes["n_embd"]
    if isinstance(logits, torch.Tensor) and tuple(logits.shape) == (B, T, C):
        raise CheckFailed(f"{what} has shape {(B, T, C)}: that is the residual stream; "
                          "eq. (7.3) multiplies LN_f(hᴸ) by Eᵀ to get one score per token")
    if isinstance(logits, torch.Tensor) and tuple(logits.shape) == (B, V):
        raise CheckFailed(f"{what} has shape {(B, V)}: return the logits of every "
                          "position, (B, T, V), not only the last one")
    same_shape(logits, expected, what)
    for why, value in wrong.items():
        if torch.allclose(value, right, atol=1e-5, rtol=1e-4):
            continue  # no mistake in this model (with one block, chained or not is the same)
        if torch.allclose(logits.detach().float(), value, atol=1e-5, rtol=1e-4):
            raise CheckFailed(f"{what} is not model(idx): you {why}")
    close(logits, expected, what, atol=1e-4)


# ---------------------------------------------------------------- eq. (7.6): FLOPs per token

FLOP_CASES = [  # (V, C, L, T)
    (50257, 768, 12, 1024),
    (50257, 1600, 48, 1024),
    (256, 64, 2, 64),
    (97, 32, 3, 8),
    (1000, 128, 4, 2048),
]

FLOP_KNOBS = {
    "passes": {3: None, 2: "counted the backward pass as one forward pass: it takes two matrix "
                           "products per product of the forward (the gradients of the input "
                           "and of the weight), so training is 3× the forward",
               1: "forgot the ×3 for training: backward costs twice the forward, so "
                  "F_train = 3·F_fwd"},
    "per_weight": {2: None, 1: "counted 1 FLOP per weight; a multiply and an add are 2"},
    "attention": {"4LTC": None, "none": "forgot the attention term 4·L·T·C (QKᵀ and AV) of "
                                        "the forward pass",
                  "2LTC": "counted only QKᵀ in the attention term: AV costs another 2·T·C per "
                          "layer, 4·L·T·C in all",
                  "4LT²C": "multiplied the attention term by T again: per token it is 4·L·T·C "
                           "(one query against T keys), not the whole sequence's 4·L·T²·C"},
    "attention_passes": {"same": None, "forward": "did not multiply the attention term by 3 "
                                                  "for training"},
    "head": {1: None, 0: "left the output head (V·C weights: the tied E used a second time) "
                         "out of N_mm"},
}


def _flops_variant(case, training, passes, per_weight, attention, attention_passes, head):
    V, C, L, T = case
    n_mm = 12 * L * C * C + head * V * C
    attn = {"4LTC": 4 * L * T * C, "none": 0, "2LTC": 2 * L * T * C,
            "4LT²C": 4 * L * T * T * C}[attention]
    if not training:
        return per_weight * n_mm + attn
    return passes * per_weight * n_mm + (passes if attention_passes == "same" else 1) * attn


def _flop_counter_per_token(training: bool) -> float:
    """FLOPs per token that PyTorch counts for a small model (explicit attention, so that every
    product is visible): the independent reference for eq. (7.6)."""
    V, C, L, T = FLOP_CASES[3]
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=1, n_embd=C))
    for block in model.blocks:
        block.attn.record_weights = True
    idx = torch.randint(0, V, (1, T), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        _, loss = model(idx, idx)
        if training:
            loss.backward()
    return counter.get_total_flops() / T


def check_flops_per_token(flops_per_token) -> None:
    """flops_per_token(V, C, L, T, training=True) -> FLOPs to process one token, eq. (7.6)."""
    for training in (True, False):
        answers = []
        for V, C, L, T in FLOP_CASES:
            what = f"flops_per_token(V={V}, C={C}, L={L}, T={T}, training={training})"
            answers.append(as_number(call(flops_per_token, V, C, L, T, training=training), what))
        for case, answer in zip(FLOP_CASES, answers, strict=True):
            V, C, L, T = case
            expected = _meta_gpt(V, T, C, L, 1).flops_per_token(T, training=training)
            if case == FLOP_CASES[3] and _flop_counter_per_token(training) != expected:
                raise RuntimeError("minigpt and FlopCounterMode disagree on the FLOPs")
            if math.isclose(answer, expected, rel_tol=1e-9):
                continue
            what = f"flops_per_token(V={V}, C={C}, L={L}, T={T}, training={training})"
            message = f"{what} = {show(answer)}, expected {show(expected)}"
            if not training and math.isclose(
                    answer, _flops_variant(case, True, 3, 2, "4LTC", "same", 1), rel_tol=1e-9):
                raise CheckFailed(f"{message}: that is the training cost; with training=False "
                                  "return the forward pass alone, 2·N_mm + 4·L·T·C")
            variants = ((why, [_flops_variant(c, training, **choice) for c in FLOP_CASES])
                        for why, choice in combine_mistakes(FLOP_KNOBS))
            mistake = find_mistake(answers, variants, rtol=1e-9)
            if mistake:
                raise CheckFailed(f"{message}: you {mistake} (eq. 7.6)")
            raise CheckFailed(f"{message} ({answer / expected:.4g} times the right answer); "
                              "build it from N_mm = 12·L·C² + V·C and the attention term, "
                              "eq. (7.6)")
    with fresh_case(fresh_seed()) as generator:  # a model no one knew in advance
        V, C, L, T = (_fresh_int(generator, 2, 60000), _fresh_int(generator, 2, 2000),
                      _fresh_int(generator, 1, 49), _fresh_int(generator, 1, 4097))
        for training in (True, False):
            what = f"flops_per_token(V={V}, C={C}, L={L}, T={T}, training={training})"
            answer = as_number(call(flops_per_token, V, C, L, T, training=training), what)
            expected = _meta_gpt(V, T, C, L, 1).flops_per_token(T, training=training)
            require(math.isclose(answer, expected, rel_tol=1e-9),
                    f"{what} = {show(answer)}, expected {show(expected)}")
    passed("FLOPs per token, eq. (7.6)")


# ---------------------------------------------------------------- eq. (7.4): initialisation

INIT_SIZES = dict(vocab_size=256, block_size=64, n_layer=4, n_head=4, n_embd=128)


def _scramble(model: GPT) -> None:
    """Put every parameter far from GPT-2's initialisation, so that a step left out shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 1.5)


def _residual(name: str) -> bool:
    return name.endswith(("attn.out_proj.weight", "mlp.proj.weight"))


def _std_mistake(name: str, std: float, expected: float, n_layer: int) -> str:
    base = 0.02
    fixed_L = INIT_SIZES["n_layer"]
    candidates = {
        f"took L = {fixed_L}, the depth of the check's first model, not this model's own "
        f"model.config.n_layer = {n_layer}": base / math.sqrt(2 * fixed_L)
        if n_layer != fixed_L else None,
        "left it at 0.02: the two projections that write into the residual stream get "
        "0.02/√(2L)": base,
        "divided by √L; there are 2L residual branches (two per block), so 0.02/√(2L)":
            base / math.sqrt(n_layer),
        "divided by 2L instead of √(2L): variances add, so the std shrinks by the square root":
            base / (2 * n_layer),
        "used 1/√(2L) without the 0.02": 1 / math.sqrt(2 * n_layer),
    }
    if not _residual(name):
        candidates = {"scaled it by 1/√(2L): only attn.out_proj and mlp.proj (the layers "
                      "that write into the residual stream) are scaled": base / math.sqrt(
                          2 * n_layer)}
    for why, value in candidates.items():
        if value is not None and abs(std / value - 1) < 0.05:
            return f"; you {why}"
    return ""


def check_init(init_gpt2_) -> None:
    """init_gpt2_(model) re-initialises a GPT in place by eq. (7.4)."""
    _check_init_case(init_gpt2_, INIT_SIZES)
    with fresh_case(fresh_seed()) as generator:  # a depth no one knew in advance: the scale of
        n_layer = INIT_SIZES["n_layer"]  # the residual projections must come from the model
        while n_layer == INIT_SIZES["n_layer"]:
            n_layer = _fresh_int(generator, 1, 9)
        _check_init_case(init_gpt2_, {**INIT_SIZES, "n_layer": n_layer})
    passed("GPT-2 initialisation, eq. (7.4)")


def _check_init_case(init_gpt2_, sizes: dict) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**sizes))
    reference = dict(model.named_parameters())  # minigpt's own initialisation, for the message
    reference = {name: p.detach().clone() for name, p in reference.items()}
    torch.manual_seed(1)
    _scramble(model)
    tied = model.lm_head.weight is model.token_emb.weight
    call(init_gpt2_, model)
    require(tied and model.lm_head.weight is model.token_emb.weight,
            "lm_head.weight is no longer token_emb.weight: initialise the tensors in place "
            "(nn.init.normal_ on p, or p.normal_()) instead of assigning new Parameters, so the "
            "tying of eq. (7.3) survives")
    L = sizes["n_layer"]
    for name, p in model.named_parameters():
        p = p.detach()
        if not torch.isfinite(p).all():
            raise CheckFailed(f"{name} contains NaN or inf after your initialisation")
        if name.endswith("bias"):
            require(torch.all(p == 0), f"{name} is not all zeros: eq. (7.4) starts every bias "
                                       "(of linear layers and layer norms) at 0")
        elif ".ln_" in name or name.startswith("ln_f"):
            require(torch.all(p == 1), f"{name} is not all ones: a layer norm's gain γ starts "
                                       "at 1, so that it begins as a plain normalisation")
        else:
            _check_std(name, p, reference[name], L)


def _check_std(name: str, p: torch.Tensor, package: torch.Tensor, n_layer: int) -> None:
    expected = 0.02 / math.sqrt(2 * n_layer) if _residual(name) else 0.02
    std, mean = p.std().item(), p.mean().item()
    if abs(mean) > 0.1 * expected:
        raise CheckFailed(f"{name} has mean {mean:.4f}: eq. (7.4) draws from N(0, σ²), "
                          "centred on 0 (does your loop reach this tensor?)")
    if abs(std / expected - 1) > 0.05:
        raise CheckFailed(
            f"{name} has standard deviation {std:.4f}, expected {expected:.4f} in a model with "
            f"L = {n_layer} (minigpt's GPT gives {package.std().item():.4f})"
            + _std_mistake(name, std, expected, n_layer))
    kurtosis = ((p - mean) ** 4).mean().item() / std**4
    require(abs(kurtosis - 3) < 0.5, f"{name} has the right spread but is not Gaussian "
                                     f"(kurtosis {kurtosis:.2f}, a normal's is 3): use "
                                     "nn.init.normal_, not a uniform draw")
