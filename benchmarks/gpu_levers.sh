#!/bin/bash
# One H100 call: every speed lever of the GPU default measured in one run. Results under $OUT.
# Usage: OUT=results_dir bash benchmarks/gpu_levers.sh   (≈ 9.5 min on an H100; every step under `timeout`)
# Dry run on a CPU: DEV=cpu SIZE="--width 8 --batch 32 --size 16" OUT=/tmp/o bash benchmarks/gpu_levers.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
cd "$(dirname "$0")/.."
DEV=${DEV:-cuda}; SIZE=${SIZE:---width 64 --batch 512 --size 32}
T0=$(date +%s); el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
B="python3 benchmarks/pretrain_throughput.py --device $DEV $SIZE --channels 3 --amp bf16 --train-images 11165 --set sbid.head_hidden=2048 --set sbid.negatives=all --steps 30 --warmup 8 --repeats 3"
el "main: baselines, 3 methods x {eager, compile default, reduce-overhead}"
timeout 330 $B --compile off,default,reduce-overhead --sgd default --warm-parallel --baselines --out $OUT/h100.jsonl 2>&1 | cut -c1-300
el "augmentation"
for a in "off 0" "off 2" "default 0"; do set -- $a
  timeout 50 python3 benchmarks/augment_throughput.py --device $DEV --batch 512 --compile $1 --randaugment $2 --iters 30 | tee -a $OUT/augment.jsonl
done
el "compiled transform == eager transform"
DEV=$DEV timeout 40 python3 - <<'PY' 2>&1 | tail -2 | tee $OUT/augment_equal.txt
import os, torch
from benchmarks.augment_throughput import PAPER
from sdclr.data.augment import BatchAugment
d = os.environ["DEV"]; g = torch.Generator(d).manual_seed(1)
x = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, device=d, generator=g)
a = BatchAugment(PAPER, 3); draws = a.draw(x.shape, g, x.device)
eager = a.transform(x, *draws); comp = a.compile()._transform(x, *draws)
print("compiled vs eager transform: max |diff|", float((eager - comp).abs().max()), "mean", float((eager - comp).abs().mean()))
PY
el "levers one by one"
timeout 60 $B --methods simclr,sdclr --compile off --sgd default --cudnn-benchmark off --out $OUT/levers.jsonl | cut -c1-200
timeout 60 $B --methods simclr,sdclr,sbid --compile off --sgd fused --out $OUT/levers.jsonl | cut -c1-200
timeout 80 $B --methods simclr,sdclr,sbid --compile reduce-overhead --sgd fused --out $OUT/levers.jsonl | cut -c1-200
timeout 60 $B --methods simclr,sdclr --compile reduce-overhead --sgd default --augment-compile off --out $OUT/levers.jsonl | cut -c1-200
el "done"
python3 - <<'PY'
import json, os
for f in ("h100.jsonl", "levers.jsonl"):
    p = os.path.join(os.environ["OUT"], f)
    if not os.path.exists(p): continue
    for l in open(p):
        r = json.loads(l)
        if "ratios" in r: print(r); continue
        print(f[:-6], r.get("method") or r.get("baseline"), r.get("compile"), "cudnn", r.get("cudnn_benchmark"), r.get("sgd"),
              "aug", r.get("augment_compiled"), r.get("images_per_s"), "img/s", r.get("ms_per_step"), "ms", r.get("peak_memory_mb"),
              "MB loss", r.get("loss_first"), r.get("loss_mean"), r.get("loss_last"), r.get("warmup_s"), r.get("error"))
PY
