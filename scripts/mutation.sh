#!/usr/bin/env bash
# Mutation testing: every small change mutmut makes to the core modules (pyproject.toml, [tool.mutmut])
# must make a unit test fail. Not part of CI (about an hour on 2 cores). Prints the score; the survivors
# are listed by `mutmut results` and each is shown with `mutmut show <name>`.
#   bash scripts/mutation.sh              # all the core modules
#   bash scripts/mutation.sh 'sdclr.stats*'   # only the mutants whose names match
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
python -m pip install --quiet "mutmut==3.8.1" 2> >(grep -v "^WARNING: Location" >&2)
rm -rf mutants
# mutmut forks a child per mutant from a process that has run torch: with an OpenMP thread pool the
# children hang (GNU OpenMP is not fork-safe), so one thread
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mutmut run --max-children "$(nproc)" "$@" > .mutmut-run.log 2>&1 || { tail -20 .mutmut-run.log; exit 1; }
mutmut export-cicd-stats >/dev/null
python - <<'PY'
import json
s = json.load(open("mutants/mutmut-cicd-stats.json"))
print(f"mutation score: {s['killed']}/{s['total']} killed ({100 * s['killed'] / max(1, s['total']):.1f} %); "
      f"survived {s['survived']}, no tests {s['no_tests']}, timeout {s['timeout']}, suspicious {s['suspicious']}")
PY
mutmut results
