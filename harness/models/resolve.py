"""`--model` → a local Hugging Face-format directory (ResolvedModel).

`--model` accepts, in this order of precedence:

1. an existing path: a directory in Hugging Face format (config.json + weights + tokenizer), or a
   `.gguf` file (converted once into the cache, keyed by its content hash);
2. a preset name or alias (harness.models.presets); a preset that is not in the cache yet is
   pulled on first use (harness.models.cache);
3. a Hugging Face hub id (`org/name` or `org/name@revision`), through the hub's normal cache. When
   the hub cannot be reached this fails with a one-line message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import HarnessError
from harness.models import cache
from harness.models.loading import repair_hint
from harness.models.cache import (
    dir_revision,
    dir_size,
    file_sha256,
    gguf_cache_key,
    hub_snapshot,
    models_cache,
    preset_entry_ok,
    pull_gguf,
    read_manifest,
)
from harness.models.presets import all_presets, list_presets, load_preset, preset_with_template

SOURCES = ("preset", "dir", "gguf", "hub")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(@[\w.\-/]+)?$")


# --------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready for `from_pretrained(path)`."""

    id: str  # display name: the preset name, the directory / file name, or the hub id
    path: Path  # local HF-format directory
    source: str  # preset | dir | gguf | hub
    revision: str | None  # sha256 of the source content, or the hub commit
    preset: dict[str, Any] | None = None  # the preset's YAML (dtype, chat_template, eos_tokens, ...)
    manifest: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def dtype(self) -> str:
        return str((self.preset or {}).get("dtype") or "auto")

    @property
    def chat_template(self) -> str | None:
        return (self.preset or {}).get("chat_template")

    @property
    def max_model_len(self) -> int | None:
        v = (self.preset or {}).get("max_model_len")
        return int(v) if v else None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": str(self.path), "source": self.source, "revision": self.revision}

    def load_tokenizer(self, **kwargs: Any):
        from harness.models.loading import load_tokenizer

        return load_tokenizer(self, **kwargs)



# --------------------------------------------------------------------------------------------------
# Resolution


def _resolve_hub(repo_id: str, revision: str | None = None, preset: dict[str, Any] | None = None) -> ResolvedModel:
    path = hub_snapshot(repo_id, revision)
    return ResolvedModel(id=(preset or {}).get("name", repo_id), path=path, source="hub", revision=path.name, preset=preset)


def _check_model_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise HarnessError(f"{path} is not a Hugging Face model directory (no config.json)")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise HarnessError(f"{path} has no weights (*.safetensors or *.bin)")


def _refuse_damaged(entry: Path, name: str) -> None:
    """A cache entry damaged after it was completed is an error with the repair command, never
    loaded (garbage weights) nor silently rebuilt (a surprise reconversion of minutes)."""
    why = cache.entry_damage(entry)
    if why:
        raise HarnessError(f"cached model {name!r} at {entry} is damaged: {why}; {repair_hint(name)}")


def resolve_model(name_or_path: str, pull: bool = True) -> ResolvedModel:
    """Resolve `--model` (a path, preset name or hub id) into a local HF-format directory."""
    name_or_path = str(name_or_path).strip()
    if not name_or_path:
        raise HarnessError("empty model name")
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        p = p.resolve()
        _check_model_dir(p)
        manifest = read_manifest(p)
        return ResolvedModel(id=p.name, path=p, source="dir", revision=dir_revision(p), manifest=manifest)
    if p.is_file():
        if p.suffix != ".gguf":
            raise HarnessError(f"{p} is a file but not a .gguf; pass a model directory, a .gguf file or a preset name")
        sha = file_sha256(p)
        final = models_cache() / gguf_cache_key(sha)
        _refuse_damaged(final, str(p))
        manifest = read_manifest(final)
        if manifest is None:
            if not pull:
                raise HarnessError(f"{p.name} is not converted yet; run `harness models pull {p}`")
            final = pull_gguf(p)
            manifest = read_manifest(final)
        return ResolvedModel(id=p.stem, path=final, source="gguf", revision=sha, manifest=manifest)
    preset = load_preset(name_or_path)
    if preset is not None:
        preset = preset_with_template(preset)
        public = {k: v for k, v in preset.items() if not k.startswith("_")}
        if preset["source"].get("hub"):
            return _resolve_hub(preset["source"]["hub"], preset["source"].get("revision"), preset=public)
        final = models_cache() / preset["name"]
        _refuse_damaged(final, preset["name"])
        manifest = read_manifest(final)
        if not preset_entry_ok(preset, manifest):
            if not pull:
                raise HarnessError(f"model preset {preset['name']!r} is not pulled yet; run `harness models pull {preset['name']}`")
            final = cache.pull(preset["name"])
            manifest = read_manifest(final)
        return ResolvedModel(
            id=preset["name"], path=final, source="preset", revision=manifest["revision"], preset=public, manifest=manifest
        )
    if name_or_path.endswith(".gguf") or name_or_path.startswith((".", "/", "~")):
        raise HarnessError(f"no such file or directory: {name_or_path}")
    if _HUB_ID.match(name_or_path):
        repo, _, rev = name_or_path.partition("@")
        return _resolve_hub(repo, rev or None)
    raise HarnessError(
        f"unknown model {name_or_path!r}: not a path, a preset ({', '.join(list_presets()) or 'none'}) or a hub id (org/name)"
    )


# --------------------------------------------------------------------------------------------------
# Listing


def _describe_source(src: dict[str, Any]) -> str:
    if src.get("hub"):
        return f"hub:{src['hub']}"
    if src.get("path"):
        return f"file:{src['path']}"
    wheels = src.get("wheels") or []
    what = src.get("file") or f"{len(src.get('parts') or [])} parts"
    return f"pypi:{','.join(wheels)} ({what})" if wheels else str(what)


def list_models() -> list[dict[str, Any]]:
    """Presets (cache state, size, source) followed by converted user `.gguf` files in the cache."""
    rows: list[dict[str, Any]] = []
    names = set()
    for p in all_presets():
        names.add(p["name"])
        final = models_cache() / p["name"]
        m = read_manifest(final)
        ok = preset_entry_ok(p, m)
        rows.append(
            {
                "name": p["name"],
                "kind": "preset",
                "description": p.get("description", ""),
                "license": p.get("license"),
                "aliases": list(p.get("aliases") or []),
                "source": _describe_source(p["source"]),
                "cached": ok,
                "path": str(final) if ok else None,
                "size_bytes": dir_size(final) if ok else None,
                "revision": m.get("revision") if ok and m else None,
            }
        )
    root = models_cache()
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if not d.is_dir() or d.name.startswith(".") or d.name in names:
                continue
            m = read_manifest(d)
            if m is None:
                continue
            src = (m.get("source") or {}).get("files") or [{}]
            rows.append(
                {
                    "name": d.name,
                    "kind": m.get("kind", "gguf"),
                    "description": f"converted from {Path(src[0].get('path', '?')).name}",
                    "license": None,
                    "aliases": [],
                    "source": f"file:{src[0].get('path', '?')}",
                    "cached": True,
                    "path": str(d),
                    "size_bytes": dir_size(d),
                    "revision": m.get("revision"),
                }
            )
    return rows

