"""Comparators: an extracted answer → a vote key (a canonical form, so equivalent answers vote
together), and correctness against the gold answer (which goes through the same normalisation).
An answer that was extracted but is not a valid value for the comparator (a flexible regex that
caught "..." under the numeric comparator) gets key None: invalid.

The registry: a comparator is one class decorated with @register_comparator("name"); task specs
validate `scoring.comparator` against COMPARATORS."""

from __future__ import annotations

import importlib.util
import re
import time
from typing import Callable, TypeVar

from harness import HarnessError
from harness.grading import math_worker
from harness.grading.math_worker import MathWorker
from harness.grading.mathtext import extract_boxed, latex_problem, normalize_math_text
from harness.grading.numbers import LATEX_TEXT_RE, normalize_number

COMPARATORS: dict[str, type["Comparator"]] = {}
C = TypeVar("C", bound=type)


def register_comparator(name: str) -> Callable[[C], C]:
    """Class decorator: make a Comparator subclass available to task specs as `name`."""

    def add(cls: C) -> C:
        assert name not in COMPARATORS, f"comparator {name!r} registered twice"
        cls.name = name
        COMPARATORS[name] = cls
        return cls

    return add


class Comparator:
    """key(answer): canonical vote key (None = not a valid answer); equal(pred, gold): correctness."""

    name = "base"

    def key(self, pred: str) -> str | None:
        raise NotImplementedError

    def equal(self, pred: str, gold: str) -> bool:
        k = self.key(pred)
        return k is not None and k == self.key(gold)

    def invalid_reason(self, answer: str) -> str | None:
        """Why key(answer) is None, when the comparator can say (a bad gold answer's error names it)."""
        return None

    # Whether equal keys are the only equivalence (True) or cluster_keys must also compare pairs.
    keys_are_canonical = True


@register_comparator("exact")
class ExactComparator(Comparator):

    def key(self, pred: str) -> str | None:
        return pred.strip() or None


@register_comparator("numeric")
class NumericComparator(Comparator):

    def key(self, pred: str) -> str | None:
        return normalize_number(pred)


@register_comparator("math")
class MathComparator(Comparator):
    """sympy equivalence, each worker call bounded by `timeout_s` (overrun = "not equal")."""

    keys_are_canonical = False  # simplify() is not a canonical form: 0.5x and x/2 need a pairwise check
    _CACHE_LIMIT = 50_000

    def __init__(self, timeout_s: float = 2.0, worker: MathWorker | None = None) -> None:
        self.timeout_s = timeout_s
        self._worker = worker or math_worker.default_worker
        self._keys: dict[str, str | None] = {}
        self._equal: dict[tuple[str, str], bool] = {}

    def key(self, pred: str) -> str | None:
        if pred in self._keys:
            return self._keys[pred]
        text = normalize_math_text(pred)
        key: str | None = None
        if latex_problem(text) is None:
            key = normalize_number(text, units=False)  # the fast path: plain numbers never reach sympy
            if key is None:
                key = self._worker.call("key", text, timeout=self.timeout_s) or text.replace(" ", "")
        if len(self._keys) >= self._CACHE_LIMIT:
            self._keys.clear()
        self._keys[pred] = key
        return key

    def equal(self, pred: str, gold: str) -> bool:
        if (pred, gold) in self._equal:
            return self._equal[(pred, gold)]
        a, b = normalize_math_text(pred), normalize_math_text(gold)
        if latex_problem(a) or latex_problem(b):
            result = False
        elif a.replace(" ", "") == b.replace(" ", ""):
            result = True
        elif (na := normalize_number(a, units=False)) is not None and (nb := normalize_number(b, units=False)) is not None:
            result = na == nb  # both exact numbers: no sympy needed
        elif self.key(pred) == self.key(gold):
            result = True
        else:
            result = self._worker.call("equal", a, b, timeout=self.timeout_s) is True
        if len(self._equal) >= self._CACHE_LIMIT:
            self._equal.clear()
        self._equal[(pred, gold)] = result
        return result

    def invalid_reason(self, answer: str) -> str | None:
        t = answer.strip()
        if t.startswith(("\\boxed", "\\fbox")) and extract_boxed(t) is None:
            return "its \\boxed{ is never closed"
        return latex_problem(normalize_math_text(answer))


