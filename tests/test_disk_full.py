"""A full disk or a file-size limit while a stage writes: one sentence, nothing lost, nothing half-written.

For real, in subprocesses: the output folder on a small tmpfs (ENOSPC; needs the right to
mount, as root in CI), and ``ulimit -f`` (EFBIG). The sentence names the path and the cause;
the earlier output and the last good checkpoint are intact; no temporary file is left.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.dvc_project import ROOT, project_env, stage_command
from tests.test_pretrain import tiny_project  # noqa: F401  (a fixture)


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.name.endswith((".tmp", ".old"))]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def small_tmpfs(tmp_path):
    """Mount a 256 KiB tmpfs at the given folder (skip where mounting is not allowed); unmount after."""
    mounted = []

    def mount(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_under_the_encoder_is_one_sentence_and_keeps_the_checkpoint(tiny_project, tmp_path,  # noqa: F811
                                                                                small_tmpfs):
    models = small_tmpfs(tiny_project / "models/simclr")
    earlier = models / "split0.pt"
    earlier.write_bytes(b"the encoder of an earlier run")
    cmd = stage_command(tiny_project, "pretrain-simclr", 0)
    done = subprocess.run(cmd, cwd=tiny_project, capture_output=True, text=True, timeout=600,
                          env=project_env(tiny_project, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "models/simclr/split0.pt could not be written: No space left on device (ENOSPC)" in errors[0]
    assert earlier.read_bytes() == b"the encoder of an earlier run" and not _temps(models)
    # the last good checkpoint (every epoch's) is kept, whole: the next run resumes from it
    ckpt = torch.load(tiny_project / "checkpoints/simclr/split0.ckpt", map_location="cpu", weights_only=True)
    assert int(ckpt["epoch"]) == 6


def test_a_file_size_limit_while_writing_the_splits_is_one_sentence_and_keeps_them(tiny_project):  # noqa: F811
    splits = tiny_project / "data/splits/fashion_mnist"
    before = {p.name: _md5(p) for p in splits.iterdir()}
    cmd = " ".join(stage_command(tiny_project, "subsample", None))
    done = subprocess.run(["bash", "-c", f"ulimit -f 1; {cmd}"], cwd=tiny_project, capture_output=True, text=True,
                          timeout=300, env=project_env(tiny_project))
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr[-2000:]
    assert "data/splits/fashion_mnist could not be written: File too large (EFBIG)" in done.stderr
    assert {p.name: _md5(p) for p in splits.iterdir()} == before
    assert not _temps(splits.parent)


def test_metrics_reports_and_checkpoints_refuse_a_file_size_limit_alike(tmp_path):
    """The writers every stage uses, in a process under `ulimit -f 4` (4 KiB)."""
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        from sdclr.storage import checkpoint
        from sdclr.errors import OutputError
        from sdclr.storage.io import write_json
        from sdclr.report.figures import pyplot as _pyplot, save_figure
        out = {str(tmp_path)!r}
        fig = _pyplot().figure()
        fig.gca().plot(range(1000), [i * i % 97 for i in range(1000)])
        writes = {{"metrics.json": lambda p: write_json(p, {{"per_class": list(range(5000))}}),
                   "figure.png": lambda p: save_figure(fig, p),
                   "state.ckpt": lambda p: checkpoint.save(p, {{"w": torch.zeros(10_000)}})}}
        for name, write in writes.items():
            try:
                write(f"{{out}}/{{name}}")
                print("written", name)
            except OutputError as e:
                print(e)
    """)
    for name in ("metrics.json", "figure.png", "state.ckpt"):
        (tmp_path / name).write_bytes(b"earlier")
    done = subprocess.run(["bash", "-c", f"ulimit -f 4; {sys.executable} -c \"$0\"", script], capture_output=True,
                          text=True, timeout=300)
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout + done.stderr[-2000:]
    for name, line in zip(("metrics.json", "figure.png", "state.ckpt"), lines):
        assert line.startswith(f"{tmp_path / name} could not be written: File too large (EFBIG)"), line
        assert (tmp_path / name).read_bytes() == b"earlier"
    assert not _temps(tmp_path)
