"""What every ``stages/*.py`` script shares: argument parsing and the error contract.

A stage script is a thin ``main(params, args)``; :func:`run_stage` parses ``--params``,
loads and validates the params file (with what the stage knows of the methods: see
:class:`sdclr.config.Declared`), checks that every output location can be written
(before hours of training, not after), and turns any :class:`SdclrError` into one line on
stderr and exit status 2 (no traceback), so a user sees what to fix.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

from sdclr.config import Declared, Params, load_params
from sdclr.errors import ParamError, SdclrError, TimeLimitStop
from sdclr.runtime import numerics, time_limit
from sdclr.storage.io import NO_ROOM, no_room, remove_stale_temps


def run_stage(
    main: Callable[[Params, argparse.Namespace], None],
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
    outputs: tuple[str, ...] = (),
    shared_outputs: tuple[str, ...] = (),
    declared: Callable[[argparse.Namespace], Declared] = lambda args: Declared(),
) -> None:
    """Parse, load params, apply their numerics, prepare the outputs, run ``main``; errors become
    one line and exit 2.

    ``outputs`` name the path arguments this stage alone writes (checked writable, and the
    temporaries a killed earlier run left beside them removed); ``shared_outputs`` those
    other stages write too (only checked: another process may be writing them now).
    ``declared``: what the stage knows of the methods' params blocks, from its arguments
    (default: nothing, for a stage that trains no method).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="path to params.yaml (default: ./params.yaml)")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params, declared(args))
        if "torch" in sys.modules:  # a stage that computes: its thread count, and a check that the pin took
            numerics.apply(params.numerics)
        paths = {name: getattr(args, name) for name in (*outputs, *shared_outputs)}
        paths = {name: path for name, path in paths.items() if path is not None}  # optional outputs not asked for
        for name in outputs:
            if name in paths:
                remove_stale_temps(paths[name])
        check_writable(list(paths.values()))
        main(params, args)
    except TimeLimitStop as e:  # not an error: the launcher submits the job that resumes it
        print(f"time limit: {e}", file=sys.stderr)
        sys.exit(time_limit.EXIT_CODE)
    except SdclrError as e:
        if isinstance(e, ParamError):  # found after loading (e.g. in training): name the file actually read
            e.params_file = str(args.params)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a write outside the atomic writers (e.g. the tracking store) that found no room
        if e.errno not in NO_ROOM:
            raise
        print(f"error: {no_room(e.filename or 'an output', e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: outputs already written are kept; re-run to resume.", file=sys.stderr)
        sys.exit(130)


def check_writable(paths: list[Path]) -> None:
    """Create each output's folder and write a probe file there, or fail with one sentence.

    A full disk, a read-only mount or a file where a folder should be is then found before
    the work, not when the result of hours of training is about to be saved.
    """
    for path in paths:
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check.", suffix=".tmp"):
                pass
            if path.exists() and not path.is_dir() and not os.access(path, os.W_OK):
                raise PermissionError(f"{path} is read-only")
        except OSError as e:
            raise SdclrError(f"the output {path} cannot be written ({e.strerror or e}); make {folder} a writable "
                             f"folder (check the disk space, permissions and mount) and run the stage again.") from None
