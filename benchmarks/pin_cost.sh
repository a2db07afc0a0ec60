#!/usr/bin/env bash
# What the vendor-independent MKL pin (MKL_CBWR=COMPATIBLE, sdclr/runtime/numerics.py) costs per stage against the
# AVX2 pin it replaced: the default's SimCLR pretraining (2 of its 6 epochs, to keep the call short; start-up
# included) and evaluation stages on split 0, timed side by side by farm-bench (A = COMPATIBLE, B = AVX2, in
# turn; quote the medians and the paired ratio A/B).
#   bash benchmarks/pin_cost.sh [runs]      # after `dvc repro subsample` (download and splits in data/)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs="${1:-3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
export MLFLOW_TRACKING_URI="sqlite:///$tmp/mlflow.db" SDCLR_LOG_MODEL=0
tcmalloc=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
[ -e "$tcmalloc" ] && export LD_PRELOAD="$tcmalloc"  # as the parallel runner runs a stage
python - "$tmp/params.yaml" <<'PY'
import sys, yaml
raw = yaml.safe_load(open("params.yaml"))
raw["pretrain"]["epochs"] = 2
yaml.safe_dump(raw, open(sys.argv[1], "w"))
PY
data=(--params "$tmp/params.yaml" --raw data/raw/fashion_mnist --splits data/splits/fashion_mnist --split 0
      --cost "$tmp/cost.json")
stage() { echo "python benchmarks/stage_under_pins.py MKL_CBWR=$1 -- stages/$2.py --method simclr ${data[*]}"; }
pretrain() { echo "$(stage "$1" pretrain) --out $tmp/$1.pt --history $tmp/$1.csv --checkpoint $tmp/$1.ckpt"; }
evaluate() { echo "$(stage "$1" evaluate) --model $tmp/$1.pt --out $tmp/$1.json"; }
echo "== pretrain-simclr@0, 2 epochs"
farm-bench -n "$runs" --warmup 0 --timeout 3600 --vs "$(pretrain AVX2)" -- $(pretrain COMPATIBLE)
echo "== evaluate-simclr@0"
farm-bench -n "$((runs + 2))" --warmup 1 --timeout 3600 --vs "$(evaluate AVX2)" -- $(evaluate COMPATIBLE)
