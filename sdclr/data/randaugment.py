"""BCL's probabilistic RandAugment for a whole float batch on the device, with per-sample strength.

What it is for: Boosted Contrastive Learning (BCL; Zhou et al., "Contrastive Learning with
Boosted Memorization", ICML 2022, arXiv 2205.12693; official code ``MediaBrain-SJTU/BCL``).
In the paper's words, "BCL leverages the memorization effect of deep neural networks to
automatically drive the information discrepancy of the sample views in contrastive
learning": each image's memorisation score w ∈ [0, 1] (from an EMA of its contrastive loss)
sets how likely and how strong an extra RandAugment is, applied to both SimCLR views. The
official code does it per image on the CPU (``data/randaug.py``, ``RandAugment_prob``, on PIL
images); ``rand_augment`` does the same for a whole batch, after ``BatchAugment``, with
per-sample probability and magnitude, no per-image Python loop and every random number
drawn from the caller's generator on the batch's device (same seed → same batch).

``rand_augment(images, n, prob, magnitude, generator)``: images float B×C×H×W in [0, 1]
(C = 1 or 3); ``prob`` and ``magnitude`` tensors of shape (B,). For every sample, ``n`` ops
are drawn *with replacement* from the 15 below; each is applied, in order, with probability
``prob[i]`` at value ``v = lo + (hi − lo)·magnitude[i]/30`` (BCL's 0–30 scale, its
``rand_strength`` being 30; magnitudes are clamped into [0, 30], the range BCL's own asserts
accept). The caller computes ``prob`` and ``magnitude`` from w and calls once per view (ops
are drawn per view): BCL-I ``n = 1``, p = w, m = 10 + 20·w; BCL-D ``n = 2``, p = w,
m = 5 + 25·w·U with U ~ U(0, 1) once per image, shared by its two views (our notes,
docs/recipes.md; the stored revision of ``data/memoboosted_cifar100.py`` that was read writes
m = rand_strength·w·U).

The ops, ids, ranges (BCL's ``augment_list``, read from the official ``data/randaug.py``):

====  ============  ============  ===================================================
 id   op            [lo, hi]      what v means (a "±" op gets a random sign, p = ½)
====  ============  ============  ===================================================
 0    ShearX        0 – 0.6       ±v: input x = x + v·y (PIL's matrix, origin top-left)
 1    ShearY        0 – 0.6       ±v: input y = y + v·x
 2    TranslateX    0 – 0.66      ±v·W pixels: input x = x + v·W
 3    TranslateY    0 – 0.66      ±v·H pixels: input y = y + v·H
 4    Rotate        0 – 60        ±v degrees, counter-clockwise about the centre
 5    AutoContrast  —             per channel min/max stretched to 0/1
 6    Invert        —             1 − x
 7    Equalize      —             PIL's histogram equalisation, per channel, 8-bit
 8    Solarize      0 – 110       invert pixels ≥ v/255 (a larger m solarizes less)
 9    Posterize     4 – 8         keep int(v) bits of the 8-bit value (larger m: milder)
 10   Contrast      0.1 – 1.9     blend with the mean luma by factor v
 11   Color         0.1 – 1.9     blend with the pixel's luma (saturation) by v
 12   Brightness    0.1 – 1.9     blend with black by v
 13   Sharpness     0.1 – 1.9     blend with the 3×3 smoothed image (borders kept) by v
 14   Cutout        0 – 0.4       a square of side v·W filled with (125, 123, 114)/255
====  ============  ============  ===================================================

Each op (its kernel in :mod:`sdclr.data.randaugment_ops`) matches torchvision's op of the
same name on float tensors (tests/test_randaugment.py); where BCL's PIL call and torchvision
differ, we follow torchvision and say so:

* geometric ops (0–4) are one ``affine_grid`` + ``grid_sample`` per slot for every sample
  that drew one of them, with PIL's and torchvision's RandAugment defaults: nearest
  neighbour, fill 0 outside the image. The matrices are exactly PIL's (shear about the
  top-left corner, translation by fractional pixels, rotation about the centre);
* Equalize and Posterize quantise to 8 bits as ``to_dtype(x, uint8, scale=True)`` does
  (``floor(x·255.999)``) and return values k/255, as BCL's PIL images are 8-bit.
  torchvision's *float* posterize uses 2^bits levels over [0, 1] instead (not the identity
  at 8 bits), so Posterize equals torchvision's uint8 posterize on that quantisation;
* Contrast, AutoContrast and the blends are float maths as torchvision's float kernels
  (PIL rounds each to 8 bits and uses an integer mean for Contrast);
* Cutout follows BCL's box rule: centre (cx, cy) with cx uniform on [1, W] (BCL's
  ``np.random.uniform(w)`` is ``uniform(low=w, high=1)``), cy on [1, H], top-left corner
  ``int(max(0, c − s/2))``, and PIL's rectangle is inclusive: pixels x0 ≤ x ≤ x0 + s
  (s = v·W; s = 0 draws nothing, as BCL returns early). For 1-channel images the fill is
  that colour's luma (≈ 122.5/255).

For 1-channel images (Fashion-MNIST) Color (saturation) is the identity, as torchvision's
``adjust_saturation`` and PIL's ``ImageEnhance.Color`` leave a gray image unchanged; every
other op runs. Differences from BCL's pipeline that remain: BCL applies these ops to 8-bit
PIL images (every op rounds to 8 bits); here the batch stays float (only Equalize and
Posterize quantise).

How the batch is computed (``select``): each slot k = 0..n−1 applies, for every sample, the
op it drew for slot k (or nothing, where it was not applied), so the order of a sample's ops
is kept. ``"gather"`` sorts the samples by op and runs each op only on its own samples
(the five geometric ops share one warp); it reads the op counts on the host once per call
(one device sync). ``"mask"`` runs every op on the whole batch and keeps each sample's own
result with ``torch.where``: 15× the arithmetic, but no sync. ``"auto"`` (the default)
gathers on the CPU, where arithmetic is the cost, and masks elsewhere (on a GPU a 32×32
batch is launch-bound and a sync stalls the queue; not measured here). Both give the same
result (tested).
"""

