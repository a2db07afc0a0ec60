"""torch.compile changes the speed of training, never what it learns.

The requirement: with ``pretrain.compile`` on (the network's forward and the
augmentation's pure transform compiled, :func:`sdclr.pretrain_loop.build`), the loss curve is the
plain path's to within float noise over 50 steps from the same seed, compared here on the
CPU in fp32 (``amp: off``, ``channels_last: off``) through the training code itself
(``build`` + ``Training.step``), with real Inductor kernels.

Why the learning rate is small. Contrastive pretraining of this network is chaotic at the
learning rates the pipeline uses: in the *eager* path alone, scaling every weight by
(1 + 1e-7·N(0, 1)) — float32 rounding noise — grows to a 4e-3 relative loss difference
within 50 steps at lr 1e-4 and to 5e-2 at lr 1e-3 (measured: simclr, τ 0.5, momentum 0.9;
eager runs on 1 and on 2 threads part the same way), so at such rates no per-step tolerance
tells a compile bug from rounding. At lr 3e-6 the same perturbation stays below 4e-6 over
the 50 steps, while the curve still follows the optimisation: doubling the lr moves it by
1.6e-4 .. 7e-4 — each test's control, which shows the tolerance is tight enough to see a
change of the optimisation itself, not only of the data.

Inductor's C++ compiles take tens of seconds per graph on a 2-core CPU; the shapes are
chosen so graphs are shared (simclr's batch of 32 sends 64 views through the network in
one call, as sdclr's batch of 64 does through its dense branch; sdclr and sbid augment
batches of 64; the augmentation test uses simclr's shapes), and a later run reads them
from Inductor's on-disk cache: the file took 4 min 43 s from an empty cache and about a minute
with a warm one (2-core CPU, torch 2.14.1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sdclr.config import Params
from sdclr.data.augment import BatchAugment
from sdclr.errors import ParamError
from sdclr.pretrain_loop import Job, build
from sdclr.pretrain_step import Training
from sdclr.registry import method_class, parse_params
from sdclr.storage.encoder_file import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
STEPS = 50
LR = 3e-6
NUM_IMAGES = 256
SIZE = 16
#: per-step batch of each method (see the module docstring: graphs shared between methods); the
#: network sees 64 rows in every run, so Dynamo never recompiles it for dynamic shapes
BATCH = {"simclr": 32, "sdclr": 64}
#: max |compiled − eager| / |eager| over the 50 per-step losses. Measured on a 2-core x86 CPU
#: (torch 2.14.1): simclr 6.2e-6, sdclr 2.3e-6, sbid 7.2e-7 — the tolerance is ~10x the largest.
#: The lr-doubled controls measured 7.0e-4, 2.5e-4, 1.6e-4 (>= 2.7x above it); a different seed
#: 9.3e-2, 8.2e-2, 5.5e-2. reduce-overhead on the CPU, first 3 steps: 4.3e-7.
LOSS_RTOL = 6e-5
#: max |compiled − eager| of the augmented views (values in [0, 1]); measured 3 channels
#: 2.6e-6, 1 channel 1.3e-6 (over 30 seeds at most 3.3e-6 and 1.6e-6) — the tolerance is ~10x the larger.
VIEW_ATOL = 3e-5


def tiny_params(**pretrain) -> Params:
    """params.yaml shrunk to a run of seconds: ResNet-18 of width 8 (config's minimum), small
    heads, fp32 on the CPU, constant lr (no warm-up: ``Training.step`` keeps the peak lr)."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["device"] = "cpu"
    raw["model"].update(width=8, head_hidden=32, proj_dim=16)
    raw["sbid"].update(head_hidden=32, proj_dim=16, negatives=64, temperature=0.5)
    raw["pretrain"].update(batch_size=32, lr=LR, momentum=0.9, temperature=0.5, warmup_epochs=0, amp="off",
                           channels_last="off", compile=False, compile_mode="default", nproc=1)
    raw["pretrain"].update(pretrain)
    return parse_params(raw)


def synthetic_images(channels: int = 3) -> np.ndarray:
    """uint8 N×H×W×C, the layout the pretrain stage passes to ``build``."""
    return np.random.default_rng(0).integers(0, 256, (NUM_IMAGES, SIZE, SIZE, channels), dtype=np.uint8)


def start(params: Params, method: str) -> tuple[Training, list[str]]:
    """A run as the pretrain stage builds it, its messages collected instead of printed."""
    images = synthetic_images()
    t = build(params, Job(method_class(method), 0, images, np.arange(len(images)), ModelSpec(3, [0.5] * 3, [0.25] * 3)))
    notes: list[str] = []
    t.log = notes.append
    t.step_fn.train()
    t.method.on_epoch_start(0)  # sdclr: the pruning mask of epoch 1, from the seeded initial weights
    return t, notes


def loss_curve(params: Params, method: str, steps: int = STEPS) -> tuple[np.ndarray, Training, list[str]]:
    """Per-step losses of ``steps`` optimisation steps on a fixed index sequence (the same for
    every run, drawn from its own generator; the augmentation draws from the run's seeded
    generator)."""
    t, notes = start(params, method)
    order = torch.Generator().manual_seed(123)
    losses = [t.step(torch.randperm(NUM_IMAGES, generator=order)[: t.local_batch])[0] for _ in range(steps)]
    return torch.stack(losses).double().numpy(), t, notes


def max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.abs(a)))


