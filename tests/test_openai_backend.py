"""`harness eval --backend openai` against `harness serve` in a subprocess on 127.0.0.1 (the real
CLI on both sides; the client in this process): the same greedy samples and metrics as `--backend engine`, and a server killed
and restarted mid-run costs nothing."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.tiny import GSM8K_DIR, subprocess_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(model: Path, port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "harness", "serve", str(model), "--port", str(port), "--log-level", "warning",
                             "--engine-arg", "max_num_seqs=8"], env=subprocess_env(), stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("harness serve did not come up")


def _eval(model: str, out: Path, backend: str, task: str, *extra: str, limit: int = 4) -> int:
    """`harness eval` through the CLI's entry point, in this process (the server is the subprocess)."""
    from harness.cli import main

    return main(["eval", "--task", task, "--model", model, "--backend", backend, "--limit", str(limit),
                 "--max-tokens", "24", "--no-progress", "--output-dir", str(out), *extra])


def _samples(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    return {(r["doc_id"], r["sample_idx"]): r for r in rows}


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = _serve(tiny_model_dir, port, log)
    yield f"http://127.0.0.1:{port}/v1", tiny_model_dir.name
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


@pytest.mark.parametrize("task", ["gsm8k-cot", "gsm8k-cot-zeroshot"])  # completions API, chat API
def test_openai_backend_equals_engine_backend(served, tiny_model_dir, tmp_path, task, monkeypatch):
    monkeypatch.setenv("HARNESS_DATA_DIR", str(GSM8K_DIR))
    url, name = served
    assert _eval(str(tiny_model_dir), tmp_path / "engine", "engine", task) == 0
    assert _eval(name, tmp_path / "openai", "openai", task, "--base-url", url, "--engine-arg", "return_token_ids=true") == 0
    ea, eb = _samples(tmp_path / "engine"), _samples(tmp_path / "openai")
    assert set(ea) == set(eb) and len(ea) == 4
    for key in ea:
        assert (ea[key]["text"], ea[key]["generated_tokens"], ea[key]["finish_reason"]) == \
               (eb[key]["text"], eb[key]["generated_tokens"], eb[key]["finish_reason"]), key
        assert ea[key]["prompt_tokens"] == eb[key]["prompt_tokens"]
    ra = json.loads((tmp_path / "engine" / "results.json").read_text())
    rb = json.loads((tmp_path / "openai" / "results.json").read_text())
    assert ra["metrics"] == rb["metrics"] and ra["spec_hash"] == rb["spec_hash"]
    assert rb["backend"]["name"] == "openai" and rb["backend"]["base_url_host"] == url.split("//")[1].split("/")[0]
    assert rb["model"]["id"] == name and rb["backend"]["served_model"]["id"] == name


def test_server_killed_and_restarted_mid_run(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_DATA_DIR", str(GSM8K_DIR))
    port = _free_port()
    url, name, log = f"http://127.0.0.1:{port}/v1", tiny_model_dir.name, tmp_path / "serve.log"
    server = _serve(tiny_model_dir, port, log)
    try:
        args = ("--base-url", url, "-n", "4", "--engine-arg", "concurrency=2", "--engine-arg", "max_retries=12")
        assert _eval(name, tmp_path / "full", "openai", "gsm8k-cot-sc", *args, limit=4) == 0

        part = tmp_path / "part"
        cmd = [sys.executable, "-m", "harness", "eval", "--task", "gsm8k-cot-sc", "--model", name, "--backend", "openai",
               "--limit", "4", "--max-tokens", "24", "--no-progress", "--output-dir", str(part), *args]
        proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while not (part / "samples.jsonl").exists() or (part / "samples.jsonl").read_bytes().count(b"\n") < 4:
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
        server.kill()  # mid-run: requests in flight fail, new ones are refused
        server.wait()
        time.sleep(2)
        server = _serve(tiny_model_dir, port, log)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    a, b = _samples(tmp_path / "full"), _samples(part)
    assert len(b) == 16 and not any(r["error"] for r in b.values()), "nothing lost: every sample retried until it came"
    assert {k: r["text"] for k, r in a.items()} == {k: r["text"] for k, r in b.items()}, "per-sample seeds: the same draws"
    assert json.loads((part / "results.json").read_text())["metrics"] == json.loads((tmp_path / "full" / "results.json").read_text())["metrics"]


class _SlowServer:
    """A stdlib HTTP server on 127.0.0.1 that answers /v1/completions after `delay` seconds and
    counts the requests it receives (a server slower than a client's read timeout)."""

    def __init__(self, delay: float):
        import http.server
        import threading

        outer = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:  # the client gave up
                    pass

            def do_GET(self):
                self._send({"object": "list", "data": [{"id": "slow", "object": "model"}]})

            def do_POST(self):
                self.rfile.read(int(self.headers["content-length"]))
                outer.requests += 1
                time.sleep(delay)
                self._send({"choices": [{"index": 0, "text": " 42", "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 3, "completion_tokens": 2}})

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_no_read_timeout_by_default_so_a_slow_server_is_not_restarted():
    """A non-streamed request is silent until its sample finishes: with a read bound the client
    cancels and starts it over (each attempt from scratch: a livelock on a server slower than the
    bound); by default there is none, and the slow answer arrives on the first request."""
    from harness.backends.base import GenerationRequest, SamplingParams
    from harness.backends.openai import OpenAIBackend

    server = _SlowServer(delay=1.5)
    try:
        req = GenerationRequest("r0", "0", "Q: 6 * 7?", SamplingParams(max_tokens=8), [0], [1])
        backend = OpenAIBackend("slow", base_url=server.url)
        assert backend.timeout is None, "no read bound unless one is asked for"
        [ok] = list(backend.generate([req]))
        assert (ok.text, ok.error, server.requests) == (" 42", None, 1)
        server.requests = 0
        [timed_out] = list(OpenAIBackend("slow", base_url=server.url, timeout=0.5, max_retries=2).generate([req]))
        assert timed_out.finish_reason == "error" and "ReadTimeout" in timed_out.error
        assert server.requests == 3, "every attempt started the work again"
    finally:
        server.httpd.shutdown()
