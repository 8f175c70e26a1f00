"""Typed records: a finished sample (one line of samples.jsonl), a backend's identity (BackendInfo)
and a run's results (RunResults, results.json). Built with keywords, so a misspelt field is an
error where it is written; sample lines are checked against SampleRecord where they are read.

The samples file is append-only JSONL: each line is on disk (fsync) before the next starts, and a
torn last line (a process killed mid-write) is ignored by readers and cut by the next writer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from harness import HarnessError
from harness.files import json_default

SAMPLES_FILE = "samples.jsonl"


@dataclass(slots=True)
class SampleRecord:
    """One finished sample: its generation, its grading per filter, its timing."""

    doc_id: str
    sample_idx: int
    seed: int
    prompt_hash: str
    target: str  # the gold answer
    text: str
    finish_reason: str  # stop | length | error | abort
    stop_reason: str | int | None = None
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    ttft: float | None = None
    latency: float | None = None
    error: str | None = None  # generation failed (no text)
    grader_error: str | None = None  # grading failed or timed out: the answers are missing (invalid)
    answers: dict[str, str | None] = field(default_factory=dict)  # filter -> extracted answer
    keys: dict[str, str | None] = field(default_factory=dict)  # filter -> vote key (None = invalid)
    scores: dict[str, float] = field(default_factory=dict)  # filter -> 1.0 correct / 0.0
    # thinking models (harness.grading.grader): answered | no_answer_in_budget; None = no think block
    outcome: str | None = None
    thought_tokens: int | None = None  # output tokens up to and including the close tag
    answer_tokens: int | None = None  # output tokens after it
    forced_at: int | None = None  # budget forcing: the output index where the close-think was inserted

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, row: dict[str, Any], where: str = "sample") -> "SampleRecord":
        """A record from a samples.jsonl line; fields added after the line was written take their
        defaults, an unknown or missing required field is a HarnessError naming `where`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(row) - names)
        if unknown:
            raise HarnessError(f"{where}: unknown field {unknown[0]!r} in a sample line")
        try:
            return cls(**row)
        except TypeError as e:
            raise HarnessError(f"{where}: not a sample line ({e})") from None


SAMPLE_FIELDS = tuple(f.name for f in dataclasses.fields(SampleRecord))


@dataclass(slots=True)
class BackendInfo:
    """What a backend says about itself for results.json: the weights it ran and how."""

    backend: str  # engine | hf | openai ...
    model: str  # the model's id (preset name, directory name, served model name)
    model_path: str | None = None
    model_source: str | None = None  # preset | dir | gguf | hub | remote
    revision: str | None = None  # content hash of the weights, hub commit, or what the server reports
    dtype: str | None = None
    device: str | None = None
    max_model_len: int | None = None
    chat_template_hash: str | None = None  # sha256 of the tokenizer's chat template
    eos_token_ids: list[int] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # backend-specific (engine config, batch size, ...)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "details"}
        # the keys results.json had before BackendInfo existed, kept for readers of old runs
        out["chat_template_sha256"] = self.chat_template_hash
        return {**out, **self.details}


@dataclass(slots=True)
class RunResults:
    """results.json: metrics (`metrics[filter][metric]`, with `_stderr` and `_ci`) and provenance."""

    task: str
    description: str
    spec_hash: str
    n_problems: int
    n_samples: int
    ks: list[int]
    primary_filter: str | None
    metrics: dict[str, dict[str, Any]]
    errors: int  # samples whose generation failed
    grader_errors: int  # samples whose grading failed (scored invalid)
    model: dict[str, Any]  # id, path, source, revision
    backend: dict[str, Any]  # {"name": ..., **BackendInfo.to_dict()}
    chat_template_hash: str | None
    data: dict[str, Any]  # per split: source and sha256 of what was read
    sampling: dict[str, Any]
    seed: int
    limit: int | None
    version: str
    run: dict[str, Any]  # wall time, generated tokens, tokens/s, finished_at
    by_length: list[dict[str, Any]] = field(default_factory=list)  # the primary filter's accuracy by chain length
    protocol: str | None = None  # a published protocol preset (`--protocol r1`), None for the task's own

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# ---------------------------------------------------------------------------------------------- the file


def read_samples(path: Path) -> list[dict]:
    """Every complete line of a samples file, as a dict with every SampleRecord field. A torn last line (the process died mid-write) is
    ignored here and cut off by SampleWriter before it appends."""
    rows: list[dict] = []
    path = Path(path)
    if not path.exists():
        return rows
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    for lineno, raw in enumerate(lines[:-1], 1):  # the part after the last newline is incomplete
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            raise HarnessError(f"{path}:{lineno}: corrupt sample line ({e.msg}); delete the run directory or rerun with --fresh")
        if not isinstance(row, dict):
            raise HarnessError(f"{path}:{lineno}: corrupt sample line (not a JSON object)")
        rows.append(SampleRecord.from_dict(row, f"{path}:{lineno}").to_dict())
    return rows


class JsonlWriter:
    """Appends one JSON object per line; each line is on disk (fsync) before the next starts.

    A line is one os.write of its bytes. When the disk is full (or a file-size limit is hit) the
    file is cut back to the last complete line and HarnessError says how many lines are safe, so
    the file stays resumable. A torn last line (a process killed mid-write) is cut off on open."""

    what = "line"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.written = 0
        self._truncate_torn_tail()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _truncate_torn_tail(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1  # 0 when there is no complete line
            if end != len(data):
                f.truncate(end)

    def write_obj(self, obj: dict, label: str = "") -> None:
        line = (json.dumps(obj, ensure_ascii=False, default=json_default) + "\n").encode("utf-8")
        end = os.fstat(self._fd).st_size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, end)
            raise HarnessError(
                f"{self.path}: cannot write {self.what} {label}: {e.strerror or e}; the {self.written} {self.what}s "
                "written before it in this run are intact; make room and rerun the same command to resume") from None
        self.written += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SampleWriter(JsonlWriter):
    """samples.jsonl: one SampleRecord per line (JsonlWriter's guarantees)."""

    what = "sample"

    def write(self, record: SampleRecord) -> None:
        self.write_obj(record.to_dict(), f"{record.doc_id}/{record.sample_idx}")


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
