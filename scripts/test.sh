#!/usr/bin/env bash
# Set up, lint (ruff, configured in pyproject.toml), then run the test suite over every core
# (pytest-xdist; extra arguments go to pytest, e.g. -n 0 for one process or -k to choose tests).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ruff check .
python -m pytest -n auto --dist worksteal "$@"
