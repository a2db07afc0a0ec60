"""`reproduce.sh -S key=value`: a DVC experiment whose stages run side by side (or as SLURM jobs).

``dvc exp run -S prune_ratio=0.5`` runs the changed stages one at a time; in portable numerics
each has one thread, so on a machine of N cores N-1 of them wait. The runner
(:mod:`sdclr.pipeline.parallel`) runs them at once instead, and the result is recorded as the
same kind of experiment: the overrides are applied to params.yaml by DVC's own code (Hydra's
override grammar, exactly as ``-S`` does), the stages' MLflow runs are tagged with the
experiment's name (``DVC_EXP_NAME``, which ``dvc exp run`` sets too), and ``dvc exp save``
commits the workspace as an experiment that ``dvc exp show`` lists beside the others. As
after ``dvc exp run``, the workspace keeps the experiment's params and results.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sdclr.errors import SdclrError


def set_params(root: Path, overrides: list[str]) -> None:
    """Apply ``-S`` overrides (``prune_ratio=0.5``, ``params.yaml:pretrain.epochs=10``) as DVC does."""
    from dvc.exceptions import DvcException
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides, to_hydra_overrides

    try:
        by_file = to_path_overrides(overrides)
        hydra = [o for file_overrides in by_file.values() for o in to_hydra_overrides(file_overrides)]
        if any(o.is_sweep_override() for o in hydra):
            raise SdclrError(f"-S {' '.join(overrides)} is a sweep (several values); give one value per key, or "
                             "queue the sweep with `dvc exp run --queue -S ...` and `dvc queue start`.")
        for path, file_overrides in by_file.items():
            apply_overrides(root / path, file_overrides)
    except (DvcException, ValueError) as e:
        why = f"{e}: {str(e.__cause__).splitlines()[0]}" if e.__cause__ else str(e)  # not Hydra's "+key" hint
        raise SdclrError(f"-S {' '.join(overrides)} could not be applied ({why}); use key=value with a key of "
                         "params.yaml, e.g. -S prune_ratio=0.5 or -S pretrain.epochs=10.") from None


def new_name() -> str:
    """A name as ``dvc exp run`` would pick one (two random words)."""
    from dvc.repo.experiments.utils import gen_random_name

    return gen_random_name()


def save(root: Path, name: str, dvc: tuple[str, ...] = (sys.executable, "-m", "dvc")) -> str:
    """Record the workspace as the experiment ``name`` (``dvc exp save``); returns DVC's last line."""
    done = subprocess.run([*dvc, "exp", "save", "--name", name], cwd=root, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    lines = (done.stdout + done.stderr).strip().splitlines() or ["no output"]
    if done.returncode != 0:
        raise SdclrError(f"`dvc exp save --name {name}` failed ({lines[-1]}); the results are in the workspace, "
                         f"so fix the cause and run `dvc exp save --name {name}` yourself.")
    return lines[-1]
