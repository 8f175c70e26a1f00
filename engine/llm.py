"""Offline batch API: LLM(model, **config).generate(prompts, params)."""

from __future__ import annotations

from os import PathLike
from typing import Sequence

from engine.config import EngineConfig
from engine.llm_engine import EngineStats, LLMEngine
from engine.sampling_params import SamplingParams
from engine.sequence import RequestOutput


class LLM:
    def __init__(self, model: str | PathLike, **config):
        self.engine = LLMEngine(EngineConfig(model=str(model), **config))

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def config(self) -> EngineConfig:
        return self.engine.config

    @property
    def stats(self) -> EngineStats:
        return self.engine.stats

    def generate(
        self,
        prompts: str | list[int] | Sequence[str] | Sequence[list[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs in prompt order, each with n completions.
        A prompt that cannot run comes back with `error` set; the others complete."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} SamplingParams")
        ids = [self.engine.add_request(p, sp) for p, sp in zip(prompts, params)]
        done: dict[str, RequestOutput] = {}
        while len(done) < len(ids):
            for out in self.engine.step():
                if out.finished:
                    done[out.request_id] = out
            if not self.engine.has_unfinished_requests() and len(done) < len(ids):
                raise RuntimeError("engine went idle with unfinished requests")
        return [done[i] for i in ids]

    # step-level API (requests may join between steps)
    def add_request(self, prompt, params: SamplingParams | None = None, request_id: str | None = None) -> str:
        return self.engine.add_request(prompt, params, request_id)

    def step(self) -> list[RequestOutput]:
        return self.engine.step()

    def abort(self, request_id: str) -> None:
        self.engine.abort_request(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.engine.has_unfinished_requests()

    # RL: weight updates and memory between rollout phases (see LLMEngine)
    def load_weights(self, weights) -> int:
        return self.engine.load_weights(weights)

    def reset_prefix_cache(self) -> bool:
        return self.engine.reset_prefix_cache()

    def sleep(self, level: int = 1) -> None:
        self.engine.sleep(level)

    def wake_up(self) -> None:
        self.engine.wake_up()

