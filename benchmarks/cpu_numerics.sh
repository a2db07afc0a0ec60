#!/usr/bin/env bash
# What portable numerics cost and what running stages side by side buys back, on this CPU:
# SimCLR pretraining throughput (the CPU default: width 8, batch 128, 28x28x1) under
#   native kernels on all cores | native kernels on 1 thread | portable (AVX2, 1 thread) |
#   portable with tcmalloc | portable with glibc malloc keeping freed memory (sdclr/pipeline/parallel.py's allocators) |
#   two portable processes at once (what `scripts/reproduce.sh --jobs 2` runs, with its allocator)
# Appends JSON lines to benchmarks/results/cpu-<date>.jsonl ("cpu_kernels", "threads", "concurrent", "allocator").
#   bash benchmarks/cpu_numerics.sh [repeats]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="benchmarks/results/cpu-$(date +%F).jsonl"
repeats="${1:-3}"
bench() { python benchmarks/pretrain_throughput.py --methods simclr --width 8 --batch 128 --size 28 --channels 1 \
            --train-images 13399 --steps 30 --warmup 3 --out "$out" | grep -o '"images_per_s": [0-9.]*'; }
portable=(ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=COMPATIBLE OMP_NUM_THREADS=1 MKL_NUM_THREADS=1)
tcmalloc=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
glibc_keep=(MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_TOP_PAD_=268435456)
for i in $(seq "$repeats"); do  # interleaved, so a drift of the machine's speed hits every configuration
  echo "native, all cores:  $(env -u ATEN_CPU_CAPABILITY -u ONEDNN_MAX_CPU_ISA -u MKL_CBWR -u OMP_NUM_THREADS bash -c "$(declare -f bench); out=$out; bench")"
  echo "native, 1 thread:   $(env -u ATEN_CPU_CAPABILITY -u ONEDNN_MAX_CPU_ISA -u MKL_CBWR OMP_NUM_THREADS=1 bash -c "$(declare -f bench); out=$out; bench")"
  echo "portable, 1 thread: $(env "${portable[@]}" bash -c "$(declare -f bench); out=$out; bench")"
  [ -e "$tcmalloc" ] && echo "portable, tcmalloc:  $(env "${portable[@]}" BENCH_ALLOCATOR=tcmalloc LD_PRELOAD="$tcmalloc" bash -c "$(declare -f bench); out=$out; bench")"
  echo "portable, glibc keeping freed memory: $(env "${portable[@]}" "${glibc_keep[@]}" BENCH_ALLOCATOR=glibc-keep bash -c "$(declare -f bench); out=$out; bench")"
  echo "portable, 2 at once: $( (env "${portable[@]}" BENCH_CONCURRENT=2 bash -c "$(declare -f bench); out=$out; bench" &
                                 env "${portable[@]}" BENCH_CONCURRENT=2 bash -c "$(declare -f bench); out=$out; bench"; wait) | tr '\n' ' ')"
  [ -e "$tcmalloc" ] && echo "portable, tcmalloc, 2 at once: $( (env "${portable[@]}" BENCH_CONCURRENT=2 BENCH_ALLOCATOR=tcmalloc LD_PRELOAD="$tcmalloc" bash -c "$(declare -f bench); out=$out; bench" &
                                 env "${portable[@]}" BENCH_CONCURRENT=2 BENCH_ALLOCATOR=tcmalloc LD_PRELOAD="$tcmalloc" bash -c "$(declare -f bench); out=$out; bench"; wait) | tr '\n' ' ')"
done
