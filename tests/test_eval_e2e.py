"""`harness eval` end to end through the CLI's entry point (in this process: the interpreter's start-up
is not what is tested), with a tiny random model: a finished run is not redone, and a different task
is refused in one line. SIGKILL and resume: tests/test_streaming.py (in a subprocess)."""

from __future__ import annotations

import pytest

from harness.cli import main
from tests.tiny import GSM8K_DIR


@pytest.fixture(autouse=True)
def _data_dir(monkeypatch):
    monkeypatch.setenv("HARNESS_DATA_DIR", str(GSM8K_DIR))


def test_rerun_of_a_finished_run_generates_nothing(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "run"
    argv = ["eval", "--task", "gsm8k-cot", "--model", str(tiny_model_dir), "--backend", "hf", "--limit", "2",
            "--max-tokens", "8", "--no-progress", "--output-dir", str(out)]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"Run directory: {out}"
    for name in ("samples.jsonl", "results.json", "report.md", "spec.yaml", "docs.jsonl", "run.json"):
        assert (out / name).exists(), name
    before = (out / "samples.jsonl").read_bytes()
    assert main(argv) == 0
    assert "0 to generate" in capsys.readouterr().err
    assert (out / "samples.jsonl").read_bytes() == before


def test_rerun_with_a_different_task_into_the_same_dir_refuses(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "run"
    base = ["eval", "--model", str(tiny_model_dir), "--backend", "hf", "--limit", "1", "--max-tokens", "4",
            "--no-progress", "--output-dir", str(out)]
    assert main(base + ["--task", "gsm8k-cot"]) == 0
    capsys.readouterr()
    assert main(base + ["--task", "gsm8k"]) == 2
    err = [x for x in capsys.readouterr().err.strip().splitlines() if not x.startswith("data ")]  # the data lines come first
    assert len(err) == 1 and err[0].startswith("error: ") and "--fresh" in err[0]


def test_a_second_eval_on_a_run_directory_in_use_is_refused(tmp_path, tiny_model_dir, capsys):
    """Two `harness eval`s on one run directory would interleave samples.jsonl: the second is
    refused in one line while the first holds the directory's lock, and runs once it is free."""
    import filelock

    out = tmp_path / "run"
    out.mkdir()
    argv = ["eval", "--task", "gsm8k-cot", "--model", str(tiny_model_dir), "--backend", "hf", "--limit", "1",
            "--max-tokens", "4", "--no-progress", "--output-dir", str(out)]
    held = filelock.FileLock(str(out / ".lock"))  # as a running eval holds it (flock: another open file)
    held.acquire()
    try:
        assert main(argv) == 2
        err = [x for x in capsys.readouterr().err.strip().splitlines() if not x.startswith("data ")]
        assert len(err) == 1 and "another `harness eval` is writing this run directory" in err[0], err
        assert not (out / "samples.jsonl").exists() and not (out / "run.json").exists()
    finally:
        held.release()
    assert main(argv) == 0
    assert (out / "samples.jsonl").read_text().count("\n") == 1
