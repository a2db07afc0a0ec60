"""BCL's RandAugment on the device: each op against torchvision (and BCL's PIL calls), probability,
per-sample independence, determinism, 1-channel images, range/dtype/shape, the two ways of computing it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageDraw
from torchvision.transforms import InterpolationMode

from sdclr.data.randaugment import (
    GEOMETRIC,
    NONE,
    NUM_OPS,
    OPS,
    RANGES,
    apply_plan,
    op_values,
    rand_augment,
    sample_plan,
)
from sdclr.data.randaugment_ops import CUTOUT_FILL

H, W = 20, 24  # not square: catches a W/H mix-up in the geometric matrices
MAGNITUDES = (0.0, 7.5, 19.0, 30.0)
# float maths in another order than torchvision's kernels (e.g. sharpness's add with alpha): a few ulp
ATOL = 1e-6


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def noise(n=4, c=3, h=H, w=W, seed=0, lo=0.0, hi=1.0) -> torch.Tensor:
    """Float images off the 8-bit grid, with a flat image and a gray one among them (edge cases)."""
    x = lo + (hi - lo) * torch.rand(n, c, h, w, generator=gen(seed))
    if n >= 4:
        x[2] = 0.4  # constant: AutoContrast keeps it, Equalize's step is 0
        x[3] = x[3, :1]  # gray pixels: saturation has nothing to change
    return x


def value_of(op: int, m: float, sign: float = 1.0) -> float:
    lo, hi = RANGES[op]
    return sign * (lo + (hi - lo) * m / 30) if op < GEOMETRIC else lo + (hi - lo) * m / 30


def ours(x: torch.Tensor, op: int, m: float, sign: float = 1.0, centre=(10.0, 7.0), select="gather") -> torch.Tensor:
    """One op on every image of ``x`` through the production path (a one-slot plan)."""
    b = len(x)
    ops = torch.full((b, 1), op)
    value = op_values(ops, torch.full((b, 1), m), torch.full((b, 1), sign))
    return apply_plan(x, ops, value, torch.tensor([centre]).expand(b, 1, 2), select)


# ------------------------------------------------------------------ the references


def pil_matrix(op: int, v: float, h: int = H, w: int = W) -> tuple[float, ...]:
    """BCL's geometric ops as PIL affine data (input = (a·x + b·y + c, d·x + e·y + f), pixel-edge coords)."""
    if op == 0:
        return 1, v, 0, 0, 1, 0
    if op == 1:
        return 1, 0, 0, v, 1, 0
    if op == 2:
        return 1, 0, v * w, 0, 1, 0
    if op == 3:
        return 1, 0, 0, 0, 1, v * h
    a = math.radians(v)  # PIL's rotate: counter-clockwise about (w/2, h/2)
    cx, cy = w / 2, h / 2
    return (math.cos(a), -math.sin(a), cx - math.cos(a) * cx + math.sin(a) * cy,
            math.sin(a), math.cos(a), cy - math.sin(a) * cx - math.cos(a) * cy)


def near_tie(op: int, v: float, h: int = H, w: int = W, margin: float = 1e-3) -> torch.Tensor:
    """H×W: pixels whose sampling point lies within ``margin`` px of a midpoint between two pixels.

    There nearest-neighbour rounding decides: PIL floors the edge coordinate, grid_sample rounds
    half to even, and float32 grids built two ways differ by ~1e-6 px. Shear 0.6 puts whole rows
    on exact midpoints, so this mask is not empty in practice.
    """
    a, b, c, d, e, f = pil_matrix(op, v, h, w)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                            indexing="ij")
    xin, yin = a * xs + b * ys + c, d * xs + e * ys + f
    dist = lambda t: (t - t.round()).abs()  # noqa: E731 — distance to an integer edge = a midpoint of centres
    return (dist(xin) < margin) | (dist(yin) < margin)


