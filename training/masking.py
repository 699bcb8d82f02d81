"""MultiMAE's multi-modal masking: Dirichlet shares per sample, exactly K visible tokens.

For each sample, the share of visible tokens given to each modality is drawn from a
symmetric Dirichlet(alpha); the shares become integer counts summing to exactly
`num_visible` (largest remainders; a modality never gets more tokens than it has), and
each modality's visible tokens are a uniform draw without replacement from its grid.
"""

from __future__ import annotations

import torch
from torch import Tensor


def visible_counts(
    batch: int, tokens: list[int], num_visible: int, alpha: float, generator: torch.Generator
) -> Tensor:
    """(batch, modalities) visible-token counts; each row sums to num_visible."""
    if num_visible > sum(tokens):
        raise ValueError(f"{num_visible} visible tokens but only {sum(tokens)} in all")
    concentration = torch.full((len(tokens),), float(alpha))
    # torch.distributions has no generator argument: draw Gammas through the generator's
    # seed so the masks are reproducible for a given seed.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        shares = torch.distributions.Dirichlet(concentration).sample((batch,))  # (B, M)
    capacity = torch.tensor(tokens, dtype=torch.float64)
    counts = torch.zeros(batch, len(tokens), dtype=torch.long)
    for b in range(batch):
        counts[b] = _apportion(shares[b].double(), capacity, num_visible)
    return counts


def _apportion(shares: Tensor, capacity: Tensor, total: int) -> Tensor:
    """Integer counts ~ shares * total, summing to total, each within its capacity."""
    counts = torch.zeros_like(capacity, dtype=torch.long)
    open_ = capacity > 0
    left = total
    while left > 0:
        want = shares * open_ / (shares * open_).sum().clamp_min(1e-12) * left
        room = capacity - counts
        add = torch.minimum(want.floor(), room).long()
        if add.sum() == 0:  # hand out the remainder by largest fractional part
            frac = torch.where(room > 0, want - want.floor() + 1e-9 * shares, torch.tensor(-1.0))
            add = torch.zeros_like(counts)
            add[int(frac.argmax())] = 1
        counts += add
        left = total - int(counts.sum())
        open_ = (capacity - counts) > 0
    return counts


def sample_masks(counts: Tensor, tokens: list[int], generator: torch.Generator) -> list[Tensor]:
    """Per modality a (B, N_m) bool mask, True where visible, with counts[:, m] Trues."""
    masks = []
    for m, n in enumerate(tokens):
        noise = torch.rand(counts.shape[0], n, generator=generator)
        rank = noise.argsort(dim=1).argsort(dim=1)  # a random permutation's positions
        masks.append(rank < counts[:, m : m + 1])
    return masks
