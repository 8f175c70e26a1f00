"""`harness eval` end to end in a subprocess, with a tiny random model: the run directory, the CLI's
last line, and resume after SIGKILL giving the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny import GSM8K_DIR, ROOT


def _env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HARNESS_DATA_DIR=str(GSM8K_DIR), PYTHONPATH=str(ROOT))
    return env


def _cmd(model: Path, out: Path, backend: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness", "eval", "--task", "gsm8k-cot-sc", "--model", str(model),
            "--backend", backend, "--limit", "8", "-n", "4", "--max-tokens", "24", "--no-progress",
            "--output-dir", str(out), *extra]


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("backend", ["hf", "engine"])
def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, tiny_model_dir, backend):
    if backend == "engine":
        pytest.importorskip("harness.backends.engine")
    extra = ["--batch-size", "2"] if backend == "hf" else ["--engine-arg", "max_num_seqs=2"]
    full = tmp_path / "full"
    r = subprocess.run(_cmd(tiny_model_dir, full, backend, *extra), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == f"Run directory: {full}"
    for name in ("samples.jsonl", "results.json", "report.md", "spec.yaml", "docs.jsonl", "run.json"):
        assert (full / name).exists(), name
    assert _lines(full / "samples.jsonl") == 32

    # Kill a second run midway: after some samples are on disk, before all are.
    part = tmp_path / "part"
    proc = subprocess.Popen(_cmd(tiny_model_dir, part, backend, *extra), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _lines(part / "samples.jsonl") < 6 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = _lines(part / "samples.jsonl")
    assert 0 < done_at_kill < 32, f"the kill should land midway (had {done_at_kill} samples)"
    assert not (part / "results.json").exists()
    kept = (part / "samples.jsonl").read_text().splitlines()[:done_at_kill]

    r = subprocess.run(_cmd(tiny_model_dir, part, backend, *extra), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = (part / "samples.jsonl").read_text().splitlines()
    assert lines[:done_at_kill] == kept, "finished samples are never rewritten"
    assert len(lines) == 32
    keys = {(json.loads(l)["doc_id"], json.loads(l)["sample_idx"]) for l in lines}
    assert len(keys) == 32, "no sample generated twice"

    a = json.loads((full / "results.json").read_text())
    b = json.loads((part / "results.json").read_text())
    assert a["metrics"] == b["metrics"]
    texts = lambda d: sorted((json.loads(l)["doc_id"], json.loads(l)["sample_idx"], json.loads(l)["text"])
                             for l in (d / "samples.jsonl").read_text().splitlines())
    assert texts(full) == texts(part)


def test_rerun_of_a_finished_run_generates_nothing(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "harness", "eval", "--task", "gsm8k-cot", "--model", str(tiny_model_dir),
           "--backend", "hf", "--limit", "2", "--max-tokens", "8", "--no-progress", "--output-dir", str(out)]
    assert subprocess.run(cmd, env=_env(), capture_output=True, timeout=300).returncode == 0
    before = (out / "samples.jsonl").read_bytes()
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0
    assert "0 to generate" in r.stderr
    assert (out / "samples.jsonl").read_bytes() == before


def test_rerun_with_a_different_task_into_the_same_dir_refuses(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    base = [sys.executable, "-m", "harness", "eval", "--model", str(tiny_model_dir), "--backend", "hf",
            "--limit", "1", "--max-tokens", "4", "--no-progress", "--output-dir", str(out)]
    assert subprocess.run(base + ["--task", "gsm8k-cot"], env=_env(), capture_output=True, timeout=300).returncode == 0
    r = subprocess.run(base + ["--task", "gsm8k"], env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--fresh" in err[0]
