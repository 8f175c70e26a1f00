"""The grader: a task's filters + its comparator, run on one completion."""

from __future__ import annotations

from dataclasses import dataclass

from harness import HarnessError
from harness.grading.comparators import Comparator, make_comparator
from harness.grading.filters import GradingTimeout, build_filters, strip_think

# ----------------------------------------------------------------------------------------------
# Grader: filters + comparator
# ----------------------------------------------------------------------------------------------


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
    strip_think (the task's prompt.strip_think, default true) removes <think>…</think> before any
    filter runs; a completion still inside an unclosed <think> is invalid for every filter."""

    def __init__(self, filters_spec: list[dict], comparator: str | Comparator, *, strip_think: bool = True) -> None:
        self.filters = build_filters(filters_spec)
        self.comparator = make_comparator(comparator) if isinstance(comparator, str) else comparator
        self.strip_think = strip_think

    @property
    def filter_names(self) -> list[str]:
        return list(self.filters)

    def gold_key(self, gold: str) -> str:
        """The gold answer's key; HarnessError when the comparator cannot read it (a task-data bug
        that would otherwise score every sample of that problem wrong). For loaders to check up front."""
        key = self.comparator.key(gold)
        if key is None:
            raise HarnessError(f"gold answer {gold[:80]!r} is not a valid {self.comparator.name} answer")
        return key

    def grade(self, text: str, gold: str) -> dict[str, GradeResult]:
        results: dict[str, GradeResult] = {}
        visible = strip_think(text) if self.strip_think else text
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
