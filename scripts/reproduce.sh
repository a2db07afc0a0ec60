#!/usr/bin/env bash
# The main job: set up, then rebuild every result of params.yaml with DVC.
#   bash scripts/reproduce.sh                         # the default (CPU-sized) pipeline
#   bash scripts/reproduce.sh --preset cifar10_paper  # merge presets/cifar10_paper.yaml into params.yaml first
# Other arguments go to `dvc repro`.
set -euo pipefail
preset=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) preset="${2:?--preset needs a name, e.g. cifar10_paper}"; shift 2 ;;
    --preset=*) preset="${1#--preset=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
if [ -n "$preset" ]; then
  python -m sdclr.presets "$preset"
fi
dvc repro ${args[@]+"${args[@]}"}