def tv_geometric(x: torch.Tensor, op: int, v: float) -> torch.Tensor:
    """torchvision's form of BCL's op (as torchvision's own RandAugment writes it): nearest, fill 0."""
    nearest = dict(interpolation=InterpolationMode.NEAREST, fill=0)
    if op == 4:
        return TF.rotate(x, v, **nearest)
    if op in (0, 1):
        shear = [math.degrees(math.atan(v)), 0.0] if op == 0 else [0.0, math.degrees(math.atan(v))]
        return TF.affine(x, angle=0.0, translate=[0.0, 0.0], scale=1.0, shear=shear, center=[0, 0], **nearest)
    # PIL samples input = output + t, so the content moves by −t
    translate = [-v * x.shape[-1], 0.0] if op == 2 else [0.0, -v * x.shape[-2]]
    return TF.affine(x, angle=0.0, translate=translate, scale=1.0, shear=[0.0, 0.0], **nearest)


def pil_geometric(u8: torch.Tensor, op: int, v: float) -> torch.Tensor:
    """BCL's own call on a PIL image (3-channel uint8 C×H×W in, float out)."""
    im = Image.fromarray(u8.permute(1, 2, 0).numpy())
    out = im.rotate(v) if op == 4 else im.transform(im.size, Image.AFFINE, pil_matrix(op, v, *u8.shape[-2:]))
    return torch.from_numpy(np.array(out)).permute(2, 0, 1).float() / 255


def cutout_box(v: float, centre: tuple[float, float], h: int = H, w: int = W) -> tuple[int, int, int, int]:
    """BCL's CutoutAbs rule → (top, left, height, width) of the pixels PIL's inclusive rectangle fills."""
    s = v * w
    x0, y0 = int(max(0, centre[0] - s / 2)), int(max(0, centre[1] - s / 2))
    x1, y1 = min(w, x0 + s), min(h, y0 + s)
    return y0, x0, min(int(y1), h - 1) - y0 + 1, min(int(x1), w - 1) - x0 + 1


def tv_op(x: torch.Tensor, op: int, v: float, centre=(10.0, 7.0)) -> torch.Tensor:
    """torchvision's op on one float C×H×W image at BCL's value ``v``."""
    name = OPS[op]
    if op < GEOMETRIC:
        return tv_geometric(x, op, v)
    if name == "Posterize":  # BCL's images are 8-bit: torchvision's uint8 posterize on to_dtype's quantisation
        q = TF.to_dtype(x, torch.uint8, scale=True)
        return TF.to_dtype(TF.posterize(q, max(1, int(v))), torch.float32, scale=True)
    if name == "Cutout":
        if v <= 0:
            return x
        fill = [c / 255 for c in CUTOUT_FILL]
        fill = fill if x.shape[0] == 3 else [0.2989 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]]
        return TF.erase(x, *cutout_box(v, centre, *x.shape[-2:]), torch.tensor(fill).view(-1, 1, 1))
    fn = {"AutoContrast": lambda t, _: TF.autocontrast(t), "Invert": lambda t, _: TF.invert(t),
          "Equalize": lambda t, _: TF.equalize(t), "Solarize": lambda t, a: TF.solarize(t, a / 255),
          "Contrast": TF.adjust_contrast, "Color": TF.adjust_saturation, "Brightness": TF.adjust_brightness,
          "Sharpness": TF.adjust_sharpness}[name]
    return fn(x, v)


# ------------------------------------------------------------------ each op against torchvision


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("op", range(GEOMETRIC, NUM_OPS), ids=OPS[GEOMETRIC:])
def test_intensity_op_matches_torchvision(op, channels):
    x = noise(4, channels)
    for m in MAGNITUDES:
        out = ours(x, op, m)
        ref = torch.stack([tv_op(img, op, value_of(op, m)) for img in x])
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=0, msg=lambda s: f"{OPS[op]} m={m}: {s}")


@pytest.mark.parametrize("op", range(GEOMETRIC), ids=OPS[:GEOMETRIC])
def test_geometric_op_matches_torchvision_and_bcl_pil_call(op):
    """Exact at every pixel whose sampling point is not within 1e-3 px of a midpoint (see near_tie)."""
    u8 = torch.randint(0, 256, (3, 3, H, W), dtype=torch.uint8, generator=gen(1))
    x = u8.float() / 255
    for m in (7.5, 19.0, 30.0):
        for sign in (1.0, -1.0):
            v = value_of(op, m, sign)
            out = ours(x, op, m, sign)
            keep = ~near_tie(op, v)
            assert keep.float().mean() > 0.75
            for i in range(len(x)):
                tv = tv_geometric(x[i], op, v)
                pil = pil_geometric(u8[i], op, v)
                assert torch.equal(out[i][:, keep], tv[:, keep]), f"{OPS[op]} v={v}: differs from torchvision"
                assert torch.equal(out[i][:, keep], pil[:, keep]), f"{OPS[op]} v={v}: differs from BCL's PIL call"
            assert (out != x).any()
    # magnitude 0 is the identity for all five (value 0), exactly
    assert torch.equal(ours(x, op, 0.0), x)