# A math environment already in the text (an unescaped $, \( \[, a box), or prose: two plain words in
# a row outside \text{}. Either way math-verify gets the text as it is and finds the answer itself.
_MATH_ENV_RE = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\(?:boxed|fbox)(?![A-Za-z])")
_PROSE_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}[\s,]+[A-Za-z]{2,}(?![A-Za-z])")


def math_verify_text(answer: str) -> str:
    """What math-verify's parse gets for an answer: a bare extracted answer ("\\frac{1}{2}", "(1, 2]")
    goes inside $...$, since math-verify reads LaTeX only in a math environment (bare, "2\\sqrt{2}"
    reads as 2); a whole completion goes as it is."""
    t = answer.strip()
    if _MATH_ENV_RE.search(t) or _PROSE_RE.search(LATEX_TEXT_RE.sub("", t)):
        return t
    t = t.strip("*`").strip()  # markdown emphasis round a bare answer: **73**
    return f"${t}$" if t else ""


@register_comparator("math_verify")
class MathVerifyComparator(Comparator):
    """Hugging Face's math-verify (parse + verify), run in the sympy worker: each call bounded by
    `timeout_s` (math-verify's own signal-based timeouts work only on the main thread). An answer it
    parses into no sympy object gets key None; equal(pred, gold) is verify(gold, pred)."""

    keys_are_canonical = False  # x=3 and 3, {1,2} and {2,1}: verify decides, not the key text

    def __init__(self, timeout_s: float = 2.0, worker: MathWorker | None = None) -> None:
        if importlib.util.find_spec("math_verify") is None:
            raise HarnessError("scoring.comparator: math_verify needs the math-verify package "
                               "(pip install math-verify)")
        self.timeout_s = timeout_s
        self._worker = worker or math_worker.default_worker
        self._keys: dict[str, str | None] = {}
        self._equal: dict[tuple[str, str], bool] = {}

    def key(self, pred: str) -> str | None:
        if pred not in self._keys:
            text = math_verify_text(pred)
            if len(self._keys) >= MathComparator._CACHE_LIMIT:
                self._keys.clear()
            self._keys[pred] = self._worker.call("mv_key", text, timeout=self.timeout_s) if text else None
        return self._keys[pred]

    def equal(self, pred: str, gold: str) -> bool:
        if (pred, gold) not in self._equal:
            a, b = math_verify_text(pred), math_verify_text(gold)
            if len(self._equal) >= MathComparator._CACHE_LIMIT:
                self._equal.clear()
            same = bool(a and b) and self._worker.call("mv_equal", a, b, timeout=self.timeout_s) is True
            self._equal[(pred, gold)] = same
        return self._equal[(pred, gold)]

    def invalid_reason(self, answer: str) -> str | None:
        if self.key(answer) is not None:
            return None
        return f"math-verify parses no expression from it (or not within {self.timeout_s:g} s)"


def make_comparator(name: str) -> Comparator:
    if name not in COMPARATORS:
        raise HarnessError(f"scoring.comparator: unknown comparator {name!r} (choose from {', '.join(COMPARATORS)})")
    return COMPARATORS[name]()


def cluster_keys(answers: list[str | None], comparator: Comparator | str, budget_s: float = 30.0) -> list[str | None]:
    """Vote keys for one problem's answers: equivalent answers share a key (the key of the
    equivalence class's first answer). Only the math comparator compares pairs: each new distinct
    key is checked against the first answer of each class so far, until `budget_s` is spent (after
    that, remaining keys stay in classes of their own; fewer merges, never a wrong one)."""
    comp = make_comparator(comparator) if isinstance(comparator, str) else comparator
    keys = [comp.key(a) if a is not None else None for a in answers]
    if comp.keys_are_canonical:
        return keys
    deadline = time.monotonic() + budget_s
    representatives: list[tuple[str, str]] = []  # (key, answer) of each class, in first-seen order
    merged: dict[str, str] = {}
    for answer, key in zip(answers, keys):
        if key is None or key in merged:
            continue
        merged[key] = key
        for rep_key, rep_answer in representatives:
            if time.monotonic() > deadline:
                break
            if comp.equal(answer, rep_answer):  # type: ignore[arg-type]
                merged[key] = rep_key
                break
        if merged[key] == key:
            representatives.append((key, answer))  # type: ignore[arg-type]
    return [merged[k] if k is not None else None for k in keys]
