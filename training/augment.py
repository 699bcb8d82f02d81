"""Multispectral augmentations for two-view pretraining (SoftCon), on batched tensors.

Every function takes a batch and a `torch.Generator` and is reproducible for a given seed.

    two_views({"s2": (B, 12, H, W), "dem": (B, 1, H, W), "lc": (B, H, W), ...}, size, g)
      -> view 1, view 2: each {name: (B, C, size, size)}; non-image entries pass through

Geometry (random resized crop, horizontal flip, quarter turns) is drawn once per view and
applied to every image of that view, so Sentinel-2, DEM, land cover and the validity mask
stay pixel-aligned; the two views draw theirs independently. Float images are resampled
bilinearly, integer and bool images (class indices, masks) by nearest neighbour.

Photometric changes act per band, never across bands: Gaussian noise with a per-band
standard deviation, and a per-band gain and offset. There is no colour jitter: hue and
saturation are defined on RGB and would mix bands in ways that have no physical meaning
for the other nine. The loader gives per-band standardised values (z-scores); a change of
reflectance by a factor g in a band of mean m and deviation s moves a z-score z to
g * z + (g - 1) * m / s, which is why brightness is a gain *and* an offset here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Geometry:
    """One view's geometric transform, per sample of the batch."""

    boxes: Tensor  # (B, 4) float: top, left, height, width of the crop in source px
    flips: Tensor  # (B,) bool: mirror left-right after the crop
    turns: Tensor  # (B,) long in 0..3: quarter turns (rot90) after the flip


def _uniform(shape: tuple[int, ...], low: float, high: float, g: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=g, device=g.device)