def test_cutout_is_bcls_pil_rectangle():
    u8 = torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=gen(2))
    for m, centre in ((30.0, (10.0, 7.0)), (12.0, (1.3, 19.9)), (0.5, (23.6, 2.2)), (25.0, (24.0, 20.0))):
        v = value_of(OPS.index("Cutout"), m)
        im = Image.fromarray(u8.permute(1, 2, 0).numpy())
        s = v * W  # BCL's CutoutAbs, as written there
        x0, y0 = int(max(0, centre[0] - s / 2.0)), int(max(0, centre[1] - s / 2.0))
        ImageDraw.Draw(im).rectangle((x0, y0, min(W, x0 + s), min(H, y0 + s)), CUTOUT_FILL)
        ref = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
        out = ours(u8[None].float() / 255, OPS.index("Cutout"), m, centre=centre)[0]
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    assert torch.equal(ours(u8[None].float() / 255, OPS.index("Cutout"), 0.0), u8[None].float() / 255)


def test_magnitude_ranges_are_bcls():
    # v = lo + (hi − lo)·m/30, BCL's augment_list; magnitudes outside [0, 30] are clamped
    ops = torch.arange(NUM_OPS).view(-1, 1)
    for m, pick in ((0.0, 0), (30.0, 1), (-5.0, 0), (45.0, 1)):
        v = op_values(ops, torch.full((NUM_OPS, 1), m))
        assert v.view(-1).tolist() == pytest.approx([r[pick] for r in RANGES])
    assert OPS[4] == "Rotate" and RANGES[4] == (0.0, 60.0) and RANGES[8] == (0.0, 110.0) and RANGES[9] == (4.0, 8.0)


# ------------------------------------------------------------------ the whole transform


def test_matches_torchvision_op_by_op_along_each_samples_plan():
    """rand_augment replayed sample by sample: the drawn plan, each op through torchvision."""
    b, n = 24, 3
    x = noise(b, seed=3)
    prob = torch.linspace(0.2, 1.0, b)
    mag = torch.linspace(0.0, 30.0, b)
    out = rand_augment(x, n, prob, mag, gen(4))
    op, sign, centre = sample_plan(b, n, prob, gen(4), H, W, torch.device("cpu"))
    assert ((op != NONE).sum(1) > 0).sum() > b // 2 and (op == NONE).any()  # a mix of applied and skipped ops
    for i in range(b):
        ref = x[i]
        for k in range(n):
            if op[i, k] != NONE:
                ref = tv_op(ref, int(op[i, k]), value_of(int(op[i, k]), float(mag[i]), float(sign[i, k])),
                            tuple(centre[i, k].tolist()))
        # these magnitudes put no sampling point of a geometric op near a midpoint (see near_tie): exact
        torch.testing.assert_close(out[i], ref, atol=ATOL, rtol=0, msg=lambda s: f"sample {i} {op[i].tolist()}: {s}")


def test_prob_zero_is_exactly_the_identity():
    x = noise(16)
    for select in ("gather", "mask"):
        out = rand_augment(x, 2, torch.zeros(16), torch.full((16,), 30.0), gen(), select=select)
        assert torch.equal(out, x)


