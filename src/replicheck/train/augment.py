"""Structure-preserving random augmentations of image batches, in torch.

The transformations a replica may have undergone and that DeepSSIM training must make the
embedding ignore (Scardace et al., arXiv 2509.16582, and its later version): flips, rotation
up to +-10 degrees, gamma contrast 0.5-1.5, a small affine (+-5 degrees, +-4 px), zoom
0.9-1.05, a smooth multiplicative bias field and light Gaussian smoothing; and, as in the
compound copies generators emit (issue #18), a smooth deformation of up to 1.5 px, detail lost by
down- and up-sampling, and Gaussian noise. Each is applied with its own probability,
independently per image; all randomness comes from one ``torch.Generator``, so a seeded
generator gives the same batch every time.

Intensity changes (gamma, bias field) act on each image min-max scaled to [0, 1] and are mapped
back to the image's original range, so they work on z-scored data too. The geometric changes
(rotation, affine, zoom) are composed into one affine matrix per image and resampled once
with :func:`torch.nn.functional.grid_sample` (bilinear, border padding); flips are exact
index reversals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..transforms import blur, deform, resample, warp

__all__ = ["Augmentation", "augment", "dar_augment", "DAR_ROTATE"]

DAR_ROTATE = 5.0  # largest rotation in degrees of Dar et al.'s augmentation


@dataclass(frozen=True)
class Augmentation:
    """Probabilities (``p_*``, in [0, 1]) and ranges of each transformation.

    Angles in degrees, shifts in pixels of the batch's grid, ``zoom`` > 1 enlarges the content,
    ``bias`` is the largest log-amplitude of the bias field (0.3: intensities scaled by up to
    e^0.3 = 1.35 or down to 0.74), ``blur_sigma`` the Gaussian's standard deviation in pixels,
    ``deform`` the largest displacement of the smooth deformation in pixels, ``resample`` the
    range of the down-sampling factor, ``noise`` that of the noise's standard deviation as a share
    of the image's intensity range.
    """

    p_flip: float = 1 / 3  # per axis
    p_rotate: float = 0.5
    rotate: float = 10.0
    p_gamma: float = 0.5
    gamma: tuple[float, float] = (0.5, 1.5)
    p_affine: float = 0.3
    affine_degrees: float = 5.0
    affine_shift: float = 4.0
    p_zoom: float = 0.3
    zoom: tuple[float, float] = (0.9, 1.05)
    p_bias: float = 0.3
    bias: float = 0.3
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    p_deform: float = 0.3
    deform: float = 1.5
    p_resample: float = 0.2
    resample: tuple[float, float] = (0.5, 0.85)
    p_noise: float = 0.3
    noise: tuple[float, float] = (0.005, 0.04)

    def __post_init__(self):
        for name in ("p_flip", "p_rotate", "p_gamma", "p_affine", "p_zoom", "p_bias", "p_blur", "p_deform",
                     "p_resample", "p_noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if self.resample[1] > 1.0:
            raise ValueError(f"resample factors must be at most 1 (down-sampling), got {self.resample}")
        for name in ("gamma", "zoom", "blur_sigma", "resample", "noise"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be a range 0 < low <= high, got {getattr(self, name)}")


NONE = Augmentation(p_flip=0, p_rotate=0, p_gamma=0, p_affine=0, p_zoom=0, p_bias=0, p_blur=0, p_deform=0,
                    p_resample=0, p_noise=0)


def augment(x: torch.Tensor, *, generator: torch.Generator | None = None, config: Augmentation = Augmentation()) -> torch.Tensor:
    """A randomly augmented copy of the (b, 1, H, W) batch ``x``; ``x`` itself is not changed.

    Every image draws its own transformations. The random numbers are drawn on the CPU from
    ``generator`` (the global generator when None) in a fixed order, whatever ``config`` says,
    so two calls with equally seeded generators give identical results on any device.
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"x must have shape (b, 1, H, W), got {tuple(x.shape)}")
    b = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(b, generator=generator, dtype=torch.float64)).to(x.device)

    def chance(p: float) -> torch.Tensor:
        return torch.rand(b, generator=generator, dtype=torch.float64).to(x.device) < p

    flip_x, flip_y = chance(config.p_flip), chance(config.p_flip)
    do_rotate, angle = chance(config.p_rotate), uniform(-config.rotate, config.rotate)
    do_gamma, gamma = chance(config.p_gamma), _log_uniform(uniform(0, 1), *config.gamma)
    do_affine, affine_angle = chance(config.p_affine), uniform(-config.affine_degrees, config.affine_degrees)
    shift = torch.stack([uniform(-config.affine_shift, config.affine_shift) for _ in range(2)], dim=1)
    do_zoom, zoom = chance(config.p_zoom), uniform(*config.zoom)
    do_bias = chance(config.p_bias)
    coarse = (2 * torch.rand((b, 1, 4, 4), generator=generator, dtype=torch.float64) - 1).to(x.device)
    do_blur, sigma = chance(config.p_blur), uniform(*config.blur_sigma)
    # drawn after the others, so the draws above are those of a generator seeded before they existed
    do_deform = chance(config.p_deform)
    displacement = (2 * torch.rand((b, 2, 4, 4), generator=generator, dtype=torch.float64) - 1).to(x.device)
    do_resample, factor = chance(config.p_resample), uniform(*config.resample)
    do_noise, noise_sigma = chance(config.p_noise), _log_uniform(uniform(0, 1), *config.noise)
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)

    out = x.clone()
    if bool((do_gamma | do_bias).any()):
        out = _intensity(out, torch.where(do_gamma, gamma, 1.0), torch.where(do_bias.view(-1, 1, 1, 1), coarse, 0.0), config.bias)
    geometric = do_rotate | do_affine | do_zoom
    if bool(geometric.any()):
        degrees = torch.where(do_rotate, angle, 0.0) + torch.where(do_affine, affine_angle, 0.0)
        warped = warp(out, degrees, torch.where(do_affine.view(-1, 1), shift, 0.0), torch.where(do_zoom, zoom, 1.0))
        out = torch.where(geometric.view(-1, 1, 1, 1), warped, out)
    out = torch.where(flip_x.view(-1, 1, 1, 1), out.flip(-1), out)
    out = torch.where(flip_y.view(-1, 1, 1, 1), out.flip(-2), out)
    if bool(do_deform.any()):
        out = torch.where(do_deform.view(-1, 1, 1, 1), deform(out, displacement, torch.full((b,), config.deform)), out)
    if bool(do_blur.any()):
        out = torch.where(do_blur.view(-1, 1, 1, 1), blur(out, sigma), out)
    if bool(do_resample.any()):
        out = torch.where(do_resample.view(-1, 1, 1, 1), resample(out, torch.where(do_resample, factor, 1.0)), out)
    if bool(do_noise.any()):
        flat = x.reshape(b, -1)
        span = (flat.max(dim=1).values - flat.min(dim=1).values).view(-1, 1, 1, 1)
        out = out + torch.where(do_noise, noise_sigma, 0.0).to(x.dtype).view(-1, 1, 1, 1) * span * noise
    return out


