"""The compare line names a moved verdict, and an output with other bytes, even when every headline
score is the same as committed.

Guards the wrong programs that let reproduce.sh's last line say ``identical`` while a claim's
verdict changed: ones that look at the verdicts only when some score moved (``moved`` computed
only when the scores differ, or ``identical`` returned whenever the largest score difference is
0). The scores in reports/scores/*.json are means over the splits, rounded; a verdict comes from
the paired per-split differences (and from the code that judges them), so it can move while
every score stays byte-identical. tests/test_report.py's comparison test moves both at once.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

from sdclr.pipeline.compare import comparison_line
from sdclr.stats import AGREES, INCONCLUSIVE

SCORES = {
    "simclr": {"full_shot": 0.75883, "few_shot": 0.6685, "knn": 0.6877, "full_shot_minor": 0.76356,
               "full_shot_balancedness": 0.0756, "splits": 3},
    "sdclr": {"full_shot": 0.7601, "few_shot": 0.6714, "knn": 0.6902, "full_shot_minor": 0.7712,
              "full_shot_balancedness": 0.0701, "splits": 3},
}


def _row(kind: str, metric: str, direction: int, low: float, high: float, verdict: str) -> dict:
    """A paired_differences row of reports/summary.json (its shape as stages/report.py writes it)."""
    return {"a": "sdclr", "b": "simclr", "direction": direction, "high": high, "kind": kind, "low": low,
            "mean": round((low + high) / 2, 5), "metric": metric, "sd": 0.005,
            "source": "SDCLR paper (Jiang et al. 2021)", "splits": 3, "verdict": verdict}


SUMMARY = {"paired_differences": [
    _row("full_shot", "accuracy", 1, -0.0132, 0.0158, INCONCLUSIVE),
    _row("full_shot", "minor", 1, 0.0021, 0.0131, AGREES),
]}


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True)


def _write_report(repo: Path, summary: dict) -> None:
    (repo / "reports" / "scores").mkdir(parents=True, exist_ok=True)
    for method, scores in SCORES.items():
        (repo / "reports" / "scores" / f"{method}.json").write_text(json.dumps(scores, indent=2) + "\n")
    (repo / "reports" / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")


def test_a_moved_verdict_is_named_even_when_every_score_is_identical(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _write_report(repo, SUMMARY)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "report")
    assert comparison_line(repo).startswith("compare: identical")  # the committed report itself

    # this run: the same scores to the byte; the minor-group claim's interval now spans 0
    summary = copy.deepcopy(SUMMARY)
    summary["paired_differences"][1].update(low=-0.0019, high=0.0171, mean=0.0076, verdict=INCONCLUSIVE)
    _write_report(repo, summary)
    assert _git(repo, "status", "--porcelain").stdout.splitlines() == [" M reports/summary.json"]

    line = comparison_line(repo)
    assert "identical" not in line, line
    assert f"verdicts changed: sdclr − simclr full-shot minor: {AGREES} → {INCONCLUSIVE}" in line, line
    assert "full-shot accuracy" not in line  # the claim whose verdict stayed is not named
    assert "\n" not in line


def test_an_output_with_other_bytes_is_named_even_when_every_score_and_verdict_is_identical(tmp_path):
    """A real DVC stage writes a metrics file whose validation curve moves by one image (as on the
    Zen 4 of issue 40) while every score and verdict stays: the line must say which output differs."""
    import os
    import sys

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _write_report(repo, SUMMARY)
    (repo / "make.py").write_text("import json, sys\n"
                                  "json.dump({'accuracy': 0.75, 'val_curve': [0.762]}, open('split0.json', 'w'))\n")
    (repo / "dvc.yaml").write_text("stages:\n  evaluate-sbid:\n    cmd: python make.py\n    deps: [make.py]\n"
                                   "    outs: [split0.json]\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def dvc(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True, env=env)

    dvc("init", "-q")
    dvc("repro", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "report")
    line = comparison_line(repo)
    assert line == ("compare: identical to the committed report (every score and verdict, and 1 output byte "
                    "for byte)."), line

    (repo / "make.py").write_text((repo / "make.py").read_text().replace("0.762", "0.7621666666666667"))
    dvc("repro", "-q")
    line = comparison_line(repo, fingerprint_text="")
    assert "identical" not in line, line
    assert line.startswith("compare: same scores and verdicts; 1 of 1 output has other bytes than the committed "
                           "dvc.lock: evaluate-sbid (split0.json)"), line
