"""The adapters of MultiMAE-EO as its authors built them (`model.preset: multimae-eo`).

Their code (josesosajs/multimae-meets-eo) uses the reference MultiMAE's adapters
(EPFL-VILAB/MultiMAE, multimae/input_adapters.py and output_adapters.py) unchanged:

Input adapter: Conv2d patch projection + a fixed 2-D sin-cos table made for a 224 px
image at patch 8 (28 x 28) and resized to the token grid at every call (bicubic; bilinear
for land cover); no modality embedding. Land cover enters at a quarter of the image's
resolution as class indices (nodata is a 12th class), through a 64-wide class embedding
and a patch of 2, so every modality gives the same 7 x 7 tokens at 56 px.

Output adapter (their SpatialOutputAdapter), for one target:

    context = proj_context(encoded)                       (B, K + 1, Dd), global token first
    tokens  = visible context at their places, mask tokens elsewhere; each input's
              tokens + its task embedding + positions                    (B, N_all, Dd)
    queries = the target's own tokens (visible ones and mask tokens)     (B, N_t, Dd)
    x = xattn(query_norm(queries), context_norm(visible tokens ; global))   no residual
    x = x + mlp(out_norm(x)) -> self-attention blocks -> out_proj           no final norm
    (B, N_t, C*p*p) -> (B, C, H, W), channels outermost: (c, p1, p2)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.adapters import class_patch_tokens
from training.modalities import ModelModality
from training.vit import Attention, Block, Mlp, sincos_2d

TABLE_GRID = 28  # the authors' tables: 224 px / patch 8, resized to the actual grid


def fixed_table(dim: int) -> Tensor:
    """(1, dim, 28, 28) 2-D sin-cos positions, channels first as the authors store them."""
    return sincos_2d(dim, TABLE_GRID, TABLE_GRID).T.reshape(1, dim, TABLE_GRID, TABLE_GRID)


def resized(table: Tensor, grid: int, mode: str) -> Tensor:
    """The table resized to a grid x grid token grid: (1, grid*grid, dim)."""
    pos = F.interpolate(table, size=(grid, grid), mode=mode, align_corners=False)
    return pos.flatten(2).transpose(1, 2)


class EOInputAdapter(nn.Module):
    """Tokens of one modality: patch projection + resized fixed positions."""

    pos_emb: Tensor

    def __init__(self, modality: ModelModality, patch: int, dim: int, class_dim: int) -> None:
        super().__init__()
        self.modality, self.patch = modality, patch
        channels = modality.channels
        if modality.categorical:  # nodata (index num_classes) is a class of its own
            self.class_emb = nn.Embedding(modality.num_classes + 1, class_dim)
            nn.init.trunc_normal_(self.class_emb.weight, std=0.02)
            channels = class_dim
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)
        self.register_buffer("pos_emb", fixed_table(dim), persistent=False)
        self.mode = "bilinear" if modality.categorical else "bicubic"

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) float or (B, H, W) class indices -> (B, (H/p)*(W/p), D)."""
        if self.modality.categorical:  # = proj(class_emb(x)), computed without the image
            tokens = class_patch_tokens(x, self.class_emb, self.proj)  # (B, N, D)
        else:
            tokens = self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)
        return tokens + resized(self.pos_emb, x.shape[-1] // self.patch, self.mode)


class SpatialOutputAdapter(nn.Module):
    """One target's prediction from the encoded visible tokens (see the module docstring)."""

    pos_emb: Tensor

    def __init__(
        self,
        modality: ModelModality,
        patch: int,
        encoder_dim: int,
        dim: int,
        depth: int,
        heads: int,
        tasks: list[str],
        task: str,
    ) -> None:
        super().__init__()
        self.modality, self.patch, self.task = modality, patch, task
        self.proj_context = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))  # zero, as theirs
        self.task_embeddings = nn.ParameterDict(
            {name: nn.Parameter(torch.zeros(1, 1, dim)) for name in tasks}
        )
        for embedding in self.task_embeddings.values():
            nn.init.trunc_normal_(embedding, std=0.02)
        self.register_buffer("pos_emb", fixed_table(dim), persistent=False)
        self.decoder = Attention(dim, heads)
        self.context_norm = nn.LayerNorm(dim, eps=1e-6)
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.out_norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim)
        self.decoder_transformer = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        # land cover: nodata is a class the reference predicts too
        self.channels = modality.num_classes + 1 if modality.categorical else modality.channels
        self.out_proj = nn.Linear(dim, self.channels * patch * patch)

    def forward(self, encoded: Tensor, keep: Tensor, layout: dict[str, int]) -> Tensor:
        """The target's prediction (B, C_out, grid * p, grid * p).

        encoded (B, 1 + K, D_enc), global token first; keep (B, K) the visible tokens'
        columns among all input tokens, laid out as `layout` {input: token count}.
        """
        context = self.proj_context(encoded)  # (B, 1 + K, Dd)
        b, dim = context.shape[0], context.shape[-1]
        total = sum(layout.values())
        tokens = self.mask_token.expand(b, total, dim).clone()
        index = keep[..., None].expand(-1, -1, dim)
        tokens = tokens.scatter(1, index, context[:, 1:])  # (B, N_all, Dd)
        start, own = 0, None
        added = []
        for name, n in layout.items():
            embed = self.task_embeddings[name] + resized(self.pos_emb, _side(n), "bilinear")
            added.append(embed.expand(b, -1, -1))
            if name == self.task:
                own = (start, start + n)
            start += n
        tokens = tokens + torch.cat(added, dim=1)
        visible = torch.cat([context[:, :1], tokens.gather(1, index)], dim=1)  # (B, 1 + K, Dd)
        if own is None:  # a target that is not an input: mask tokens with its embeddings
            grid = _side(layout[next(iter(layout))])
            queries = self.mask_token + resized(self.pos_emb, grid, "bilinear")
            if self.task in self.task_embeddings:
                queries = queries + self.task_embeddings[self.task]
            queries = queries.expand(b, -1, -1)
        else:
            queries = tokens[:, own[0] : own[1]]
        x = self.decoder(self.query_norm(queries), self.context_norm(visible))
        x = x + self.mlp(self.out_norm(x))
        x = self.decoder_transformer(x)
        patches = self.out_proj(x)  # (B, N_t, C*p*p)
        grid, c, p = _side(patches.shape[1]), self.channels, self.patch
        out = patches.reshape(b, grid, grid, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(b, c, grid * p, grid * p)


def _side(tokens: int) -> int:
    side = round(tokens**0.5)
    if side * side != tokens:
        raise ValueError(f"{tokens} tokens are not a square grid")
    return side
