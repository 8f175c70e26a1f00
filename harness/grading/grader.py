"""The grader: a task's filters + its comparator, run on one completion."""

from __future__ import annotations

from dataclasses import dataclass

from harness import HarnessError
from harness.grading.comparators import Comparator, make_comparator
from harness.grading.filters import GradingTimeout, build_filters, strip_think

# A sample's thinking outcome (SampleRecord.outcome): None when no think block is involved.
ANSWERED = "answered"  # the think block closed; the answer is read from the text after it
NO_ANSWER_IN_BUDGET = "no_answer_in_budget"  # the chain never closed its think block (unclosed: truncated)


@dataclass(frozen=True, slots=True)
class GradeResult:
    answer: str | None  # what the filter extracted; None = nothing extracted
    key: str | None  # the vote key; None = invalid (nothing extracted, or not a valid value)
    correct: bool
    error: str | None = None  # extraction failed (e.g. a regex timed out): invalid, and recorded

    @property
    def invalid(self) -> bool:
        return self.key is None


class Grader:
    """Runs every filter on a completion and scores each extraction against the gold answer.

    With `strip_think` (the task's thinking.strip, default true) the filters see only the text
    after the think block. A completion whose think block never closes — opened by the model, or by
    the prompt (`opened`: the chat template ended the prompt with the open tag, so the completion
    starts inside the thoughts) — has no answer: every filter is invalid, never an answer pulled
    from the thoughts, and its outcome is no_answer_in_budget (`unclosed: truncated`) or None
    (`unclosed: invalid`: an ordinary invalid sample)."""

    def __init__(self, filters_spec: list[dict], comparator: str | Comparator, *, strip_think: bool = True,
                 open_tag: str = "<think>", close_tag: str = "</think>", unclosed: str = "truncated") -> None:
        self.filters = build_filters(filters_spec)
        self.comparator = make_comparator(comparator) if isinstance(comparator, str) else comparator
        self.strip_think = strip_think
        self.open_tag, self.close_tag, self.unclosed = open_tag, close_tag, unclosed

    @classmethod
    def for_spec(cls, spec) -> "Grader":
        t = spec.thinking
        return cls(spec.filters, spec.comparator, strip_think=t.strip, open_tag=t.open, close_tag=t.close,
                   unclosed=t.unclosed)

    @property
    def filter_names(self) -> list[str]:
        return list(self.filters)

    def gold_key(self, gold: str) -> str:
        """The gold answer's key; HarnessError when the comparator cannot read it (a task-data bug
        that would otherwise score every sample of that problem wrong). For loaders to check up front."""
        key = self.comparator.key(gold)
        if key is None:
            reason = self.comparator.invalid_reason(gold)
            raise HarnessError(f"gold answer {gold[:80]!r} is not a valid {self.comparator.name} answer"
                               + (f": {reason}" if reason else ""))
        return key

    def prompt_opens_thinking(self, prompt: str) -> bool:
        """Whether the prompt leaves a think block open (R1-style templates end with the open tag)."""
        return prompt.rfind(self.open_tag) > prompt.rfind(self.close_tag)

    def visible(self, text: str, opened: bool = False) -> str | None:
        """The text the filters read: after the think block when stripping; None if it never closed."""
        if not self.strip_think:
            return text
        full = self.open_tag + text if opened else text
        return strip_think(full, self.open_tag, self.close_tag)

    def outcome(self, text: str, opened: bool = False) -> str | None:
        """answered / no_answer_in_budget when a think block is involved, else None."""
        if not (opened or self.open_tag in text or self.close_tag in text):
            return None
        if strip_think(self.open_tag + text if opened else text, self.open_tag, self.close_tag) is not None:
            return ANSWERED
        return NO_ANSWER_IN_BUDGET if self.unclosed == "truncated" else None

    def thought_split(self, text: str, opened: bool = False) -> int | None:
        """The character offset where the answer starts (just after the last close tag), or None
        when no think block is involved or it never closed."""
        if self.outcome(text, opened) != ANSWERED:
            return None
        return text.rfind(self.close_tag) + len(self.close_tag)

    def grade(self, text: str, gold: str, opened: bool = False) -> dict[str, GradeResult]:
        results: dict[str, GradeResult] = {}
        visible = self.visible(text, opened)
        for name, extract in self.filters.items():
            try:
                answer = extract(visible) if visible is not None else None
            except GradingTimeout as e:
                results[name] = GradeResult(None, None, False, error=f"filter {name!r}: {e}")
                continue
            key = self.comparator.key(answer) if answer is not None else None
            correct = key is not None and self.comparator.equal(answer, gold)  # type: ignore[arg-type]
            results[name] = GradeResult(answer, key, correct)
        return results