from __future__ import annotations

import torch

from sdclr.data.randaugment_ops import (
    autocontrast,
    brightness,
    color,
    contrast,
    cutout,
    equalize,
    per_sample,
    posterize,
    sharpness,
    solarize,
    warp,
)

#: the 15 ops of BCL's ``augment_list``, in its order (index = op id)
OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "AutoContrast", "Invert", "Equalize", "Solarize",
       "Posterize", "Contrast", "Color", "Brightness", "Sharpness", "Cutout")
#: BCL's value range per op: v = lo + (hi − lo)·m/30
RANGES = ((0.0, 0.6), (0.0, 0.6), (0.0, 0.66), (0.0, 0.66), (0.0, 60.0), (0.0, 1.0), (0.0, 1.0), (0.0, 1.0),
          (0.0, 110.0), (4.0, 8.0), (0.1, 1.9), (0.1, 1.9), (0.1, 1.9), (0.1, 1.9), (0.0, 0.4))
NUM_OPS = len(OPS)
NONE = NUM_OPS  #: the op id of "not applied"
GEOMETRIC = 5  #: ids below this are the affine ops
MAX_MAGNITUDE = 30.0


def op_values(op: torch.Tensor, magnitude: torch.Tensor, sign: torch.Tensor | None = None) -> torch.Tensor:
    """Each sample's op value ``lo + (hi − lo)·m/30`` (signed where ``sign`` is given, for ops 0–4).

    The ranges stay Python floats (a ``torch.tensor(table, device=cuda)`` would be a copy
    that syncs): one ``where`` per op.
    """
    m = magnitude.to(torch.float32).clamp(0.0, MAX_MAGNITUDE) / MAX_MAGNITUDE
    v = torch.zeros_like(m)
    for k, (lo, hi) in enumerate(RANGES):
        v = torch.where(op == k, lo + (hi - lo) * m, v)
    if sign is not None:
        v = torch.where(op < GEOMETRIC, v * sign, v)
    return v


