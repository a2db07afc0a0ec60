"""params.yaml → typed, validated dataclasses.

``params.yaml`` is the single source of hyperparameters. This module declares its shared
groups (data, subsample, model, augment, pretrain, evaluate) and which methods run; each
method declares its own block in its module (``sbid:`` in :mod:`sdclr.methods.sbid`, ...).
Every key is checked by :mod:`sdclr.schema`: anything not understood is *one* sentence naming
the key, the value and what would be accepted. Every field is required in the file: nothing
here supplies a default.

This module imports no method: what the methods declare reaches it as a :class:`Declared`.
:mod:`sdclr.registry` reads a whole file with every registered method's declarations (the
report, the tools); a stage that trains one method passes that method's alone, and a stage that
trains none passes nothing, so that its DVC code deps name no method it does not run (adding a
method, or editing another's module, leaves it up to date). Such a partial read checks every
group the stage reads and leaves the other top-level blocks (other methods') to the full one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Union

import yaml

from sdclr.data.datasets import DATASETS
from sdclr.errors import ConfigError, ParamError
from sdclr.schema import build, in_range, interval_pair, join, non_negative, positive, setting, unit_interval

#: the folder of presets: partial params.yaml files (the papers' recipes among them)
PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"


def _distinct_ids(v):
    if len(v) == 0 or len(set(v)) != len(v) or min(v) < 0:
        return "a non-empty list of distinct non-negative split ids, e.g. [0, 1, 2, 3, 4]"
    return None


def _milestones(v):
    if any(m < 1 for m in v) or list(v) != sorted(set(v)):
        return "an increasing list of positive epoch numbers, e.g. [10, 20] (or [] for a constant lr)"
    return None


def _few_shot(v):
    fractions = [x for x in v if isinstance(x, float)]
    if (not v or len(set(v)) != len(v) or len(fractions) > 1 or any(not 0 < x < 1 for x in fractions)
            or any(x < 1 for x in v if isinstance(x, int))):
        return ("a non-empty list of distinct entries, each images per class (an integer >= 1, e.g. [100, 50]) or "
                "the split's fraction S_b (one number in (0, 1), e.g. [0.01])")
    return None


def _device(v):
    if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
        return None
    return "'auto', 'cpu', 'cuda' or 'cuda:N'"


def _dataset_names() -> tuple[str, ...]:
    """The datasets' table keys, read when a file is checked (so a row registered later counts)."""
    return tuple(DATASETS)




@dataclass(frozen=True)
class DataParams:
    dataset: str = setting(doc="which dataset the pipeline runs on", choices=_dataset_names,  # a row of DATASETS
                           recipe=False)
    source_dir: Optional[str] = setting(doc="a directory holding the official files; null = system copy, then download",
                                        recipe=False)
    download: bool = setting(doc="allow the official download when no local copy is found", recipe=False)


@dataclass(frozen=True)
class SubsampleParams:
    val_per_class: int = setting(positive("a positive integer"), "balanced validation images held out per class",
                                 recipe=False)
    imbalance_ratio: float = setting(in_range(lo=1, what="a number"), "r: largest class / smallest class")
    n_max: Optional[int] = setting(positive("a positive integer or null"),
                                   "images of the largest class; null = per-class pool size", recipe=False)
    pool_per_class: Optional[int] = setting(positive("a positive integer or null"),
                                       "cap on the balanced pool per class (the full-shot probe's data and kNN's "
                                       "memory); null = every image not held out (the recipe)")
    splits: list[int] = setting(_distinct_ids, "ids of the independent long-tail draws",
                                deviation="{ours} split(s) instead of {paper}.")
    few_shot_fraction: float = setting(in_range(lo=0, hi=1, lo_open=True, what="a fraction"),
                                       "S_b size per class, as a fraction of the pool")


