"""Geometric and intensity transforms of image batches in torch: rotation, shift and zoom by one
resampler, and Gaussian blur. Used to augment training pairs (:mod:`replicheck.train.augment`,
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
