"""The one interface every backend implements: requests in, a stream of finished samples out.

A request asks for some samples of one problem (doc). The harness derives every sample's seed from
(run seed, doc id, sample index), so a resumed run asks only for the missing indices and still gets
the same draws, and a backend that honours `seeds` is deterministic whatever its batching.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, Iterator, Protocol, Sequence

from pydantic import ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from harness.scoring.records import BackendInfo


# Upper bounds where a task spec is validated: an absurd value is a one-line error naming the key,
# never a run that hangs in loops sized by it. Generous: R1-style protocols use n=64, 32k tokens.
MAX_N = 1024
MAX_TOKENS = 1 << 17  # 131072
MAX_STOPS = 64


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Plain construction does not validate (a backend reports bad values itself); the annotations'
    constraints apply where pydantic validates it, as a task spec's `sampling:` (harness.tasks.spec)."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    n: Annotated[StrictInt, Field(ge=1, le=MAX_N)] = 1
    temperature: Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)] = 0.0  # 0 = greedy
    top_p: Annotated[StrictFloat, Field(gt=0, le=1, allow_inf_nan=False)] = 1.0
    top_k: Annotated[StrictInt, Field(ge=0)] = 0  # 0 = off
    min_p: Annotated[StrictFloat, Field(ge=0, le=1, allow_inf_nan=False)] = 0.0
    max_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS)] = 512  # a backend clips it to the model's window
    stop: Annotated[tuple[Annotated[StrictStr, Field(min_length=1, max_length=1000)], ...], Field(max_length=MAX_STOPS)] = ()
    seed: Annotated[StrictInt, Field(ge=0, lt=1 << 63)] = 0
    logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None  # None: none; 0: chosen token only; k: plus top-k alternatives
    ignore_eos: StrictBool = False

    def replace(self, **kw: Any) -> "SamplingParams":
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True, slots=True)
class ThinkingBudget:
    """Budget forcing (a task's thinking.budget): after `budget` output tokens without `close`,
    the backend inserts `forced_text` and the model answers. The engine backend supports it."""

    budget: int
    close: str = "</think>"
    forced_text: str = "\n</think>\n\n"


@dataclass(slots=True)
class GenerationRequest:
    request_id: str
    doc_id: str
    prompt: str  # fully rendered text (chat template already applied when the task asks for it)
    params: SamplingParams
    sample_indices: list[int]  # which of the doc's samples to produce (all of range(n) on a fresh run)
    seeds: list[int]  # one per entry of sample_indices
    messages: list[dict[str, str]] | None = None  # the chat form, for chat-API backends
    chat_template_kwargs: dict[str, Any] | None = None  # for chat-API backends (local ones rendered the prompt)
    thinking: ThinkingBudget | None = None

    def __post_init__(self) -> None:
        assert len(self.sample_indices) == len(self.seeds), "one seed per requested sample"


@dataclass(slots=True)
class Completion:
    request_id: str
    doc_id: str
    sample_idx: int
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "stop"  # stop | length | error | abort
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    logprobs: list[float] | None = None
    ttft: float | None = None  # seconds from submission to first token
    latency: float | None = None  # seconds from submission to finish
    error: str | None = None
    num_generated_tokens: int | None = None  # a remote backend's count (usage) when it returns no token ids
    forced_at: int | None = None  # budget forcing: the output token index where the close-think was inserted

    @property
    def generated_tokens(self) -> int:
        return len(self.token_ids) if self.token_ids or self.num_generated_tokens is None else self.num_generated_tokens


class Backend(Protocol):
    """A backend is built from the model *string* the user gave (`get_backend(name, model)`): a
    local backend resolves it (harness.models), a remote one asks its server. It then says what it
    runs through `info()`."""

    name: str

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[Completion]:
        """Yield one Completion per requested sample as soon as it finishes, in any order.
        A request that fails yields error completions for its samples; it never stops the stream."""
        ...

    def info(self) -> BackendInfo:
        """What results.json records: the model's id and revision, dtype, chat-template hash, config."""
        ...

    @property
    def tokenizer(self) -> Any:
        """A transformers tokenizer (chat template, token counts), or None for remote backends."""
        ...

    def close(self) -> None: ...
