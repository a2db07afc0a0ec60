"""The CPU fingerprint (sdclr/pipeline/fingerprint.py) and the compare line's explanation built on it.

- On one machine the fingerprint is the same in every process: a fresh one (pinned by the
  module itself) and this test process (pinned by conftest) give the same bytes.
- It sees a kernel change: MKL's AVX2 branch instead of its vendor-independent one changes the
  linear layers, and the explanation names them.
- The committed fingerprint (the machine that made the committed report) holds on this CPU:
  the portable promise itself, kernel by kernel. Where it fails, this CPU's kernels give other
  bytes and the committed report cannot be reproduced here: the message names which.
- compare's "why" clause, from hand-made fingerprints in a temp git repo.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sdclr.pipeline import fingerprint_format as fingerprint
from sdclr.pipeline.compare import FINGERPRINT, why
from sdclr.pipeline.fingerprint_ops import measure
from sdclr.runtime.numerics import has_avx2
from tests.conftest import ROOT

needs_avx2 = pytest.mark.skipif(not has_avx2(), reason="the portable kernels need AVX2")


def _fresh(root, *pins: str) -> str:
    """A fingerprint measured in a new process, with some of the portable pins replaced."""
    code = ("import sys; from sdclr.runtime import numerics\n"
            f"numerics.PORTABLE_ENV.update(dict(p.split('=', 1) for p in {list(pins)!r}))\n"
            "numerics.pin('portable')\nfrom sdclr.pipeline.fingerprint import main\nsys.exit(main([]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def fresh() -> str:
    """This machine's fingerprint, measured once for the module's tests."""
    return _fresh(ROOT)


@pytest.mark.slow
@needs_avx2
def test_the_fingerprint_is_the_same_in_every_process_on_one_machine(fresh, root):
    _, ops = fingerprint.parse(fresh)
    in_process = {r["op"]: {"group": r["group"], "sha": r["sha"]} for r in measure(root / "params.yaml")}
    assert in_process == ops
    groups = {v["group"] for v in ops.values()}
    assert {"conv forward", "conv backward", "batch norm", "linear layers", "NT-Xent loss", "augmentation", "SGD",
            "a whole training step (sdclr)"} <= groups
    # every convolution of the network at its own size: the stem, each stage's 3x3s and its 1x1 shortcut
    assert {"conv3x3 1->8 @28 s1 forward", "conv3x3 8->16 @28 s2 forward", "conv1x1 32->64 @7 s2 forward"} <= set(ops)


@pytest.mark.slow
@needs_avx2
def test_the_fingerprint_sees_mkls_branch_and_names_it(fresh, root):
    _, portable = fingerprint.parse(fresh)
    _, avx2_branch = fingerprint.parse(_fresh(root, "MKL_CBWR=AVX2"))
    groups, common = fingerprint.differing_groups(avx2_branch, portable)
    assert common == len(portable)
    assert "linear layers" in groups and "conv forward" not in groups and "conv backward" not in groups
    assert fingerprint.explain(avx2_branch, portable).startswith("this CPU's linear layers")


@pytest.mark.slow
@needs_avx2
def test_the_committed_fingerprint_holds_on_this_cpu(fresh, root):
    """The committed report's machine and this one run the same kernels, op by op."""
    header, committed = fingerprint.read(root / FINGERPRINT)
    _, ours = fingerprint.parse(fresh)
    groups, common = fingerprint.differing_groups(ours, committed)
    assert common == len(committed), "the committed fingerprint has ops this one lacks: re-measure it"
    assert not groups, (f"{fingerprint.explain(ours, committed, 'the committed machine (' + header['cpu'] + ')')}; "
                        "this CPU cannot reproduce the committed report's bytes")


def test_explain_names_the_differing_groups_or_rules_the_cpu_out():
    ours = {"a": {"group": "conv backward", "sha": "1"}, "b": {"group": "conv backward", "sha": "2"},
            "c": {"group": "linear layers", "sha": "3"}, "d": {"group": "SGD", "sha": "4"}}
    theirs = {**ours, "a": {"group": "conv backward", "sha": "x"}, "c": {"group": "linear layers", "sha": "y"}}
    assert fingerprint.differing_groups(ours, theirs) == (["conv backward", "linear layers"], 4)
    assert fingerprint.explain(ours, theirs) == ("this CPU's conv backward and linear layers differ from the "
                                                 "committed machine's, so trained numbers differ")
    one = {**ours, "d": {"group": "SGD", "sha": "z"}}
    assert fingerprint.explain(one, ours) == ("this CPU's SGD differs from the committed machine's, so trained numbers "
                                              "differ")
    assert fingerprint.explain(ours, dict(ours)).startswith("this CPU's fingerprint matches the committed machine's on "
                                                            "all 4 ops, so the kernels are not the cause")
    assert "share no op" in fingerprint.explain(ours, {"e": {"group": "SGD", "sha": "4"}})


def _text(ops: dict) -> str:
    head = {"fingerprint": fingerprint.VERSION, "cpu": "test"}
    return "\n".join(json.dumps(r) for r in [head, *({"op": k, **v} for k, v in ops.items())]) + "\n"


def test_a_file_of_another_format_is_refused():
    with pytest.raises(ValueError, match=f"not a version-{fingerprint.VERSION} fingerprint"):
        fingerprint.parse('{"op": "a", "sha": "1"}\n')
    with pytest.raises(ValueError, match="not a version"):  # an older op list: its inputs were drawn otherwise
        fingerprint.parse(_text({"a": {"group": "g", "sha": "1"}}).replace(f'"fingerprint": {fingerprint.VERSION}',
                                                                           '"fingerprint": 1'))
    assert fingerprint.parse(_text({"a": {"group": "g", "sha": "1"}}))[1] == {"a": {"group": "g", "sha": "1"}}


def _repo_with(tmp_path, committed_fp: str | None, numerics: str):
    repo = tmp_path / "repo"
    (repo / "reports/metrics/simclr").mkdir(parents=True)
    (repo / "reports/metrics/simclr/split0.json").write_text("{}")
    (repo / "reports/cost.json").write_text(json.dumps({"pretrain/simclr/split0": {"numerics": numerics}}))
    if committed_fp is not None:
        (repo / FINGERPRINT).write_text(committed_fp)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "r"], cwd=repo, check=True)
    return repo


def test_why_a_run_differs(tmp_path):
    committed = {"conv": {"group": "conv backward", "sha": "1"}, "lin": {"group": "linear layers", "sha": "2"}}
    portable = "portable (AVX2 kernels, MKL COMPATIBLE, 1 thread)"
    repo = _repo_with(tmp_path, _text(committed), portable)
    other_cpu = _text({**committed, "conv": {"group": "conv backward", "sha": "9"}})
    assert why(repo, ours=other_cpu) == ("this CPU's conv backward differs from the committed machine's, so trained "
                                         "numbers differ")
    assert why(repo, ours=_text(committed)).endswith("so the kernels are not the cause: params, code or data differ")
    assert "could not be measured" in why(repo, ours="")
    # the working tree's fingerprint is not the committed one: what git holds counts
    (repo / FINGERPRINT).write_text(other_cpu)
    assert "not the cause" in why(repo, ours=_text(committed))

    native = _repo_with(tmp_path / "n", _text(committed), "native (X, AVX2 kernels, 2 threads)")
    assert why(native, ours=other_cpu).startswith("this run's numerics are not portable")
    bare = _repo_with(tmp_path / "b", None, portable)
    assert why(bare, ours=other_cpu) == f"no {FINGERPRINT} is committed to compare this CPU's kernels with"