def _log_uniform(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Log-uniform in [low, high]: gamma 0.5 and 2 are then equally likely for a range (0.5, 2)."""
    return torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))


def _intensity(x: torch.Tensor, gamma: torch.Tensor, coarse: torch.Tensor, bias: float) -> torch.Tensor:
    """Gamma and a multiplicative bias field applied in each image's own [min, max] range."""
    flat = x.reshape(x.shape[0], -1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    span = (flat.max(dim=1).values.view(-1, 1, 1, 1) - low).clamp_min(1e-12)
    u = ((x - low) / span).clamp(0, 1)
    u = u.pow(gamma.to(x.dtype).view(-1, 1, 1, 1))
    field = torch.exp(bias * F.interpolate(coarse.to(x.dtype), size=x.shape[-2:], mode="bicubic", align_corners=True))
    u = (u * field).clamp(0, 1)
    return u * span + low


def dar_augment(x: torch.Tensor, *, generator: torch.Generator | None = None, degrees: float = DAR_ROTATE) -> torch.Tensor:
    """Dar et al.'s augmentation of a (b, 1, H, W) or (b, 1, Z, Y, X) batch; ``x`` is not changed.

    Each image is rotated by an angle uniform in [-``degrees``, ``degrees``] about its centre, in
    the (y, x) plane (every slice of a volume by the same angle; bilinear, border padding; the
    resampler of :mod:`replicheck.transforms`), then each spatial axis is flipped with probability
    1/2. Random numbers come from ``generator`` on the CPU, so a seeded generator repeats a batch.
    """
    if x.ndim not in (4, 5) or x.shape[1] != 1:
        raise ValueError(f"x must have shape (b, 1, H, W) or (b, 1, Z, Y, X), got {tuple(x.shape)}")
    b, ndim = x.shape[0], x.ndim - 2
    angle = (2 * torch.rand(b, generator=generator, dtype=torch.float64) - 1) * degrees
    flip = torch.rand((b, ndim), generator=generator, dtype=torch.float64) < 0.5
    planes = x.reshape((-1, 1) + tuple(x.shape[-2:]))  # 3D: (b * Z, 1, Y, X), volume-major
    per_plane = angle.repeat_interleave(planes.shape[0] // b).to(x.device)
    out = warp(planes, per_plane, torch.zeros((len(planes), 2), dtype=torch.float64, device=x.device),
                torch.ones(len(planes), dtype=torch.float64, device=x.device)).reshape(x.shape)
    shape = (-1,) + (1,) * (x.ndim - 1)
    for axis in range(ndim):
        out = torch.where(flip[:, axis].to(x.device).view(shape), out.flip(2 + axis), out)
    return out
