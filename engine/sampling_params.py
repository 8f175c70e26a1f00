"""Per-request sampling settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


LOGPROBS_MODES = ("raw", "processed")


@dataclass(slots=True)
class SamplingParams:
    n: int = 1  # samples per prompt; the prompt is prefilled once and the samples fork from it
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    max_tokens: int = 256
    seed: int | None = None  # request seed; sample i draws from derive_seed(seed, i)
    seeds: list[int] | None = None  # explicit per-sample seeds (the harness: resume, sample subsets)
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: int | None = None  # None: none; 0: chosen token only; k: plus the top-k alternatives
    # raw: log-softmax of the model's logits; processed: of the distribution actually sampled from
    # (temperature, top-k, top-p, min-p applied and renormalised; a greedy draw has logprob 0)
    logprobs_mode: str = "raw"
    prompt_logprobs: int | None = None  # the same for every prompt token after the first (no prefix-cache reuse)
    skip_special_tokens: bool = True
    # Budget forcing for thinking models: after `thinking_budget` output tokens without
    # `thinking_end` in the text, the next tokens are `thinking_forced_text`'s (fed as if sampled,
    # their logprobs the model's), and the model goes on to answer. The output is taken to start
    # inside the thoughts (a template that ends the prompt with <think>, or a model that opens it).
    thinking_budget: int | None = None
    thinking_end: str = "</think>"
    thinking_forced_text: str = "\n</think>\n\n"

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in self.stop if s]
        self.stop_token_ids = list(self.stop_token_ids)
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.seeds is not None:
            self.seeds = [int(s) for s in self.seeds]
            if len(self.seeds) != self.n:
                raise ValueError(f"seeds has {len(self.seeds)} entries but n={self.n}")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be None or >= 0, got {self.logprobs}")
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {', '.join(LOGPROBS_MODES)}, got {self.logprobs_mode!r}")
        if self.thinking_budget is not None and self.thinking_budget < 0:
            raise ValueError(f"thinking_budget must be None or >= 0, got {self.thinking_budget}")
        if self.thinking_budget is not None and self.thinking_end not in self.thinking_forced_text:
            raise ValueError(f"thinking_forced_text {self.thinking_forced_text!r} must contain thinking_end {self.thinking_end!r}")
        if self.prompt_logprobs is not None and self.prompt_logprobs < 0:
            raise ValueError(f"prompt_logprobs must be None or >= 0, got {self.prompt_logprobs}")

    def replace(self, **changes: Any) -> "SamplingParams":
        return dataclasses.replace(self, **changes)
