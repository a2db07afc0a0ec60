"""Run one stage script under portable pins with some of them replaced: what a pin costs.

    python benchmarks/stage_under_pins.py MKL_CBWR=AVX2 -- stages/pretrain.py --method simclr ...

The stage itself pins its kernels first thing (``sdclr.runtime.numerics.pin_before_torch``), so an
environment variable set outside would be overwritten; this wrapper changes the pin table
before the stage reads it. Used by ``benchmarks/pin_cost.sh`` to time the same stage under the
old and the new pins side by side (``farm-bench --vs``).
"""

import runpy
import sys

from sdclr.runtime import numerics

split = sys.argv.index("--")
for item in sys.argv[1:split]:
    key, _, value = item.partition("=")
    numerics.PORTABLE_ENV[key] = value
sys.argv = sys.argv[split + 1:]
runpy.run_path(sys.argv[0], run_name="__main__")
