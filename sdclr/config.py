"""params.yaml → typed, validated dataclasses.

``params.yaml`` is the single source of hyperparameters. This module turns it into
frozen dataclasses and rejects anything it does not understand with *one* sentence
naming the key, the value and what would be accepted — unknown keys (typos),
missing keys, wrong types and out-of-range values alike. Nothing here supplies a
default that params.yaml cannot override: every field is required in the file.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import yaml

from sdclr.errors import ConfigError, ParamError

# --------------------------------------------------------------------------- checks
# A check returns None when the value is fine, else the phrase "what is accepted".


def _range(lo=None, hi=None, lo_open=False, hi_open=False, what="a number"):
    def check(v):
        if isinstance(v, float) and not math.isfinite(v):
            return f"a finite {what.removeprefix('a ').removeprefix('an ')}"
        bad = (lo is not None and (v <= lo if lo_open else v < lo)) or (
            hi is not None and (v >= hi if hi_open else v > hi)
        )
        if not bad:
            return None
        if lo is not None and hi is not None:
            return f"{what} in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        if lo is not None:
            return f"{what} {'>' if lo_open else '>='} {lo}"
        return f"{what} {'<' if hi_open else '<='} {hi}"

    return check


def positive(what="a positive number"):
    return _range(lo=0, lo_open=True, what=what)


def non_negative(what="a number"):
    return _range(lo=0, what=what)


def unit_interval(what="a probability"):
    return _range(lo=0, hi=1, what=what)


def _interval_pair(lo, hi):
    def check(v):
        a, b = v
        if not (lo <= a <= b <= hi):
            return f"two numbers [low, high] with {lo} <= low <= high <= {hi}"
        return None

    return check


def _distinct_ids(v):
    if len(v) == 0 or len(set(v)) != len(v) or min(v) < 0:
        return "a non-empty list of distinct non-negative split ids, e.g. [0, 1, 2, 3, 4]"
    return None


def _split_subset(v):
    if len(set(v)) != len(v) or (v and min(v) < 0):
        return "a list of distinct non-negative split ids, possibly empty, e.g. [] or [0]"
    return None


def _milestones(v):
    if any(m < 1 for m in v) or list(v) != sorted(set(v)):
        return "an increasing list of positive epoch numbers, e.g. [10, 20] (or [] for a constant lr)"
    return None


def _negatives(v):
    if v == "all" or (isinstance(v, int) and v >= 0):
        return None
    return "a non-negative integer (0 = the batch's own entries only) or 'all' (full softmax)"


def _device(v):
    if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
        return None
    return "'auto', 'cpu', 'cuda' or 'cuda:N'"


def _dataset_names() -> tuple[str, ...]:
    """The datasets' table keys, read when a file is checked (so a row registered later counts).

    Imported here rather than at the top, so that reading params loads no data module."""
    from sdclr.data.datasets import DATASETS

    return tuple(DATASETS)


def _p(check=None, doc="", choices=None):
    """A field's check and one-line doc; ``choices``, for a name that must be a key of a table
    that can grow (the datasets), gives the accepted names when the file is read."""
    return field(metadata={"check": check, "doc": doc, "choices": choices})


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class DataParams:
    dataset: str = _p(doc="which dataset the pipeline runs on", choices=_dataset_names)  # a row of DATASETS
    source_dir: Optional[str] = _p(doc="a directory holding the official files; null = system copy, then download")
    download: bool = _p(doc="allow the official download when no local copy is found")


@dataclass(frozen=True)
class SubsampleParams:
    val_per_class: int = _p(positive("a positive integer"), "balanced validation images held out per class")
    imbalance_ratio: float = _p(_range(lo=1, what="a number"), "r: largest class / smallest class")
    n_max: Optional[int] = _p(positive("a positive integer or null"), "images of the largest class; null = per-class pool size")
    pool_per_class: Optional[int] = _p(positive("a positive integer or null"),
                                       "cap on the balanced pool per class (the full-shot probe's data and kNN's "
                                       "memory); null = every image not held out (the recipe)")
    splits: list[int] = _p(_distinct_ids, "ids of the independent long-tail draws")
    few_shot_fraction: float = _p(_range(lo=0, hi=1, lo_open=True, what="a fraction"), "S_b size per class, as a fraction of the pool")


@dataclass(frozen=True)
class ModelParams:
    # Widths below 8 give 1x1 convolutions with < 8 channels, whose oneDNN CPU backward
    # (jit_avx2_1x1 bwd-weights, torch 2.14) intermittently hangs or corrupts memory.
    width: int = _p(_range(lo=8, what="an integer"), "ResNet-18 base width (64 = paper; >= 8, see the note above)")
    head_depth: int = _p(_range(lo=1, hi=3, what="an integer"), "number of linear layers in the projection head")
    head_hidden: int = _p(positive("a positive integer"), "projection head hidden width")
    proj_dim: int = _p(positive("a positive integer"), "projection head output dimension")


@dataclass(frozen=True)
class AugmentParams:
    crop_scale: tuple[float, float] = _p(_interval_pair(0.0, 1.0), "RandomResizedCrop area range")
    crop_ratio: tuple[float, float] = _p(_interval_pair(0.1, 10.0), "RandomResizedCrop aspect-ratio range")
    flip_p: float = _p(unit_interval(), "horizontal flip probability")
    jitter: tuple[float, float, float, float] = _p(None, "colour jitter brightness, contrast, saturation, hue")
    jitter_p: float = _p(unit_interval(), "probability of applying colour jitter")
    gray_p: float = _p(unit_interval(), "probability of converting to grayscale")
    interpolation: Literal["bilinear", "bicubic"] = _p(None, "crop resampling (paper: bicubic)")

    def __post_init__(self):
        b, c, s, h = self.jitter
        if min(b, c, s) < 0 or not 0 <= h <= 0.5:
            raise ParamError(
                f"augment.jitter = {list(self.jitter)} is out of range; accepted: "
                "[brightness, contrast, saturation, hue] with the first three >= 0 and hue in [0, 0.5]."
            )


@dataclass(frozen=True)
class PretrainParams:
    epochs: int = _p(positive("a positive integer"), "pretraining epochs")
    batch_size: int = _p(_range(lo=2, what="an integer"), "images per step")
    lr: float = _p(positive(), "peak learning rate (after warm-up)")
    momentum: float = _p(_range(lo=0, hi=1, hi_open=True, what="a number"), "SGD momentum")
    weight_decay: float = _p(non_negative(), "SGD weight decay")
    warmup_epochs: int = _p(non_negative("an integer"), "linear warm-up epochs before cosine decay")
    temperature: float = _p(positive(), "NT-Xent temperature")
    temperature_schedule: Literal["constant", "cosine"] = _p(
        None, "constant: the temperature above (sbid: sbid.temperature) | cosine: TS (Kukleva et al. 2023), "
        "every method's τ moves between tau_min and tau_max")
    tau_min: float = _p(positive(), "cosine schedule: lowest τ (TS: 0.1)")
    tau_max: float = _p(positive(), "cosine schedule: highest τ (TS: 1.0)")
    period_epochs: int = _p(positive("a positive integer"), "cosine schedule: period T in epochs (TS: 400 = 2·t_max)")
    checkpoint_every: int = _p(positive("a positive integer"), "epochs between resume checkpoints")
    amp: Literal["auto", "bf16", "off"] = _p(None, "autocast: auto = bf16 on CUDA, off on CPU")
    channels_last: Literal["auto", "on", "off"] = _p(None, "memory format: auto = channels_last on CUDA")
    compile: Union[bool, Literal["auto"]] = _p(
        None, "torch.compile the network and the augmentation: auto = on CUDA (a failure: one line, then eager)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = _p(
        None, "torch.compile mode; reduce-overhead replays the compiled network as CUDA graphs")
    nproc: int = _p(positive("a positive integer"), "processes (GPUs) per node; > 1: the stage launches torchrun itself")
    sync_bn: bool = _p(None, "SyncBatchNorm across processes (CUDA, nproc > 1); false = per-process BN statistics")

    def __post_init__(self):
        if self.tau_min > self.tau_max:
            raise ParamError(f"pretrain.tau_min = {self.tau_min} is above pretrain.tau_max = {self.tau_max}; "
                             "accepted: tau_min <= tau_max.")


@dataclass(frozen=True)
class SbidParams:
    """Single-branch instance discrimination (Cao & Wu 2024); shares the ``pretrain`` schedule."""

    head_hidden: int = _p(positive("a positive integer"), "head width: feat→hidden→BN→ReLU→hidden→BN→ReLU→proj_dim (paper: 2048)")
    proj_dim: int = _p(positive("a positive integer"), "head output dimension = memory bank entry size")
    temperature: float = _p(positive(), "τ of the cross-entropy over the bank logits (paper: 0.2)")
    self_distill_weight: float = _p(non_negative(), "λ of the sqrt self-distillation term (paper: 20; 0 = off)")
    negatives: Union[int, Literal["all"]] = _p(_negatives, "random other bank entries per step; 0 = batch only; all = full softmax")
    bank_update: Literal["gradient", "momentum"] = _p(None, "bank rule: gradient (Cao & Wu) | momentum (NPID)")
    bank_momentum: float = _p(_range(lo=0, hi=1, hi_open=True, what="a number"), "momentum rule: m (paper: 0.5)")
    bank_step: float = _p(positive(), "gradient rule: step size along Σ_i (y_ik − p_ik)·z_i")
    cutmix: bool = _p(None, "batch-level CutMix with mixed targets")
    cutmix_alpha: float = _p(positive(), "CutMix Beta(α, α) (paper: 0.5)")
    epochs: Optional[int] = _p(positive("a positive integer or null"), "null = pretrain.epochs (Cao & Wu: 200)")
    lr: Optional[float] = _p(positive("a positive number or null"), "null = pretrain.lr (Cao & Wu: 1.0 at batch 512)")


@dataclass(frozen=True)
class ProbeParams:
    # features: softmax regression on standardised features extracted once (fast; CPU default).
    # authors:  the SDCLR authors' probe: a linear layer on the frozen backbone, images
    #           re-augmented every epoch (random crop pad 4 + flip), step decay x0.1 at the milestones.
    protocol: Literal["features", "authors"] = _p(doc="linear probe protocol: features | authors")
    lr: float = _p(positive(), "linear probe peak learning rate (SGD, momentum 0.9)")
    weight_decay: float = _p(non_negative(), "linear probe weight decay")
    batch_size: int = _p(positive("a positive integer"), "linear probe batch size")
    full_shot_epochs: int = _p(positive("a positive integer"), "epochs on the whole balanced pool")
    few_shot_epochs: int = _p(positive("a positive integer"), "epochs on the few-shot subset S_b")
    full_shot_milestones: list[int] = _p(_milestones, "authors protocol: epochs where the lr drops x0.1 (full-shot)")
    few_shot_milestones: list[int] = _p(_milestones, "authors protocol: epochs where the lr drops x0.1 (few-shot)")


@dataclass(frozen=True)
class EvaluateParams:
    feature_batch_size: int = _p(positive("a positive integer"), "images per feature-extraction batch")
    knn_k: int = _p(positive("a positive integer"), "neighbours of the kNN classifier")
    knn_temperature: float = _p(positive(), "temperature of the kNN vote weights exp(sim/T)")
    probe: ProbeParams = _p()


@dataclass(frozen=True)
class BclParams:
    """Boosted Contrastive Learning (Zhou et al., ICML 2022): BCL-I on SimCLR, BCL-D on SDCLR."""

    beta: float = _p(_range(lo=0, hi=1, hi_open=True, what="a number"),
                     "EMA factor of each image's loss, its memorisation score (paper: 0.97)")
    rand_strength: float = _p(positive(), "RandAugment magnitude scale (paper: 30): BCL-I m = rs·(1 + 2w)/3, "
                                          "BCL-D m = rs·(1 + 5·w·U)/6")
    weight_decay_i: Optional[float] = _p(non_negative(), "BCL-I's SGD weight decay; null = pretrain.weight_decay "
                                                         "(paper: 5e-4)")
    weight_decay_d: Optional[float] = _p(non_negative(), "BCL-D's SGD weight decay; null = pretrain.weight_decay "
                                                         "(paper: 1e-4)")


@dataclass(frozen=True)
class GhParams:
    """Geometric Harmonization (Zhou et al., NeurIPS 2023) on SimCLR (simclr_gh) and SDCLR (sdclr_gh)."""

    num_targets: int = _p(_range(lo=2, what="an integer"), "K simplex targets, at most model.proj_dim + 1 "
                                                            "(official CIFAR-100-LT: 100, its classes)")
    temperature: float = _p(positive(), "γ of the softmax over the targets (official: 0.1)")
    sinkhorn_epsilon: float = _p(_range(lo=0.02, what="a number"), "ε of the Sinkhorn kernel exp(logit/ε) "
                                                                     "(official: 0.05; >= 0.02 keeps it finite)")
    sinkhorn_iterations: int = _p(positive("a positive integer"), "Sinkhorn iterations (official: 300)")
    warmup_epochs: int = _p(non_negative("an integer"), "contrastive-only epochs before GH (official: 500 of 1000)")
    ramp_epochs: int = _p(positive("a positive integer"), "epochs over which GH's weight rises to 1 (official: 10)")
    refresh_every: int = _p(positive("a positive integer"), "π is recomputed when the warm-up ends and at every "
                                                           "multiple of this epoch (official: 20)")
    beta_warmup: float = _p(_range(lo=0, hi=1, hi_open=True, what="a number"),
                            "EMA factor of each image's logits during the warm-up (official: 0.9)")
    beta: float = _p(_range(lo=0, hi=1, hi_open=True, what="a number"), "EMA factor after it (official: 0.999)")


@dataclass(frozen=True)
class LaterMethodsParams:
    """Which splits the later methods (SimCLR + TS, BCL-I, BCL-D, SimCLR + GH, SDCLR + GH) run on; [] = none."""

    splits: list[int] = _p(_split_subset, "a subset of subsample.splits; [] keeps the later methods out of the run")


@dataclass(frozen=True)
class Params:
    seed: int = _p(non_negative("an integer"), "seed of every random draw")
    device: str = _p(_device, "where training runs")
    numerics: Literal["portable", "native"] = _p(
        None, "portable: AVX2 kernels (MKL: its vendor-independent branch) and 1 thread per stage, the same bytes on any x86-64 CPU | native: the "
        "CPU's best kernels and cores (faster, CPU-dependent numbers)")
    prune_ratio: float = _p(_range(lo=0, hi=1, hi_open=True, what="a fraction"), "SDCLR: fraction of conv weights pruned")
    data: DataParams = _p()
    subsample: SubsampleParams = _p()
    model: ModelParams = _p()
    augment: AugmentParams = _p()
    pretrain: PretrainParams = _p()
    sbid: SbidParams = _p()
    bcl: BclParams = _p()
    gh: GhParams = _p()
    later_methods: LaterMethodsParams = _p()
    evaluate: EvaluateParams = _p()

    def __post_init__(self):
        extra = sorted(set(self.later_methods.splits) - set(self.subsample.splits))
        if extra:
            raise ParamError(f"later_methods.splits = {self.later_methods.splits} names split(s) {extra} that "
                             f"subsample.splits = {self.subsample.splits} does not draw; accepted: a subset of it.")
        if self.later_methods.splits and self.gh.num_targets > self.model.proj_dim + 1:  # GH runs: check now
            raise ParamError(f"gh.num_targets = {self.gh.num_targets} does not fit a simplex in model.proj_dim = "
                             f"{self.model.proj_dim} dimensions; accepted: at most {self.model.proj_dim + 1}.")


# --------------------------------------------------------------------------- loader


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        names = " or ".join(_type_name(a) for a in inner)
        return f"{names} or null" if type(None) in typing.get_args(tp) else names
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin is tuple:
        return f"a list of {len(typing.get_args(tp))} {_type_name(typing.get_args(tp)[0]).removeprefix('an ').removeprefix('a ')}s"
    if dataclasses.is_dataclass(tp):
        return "a mapping of keys"
    return str(tp)


def _coerce(value: Any, tp, key: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise one ConfigError sentence."""

    def fail():
        raise ParamError(f"{key} = {value!r} has the wrong type; accepted: {_type_name(tp)}.")

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            fail()
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for inner in [a for a in typing.get_args(tp) if a is not type(None)]:
            try:
                return _coerce(value, inner, key)
            except ConfigError:
                pass
        fail()
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool):
            raise ParamError(
                f"{key} = {value!r} is not a known choice; accepted: {_type_name(tp)}."
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            fail()
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        inner = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(inner):
            fail()
        return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, inner)))
    if tp is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            fail()
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def _build(cls, raw: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    where = f"`{prefix}`" if prefix else "the top level"
    for k in raw:
        if k not in names:
            raise ParamError(
                f"unknown key {_join(prefix, k)!r} at {where}; accepted keys there: {', '.join(names)}."
            )
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        if f.name not in raw:
            raise ParamError(
                f"missing key {key!r} ({f.metadata.get('doc') or 'required'}); add it to the file."
            )
        choices = f.metadata.get("choices")
        # a table's keys are checked as the Literal of its names, so the sentence is the one every choice gets
        value = _coerce(raw[f.name], Literal[choices()] if choices else hints[f.name], key)
        check: Optional[Callable] = f.metadata.get("check")
        if check is not None and value is not None:
            accepted = check(value)
            if accepted:
                shown = list(value) if isinstance(value, tuple) else value
                raise ParamError(f"{key} = {shown!r} is out of range; accepted: {accepted}.")
        kwargs[f.name] = value
    return cls(**kwargs)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def parse_params(raw: Any, source: str | Path = "params.yaml") -> Params:
    """Validate an already-parsed YAML document; errors name ``source`` as the file."""
    try:
        if not isinstance(raw, dict):
            raise ParamError("the file must be a YAML mapping of keys at the top level.")
        return _build(Params, raw, "")
    except ParamError as e:
        e.params_file = str(source)
        raise


def _yaml_error_line(error: yaml.YAMLError, text: str) -> int | None:
    """The 1-based line a YAML syntax error is on, as the user sees the file.

    PyYAML's marks are 0-based, and the ``problem_mark`` is where the parser gave up, which
    for an unclosed bracket, quote or key is the *next* token, often on the next line (or
    past the end of the file); the ``context_mark`` of such an error is where the broken
    construct starts. Block-structure contexts ("while parsing a block mapping") mark the
    start of the enclosing block, so there the problem mark is the right line.
    """
    problem = getattr(error, "problem_mark", None)
    context = getattr(error, "context_mark", None)
    what = getattr(error, "context", None) or ""
    mark = context if context is not None and what.startswith(("while scanning", "while parsing a flow")) else problem
    if mark is None:
        return None
    last_line = max(1, len(text.splitlines()))
    return min(mark.line + 1, last_line)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; every problem is one ConfigError sentence naming it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; run from the project root or pass --params PATH.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read as a text file ({type(e).__name__}); "
                          "pass --params PATH of a readable params file.") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        line = _yaml_error_line(e, text)
        where = f" at line {line}" if line else ""
        problem = getattr(e, "problem", None)
        why = f" ({problem})" if problem else ""
        raise ConfigError(f"{path}: not valid YAML{where}{why}; fix the syntax there.") from None
    return parse_params(raw, path)


def param(params: Params, key: str) -> Any:
    """The value at a dotted key (``"sbid.lr"``); a group comes back as a plain dict."""
    value: Any = params
    for part in key.split("."):
        value = getattr(value, part)
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def as_flat_dict(params: Params) -> dict[str, Any]:
    """Dotted-key view of every param (what MLflow logs and what hashes are taken over)."""
    out: dict[str, Any] = {}

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            key = _join(prefix, f.name)
            if dataclasses.is_dataclass(v):
                walk(v, key)
            else:
                out[key] = list(v) if isinstance(v, tuple) else v

    walk(params, "")
    return out
