"""MultiMAE's multi-modal masking: Dirichlet shares per sample, exactly K visible tokens.

As the reference MultiMAE (`generate_random_masks`) does it, for a whole batch at once:

    shares  ~ Dirichlet(alpha, ..., alpha)            per sample, one share per modality
    counts  = round(shares * K)                        may sum to more or less than K
    chosen  = counts[m] tokens of modality m, uniformly without replacement (all of
              them when it has fewer), by selection sampling
    visible = the chosen tokens in random order, then the others in random order; the
              first K: a random removal from the chosen, or a random top-up from the rest

No Python loop over samples, no host-device synchronisation: every draw comes from the
generator, on its device.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rounded_counts(
    batch: int, modalities: int, num_visible: int, alpha: float, generator: torch.Generator
) -> Tensor:
    """(batch, modalities) round(Dirichlet shares * num_visible), before the exact-K step."""
    concentration = torch.full((batch, modalities), float(alpha), device=generator.device)
    # The op behind torch.distributions.Dirichlet, which takes no generator itself.
    shares = torch._sample_dirichlet(concentration, generator=generator)  # (B, M)
    return (shares * num_visible).round().long()


def sample_visible(
    batch: int, tokens: list[int], num_visible: int, alpha: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The visible tokens: (batch, N) bool, exactly K True per row, and (batch, K) indices.

    The indices are ascending, so visible tokens keep their order.

    Columns are the modalities' tokens one after another, `tokens[m]` of modality m.
    """
    total = sum(tokens)
    if not 0 < num_visible <= total:
        raise ValueError(f"{num_visible} visible tokens asked of {total} in all")
    device = generator.device
    counts = rounded_counts(batch, len(tokens), num_visible, alpha, generator)  # (B, M)

    # counts[:, m] tokens of each modality, a uniform subset: selection sampling (Knuth's
    # algorithm S) over the token positions, every sample and modality at once; a sort
    # of the noise would cost ~3x as much.
    sizes = torch.tensor(tokens, device=device, dtype=torch.float32)
    need = torch.minimum(counts.float(), sizes)  # (B, M): all of a modality's tokens at most
    noise = torch.rand(max(tokens), batch, len(tokens), generator=generator, device=device)
    takes = []
    for j in range(max(tokens)):  # a loop over token positions, never over samples
        take = noise[j] * (sizes - j) < need  # with probability need / tokens left
        takes.append(take)
        need = need - take.float()  # past a modality's last token: columns dropped below
    picked = torch.stack(takes, dim=2)  # (B, M, max tokens)
    if len(set(tokens)) == 1:
        chosen = picked.view(batch, total)  # (B, N)
    else:
        chosen = torch.cat([picked[:, m, :n] for m, n in enumerate(tokens)], dim=1)

    # Exactly K: the chosen in random order, then the others; the first K.
    tiebreak = torch.rand(batch, total, generator=generator, device=device)
    keep = ((~chosen).float() + tiebreak).topk(num_visible, dim=1, largest=False).indices
    visible = torch.zeros(batch, total, dtype=torch.bool, device=device)
    return visible.scatter_(1, keep, True), keep.sort(dim=1).values
