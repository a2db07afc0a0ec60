"""SimCLR augmentations for a whole uint8 batch on the device (airbench style).

``BatchAugment(params, channels)(images, generator)`` takes uint8 N×C×H×W on the
device and returns float32 N×C×H×W in [0, 1] (normalisation lives in the model). It
reproduces torchvision's ``RandomResizedCrop → RandomHorizontalFlip →
RandomApply(ColorJitter) → RandomGrayscale`` with *per-sample* parameters, but with
no per-image Python loop and no host↔device sync: every random number comes from
``torch.rand(..., generator=generator)`` on the batch's device (two draws per call),
so the same seed gives the same batch, and a decision such as "which candidate crop is valid" is a mask, not a branch.

Deliberate differences from torchvision (all documented where they happen):

* crop + flip are one affine warp (``affine_grid`` + ``grid_sample``) of the whole
  image, so the interpolation at a crop's outermost half-pixel reads the real
  neighbours outside the crop where ``resized_crop`` clamps to the crop's edge.
  No antialiasing is needed: the crop is never larger than the output (upsampling).
* the 10 RandomResizedCrop attempts are drawn at once; offsets are drawn for every
  sample (torchvision draws them only for the chosen candidate) — same distribution.
* for 1-channel data (Fashion-MNIST) all colour ops are skipped, as the project spec
  says ("colour ops skipped for 1-channel data"); torchvision would still apply
  brightness and contrast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: torchvision's grayscale weights (ITU-R 601-2 luma, with torchvision's 0.2989 for red)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
CROP_ATTEMPTS = 10


# ------------------------------------------------------------------ crop + flip


def sample_crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                      generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """RandomResizedCrop boxes for ``n`` images: float32 n×4 ``(top, left, h, w)`` in whole pixels.

    torchvision's rule, vectorised: 10 candidates per sample with area fraction
    U(scale) and log aspect ratio U(log ratio), ``w = round(sqrt(A·r))``,
    ``h = round(sqrt(A/r))``; the first candidate that fits is kept (``argmax`` of the
    validity mask returns the first True), else the centre crop with the ratio
    clamped into ``ratio``. Offsets are uniform over the positions that fit.
    """
    u = torch.rand(n, 2 * CROP_ATTEMPTS + 2, generator=generator, device=device)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:, :CROP_ATTEMPTS])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u[:, CROP_ATTEMPTS : 2 * CROP_ATTEMPTS])
    w = torch.sqrt(area * aspect).round()
    h = torch.sqrt(area / aspect).round()
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)

    in_ratio = width / height  # the fallback depends on static sizes only: plain Python
    if in_ratio < min(ratio):
        fw, fh = width, max(1, int(round(width / min(ratio))))
    elif in_ratio > max(ratio):
        fw, fh = max(1, int(round(height * max(ratio)))), height
    else:
        fw, fh = width, height
    found = valid.any(dim=1)
    w = torch.where(found, w, float(fw))
    h = torch.where(found, h, float(fh))
    top = torch.minimum((u[:, -2] * (height - h + 1)).floor(), height - h)  # randint(0, H - h + 1)
    left = torch.minimum((u[:, -1] * (width - w + 1)).floor(), width - w)
    top = torch.where(found, top, float((height - fh) // 2))
    left = torch.where(found, left, float((width - fw) // 2))
    return torch.stack((top, left, h, w), dim=1)


def crop_flip_affine(boxes: torch.Tensor, flip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """n×2×3 ``affine_grid`` matrices mapping the output onto each box, mirrored where ``flip``.

    In ``align_corners=False`` coordinates the image spans [-1, 1] edge to edge, so the
    box ``[left, left + w)`` is centred at ``(2·left + w)/W − 1`` with half-width
    ``w/W``. Output pixel ``x`` then samples input ``left + (x + ½)·w/W − ½`` — exactly
    ``interpolate(..., align_corners=False)`` on the crop. Flipping after the crop is
    negating the output's x axis, i.e. the sign of the x scale. A full box is the
    identity matrix, which samples every pixel at its own centre.
    """
    top, left, h, w = boxes.unbind(1)
    theta = boxes.new_zeros(boxes.shape[0], 2, 3)
    theta[:, 0, 0] = torch.where(flip, -w / width, w / width)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    return theta


def resample(images: torch.Tensor, theta: torch.Tensor, interpolation: str) -> torch.Tensor:
    """Warp float images by per-sample affine ``theta``, output the same size.

    ``padding_mode='border'`` clamps taps to the image like ``interpolate`` does at the
    image edge; bicubic can overshoot, so it is clamped back into [0, 1].
    """
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode=interpolation, padding_mode="border", align_corners=False)
    return out.clamp_(0.0, 1.0) if interpolation == "bicubic" else out


def crop_and_flip(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, interpolation: str) -> torch.Tensor:
    """Resized crop of each box back to full size, mirrored where ``flip``: one warp for the batch.

    The identity warp is exact only up to float rounding of the normalised grid
    (~2e-6 when H or W is not a power of two), so samples whose box is the whole
    image are copied (or ``torch.flip``-ed) exactly instead, by a select — no sync.
    """
    height, width = images.shape[-2:]
    warped = resample(images, crop_flip_affine(boxes, flip, height, width), interpolation)
    full = _per_sample((boxes[:, 2] == height) & (boxes[:, 3] == width))
    return torch.where(full, torch.where(_per_sample(flip), images.flip(-1), images), warped)


# ------------------------------------------------------------------ colour ops (RGB, float in [0, 1])
# Per-sample factors of shape (n,). Brightness, contrast and saturation run fused in
# ``_linear_slot``; tests/reference_ops.py has them one by one, as torchvision writes them.


def _per_sample(f: torch.Tensor) -> torch.Tensor:
    return f.view(-1, 1, 1, 1)


def rgb_to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """n×3×H×W → n×1×H×W luma with torchvision's weights."""
    r, g, b = images.unbind(1)
    return (r * GRAY_WEIGHTS[0] + g * GRAY_WEIGHTS[1] + b * GRAY_WEIGHTS[2]).unsqueeze(1)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g, b = x.unbind(1)
    minc, maxc = torch.aminmax(x, dim=1)
    eq = maxc == minc  # gray pixels: h = s = 0, and no division by zero
    delta = maxc - minc
    s = delta / torch.where(eq, torch.ones_like(maxc), maxc)
    d = torch.where(eq, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, rc + 2.0 - bc, gc + 4.0 - rc))
    return (h * (1.0 / 6.0) + 1.0).fmod(1.0), s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # The closed form c_n = v − v·s·clamp(min(k, 4 − k), 0, 1), k = (n + 6h) mod 6, n = 5, 3, 1 for
    # r, g, b: the same function as torchvision's sector table (within 1e-6), no gather, no where.
    k = (torch.arange(5, 0, -2, device=h.device, dtype=h.dtype).view(1, 3, 1, 1) + (h * 6).unsqueeze(1)).remainder(6)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.minimum(k, 4 - k).clamp(0.0, 1.0)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` turns (in [-0.5, 0.5]) through HSV, as torchvision."""
    h, s, v = _rgb_to_hsv(images)
    return _hsv_to_rgb((h + shift.view(-1, 1, 1)).remainder(1.0), s, v)


def _linear_slot(x: torch.Tensor, factors: torch.Tensor, op: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """One of brightness (op 0) / contrast (1) / saturation (2) per sample, where ``on``.

    All three are ``clamp(x·f + G·(1−f)·[sat] + M·(1−f)·[contrast])`` with G the pixel luma
    and M its image mean, so one pass with per-sample coefficients runs whichever op each
    sample drew. Off samples get (1, 0, 0): ``x·1 + G·0 + M·0`` is exactly ``x``.
    """
    f = factors.gather(1, op.clamp(max=2).unsqueeze(1)).squeeze(1)
    a = torch.where(on, f, 1.0)
    b = torch.where(on & (op == 2), 1.0 - f, 0.0)
    c = torch.where(on & (op == 1), 1.0 - f, 0.0)
    gray = rgb_to_grayscale(x)
    mean = gray.mean(dim=(-3, -2, -1), keepdim=True)
    return (x * _per_sample(a) + gray * _per_sample(b) + mean * _per_sample(c)).clamp_(0.0, 1.0)


def color_jitter(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, apply: torch.Tensor,
                 hue: bool = True) -> torch.Tensor:
    """ColorJitter with its op order drawn per sample.

    ``factors``: n×4 (brightness, contrast, saturation, hue shift); ``order``: n×4, a
    permutation of 0..3 per sample (3 = hue); ``apply``: n bools. Hue, the costly op,
    runs once for the batch: first the ops each sample has *before* its hue (slots
    j < position of hue), then hue, then the ops after it — every sample sees its own
    order, with masks instead of branches. ``hue=False`` (strength 0, which torchvision
    skips) leaves hue out. Brightness/contrast/saturation of strength 0 need no flag:
    their factor is then exactly 1, the identity.
    """
    hue_at = (order == 3).to(torch.uint8).argmax(dim=1) if hue else torch.full_like(order[:, 0], 4)
    out = images
    for j in range(3 if hue else 4):
        out = _linear_slot(out, factors, order[:, j], apply & (j < hue_at))
    if hue:
        out = torch.where(_per_sample(apply), adjust_hue(out, factors[:, 3]), out)
        for j in range(1, 4):
            out = _linear_slot(out, factors, order[:, j], apply & (j > hue_at))
    return out


# ------------------------------------------------------------------ the batch transform


class BatchAugment:
    """The SimCLR view generator: uint8 N×C×H×W (+ generator) → float32 N×C×H×W in [0, 1]."""

    def __init__(self, params, channels: int):
        """``params``: params.yaml's ``augment`` group (:class:`sdclr.config.AugmentParams`; not
        imported here, so that the data package sits below the params it is configured by)."""
        if channels not in (1, 3):
            raise ValueError(f"BatchAugment supports 1 or 3 channels, got {channels}")
        self.params = params
        self.channels = channels
        b, c, s, h = params.jitter
        self.jitter_ranges = ((max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s), (-h, h))
        self.hue = h > 0
        self.use_color = channels == 3  # 1-channel data (Fashion-MNIST): no colour ops at all

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != self.channels:
            raise ValueError(f"expected uint8 N×{self.channels}×H×W, got {images.dtype} {tuple(images.shape)}")
        # autocast off (the loop calls us inside it): keep the affine grid's matmul and the colour maths in fp32
        with torch.autocast(device_type=images.device.type, enabled=False):
            return self._transform(images, *self.draw(images.shape, generator, images.device))

    def draw(self, shape: torch.Size, generator: torch.Generator, device: torch.device):
        """Every random number of one call: crop boxes (n×4) and n×11 uniforms (two draws).

        Always eager (only :meth:`transform` is ever compiled): generator-driven draws then give
        the same numbers for the same seed, compiled or not. (No ``torch.compiler.disable``
        decorator: it would import Dynamo, ~0.7 s, into every stage process.)
        """
        p, (n, _, height, width) = self.params, shape
        boxes = sample_crop_boxes(n, height, width, p.crop_scale, p.crop_ratio, generator, device)
        u = torch.rand(n, 11, generator=generator, device=device)  # flip, jitter?, gray?, 4 factors, 4 order keys
        return boxes, u

    def transform(self, images: torch.Tensor, boxes: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The views, given the draws: a pure function, so it may be compiled into a few fused kernels."""
        p = self.params
        x = crop_and_flip(images.float().div_(255), boxes, u[:, 0] < p.flip_p, p.interpolation)
        if self.use_color:
            # Python-float ranges, not a torch.tensor(list, device=cuda): that copy would sync
            factors = torch.stack([lo + (hi - lo) * u[:, 3 + k] for k, (lo, hi) in enumerate(self.jitter_ranges)],
                                  dim=1)
            order = u[:, 7:11].argsort(dim=1)  # a uniform random permutation per sample
            x = color_jitter(x, factors, order, u[:, 1] < p.jitter_p, self.hue)
            gray = _per_sample(u[:, 2] < p.gray_p)
            x = torch.where(gray, rgb_to_grayscale(x).expand_as(x), x)
        return x

    _transform = transform  # what __call__ runs: :meth:`transform` itself, or its compiled form

    def compile(self, mode: str = "default") -> "BatchAugment":
        """Run :meth:`transform` through ``torch.compile`` (the draws stay eager)."""
        self._transform = torch.compile(self.transform, mode=mode, dynamic=False)
        return self

    def uncompile(self) -> "BatchAugment":
        self.__dict__.pop("_transform", None)  # back to the class's eager transform
        return self
