#!/bin/bash
# The fmnist_gpu verdict table's device work in one call per step, every step under `timeout`,
# results under $OUT as they come (a call cut by its limit still returns what it did).
#
# Here, before the call (the GPU machine has no DVC, MLflow or dataset package):
#   echo /.gpu/ >> .git/info/exclude
#   python benchmarks/gpu_preset.py prepare --preset fmnist_gpu --raw data/raw/fashion_mnist --splits .gpu/splits
# The call (device tool): carry ["data/raw/fashion_mnist", ".gpu"], timeout_s 600, command e.g.
#   STEPS="check ratio sweep preset" SPLITS=0,1,2 DEADLINE=200 bash benchmarks/gpu_verdict.sh
# Back here: python benchmarks/gpu_preset.py report --preset fmnist_gpu ... --from <files_at>/fmnist_gpu
# Dry run on a CPU (tiny settings): DEV=cpu FAST=1 OUT=/tmp/o bash benchmarks/gpu_verdict.sh
#
#   check   the probes on the GPU against the CPU path: the skip-on-CPU test, then one untrained width-64
#           encoder evaluated on cuda and on the CPU (seconds and metrics of both → eval_check.jsonl)
#   ratio   SDCLR vs SimCLR pretraining images/s, the GPU default (benchmarks/pretrain_throughput.py)
#   sweep   aggregate images/s with 1..4 SimCLR trainings sharing the GPU → concurrency.jsonl
#   preset  the preset's (method, split) jobs, $CONC at a time, none started after $DEADLINE s
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
DEV=${DEV:-cuda}; STEPS=${STEPS:-check ratio sweep preset}; SPLITS=${SPLITS:-0,1,2,3,4}
CONC=${CONC:-3}; DEADLINE=${DEADLINE:-240}; COUNTS=${COUNTS:-1,2,3,4}
RAW=data/raw/fashion_mnist; SPL=${SPL:-.gpu/splits}
FASTSET=(); [ -n "$FAST" ] && FASTSET=(--set model.width=8 --set pretrain.epochs=1 --set pretrain.batch_size=128
  --set sbid.negatives=4096 --set sbid.head_hidden=512 --set evaluate.probe.full_shot_epochs=3
  --set evaluate.probe.few_shot_epochs=5)
G="python3 benchmarks/gpu_preset.py"
T0=$(date +%s); el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

for step in $STEPS; do case $step in
check)
  el "check: the GPU path against the CPU path"
  timeout 60 python3 -m pytest -q tests/test_evaluate.py 2>&1 | tail -3
  for d in $DEV cpu; do
    timeout 240 $G job --device $d --method random --split 0 --raw $RAW --splits $SPL --out "$OUT/check_$d" \
      "${FASTSET[@]}" > "$OUT/check_$d.log" 2>&1; grep JOB "$OUT/check_$d.log"
  done
  python3 - "$OUT" "$DEV" <<'PY' | tee -a "$OUT/eval_check.jsonl"
import json, sys
from pathlib import Path
out, dev = Path(sys.argv[1]), sys.argv[2]
m = {d: json.loads((out / f"check_{d}/metrics/random/split0.json").read_text()) for d in (dev, "cpu")}
secs = {d: [json.loads(l[4:]) for l in (out / f"check_{d}.log").read_text().splitlines() if l.startswith("JOB ")][0]
        ["evaluate_seconds"] for d in (dev, "cpu")}
diff = {k: round(100 * (m[dev][k]["accuracy"] - m["cpu"][k]["accuracy"]), 3) for k in ("full_shot", "few_shot", "knn")}
print(json.dumps({"benchmark": "evaluate_device_vs_cpu", "evaluate_seconds": secs, "accuracy_diff_points": diff,
                  "best_epoch": {d: [m[d][k]["best_epoch"] for k in ("full_shot", "few_shot")] for d in m}}))
PY
  ;;
ratio)
  el "ratio: SDCLR / SimCLR images/s"
  S="--width 64 --batch 512 --size 28 --channels 1 --amp bf16 --compile reduce-overhead --sgd fused"
  [ -n "$FAST" ] && S="--width 8 --batch 32 --size 16 --channels 1"
  timeout 200 python3 benchmarks/pretrain_throughput.py --device $DEV $S --methods simclr,sdclr --steps 30 --warmup 8 \
    --repeats 3 --out "$OUT/ratio.jsonl" 2>&1 | cut -c1-300
  ;;
sweep)
  el "sweep: $COUNTS concurrent SimCLR trainings"
  timeout 300 $G sweep --device $DEV --epochs 3 --counts $COUNTS --raw $RAW --splits $SPL --out "$OUT/concurrency.jsonl" \
    "${FASTSET[@]}" 2>&1 | tail -5
  ;;
preset)
  el "preset: splits $SPLITS, $CONC at a time, none started after ${DEADLINE}s"
  timeout 590 $G run --device $DEV --split-ids $SPLITS --concurrent $CONC --deadline $DEADLINE --raw $RAW --splits $SPL \
    --out "$OUT/fmnist_gpu" "${FASTSET[@]}" 2>&1 | tail -30
  ;;
esac; done
el "done"
