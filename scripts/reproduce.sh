#!/usr/bin/env bash
# The main job: set up, rebuild every result of params.yaml with DVC, compare with the committed report.
#   bash scripts/reproduce.sh                         # the default pipeline, independent stages side by side
#   bash scripts/reproduce.sh --jobs 1                # one stage at a time (the same bytes, in portable numerics)
#   bash scripts/reproduce.sh --preset cifar10_paper  # merge presets/cifar10_paper.yaml into params.yaml first
#   bash scripts/reproduce.sh report                  # only what the named stage(s) need
#   bash scripts/reproduce.sh --slurm --slurm-args "--partition=gpu --time=04:00:00 --gres=gpu:1"
#                                                     # each stage's work as a SLURM job (sdclr/pipeline/slurm.py)
#   bash scripts/reproduce.sh -S prune_ratio=0.5 [--name NAME]
#                                                     # as `dvc exp run -S`, stages side by side, saved with
#                                                     # `dvc exp save` (sdclr/pipeline/experiment.py)
# --jobs N: at most N stages at once (default: the cores, or one per visible GPU; 64 jobs with --slurm);
# --per-gpu K: K stages share each GPU; see sdclr/pipeline/parallel.py. --slurm-args defaults to
# $SDCLR_SLURM_ARGS.
# Arguments starting with '-' other than these go to a plain, sequential `dvc repro`.
set -euo pipefail
preset=""
jobs=0
per_gpu=1
targets=()
dvc_args=()
slurm=()
experiment=()
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) preset="${2:?--preset needs a name, e.g. cifar10_paper}"; shift 2 ;;
    --preset=*) preset="${1#--preset=}"; shift ;;
    --jobs|-j) jobs="${2:?--jobs needs a number, e.g. 2}"; shift 2 ;;
    --jobs=*) jobs="${1#--jobs=}"; shift ;;
    --per-gpu) per_gpu="${2:?--per-gpu needs a number, e.g. 2}"; shift 2 ;;
    --per-gpu=*) per_gpu="${1#--per-gpu=}"; shift ;;
    --slurm) slurm+=(--slurm); shift ;;
    --slurm-args) slurm+=("--slurm-args=${2?--slurm-args needs sbatch options, e.g. \"--time=04:00:00\"}"); shift 2 ;;
    --slurm-args=*) slurm+=("$1"); shift ;;
    -S|--set-param) experiment+=(-S "${2:?-S needs key=value, e.g. prune_ratio=0.5}"); shift 2 ;;
    --set-param=*) experiment+=(-S "${1#--set-param=}"); shift ;;
    --name|-n) experiment+=(--name "${2:?--name needs a name}"); shift 2 ;;
    --name=*) experiment+=(--name "${1#--name=}"); shift ;;
    -*) dvc_args+=("$1"); shift ;;
    *) targets+=("$1"); shift ;;
  esac
done
if [ ${#dvc_args[@]} -gt 0 ] && [ ${#experiment[@]} -gt 0 ]; then
  echo "error: -S runs the stages side by side and cannot be combined with dvc repro's options (${dvc_args[*]}); use \`dvc exp run -S ...\` for those." >&2
  exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
if [ -n "$preset" ]; then
  python -m sdclr.pipeline.presets "$preset"
fi
if [ ${#dvc_args[@]} -gt 0 ]; then
  dvc repro "${dvc_args[@]}" ${targets[@]+"${targets[@]}"}
else
  python -m sdclr.pipeline.parallel --jobs "$jobs" --per-gpu "$per_gpu" ${slurm[@]+"${slurm[@]}"} \
    ${experiment[@]+"${experiment[@]}"} ${targets[@]+"${targets[@]}"}
fi
if [ ${#experiment[@]} -gt 0 ]; then
  exit 0  # an experiment, saved: `dvc exp show` compares it with the committed results
fi
# this CPU's kernels, op by op: committed with the report, and what compare explains a difference with
python -m sdclr.pipeline.fingerprint --out reports/fingerprint.jsonl
python -m sdclr.pipeline.compare --fingerprint reports/fingerprint.jsonl