@pytest.fixture(scope="module")
def eager_curves():
    """The plain path's curve per method, computed once."""
    cache: dict[str, np.ndarray] = {}

    def get(method: str) -> np.ndarray:
        if method not in cache:
            cache[method] = loss_curve(tiny_params(batch_size=BATCH[method]), method)[0]
        return cache[method]

    return get


def assert_compiled(t: Training, notes: list[str]) -> None:
    """The run compiled and kept its compiled code: no fallback note, the first step done, the
    network's forward still torch.compile's wrapper and the augmentation's transform compiled."""
    assert not any("torch.compile failed" in n for n in notes), notes
    assert not t.compile.pending
    forward = t.method.net.__dict__.get("forward")
    assert forward is not None and hasattr(forward, "_torchdynamo_orig_callable"), forward
    assert "_transform" in vars(t.method.augment), "the augmentation's transform is not compiled"


@pytest.mark.parametrize("method", ["simclr", "sdclr"])
def test_the_compiled_run_follows_the_eager_loss_curve_for_50_steps(method, eager_curves):
    """Same seed, same batches, fp32 on the CPU: every one of the 50 per-step losses of the
    compiled run is the eager one to within ``LOSS_RTOL`` (relative).

    The control — the eager run with the lr doubled — must be *outside* that tolerance, so the
    comparison can fail on a change as small as one of the optimiser's settings (a different seed
    is off by 5e-2 .. 9e-2). Bit-identical curves would mean the compiled kernels never ran (e.g.
    Dynamo's ``suppress_errors`` falling back to eager without the one-line note), so the curves
    must differ, if only in the last bits.
    """
    batch = BATCH[method]
    eager = eager_curves(method)
    compiled, t, notes = loss_curve(tiny_params(batch_size=batch, compile=True), method)
    assert_compiled(t, notes)
    assert np.isfinite(eager).all() and np.isfinite(compiled).all()
    assert eager.max() < 2 * eager[0], f"the eager run is not stable: {eager}"

    diff = max_rel_diff(eager, compiled)
    assert diff <= LOSS_RTOL, f"{method}: compiled loss off by {diff:.1e} (relative) > {LOSS_RTOL:.0e}"
    assert not np.array_equal(eager, compiled), "bit-identical to eager: the compiled code did not run"

    doubled, _, _ = loss_curve(tiny_params(batch_size=batch, lr=2 * LR), method)
    control = max_rel_diff(eager, doubled)
    assert control > LOSS_RTOL, f"{method}: lr x2 moved the curve by only {control:.1e}: the test cannot fail"


