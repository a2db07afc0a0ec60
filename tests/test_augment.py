"""The on-device batch augmentation: per-sample randomness, determinism, exactness, torchvision parity."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from sdclr.config import AugmentParams
from sdclr.data.augment import (
    BatchAugment,
    adjust_hue,
    color_jitter,
    crop_and_flip,
    crop_flip_affine,
    resample,
    rgb_to_grayscale,
    sample_crop_boxes,
)
from tests.reference_ops import adjust_brightness, adjust_contrast, adjust_saturation

PAPER = AugmentParams(crop_scale=(0.1, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_p=0.5, jitter=(0.4, 0.4, 0.4, 0.1),
                      jitter_p=0.8, gray_p=0.2, interpolation="bicubic")
IDENTITY = dataclasses.replace(PAPER, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                               gray_p=0.0)
CPU = torch.device("cpu")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n=8, c=3, h=32, w=32, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=gen(seed))


def smooth_images(n=4, h=32, w=32, seed=0) -> torch.Tensor:
    """Colourful float images with every kind of pixel (gray, saturated, black) for the colour-op checks."""
    x = torch.rand(n, 3, h, w, generator=gen(seed))
    x[0] = 0.5
    x[1, :, :4] = 0.0
    x[1, 0, 4:8] = 1.0
    x[2] = x[2].round()
    return x


# ------------------------------------------------------------------ the whole transform


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_output_dtype_shape_range(channels, size):
    x = images(64, channels, size, size)
    out = BatchAugment(PAPER, channels)(x, gen())
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (3, 23)])
def test_identity_config_is_exact(interpolation, channels, size):
    # square images: with crop_ratio=(1, 1) a non-square image gets torchvision's square centre crop
    x = images(16, channels, size, size)
    out = BatchAugment(dataclasses.replace(IDENTITY, interpolation=interpolation), channels)(x, gen())
    assert torch.equal(out, x.float() / 255)


def test_each_sample_gets_its_own_parameters():
    x = images(1).expand(64, -1, -1, -1).contiguous()
    out = BatchAugment(PAPER, 3)(x, gen())
    assert len({tuple(o.flatten()[::7].tolist()) for o in out}) == 64
    boxes = sample_crop_boxes(64, 32, 32, PAPER.crop_scale, PAPER.crop_ratio, gen(), CPU)
    assert len({tuple(b.tolist()) for b in boxes}) > 50


def test_same_seed_same_batch_other_seed_other_batch():
    x, aug = images(32), BatchAugment(PAPER, 3)
    assert torch.equal(aug(x, gen(1)), aug(x, gen(1)))
    assert not torch.equal(aug(x, gen(1)), aug(x, gen(2)))
    g = gen(1)
    assert not torch.equal(aug(x, g), aug(x, g))  # two views from one generator differ


def test_runs_under_autocast():
    x = images(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = BatchAugment(PAPER, 3)(x, gen())
    assert out.dtype == torch.float32
    assert torch.equal(out, BatchAugment(PAPER, 3)(x, gen()))


def test_flip_only_is_torch_flip():
    x = images(8, 3, 28, 28)
    p = dataclasses.replace(IDENTITY, flip_p=1.0)
    assert torch.equal(BatchAugment(p, 3)(x, gen()), x.float().div(255).flip(-1))
    xf = x.float() / 255  # the warp alone, without the exact full-box copy, is within float rounding
    full = torch.tensor([[0.0, 0.0, 28.0, 28.0]] * 8)
    theta = crop_flip_affine(full, torch.ones(8, dtype=torch.bool), 28, 28)
    for mode in ("bilinear", "bicubic"):
        torch.testing.assert_close(resample(xf, theta, mode), xf.flip(-1), atol=1e-5, rtol=0)


def test_one_channel_never_gets_colour_ops():
    x = images(16, 1, 28, 28)
    p = dataclasses.replace(IDENTITY, jitter_p=1.0, gray_p=1.0, jitter=(0.9, 0.9, 0.9, 0.5))
    assert torch.equal(BatchAugment(p, 1)(x, gen()), x.float() / 255)


def test_grayscale_gives_three_equal_channels():
    x = images(16)
    out = BatchAugment(dataclasses.replace(IDENTITY, gray_p=1.0), 3)(x, gen())
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    torch.testing.assert_close(out, TF.rgb_to_grayscale(x.float() / 255, num_output_channels=3), atol=1e-6, rtol=0)


def test_jitter_p_one_changes_every_sample():
    x = images(64)
    p = dataclasses.replace(IDENTITY, jitter_p=1.0)
    changed = (BatchAugment(p, 3)(x, gen()) != x.float() / 255).flatten(1).any(1)
    assert changed.all()


# ------------------------------------------------------------------ crop boxes


def test_crop_boxes_follow_scale_and_ratio():
    # a large image, so rounding to whole pixels barely moves area and ratio
    n, size = 4000, 1000
    boxes = sample_crop_boxes(n, size, size, PAPER.crop_scale, PAPER.crop_ratio, gen(), CPU)
    top, left, h, w = boxes.unbind(1)
    assert (boxes == boxes.round()).all() and (h >= 1).all() and (w >= 1).all()
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= size).all() and (left + w <= size).all()
    area, ratio = h * w / size**2, w / h
    assert area.min() >= 0.1 * 0.99 and area.max() <= 1.0
    assert ratio.min() >= 0.75 * 0.99 and ratio.max() <= 4 / 3 * 1.01
    assert area.min() < 0.12 and area.max() > 0.7  # the range is covered, not collapsed
    assert math.log(ratio.min()) < math.log(0.78) and ratio.max() > 1.28
    assert len(set(top.tolist())) > 500 and len(set(left.tolist())) > 500  # offsets spread over the image


def test_impossible_crops_fall_back_to_centre():
    # ratio 2 at full area never fits a square image → torchvision's centre crop with the ratio clamped
    boxes = sample_crop_boxes(32, 32, 32, (1.0, 1.0), (2.0, 2.0), gen(), CPU)
    assert torch.equal(boxes, torch.tensor([[8.0, 0.0, 16.0, 32.0]]).expand(32, 4))
    boxes = sample_crop_boxes(32, 20, 40, (1.0, 1.0), (0.5, 0.5), gen(), CPU)  # wide image, ratio too small
    assert torch.equal(boxes, torch.tensor([[0.0, 15.0, 20.0, 10.0]]).expand(32, 4))
    boxes = sample_crop_boxes(32, 28, 28, (0.0, 0.0), (1.0, 1.0), gen(), CPU)  # zero area → whole image
    assert torch.equal(boxes, torch.tensor([[0.0, 0.0, 28.0, 28.0]]).expand(32, 4))
    out = BatchAugment(dataclasses.replace(PAPER, crop_scale=(1.0, 1.0), crop_ratio=(2.0, 2.0)), 3)(images(), gen())
    assert out.shape == (8, 3, 32, 32) and 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("mode,interp,margin", [("bilinear", InterpolationMode.BILINEAR, 0),
                                                ("bicubic", InterpolationMode.BICUBIC, 1)])
@pytest.mark.parametrize("box", [(0, 0, 16, 16), (5, 7, 12, 20), (3, 1, 29, 30)])
def test_crop_matches_torchvision_resized_crop_inside_the_box(mode, interp, margin, box):
    """The warp reads real pixels beyond the box where resized_crop clamps to the box edge,
    so the two agree wherever every interpolation tap lies inside the box."""
    size = 32
    x = torch.rand(4, 3, size, size, generator=gen())
    top, left, h, w = box
    boxes = torch.tensor([box], dtype=torch.float32).expand(4, 4)
    ours = crop_and_flip(x, boxes, torch.zeros(4, dtype=torch.bool), mode)
    ref = TF.resized_crop(x, top, left, h, w, [size, size], interpolation=interp, antialias=False).clamp(0, 1)
    sy = (torch.arange(size) + 0.5) * h / size - 0.5
    sx = (torch.arange(size) + 0.5) * w / size - 0.5
    rows = (sy >= margin) & (sy <= h - 1 - margin)
    cols = (sx >= margin) & (sx <= w - 1 - margin)
    assert rows.sum() > size // 2 and cols.sum() > size // 2
    torch.testing.assert_close(ours[:, :, rows][:, :, :, cols], ref[:, :, rows][:, :, :, cols], atol=1e-5, rtol=0)
    # and mirrored: the flipped crop is the crop, flipped
    flipped = crop_and_flip(x, boxes, torch.ones(4, dtype=torch.bool), mode)
    torch.testing.assert_close(flipped, ours.flip(-1), atol=1e-5, rtol=0)


# ------------------------------------------------------------------ colour ops vs torchvision


@pytest.mark.parametrize("ours,theirs,lo,hi", [
    (adjust_brightness, TF.adjust_brightness, 0.0, 2.0),
    (adjust_contrast, TF.adjust_contrast, 0.0, 2.0),
    (adjust_saturation, TF.adjust_saturation, 0.0, 2.0),
    (adjust_hue, TF.adjust_hue, -0.5, 0.5),
])
def test_colour_ops_match_torchvision(ours, theirs, lo, hi):
    x = smooth_images(8)
    f = lo + (hi - lo) * torch.rand(8, generator=gen(3))
    ref = torch.stack([theirs(x[i], float(f[i])) for i in range(len(x))])
    torch.testing.assert_close(ours(x, f), ref, atol=1e-5, rtol=0)


def test_grayscale_matches_torchvision():
    x = smooth_images()
    torch.testing.assert_close(rgb_to_grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)


def test_colour_jitter_applies_each_samples_own_order():
    n = 24
    x = smooth_images(n, 8, 8)
    u = torch.rand(n, 4, generator=gen(5))
    factors = torch.stack([0.6 + 0.8 * u[:, 0], 0.6 + 0.8 * u[:, 1], 0.6 + 0.8 * u[:, 2], 0.2 * u[:, 3] - 0.1], 1)
    order = torch.rand(n, 4, generator=gen(6)).argsort(1)
    apply = torch.arange(n) % 5 != 0
    out = color_jitter(x, factors, order, apply)
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(n):
        ref = x[i]
        if apply[i]:
            for k in order[i].tolist():
                ref = fns[k](ref, float(factors[i, k]))
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)
    assert torch.equal(out[~apply], x[~apply])
    assert len({tuple(o.tolist()) for o in order}) > 12  # orders really differ per sample
