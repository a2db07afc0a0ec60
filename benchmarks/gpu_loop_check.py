"""The GPU default (compile auto + reduce-overhead) through the real loop: epochs, SDCLR's mask
refresh, sbid's bank, checkpoint and resume. Prints each run's per-epoch history, straight and
killed after epoch 2 then resumed (they should agree). Needs no MLflow or DVC.

    PYTHONPATH=$PWD python benchmarks/gpu_loop_check.py sdclr          # DEV=cpu for a dry run
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from sdclr.pretrain_loop import Job, Outputs, pretrain
from sdclr.registry import method_class, parse_params
from sdclr.storage.encoder_file import ModelSpec

method, dev = sys.argv[1], os.environ.get("DEV", "cuda")
raw = yaml.safe_load(Path("params.yaml").read_text())
raw["device"] = dev
raw["model"]["width"] = 64 if dev == "cuda" else 8
raw["pretrain"].update(epochs=4, batch_size=512 if dev == "cuda" else 32, compile="auto",
                       compile_mode="reduce-overhead",
                       checkpoint_every=1, warmup_epochs=1)
params = parse_params(raw)
n = 4096 if dev == "cuda" else 128
images = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
spec = ModelSpec(3, [0.5] * 3, [0.25] * 3)
out = {}
with tempfile.TemporaryDirectory() as d:
    d = Path(d)
    for label, stops in (("straight", [None]), ("killed_at_2_resumed", [2, None])):
        t0 = time.time()
        for stop in stops:
            r = pretrain(params, Job(method_class(method), 0, images, np.arange(n), spec),
                         Outputs(d / f"{label}.pt", d / f"{label}.ckpt", d / f"{label}.csv"),
                         log=lambda m: print(method, m), stop_after_epoch=stop)
        out[label] = {"seconds": round(time.time() - t0, 1), "final_loss": r.final_loss,
                      "history": (d / f"{label}.csv").read_text().splitlines()}
print(json.dumps({"method": method, **out}))
