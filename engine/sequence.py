"""Requests, their sample sequences, and what the engine hands back.

A request (SequenceGroup) owns n Sequences, one per sample. All n start as the prompt; only the
first unfinished one (the "carrier") computes the prompt, and the others fork from it once it has
(sharing its blocks). The same happens again after a preemption, so a group's prompt KV is never
held n times.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from engine.sampling_params import SamplingParams


class Sequence:
    """One sample: token ids (prompt + output), KV progress, block table, decoding state."""

    __slots__ = (
        "seq_id", "group", "index", "seed", "token_ids", "num_prompt_tokens", "num_computed_tokens",
        "block_table", "block_cache_ids", "finish_reason", "stop_reason", "logprobs", "top_logprobs",
        "text", "prefix_offset", "read_offset", "thinking", "forced", "forced_at",
    )

    def __init__(self, seq_id: int, group: "SequenceGroup", index: int, seed: int, prompt: list[int]):
        self.seq_id = seq_id
        self.group = group
        self.index = index  # sample index within the request
        self.seed = seed
        self.token_ids = prompt  # the group's prompt list, shared until the first append copies it
        self.num_prompt_tokens = len(prompt)
        self.num_computed_tokens = 0  # tokens whose K/V are in the cache
        self.block_table: list[int] = []
        self.block_cache_ids: list[int] = []  # prefix-cache entry ids of this sequence's full blocks
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.logprobs: list[float] | None = [] if group.params.logprobs is not None else None
        self.top_logprobs: list[dict[int, float]] | None = [] if group.params.logprobs else None
        self.text = ""
        # budget forcing (SamplingParams.thinking_budget): True until thinking_end is in the text;
        # `forced` holds the close-think tokens still to feed, `forced_at` the output index where they began
        self.thinking = group.params.thinking_budget is not None
        self.forced: list[int] = []
        self.forced_at: int | None = None
        # incremental detokenisation window: text of token_ids[prefix_offset:read_offset] is
        # already emitted; decoding from prefix_offset keeps the context a tokenizer needs
        self.read_offset = len(prompt)
        self.prefix_offset = max(len(prompt) - 6, 0)

    def append(self, token: int) -> None:
        if self.token_ids is self.group.prompt_token_ids:
            self.token_ids = list(self.token_ids)
        self.token_ids.append(token)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def __repr__(self) -> str:
        return (
            f"Sequence({self.group.request_id}#{self.index}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, blocks={self.block_table})"
        )


@dataclass(slots=True)
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    num_prompt_tokens: int = 0
    num_cached_prompt_tokens: int = 0  # prompt tokens served by the prefix cache at first admission
    num_generated_tokens: int = 0
    num_preemptions: int = 0

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def latency(self) -> float | None:
        return None if self.finish_time is None else self.finish_time - self.arrival_time

    @property
    def decode_tokens_per_s(self) -> float | None:
        if self.finish_time is None or self.first_token_time is None or self.finish_time <= self.first_token_time:
            return None
        return self.num_generated_tokens / (self.finish_time - self.first_token_time)


class SequenceGroup:
    """One request: a prompt, its sampling params, and its n sample sequences."""

    __slots__ = ("request_id", "prompt", "prompt_token_ids", "params", "seqs", "forked", "metrics", "error", "stream",
                 "prompt_logprobs", "prompt_top_logprobs", "forced_ids")

    def __init__(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        seeds: list[int],
        first_seq_id: int,
        arrival_time: float | None = None,
        stream: bool = False,
    ):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = list(prompt_token_ids)
        self.params = params
        self.seqs = [Sequence(first_seq_id + i, self, i, seeds[i], self.prompt_token_ids) for i in range(params.n)]
        # True while the unfinished samples hold their own (or shared) block tables; False before
        # the first fork and after a preemption, when only the carrier may compute.
        self.forked = params.n == 1
        self.metrics = RequestMetrics(arrival_time or time.monotonic(), num_prompt_tokens=len(prompt_token_ids))
        self.error: str | None = None
        self.stream = stream
        self.forced_ids: list[int] = []  # thinking_forced_text's tokens (set by the engine)
        # per prompt position (position 0 has none): filled as the prompt's chunks are computed
        want = params.prompt_logprobs
        self.prompt_logprobs: list[float | None] | None = None if want is None else [None] * len(prompt_token_ids)
        self.prompt_top_logprobs: list[dict[int, float] | None] | None = (
            [None] * len(prompt_token_ids) if want else None)

    @property
    def fork_len(self) -> int:
        """Tokens the samples have in common (the prompt); the carrier computes them, once."""
        return len(self.prompt_token_ids)

    def unfinished(self) -> list[Sequence]:
        return [s for s in self.seqs if s.finish_reason is None]

    @property
    def needs_fork(self) -> bool:
        return not self.forked and sum(s.finish_reason is None for s in self.seqs) > 1

    def carrier(self) -> Sequence:
        return next(s for s in self.seqs if s.finish_reason is None)

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.seqs)

    @property
    def wants_prompt_logits(self) -> bool:
        return self.prompt_logprobs is not None

    def __repr__(self) -> str:
        return f"SequenceGroup({self.request_id}, n={len(self.seqs)}, forked={self.forked})"


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # stop | length | abort | error; None while running
    stop_reason: int | str | None = None  # the stop string or token id that ended it
    logprobs: list[float] | None = None  # chosen-token logprob per output token
    top_logprobs: list[dict[int, float]] | None = None
    forced_at: int | None = None  # budget forcing: the output index where the close-think tokens were inserted

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    error: str | None = None
    newly_finished: list[int] = field(default_factory=list)  # sample indices that finished this step
    prompt_logprobs: list[float | None] | None = None  # per prompt token (None for the first)
    prompt_top_logprobs: list[dict[int, float] | None] | None = None

    @staticmethod
    def from_group(group: SequenceGroup, newly_finished: list[int] = ()) -> "RequestOutput":
        outs = [
            CompletionOutput(
                s.index, s.text, s.output_token_ids, s.finish_reason, s.stop_reason,
                None if s.logprobs is None else list(s.logprobs),
                None if s.top_logprobs is None else list(s.top_logprobs), s.forced_at,
            )
            for s in group.seqs
        ]
        return RequestOutput(
            group.request_id, group.prompt, group.prompt_token_ids, outs, group.finished, group.metrics,
            group.error, list(newly_finished),
            None if group.prompt_logprobs is None else list(group.prompt_logprobs),
            None if group.prompt_top_logprobs is None else list(group.prompt_top_logprobs),
        )
