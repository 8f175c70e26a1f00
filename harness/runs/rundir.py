"""The run directory: what a run leaves on disk, and how a rerun picks up where it stopped.

    <run dir>/
      run.json        the run's identity (task spec hash, model and revision, backend, seed, n,
                      limit, sha256 of the data read); a rerun into the same directory must match
                      it, or it refuses (a changed data file says so)
      spec.yaml       the resolved task spec
      samples.jsonl   one JSON line per finished sample, appended, flushed and fsynced
      results.json    metrics and provenance, rewritten at the end of every run
      report.md       the results as Markdown
      .lock           held while a `harness eval` writes here: a second one is refused (flock, so
                      a killed run leaves no stale lock)

samples.jsonl is the source of truth: results are computed from it, never from memory, so a run
killed at any point and rerun ends with exactly the metrics of an uninterrupted run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import HarnessError
from harness.files import json_default, write_json_atomic
from harness.scoring.records import SAMPLES_FILE, read_samples

SAMPLES = SAMPLES_FILE
RESULTS = "results.json"
RUN_INFO = "run.json"
SPEC = "spec.yaml"
REPORT_MD = "report.md"
LOCK = ".lock"


@dataclass(slots=True)
class RunDir:
    path: Path
    _lock: Any = field(default=None, repr=False)

    @property
    def samples_path(self) -> Path:
        return self.path / SAMPLES

    def prepare(self, identity: dict, fresh: bool = False) -> None:
        """Create the directory and hold its lock (until `release`), or refuse: when another run
        writes there, or when an existing directory belongs to a different run."""
        import filelock

        self.path.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.path / LOCK))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            raise HarnessError(f"{self.path}: another `harness eval` is writing this run directory; wait for it "
                               "to finish (then rerun to resume) or choose another --output-dir") from None
        self._lock = lock
        try:
            self._check_identity(identity, fresh)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _check_identity(self, identity: dict, fresh: bool) -> None:
        info_path = self.path / RUN_INFO
        if fresh:
            for name in (SAMPLES, RESULTS, RUN_INFO, REPORT_MD, "report.html"):
                (self.path / name).unlink(missing_ok=True)
        if info_path.exists():
            old = json.loads(info_path.read_text())
            new = json.loads(json.dumps(identity, default=json_default))
            if old != new:
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                was, now = old.get("data_sha256") or {}, new.get("data_sha256") or {}
                changed = [s for s in now if s in was and was[s] != now[s]]
                if changed:
                    s = changed[0]
                    raise HarnessError(
                        f"{self.path}: the data changed since this run started (split {s!r}: sha256 {was[s][:12]}… "
                        f"then, {now[s][:12]}… now); resuming would mix problems: pass --fresh or another --output-dir"
                    )
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
