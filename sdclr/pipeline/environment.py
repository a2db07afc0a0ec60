"""The environment each stage process of the parallel runner gets: its GPU slots, its allocator,
its threads, or (``--slurm``) the job launcher first on its PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sdclr.errors import SdclrError
from sdclr.pipeline import slurm
from sdclr.runtime.numerics import mode_in_params


def visible_gpus(env=None) -> list[str]:
    """The GPUs a stage could use: ``CUDA_VISIBLE_DEVICES`` when set (in ``env``, default this
    process's environment), else what nvidia-smi lists."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        return [g.strip() for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() not in ("", "-1")]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def default_jobs(gpus: list[str], per_gpu: int) -> int:
    """Stages at once: the cores (one thread each in portable numerics), or the GPU slots."""
    return len(gpus) * per_gpu if gpus else max(1, len(os.sched_getaffinity(0)))


#: where Debian, Fedora and others put tcmalloc's minimal build
TCMALLOC = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4",
            "/usr/lib/libtcmalloc_minimal.so.4")
#: glibc malloc without tcmalloc: serve activations from the heap and keep freed memory there
GLIBC_KEEP = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
              "MALLOC_TOP_PAD_": str(256 << 20)}


def allocator_env(env: dict[str, str]) -> dict[str, str]:
    """The environment variables that give the stages a faster allocator (see the module doc)."""
    if env.get("SDCLR_ALLOCATOR") == "system":
        return {}
    found = next((path for path in TCMALLOC if Path(path).is_file()), None)
    if found is None:
        return {name: env.get(name, value) for name, value in GLIBC_KEEP.items()}
    preload = env.get("LD_PRELOAD", "")
    return {} if "tcmalloc" in preload else {"LD_PRELOAD": f"{found} {preload}".strip()}


def stage_env(root: Path, env: dict[str, str], jobs: int, slurm_args: list[str] | None) -> dict[str, str]:
    """The stages' environment: with ``--slurm``, the job launcher; here, the allocator and the threads."""
    if slurm_args is not None:
        if not shutil.which("sbatch", path=env.get("PATH")):
            raise SdclrError("--slurm needs SLURM's `sbatch` on PATH; run on the cluster's submit host, or without "
                             "--slurm to run the stages here.")
        return slurm.stage_env(env, root, slurm_args)
    env = {**env, **allocator_env(env)}
    if mode_in_params(root / "params.yaml") == "native":
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // jobs))
    return env
