"""Transformer parts in plain PyTorch: 2-D sin-cos positions, pre-norm blocks, cross-attention.

Attention goes through `F.scaled_dot_product_attention`, which picks the fused
flash/memory-efficient kernels on GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sincos_2d(dim: int, rows: int, cols: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding (rows * cols, dim), as in MAE / MultiMAE."""
    if dim % 4:
        raise ValueError(f"embedding dim {dim} must be a multiple of 4")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    y, x = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
        indexing="ij",
    )  # fmt: skip
    parts = []
    for coord in (y.flatten(), x.flatten()):
        angles = coord[:, None] * omega[None]  # (N, dim/4)
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()  # (N, dim)


class Mlp(nn.Module):
    """Two linear layers with GELU."""

    def __init__(self, dim: int, ratio: float = 4.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, int(dim * ratio))
        self.fc2 = nn.Linear(int(dim * ratio), dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        return self.fc2(F.gelu(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head attention of queries over a context (self-attention when they are the same)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Queries x (B, N, D) attend to a context (B, M, D) -> (B, N, D)."""
        context = x if context is None else context
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
        k, v = self.kv(context).view(b, -1, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, D/heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CrossBlock(nn.Module):
    """Queries read a context once: q + xattn(norm(q), norm(ctx)), then q + mlp(norm(q))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_ctx = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, q: Tensor, context: Tensor) -> Tensor:
        """Queries (B, N, D) read a context (B, M, D) -> (B, N, D)."""
        q = q + self.attn(self.norm_q(q), self.norm_ctx(context))
        return q + self.mlp(self.norm2(q))


def split_qkv(qkv: Tensor) -> tuple[Tensor, Tensor]:
    """A fused qkv weight or bias as `Attention`'s q and kv (k then v).

    Rows q | k | v, as timm, DINOv2 and the reference MultiMAE store them.
    """
    d = qkv.shape[0] // 3
    return qkv[:d], qkv[d:]


def fold_layer_scale(
    gamma: Tensor, weight: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """LayerScale folded into the layer before it: x + g (W h + b) = x + (g W) h + g b."""
    return gamma[:, None] * weight, None if bias is None else gamma * bias


def init_weights(module: nn.Module) -> None:
    """Xavier-uniform linears with zero bias, unit LayerNorms (MAE's initialisation)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def n_params(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
