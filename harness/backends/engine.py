"""The `engine` backend: the project's own paged-KV engine (engine.LLMEngine) behind the Backend
interface.

Each GenerationRequest becomes one engine request with n = len(sample_indices): the prompt is
prefilled once and the samples fork from it. Every sample draws from its own seed
(GenerationRequest.seeds), so results do not depend on batching, preemption or resume. Prompts are
tokenised with harness.models.encode_prompt, like every local backend. As in the hf backend,
max_tokens is clipped to what max_model_len leaves after the prompt; a prompt that does not fit at
all becomes error completions. Completions are yielded as soon as their sample finishes.
"""

from __future__ import annotations

import gc
import itertools
import re
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from harness import HarnessError
from harness.backends.base import Completion, GenerationRequest
from harness.models import (
    ResolvedModel,
    chat_template_hash,
    encode_prompt,
    eos_token_ids,
    load_errors,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    resolve_model,
)
from harness.scoring.records import BackendInfo

_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
          "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12}


def parse_bytes(value: Any) -> int | None:
    """2147483648, 2e9, "2e9", "2GiB", "512 MiB", "2G" -> bytes."""
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise HarnessError(f"kv_cache_memory={value!r}: expected bytes, e.g. 2e9, 2GiB or 512MiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


class EngineBackend:
    name = "engine"

    def __init__(
        self,
        model: ResolvedModel | str | Path,
        dtype: str = "auto",
        device: str = "auto",
        block_size: int = 16,
        max_model_len: int | None = None,
        kv_cache_memory: Any = None,
        num_kv_blocks: int | None = None,
        max_num_seqs: int | None = None,
        batch_size: int | None = None,  # the CLI's --batch-size: sequences per step
        max_num_batched_tokens: int | None = None,
        enable_prefix_caching: bool = True,
        gpu_memory_utilization: float = 0.9,
        seed: int = 0,
        asynchronous: bool = False,  # also an AsyncLLM over the engine (`harness serve`)
        logprobs_mode: str = "raw",  # of requested logprobs: raw model or processed (sampled) distribution
        **_: Any,
    ):
        from engine import AsyncLLM, EngineConfig, EngineConfigError, LLMEngine

        self.model = model if isinstance(model, ResolvedModel) else resolve_model(str(model))
        self.device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, self.device, self.model)
        limits = [int(x) for x in (self.model.max_model_len, max_model_len) if x]
        self._tok = load_tokenizer(self.model)
        try:
            self.config = EngineConfig(
                model=str(self.model.path),
                dtype=str(torch_dtype).removeprefix("torch."),
                device=self.device,
                max_model_len=min(limits) if limits else None,
                block_size=int(block_size),
                gpu_memory_utilization=float(gpu_memory_utilization),
                kv_cache_memory=parse_bytes(kv_cache_memory),
                num_kv_blocks=num_kv_blocks,
                max_num_seqs=int(max_num_seqs or batch_size or 256),
                max_num_batched_tokens=max_num_batched_tokens,
                enable_prefix_caching=bool(enable_prefix_caching),
                seed=int(seed),
            )
            with load_errors(self.model, "weights"):
                self.engine = LLMEngine(self.config, tokenizer=self._tok)
        except EngineConfigError as e:
            raise HarnessError(f"engine: {e}") from None
        self.engine.eos_token_ids.update(eos_token_ids([], self._tok, (self.model.preset or {}).get("eos_tokens") or ()))
        self.async_engine = AsyncLLM(engine=self.engine) if asynchronous else None
        self._ids = itertools.count()
        self.logprobs_mode = logprobs_mode
        self._eos_ids, self._num_blocks = set(self.engine.eos_token_ids), self.engine.block_manager.num_blocks

    @property
    def tokenizer(self) -> Any:
        return self._tok

    @property
    def max_model_len(self) -> int:
        return self.engine.config.max_model_len

    def info(self) -> BackendInfo:
        import torch
        import transformers

        m, cfg = self.model, self.config if self.engine is None else self.engine.config
        return BackendInfo(
            backend=self.name, model=m.id, model_path=str(m.path), model_source=m.source, revision=m.revision,
            dtype=cfg.dtype, device=cfg.device, max_model_len=cfg.max_model_len, chat_template_hash=chat_template_hash(self._tok),
            eos_token_ids=sorted(self._eos_ids),
            details={"engine_config": cfg.to_dict(), "num_kv_blocks": self._num_blocks,
                     "transformers_version": transformers.__version__, "torch_version": torch.__version__},
        )

    def stats(self) -> dict[str, Any]:
        return self.engine.stats.as_dict()

    def close(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is None:
            return
        self.engine = None
        del engine
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - best effort
            pass

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[Completion]:
        from engine import SamplingParams

        engine = self.engine
        assert engine is not None, "backend is closed"
        live: dict[str, tuple[GenerationRequest, int]] = {}
        for req in requests:
            if not req.sample_indices:
                continue
            p = req.params
            ids = encode_prompt(self._tok, req.prompt)
            # like the hf backend: generation stops at max_model_len (too long a prompt is an error)
            room = self.max_model_len - len(ids)
            try:
                params = SamplingParams(
                    n=len(req.sample_indices), temperature=p.temperature, top_p=p.top_p, top_k=p.top_k,
                    min_p=p.min_p, max_tokens=max(1, min(p.max_tokens, room)), seeds=list(req.seeds),
                    stop=list(p.stop), logprobs=p.logprobs, ignore_eos=p.ignore_eos, logprobs_mode=self.logprobs_mode,
                    **({} if req.thinking is None else dict(
                        thinking_budget=req.thinking.budget, thinking_end=req.thinking.close,
                        thinking_forced_text=req.thinking.forced_text)),
                )
            except ValueError as e:
                yield from self._errors(req, str(e), len(ids))
                continue
            engine_id = f"{req.request_id}#{next(self._ids)}"
            engine.add_request(ids, params, request_id=engine_id)
            live[engine_id] = (req, len(ids))
        unfinished = set(live)
        try:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.request_id not in live:
                        continue
                    req, prompt_tokens = live[out.request_id]
                    if out.finished:
                        unfinished.discard(out.request_id)
                    m = out.metrics
                    for i in out.newly_finished:
                        c = out.outputs[i]
                        yield Completion(
                            request_id=req.request_id, doc_id=req.doc_id, sample_idx=req.sample_indices[i],
                            text=c.text, token_ids=list(c.token_ids), finish_reason=c.finish_reason,
                            stop_reason=c.stop_reason, prompt_tokens=prompt_tokens,
                            cached_prompt_tokens=m.num_cached_prompt_tokens, logprobs=c.logprobs,
                            ttft=m.ttft, latency=time.monotonic() - m.arrival_time, error=out.error,
                            forced_at=c.forced_at,
                        )
        finally:  # the consumer stopped early (or an error): drop what is still running
            if unfinished:
                for request_id in unfinished:
                    engine.abort_request(request_id)
                while engine.has_unfinished_requests():
                    engine.step()

    def _errors(self, req: GenerationRequest, msg: str, prompt_tokens: int) -> Iterator[Completion]:
        for idx in req.sample_indices:
            yield Completion(req.request_id, req.doc_id, idx, "", finish_reason="error", prompt_tokens=prompt_tokens, error=msg)