@dataclass(frozen=True)
class ModelParams:
    # Widths below 8 give 1x1 convolutions with < 8 channels, whose oneDNN CPU backward
    # (jit_avx2_1x1 bwd-weights, torch 2.14) intermittently hangs or corrupts memory.
    width: int = setting(in_range(lo=8, what="an integer"),
                         "ResNet-18 base width (64 = paper; >= 8, see the note above)",
                         deviation="ResNet-18 base width {ours} instead of {paper}.")
    head_depth: int = setting(in_range(lo=1, hi=3, what="an integer"), "number of linear layers in the projection head")
    head_hidden: int = setting(positive("a positive integer"), "projection head hidden width")
    proj_dim: int = setting(positive("a positive integer"), "projection head output dimension")


@dataclass(frozen=True)
class AugmentParams:
    crop_scale: tuple[float, float] = setting(interval_pair(0.0, 1.0), "RandomResizedCrop area range",
                                              deviation="Random resized crop scale {ours} instead of {paper}.")
    crop_ratio: tuple[float, float] = setting(interval_pair(0.1, 10.0), "RandomResizedCrop aspect-ratio range")
    flip_p: float = setting(unit_interval(), "horizontal flip probability")
    jitter: tuple[float, float, float, float] = setting(None, "colour jitter brightness, contrast, saturation, hue")
    jitter_p: float = setting(unit_interval(), "probability of applying colour jitter")
    gray_p: float = setting(unit_interval(), "probability of converting to grayscale")
    interpolation: Literal["bilinear", "bicubic"] = setting(
        None, "crop resampling (paper: bicubic)", deviation="{ours} interpolation in the crop instead of {paper}.")

    def __post_init__(self):
        b, c, s, h = self.jitter
        if min(b, c, s) < 0 or not 0 <= h <= 0.5:
            raise ParamError(
                f"augment.jitter = {list(self.jitter)} is out of range; accepted: "
                "[brightness, contrast, saturation, hue] with the first three >= 0 and hue in [0, 0.5]."
            )


@dataclass(frozen=True)
class PretrainParams:
    epochs: int = setting(positive("a positive integer"), "pretraining epochs",
                          deviation="{ours} pretraining epochs instead of {paper}.")
    batch_size: int = setting(in_range(lo=2, what="an integer"), "images per step",
                              deviation="Batch size {ours} instead of {paper}.")
    lr: float = setting(positive(), "peak learning rate (after warm-up)",
                        deviation="Peak lr {ours} instead of {paper}.")
    momentum: float = setting(in_range(lo=0, hi=1, hi_open=True, what="a number"), "SGD momentum")
    weight_decay: float = setting(non_negative(), "SGD weight decay")
    warmup_epochs: int = setting(non_negative("an integer"), "linear warm-up epochs before cosine decay",
                                 deviation="{ours} warm-up epoch(s) instead of {paper}.")
    temperature: float = setting(positive(), "NT-Xent temperature",
                                 deviation="NT-Xent temperature {ours} instead of {paper}.")
    temperature_schedule: Literal["constant", "cosine"] = setting(
        None, "constant: the temperature above (sbid: sbid.temperature) | cosine: TS (Kukleva et al. 2023), "
        "every method's τ moves between tau_min and tau_max")
    tau_min: float = setting(positive(), "cosine schedule: lowest τ (TS: 0.1)")
    tau_max: float = setting(positive(), "cosine schedule: highest τ (TS: 1.0)")
    period_epochs: int = setting(positive("a positive integer"),
                                 "cosine schedule: period T in epochs (TS: 400 = 2·t_max)")
    checkpoint_every: int = setting(positive("a positive integer"), "epochs between resume checkpoints", recipe=False)
    amp: Literal["auto", "bf16", "off"] = setting(None, "autocast: auto = bf16 on CUDA, off on CPU", recipe=False)
    channels_last: Literal["auto", "on", "off"] = setting(None, "memory format: auto = channels_last on CUDA",
                                                          recipe=False)
    compile: Union[bool, Literal["auto"]] = setting(
        None, "torch.compile the network and the augmentation: auto = on CUDA (a failure: one line, then eager)",
        recipe=False)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = setting(
        None, "torch.compile mode; reduce-overhead replays the compiled network as CUDA graphs", recipe=False)
    nproc: int = setting(positive("a positive integer"),
                         "processes (GPUs) per node; > 1: the stage launches torchrun itself", recipe=False)
    sync_bn: bool = setting(None, "SyncBatchNorm across processes (CUDA, nproc > 1); false = per-process BN statistics",
                            recipe=False)

    def __post_init__(self):
        if self.tau_min > self.tau_max:
            raise ParamError(f"pretrain.tau_min = {self.tau_min} is above pretrain.tau_max = {self.tau_max}; "
                             "accepted: tau_min <= tau_max.")


