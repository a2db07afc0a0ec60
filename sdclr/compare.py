"""This run's report against the committed one, in one line: the last thing reproduce.sh prints.

    python -m sdclr.compare            # reports/ against git's HEAD:reports/

The committed report is made in portable numerics, which give the same bytes on any
x86-64 CPU with AVX2; a run that differs from it was made with other numerics (native
kernels, a GPU), other params or other code. The line says by how much (the largest
difference of any score, in accuracy points) and whether any claim's verdict changed,
since a verdict is what a reader takes away.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path


def committed(root: Path, path: str, rev: str = "HEAD") -> dict | None:
    """A JSON file as committed at ``rev``; None when git or the file is not there."""
    try:
        out = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return json.loads(out.stdout) if out.returncode == 0 else None


def _scores(root: Path, read) -> dict[str, dict]:
    folder = root / "reports" / "scores"
    names = sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []
    return {name.removesuffix(".json"): read(f"reports/scores/{name}") for name in names}


def _verdicts(summary: dict | None) -> dict[str, str]:
    if not summary:
        return {}
    return {f"{r['a']} − {r['b']} {r['kind'].replace('_', '-')} {r['metric']}": r["verdict"]
            for r in summary.get("paired_differences", [])}


def _made_on(root: Path) -> str:
    """The machines and numerics that the stages of this run's splits recorded in reports/cost.json
    (the file also keeps entries of methods and splits this run did not include)."""
    try:
        cost = json.loads((root / "reports" / "cost.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "this machine"
    ran = {f"{kind}/{p.parent.name}/{p.stem}" for p in (root / "reports" / "metrics").glob("*/split*.json")
           for kind in ("pretrain", "evaluate")}
    entries = [e for key, e in cost.items() if key in ran] or list(cost.values())
    seen = sorted({f"{e.get('device', '?')}, {e.get('numerics', 'numerics not recorded')}" for e in entries})
    return "; ".join(seen) or "this machine"


def comparison_line(root: Path, rev: str = "HEAD") -> str:
    """One line: identical to the committed report, or how far from it and which verdicts moved."""
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
            f"{biggest:.2f} points ({where}); {verdicts}.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="HEAD", help="the git revision holding the committed report")
    print(comparison_line(Path.cwd(), parser.parse_args().rev))
