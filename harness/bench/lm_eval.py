"""`harness bench lm-eval`: lm-evaluation-harness's own `local-completions` model against
`harness serve`, next to `harness eval --backend openai` on the same server and slice.

lm-eval is not a dependency: give the python of an environment that has it (`--lm-eval-python`,
e.g. a venv made with `pip install torch==2.13.0 lm-eval`). Its `gsm8k` task is run with the data
files of `--data-dir` (a task YAML that includes lm-eval's gsm8k and points it at local JSON, so
nothing is fetched from the hub) and the model's own tokenizer directory. Both sides send greedy
requests to the one server, so the numbers differ only where the prompts, stops or answer
extraction differ. Output: `<out>/lm-eval-serve-<model>.json`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def run_lm_eval_bench(lm_eval_python: str, model: str, limit: int, data_dir: Path, max_tokens: int = 256,
                      log=print) -> dict[str, Any]:
    import httpx

    from harness.models import resolve_model

    resolved = resolve_model(model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = Path(tempfile.mkdtemp(prefix="lm-eval-serve-"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    server = subprocess.Popen([sys.executable, "-m", "harness", "serve", model, "--port", str(port), "--log-level", "warning"],
                              env=env, stdout=open(work / "serve.log", "w"), stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:  # the server loads the model first
            if server.poll() is not None:
                raise RuntimeError(f"harness serve exited ({server.returncode}); see {work / 'serve.log'}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"harness serve did not come up in 300 s; see {work / 'serve.log'}")
            time.sleep(0.5)
        lm = _run_lm_eval(lm_eval_python, resolved, url, limit, data_dir, max_tokens, work, env, log)
        ours = _run_harness(resolved, url, limit, data_dir, max_tokens, work, env, log)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    return {"schema": "reasoning-harness/bench-lm-eval-serve/1",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": resolved.id, "limit": limit, "max_tokens": max_tokens, "lm_eval": lm, "harness": ours}


def _run_lm_eval(python: str, resolved, url: str, limit: int, data_dir: Path, max_tokens: int, work: Path, env, log) -> dict:
    tasks = work / "tasks"
    tasks.mkdir()
    lm_gsm8k = subprocess.run([python, "-c", "import lm_eval, os; print(os.path.dirname(lm_eval.__file__))"],
                              capture_output=True, text=True, check=True).stdout.strip() + "/tasks/gsm8k/gsm8k.yaml"
    (tasks / "gsm8k_local.yaml").write_text(
        f"include: {lm_gsm8k}\ntask: gsm8k_local\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    train: {data_dir}/train.jsonl\n    test: {data_dir}/test.jsonl\n")
    args = (f"model={resolved.id},base_url={url}/v1/completions,tokenizer={resolved.path},tokenizer_backend=huggingface,"
            f"num_concurrent=8,max_retries=3,tokenized_requests=False,max_gen_toks={max_tokens}")
    cmd = [python, "-m", "lm_eval", "--model", "local-completions", "--model_args", args, "--tasks", "gsm8k_local",
           "--include_path", str(tasks), "--limit", str(limit), "--output_path", str(work / "lm-eval-out"), "--log_samples"]
    log("lm-eval: " + " ".join(cmd))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (work / "lm-eval.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"lm-eval failed ({r.returncode}); see {work / 'lm-eval.log'}: {r.stderr[-500:]}")
    results_file = next((work / "lm-eval-out").rglob("results_*.json"))
    res = json.loads(results_file.read_text())["results"]["gsm8k_local"]
    return {"wall_s": wall, "command": cmd, "strict": res.get("exact_match,strict-match"),
            "flexible": res.get("exact_match,flexible-extract"), "stderr_strict": res.get("exact_match_stderr,strict-match"),
            "results_file": str(results_file)}


def _run_harness(resolved, url: str, limit: int, data_dir: Path, max_tokens: int, work: Path, env, log) -> dict:
    out = work / "harness-run"
    cmd = [sys.executable, "-m", "harness", "eval", "--task", "gsm8k", "--backend", "openai", "--base-url", url + "/v1",
           "--model", resolved.id, "--limit", str(limit), "--max-tokens", str(max_tokens), "--data-dir", str(data_dir),
           "--no-progress", "--output-dir", str(out)]
    log("harness: " + " ".join(cmd))
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    m = json.loads((out / "results.json").read_text())["metrics"]
    return {"wall_s": wall, "command": cmd, "strict": m["strict"]["acc"], "flexible": m["flexible"]["acc"],
            "stderr_strict": m["strict"]["acc_stderr"], "run_dir": str(out)}
