"""MultiMAE (Bachmann et al., 2022) for EO: input adapters -> ViT encoder -> output adapters.

    inputs {modality: image}
      -> input adapters: tokens per modality (+ positions, modality embedding)
      -> masking: Dirichlet shares, exactly K visible tokens over all modalities
      -> encoder: [global token; visible tokens] through pre-norm ViT blocks
      -> output adapters: every patch of every target modality, by cross-attention
    returns {modality: prediction} and {modality: visible-token mask}

`forward` is `forward_encoder` (masking + encoder) then `forward_decoder`; the combined
objective (training/combined.py) takes the global token of the same masked pass. `encode`
runs the encoder on every token of any subset of the input modalities, which is what
evaluation uses (S2 only, S2 + DEM, ...).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.adapters import InputAdapter, OutputAdapter
from training.config import SIZES, ModelConfig
from training.masking import sample_visible
from training.vit import Block, init_weights


class MultiMAE(nn.Module):
    """The multi-modal masked autoencoder of a ModelConfig."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim, depth, heads = SIZES[cfg.size]
        self.dim = dim
        self.input_size, self.patch, self.num_visible = cfg.geometry
        self.input_adapters = nn.ModuleDict(
            {
                m.name: InputAdapter(m, self.patch, dim, cfg.class_embed_dim)
                for m in cfg.input_modalities
            }
        )
        self.global_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.output_adapters = nn.ModuleDict(
            {
                m.name: OutputAdapter(
                    m, self.patch, dim, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads
                )
                for m in cfg.target_modalities
            }
        )
        self.apply(init_weights)
        nn.init.trunc_normal_(self.global_token, std=0.02)
        for module in self.modules():
            if isinstance(module, InputAdapter):  # as MAE: the projection is a linear layer
                w = module.proj.weight.data
                nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    def grid(self, x: Tensor) -> int:
        """Patches per side of an input image."""
        return x.shape[-1] // self.patch

    def _tokens(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {
            name: adapter(inputs[name])
            for name, adapter in self.input_adapters.items()
            if name in inputs
        }

    def _encode_tokens(self, x: Tensor) -> Tensor:
        x = torch.cat([self.global_token.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.encoder:
            x = block(x)
        return self.norm(x)

    def forward_encoder(
        self,
        inputs: dict[str, Tensor],
        generator: torch.Generator | None = None,
        num_visible: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Mask, then encode the visible tokens: (B, 1 + K, D), global token first.

        Also the visible masks {name: (B, N)} of the input modalities present, exactly K
        True per row over all of them (Dirichlet shares, `training.masking`).
        """
        tokens = self._tokens(inputs)
        if not tokens:
            raise ValueError(f"no input modality in {list(inputs)}; the model takes "
                             f"{list(self.input_adapters)}")  # fmt: skip
        names = list(tokens)
        first = tokens[names[0]]
        batch, device = first.shape[0], first.device
        sizes = [tokens[n].shape[1] for n in names]
        k = min(num_visible or self.num_visible, sum(sizes))
        if generator is None:
            seed = int(torch.randint(2**62, (1,)))  # the global CPU RNG: no device sync
            generator = torch.Generator(device=device).manual_seed(seed)
        visible, keep = sample_visible(batch, sizes, k, self.cfg.alpha, generator)
        visible, keep = visible.to(device), keep.to(device)  # (B, N_all), (B, k)
        all_tokens = torch.cat([tokens[n] for n in names], dim=1)  # (B, N_all, D)
        x = all_tokens.gather(1, keep[..., None].expand(-1, -1, self.dim))  # (B, k, D)
        masks = visible.split(sizes, dim=1)
        return self._encode_tokens(x), dict(zip(names, masks, strict=True))  # (B, 1 + k, D)

    def forward_decoder(self, encoded: Tensor, grid: int) -> dict[str, Tensor]:
        """Every target modality from the encoded tokens: {name: (B, C_out, H, W)}."""
        return {name: adapter(encoded, grid) for name, adapter in self.output_adapters.items()}

    def forward(
        self,
        inputs: dict[str, Tensor],
        generator: torch.Generator | None = None,
        num_visible: int | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Mask, encode the visible tokens, decode every target modality.

        Returns predictions {name: (B, C_out, H, W)} and visible masks {name: (B, N)} for
        the input modalities present (targets that were not inputs are wholly masked).
        """
        encoded, visible = self.forward_encoder(inputs, generator, num_visible)
        grid = self.grid(inputs[next(iter(visible))])  # positions follow the input
        return self.forward_decoder(encoded, grid), visible

    def encode(self, inputs: dict[str, Tensor]) -> Tensor:
        """All tokens of the given inputs through the encoder: (B, 1 + N, D), global first."""
        tokens = self._tokens(inputs)
        if not tokens:
            raise ValueError(f"none of {list(inputs)} is an input of this model "
                             f"({list(self.input_adapters)})")  # fmt: skip
        return self._encode_tokens(torch.cat(list(tokens.values()), dim=1))

    def features(self, inputs: dict[str, Tensor], pool: str = "mean") -> Tensor:
        """Pooled encoder features (B, D): the global token, or the mean of patch tokens."""
        x = self.encode(inputs)
        return x[:, 0] if pool == "global" else x[:, 1:].mean(dim=1)
