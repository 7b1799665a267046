"""The transformer block: layer norm, the GELU feed-forward network, residual paths.

Derived in notebooks/06_transformer_block.ipynb (eqs. 6.1-6.6; layer norm's Jacobian, eqs.
6.7-6.8, explains how pre-LN and post-LN blocks pass gradients). As elsewhere, each formula is
written out once (`layer_norm`, `gelu`) and the modules use PyTorch's fused kernels, tested equal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minigpt.attention import MultiHeadAttention


def layer_norm(x, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    """LN(x) = γ ⊙ (x - μ) / √(σ² + ε) + β over the last dimension   (eq. 6.1).

    μ and σ² are the mean and the *biased* variance (divide by C, not C - 1) of each token's
    C features, so every token leaves with mean 0 and variance ≈ 1 before γ and β rescale it.
    """
    mu = x.mean(dim=-1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


class LayerNorm(nn.Module):
    """Layer norm with a learned gain γ and an optional bias β (eq. 6.1)."""

    def __init__(self, dim: int, bias: bool = True, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


def gelu(x: torch.Tensor, approximate: str = "tanh") -> torch.Tensor:
    """GELU(x) = x·Φ(x), Φ the standard normal CDF   (eq. 6.3).

    GPT-2 uses the tanh approximation (eq. 6.4):
    GELU(x) ≈ ½x(1 + tanh(√(2/π)(x + 0.044715x³))).
    """
    if approximate == "tanh":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


class MLP(nn.Module):
    """Position-wise feed-forward network: FFN(x) = GELU(x W₁ + b₁) W₂ + b₂   (eq. 6.5).

    Applied to every token independently; the hidden width is 4·C in GPT-2.
    """

    def __init__(self, config):
        super().__init__()
        hidden = config.n_inner or 4 * config.n_embd
        self.fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.proj.residual_scaled_init = True  # see GPT._init_weights
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc(x), approximate=self.approximate)  # (B, T, 4C)
        return self.dropout(self.proj(h))  # (B, T, C)


class Block(nn.Module):
    """One transformer block: attention then feed-forward, each on a residual path (eq. 6.6).

    pre-LN (GPT-2, the default):  x = x + Attn(LN₁(x));  x = x + FFN(LN₂(x))
    post-LN (original Transformer): x = LN₁(x + Attn(x)); x = LN₂(x + FFN(x))
    Pre-LN keeps an identity path from the loss to every layer, so gradients reach the first
    layers undiminished; post-LN normalises that path and usually needs learning-rate warm-up.
    """

    def __init__(self, config, rotary=None):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias, eps=config.layer_norm_eps)
        self.attn = MultiHeadAttention(config, rotary=rotary)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, kv_cache=None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x), kv_cache)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, kv_cache))
        return self.ln_2(x + self.mlp(x))
