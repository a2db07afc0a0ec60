"""This run's report against the committed one, in one line: the last thing reproduce.sh prints.

    python -m sdclr.pipeline.compare            # reports/ against git's HEAD:reports/

    python -m sdclr.pipeline.compare --fingerprint reports/fingerprint.jsonl   # this machine's, already measured

The committed report is made in portable numerics, which give the same bytes on any
x86-64 CPU with AVX2; a run that differs from it was made with other numerics (native
kernels, a GPU), other params or other code, or on a CPU whose kernels give other bytes.
The line says by how much (the largest difference of any score, in accuracy points),
whether any claim's verdict changed, since a verdict is what a reader takes away, and why:
a portable run's CPU fingerprint (:mod:`sdclr.pipeline.fingerprint`) is compared op by op with the
committed machine's, ``reports/fingerprint.jsonl``, which names the kernels that differ or
rules the CPU out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from sdclr.pipeline import fingerprint

FINGERPRINT = "reports/fingerprint.jsonl"


def committed_text(root: Path, path: str, rev: str = "HEAD") -> str | None:
    """A file as committed at ``rev``; None when git or the file is not there."""
    try:
        out = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def committed(root: Path, path: str, rev: str = "HEAD") -> dict | None:
    """A JSON file as committed at ``rev``; None when git or the file is not there."""
    text = committed_text(root, path, rev)
    return None if text is None else json.loads(text)


def _scores(root: Path, read) -> dict[str, dict]:
    folder = root / "reports" / "scores"
    names = sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []
    return {name.removesuffix(".json"): read(f"reports/scores/{name}") for name in names}


def _verdicts(summary: dict | None) -> dict[str, str]:
    if not summary:
        return {}
    return {f"{r['a']} − {r['b']} {r['kind'].replace('_', '-')} {r['metric']}": r["verdict"]
            for r in summary.get("paired_differences", [])}


def _stage_entries(root: Path) -> list[dict]:
    """The reports/cost.json entries of this run's stages (the file also keeps entries of methods and
    splits this run did not include); [] when it cannot be read."""
    try:
        cost = json.loads((root / "reports" / "cost.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []
    ran = {f"{kind}/{p.parent.name}/{p.stem}" for p in (root / "reports" / "metrics").glob("*/split*.json")
           for kind in ("pretrain", "evaluate")}
    return [e for key, e in cost.items() if key in ran] or list(cost.values())


def _made_on(root: Path) -> str:
    """The machines and numerics that the stages of this run's splits recorded."""
    seen = sorted({f"{e.get('device', '?')}, {e.get('numerics', 'numerics not recorded')}" for e in _stage_entries(root)})
    return "; ".join(seen) or "this machine"


def why(root: Path, rev: str = "HEAD", ours: str | None = None) -> str:
    """Why a run differs from the committed report, as far as the machine can tell.

    A run in native numerics or on a GPU has numbers of its own. A portable CPU run is
    compared kernel by kernel: this CPU's fingerprint (``ours``, JSON lines; measured in a
    fresh process when None) against the one committed with the report."""
    numerics = {e.get("numerics", "") for e in _stage_entries(root)}
    if any(not n.startswith("portable") for n in numerics):
        return "this run's numerics are not portable (native kernels or a GPU), so its numbers belong to its machine"
    text = committed_text(root, FINGERPRINT, rev)
    if text is None:
        return f"no {FINGERPRINT} is committed to compare this CPU's kernels with"
    if ours is None:
        ours = _measure_fingerprint(root)
    if not ours:
        return "this CPU's fingerprint could not be measured (`python -m sdclr.pipeline.fingerprint` says why)"
    try:
        return fingerprint.explain(fingerprint.parse(ours)[1], fingerprint.parse(text)[1])
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        return f"this CPU's kernels could not be compared with the committed machine's ({e})"


def _measure_fingerprint(root: Path) -> str:
    """This machine's fingerprint at the shapes of ``root``'s params, in a fresh process (the pins
    must be set before torch loads); "" when it fails."""
    try:
        out = subprocess.run([sys.executable, "-m", "sdclr.pipeline.fingerprint", "--params", "params.yaml"], cwd=root,
                             capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout if out.returncode == 0 else ""


def comparison_line(root: Path, rev: str = "HEAD", fingerprint_text: str | None = None) -> str:
    """One line: identical to the committed report, or how far from it, which verdicts moved and why
    (``fingerprint_text``: this machine's fingerprint when already measured, see :func:`why`)."""
    ours = _scores(root, lambda p: json.loads((root / p).read_text()))
    theirs = {m: committed(root, f"reports/scores/{m}.json", rev) for m in ours}
    if not ours or all(v is None for v in theirs.values()):
        return "compare: no committed report to compare with (reports/scores/ is not in git here)."
    biggest, where = 0.0, ""
    for method, scores in ours.items():
        for key, value in scores.items():
            old = (theirs.get(method) or {}).get(key)
            if key == "splits" or not isinstance(value, (int, float)) or not isinstance(old, (int, float)):
                continue
            if abs(value - old) * 100 > biggest:
                biggest, where = abs(value - old) * 100, f"{method} {key}"
    # a method the committed report does not have (a newly added one) ran on no split there
    same_splits = all((theirs.get(m) or {"splits": 0}).get("splits") == s.get("splits") for m, s in ours.items())
    now = _verdicts(json.loads((root / "reports" / "summary.json").read_text()))
    before = _verdicts(committed(root, "reports/summary.json", rev))
    moved = [f"{claim}: {before.get(claim, 'absent')} → {verdict}" for claim, verdict in now.items()
             if before.get(claim) != verdict]
    if biggest == 0 and not moved and same_splits:
        return "compare: identical to the committed report (every score and verdict)."
    verdicts = "verdicts unchanged" if not moved else f"verdicts changed: {'; '.join(moved)}"
    splits = "" if same_splits else ", on other splits"
    return (f"compare: different from the committed report{splits} (made on {_made_on(root)}) by up to "
            f"{biggest:.2f} points ({where}); {verdicts}; {why(root, rev, fingerprint_text)}.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="HEAD", help="the git revision holding the committed report")
    parser.add_argument("--fingerprint", type=Path, help="this machine's fingerprint file, if already measured")
    args = parser.parse_args()
    print(comparison_line(Path.cwd(), args.rev, args.fingerprint.read_text() if args.fingerprint else None))
