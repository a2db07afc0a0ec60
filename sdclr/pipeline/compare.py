"""This run's report against the committed one, in one line: the last thing reproduce.sh prints.

    python -m sdclr.pipeline.compare            # reports/ against git's HEAD:reports/

    python -m sdclr.pipeline.compare --fingerprint reports/fingerprint.jsonl   # this machine's, already measured

The committed report is made in portable numerics, which give the same bytes on any
x86-64 CPU with AVX2; a run that differs from it was made with other numerics (native
kernels, a GPU), other params or other code, or on a CPU whose kernels give other bytes.
The line says by how much (the largest difference of any score, in accuracy points),
whether any claim's verdict changed, since a verdict is what a reader takes away, which stage
outputs have other bytes than the committed ``dvc.lock`` records ("identical" means every
byte: a validation curve can move while every score stays), and why:
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

from sdclr.pipeline import fingerprint_format as fingerprint

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
    seen = sorted({f"{e.get('device', '?')}, {e.get('numerics', 'numerics not recorded')}"
                   for e in _stage_entries(root)})
    return "; ".join(seen) or "this machine"


def why(root: Path, rev: str = "HEAD", ours: str | None = None, uncovered: bool = False) -> str:
    """Why a run differs from the committed report, as far as the machine can tell.

    A run in native numerics or on a GPU has numbers of its own. A portable CPU run is
    compared kernel by kernel: this CPU's fingerprint (``ours``, JSON lines; measured in a
    fresh process when None) against the one committed with the report. ``uncovered``: only
    bytes differ, not scores, so a fingerprint that agrees everywhere points at an op it lacks."""
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
        ours_ops, theirs_ops = fingerprint.parse(ours)[1], fingerprint.parse(text)[1]
        if uncovered and not fingerprint.differing_groups(ours_ops, theirs_ops)[0]:
            return "no kernel in the fingerprint differs, so the cause is uncovered (an op the fingerprint lacks)"
        return fingerprint.explain(ours_ops, theirs_ops)
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


def stage_outputs(lock_text: str | None) -> dict[tuple[str, str], str]:
    """{(stage, output path): md5} of every output a ``dvc.lock`` records ({} without one)."""
    import yaml

    stages = (yaml.safe_load(lock_text) or {}).get("stages", {}) if lock_text else {}
    return {(stage, out["path"]): out.get("md5", "")
            for stage, entry in stages.items() for out in entry.get("outs", [])}


def other_bytes(root: Path, rev: str = "HEAD") -> tuple[list[tuple[str, str]], int]:
    """The (stage, output) pairs whose md5 in this workspace's ``dvc.lock`` differs from the one
    committed at ``rev`` (a stage or output the committed lock lacks counts as differing), and how
    many outputs this lock records."""
    ours = stage_outputs((root / "dvc.lock").read_text() if (root / "dvc.lock").is_file() else None)
    theirs = stage_outputs(committed_text(root, "dvc.lock", rev))
    return [key for key, md5 in ours.items() if theirs.get(key) != md5], len(ours)


def _bytes_clause(differ: list[tuple[str, str]], total: int) -> str:
    names = ", ".join(f"{stage} ({path})" for stage, path in differ[:6]) + (", …" if len(differ) > 6 else "")
    verb = "has" if len(differ) == 1 else "have"
    return f"{len(differ)} of {total} output{'s' * (total > 1)} {verb} other bytes than the committed dvc.lock: {names}"


def comparison_line(root: Path, rev: str = "HEAD", fingerprint_text: str | None = None) -> str:
    """One line: identical to the committed report (every score, verdict and output byte), or how far
    from it, which verdicts moved, which outputs have other bytes, and why (``fingerprint_text``:
    this machine's fingerprint when already measured, see :func:`why`)."""
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
    differ, total = other_bytes(root, rev) if committed_text(root, "dvc.lock", rev) is not None else ([], 0)
    if biggest == 0 and not moved and same_splits:
        if not differ:
            every = f", and {'all ' * (total > 1)}{total} output{'s' * (total > 1)} byte for byte" if total else ""
            return f"compare: identical to the committed report (every score and verdict{every})."
        return (f"compare: same scores and verdicts; {_bytes_clause(differ, total)}; "
                f"{why(root, rev, fingerprint_text, uncovered=True)}.")
    verdicts = "verdicts unchanged" if not moved else f"verdicts changed: {'; '.join(moved)}"
    splits = "" if same_splits else ", on other splits"
    outputs = f"; {_bytes_clause(differ, total)}" if differ else ""
    return (f"compare: different from the committed report{splits} (made on {_made_on(root)}) by up to "
            f"{biggest:.2f} points ({where}); {verdicts}{outputs}; {why(root, rev, fingerprint_text)}.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="HEAD", help="the git revision holding the committed report")
    parser.add_argument("--fingerprint", type=Path, help="this machine's fingerprint file, if already measured")
    args = parser.parse_args()
    print(comparison_line(Path.cwd(), args.rev, args.fingerprint.read_text() if args.fingerprint else None))