def apply_op(op: int, x: torch.Tensor, value: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Non-geometric op ``op`` (5–14) on every sample of ``x`` with per-sample ``value`` (n,)."""
    name = OPS[op]
    if name == "AutoContrast":
        return autocontrast(x)
    if name == "Invert":
        return 1.0 - x
    if name == "Equalize":
        return equalize(x)
    if name == "Solarize":
        return solarize(x, value)
    if name == "Posterize":
        return posterize(x, value)
    if name == "Contrast":
        return contrast(x, value)
    if name == "Color":
        return color(x, value)
    if name == "Brightness":
        return brightness(x, value)
    if name == "Sharpness":
        return sharpness(x, value)
    if name == "Cutout":
        return cutout(x, value * x.shape[-1], centre)  # BCL: v · img.size[0] (the width)
    raise ValueError(f"op {op} ({name}) is geometric: use warp")


# ------------------------------------------------------------------ the plan and its application


def sample_plan(n_images: int, n: int, prob: torch.Tensor, generator: torch.Generator, height: int, width: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every random choice of one call, from one ``torch.rand`` draw on ``device``.

    Returns ``op`` (B×n int64, ``NONE`` where the op is not applied: ``u < prob[i]`` applies
    it, as BCL's ``random.uniform(0, 1) < p``), ``sign`` (B×n, ±1: BCL negates where
    ``random() > 0.5``) and ``centre`` (B×n×2, Cutout's centre in pixels, uniform on
    [1, W] × [1, H] as BCL's ``np.random.uniform(w)``).
    """
    u = torch.rand(n_images, n, 5, generator=generator, device=device)
    drawn = (u[..., 0] * NUM_OPS).to(torch.int64).clamp_(max=NUM_OPS - 1)  # uniform over the 15, with replacement
    on = u[..., 1] < prob.to(device=device, dtype=u.dtype).view(-1, 1)
    op = torch.where(on, drawn, NONE)
    sign = torch.where(u[..., 2] > 0.5, -1.0, 1.0)
    centre = torch.stack((width - (width - 1) * u[..., 3], height - (height - 1) * u[..., 4]), dim=-1)
    return op, sign, centre


def _slot_masked(x: torch.Tensor, op: torch.Tensor, value: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """One slot, every op on the whole batch, each sample's own result kept (no host sync)."""
    geometric = op < GEOMETRIC
    out = torch.where(per_sample(geometric), warp(x, torch.where(geometric, op, NONE), value), x)
    for k in range(GEOMETRIC, NUM_OPS):
        if k == OPS.index("Color") and x.shape[1] == 1:
            continue
        out = torch.where(per_sample(op == k), apply_op(k, x, value, centre), out)
    return out


def _slot_gathered(x: torch.Tensor, op: torch.Tensor, value: torch.Tensor, centre: torch.Tensor,
                   counts: list[int]) -> torch.Tensor:
    """One slot, each op on its own samples: sort by op, run contiguous segments, scatter back.

    ``counts[k]`` = samples that drew op k in this slot (host ints). The geometric ops,
    ids 0–4, form one segment and one warp; samples with ``NONE`` sort last and are not
    touched (``index_copy`` returns them bit for bit).
    """
    active = len(op) - counts[NONE]
    if active == 0:
        return x
    order = torch.argsort(op, stable=True)[:active]
    xs, ops, vals, cents = x[order], op[order], value[order], centre[order]
    parts, start = [], 0
    geo = sum(counts[:GEOMETRIC])
    if geo:
        parts.append(warp(xs[:geo], ops[:geo], vals[:geo]))
        start = geo
    for k in range(GEOMETRIC, NUM_OPS):
        if counts[k]:
            end = start + counts[k]
            parts.append(apply_op(k, xs[start:end], vals[start:end], cents[start:end]))
            start = end
    return x.index_copy(0, order, torch.cat(parts))


def apply_plan(images: torch.Tensor, op: torch.Tensor, value: torch.Tensor, centre: torch.Tensor,
               select: str = "auto") -> torch.Tensor:
    """Apply ``op[:, k]`` at ``value[:, k]`` (signed, as ``op_values`` gives) for k = 0..n−1 in order.

    ``op`` B×n (``NONE`` = skip), ``value`` B×n, ``centre`` B×n×2. See the module docstring
    for ``select``. Float images in, the same dtype out (computed in float32 at least).
    """
    if select == "auto":
        select = "gather" if images.device.type == "cpu" else "mask"
    if select not in ("gather", "mask"):
        raise ValueError(f"select must be 'auto', 'gather' or 'mask', got {select!r}")
    x = images.to(torch.promote_types(images.dtype, torch.float32))
    value = value.to(x.dtype)
    centre = centre.to(x.dtype)
    if select == "gather":
        slots = op.shape[1]
        offsets = torch.arange(slots, device=op.device).view(1, -1) * (NUM_OPS + 1)
        counts = torch.bincount((op + offsets).view(-1), minlength=slots * (NUM_OPS + 1))
        counts = counts.view(slots, NUM_OPS + 1).tolist()  # the one host sync of a call
        for k in range(slots):
            x = _slot_gathered(x, op[:, k], value[:, k], centre[:, k], counts[k])
    else:
        for k in range(op.shape[1]):
            x = _slot_masked(x, op[:, k], value[:, k], centre[:, k])
    return x.to(images.dtype)


def rand_augment(images: torch.Tensor, n: int, prob: torch.Tensor, magnitude: torch.Tensor,
                 generator: torch.Generator, select: str = "auto") -> torch.Tensor:
    """BCL's ``RandAugment_prob(n, m, p)`` per sample: float B×C×H×W in [0, 1] → same shape, dtype, range.

    ``prob``, ``magnitude``: shape (B,), any device (moved to the images'); magnitude on
    BCL's 0–30 scale. ``n`` ops per sample with replacement, each applied with ``prob[i]``.
    ``images`` is never modified; where no op applies (n = 0, or every draw skipped under
    ``"gather"``) the result may be ``images`` itself.

    Always eager (the loop compiles only the network and the SimCLR transform): its
    generator-driven draws give the same batch for the same seed, compiled or not. (No
    ``torch.compiler.disable`` decorator: it would import Dynamo, ~1 s, into every stage.)
    """
    if not images.is_floating_point() or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected float B×C×H×W with C in (1, 3), got {images.dtype} {tuple(images.shape)}")
    b, _, height, width = images.shape
    if prob.shape != (b,) or magnitude.shape != (b,):
        raise ValueError(f"prob and magnitude must have shape ({b},), got {tuple(prob.shape)} and "
                         f"{tuple(magnitude.shape)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0 or b == 0:
        return images
    dev = images.device
    with torch.autocast(device_type=dev.type, enabled=False):
        op, sign, centre = sample_plan(b, n, prob, generator, height, width, dev)
        m = magnitude.to(dev).view(-1, 1).expand(b, n)
        value = op_values(op, m, sign)
        return apply_plan(images, op, value, centre, select)
