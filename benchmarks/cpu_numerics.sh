#!/usr/bin/env bash
# What portable numerics cost and what running stages side by side buys back, on this CPU:
# SimCLR pretraining throughput (the CPU default: width 8, batch 128, 28x28x1) under
#   native kernels on all cores | native kernels on 1 thread | portable (AVX2, 1 thread) |
#   two portable processes at once (what `scripts/reproduce.sh --jobs 2` runs)
# Appends JSON lines to benchmarks/results/cpu-<date>.jsonl ("cpu_kernels", "threads", "concurrent").
#   bash benchmarks/cpu_numerics.sh [repeats]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="benchmarks/results/cpu-$(date +%F).jsonl"
repeats="${1:-3}"
bench() { python benchmarks/pretrain_throughput.py --methods simclr --width 8 --batch 128 --size 28 --channels 1 \
            --train-images 13399 --steps 30 --warmup 3 --out "$out" | grep -o '"images_per_s": [0-9.]*'; }
portable=(ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1)
for i in $(seq "$repeats"); do  # interleaved, so a drift of the machine's speed hits every configuration
  echo "native, all cores:  $(env -u ATEN_CPU_CAPABILITY -u ONEDNN_MAX_CPU_ISA -u MKL_CBWR -u OMP_NUM_THREADS bash -c "$(declare -f bench); out=$out; bench")"
  echo "native, 1 thread:   $(env -u ATEN_CPU_CAPABILITY -u ONEDNN_MAX_CPU_ISA -u MKL_CBWR OMP_NUM_THREADS=1 bash -c "$(declare -f bench); out=$out; bench")"
  echo "portable, 1 thread: $(env "${portable[@]}" bash -c "$(declare -f bench); out=$out; bench")"
  echo "portable, 2 at once: $( (env "${portable[@]}" BENCH_CONCURRENT=2 bash -c "$(declare -f bench); out=$out; bench" &
                                 env "${portable[@]}" BENCH_CONCURRENT=2 bash -c "$(declare -f bench); out=$out; bench"; wait) | tr '\n' ' ')"
done
