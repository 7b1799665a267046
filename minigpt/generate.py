"""Sampling text from the model. Derived in notebooks/09_sampling.ipynb (eqs. 9.1-9.11).

Each decoding rule reshapes the next-token distribution p = softmax(z) before drawing from it:

    temperature τ:  p_i ∝ exp(z_i / τ); τ → 0 is greedy (argmax), τ = 1 the model itself (eq. 9.1)
    top-k:          keep the k most probable tokens, renormalise                         (eq. 9.2)
    top-p:          keep the smallest set whose probability reaches p (nucleus)           (eq. 9.3)

Context rule: the model always conditions on the last `block_size` tokens. A longer prompt is
cropped to its last `block_size` tokens. With the KV cache, generation is incremental until the
context is full; after that every step recomputes the window, because learned absolute positions
cannot be shifted inside a cache. Both paths produce identical tokens.
"""

from __future__ import annotations

import math

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from minigpt.attention import KVCache

# Decoding changes the key length at every step. cuDNN's attention builds an execution plan for
# each new shape (tens of milliseconds on an H100-class GPU, measured: 43 ms per token instead of
# 6), so generation leaves it out; the flash and memory-efficient kernels take any length.
_DECODING_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the k-th largest of its row to -inf (eq. 9.2)."""
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most probable tokens whose total probability is ≥ p (eq. 9.3)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # probability mass strictly before each token; the token that crosses p is still kept
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token id per row of logits (B, V) -> (B, 1)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # greedy: the τ → 0 limit of eq. (9.1)
    # Shifting by the row maximum leaves eq. (9.1) unchanged and keeps a tiny τ from overflowing
    # z / τ to inf (and inf - inf to NaN): the largest logit becomes 0, the others -large or -inf.
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None:
        logits = apply_top_k(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = apply_top_p(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def _check_arguments(model, idx, max_new_tokens, temperature, top_k, top_p, eos_token):
    if idx.dim() == 1:
        raise ValueError("idx must be (batch, time); use idx[None] for a single prompt")
    if idx.size(1) == 0:
        raise ValueError("the prompt is empty; give at least one token (e.g. the end-of-text id)")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: must be a non-negative integer")
    if not (isinstance(temperature, int | float) and math.isfinite(temperature)
            and temperature >= 0):  # written so that NaN fails too
        raise ValueError(f"temperature={temperature!r}: must be a finite number ≥ 0 "
                         "(0 means greedy)")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool)
                              or top_k < 1):
        raise ValueError(f"top_k={top_k!r}: must be a positive integer or None")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p}: must be in (0, 1] or None")
    vocab = model.config.vocab_size
    if eos_token is not None and not 0 <= eos_token < vocab:
        raise ValueError(f"eos_token={eos_token} is outside the vocabulary [0, {vocab})")


@torch.no_grad()
def generate(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return idx (B, T) followed by up to `max_new_tokens` sampled tokens.

    eos_token: a row that produced it keeps producing it (padding), and generation stops early
    once every row has. `generator` seeds the draws. The model is put in eval mode for the call.
    """
    _check_arguments(model, idx, max_new_tokens, temperature, top_k, top_p, eos_token)
    was_training = model.training
    model.eval()
    try:
        with sdpa_kernel(_DECODING_BACKENDS):
            return _generate(
                model, idx, max_new_tokens, temperature, top_k, top_p, eos_token, use_cache,
                generator,
            )
    finally:
        model.train(was_training)


def _generate(model, idx, max_new_tokens, temperature, top_k, top_p, eos_token, use_cache, gen):
    block_size = model.config.block_size
    caches = model.new_kv_caches(idx.size(0)) if use_cache else None
    finished = torch.zeros(idx.size(0), 1, dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        logits = _next_logits(model, idx, caches, block_size)  # (B, V)
        next_token = sample_next_token(logits, temperature, top_k, top_p, gen)  # (B, 1)
        if eos_token is not None:
            next_token = next_token.masked_fill(finished, eos_token)
            finished |= next_token == eos_token
        idx = torch.cat((idx, next_token), dim=1)
        if eos_token is not None and bool(finished.all()):
            break
    return idx


def _next_logits(model, idx, caches: list[KVCache] | None, block_size: int) -> torch.Tensor:
    """Logits for the token after idx, feeding the model only what the cache lacks."""
    if caches is None:
        window = idx[:, -block_size:]
    elif caches[0].length > 0 and caches[0].length == idx.size(1) - 1 < block_size:
        window = idx[:, -1:]  # incremental step: only the newest token is new to the cache
    else:
        for cache in caches:  # first step, or the context is full: (re)fill from the window
            cache.reset()
        window = idx[:, -block_size:]
    hidden = model.hidden_states(window, caches)  # (B, t, C)
    return model.lm_head(hidden[:, -1])  # only the last position is needed: (B, V)


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int, seed: int = 0,
                  temperature: float = 0.8, top_k: int | None = 50, top_p=None,
                  stop_at_eot: bool = False) -> str:
    """Decode up to `max_new_tokens` sampled tokens after `prompt` (seeded). With `stop_at_eot`
    the text ends where the model writes end-of-text (the document is over), when the tokenizer
    has that token."""
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:  # an empty prompt starts from end-of-text, or a newline
        ids = [tokenizer.eot_token] if tokenizer.eot_token is not None else tokenizer.encode("\n")
    eot = tokenizer.eot_token if stop_at_eot else None
    device = model.device
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         eos_token=eot, generator=generator)
    new = out[0, len(ids):].tolist()
    if eot is not None and eot in new:
        new = new[:new.index(eot)]
    return prompt + tokenizer.decode([t for t in new if t < tokenizer.vocab_size])
