"""The image ops of BCL's RandAugment: batched float kernels with a strength per sample.

Kept apart from :mod:`sdclr.data.randaugment`, which holds the op table (ids, names, value
ranges), the random plan of a call and how a batch applies it: each kernel here is a plain
function of its images and values, with no random draw, so it reads, and is checked
against torchvision and BCL's PIL calls (tests/test_randaugment.py), on its own. What
each op does and where it follows torchvision rather than PIL is in that module's docstring.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sdclr.data.augment import GRAY_WEIGHTS, rgb_to_grayscale

CUTOUT_FILL = (125, 123, 114)  #: BCL's Cutout colour (8-bit RGB)
_U8 = 255.999  # torchvision's float → uint8 scale (255 + 1 − 1e-3): floor(x·255.999) ∈ 0..255


def per_sample(f: torch.Tensor) -> torch.Tensor:
    """A per-sample value (n,) as n×1×1×1, to broadcast over each sample's C×H×W."""
    return f.view(-1, 1, 1, 1)


# ------------------------------------------------------------------ geometric ops: one warp


def affine_theta(op: torch.Tensor, value: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """n×2×3 ``affine_grid`` matrices (align_corners=False) for ops 0–4 with signed ``value``.

    PIL's ``transform(AFFINE, (a, b, c, d, e, f))`` samples the input at
    ``(a·x + b·y + c, d·x + e·y + f)`` for the output pixel centre (x, y) (pixel-edge
    coordinates, origin at the top-left corner). With ``x = W(u + 1)/2``, ``y = H(v + 1)/2``
    for normalised (u, v), a matrix M with offset t becomes ``S⁻¹MS`` with offset
    ``S⁻¹(Mc + t − c)``, S = diag(W/2, H/2), c = (W/2, H/2):

    * ShearX v, M = [[1, v], [0, 1]]: [[1, vH/W], [0, 1]], offset (vH/W, 0) — the shear is about
      the top-left corner, as PIL's (and torchvision's RandAugment, ``center=[0, 0]``);
    * TranslateX v (pixels), t = (v, 0): offset (2v/W, 0); ShearY / TranslateY likewise;
    * Rotate a (PIL's ``rotate``: counter-clockwise about the centre): input = c + R(out − c)
      with R = [[cos a, −sin a], [sin a, cos a]] in y-down coordinates; no offset.

    A sample whose op is not geometric gets the identity. Only one op per sample is non-zero,
    so the entries are sums.
    """
    zero = torch.zeros_like(value)
    shx = torch.where(op == 0, value, zero) * (height / width)
    shy = torch.where(op == 1, value, zero) * (width / height)
    tx = torch.where(op == 2, value, zero) * 2.0  # TranslateX's value is a fraction of W: 2·vW/W
    ty = torch.where(op == 3, value, zero) * 2.0
    angle = torch.where(op == 4, value, zero) * (math.pi / 180.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack((cos, shx - sin * (height / width), shx + tx,
                         shy + sin * (width / height), cos, shy + ty), dim=1)
    return theta.view(-1, 2, 3)


def warp(images: torch.Tensor, op: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Ops 0–4 for a batch in one ``grid_sample``: nearest neighbour, 0 outside (PIL's defaults)."""
    height, width = images.shape[-2:]
    grid = F.affine_grid(affine_theta(op, value, height, width), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


# ------------------------------------------------------------------ colour / intensity ops (float in [0, 1])


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Each channel's [min, max] stretched to [0, 1]; a constant channel is kept."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    flat = hi == lo
    lo = torch.where(flat, 0.0, lo)
    span = torch.where(flat, 1.0, hi - lo)
    return ((x - lo) / span).clamp_(0.0, 1.0)


def to_uint8_levels(x: torch.Tensor) -> torch.Tensor:
    """The 8-bit value 0..255 of each pixel (as float), as ``to_dtype(x, uint8, scale=True)``."""
    return (x * _U8).floor_()


def equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageOps.equalize`` per (sample, channel) on the 8-bit values; returns k/255.

    PIL's rule: with h the 256-bin histogram and N the pixels, step = (N − h[top]) // 255
    where top is the largest value present; step = 0 keeps the channel; else value k maps
    to min(255, (step // 2 + Σ_{j<k} h[j]) // step). All channels of the batch at once: one
    ``bincount`` over (channel, value) pairs.
    """
    b, c, h, w = x.shape
    q = to_uint8_levels(x).to(torch.int64).view(b * c, h * w)
    rows = torch.arange(b * c, device=x.device).unsqueeze(1)
    hist = torch.bincount((q + rows * 256).view(-1), minlength=b * c * 256).view(b * c, 256)
    below = hist.cumsum(1) - hist  # Σ_{j<k} h[j]
    top_count = hist.gather(1, q.amax(1, keepdim=True))
    step = (h * w - top_count).div(255, rounding_mode="floor")
    lut = (below + step.div(2, rounding_mode="floor")).div(step.clamp(min=1), rounding_mode="floor").clamp_(max=255)
    out = torch.where(step > 0, lut.gather(1, q), q)
    return out.view(b, c, h, w).to(x.dtype).mul_(1.0 / 255.0)  # k·(1/255), as torchvision's uint8 → float


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert the pixels ≥ threshold (per sample, on the 0–255 scale, as PIL's ``solarize``)."""
    return torch.where(x >= per_sample(threshold / 255.0), 1.0 - x, x)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top ``int(bits)`` bits (at least 1) of each 8-bit value; returns k/255.

    ``floor(q / 2^s)·2^s`` with s = 8 − bits is ``q & mask`` exactly in float (powers of two).
    """
    step = torch.exp2(8.0 - bits.floor().clamp(1.0, 8.0))
    s = per_sample(step)
    return (to_uint8_levels(x) / s).floor_().mul_(s).mul_(1.0 / 255.0)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = per_sample(factor)
    return (x * f + other * (1.0 - f)).clamp_(0.0, 1.0)


def _luma(x: torch.Tensor) -> torch.Tensor:
    return rgb_to_grayscale(x) if x.shape[1] == 3 else x


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean luma (one number per sample)."""
    return _blend(x, _luma(x).mean(dim=(-3, -2, -1), keepdim=True), factor)


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Saturation: blend with each pixel's luma; the identity for 1-channel images."""
    return x if x.shape[1] == 1 else _blend(x, rgb_to_grayscale(x), factor)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black: ``clamp(x·f)``."""
    return (x * per_sample(factor)).clamp_(0.0, 1.0)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend the interior with its 3×3 smoothing (1s around a 5, /13); the 1-pixel border is kept.

    The interior is ``x + (1 − f)(blur − x)``, then everything is clamped to [0, 1]
    (torchvision's float kernel; PIL's ImageEnhance.Sharpness also keeps the border). The
    blur is (3×3 box sum + 4·centre)/13 from shifted slices: the same kernel as torchvision's
    ``conv2d`` (within float rounding), ~6× faster on the CPU than a 1-channel conv there.
    """
    h, w = x.shape[-2:]
    if h <= 2 or w <= 2:
        return x
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    inner = x[..., 1:-1, 1:-1]
    blur = (rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:] + 4.0 * inner) * (1.0 / 13.0)
    out = x.clone()
    out[..., 1:-1, 1:-1] = inner + (blur - inner) * per_sample(1.0 - factor)
    return out.clamp_(0.0, 1.0)


def cutout_fill(channels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """BCL's fill colour as a C×1×1 tensor: (125, 123, 114)/255, or its luma for 1 channel."""
    values = [v / 255.0 for v in CUTOUT_FILL]
    if channels == 1:
        values = [sum(wt * v for wt, v in zip(GRAY_WEIGHTS, values))]
    fill = torch.empty(channels, 1, 1, dtype=dtype, device=device)
    for ch, v in enumerate(values):
        fill[ch] = v  # fills, not a host → device copy
    return fill


def cutout(x: torch.Tensor, size: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """BCL's Cutout: a square of ``size`` pixels (float) per sample at ``centre`` (n×2, x then y, pixels).

    Top-left ``x0 = int(max(0, cx − s/2))`` (likewise y0); PIL's inclusive rectangle fills
    x0 ≤ x ≤ x0 + s and y0 ≤ y ≤ y0 + s (clipped to the image); s ≤ 0 fills nothing.
    """
    h, w = x.shape[-2:]
    s = size.view(-1, 1, 1)
    x0 = (centre[:, 0].view(-1, 1, 1) - s / 2).clamp(min=0.0).floor()
    y0 = (centre[:, 1].view(-1, 1, 1) - s / 2).clamp(min=0.0).floor()
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
    box = (s > 0) & (xs >= x0) & (xs <= x0 + s) & (ys >= y0) & (ys <= y0 + s)
    return torch.where(box.unsqueeze(1), cutout_fill(x.shape[1], x.dtype, x.device), x)