@dataclass(frozen=True)
class ProbeParams:
    # features: softmax regression on standardised features extracted once (fast; CPU default).
    # authors:  the SDCLR authors' probe: a linear layer on the frozen backbone, images
    #           re-augmented every epoch (random crop pad 4 + flip), step decay x0.1 at the milestones.
    # bcl:      BCL's probe (and GH's): Adam on raw features extracted once, lr decayed exponentially
    #           to final_lr, the last epoch's head reported (no selection on validation).
    protocol: Literal["features", "authors", "bcl"] = setting(doc="linear probe protocol: features | authors | bcl")
    lr: float = setting(positive(), "linear probe peak learning rate (SGD with momentum 0.9; bcl: Adam)")
    final_lr: float = setting(positive(), "bcl protocol: the lr of the last epoch (decayed exponentially from lr)")
    weight_decay: float = setting(non_negative(), "linear probe weight decay")
    batch_size: int = setting(positive("a positive integer"), "linear probe batch size")
    full_shot_epochs: int = setting(positive("a positive integer"), "epochs on the whole balanced pool",
                                    deviation="Full-shot probe epochs {ours} instead of {paper}.")
    few_shot_epochs: int = setting(positive("a positive integer"), "epochs on the few-shot subset S_b",
                                   deviation="Few-shot probe epochs {ours} instead of {paper}.")
    full_shot_milestones: list[int] = setting(_milestones,
                                              "authors protocol: epochs where the lr drops x0.1 (full-shot)")
    few_shot_milestones: list[int] = setting(_milestones, "authors protocol: epochs where the lr drops x0.1 (few-shot)")


@dataclass(frozen=True)
class EvaluateParams:
    feature_batch_size: int = setting(positive("a positive integer"), "images per feature-extraction batch",
                                      recipe=False)
    few_shot: list[Union[int, float]] = setting(
        _few_shot, "few-shot probes, the first one headline: a fraction per class (the split's S_b, drawn by "
        "subsample at subsample.few_shot_fraction) or images per class drawn from the balanced pool, nested",
        deviation="Few-shot subsets {ours} instead of {paper}.")
    knn_k: int = setting(positive("a positive integer"), "neighbours of the kNN classifier",
                         deviation="kNN with k = {ours} instead of {paper}.")
    knn_temperature: float = setting(positive(), "temperature of the kNN vote weights exp(sim/T)")
    knn_features: Literal["standardised", "raw"] = setting(
        None, "kNN's cosine on standardised features (the pool's mean and std per dimension, as the linear probe "
        "sees them) or on the raw backbone features (Wu et al. 2018)",
        deviation="kNN on {ours} features instead of {paper}.")
    probe: ProbeParams = setting()


def _distinct_methods(v):
    if len(v) == 0 or len(set(v)) != len(v):
        return "a non-empty list of distinct registered methods, e.g. [simclr, sdclr, sbid]"
    return None


@dataclass(frozen=True)
class Declared:
    """What methods declare about params.yaml, handed to :func:`parse_params` by whoever knows them.

    ``blocks``: their own blocks (params.yaml key → dataclass), checked and kept on the params;
    ``checks``: each method's checks across groups (``Method.check_params``), run when ``methods``
    lists it; ``names``: every registered method, with ``complete``: the file may hold no other
    top-level key, and ``methods`` must name registered ones. Empty (a partial read): the
    stage's own groups are checked and any other top-level block is left alone.
    """

    blocks: Mapping[str, type] = dataclasses.field(default_factory=dict)
    checks: Mapping[str, Callable] = dataclasses.field(default_factory=dict)
    names: tuple[str, ...] = ()
    complete: bool = False


