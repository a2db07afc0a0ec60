#!/usr/bin/env bash
# The main job: set up, then rebuild every result of the default params with DVC.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
dvc repro "$@"
