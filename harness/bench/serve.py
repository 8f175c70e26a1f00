"""`harness bench serve`: what HTTP costs. The same requests through the engine directly and through
`harness serve` (in process, on 127.0.0.1), one engine for both:

  direct-1   requests one at a time through the engine's step loop (LLMEngine)
  direct-C   all C requests submitted at once
  http-1     one client, requests one after another (streamed, so TTFT is the client's)
  http-C     C concurrent clients, one request each

Every request: a GSM8K test question in the model's chat template, `--max-tokens` new tokens
(EOS ignored, so every system generates the same), temperature 0.7, n=1. Reported per system:
wall time, generated tokens/s, TTFT p50/p95 (from submission to the first token; for HTTP, to the
first streamed chunk that carries text). Output: `<out>/serve-<model>.json` and `.md`.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = "reasoning-harness/bench-serve/1"


def run_serve_bench(model: str = "smollm2-135m-instruct", clients: int = 64, max_tokens: int = 64, single: int = 8,
                    data_dir: Path | None = None, log=print) -> dict[str, Any]:
    from engine import AsyncLLM, EngineConfig, LLMEngine
    from harness.bench.machine import machine_facts
    from harness.models import load_tokenizer, quiet_transformers, resolve_model
    from harness.tasks import data, load_task

    quiet_transformers()
    resolved = resolve_model(model)
    tok = load_tokenizer(resolved)
    spec = load_task("gsm8k-cot-zeroshot")
    docs = data.load_docs(spec.dataset, spec.dataset.split, data_dir)[:clients]
    prompts = [tok.apply_chat_template([{"role": "user", "content": d["question"]}], tokenize=False, add_generation_prompt=True)
               for d in docs]
    engine = LLMEngine(EngineConfig(model=str(resolved.path), max_num_seqs=max(clients, 1)), tokenizer=tok)
    log(f"bench serve: {resolved.id}, {clients} clients, {max_tokens} new tokens each")
    systems: dict[str, Any] = {}
    _direct(engine, prompts[:2], max_tokens)  # warm-up
    systems["direct-1"] = _direct_sequential(engine, prompts[:single], max_tokens)
    systems[f"direct-{clients}"] = _direct(engine, prompts, max_tokens)
    async_engine = AsyncLLM(engine=engine)
    with _Server(async_engine, resolved.id) as url:
        asyncio.run(_http(url, resolved.id, prompts[:2], max_tokens, concurrent=True))  # warm-up
        systems["http-1"] = asyncio.run(_http(url, resolved.id, prompts[:single], max_tokens, concurrent=False))
        systems[f"http-{clients}"] = asyncio.run(_http(url, resolved.id, prompts, max_tokens, concurrent=True))
    for name, s in systems.items():
        log(f"  {name:>10}: {s['tokens_per_s']:.1f} tok/s, TTFT p50 {s['ttft_p50_s']:.3f} s, p95 {s['ttft_p95_s']:.3f} s")
    return {"schema": SCHEMA, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_facts(engine.config.device),
            "workload": {"model": resolved.id, "clients": clients, "single_requests": single, "max_tokens": max_tokens,
                         "temperature": 0.7, "ignore_eos": True, "prompt_tokens": [len(tok(p).input_ids) for p in prompts]},
            "systems": systems,
            "overhead": {"single": 1 - systems["http-1"]["tokens_per_s"] / systems["direct-1"]["tokens_per_s"],
                         "concurrent": 1 - systems[f"http-{clients}"]["tokens_per_s"] / systems[f"direct-{clients}"]["tokens_per_s"]}}


def _params(max_tokens: int):
    from engine import SamplingParams

    return SamplingParams(temperature=0.7, max_tokens=max_tokens, ignore_eos=True, seed=0)


def _summary(wall: float, tokens: int, ttfts: list[float]) -> dict[str, Any]:
    q = np.quantile(ttfts, [0.5, 0.95]) if ttfts else [None, None]
    return {"wall_s": wall, "generated_tokens": tokens, "tokens_per_s": tokens / wall, "requests": len(ttfts),
            "ttft_p50_s": float(q[0]), "ttft_p95_s": float(q[1])}


def _direct(engine, prompts: list[str], max_tokens: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    ids = [engine.add_request(p, _params(max_tokens)) for p in prompts]
    done: dict[str, Any] = {}
    while len(done) < len(ids):
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    wall = time.perf_counter() - t0
    return _summary(wall, sum(len(o.outputs[0].token_ids) for o in done.values()), [o.metrics.ttft for o in done.values()])


def _direct_sequential(engine, prompts: list[str], max_tokens: int) -> dict[str, Any]:
    runs = [_direct(engine, [p], max_tokens) for p in prompts]
    wall = sum(r["wall_s"] for r in runs)
    return _summary(wall, sum(r["generated_tokens"] for r in runs), [r["ttft_p50_s"] for r in runs])


async def _http(url: str, model: str, prompts: list[str], max_tokens: int, concurrent: bool) -> dict[str, Any]:
    import httpx

    async def one(client, prompt: str) -> tuple[int, float]:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.7, "seed": 0,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        t0, ttft, tokens = time.perf_counter(), None, 0
        async with client.stream("POST", "/v1/completions", json=body) as r:
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if ttft is None and any(c.get("text") for c in chunk["choices"]):
                    ttft = time.perf_counter() - t0
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        return tokens, ttft if ttft is not None else float("nan")

    limits = httpx.Limits(max_connections=len(prompts) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        if concurrent:
            results = await asyncio.gather(*[one(client, p) for p in prompts])
        else:
            results = [await one(client, p) for p in prompts]
        wall = time.perf_counter() - t0
    return _summary(wall, sum(t for t, _ in results), [f for _, f in results])


class _Server:
    """`harness serve`'s app for one engine, on a free port, in a background thread."""

    def __init__(self, async_engine, name: str):
        import uvicorn

        from engine.entrypoints.openai.api_server import KEEP_ALIVE_S, build_app
        from engine.entrypoints.openai.serving import ServingConfig

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        app = build_app(async_engine, ServingConfig(served_model_name=name))
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_keep_alive=KEEP_ALIVE_S))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def markdown(result: dict[str, Any]) -> str:
    w, m = result["workload"], result["machine"]
    lines = [f"# Serve benchmark — {w['model']}", "",
             f"{w['clients']} GSM8K questions (chat template), {w['max_tokens']} new tokens each (EOS ignored), T=0.7; "
             f"single: {w['single_requests']} requests one after another. {m['cpu']}, torch threads {m['torch_threads']}.", "",
             "| system | tok/s | wall s | TTFT p50 s | TTFT p95 s |", "|---|---:|---:|---:|---:|"]
    for name, s in result["systems"].items():
        lines.append(f"| {name} | {s['tokens_per_s']:.1f} | {s['wall_s']:.1f} | {s['ttft_p50_s']:.3f} | {s['ttft_p95_s']:.3f} |")
    o = result["overhead"]
    lines += ["", f"HTTP overhead (1 − http/direct tokens/s): single {100 * o['single']:.1f}%, "
                  f"concurrent {100 * o['concurrent']:.1f}%.", ""]
    return "\n".join(lines)