def test_prob_one_applies_every_drawn_op():
    b, n = 64, 2
    op, _, _ = sample_plan(b, n, torch.ones(b), gen(5), H, W, torch.device("cpu"))
    assert (op != NONE).all() and len(set(op.view(-1).tolist())) == NUM_OPS  # every op among the draws
    # at magnitude 30 every op changes an image of noise in [0.2, 0.8] off the 8-bit grid
    x = noise(b, seed=5, lo=0.2, hi=0.8)
    x[2], x[3] = x[0], x[1]  # no flat images here
    out = rand_augment(x, 1, torch.ones(b), torch.full((b,), 30.0), gen(5))
    assert (out != x).flatten(1).any(1).all()
    # apply probability per (sample, op) ≈ prob
    op, _, _ = sample_plan(4000, 2, torch.full((4000,), 0.3), gen(6), H, W, torch.device("cpu"))
    assert abs((op != NONE).float().mean().item() - 0.3) < 0.02


def test_each_sample_gets_its_own_ops_and_magnitude():
    b = 64
    x = noise(1, seed=7).expand(b, -1, -1, -1).contiguous()
    # the same op, different magnitudes: different results
    for op in (OPS.index("Rotate"), OPS.index("Contrast"), OPS.index("Solarize")):
        ops = torch.full((4, 1), op)
        mag = torch.tensor([[6.0], [12.0], [18.0], [24.0]])
        out = apply_plan(x[:4], ops, op_values(ops, mag, torch.ones(4, 1)), torch.full((4, 1, 2), 5.0))
        assert len({tuple(o.flatten().tolist()) for o in out}) == 4
    out = rand_augment(x, 2, torch.ones(b), torch.linspace(0.0, 30.0, b), gen(8))
    assert len({tuple(o.flatten()[::5].tolist()) for o in out}) > 50


def test_same_seed_same_batch_other_seed_other_batch():
    x, prob, mag = noise(32), torch.full((32,), 0.8), torch.linspace(5.0, 30.0, 32)
    assert torch.equal(rand_augment(x, 2, prob, mag, gen(1)), rand_augment(x, 2, prob, mag, gen(1)))
    assert not torch.equal(rand_augment(x, 2, prob, mag, gen(1)), rand_augment(x, 2, prob, mag, gen(2)))
    g = gen(1)
    assert not torch.equal(rand_augment(x, 2, prob, mag, g), rand_augment(x, 2, prob, mag, g))  # two views differ


@pytest.mark.parametrize("channels", [3, 1])
def test_gather_and_mask_give_the_same_batch(channels):
    x, prob, mag = noise(48, channels, seed=9), torch.full((48,), 0.9), torch.linspace(0.0, 30.0, 48)
    gathered = rand_augment(x, 3, prob, mag, gen(3), select="gather")
    masked = rand_augment(x, 3, prob, mag, gen(3), select="mask")
    torch.testing.assert_close(gathered, masked, atol=ATOL, rtol=0)


def test_one_channel_works_and_color_is_the_identity():
    x = noise(16, 1, 28, 28, seed=10)
    for select in ("gather", "mask"):
        assert torch.equal(ours(x, OPS.index("Color"), 30.0, select=select), x)
    out = rand_augment(x, 2, torch.ones(16), torch.full((16,), 25.0), gen(11))
    op, _, _ = sample_plan(16, 2, torch.ones(16), gen(11), 28, 28, torch.device("cpu"))
    # every other op changes noise at magnitude 25, so exactly the samples that drew only Color are unchanged
    assert torch.equal((out != x).flatten(1).any(1), (op != OPS.index("Color")).any(1))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels,size", [(3, 32), (1, 28)])
def test_output_dtype_shape_range(dtype, channels, size):
    x = noise(64, channels, size, size, seed=12).to(dtype)
    x[0], x[1] = 0.0, 1.0  # the extremes
    before = x.clone()
    out = rand_augment(x, 2, torch.rand(64, generator=gen(13)), 30 * torch.rand(64, generator=gen(14)), gen(15))
    assert torch.equal(x, before)  # the input is left alone
    assert out.dtype == dtype and out.shape == x.shape
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_rejects_bad_input():
    x = noise(4)
    with pytest.raises(ValueError, match="float"):
        rand_augment((x * 255).to(torch.uint8), 1, torch.ones(4), torch.ones(4), gen())
    with pytest.raises(ValueError, match="shape"):
        rand_augment(x, 1, torch.ones(3), torch.ones(4), gen())
    with pytest.raises(ValueError, match="select"):
        rand_augment(x, 1, torch.ones(4), torch.ones(4), gen(), select="loop")
