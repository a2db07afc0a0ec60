#!/usr/bin/env bash
# Idempotent set-up, sourced by reproduce.sh and test.sh:
#  - a local virtual environment .venv with the pinned packages of requirements.txt and this package;
#  - Debian's dataset-fashion-mnist (the offline copy of Fashion-MNIST), libtcmalloc-minimal4 (a faster
#    allocator for the stages), slurm-wlm and munge (the --slurm tests' real cluster) when apt can be used.
# Re-running is cheap: the venv is rebuilt only when requirements.txt or pyproject.toml change.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"

want="$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
stamp=.venv/.installed-requirements
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating .venv and installing pinned packages (a few minutes the first time)..."
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip 2> >(grep -v "^WARNING: Location" >&2)
  # --no-compile + a parallel compileall: the same .pyc files in about half the time on 2 cores
  .venv/bin/python -m pip install --quiet --no-compile -r requirements.txt 2> >(grep -v "^WARNING: Location" >&2)
  .venv/bin/python -m compileall -q -j 0 .venv/lib >/dev/null 2>&1 || true
  .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e . 2> >(grep -v "^WARNING: Location" >&2)
  echo "$want" > "$stamp"
fi

# dvc.yaml's commands call `python`: .venv/bin/dvc run without activating the venv would give them the
# system Python (or none), and DVC removes a stage's outputs before running it. The venv's `dvc` therefore
# puts the venv first on PATH itself (re-written here because pip re-creates it on every install).
if ! grep -q "sdclr: venv-aware dvc" .venv/bin/dvc 2>/dev/null; then
  cat > .venv/bin/dvc <<'WRAPPER'
#!/bin/sh
# sdclr: venv-aware dvc (written by scripts/setup.sh): the stages' `python` is this venv's, activated or not.
venv_bin="$(cd "$(dirname "$0")" && pwd)"
PATH="$venv_bin:$PATH" exec "$venv_bin/python" -m dvc "$@"
WRAPPER
  chmod +x .venv/bin/dvc
fi

# Debian packages: the dataset, and tcmalloc for the stages (sdclr/pipeline/parallel.py: +6-16 % pretraining on a CPU)
apt_packages=()
[ -d /usr/share/datasets/fashion-mnist ] || apt_packages+=(dataset-fashion-mnist)
[ -e /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 ] || [ "$(uname -m)" != x86_64 ] || apt_packages+=(libtcmalloc-minimal4)
# a real one-node SLURM cluster for the --slurm tests (tests/slurm_cluster.py); they skip without it
command -v slurmctld >/dev/null || apt_packages+=(slurm-wlm)
command -v munged >/dev/null || apt_packages+=(munge)
if [ ${#apt_packages[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian's ${apt_packages[*]}..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null) \
      || echo "setup: note: apt-get could not install ${apt_packages[*]}; going on without them." >&2
  elif command -v apt-get >/dev/null && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    echo "setup: installing Debian's ${apt_packages[*]} (sudo)..."
    (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null) \
      || echo "setup: note: apt-get could not install ${apt_packages[*]}; going on without them." >&2
  elif [ ! -d /usr/share/datasets/fashion-mnist ]; then
    echo "setup: note: /usr/share/datasets/fashion-mnist is missing and apt is not usable here;" \
         "the download stage will try the official mirror (or set data.source_dir in params.yaml)." >&2
  fi
fi

export PATH="$ROOT/.venv/bin:$PATH"
export MPLBACKEND=Agg
