"""SoftCon: land-cover-guided soft contrastive pretraining (Wang, Albrecht and Zhu, 2024).

    batch -> two views x, x' (augment.two_views: one crop for all modalities of a view)
      online: x  -> Siamese masking (a random 1 - ratio of the patch tokens stays;
                    modality drop: some rows keep none of one input source's tokens)
                 -> MultiMAE encoder -> global token -> projection head -> z    (B, E)
      target: x' -> EMA copy of encoder and head, every token, no grad -> z'     (B, E)
      logits: l_ij = <z_i, z'_j> / temperature, z and z' L2-normalised         (B, B)
      labels: y_i from chip i's land-cover class fractions (label_vectors)      (B, K)
      loss:   each row's softmax against the soft target row T_i (soft_targets)

The paper's code is not released; this module is our reading of it, every choice stated
where it is made. The formulas:

    S_ij = <y_i, y_j> / (|y_i| |y_j|), and 0 when y_i or y_j is all zero   (in [0, 1])
    A_ij = 1 if i == j else w * S_ij                     (hard identity + weighted soft)
    T_ij = A_ij / sum_k A_ik                                    (soft_targets, rows sum 1)
    ce:  L = -1/B sum_i sum_j T_ij log softmax_j(l_i.)
    bce: L =  1/B sum_i sum_j BCE(sigmoid(l_ij), min(A_ij, 1))

With w = 1 the target row is the label similarity itself with the diagonal forced to 1
(a chip without labels keeps its own positive): identical labels give a uniform row,
pairwise disjoint labels give the identity, i.e. InfoNCE (MoCo/SimCLR). w = 0 is always
InfoNCE. The BCE variant scores every pair independently (as SigLIP), the target being A
unnormalised; it is summed over a row and averaged over rows, again as SigLIP.

Modality drop is ours, not the paper's (which has one input, S2): with S2 and DEM as
inputs, the target always sees both and random masking almost never hides a whole source,
so without it the encoder learns to embed chips from both sources together only, while
evaluation also feeds S2 alone and DEM alone. (MultiMAE's random per-modality token
budget does the same for reconstruction.)

The loss is computed on this rank's batch; gathering target embeddings across ranks (as
MoCo v3's concat_all_gather) is not done here.
"""

from __future__ import annotations

import copy
import math
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.multimae import MultiMAE

Variant = Literal["ce", "bce"]


def label_vectors(
    fractions: Tensor,
    mode: Literal["threshold", "fractions"] = "threshold",
    threshold: float = 0.05,
) -> Tensor:
    """Multi-label vectors (B, K) from land-cover class fractions (B, K).

    threshold: 1 where a class covers at least `threshold` of the chip (the rule of the
    evaluation's multi-label task), else 0. fractions: the fractions themselves.
    """
    if mode == "threshold":
        return (fractions >= threshold).float()
    if mode == "fractions":
        return fractions.float().clamp_min(0)
    raise ValueError(f"label mode {mode!r}: choose threshold or fractions")


def label_similarity(y: Tensor) -> Tensor:
    """S (B, B): cosine of the label vectors; 0 for any pair with an all-zero vector."""
    unit = y.float() / y.float().norm(dim=1, keepdim=True).clamp_min(1e-12)  # zero rows stay 0
    return unit @ unit.T


def target_affinity(y: Tensor, weight: float) -> Tensor:
    """A (B, B): 1 on the diagonal (each view's own pair), `weight` * S elsewhere."""
    eye = torch.eye(y.shape[0], dtype=torch.bool, device=y.device)
    return torch.where(eye, 1.0, weight * label_similarity(y))


def soft_targets(y: Tensor, weight: float) -> Tensor:
    """T (B, B): the hard identity plus `weight` times the label similarity, rows summing to 1.

    T_ij = A_ij / sum_k A_ik with A of `target_affinity` (see the module docstring).
    """
    if weight < 0:
        raise ValueError(f"soft weight {weight} must be >= 0")
    affinity = target_affinity(y, weight)
    return affinity / affinity.sum(dim=1, keepdim=True)


