"""Geometric and intensity transforms of image batches in torch: rotation, shift and zoom by one
resampler, a smooth deformation, down- and up-sampling, and Gaussian blur. Used to augment training pairs (:mod:`replicheck.train.augment`,
Dar et al.'s augmentation) and to embed rotated views of an image (:mod:`replicheck.embedders.deepssim`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """A (b, c, H, W) batch rotated by ``degrees`` about the centre (bilinear, border padding)."""
    n = x.shape[0]
    return warp(x, torch.full((n,), float(degrees), dtype=torch.float64), torch.zeros((n, 2), dtype=torch.float64),
                 torch.ones(n, dtype=torch.float64))


def warp(x: torch.Tensor, degrees: torch.Tensor, shift: torch.Tensor, zoom: torch.Tensor) -> torch.Tensor:
    """Rotate by ``degrees`` about the centre, enlarge by ``zoom`` and translate by ``shift`` (x, y) pixels."""
    h, w = x.shape[-2:]
    theta = torch.deg2rad(degrees)
    cos, sin = torch.cos(theta) / zoom, torch.sin(theta) / zoom
    # affine_grid maps output to input coordinates in [-1, 1] (x across W, y across H);
    # rotation in pixel space needs the aspect ratio when H != W.
    matrix = torch.zeros((x.shape[0], 2, 3), dtype=torch.float64, device=x.device)
    matrix[:, 0, 0] = cos
    matrix[:, 0, 1] = -sin * h / w
    matrix[:, 1, 0] = sin * w / h
    matrix[:, 1, 1] = cos
    matrix[:, 0, 2] = -2 * shift[:, 0] / w
    matrix[:, 1, 2] = -2 * shift[:, 1] / h
    grid = F.affine_grid(matrix.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian smoothing with one ``sigma`` (pixels) per image, reflected borders."""
    b = x.shape[0]
    radius = max(1, math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=x.device)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(x.dtype)  # (b, 2r + 1)
    y = F.pad(x.transpose(0, 1), (radius, radius, radius, radius), mode="reflect")  # (1, b, H + 2r, W + 2r)
    y = F.conv2d(y, kernel.view(b, 1, 1, -1), groups=b)
    y = F.conv2d(y, kernel.view(b, 1, -1, 1), groups=b)
    return y.transpose(0, 1)


def deform(x: torch.Tensor, coarse: torch.Tensor, amplitude: torch.Tensor) -> torch.Tensor:
    """A smooth deformation of the (b, c, H, W) batch: ``coarse`` (b, 2, g, g) displacements in
    [-1, 1] are interpolated bicubically to the grid and scaled to at most ``amplitude`` (b,)
    pixels, the small warps a generator's copy shows (bilinear, border padding)."""
    b, _, h, w = x.shape
    field = F.interpolate(coarse.to(x.dtype), size=(h, w), mode="bicubic", align_corners=True)
    field = field * amplitude.to(x.dtype).view(b, 1, 1, 1)
    identity = F.affine_grid(torch.eye(2, 3, dtype=x.dtype, device=x.device).expand(b, 2, 3), list(x.shape),
                             align_corners=False)
    step = torch.tensor([2.0 / w, 2.0 / h], dtype=x.dtype, device=x.device)  # pixels -> normalised (x, y)
    grid = identity + field.permute(0, 2, 3, 1) * step
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def resample(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Each image of the (b, c, H, W) batch area-averaged down by its ``factor`` (b,) in (0, 1] and
    interpolated back up (bilinear): the detail a generator loses at a lower resolution."""
    h, w = x.shape[-2:]
    out = torch.empty_like(x)
    for i, f in enumerate(factor.tolist()):
        small = (max(2, round(h * f)), max(2, round(w * f)))
        down = F.interpolate(x[i:i + 1], size=small, mode="area")
        out[i:i + 1] = F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False)
    return out
