"""Completions and chat completions over one AsyncLLM: request → engine SamplingParams → one engine
request per prompt (its n choices fork from one prefill) → OpenAI response bodies or SSE chunks.

The chat template is the tokenizer's own (the engine imports nothing from the harness). Streamed
text holds back the last characters that could still turn into a stop string, so a client never
receives text that the finished choice does not contain.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from engine.async_llm import AsyncLLM
from engine.entrypoints.openai.metrics import ServerMetrics
from engine.entrypoints.openai.protocol import APIError, ChatCompletionRequest, CompletionRequest
from engine.sampling_params import SamplingParams
from engine.sequence import RequestOutput
from engine.tokenizer import encode_prompt

Disconnected = Callable[[], Any]  # an awaitable factory: True once the client has gone


@dataclass
class ServingConfig:
    served_model_name: str
    max_waiting: int = 1024  # requests waiting for the scheduler before new ones get 429
    reasoning_parser: str | None = None  # "think": split <think>…</think> into reasoning_content
    retry_after_s: int = 1


@dataclass
class _Choice:
    """What has been streamed of one choice."""

    sent_text: int = 0
    sent_tokens: int = 0
    finished: bool = False
    in_reasoning: bool | None = None  # think parser state: None until decided


@dataclass
class _Prompt:
    ids: list[int]
    text: str | None  # None when the prompt came as token ids
    request_ids: list[str] = field(default_factory=list)


class OpenAIServing:
    def __init__(self, engine: AsyncLLM, config: ServingConfig, metrics: ServerMetrics):
        self.engine, self.config, self.metrics = engine, config, metrics
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.engine.config.max_model_len
        self._ids = itertools.count()

    # ------------------------------------------------------------------------------ checks
    def check_model(self, model: str) -> None:
        if model != self.config.served_model_name:
            raise APIError(404, f"The model `{model}` does not exist; this server serves `{self.config.served_model_name}`",
                           param="model", code="model_not_found")

    def check_capacity(self) -> None:
        waiting = self.engine.num_waiting
        if waiting >= self.config.max_waiting:
            raise APIError(429, f"server busy: {waiting} requests are waiting (the bound is {self.config.max_waiting}); retry later",
                           type="rate_limit_error", code="queue_full", headers={"Retry-After": str(self.config.retry_after_s)})

    def _fit(self, ids: list[int], max_tokens: int | None, param: str) -> int:
        if not ids:
            raise APIError(400, "the prompt is empty (0 tokens)", param=param)
        room = self.max_model_len - len(ids)
        if room < 1:
            raise APIError(400, f"the prompt has {len(ids)} tokens, but this model's maximum context length is "
                                f"{self.max_model_len} tokens", param=param, code="context_length_exceeded")
        if max_tokens is None:
            return room
        if max_tokens > room:
            raise APIError(400, f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds this model's maximum "
                                f"context length of {self.max_model_len} tokens", param="max_tokens",
                           code="context_length_exceeded")
        return max_tokens

    def _params(self, req: Any, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None = None,
                prompt_len: int = 0) -> SamplingParams:
        try:
            params = SamplingParams(
                n=req.n, temperature=req.temperature, top_p=req.top_p, top_k=max(req.top_k, 0), min_p=req.min_p,
                max_tokens=max_tokens, seed=req.seed, stop=req.stops, stop_token_ids=list(req.stop_token_ids or []),
                ignore_eos=req.ignore_eos, include_stop_str_in_output=req.include_stop_str_in_output,
                logprobs=logprobs, prompt_logprobs=prompt_logprobs, skip_special_tokens=req.skip_special_tokens,
            )
        except ValueError as e:
            raise APIError(400, str(e)) from None
        why = self.engine.check_fits(prompt_len, params)
        if why:  # e.g. n samples x max_tokens need more KV blocks than the cache has
            raise APIError(400, why, param="max_tokens", code="context_length_exceeded")
        return params

    # ------------------------------------------------------------------------------ completions
    async def completions(self, req: CompletionRequest, disconnected: Disconnected):
        self.check_model(req.model)
        self.check_capacity()
        prompts = []
        for p in req.prompts():
            ids = encode_prompt(self.tokenizer, p) if isinstance(p, str) else list(p)
            if not isinstance(p, str) and any(not 0 <= t < len(self.tokenizer) for t in ids):
                raise APIError(400, "prompt token ids must be in the tokenizer's vocabulary", param="prompt")
            prompts.append(_Prompt(ids, p if isinstance(p, str) else None))
        # echo with max_tokens 0 (lm-eval's loglikelihood): generate one token and drop it
        gen_tokens = req.max_tokens if req.max_tokens != 0 else 1
        fitted = [self._fit(p.ids, gen_tokens, "prompt") for p in prompts]
        prompt_lp = req.logprobs if (req.echo and req.logprobs is not None) else None
        params = [self._params(req, m, req.logprobs, prompt_lp, len(p.ids)) for m, p in zip(fitted, prompts)]
        rid = f"cmpl-{uuid.uuid4().hex}"
        streams = [self._generate(p, sp, f"{rid}-{i}", req.stream) for i, (p, sp) in enumerate(zip(prompts, params))]
        if req.stream:
            return self._stream_completions(req, rid, prompts, streams)
        finals = await self._collect(streams, disconnected)
        return self._completion_body(req, rid, prompts, finals)

    def _completion_body(self, req: CompletionRequest, rid: str, prompts: list[_Prompt], finals: list[RequestOutput]) -> dict:
        choices = []
        for i, (p, out) in enumerate(zip(prompts, finals)):
            prompt_text = p.text if p.text is not None else self.tokenizer.decode(p.ids)
            for c in out.outputs:
                drop = req.max_tokens == 0
                text = c.text if not drop else ""
                logprobs = None
                if req.logprobs is not None:
                    ids = [] if drop else c.token_ids
                    lps = [] if drop else (c.logprobs or [])
                    tops = [] if drop else (c.top_logprobs or [None] * len(ids))
                    if req.echo:
                        ids = p.ids + ids
                        lps = list(out.prompt_logprobs or [None] * len(p.ids)) + lps
                        tops = list(out.prompt_top_logprobs or [None] * len(p.ids)) + list(tops)
                    logprobs = self._completion_logprobs(ids, lps, tops, req.logprobs)
                choice = {"index": i * req.n + c.index, "text": (prompt_text if req.echo else "") + text,
                          "logprobs": logprobs, "finish_reason": "length" if drop else c.finish_reason,
                          "stop_reason": c.stop_reason}
                if req.return_token_ids:
                    choice.update(token_ids=[] if drop else list(c.token_ids), prompt_token_ids=list(p.ids))
                choices.append(choice)
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": self.config.served_model_name,
                "choices": choices, "usage": self._usage(prompts, finals, drop_output=req.max_tokens == 0)}

    def _completion_logprobs(self, ids: list[int], lps: list, tops: list, k: int, offset: int = 0) -> dict:
        tokens = [self.tokenizer.decode([t]) for t in ids]
        offsets, pos = [], offset
        for t in tokens:
            offsets.append(pos)
            pos += len(t)
        top = None
        if k:
            top = [None if d is None else self._top_by_text(d, k) for d in tops]
        return {"tokens": tokens, "token_logprobs": list(lps), "top_logprobs": top, "text_offset": offsets}

    def _top_by_text(self, d: dict[int, float], k: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for tid, lp in sorted(d.items(), key=lambda kv: -kv[1])[:k]:
            s = self.tokenizer.decode([tid])
            out[s] = max(out.get(s, float("-inf")), lp)
        return out

    async def _stream_completions(self, req, rid, prompts, streams) -> AsyncIterator[str]:
        created = int(time.time())
        state = [[_Choice() for _ in range(req.n)] for _ in prompts]
        holdback = max((len(s) for s in req.stops), default=1) - 1
        finals: list[RequestOutput | None] = [None] * len(prompts)
        if req.echo:
            for i, p in enumerate(prompts):
                text = p.text if p.text is not None else self.tokenizer.decode(p.ids)
                for j in range(req.n):
                    yield _sse({"id": rid, "object": "text_completion", "created": created, "model": self.config.served_model_name,
                                "choices": [{"index": i * req.n + j, "text": text, "logprobs": None, "finish_reason": None}]})
        async for i, out in _merge(streams):
            finals[i] = out
            for c in out.outputs:
                st = state[i][c.index]
                if st.finished:
                    continue
                done = c.finish_reason is not None
                end = len(c.text) if done else max(st.sent_text, len(c.text) - holdback)
                delta, st.sent_text = c.text[st.sent_text:end], end
                new_ids = c.token_ids[st.sent_tokens:]
                logprobs = None
                if req.logprobs is not None and new_ids:
                    logprobs = self._completion_logprobs(new_ids, (c.logprobs or [])[st.sent_tokens:],
                                                         (c.top_logprobs or [None] * len(c.token_ids))[st.sent_tokens:], req.logprobs)
                st.sent_tokens = len(c.token_ids)
                if not delta and not done and logprobs is None:
                    continue
                st.finished = done
                yield _sse({"id": rid, "object": "text_completion", "created": created, "model": self.config.served_model_name,
                            "choices": [{"index": i * req.n + c.index, "text": delta if req.max_tokens != 0 else "",
                                         "logprobs": logprobs, "finish_reason": c.finish_reason if done else None,
                                         "stop_reason": c.stop_reason if done else None}]})
        if req.stream_options and req.stream_options.include_usage:
            yield _sse({"id": rid, "object": "text_completion", "created": created, "model": self.config.served_model_name,
                        "choices": [], "usage": self._usage(prompts, [f for f in finals if f is not None])})
        yield "data: [DONE]\n\n"

    # ------------------------------------------------------------------------------ chat
    async def chat(self, req: ChatCompletionRequest, disconnected: Disconnected):
        self.check_model(req.model)
        self.check_capacity()
        try:
            num_logprobs = req.num_logprobs
        except ValueError as e:
            raise APIError(400, str(e), param="top_logprobs") from None
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=req.add_generation_prompt,
                                                      **(req.chat_template_kwargs or {}))
        except Exception as e:  # noqa: BLE001 - the model's template rejected the conversation
            raise APIError(400, f"the chat template failed: {type(e).__name__}: {e}", param="messages") from None
        prompt = _Prompt(encode_prompt(self.tokenizer, text), text)
        params = self._params(req, self._fit(prompt.ids, req.max_new_tokens, "messages"), num_logprobs, prompt_len=len(prompt.ids))
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        stream = self._generate(prompt, params, rid, req.stream)
        if req.stream:
            return self._stream_chat(req, rid, prompt, stream, num_logprobs)
        (final,) = await self._collect([stream], disconnected)
        choices = []
        for c in final.outputs:
            message: dict[str, Any] = {"role": "assistant", "content": c.text}
            if self.config.reasoning_parser == "think":
                message["reasoning_content"], message["content"] = split_think(c.text)
            logprobs = None
            if num_logprobs is not None:
                logprobs = {"content": self._chat_logprobs(c.token_ids, c.logprobs or [], c.top_logprobs, num_logprobs)}
            choice = {"index": c.index, "message": message, "logprobs": logprobs, "finish_reason": c.finish_reason,
                      "stop_reason": c.stop_reason}
            if req.return_token_ids:
                choice.update(token_ids=list(c.token_ids), prompt_token_ids=list(prompt.ids))
            choices.append(choice)
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": self.config.served_model_name,
                "choices": choices, "usage": self._usage([prompt], [final])}

    def _chat_logprobs(self, ids: list[int], lps: list[float], tops: list | None, k: int) -> list[dict]:
        out = []
        for i, (tid, lp) in enumerate(zip(ids, lps)):
            s = self.tokenizer.decode([tid])
            entry = {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8")), "top_logprobs": []}
            if k and tops is not None and i < len(tops):
                for alt, alt_lp in sorted(tops[i].items(), key=lambda kv: -kv[1])[:k]:
                    a = self.tokenizer.decode([alt])
                    entry["top_logprobs"].append({"token": a, "logprob": alt_lp, "bytes": list(a.encode("utf-8"))})
            out.append(entry)
        return out

    async def _stream_chat(self, req, rid, prompt, stream, num_logprobs) -> AsyncIterator[str]:
        created, model = int(time.time()), self.config.served_model_name
        state = [_Choice() for _ in range(req.n)]
        holdback = max((len(s) for s in req.stops), default=1) - 1
        final = None
        for j in range(req.n):
            yield _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [{"index": j, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                     "finish_reason": None}]})
        async for _, out in _merge([stream]):
            final = out
            for c in out.outputs:
                st = state[c.index]
                if st.finished:
                    continue
                done = c.finish_reason is not None
                end = len(c.text) if done else max(st.sent_text, len(c.text) - holdback)
                text, st.sent_text = c.text[st.sent_text:end], end
                logprobs = None
                if num_logprobs is not None and len(c.token_ids) > st.sent_tokens:
                    logprobs = {"content": self._chat_logprobs(c.token_ids[st.sent_tokens:], (c.logprobs or [])[st.sent_tokens:],
                                                               (c.top_logprobs or [])[st.sent_tokens:] or None, num_logprobs)}
                st.sent_tokens = len(c.token_ids)
                if not text and not done and logprobs is None:
                    continue
                st.finished = done
                delta = self._think_delta(st, text) if self.config.reasoning_parser == "think" else {"content": text}
                yield _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                            "choices": [{"index": c.index, "delta": delta, "logprobs": logprobs,
                                         "finish_reason": c.finish_reason if done else None,
                                         "stop_reason": c.stop_reason if done else None}]})
        if req.stream_options and req.stream_options.include_usage and final is not None:
            yield _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
                        "usage": self._usage([prompt], [final])})
        yield "data: [DONE]\n\n"

    @staticmethod
    def _think_delta(st: _Choice, text: str) -> dict[str, str]:
        """Streamed reasoning: text up to </think> is reasoning_content, after it content. Whether
        the choice reasons at all is decided by its first characters (<think>)."""
        if st.in_reasoning is None:
            st.in_reasoning = text.lstrip().startswith("<think>") or not text.strip()
            text = text.replace("<think>", "", 1) if st.in_reasoning else text
        if not st.in_reasoning:
            return {"content": text}
        if "</think>" in text:
            before, after = text.split("</think>", 1)
            st.in_reasoning = False
            return {"reasoning_content": before, "content": after.lstrip("\n")}
        return {"reasoning_content": text}

    # ------------------------------------------------------------------------------ engine
    def _generate(self, prompt: _Prompt, params: SamplingParams, request_id: str, stream: bool) -> AsyncIterator[RequestOutput]:
        """Submit one prompt to the engine now (right after `check_capacity`, with no await
        between, so a burst cannot pass the queue bound together) and return its outputs (every
        step when streaming, else as samples finish: no per-step copies for a response sent whole)."""
        prompt.request_ids.append(request_id)
        return self._observed(self.engine.generate(prompt.ids, params, request_id=request_id, stream=stream))

    async def _observed(self, outputs: AsyncIterator[RequestOutput]) -> AsyncIterator[RequestOutput]:
        """The outputs passed through; the last one's error becomes a 400, else its metrics are recorded."""
        last = None
        async for out in outputs:
            last = out
            yield out
        if last is not None:
            if last.error:
                raise APIError(400, last.error, param="prompt")
            self.metrics.observe_request(last)

    async def _collect(self, streams: list[AsyncIterator[RequestOutput]], disconnected: Disconnected) -> list[RequestOutput]:
        """Run every prompt's request to the end; if the client goes away first, cancel them (the
        engine aborts them and frees their blocks)."""
        finals: list[RequestOutput | None] = [None] * len(streams)

        async def drain() -> None:
            async for i, out in _merge(streams):
                finals[i] = out

        task = asyncio.ensure_future(drain())
        while not task.done():
            await asyncio.wait({task}, timeout=1.0)
            if not task.done() and await disconnected():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                raise ClientGone()
        task.result()
        return finals  # type: ignore[return-value]

    def _usage(self, prompts: list[_Prompt], finals: list[RequestOutput], drop_output: bool = False) -> dict:
        prompt_tokens = sum(len(p.ids) for p in prompts)
        completion = 0 if drop_output else sum(len(c.token_ids) for f in finals for c in f.outputs)
        cached = sum(f.metrics.num_cached_prompt_tokens for f in finals)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion,
                "prompt_tokens_details": {"cached_tokens": cached}}


class ClientGone(Exception):
    """The client disconnected before its response was ready; nothing is sent."""


def split_think(text: str) -> tuple[str | None, str | None]:
    """(reasoning_content, content) of a completion that may think in <think>…</think>. A think
    block that never closed is all reasoning, with no content."""
    stripped = text.lstrip()
    if not stripped.startswith("<think>") and "</think>" not in text:
        return None, text
    body = stripped.removeprefix("<think>")
    if "</think>" not in body:
        return body, None
    reasoning, content = body.split("</think>", 1)
    return reasoning, content.lstrip("\n")


async def _merge(streams: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(stream index, output) from several async iterators as they produce; cancelling the merge
    closes every stream (each engine request is aborted)."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in stream:
                await queue.put((i, out, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            await queue.put((i, None, e))
            return
        await queue.put((i, None, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        open_streams = len(streams)
        while open_streams:
            i, out, err = await queue.get()
            if err is not None:
                raise err
            if out is None:
                open_streams -= 1
                continue
            yield i, out
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
