"""Batched augmentation on the training device, fused with normalisation.

Whole uint8 batches go in, normalised float batches come out. Random crop and flip work on the
uint8 tensor (cheap gathers); colour jitter and normalisation run once on the float tensor.
Jitter applies brightness, contrast, saturation, hue in that fixed order, each factor drawn per
image; hue is a rotation in YIQ space, a close and much cheaper stand-in for an HSV shift.
"""

from __future__ import annotations

import math

import torch

from studyrunner.config import AugmentConfig

__all__ = ["random_crop", "random_resized_crop", "random_flip", "color_jitter", "normalize", "augment_batch"]

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma weights, as torchvision's rgb_to_grayscale


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Per-image random crop of the zero-padded batch back to its size (RandomCrop(S, padding))."""
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen, device=gen.device).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen, device=gen.device).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # [N,1,H,1]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # [N,1,1,W]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Horizontal flip of each image with probability 0.5."""
    flip = torch.rand(x.shape[0], generator=gen, device=gen.device).to(x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _factors(n: int, spread: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    u = torch.rand(n, generator=gen, device=gen.device).to(device)
    return (1.0 - spread + 2.0 * spread * u)[:, None, None, None]


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b)[:, None]


def color_jitter(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter of a float batch in [0, 1]."""
    n, dev = x.shape[0], x.device
    if cfg.brightness > 0:
        x = (x * _factors(n, cfg.brightness, gen, dev)).clamp(0, 1)
    if cfg.contrast > 0:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (mean + (x - mean) * _factors(n, cfg.contrast, gen, dev)).clamp(0, 1)
    if cfg.saturation > 0:
        gray = _gray(x)
        x = (gray + (x - gray) * _factors(n, cfg.saturation, gen, dev)).clamp(0, 1)
    if cfg.hue > 0:
        x = _rotate_hue(x, (torch.rand(n, generator=gen, device=gen.device).to(dev) * 2 - 1) * cfg.hue)
    return x


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _rotate_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate chroma by ``turns`` (fractions of a full circle) per image, in YIQ space."""
    to_yiq = _RGB2YIQ.to(x.device, x.dtype)
    to_rgb = torch.linalg.inv(to_yiq)
    theta = turns * 2 * math.pi
    cos, sin = theta.cos(), theta.sin()
    rot = torch.zeros(x.shape[0], 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = to_rgb @ rot @ to_yiq  # [N,3,3]
    return torch.einsum("nij,njhw->nihw", m, x).clamp(0, 1)


RATIO = (3 / 4, 4 / 3)  # random_resized_crop: range of the crop's aspect ratio (width / height)


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """Per image, a crop covering a random share of the area (``scale``) at a random aspect ratio
    (log-uniform in ``RATIO``) at a random place, resized back to the batch's size (bilinear), all
    images at once through one affine sampling grid. uint8 in, float in [0, 1] out."""
    n, _, h, w = x.shape

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(n, generator=gen, device=gen.device)).to(x.device)

    area = uniform(*scale)
    ratio = torch.exp(uniform(math.log(RATIO[0]), math.log(RATIO[1])))
    cw = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width and height as shares of the image's
    ch = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (uniform(0.0, 1.0) * (1 - cw) + cw / 2) * 2 - 1  # crop centre in [-1, 1] grid coordinates
    cy = (uniform(0.0, 1.0) * (1 - ch) + ch / 2) * 2 - 1
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = cw, cx, ch, cy
    grid = torch.nn.functional.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    out = torch.nn.functional.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.div_(255.0).clamp_(0.0, 1.0)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] float batch -> (x/255 - mean) / std as one multiply-add."""
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1) if x.dtype == torch.uint8 else (1.0 / std).view(1, -1, 1, 1)
    return x.float() * scale - (mean / std).view(1, -1, 1, 1)


def augment_batch(
    x: torch.Tensor, cfg: AugmentConfig, mean: torch.Tensor, std: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """The training transform of a uint8 batch: crop (padded or random-resized), flip, jitter, normalise."""
    x = random_crop(x, cfg.crop_padding, gen)
    if cfg.random_resized_crop:
        x = random_resized_crop(x, cfg.resized_crop_scale, gen)
    if cfg.flip:
        x = random_flip(x, gen)
    if cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue:
        x = color_jitter(x if x.is_floating_point() else x.float() / 255.0, cfg, gen)
    return normalize(x, mean, std)
