"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

Every JSON and text file the harness rewrites in place - results.json, run.json, reports, model
manifests, the hash memo - goes through these two functions."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def json_default(o: Any) -> Any:
    """JSON for the few non-JSON types results carry: sets/tuples, paths, numpy/torch scalars."""
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _tmp_name(path: Path) -> Path:
    # unique per process and call: two processes writing one file never share a temp file
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(3).hex()}.tmp")


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj: Any, *, sort_keys: bool = False) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=json_default) + "\n")


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (best effort: not every file system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
