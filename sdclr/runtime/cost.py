"""The one machine-dependent record: how long each pretraining and evaluation took here.

Wall-clock seconds and images/s differ on every run, so they are kept out of every DVC
output (models, histories, metrics, report.md), which must be byte-identical when nothing
they depend on changed. They go to MLflow and to ``reports/cost.json``: tracked by git,
written by the pretrain and evaluate stages, read by no stage (not a DVC dependency), so
a re-run changes this file and nothing else.

    python -m sdclr.runtime.cost            # the table, as markdown
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
from pathlib import Path

import torch

from sdclr.runtime import numerics
from sdclr.storage.io import write_json

COST_PATH = Path("reports/cost.json")


def device_name(device: torch.device) -> str:
    """A human name of the device that did the work (GPU model, or the CPU and its thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"cpu: {numerics.cpu_model()}, {threads} thread{'s' if threads > 1 else ''}"


def machine(device: torch.device, mode: str) -> dict[str, str]:
    """The cost entry's machine fields: the device, and the numerics that made the numbers."""
    return {"device": device_name(device), "numerics": numerics.describe(mode, device)}


def record(key: str, entry: dict, path: Path) -> None:
    """Set ``path[key] = entry``: read-modify-write under a lock on the folder (no lock file
    to clutter ``git status``), atomic replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        try:
            table = json.loads(path.read_text()) if path.exists() else {}
        except json.JSONDecodeError:
            table = {}  # a hand-damaged cost file is not worth stopping a run for
        table[key] = {**entry, "torch": torch.__version__}
        write_json(path, dict(sorted(table.items())))
    finally:
        os.close(folder)


def markdown(path: Path) -> str:
    if not path.exists():
        return f"{path} does not exist yet: it is written by the pretrain and evaluate stages."
    table = json.loads(path.read_text())
    rows = ["| stage / method / split | seconds | images/s | epochs | device | numerics |", "|---|---|---|---|---|---|"]
    for key, e in table.items():
        rate = f"{e['images_per_s']:.0f}" if "images_per_s" in e else "—"
        rows.append(f"| {key} | {e['seconds']:.1f} | {rate} | {e.get('epochs', '—')} | {e.get('device', '?')} | "
                    f"{e.get('numerics', '?')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print reports/cost.json as a markdown table.")
    parser.add_argument("path", nargs="?", default=str(COST_PATH), type=Path)
    print(markdown(parser.parse_args().path))
