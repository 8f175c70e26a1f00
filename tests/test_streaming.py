"""Finished samples reach samples.jsonl (and the progress display) as they finish, not when the
whole run ends; a SIGKILL mid-run loses only samples that were still generating, and the rerun
completes the run with the uninterrupted run's samples and metrics.

Each test limits the backend's concurrency (engine: max_num_seqs=4; hf: batches of 4 rows) so
that the 32 samples of the run finish in waves spread over the whole generation.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.tiny import GSM8K_DIR, subprocess_env

BACKEND_ARGS = {"engine": ["--engine-arg", "max_num_seqs=4"], "hf": ["--batch-size", "4"]}
BACKEND_OPTS = {"engine": {"max_num_seqs": 4}, "hf": {"batch_size": 4}}
GENERATING = "generating"  # the runner's log line once the backend is loaded


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


class _Poller:
    """Records (time, line count) of a file every 2 ms, from a background thread."""

    def __init__(self, path: Path):
        self.path, self.seen = path, [(time.perf_counter(), 0)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            n = _lines(self.path)
            if n != self.seen[-1][1]:
                self.seen.append((time.perf_counter(), n))

    def first_time(self, at_least: int) -> float:
        return next(t for t, n in self.seen if n >= at_least)

    def __enter__(self) -> "_Poller":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("backend", ["engine", "hf"])
def test_samples_and_progress_arrive_during_generation(tmp_path, tiny_model_dir, backend, monkeypatch):
    from harness.runs.runner import EvalOptions, evaluate

    monkeypatch.setenv("HARNESS_DATA_DIR", str(GSM8K_DIR))
    out = tmp_path / "run"
    samples = out / "samples.jsonl"
    events: list[tuple[float, str, int]] = []  # (time, event, lines on disk when it was reported)

    def progress(event: str, **kw: object) -> None:
        events.append((time.perf_counter(), event, _lines(samples)))

    opts = EvalOptions(task="gsm8k-cot-sc", model=str(tiny_model_dir), backend=backend, limit=8, n=4,
                       max_tokens=48, output_dir=out, backend_options=dict(BACKEND_OPTS[backend]))
    with _Poller(samples) as poller:
        evaluate(opts, progress=progress, log=lambda s: None)
    assert _lines(samples) == 32

    t_start = next(t for t, e, _ in events if e == "start")
    advances = [(t, on_disk) for t, e, on_disk in events if e == "advance"]
    assert len(advances) == 32
    span = poller.first_time(32) - t_start  # until the last sample is on disk
    assert span > 0
    # (1) the first sample is on disk while most of the generation is still ahead
    assert poller.first_time(1) - t_start < 0.5 * span, poller.seen
    # (3) the progress display advances during generation, each time after the sample is on disk
    assert advances[0][0] - t_start < 0.5 * span, [t - t_start for t, _ in advances]
    assert all(on_disk >= i + 1 for i, (_, on_disk) in enumerate(advances))


def _cmd(model: Path, out: Path, backend: str) -> list[str]:
    return [sys.executable, "-m", "harness", "eval", "--task", "gsm8k-cot-sc", "--model", str(model),
            "--backend", backend, "--limit", "8", "-n", "4", "--max-tokens", "48", "--no-progress",
            "--output-dir", str(out), *BACKEND_ARGS[backend]]


def _start(cmd: list[str]) -> tuple[subprocess.Popen, threading.Event, list[float]]:
    """Start `harness eval`; the returned event is set (and the list holds the time) when the
    runner logs that generation begins."""
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    began, when = threading.Event(), []

    def watch() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if not began.is_set() and line.startswith(GENERATING):
                when.append(time.perf_counter())
                began.set()

    threading.Thread(target=watch, daemon=True).start()
    return proc, began, when


@pytest.mark.parametrize("backend", ["engine", "hf"])
def test_sigkill_mid_run_keeps_every_sample_that_had_finished(tmp_path, tiny_model_dir, backend):
    # An uninterrupted run gives each sample's finish time (its latency from submission: every
    # request is submitted when generation begins).
    full = tmp_path / "full"
    proc, began, _ = _start(_cmd(tiny_model_dir, full, backend))
    assert proc.wait(timeout=600) == 0
    assert began.is_set(), f"the runner never logged a line starting with {GENERATING!r}"
    rows = [json.loads(line) for line in (full / "samples.jsonl").read_text().splitlines()]
    finish = sorted(r["latency"] for r in rows)
    assert len(finish) == 32 and finish[0] < finish[-1]
    kill_after = finish[len(finish) // 2]  # about half of the samples have finished by then
    part = tmp_path / "part"
    for _attempt in range(3):  # a run much faster than the reference may end before the kill: kill earlier
        # run-to-run speed differs (another test may share the CPU): count only samples well before
        margin = max(0.5 * kill_after, 0.3)
        expected = sum(t <= kill_after - margin for t in finish)
        shutil.rmtree(part, ignore_errors=True)
        proc, began, when = _start(_cmd(tiny_model_dir, part, backend))
        try:
            assert began.wait(timeout=300), "generation never began"
            time.sleep(max(0.0, when[0] + kill_after - time.perf_counter()))
            ended_first = proc.poll() is not None
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        on_disk = _lines(part / "samples.jsonl")
        if not ended_first and on_disk < 32:
            break
        kill_after /= 2
    assert on_disk >= expected, (
        f"{on_disk} samples on disk after a SIGKILL at {kill_after:.2f} s into generation; "
        f"{expected} had finished {margin:.2f} s before that in the uninterrupted run")
    assert on_disk < 32, "the kill should land before the run ends"
    assert not (part / "results.json").exists()
    kept = (part / "samples.jsonl").read_text().splitlines()[:on_disk]

    r = subprocess.run(_cmd(tiny_model_dir, part, backend), env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{on_disk} already on disk" in r.stderr
    assert r.stdout.strip().splitlines()[-1] == f"Run directory: {part}"
    for name in ("samples.jsonl", "results.json", "report.md", "spec.yaml", "docs.jsonl", "run.json"):
        assert (part / name).exists(), name
    lines = (part / "samples.jsonl").read_text().splitlines()
    assert lines[:on_disk] == kept, "finished samples are never rewritten"
    assert len(lines) == 32 and len({(json.loads(x)["doc_id"], json.loads(x)["sample_idx"]) for x in lines}) == 32
    a = json.loads((full / "results.json").read_text())["metrics"]
    b = json.loads((part / "results.json").read_text())["metrics"]
    assert a == b
    texts = lambda d: sorted((json.loads(x)["doc_id"], json.loads(x)["sample_idx"], json.loads(x)["text"])
                             for x in (d / "samples.jsonl").read_text().splitlines())
    assert texts(full) == texts(part), "per-sample seeds: the resumed run draws what the uninterrupted one drew"