@pytest.mark.parametrize("channels", [3, 1])
def test_the_compiled_augmentation_transform_equals_the_eager_one(channels):
    """``BatchAugment.transform`` is pure: compiled, it must give the eager views from the same
    draws (to ``VIEW_ATOL``; Inductor reorders float maths), and the whole call — draws eager,
    transform compiled — the eager views from the same seed. 1 channel runs crop + flip only,
    3 channels the colour ops too. Control: the next draws of the generator give views far
    outside the tolerance, so the comparison sees a change of the draws. Bit-identical views would
    mean the compiled kernels never ran (Inductor's fused maths differs in the last bits)."""
    aug = tiny_params().augment
    eager, compiled = BatchAugment(aug, channels), BatchAugment(aug, channels).compile("default")
    images = torch.from_numpy(synthetic_images(channels)[:32]).permute(0, 3, 1, 2).contiguous()
    gen = torch.Generator().manual_seed(7)
    draws = eager.draw(images.shape, gen, images.device)
    want = eager.transform(images, *draws)
    got = compiled._transform(images, *draws)
    assert got.shape == want.shape == images.shape and got.dtype == torch.float32
    err = (got - want).abs().max().item()
    assert err <= VIEW_ATOL, f"{channels} channel(s): compiled views off by {err:.1e} > {VIEW_ATOL:.0e}"
    assert not torch.equal(got, want), "bit-identical to eager: the compiled transform did not run"

    whole = compiled(images, torch.Generator().manual_seed(7))
    assert (whole - want).abs().max().item() <= VIEW_ATOL  # the draws are eager: same seed, same draws

    other = eager.transform(images, *eager.draw(images.shape, gen, images.device))
    assert (other - want).abs().max().item() > 100 * VIEW_ATOL


def test_compile_auto_builds_an_eager_run_on_the_cpu():
    """``compile: auto`` means "on CUDA only": accepted, and on the CPU nothing is compiled and
    the run trains eagerly. Control: ``compile: true`` on the same CPU asks for the compile
    (applied by the first step, not run here)."""
    auto, notes = start(tiny_params(compile="auto"), "simclr")
    assert auto.compile.pending is False and auto.compile.cuda_graphs is False
    assert "forward" not in vars(auto.method.net) and "_transform" not in vars(auto.method.augment)
    loss, _ = auto.step(torch.arange(auto.local_batch))
    assert torch.isfinite(loss) and not notes

    on, _ = start(tiny_params(compile=True), "simclr")
    assert on.compile.pending is True and on.compile.mode == "default"


def test_nothing_compiles_before_the_first_step(tmp_path):
    """Compiling waits for the first step, the only place with the eager fallback: sbid's bank
    fill pass (``restore`` → ``initialise``) runs the network before it and must run it eagerly.
    (Compiling in ``build`` made a failing compile crash sbid there instead of falling back.)"""
    from sdclr.pretrain_loop import restore

    t, notes = start(tiny_params(compile=True, compile_mode="reduce-overhead"), "sbid")
    restore(t, tmp_path / "none.ckpt", notes.append)  # no checkpoint: the fill pass
    assert "forward" not in vars(t.method.net) and "_transform" not in vars(t.method.augment)
    assert t.compile.pending and t.compile.cuda_graphs is False  # CUDA graphs only on CUDA


@pytest.mark.parametrize("key, value", [("compile_mode", "bogus"), ("compile", "yes")])
def test_an_unknown_compile_setting_is_one_sentence_naming_the_key(key, value):
    """A typo in ``pretrain.compile_mode`` (or a ``compile`` that is neither a bool nor ``auto``)
    is a ParamError naming the key, the value and what is accepted — before anything is built."""
    with pytest.raises(ParamError) as e:
        tiny_params(**{key: value})
    message = str(e.value)
    assert f"pretrain.{key}" in message and repr(value) in message and "accepted" in message, message
    if key == "compile_mode":
        assert all(mode in message for mode in ("default", "reduce-overhead", "max-autotune-no-cudagraphs"))
