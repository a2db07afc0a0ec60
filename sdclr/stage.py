"""What every ``stages/*.py`` script shares: argument parsing and the error contract.

A stage script is a thin ``main(params, args)``; :func:`run_stage` parses ``--params``,
loads and validates params.yaml, and turns any :class:`SdclrError` into one line on
stderr and exit status 2 (no traceback), so a user sees what to fix.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from sdclr.config import Params, load_params
from sdclr.errors import SdclrError


def project_root() -> Path:
    """The real project root, also inside ``dvc exp run --queue`` temp copies (DVC sets DVC_ROOT)."""
    root = os.environ.get("DVC_ROOT")
    return Path(root).resolve() if root else Path.cwd().resolve()


def run_stage(
    main: Callable[[Params, argparse.Namespace], None],
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="path to params.yaml (default: ./params.yaml)")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        main(params, args)
    except SdclrError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: outputs already written are kept; re-run to resume.", file=sys.stderr)
        sys.exit(130)
