"""Batch augmentations equal their per-sample definitions (no loop over samples inside)."""

from __future__ import annotations

import torch

from training.augment import flip_rot90
from training.config import ModelConfig, PretrainConfig
from training.step import prepare_batch


def test_flip_rot90_equals_flip_then_quarter_turns_per_sample() -> None:
    g = torch.Generator().manual_seed(0)
    flips = torch.tensor([False, True] * 4)
    turns = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    for x in (torch.randn(8, 3, 5, 5, generator=g), torch.randint(0, 9, (8, 5, 5), generator=g)):
        expected = torch.stack([
            torch.rot90(x[i].flip(-1) if flips[i] else x[i], int(turns[i]), dims=(-2, -1))
            for i in range(8)
        ])  # fmt: skip
        assert torch.equal(flip_rot90(x, flips, turns), expected)


def test_random_crops_equal_slicing_each_sample() -> None:
    cfg = PretrainConfig(model=ModelConfig(modalities="bandgroups", dem_standardise=False))
    g = torch.Generator().manual_seed(0)
    batch = {
        "s2": torch.randn(6, 12, 64, 64, generator=g),
        "dem": torch.randn(6, 1, 64, 64, generator=g),
        "lc": torch.randint(0, 11, (6, 64, 64), generator=g),
        "valid": torch.rand(6, 64, 64, generator=g) > 0.1,
    }
    inputs, valid = prepare_batch(batch, cfg, torch.Generator().manual_seed(1), torch.device("cpu"))
    again = torch.Generator().manual_seed(1)  # the same draws, in the same order
    tops = torch.randint(0, 9, (6,), generator=again).tolist()
    lefts = torch.randint(0, 9, (6,), generator=again).tolist()
    window = [(slice(t, t + 56), slice(s, s + 56)) for t, s in zip(tops, lefts, strict=True)]
    assert torch.equal(valid, torch.stack([batch["valid"][i][w] for i, w in enumerate(window)]))
    assert torch.equal(inputs["lc"], torch.stack([batch["lc"][i][w] for i, w in enumerate(window)]))
    dem = torch.stack([batch["dem"][i][(slice(None), *w)] for i, w in enumerate(window)])
    assert torch.equal(inputs["dem"], dem)
