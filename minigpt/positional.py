"""Position encodings: how a permutation-equivariant attention layer learns word order.

Derived in notebooks/05_positional_encoding.ipynb. Attention alone treats its input as a set
(eq. 5.1), so position must be injected:

* sinusoidal (the original Transformer's, eq. 5.2) and learned absolute encodings are *added*
  to the token embeddings: `forward(start, length) -> (length, dim)`;
* rotary encoding (RoPE, eq. 5.5) *rotates* queries and keys inside attention so that their dot
  product depends only on the offset between positions: `forward(x, start) -> x rotated`.

`GPTConfig.pos_encoding` picks one: "learned" (GPT-2), "sinusoidal", "rope" or "none".
"""

from __future__ import annotations

import torch
from torch import nn


def sinusoidal_encoding(n_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """PE(p, 2i) = sin(p·ω_i),  PE(p, 2i+1) = cos(p·ω_i),  ω_i = base^(-2i/dim)   (eq. 5.2).

    Returns (n_positions, dim). Each (sin, cos) pair turns at its own frequency ω_i, so
    PE(p + k) is PE(p) rotated pair by pair by the angles k·ω_i: a fixed linear map that
    depends on k alone (eq. 5.3).
    """
    if dim % 2:
        raise ValueError(f"sinusoidal encoding needs an even dimension, got dim={dim}")
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (P, 1)
    omega = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (dim/2,)
    angles = position * omega  # (P, dim/2)
    pe = torch.empty(n_positions, dim)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe


def sinusoidal_shift_matrix(k: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The (dim, dim) matrix M_k with PE(p + k) = M_k PE(p) for every p   (eq. 5.3).

    Block-diagonal: one 2×2 rotation [[cos kω, sin kω], [-sin kω, cos kω]] per frequency.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal encoding needs an even dimension, got dim={dim}")
    omega = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    m = torch.zeros(dim, dim, dtype=torch.float64)
    cos, sin = torch.cos(k * omega), torch.sin(k * omega)
    i = torch.arange(0, dim, 2)
    # sin(a+b) = sin a cos b + cos a sin b;  cos(a+b) = cos a cos b - sin a sin b
    m[i, i], m[i, i + 1] = cos, sin
    m[i + 1, i], m[i + 1, i + 1] = -sin, cos
    return m


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal table (eq. 5.2), added to the token embeddings; no parameters.

    Scale: the entries lie in [-1, 1] (root mean square 1/√2), while GPT-2's initialisation draws
    token embeddings with standard deviation 0.02, so at the start of training the positions
    dominate the residual stream. The original Transformer multiplied its token embeddings by
    √d_model to balance the two; minigpt keeps one initialisation for every encoding, and the
    token embeddings must grow during training instead.
    """

    def __init__(self, n_positions: int, dim: int, base: float = 10000.0):
        super().__init__()
        self.register_buffer("table", sinusoidal_encoding(n_positions, dim, base), persistent=False)

    def forward(self, start: int, length: int) -> torch.Tensor:
        return self.table[start : start + length]  # (T, C)


class LearnedPositionalEncoding(nn.Module):
    """One trained vector per position (GPT-2's `wpe`, eq. 5.4); none exists past n_positions."""

    def __init__(self, n_positions: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_positions, dim)

    def forward(self, start: int, length: int) -> torch.Tensor:
        positions = torch.arange(start, start + length, device=self.embedding.weight.device)
        return self.embedding(positions)  # (T, C)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension: a 90° turn of each pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE, eqs. 5.5-5.6).

    Feature i is paired with feature i + d/2, and the pair at position p is rotated by the angle
    p·θ_i with θ_i = base^(-2i/d). For a query at p and a key at s,
    ⟨R_p q, R_s k⟩ = ⟨q, R_(s-p) k⟩: the score depends on the offset s - p only (eq. 5.6).
    (Pairing i with i + d/2 rather than 2i with 2i+1 is the same rotation on permuted features,
    and needs no strided indexing.)
    """

    def __init__(self, head_dim: int, n_positions: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(
                f"rotary encoding needs an even head dimension, got head_dim={head_dim}; "
                "choose n_embd and n_head so that n_embd / n_head is even"
            )
        theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.arange(n_positions, dtype=torch.float32)[:, None] * theta  # (P, d/2)
        angles = torch.cat((angles, angles), dim=-1)  # (P, d): both halves of a pair share θ_i
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Rotate x of shape (..., T, head_dim) whose first row sits at position `start`."""
        T = x.size(-2)
        cos = self.cos[start : start + T].to(x.dtype)  # (T, hd)
        sin = self.sin[start : start + T].to(x.dtype)
        return x * cos + rotate_half(x) * sin


def build_additive_encoding(config) -> nn.Module | None:
    """The encoding added to token embeddings for `config.pos_encoding`, or None."""
    if config.pos_encoding == "learned":
        return LearnedPositionalEncoding(config.block_size, config.n_embd)
    if config.pos_encoding == "sinusoidal":
        return SinusoidalPositionalEncoding(config.block_size, config.n_embd)
    return None  # "rope" acts inside attention; "none" has no position signal at all


def build_rotary(config) -> RotaryEmbedding | None:
    if config.pos_encoding != "rope":
        return None
    return RotaryEmbedding(config.n_embd // config.n_head, config.block_size, config.rope_base)
