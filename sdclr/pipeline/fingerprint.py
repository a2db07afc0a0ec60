"""This CPU's numerics fingerprint: which bytes each kernel of a training step gives here.

    python -m sdclr.pipeline.fingerprint                                    # this machine's, as JSON lines
    python -m sdclr.pipeline.fingerprint --out reports/fingerprint.jsonl    # kept beside the committed report
    python -m sdclr.pipeline.fingerprint --compare reports/fingerprint.jsonl

The ops and why they are the ones measured: :mod:`sdclr.pipeline.fingerprint_ops`; the file
and its comparison: :mod:`sdclr.pipeline.fingerprint_format`. On one machine the fingerprint
is the same on every run (tested); the committed one, ``reports/fingerprint.jsonl``, is that
of the machine that made the committed report (written by ``scripts/reproduce.sh``). Numbers
measured with it are in docs/measurements.md.
"""

from sdclr.runtime.numerics import pin_before_torch

pin_before_torch()  # first: torch reads its kernel level once, when it loads (sdclr/runtime/numerics.py)

import argparse
import json
import sys
from pathlib import Path

from sdclr.pipeline.fingerprint_format import differing_groups, explain, parse, read
from sdclr.pipeline.fingerprint_ops import header, measure
from sdclr.storage.io import write_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="the params file whose shapes and numerics to use")
    parser.add_argument("--out", type=Path, help="write the fingerprint here (JSON lines) instead of printing it")
    parser.add_argument("--compare", type=Path, help="another machine's fingerprint file: name the groups that differ")
    args = parser.parse_args(argv)
    text = "\n".join(json.dumps(r) for r in [header(args.params), *measure(args.params)]) + "\n"
    if args.compare:
        _, ours = parse(text)
        _, theirs = read(args.compare)
        print(explain(ours, theirs, f"{args.compare}'s") + ".")
        return 1 if differing_groups(ours, theirs)[0] else 0
    if args.out:
        write_bytes(args.out, text.encode())
        print(f"fingerprint: {len(text.splitlines()) - 1} ops → {args.out}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