@overload
def softcon_loss(
    z_online: Tensor, z_target: Tensor, y: Tensor, temperature: float = ...,
    soft_weight: float = ..., variant: Variant = ..., return_target: Literal[False] = ...,
) -> Tensor: ...  # fmt: skip
@overload
def softcon_loss(
    z_online: Tensor, z_target: Tensor, y: Tensor, temperature: float = ...,
    soft_weight: float = ..., variant: Variant = ..., *, return_target: Literal[True],
) -> tuple[Tensor, Tensor]: ...  # fmt: skip
def softcon_loss(
    z_online: Tensor,
    z_target: Tensor,
    y: Tensor,
    temperature: float = 0.1,
    soft_weight: float = 1.0,
    variant: Variant = "ce",
    return_target: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Soft contrastive loss of online (B, E) against target (B, E) embeddings.

    Row i of the similarity matrix is online sample i against every target sample; both
    sides are L2-normalised here. Computed in float32 whatever the autocast. With
    `return_target`, also the (B, B) target used: T (ce) or min(A, 1) (bce).
    """
    z = F.normalize(z_online.float(), dim=-1)
    k = F.normalize(z_target.float(), dim=-1)
    logits = z @ k.T / temperature  # (B, B)
    if variant == "ce":
        target = soft_targets(y, soft_weight)
        loss = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    elif variant == "bce":
        target = target_affinity(y, soft_weight).clamp(0, 1)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss = bce.sum(dim=1).mean()
    else:
        raise ValueError(f"variant {variant!r}: choose ce or bce")
    return (loss, target) if return_target else loss


class ProjectionHead(nn.Module):
    """DINO's projection MLP: 3 linear layers with GELU, no BatchNorm.

    DINO's rather than BYOL's (Linear-BN-ReLU-Linear): without BatchNorm the embedding of
    a sample does not depend on the rest of the batch or on SyncBN across ranks. DINO's
    weight-normalised prototype layer is left out: here the output is compared directly.
    """

    def __init__(self, dim: int, hidden: int = 2048, out: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, out),
        )  # fmt: skip
        for m in self.mlp:
            if isinstance(m, nn.Linear):  # DINO's initialisation
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, dim) -> (B, out), not normalised."""
        return self.mlp(x)


@torch.no_grad()
def ema_update(
    target: nn.Module, online: nn.Module, momentum: float, ignore: tuple[str, ...] = ()
) -> None:
    """In place: every target parameter <- momentum * target + (1 - momentum) * online.

    Buffers are copied. The two modules must have the same parameter names, leaving out
    the online ones under an `ignore` prefix (parts the target has no copy of).
    """
    t_params = dict(target.named_parameters())
    o_params = {k: v for k, v in online.named_parameters() if not k.startswith(ignore)}
    if t_params.keys() != o_params.keys():
        diff = sorted(set(t_params) ^ set(o_params))
        raise ValueError(f"target and online modules differ in parameters: {diff[:10]}")
    targets: list[Tensor] = list(t_params.values())
    onlines: list[Tensor] = [o_params[name].detach() for name in t_params]
    with torch.no_grad():  # one fused op per step over all parameters, no Python loop
        # mul_ then add_ of a product: bit-identical to the formula (add_ with alpha fuses)
        torch._foreach_mul_(targets, momentum)
        torch._foreach_add_(targets, list(torch._foreach_mul(onlines, 1 - momentum)))
    o_buffers = dict(online.named_buffers())
    for name, buf in target.named_buffers():
        buf.copy_(o_buffers[name])


def ema_momentum(step: float, total: int, base: float = 0.996) -> float:
    """BYOL's schedule: 1 - (1 - base) * (cos(pi * step / total) + 1) / 2, from base to 1."""
    if total <= 0:
        raise ValueError(f"total steps {total} must be positive")
    progress = min(max(step, 0), total) / total
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


def siamese_mask(
    batch: int,
    tokens: int,
    ratio: float,
    generator: torch.Generator,
    sources: Tensor | None = None,
    drop: float = 0.0,
) -> Tensor:
    """(B, N) bool, True where visible: each row keeps max(1, round(N * (1 - ratio))) tokens.

    A uniform draw without replacement per sample (MSN's random masking of the anchor view).
    Every row keeps the same count, so visible tokens gather into one (B, K, D) tensor.
    With `sources` (N,) (each token's input source, e.g. 0 = s2, 1 = dem), a row is drawn,
    with probability `drop`, without one of its sources, as far as the count allows
    (its tokens go last in the draw): the encoder then learns to embed every input subset
    alone, which is how evaluation feeds it (S2 only, DEM only).
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"mask ratio {ratio} must be in [0, 1)")
    keep = max(1, round(tokens * (1 - ratio)))
    device = generator.device
    noise = torch.rand(batch, tokens, generator=generator, device=device)
    if sources is not None and drop > 0 and int(sources.max()) > 0:
        sources = sources.to(device)
        n_sources = int(sources.max()) + 1
        dropped = torch.randint(n_sources, (batch, 1), generator=generator, device=device)
        hit = torch.rand(batch, 1, generator=generator, device=device) < drop
        noise = noise + 2.0 * (hit & (sources[None] == dropped))
    rank = noise.argsort(dim=1).argsort(dim=1)  # a random permutation's positions
    return rank < keep  # on the generator's device


def all_tokens(model: MultiMAE, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Tokens of the given inputs, (B, N_all, D), and the source index of each, (N_all,).

    Tokens come in the model's modality order; sources are numbered in order of
    appearance (e.g. 0 = s2, 1 = dem).
    """
    tokens = model._tokens(inputs)
    if not tokens:
        raise ValueError(f"none of {list(inputs)} is an input of this model "
                         f"({list(model.input_adapters)})")  # fmt: skip
    source_of = {m.name: m.source for m in model.cfg.input_modalities}
    order = list(dict.fromkeys(source_of[n] for n in tokens))
    sources = torch.cat([torch.full((t.shape[1],), order.index(source_of[n]))
                         for n, t in tokens.items()])  # fmt: skip
    return torch.cat(list(tokens.values()), dim=1), sources


def keep_visible(x: Tensor, visible: Tensor, k: int | None = None) -> Tensor:
    """Tokens (B, N, D) where visible (B, N) bool, the same count K per row -> (B, K, D).

    Visible tokens keep their order, as in MultiMAE's `forward` after masking.
    """
    if visible.shape != x.shape[:2]:
        raise ValueError(f"mask {tuple(visible.shape)} for {tuple(x.shape[:2])} tokens")
    if k is None:
        k = int(visible[0].sum())  # a host-device sync: callers that know K pass it
    visible = visible.to(x.device)
    order = visible.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :k]
    return x.gather(1, order[..., None].expand(-1, -1, x.shape[-1]))


