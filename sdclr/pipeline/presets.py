"""Named settings (``presets/<name>.yaml``) merged into params.yaml in one command.

A preset is a *partial* params.yaml: only the keys it sets change, the rest of the
user's file — comments and key order included (ruamel round-trip) — stays as it was.
The merged file is validated before it replaces params.yaml, so a bad preset never
leaves a half-edited or invalid params.yaml behind.

    python -m sdclr.pipeline.presets cifar10_paper          # edit ./params.yaml
    bash scripts/reproduce.sh --preset cifar10_paper   # the same, then `dvc repro`

A preset that changes ``methods`` also rewrites the dvc.yaml beside params.yaml for them
(:mod:`sdclr.pipeline.dvc_stages`), since DVC cannot add stages from a param.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import yaml

from sdclr.config import PRESET_DIR
from sdclr.errors import ConfigError, SdclrError
from sdclr.pipeline.dvc_stages import render
from sdclr.registry import parse_params
from sdclr.storage.io import write_bytes


def available(preset_dir: Path = PRESET_DIR) -> list[str]:
    return sorted(p.stem for p in preset_dir.glob("*.yaml"))


def _preset_path(name: str, preset_dir: Path) -> Path:
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml") and as_path.is_file():
        return as_path
    path = preset_dir / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(available(preset_dir)) or "none"
        raise ConfigError(f"preset {name!r} not found in {preset_dir}; available: {names} "
                          "(or pass the path of a .yaml file).")
    return path


def _merge(target, update: dict, prefix: str, changed: list[str]) -> None:
    for key, value in update.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in target:
            raise ConfigError(f"preset: unknown key {dotted!r}; a preset may only set keys that params.yaml has.")
        if isinstance(value, dict):
            if not isinstance(target[key], dict):
                raise ConfigError(f"preset: {dotted!r} is a single value in params.yaml, not a group; set it directly.")
            _merge(target[key], value, dotted, changed)
        elif target[key] != value:
            target[key] = value
            changed.append(dotted)


def apply_preset(name: str, params_path: Path = Path("params.yaml"), preset_dir: Path = PRESET_DIR) -> list[str]:
    """Merge preset ``name`` into ``params_path`` (validated, atomic); returns the changed keys."""
    from ruamel.yaml import YAML

    rt = YAML()  # round-trip: keeps the comments and key order of the user's params.yaml
    rt.preserve_quotes = True
    # read round-trip too, so a value keeps the preset's spelling: 0.000005 written back as
    # 5e-06 would be a string to PyYAML (YAML 1.1 wants a dot in a float)
    preset = rt.load(_preset_path(name, preset_dir).read_text()) or {}
    if not isinstance(preset, dict):
        raise ConfigError(f"preset {name!r}: the file must be a YAML mapping of params.yaml keys.")
    try:
        doc = rt.load(Path(params_path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{params_path}: file not found; run from the project root.") from None
    changed: list[str] = []
    _merge(doc, preset, "", changed)
    buf = io.StringIO()
    rt.dump(doc, buf)
    text = buf.getvalue()
    parse_params(yaml.safe_load(text), f"{params_path} with preset {name}")  # the merged file must be valid
    write_bytes(params_path, text.encode())
    if "methods" in changed:
        write_bytes(Path(params_path).parent / "dvc.yaml", render(Path(params_path)).encode())
    return changed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help=f"a preset name ({', '.join(available())}) or a .yaml path")
    parser.add_argument("--params", default="params.yaml", type=Path)
    args = parser.parse_args(argv)
    try:
        changed = apply_preset(args.name, args.params)
    except SdclrError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"preset {args.name}: {len(changed)} key(s) changed in {args.params}"
          + (": " + ", ".join(changed) if changed else "")
          + ("; dvc.yaml rewritten for its methods" if "methods" in changed else ""))


if __name__ == "__main__":
    main()
