#!/usr/bin/env bash
# What the vendor-independent MKL pin (MKL_CBWR=COMPATIBLE, sdclr/numerics.py) costs per stage against the
# AVX2 pin it replaced: the default's SimCLR pretraining and evaluation stages, split 0, timed side by side
# by farm-bench (A = COMPATIBLE, B = AVX2, interleaved; quote the medians and the paired ratio).
#   bash benchmarks/pin_cost.sh [runs]      # after `dvc repro subsample` (and a simclr encoder for the evaluation)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs="${1:-3}"
tmp="$(mktemp -d)"
export MLFLOW_TRACKING_URI="sqlite:///$tmp/mlflow.db" SDCLR_LOG_MODEL=0
tcmalloc=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
[ -e "$tcmalloc" ] && export LD_PRELOAD="$tcmalloc"  # as the parallel runner runs a stage
data=(--raw data/raw/fashion_mnist --splits data/splits/fashion_mnist --split 0 --cost "$tmp/cost.json")
pretrain() { echo "python benchmarks/stage_under_pins.py MKL_CBWR=$1 -- stages/pretrain.py --method simclr ${data[*]}
  --out $tmp/$1.pt --history $tmp/$1.csv --checkpoint $tmp/$1.ckpt"; }
evaluate() { echo "python benchmarks/stage_under_pins.py MKL_CBWR=$1 -- stages/evaluate.py --method simclr ${data[*]}
  --model $tmp/$1.pt --out $tmp/$1.json"; }
echo "== pretrain-simclr@0"
farm-bench -n "$runs" --warmup 0 --timeout 3600 --vs "$(pretrain AVX2)" -- $(pretrain COMPATIBLE)
echo "== evaluate-simclr@0"
farm-bench -n "$((runs + 2))" --warmup 1 --timeout 3600 --vs "$(evaluate AVX2)" -- $(evaluate COMPATIBLE)
rm -rf "$tmp"
