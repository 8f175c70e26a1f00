"""The run directory: what a run leaves on disk, and how a rerun picks up where it stopped.

    <run dir>/
      run.json        the run's identity (task spec hash, model, backend, sampling, seed, limit);
                      a rerun into the same directory must match it, or it refuses
      spec.yaml       the resolved task spec
      samples.jsonl   one JSON line per finished sample, appended, flushed and fsynced
      results.json    metrics and provenance, rewritten at the end of every run
      report.md       the results as Markdown

samples.jsonl is the source of truth: results are computed from it, never from memory, so a run
killed at any point and rerun ends with exactly the metrics of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from harness import HarnessError

SAMPLES = "samples.jsonl"
RESULTS = "results.json"
RUN_INFO = "run.json"
SPEC = "spec.yaml"
REPORT_MD = "report.md"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_samples(path: Path) -> list[dict]:
    """Every complete line of a samples file. A torn last line (the process died mid-write) is
    ignored here and cut off by SampleWriter before it appends."""
    rows: list[dict] = []
    if not path.exists():
        return rows
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    for lineno, raw in enumerate(lines[:-1], 1):  # the part after the last newline is incomplete
        if not raw.strip():
            continue
        try:
            rows.append(json.loads(raw))
        except json.JSONDecodeError as e:
            raise HarnessError(f"{path}:{lineno}: corrupt sample line ({e.msg}); delete the run directory or rerun with --fresh")
    return rows


class SampleWriter:
    """Appends one line per finished sample; each line is on disk (fsync) before the next starts."""

    def __init__(self, path: Path):
        self.path = path
        self._truncate_torn_tail()
        self._f = open(path, "a", encoding="utf-8")

    def _truncate_torn_tail(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1  # 0 when there is no complete line
            if end != len(data):
                f.truncate(end)

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "SampleWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(slots=True)
class RunDir:
    path: Path

    @property
    def samples_path(self) -> Path:
        return self.path / SAMPLES

    def prepare(self, identity: dict, fresh: bool = False) -> None:
        """Create the directory, or check that an existing one belongs to the same run."""
        self.path.mkdir(parents=True, exist_ok=True)
        info_path = self.path / RUN_INFO
        if fresh:
            for name in (SAMPLES, RESULTS, RUN_INFO, REPORT_MD, "report.html"):
                (self.path / name).unlink(missing_ok=True)
        if info_path.exists():
            old = json.loads(info_path.read_text())
            if old != json.loads(json.dumps(identity, default=_json_default)):
                diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
                raise HarnessError(
                    f"{self.path} holds a different run (differs in: {', '.join(diff)}); "
                    "choose another --output-dir or pass --fresh to start over"
                )
        else:
            write_json_atomic(info_path, identity)

    def finished(self) -> dict[tuple[str, int], dict]:
        return {(str(r["doc_id"]), int(r["sample_idx"])): r for r in read_samples(self.samples_path)}


def load_results(path: str | Path) -> tuple[Path, dict]:
    """(run directory, results) of a finished run, given its folder or its results.json."""
    p = Path(path)
    if p.is_file() and p.name == RESULTS:
        p = p.parent
    if not p.exists():
        raise HarnessError(f"{p}: no such run directory")
    if not p.is_dir():
        raise HarnessError(f"{p}: not a run directory (expected a folder with {RESULTS} and {SAMPLES})")
    rp = p / RESULTS
    if not rp.exists():
        raise HarnessError(f"{p}: no {RESULTS} (not a finished run directory? run `harness eval` first)")
    try:
        results = json.loads(rp.read_text())
    except json.JSONDecodeError as e:
        raise HarnessError(f"{rp}: not valid JSON ({e.msg} at line {e.lineno})")
    if not isinstance(results, dict) or not isinstance(results.get("metrics"), dict):
        raise HarnessError(f"{rp}: not a results file (no 'metrics' table)")
    return p, results


def iter_jsonl(path: Path) -> Iterator[dict]:
    yield from read_samples(path)


def doc_sort_key(doc_id: object) -> tuple:
    """Numeric ids in numeric order, then other ids alphabetically."""
    s = str(doc_id)
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def group_by_doc(rows: Iterable[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(str(r["doc_id"]), []).append(r)
    for v in out.values():
        v.sort(key=lambda r: r["sample_idx"])
    return out