def sample_geometry(
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Geometry:
    """Random resized crop boxes (as torchvision's), flips and quarter turns.

    The crop covers a uniform `scale` share of the image area with a log-uniform aspect
    `ratio`. torchvision retries boxes that do not fit; here the sides are clamped to the
    image instead, which keeps the draw a fixed number of random numbers per sample.
    """
    area = _uniform((batch,), *scale, generator) * height * width
    aspect = _uniform((batch,), math.log(ratio[0]), math.log(ratio[1]), generator).exp()  # w/h
    h = (area / aspect).sqrt().clamp(1.0, height)
    w = (area * aspect).sqrt().clamp(1.0, width)
    top = _uniform((batch,), 0.0, 1.0, generator) * (height - h)
    left = _uniform((batch,), 0.0, 1.0, generator) * (width - w)
    flips = torch.rand(batch, generator=generator, device=generator.device) < 0.5
    turns = torch.randint(0, 4, (batch,), generator=generator, device=generator.device)
    return Geometry(torch.stack([top, left, h, w], dim=1), flips, turns)  # generator's device


def resized_crop(x: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Crop each sample's box and resample it to size x size.

    x: (B, C, H, W) or (B, H, W); float -> bilinear, integer/bool -> nearest. Output pixel
    j samples the box at its centre, top + (j + 0.5) * height / size (source pixel i
    spanning [i, i + 1)); samples beyond the outer pixel centres repeat the border.
    """
    img = x[:, None] if x.ndim == 3 else x
    b, _, h, w = img.shape
    steps = (torch.arange(size, dtype=torch.float32, device=boxes.device) + 0.5) / size  # (S,)
    top, left, box_h, box_w = boxes.float().unbind(1)
    ys = top[:, None] + steps[None] * box_h[:, None]  # (B, S) source px
    xs = left[:, None] + steps[None] * box_w[:, None]
    gy, gx = 2 * ys / h - 1, 2 * xs / w - 1  # grid_sample's [-1, 1] with align_corners=False
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    categorical = not img.is_floating_point()
    src = img.float() if categorical else img
    out = F.grid_sample(
        src, grid.to(src.device, src.dtype), mode="nearest" if categorical else "bilinear",
        padding_mode="border", align_corners=False,
    )  # fmt: skip  # (B, C, S, S)
    if categorical:
        out = out.round().to(x.dtype)
    return out[:, 0] if x.ndim == 3 else out


def flip_rot90(x: Tensor, flips: Tensor, turns: Tensor) -> Tensor:
    """Per sample: mirror the last axis where `flips`, then rotate by `turns` quarter turns.

    x: (B, ..., S, S); square, since a quarter turn swaps height and width.
    """
    s = x.shape[-1]
    # Where each output pixel comes from, for (flip, turns): the same ops on an index grid.
    grid = torch.arange(s * s, device=x.device).view(s, s)
    sources = torch.stack([
        torch.stack([torch.rot90(g, k, dims=(0, 1)) for k in range(4)])
        for g in (grid, grid.flip(-1))
    ])  # fmt: skip  # (2, 4, S, S)
    index = sources[flips.to(x.device).long(), turns.to(x.device)].flatten(1)  # (B, S*S)
    flat = x.flatten(-2)  # (B, ..., S*S)
    index = index.view(index.shape[0], *[1] * (flat.ndim - 2), -1).expand_as(flat)
    return flat.gather(-1, index).view(x.shape)  # one gather: no per-sample branch


def apply_geometry(x: Tensor, geometry: Geometry, size: int) -> Tensor:
    """Crop, resize, flip and turn one image tensor (B, C, H, W) or (B, H, W)."""
    return flip_rot90(resized_crop(x, geometry.boxes, size), geometry.flips, geometry.turns)


def random_resized_crop(
    x: Tensor, size: int, generator: torch.Generator, scale: tuple[float, float] = (0.25, 1.0)
) -> Tensor:
    """A random resized crop of each sample, the same box for all its channels."""
    geometry = sample_geometry(x.shape[0], x.shape[-2], x.shape[-1], generator, scale)
    return resized_crop(x, geometry.boxes, size)


def random_flip_rot90(x: Tensor, generator: torch.Generator) -> Tensor:
    """A random flip and quarter turn of each (square) sample."""
    flips = torch.rand(x.shape[0], generator=generator, device=generator.device) < 0.5
    turns = torch.randint(0, 4, (x.shape[0],), generator=generator, device=generator.device)
    return flip_rot90(x, flips, turns)


def band_noise(x: Tensor, generator: torch.Generator, std: float = 0.05) -> Tensor:
    """Add Gaussian noise whose deviation is drawn per sample and band from U(0, std).

    x: (B, C, H, W) float, standardised per band, so `std` is in units of a band's spread.
    """
    if std <= 0:
        return x
    b, c = x.shape[:2]
    sigma = _uniform((b, c, 1, 1), 0.0, std, generator)
    noise = torch.randn(x.shape, generator=generator, device=generator.device)
    return x + (sigma * noise).to(x.device, x.dtype)


def band_gain(
    x: Tensor, generator: torch.Generator, scale: float = 0.1, shift: float = 0.1
) -> Tensor:
    """Per-band gain and offset: x * g + o, g ~ U(1 - scale, 1 + scale), o ~ U(-shift, shift).

    Drawn per sample and band: the brightness change of the module docstring (on
    standardised values a reflectance gain is a gain plus an offset).
    """
    if scale <= 0 and shift <= 0:
        return x
    b, c = x.shape[:2]
    gain = _uniform((b, c, 1, 1), 1 - scale, 1 + scale, generator).to(x.device, x.dtype)
    offset = _uniform((b, c, 1, 1), -shift, shift, generator).to(x.device, x.dtype)
    return x * gain + offset


def two_views(
    batch_inputs: dict[str, Tensor],
    size: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.25, 1.0),
    noise: float = 0.05,
    gain: float = 0.1,
    shift: float = 0.1,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Two independently augmented views of a batch; within a view all images share a crop.

    Images are the tensors with at least 3 dims ((B, C, H, W) or (B, H, W)); they must share
    H and W. Float (B, C, H, W) images also get band noise and gain (DEM included: on
    standardised elevation a gain and offset is a change of relief and base level).
    Everything else (e.g. `lc_fractions` (B, K), metadata) passes through unchanged.
    """
    images = {k: v for k, v in batch_inputs.items() if isinstance(v, Tensor) and v.ndim >= 3}
    if not images:
        raise ValueError(f"no image tensors in {list(batch_inputs)}")
    grids = {tuple(v.shape[-2:]) for v in images.values()}
    if len(grids) != 1:
        raise ValueError(
            f"images differ in size: { {k: tuple(v.shape) for k, v in images.items()} }"
        )
    h, w = grids.pop()
    batch = next(iter(images.values())).shape[0]
    views = []
    for _ in range(2):
        geometry = sample_geometry(batch, h, w, generator, scale)
        view = dict(batch_inputs)
        for name, x in images.items():
            x = apply_geometry(x, geometry, size)
            if x.is_floating_point() and x.ndim == 4:
                x = band_gain(band_noise(x, generator, noise), generator, gain, shift)
            view[name] = x
        views.append(view)
    return views[0], views[1]
