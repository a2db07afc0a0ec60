"""Portable numerics: the same bytes from every stage on any x86-64 CPU with AVX2.

Floating-point results on a CPU depend on three things besides the code and the seed:

- **the kernel level and code path** each library dispatches to at run time. ATen (torch's
  own kernels), oneDNN (convolutions) and MKL (matrix products) each pick their widest
  instructions, so an AVX-512 machine sums in a different order from an AVX2 one; MKL also
  picks its code path by CPU vendor, so even pinned to AVX2 its linear layers gave an Intel
  Xeon other bytes than an AMD EPYC;
- **the intra-op thread count**, which splits reductions into different partial sums;
- nothing else we have found: under these pins an Intel Xeon (AVX-512, AMX) and an AMD EPYC
  (AVX2) gave the same bytes for each of 42 kernels of a training step, compared one by one
  (:mod:`sdclr.pipeline.fingerprint` keeps that comparison for every new machine; docs/measurements.md).

``numerics: portable`` (the default) pins ATen and oneDNN to AVX2 and MKL to its
vendor-independent branch, and runs each stage process on one intra-op thread; the parallel runner
(:mod:`sdclr.pipeline.parallel`) gets the
throughput back by running independent stages side by side. ``numerics: native`` lets
each library use the machine's best kernels and all its cores: faster, but the numbers
then belong to that CPU, and the report says so.

The kernel levels are read from the environment once, when torch (or oneDNN, MKL) first
needs them, so :func:`pin_before_torch` must run before ``import torch``: every stage script
calls it first. :func:`apply` then sets the thread count and checks that the pin took.
This module imports neither torch nor numpy at module level for that reason.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sdclr.errors import SdclrError

MODES = ("portable", "native")
#: environment that pins each library's kernel level: ATen and oneDNN to AVX2; MKL (the matrix
#: products of linear layers and the loss) to its "conditional numerical reproducibility" branch
#: COMPATIBLE, the one Intel documents as giving the same results on Intel and non-Intel CPUs
#: (MKL_CBWR=AVX2 gave an Intel Xeon other bytes than an AMD EPYC in the linear layers)
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}
#: intra-op threads of a portable stage: part of the numerics (a reduction's partial sums)
PORTABLE_THREADS = 1
#: environment that sets the thread pools' size before they start (OpenMP reads it once)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_avx2() -> bool:
    """Whether the AVX2 kernels can run here (AVX2 and FMA, which every AVX2 kernel also uses)."""
    return {"avx2", "fma"} <= cpu_flags()


def cpu_level() -> str:
    """The widest vector instructions this CPU has: what native kernels would use."""
    flags = cpu_flags()
    if "avx512f" in flags:
        return "AVX-512"
    return "AVX2" if has_avx2() else "below AVX2"


def effective_mode(mode: str) -> str:
    """``mode``, except that a CPU without AVX2 cannot run the portable kernels: native there."""
    return "native" if mode == "portable" and not has_avx2() else mode


def pin(mode: str) -> None:
    """Set the environment of ``mode`` for this process and its children (before torch loads)."""
    if effective_mode(mode) != "portable":
        if mode == "portable":
            print("numerics: this CPU lacks AVX2, so the portable kernels cannot run here; running native "
                  "(its numbers may differ from an AVX2 machine's).", file=sys.stderr)
        return
    os.environ.update(PORTABLE_ENV)
    os.environ.update({name: str(PORTABLE_THREADS) for name in THREAD_ENV})


def mode_in_params(params_path: str | os.PathLike) -> str:
    """The ``numerics`` of a params file, read without the full validation (that comes later,
    in :func:`sdclr.stage.run_stage`, which names any error); "portable" when it cannot be read."""
    import yaml

    try:
        mode = (yaml.safe_load(Path(params_path).read_text()) or {}).get("numerics", "portable")
    except (OSError, yaml.YAMLError, AttributeError):
        return "portable"
    return mode if mode in MODES else "portable"


def pin_before_torch(argv: list[str] | None = None) -> None:
    """Pin the numerics the stage's ``--params`` file asks for; the first call of every stage script."""
    argv = sys.argv[1:] if argv is None else argv
    path = "params.yaml"
    for i, arg in enumerate(argv):
        if arg == "--params" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--params="):
            path = arg.split("=", 1)[1]
    pin(mode_in_params(path))


def apply(mode: str) -> None:
    """After torch is imported: set the thread count of ``mode`` and check that the kernels are pinned.

    Raises :class:`sdclr.errors.SdclrError` when torch was imported before :func:`pin` (its
    kernel level is then the machine's, and a portable run would silently not be).
    """
    import torch

    if effective_mode(mode) != "portable":
        return
    torch.set_num_threads(PORTABLE_THREADS)
    level = torch.backends.cpu.get_cpu_capability()
    if level != "AVX2" or any(os.environ.get(name) != value for name, value in PORTABLE_ENV.items()):
        raise SdclrError(f"numerics: portable needs the AVX2 kernels, but torch already runs {level} kernels here "
                         "(it was imported before the pin); call sdclr.runtime.numerics.pin_before_torch() before "
                         "importing torch, or set numerics: native in params.yaml.")


def describe(mode: str, device=None) -> str:
    """What made this process's numbers, for the metrics files, the report and MLflow.

    Portable on a CPU: the same words on every machine (its numbers do not depend on it).
    Native: the CPU model, its kernel level and threads (the numbers belong to that CPU).
    On a GPU: the GPU model (CUDA kernels are not pinned; their numbers belong to that GPU).
    """
    import torch

    if device is not None and torch.device(device).type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    if effective_mode(mode) == "portable":
        return f"portable (AVX2 kernels, MKL {PORTABLE_ENV['MKL_CBWR']}, {PORTABLE_THREADS} thread)"
    return (f"native ({cpu_model()}, {torch.backends.cpu.get_cpu_capability()} kernels, "
            f"{torch.get_num_threads()} threads)")


def cpu_model() -> str:
    """The CPU's model name and widest instructions (two EPYCs of different generations share a name)."""
    import platform

    name = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({cpu_level()})"
