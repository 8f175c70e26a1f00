"""The `openai` backend: evaluate through any OpenAI-compatible server (`harness serve`, vLLM,
SGLang, a hosted API) - how evaluation scales past one machine.

    harness eval --backend openai --base-url http://host:8000/v1 --model NAME [--api-key-env VAR]

A request whose prompt has chat messages (the task uses a chat template) goes to
/v1/chat/completions and the server applies its own template; any other to /v1/completions.

sample_mode (`--engine-arg sample_mode=...`):
  per_sample  one HTTP request per sample with n=1 and that sample's derived seed (the default):
              a sample's draw depends on its seed only, so resume and any batching give the same
              samples on servers that honour `seed`; the server's prefix cache shares the prompt.
  n           one request per problem with n = the samples still missing, seeded by the first of
              them: one prefill on the server, but a resumed problem draws differently.

Requests run on an asyncio loop in a background thread with at most `concurrency` in flight
(default 64); finished samples are yielded as they arrive. 429, 5xx, timeouts and refused
connections are retried with exponential backoff (honouring Retry-After) up to `max_retries`
times; a sample that still fails becomes an error completion, which a rerun retries.

There is no read timeout by default (`timeout=None`; `--engine-arg timeout=SECONDS` sets one): a
non-streamed request sends nothing until its sample finishes, and a loaded server can take longer
than any fixed bound. With a bound, every request past it would be cancelled and started again from
scratch, so a server slower than the bound never finishes the run (seen with 600 s: 50 GSM8K
problems on a 2-core CPU). A server that dies closes its connections, which is retried.
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import threading
import time
from typing import Any, Iterator, Sequence
from urllib.parse import urlparse

from harness import HarnessError
from harness.backends.base import Completion, GenerationRequest
from harness.scoring.records import BackendInfo

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
SAMPLE_MODES = ("per_sample", "n")


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 64,
        sample_mode: str = "per_sample",
        timeout: float | None = None,  # read timeout in seconds; None: wait as long as the server works
        max_retries: int = 10,
        return_token_ids: bool = False,  # ask for `token_ids` (harness serve and vLLM answer it)
        batch_size: int | None = None,  # the CLI's --batch-size: concurrency
        **_: Any,
    ):
        import httpx

        self.model = str(model)
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "").rstrip("/")
        if not self.base_url:
            raise HarnessError("backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1) or $OPENAI_BASE_URL")
        if sample_mode not in SAMPLE_MODES:
            raise HarnessError(f"sample_mode must be one of {', '.join(SAMPLE_MODES)}, got {sample_mode!r}")
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.concurrency = max(1, int(batch_size or concurrency))
        self.sample_mode, self.max_retries = sample_mode, int(max_retries)
        self.timeout = None if timeout in (None, "none", "None") else float(timeout)
        self.return_token_ids = bool(return_token_ids)
        self._headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._served: dict[str, Any] | None = None
        try:  # fail fast on a wrong URL or model; a server that is down is retried at generation
            r = httpx.get(f"{self.base_url}/models", headers=self._headers, timeout=10.0)
            if r.status_code == 200:
                listed = [m for m in (r.json().get("data") or []) if isinstance(m, dict)]
                self._served = next((m for m in listed if m.get("id") == self.model), None)
                if listed and self._served is None:
                    raise HarnessError(f"{self.base_url} does not serve model {self.model!r}; it serves: "
                                       f"{', '.join(str(m.get('id')) for m in listed)}")
        except httpx.HTTPError:
            pass

    @property
    def tokenizer(self) -> None:
        return None  # the server tokenises (and applies its chat template)

    def info(self) -> BackendInfo:
        served = self._served or {}
        return BackendInfo(
            backend=self.name, model=self.model, model_path=served.get("root"), model_source="remote",
            revision=served.get("revision"), max_model_len=served.get("max_model_len"),
            details={"base_url_host": urlparse(self.base_url).netloc, "served_model": served or None,
                     "sample_mode": self.sample_mode, "concurrency": self.concurrency},
        )

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------------------------ generate
    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[Completion]:
        jobs = []
        for req in requests:
            pairs = list(zip(req.sample_indices, req.seeds))
            if self.sample_mode == "per_sample" or len(pairs) == 1:
                jobs += [(req, [i], s) for i, s in pairs]
            elif pairs:
                jobs.append((req, [i for i, _ in pairs], pairs[0][1]))
        out: queue.Queue = queue.Queue()
        stop = threading.Event()
        submitted = time.perf_counter()
        thread = threading.Thread(target=lambda: asyncio.run(self._run_all(jobs, out, stop, submitted)), daemon=True)
        thread.start()
        try:
            for _ in range(sum(len(idx) for _, idx, _ in jobs)):
                item = out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()

    async def _run_all(self, jobs: list, out: queue.Queue, stop: threading.Event, submitted: float) -> None:
        import httpx

        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        timeout = httpx.Timeout(connect=10.0, read=self.timeout, write=60.0, pool=None)
        sem = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(headers=self._headers, limits=limits, timeout=timeout) as client:

            async def one(job) -> None:
                req, indices, seed = job
                async with sem:
                    if stop.is_set():
                        return
                    try:
                        for c in await self._request(client, req, indices, seed, submitted, stop):
                            out.put(c)
                    except Exception as e:  # noqa: BLE001 - one sample's failure never stops the stream
                        msg = f"{type(e).__name__}: {e}"[:500]
                        for i in indices:
                            out.put(Completion(req.request_id, req.doc_id, i, "", finish_reason="error", error=msg))

            tasks = [asyncio.ensure_future(one(job)) for job in jobs]
            while tasks:
                done, pending = await asyncio.wait(tasks, timeout=0.2)
                tasks = list(pending)
                if stop.is_set():  # the consumer stopped early: drop what is still in flight
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    return

    def _body(self, req: GenerationRequest, n: int, seed: int) -> tuple[str, dict]:
        p = req.params
        body: dict[str, Any] = {"model": self.model, "n": n, "max_tokens": p.max_tokens, "temperature": p.temperature,
                                "top_p": p.top_p, "seed": seed}
        if p.top_k:
            body["top_k"] = p.top_k
        if p.min_p:
            body["min_p"] = p.min_p
        if p.stop:
            body["stop"] = list(p.stop)
        if p.ignore_eos:
            body["ignore_eos"] = True
        if self.return_token_ids:
            body["return_token_ids"] = True
        if req.thinking is not None:
            raise HarnessError("thinking.budget (budget forcing) needs the engine backend; "
                               "an OpenAI-compatible server has no such request field")
        if req.messages is not None:
            body["messages"] = req.messages
            if req.chat_template_kwargs:
                body["chat_template_kwargs"] = dict(req.chat_template_kwargs)  # vLLM/SGLang read it
            if p.logprobs is not None:
                body["logprobs"], body["top_logprobs"] = True, p.logprobs
            return "/chat/completions", body
        body["prompt"] = req.prompt
        if p.logprobs is not None:
            body["logprobs"] = p.logprobs
        return "/completions", body

    async def _request(self, client, req: GenerationRequest, indices: list[int], seed: int, submitted: float,
                       stop: threading.Event) -> list[Completion]:
        import httpx

        path, body = self._body(req, len(indices), seed)
        delay = 0.5
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                r = await client.post(self.base_url + path, json=body)
                if r.status_code == 200:
                    return self._parse(req, indices, r.json(), submitted)
                if r.status_code not in RETRY_STATUS:
                    raise HarnessError(f"HTTP {r.status_code}: {_error_message(r)}")
                retry_after = _retry_after(r)
                last = f"HTTP {r.status_code}: {_error_message(r)}"
            except (httpx.TransportError, httpx.TimeoutException) as e:
                last = f"{type(e).__name__}: {e}"
            if attempt == self.max_retries or stop.is_set():
                break
            await asyncio.sleep(retry_after if retry_after is not None else delay * (0.5 + random.random()))
            delay = min(delay * 2, 30.0)
        raise HarnessError(f"gave up after {self.max_retries} retries: {last}")

    def _parse(self, req: GenerationRequest, indices: list[int], data: dict, submitted: float) -> list[Completion]:
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != len(indices):
            raise HarnessError(f"the server returned {len(choices)} choices for n={len(indices)}")
        usage = data.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        latency = time.perf_counter() - submitted
        out = []
        for i, c in zip(indices, choices):
            if "message" in c:
                text = (c.get("message") or {}).get("content") or ""
                lp = ((c.get("logprobs") or {}).get("content") or None)
                logprobs = [t["logprob"] for t in lp] if lp else None
            else:
                text = c.get("text") or ""
                lp = (c.get("logprobs") or {}).get("token_logprobs")
                logprobs = list(lp) if lp else None
            ids = [int(t) for t in (c.get("token_ids") or [])]
            gen = len(ids) if ids else usage.get("completion_tokens", 0) // max(1, len(indices))
            out.append(Completion(
                request_id=req.request_id, doc_id=req.doc_id, sample_idx=i, text=text, token_ids=ids,
                finish_reason=c.get("finish_reason") or "stop", stop_reason=c.get("stop_reason"),
                prompt_tokens=int(usage.get("prompt_tokens") or 0), cached_prompt_tokens=int(details.get("cached_tokens") or 0),
                logprobs=logprobs, ttft=None, latency=latency, num_generated_tokens=gen,
            ))
        return out


def _retry_after(r) -> float | None:
    value = r.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _error_message(r) -> str:
    try:
        err = r.json().get("error")
        return str(err.get("message") if isinstance(err, dict) else err)[:300]
    except Exception:  # noqa: BLE001 - not JSON: the text
        return r.text[:300]
