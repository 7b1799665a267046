"""Attention: the explicit formula, multi-head self-attention, and a KV cache.

Derived in notebooks/03_attention.ipynb (eqs. 3.1-3.6; its gradients by hand, eqs. 3.7-3.11,
are what autograd computes through these functions) and notebooks/04_multi_head_attention.ipynb
(eqs. 4.1-4.7: heads, the fused projection, parameter and FLOP counts). Two paths live side by
side and are tested equal:

* `scaled_dot_product_attention` writes softmax(Q Kᵀ / √d_k) V out line by line, for reading
  and for the attention maps the notebooks plot;
* `MultiHeadAttention` calls PyTorch's fused kernel (`F.scaled_dot_product_attention`) unless it
  is asked for the weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def causal_mask(n_queries: int, n_keys: int, device=None) -> torch.Tensor:
    """Boolean mask, True where query i may attend to key j: j <= i (eq. 3.5).

    Aligned to the top-left corner like PyTorch's `is_causal=True`: query i sits at position i.
    """
    return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril()


def stable_softmax(scores: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """softmax(s)_j = exp(s_j - max s) / Σ exp(s_i - max s)   (eq. 3.6).

    Subtracting the row maximum changes nothing mathematically but keeps exp() from
    overflowing. A row whose scores are all -inf (every key masked out) has no maximum to
    subtract; we define its weights as zeros instead of 0/0 = NaN.
    """
    row_max = scores.amax(dim=dim, keepdim=True)
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
    exp = torch.exp(scores - row_max)  # exp(-inf) = 0 for masked entries
    total = exp.sum(dim=dim, keepdim=True)
    return exp / torch.where(total == 0, torch.ones_like(total), total)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    return_weights: bool = False,
    scale: float | None = None,
):
    """Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V   (eq. 3.4).

    q: (..., L, d_k), k: (..., S, d_k), v: (..., S, d_v) -> (..., L, d_v).
    mask: boolean (True = may attend) or additive float, broadcastable to (..., L, S).
    is_causal: apply the causal mask of eq. (3.5); combined with `mask` if both are given.
    A query whose keys are all masked out gets zero weights and a zero output (not NaN).
    Returns the output, or (output, weights) when `return_weights` is set.
    """
    d_k = q.size(-1)
    scale = 1.0 / math.sqrt(d_k) if scale is None else scale  # eq. (3.3): keeps Var(score) ≈ 1
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., L, S)
    if is_causal:
        scores = scores.masked_fill(~causal_mask(q.size(-2), k.size(-2), q.device), -math.inf)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, -math.inf)
        else:
            scores = scores + mask
    weights = stable_softmax(scores, dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v  # (..., L, d_v)
    return (out, weights) if return_weights else out


class KVCache:
    """Keys and values of the tokens seen so far, for one attention layer.

    Generation feeds one new token at a time; without a cache step T would push the whole
    prefix through the layers again: O(T·C²) for the linear layers and O(T²·C) for attention,
    against O(C²) and O(T·C) with it (eq. 9.9 in notebook 09; over a generation, eq. 9.11).
    Storage is allocated once for `max_len` positions and filled left to right.
    """

    def __init__(self, batch_size, n_head, max_len, head_dim, device=None, dtype=None):
        shape = (batch_size, n_head, max_len, head_dim)
        # Uninitialised: only positions below `length` are ever read, and not zeroing the whole
        # block_size up front saves time and memory traffic on every generate() call.
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.size(2)

    def append(self, k: torch.Tensor, v: torch.Tensor):
        """Store (B, nh, T, hd) new keys/values; return all keys/values so far."""
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(
                f"KV cache holds {self.max_len} positions but {end} were requested; "
                "reset the cache or allocate a longer one"
            )
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reset(self) -> None:
        self.length = 0


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention (eqs. 4.1-4.3 in notebooks/04_multi_head_attention.ipynb).

    head_i = Attention(X W_i^Q, X W_i^K, X W_i^V);  MHA(X) = Concat(head_1..head_h) W^O.
    The h projections of Q, K and V are one fused (C, 3C) linear map: the same numbers as h
    separate (C, C/h) maps, but one matrix multiply instead of 3h (eq. 4.4).
    """

    def __init__(self, config, rotary=None):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.head_dim = config.n_embd // config.n_head
        self.dropout = config.dropout
        self.qkv_proj = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.out_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.out_proj.residual_scaled_init = True  # GPT-2's 1/√(2·n_layer) init, see model.py
        self.resid_dropout = nn.Dropout(config.dropout)
        self.rotary = rotary  # RotaryEmbedding or None (notebook 05)
        # Set `record_weights = True` to keep the last attention map in `attn_weights` for plots;
        # it forces the explicit path, which materialises the (T, T) weights.
        self.record_weights = False
        self.attn_weights: torch.Tensor | None = None

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, nh, T, hd)"""
        B, T, _ = x.shape
        return x.view(B, T, self.n_head, self.head_dim).transpose(1, 2)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, nh, T, hd) -> (B, T, C)"""
        B, _, T, _ = x.shape
        return x.transpose(1, 2).contiguous().view(B, T, self.n_embd)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        start = kv_cache.length if kv_cache is not None else 0
        q, k, v = self.qkv_proj(x).split(self.n_embd, dim=2)  # 3 × (B, T, C)
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)  # (B, nh, T, hd)
        if self.rotary is not None:
            q, k = self.rotary(q, start), self.rotary(k, start)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)  # (B, nh, start + T, hd)
        y = self._attend(q, k, v, start)  # (B, nh, T, hd)
        return self.resid_dropout(self.out_proj(self.merge_heads(y)))

    def _attend(self, q, k, v, start: int) -> torch.Tensor:
        # Query t sits at absolute position start + t and may see keys 0 .. start + t.
        # With an empty cache that is the plain causal mask; for one new token it is no mask.
        T, S = q.size(2), k.size(2)
        mask = None
        if start > 0 and T > 1:
            q_pos = torch.arange(start, start + T, device=q.device)
            mask = torch.arange(S, device=q.device)[None, :] <= q_pos[:, None]  # (T, S)
        is_causal = start == 0 and T > 1
        dropout_p = self.dropout if self.training else 0.0
        if self.record_weights:
            y, weights = scaled_dot_product_attention(
                q, k, v, mask=mask, is_causal=is_causal, dropout_p=dropout_p, return_weights=True
            )
            self.attn_weights = weights.detach()  # for plots; must not hold the autograd graph
            return y
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p
        )
