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
from training.adapters_eo import EOInputAdapter, SpatialOutputAdapter
from training.config import SIZES, ModelConfig
from training.masking import sample_visible
from training.modalities import ModelModality
from training.vit import Attention, Block, init_weights

RGB = "rgb"
NORM_RGB = "norm_rgb"  # the reference's second RGB decoder (patch-normalised target)
LC_STRIDE = 4  # the reference takes land cover at a quarter of the image's resolution


class MultiMAE(nn.Module):
    """The multi-modal masked autoencoder of a ModelConfig."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim, depth, heads = SIZES[cfg.size]
        self.dim = dim
        self.input_size, self.patch, self.num_visible = cfg.geometry
        self.reference = cfg.preset == "multimae-eo"
        self.input_adapters = nn.ModuleDict(
            {m.name: self._input_adapter(m, dim) for m in cfg.input_modalities}
        )
        self.global_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        # The reference MultiMAE has no norm after the encoder.
        self.norm = nn.Identity() if self.reference else nn.LayerNorm(dim, eps=1e-6)
        self.output_adapters = nn.ModuleDict(
            {name: self._output_adapter(m, task, dim) for name, m, task in self._targets()}
        )
        self.apply(init_weights)
        nn.init.trunc_normal_(self.global_token, std=0.02)
        for module in self.modules():
            if isinstance(module, InputAdapter | EOInputAdapter):  # MAE: proj as a linear layer
                w = module.proj.weight.data
                nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            if self.reference and isinstance(module, Attention):
                # the reference's fused qkv / kv: each of k and v as a (D, D) xavier matrix
                bound = (6 / (module.kv.weight.shape[0] / 2 + module.kv.weight.shape[1])) ** 0.5
                nn.init.uniform_(module.kv.weight, -bound, bound)

    def _input_adapter(self, m: ModelModality, dim: int) -> nn.Module:
        if not self.reference:
            return InputAdapter(m, self.patch, dim, self.cfg.class_embed_dim)
        # land cover at a quarter of the resolution: patch 8 // 4
        patch = self.patch // LC_STRIDE if m.categorical else self.patch
        return EOInputAdapter(m, patch, dim, self.cfg.class_embed_dim)

    def _targets(self) -> list[tuple[str, ModelModality, str]]:
        """(output name, target modality, task) of each decoder.

        The reference adds a second RGB decoder, `norm_rgb`, for patch-normalised pixels.
        """
        targets = [(m.name, m, m.name) for m in self.cfg.target_modalities]
        if self.reference and any(m.name == RGB for m in self.cfg.target_modalities):
            targets.append((NORM_RGB, next(m for _, m, _ in targets if m.name == RGB), RGB))
        return targets

    def _output_adapter(self, m: ModelModality, task: str, dim: int) -> nn.Module:
        c = self.cfg
        if not self.reference:
            return OutputAdapter(m, self.patch, dim, c.decoder_dim, c.decoder_depth,
                                 c.decoder_heads)  # fmt: skip
        patch = self.patch // LC_STRIDE if m.categorical else self.patch
        tasks = [x.name for x in c.all_modalities]
        return SpatialOutputAdapter(m, patch, dim, c.decoder_dim, c.decoder_depth,
                                    c.decoder_heads, tasks, task)  # fmt: skip

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

    def forward_decoder(self, encoded: Tensor, visible: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every target {name: (B, C_out, H, W)} (the reference's `norm_rgb` too).

        From the encoded tokens and the visible masks `forward_encoder` gave.
        """
        if not self.reference:
            grid = round(next(iter(visible.values())).shape[1] ** 0.5)  # positions follow inputs
            return {name: a(encoded, grid) for name, a in self.output_adapters.items()}
        k = encoded.shape[1] - 1  # known here: no host-device sync to count the masks
        mask = torch.cat(list(visible.values()), dim=1).to(torch.uint8)
        keep = mask.argsort(dim=1, descending=True, stable=True)[:, :k]  # (B, K), ascending
        layout = {name: v.shape[1] for name, v in visible.items()}
        return {name: a(encoded, keep, layout) for name, a in self.output_adapters.items()}

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
        return self.forward_decoder(encoded, visible), visible

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