@dataclass(frozen=True)
class Params:
    seed: int = setting(non_negative("an integer"), "seed of every random draw")
    device: str = setting(_device, "where training runs", recipe=False)
    numerics: Literal["portable", "native"] = setting(
        None, "portable: AVX2 kernels (MKL: its vendor-independent branch) and 1 thread per stage, the same bytes "
        "on any x86-64 CPU | native: the CPU's best kernels and cores (faster, CPU-dependent numbers)", recipe=False)
    prune_ratio: float = setting(in_range(lo=0, hi=1, hi_open=True, what="a fraction"),
                                 "SDCLR: fraction of conv weights pruned")
    data: DataParams = setting()
    subsample: SubsampleParams = setting()
    model: ModelParams = setting()
    augment: AugmentParams = setting()
    pretrain: PretrainParams = setting()
    methods: list[str] = setting(_distinct_methods, "the pretraining methods this run trains, evaluates and reports",
                                 recipe=False)
    evaluate: EvaluateParams = setting()
    #: each method's own block by its params.yaml key (``params.sbid`` reads ``blocks["sbid"]``)
    blocks: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=True)

    def __post_init__(self):
        fraction = next((x for x in self.evaluate.few_shot if isinstance(x, float)), self.subsample.few_shot_fraction)
        if fraction != self.subsample.few_shot_fraction:
            raise ParamError(f"evaluate.few_shot = {self.evaluate.few_shot} has the fraction {fraction:g}, but the "
                             f"split's few-shot subset S_b is drawn at subsample.few_shot_fraction = "
                             f"{self.subsample.few_shot_fraction:g}; accepted: that fraction, or images per class "
                             "(e.g. [100, 50]).")

    def __getattr__(self, name: str):
        """A method's block as an attribute: ``params.sbid``, ``params.gh``."""
        if name.startswith("__") or name == "blocks":  # pickling and copying probe dunders first
            raise AttributeError(name)
        try:
            return self.blocks[name]
        except KeyError:
            raise AttributeError(f"params have no group {name!r}") from None


def parse_params(raw: Any, source: str | Path = "params.yaml", declared: Declared = Declared()) -> Params:
    """Validate an already-parsed YAML document with what ``declared`` holds of the methods'
    declarations (see :class:`Declared`); errors name ``source`` as the file."""
    try:
        if not isinstance(raw, dict):
            raise ParamError("the file must be a YAML mapping of keys at the top level.")
        params = build(Params, raw, "", dict(declared.blocks), strict=declared.complete)
        unknown = [(i, m) for i, m in enumerate(params.methods) if declared.names and m not in declared.names]
        if unknown:  # the sentence of every other choice (sdclr.schema)
            raise ParamError(f"methods[{unknown[0][0]}] = {unknown[0][1]!r} is not a known choice; accepted: one of "
                             f"{', '.join(map(repr, declared.names))}.")
        for name in params.methods:  # a method's checks across groups, for the methods that run
            if name in declared.checks:
                declared.checks[name](params)
        return params
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


def load_params(path: str | Path = "params.yaml", declared: Declared = Declared()) -> Params:
    """Read and validate a params file (with ``declared``, as :func:`parse_params`); every problem
    is one ConfigError sentence naming it."""
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
    return parse_params(raw, path, declared)


def param(params: Params, key: str) -> Any:
    """The value at a dotted key (``"sbid.lr"``); a group comes back as a plain dict."""
    value: Any = params
    for part in key.split("."):
        value = getattr(value, part)
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def as_flat_dict(params: Params) -> dict[str, Any]:
    """Dotted-key view of every param, the methods' blocks last (what MLflow logs and the report lists)."""
    return {key: value for key, value, _ in fields_flat(params)}


def fields_flat(params: Params):
    """(dotted key, value, its field's metadata) of every param, the methods' blocks last."""

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            if f.name == "blocks":
                continue
            v = getattr(obj, f.name)
            key = join(prefix, f.name)
            if dataclasses.is_dataclass(v):
                yield from walk(v, key)
            else:
                yield key, list(v) if isinstance(v, tuple) else v, f.metadata

    yield from walk(params, "")
    for name, block in params.blocks.items():
        yield from walk(block, name)