def encode_visible(
    model: MultiMAE, inputs: dict[str, Tensor], visible: Tensor | None = None
) -> Tensor:
    """Encode the visible tokens of the given inputs: (B, 1 + K, D), global token first.

    visible: (B, N_all) bool over `all_tokens`; None encodes every token (= `encode`).
    Reuses MultiMAE's tokenisation and encoder rather than repeating them.
    """
    x = all_tokens(model, inputs)[0]
    return model._encode_tokens(x if visible is None else keep_visible(x, visible))


class SoftConModel(nn.Module):
    """Online MultiMAE encoder + head, trained; their EMA copy as the target, not trained.

    The embedding of an image is the encoder's global token (the CLS-like token MultiMAE
    prepends), not a mean of patch tokens: under Siamese masking a mean would pool a
    different subset of patches in each view, while the global token summarises whatever
    is visible. It is also what `MultiMAE.features(pool="global")` returns downstream.

    The encoder's output adapters are removed (SoftCon has no decoder, and DDP would see
    parameters without gradients; training/combined.py gives them back to the online
    side). Every input modality of the encoder is used, so build it without land cover
    (`ModelConfig(inputs=[...])`): the labels come from land cover.
    The target starts as a copy of the encoder: initialise the encoder (`training.init`)
    before wrapping it, or call `reset_target` after.
    """

    def __init__(
        self,
        encoder: MultiMAE,
        head_hidden: int = 2048,
        head_out: int = 256,
        mask_ratio: float = 0.5,
        temperature: float = 0.1,
        soft_weight: float = 1.0,
        variant: Variant = "ce",
        symmetric: bool = True,
        modality_drop: float = 0.0,
    ) -> None:
        super().__init__()
        leak = [m.name for m in encoder.cfg.input_modalities if m.categorical]
        if leak:
            raise ValueError(f"input modalities {leak} are land cover, which SoftCon's labels "
                             "come from; build the encoder with ModelConfig(inputs=[...]) "
                             "without them")  # fmt: skip
        if not 0 <= mask_ratio < 1 or temperature <= 0 or soft_weight < 0:
            raise ValueError(f"need 0 <= mask_ratio < 1, temperature > 0, soft_weight >= 0; got "
                             f"{mask_ratio}, {temperature}, {soft_weight}")  # fmt: skip
        if not 0 <= modality_drop <= 1:
            raise ValueError(f"modality_drop {modality_drop} must be in [0, 1]")
        if variant not in ("ce", "bce"):
            raise ValueError(f"variant {variant!r}: choose ce or bce")
        encoder.output_adapters = nn.ModuleDict()
        self.online = encoder
        self.online_head = ProjectionHead(encoder.dim, head_hidden, head_out)
        self.target = copy.deepcopy(encoder).requires_grad_(False)
        self.target_head = copy.deepcopy(self.online_head).requires_grad_(False)
        self.mask_ratio, self.temperature, self.soft_weight = mask_ratio, temperature, soft_weight
        self.variant: Variant = variant
        self.symmetric, self.modality_drop = symmetric, modality_drop

    def embed_online(self, inputs: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        """Masked view through the online encoder and head: (B, E), not normalised."""
        x, sources = all_tokens(self.online, inputs)  # (B, N_all, D), (N_all,)
        visible = siamese_mask(x.shape[0], x.shape[1], self.mask_ratio, generator, sources,
                               self.modality_drop)  # fmt: skip
        k = max(1, round(x.shape[1] * (1 - self.mask_ratio)))  # as siamese_mask keeps
        encoded = self.online._encode_tokens(keep_visible(x, visible, k))  # (B, 1 + K, D)
        return self.online_head(encoded[:, 0])

    @torch.no_grad()
    def embed_target(self, inputs: dict[str, Tensor]) -> Tensor:
        """Full view through the EMA encoder and head: (B, E), no gradient."""
        return self.target_head(encode_visible(self.target, inputs, None)[:, 0])

    def contrast(
        self, z: Tensor, target_view: dict[str, Tensor], y: Tensor
    ) -> tuple[Tensor, Tensor]:
        """SoftCon loss of online embeddings z (B, E) against the target's view, and top-1.

        top-1 (detached): the share of rows whose own pair scores highest.
        """
        k = self.embed_target(target_view)
        loss = softcon_loss(z, k, y, self.temperature, self.soft_weight, self.variant)
        with torch.no_grad():  # instance discrimination: is the own pair the most similar?
            top1 = (z @ k.T).argmax(dim=1) == torch.arange(z.shape[0], device=z.device)
        return loss, top1.float().mean()

    def _direction(
        self, online_view: dict[str, Tensor], target_view: dict[str, Tensor], y: Tensor,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        return self.contrast(self.embed_online(online_view, generator), target_view, y)

    def forward(
        self,
        view1: dict[str, Tensor],
        view2: dict[str, Tensor],
        y: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of masked view 1 (online) against view 2 (target), and its parts.

        With `symmetric` (MoCo v3, BYOL), the mean with the swapped pair (masked view 2
        against view 1). Parts (detached): `softcon` the loss, `top1` the share of rows
        whose own pair scores highest, `soft_mass` the mean mass of T off the diagonal.
        """
        generator = generator or torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
        y = y.to(next(self.online.parameters()).device)
        loss, top1 = self._direction(view1, view2, y, generator)
        if self.symmetric:
            loss2, top1_2 = self._direction(view2, view1, y, generator)
            loss, top1 = (loss + loss2) / 2, (top1 + top1_2) / 2
        return loss, {"softcon": loss.detach(), "top1": top1, "soft_mass": self.soft_mass(y)}

    def soft_mass(self, y: Tensor) -> Tensor:
        """The mean mass of the soft target T off the diagonal, for labels y (B, K)."""
        return 1 - soft_targets(y, self.soft_weight).diagonal().mean()

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA step of the target encoder and head towards the online ones (after optimiser).

        The target is an encoder only: decoders the online side may have are not tracked.
        """
        ema_update(self.target, self.online, momentum, ignore=("output_adapters.",))
        ema_update(self.target_head, self.online_head, momentum)

    def reset_target(self) -> None:
        """Make the target an exact copy of the online encoder and head again."""
        self.update_target(0.0)
