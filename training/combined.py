"""Combined objective: MultiMAE reconstruction + SoftCon on the global token, one masked pass.

    batch -> two views x, x' (augment.two_views: every modality and the validity mask of a
             view share one crop, flip and turn; spectral bands and DEM get noise and gain)
      online: x  -> MultiMAE's Dirichlet masking: K visible tokens over the input modalities
                 -> encoder -> [global token; K visible tokens]                  (B, 1 + K, D)
                    |- decoders -> every patch of every target modality -> L_mae(x)
                    '- global token -> projection head -> z                      (B, E)
      target: x' -> EMA copy of encoder and head, every token, no grad -> z'     (B, E)
      loss:   L = L_mae(x) + w * L_softcon(z, z', y)       w = --softcon.loss-weight

One masked forward serves both losses: the tokens hidden from the decoders are hidden from
the global token too, and the encoder costs what MultiMAE's does. As in CMAE (Huang et
al.), the online encoder sees a masked view and a momentum encoder the whole other view.
With `symmetric` (the default, as SoftCon's) the same runs with the views swapped and
each part is the mean of its two directions: the reconstruction part is then MultiMAE's
loss averaged over two augmented views, the contrastive part exactly SoftCon's loss
(training/softcon.py) with MultiMAE's masking in place of Siamese masking, so
`--softcon.mask-ratio` is not used.

Choices, stated where they matter:
- the reconstruction targets are the augmented views themselves, what the encoder sees
  (MAE reconstructs its augmented crop too); band noise is part of the target, a small
  floor of the spectral losses;
- land cover gives SoftCon's labels (`lc_fractions`), so it is never an encoder input,
  but stays a reconstruction target: not being an input, every one of its patches is
  masked and predicted from the spectral bands and DEM (criteria.multimae_loss);
- w = 0 gives the encoder and decoders exactly MultiMAE's gradients on these views (the
  head gets zero gradients); the SoftCon loss is still computed and logged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from training.criteria import multimae_loss
from training.modalities import valid_of
from training.multimae import MultiMAE
from training.softcon import SoftConModel, Variant


class CombinedModel(SoftConModel):
    """SoftConModel whose online MultiMAE keeps its decoders and reconstructs its view.

    SoftConModel removes the encoder's decoders before copying it as the EMA target; they
    are put back on the online side only, so the target stays an encoder and the EMA does
    not track them (`update_target`). Build the MultiMAE without land cover as an input
    (`ModelConfig(inputs=[...])`), and with targets: at least one decoder.
    """

    def __init__(
        self,
        model: MultiMAE,
        loss_weight: float = 1.0,
        head_hidden: int = 2048,
        head_out: int = 256,
        temperature: float = 0.1,
        soft_weight: float = 1.0,
        variant: Variant = "ce",
        symmetric: bool = True,
    ) -> None:
        if loss_weight < 0:
            raise ValueError(f"loss weight {loss_weight} must be >= 0")
        decoders = model.output_adapters
        if not len(decoders):
            raise ValueError("the MultiMAE has no output adapters: nothing to reconstruct")
        super().__init__(model, head_hidden, head_out, 0.0, temperature, soft_weight, variant,
                         symmetric)  # fmt: skip
        self.online.output_adapters = decoders
        self.loss_weight = loss_weight

    def reconstruct(
        self, view: dict[str, Tensor], generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """MultiMAE's loss on the masked view, its parts, and the view's online embedding z.

        view: the input modalities, the target modalities and `valid` (B, H, W) of one view.
        z (B, E) is the projection of the global token of the same masked pass.
        """
        mae = self.online
        encoded, visible = mae.forward_encoder(view, generator)  # (B, 1 + K, D)
        preds = mae.forward_decoder(encoded, visible)
        valid = valid_of(view).to(encoded.device)  # (B, H, W)
        loss, parts = multimae_loss(mae.cfg, preds, view, visible, valid, mae.patch)
        return loss, parts, self.online_head(encoded[:, 0])

    def forward(
        self,
        view1: dict[str, Tensor],
        view2: dict[str, Tensor],
        y: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """L_mae + loss_weight * L_softcon of masked view 1 against view 2 (and swapped).

        Parts (detached): each target modality's reconstruction loss, `multimae` and
        `softcon` (the two unweighted parts), `top1` and `soft_mass` (as SoftConModel's).
        """
        generator = generator or torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
        y = y.to(next(self.online.parameters()).device)
        pairs = [(view1, view2), (view2, view1)] if self.symmetric else [(view1, view2)]
        rec, con, top1 = [], [], []
        rec_parts: dict[str, list[Tensor]] = {}
        for online_view, target_view in pairs:
            r, parts, z = self.reconstruct(online_view, generator)
            c, t = self.contrast(z, target_view, y)
            rec.append(r)
            con.append(c)
            top1.append(t)
            for name, value in parts.items():
                rec_parts.setdefault(name, []).append(value)
        rec_loss, con_loss = torch.stack(rec).mean(), torch.stack(con).mean()
        loss = rec_loss + self.loss_weight * con_loss
        means = {name: torch.stack(values).mean() for name, values in rec_parts.items()}
        return loss, {
            **means, "multimae": rec_loss.detach(), "softcon": con_loss.detach(),
            "top1": torch.stack(top1).mean(), "soft_mass": self.soft_mass(y),
        }  # fmt: skip
