"""Answer extraction: named filter chains of steps, each step a function from a string to a string
or None (None means *invalid*: nothing extracted, an outcome of its own that never votes and is
never silently scored as a wrong answer).

    filters:
      - name: strict
        steps:
          - {function: regex, pattern: "#### (\\-?[0-9\\.\\,]+)", group: 1, select: first}
          - {function: take_first}

The registry: a step function is one decorated factory, @register_filter("name", required=...,
optional=...), taking the step's validated parameters and returning the step; task specs validate
their steps against FILTERS."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import regex

from harness import HarnessError
from harness.grading.mathtext import extract_boxed

Step = Callable[[str], "str | None"]


def show(v: Any) -> str:
    """A spec value in an error message, cut short."""
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


@dataclass(frozen=True)
class FilterFunction:
    required: tuple[str, ...]
    optional: tuple[str, ...]
    factory: Callable[[dict[str, Any], str], Step]  # (step parameters, "filters[i].steps[j]") -> the step


FILTERS: dict[str, FilterFunction] = {}


def register_filter(name: str, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()):
    """Decorator of a step factory: usable in task specs as {function: name, <params>}. The factory
    gets the step's parameters (the keys are checked against required/optional before) and where
    the step is, for one-line HarnessErrors about a bad value; it returns the step function."""

    def add(factory: Callable[[dict[str, Any], str], Step]) -> Callable[[dict[str, Any], str], Step]:
        assert name not in FILTERS, f"filter function {name!r} registered twice"
        FILTERS[name] = FilterFunction(tuple(required), tuple(optional), factory)
        return factory

    return add




# A filter's regex gets this long per call: a catastrophic-backtracking pattern in a task spec costs
# one sample's extraction (recorded as its grader_error), never a hung run. The `regex` package
# (a transformers dependency) runs re's syntax with timeouts.
REGEX_TIMEOUT_S = 2.0
REGEX_MAX_TIMEOUTS = 3  # then the step fails at once for the rest of the process (each failure a grader_error)
MAX_PATTERN_CHARS = 2000


class GradingTimeout(Exception):
    pass


def _regex_step(pattern: Any, group: int | None, select: str | int) -> Step:
    timeouts = 0

    def run(text: str) -> str | None:
        nonlocal timeouts
        if timeouts >= REGEX_MAX_TIMEOUTS:  # a pattern that backtracks on this run's texts would cost 2 s a sample
            raise GradingTimeout(f"regex {show(pattern.pattern)} disabled after {timeouts} timeouts of "
                                 f"{REGEX_TIMEOUT_S:g} s")
        try:
            matches = list(pattern.finditer(text, timeout=REGEX_TIMEOUT_S))
        except TimeoutError:
            timeouts += 1
            raise GradingTimeout(f"regex {show(pattern.pattern)} timed out after {REGEX_TIMEOUT_S:g} s") from None
        if not matches:
            return None
        if select == "first":
            m = matches[0]
        elif select == "last":
            m = matches[-1]
        else:
            try:
                m = matches[select]
            except IndexError:
                return None
        if group is not None:
            return m.group(group)  # None when that group did not take part in the match
        if pattern.groups == 0:
            return m.group(0)
        # lm-eval's convention: with alternation groups, the first group that matched non-empty.
        return next((g for g in m.groups() if g), None)

    return run


@register_filter("regex", required=("pattern",), optional=("group", "select"))
def _regex(params: dict[str, Any], where: str) -> Step:
    pattern = params["pattern"]
    if not isinstance(pattern, str):
        raise HarnessError(f"{where}.pattern: expected a string, got {type(pattern).__name__}")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise HarnessError(f"{where}.pattern: {len(pattern)} characters, more than the {MAX_PATTERN_CHARS} allowed")
    try:
        compiled = regex.compile(pattern)
    except regex.error as e:
        raise HarnessError(f"{where}.pattern: bad regex {show(pattern)}: {e}") from None
    group = params.get("group")
    if group is not None:
        if isinstance(group, bool) or not isinstance(group, int) or group < 0:
            raise HarnessError(f"{where}.group: expected a group number >= 0, got {show(group)}")
        if group > compiled.groups:
            raise HarnessError(f"{where}.group: {group} but the pattern has {compiled.groups} group(s)")
    sel = params.get("select", "first")
    if sel not in ("first", "last") and (isinstance(sel, bool) or not isinstance(sel, int)):
        raise HarnessError(f"{where}.select: expected first, last or a match index, got {show(sel)}")
    return _regex_step(compiled, group, sel)


@register_filter("take_first")
def _take_first(params: dict[str, Any], where: str) -> Step:
    # lm-eval uses take_first to pick the first of several responses; a sample here is graded on
    # its own, so it is the identity. Kept so lm-eval filter lists port unchanged.
    return lambda text: text


@register_filter("boxed")
def _boxed(params: dict[str, Any], where: str) -> Step:
    return extract_boxed


def strip_think(text: str, open_tag: str = "<think>", close_tag: str = "</think>") -> str | None:
    """Drop <think>…</think> blocks and everything before a lone </think> (the template opened the
    block in the prompt). A <think> never closed means the model never answered: None."""
    if close_tag in text:
        text = text.rsplit(close_tag, 1)[1]  # everything up to the last close is thoughts
    if open_tag in text:
        return None
    return text


register_filter("strip_think")(lambda params, where: strip_think)

# "**Answer**: 73" too: markdown bold between the word and its colon.
_ANSWER_IS_RE = re.compile(r"(?:the\s+(?:final\s+)?answer\s+is|answer\s*(?:\*\*\s*)?:)", re.IGNORECASE)
# End of sentence: a newline, or . ! ? followed by whitespace or the end ("3.5." keeps "3.5").
_SENTENCE_RE = re.compile(r"(.*?)(?:[.!?](?=\s|$)|\n|$)", re.DOTALL)


def answer_is(text: str) -> str | None:
    """The text after the last "The (final) answer is" / "answer:", up to the end of that sentence."""
    matches = list(_ANSWER_IS_RE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].lstrip(" \t:*")
    m = _SENTENCE_RE.match(rest)
    return m.group(1).strip().strip("*").strip() if m else None


register_filter("answer_is")(lambda params, where: answer_is)
register_filter("lowercase")(lambda params, where: str.lower)
register_filter("strip")(lambda params, where: str.strip)

# A number as written in prose: 1,234.5 (commas only in valid thousands groups), 12, .5, $-3.
_PROSE_NUMBER_RE = re.compile(r"-?\$?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|-?\$?\.\d+")


def _nth_number(index: int) -> Step:
    def run(text: str) -> str | None:
        found = _PROSE_NUMBER_RE.findall(text)
        return found[index] if found else None

    return run


register_filter("first_number")(lambda params, where: _nth_number(0))
register_filter("last_number")(lambda params, where: _nth_number(-1))


@dataclass(frozen=True)
class Filter:
    """A named chain of steps: completion text -> answer string, or None (invalid)."""

    name: str
    steps: tuple[Step, ...]
    spec: tuple[dict[str, Any], ...] = field(default=(), compare=False, repr=False)

    def __call__(self, text: str) -> str | None:
        value: str | None = text
        for step in self.steps:
            if value is None:
                return None
            value = step(value)
        if value is None:
            return None
        value = value.strip()
        return value or None  # an empty extraction is "nothing extracted", not a wrong answer


def _validate_step(where: str, step: Any) -> Step:
    if not isinstance(step, dict):
        raise HarnessError(f"{where}: expected a mapping like {{function: regex, ...}}, got {show(step)}")
    if "function" not in step:
        raise HarnessError(f"{where}: missing key 'function'")
    fn = step["function"]
    if not isinstance(fn, str) or fn not in FILTERS:
        raise HarnessError(f"{where}: unknown function {fn!r} (choose from {', '.join(sorted(FILTERS))})")
    spec = FILTERS[fn]
    allowed = {"function", *spec.required, *spec.optional}
    for key in step:
        if key not in allowed:
            raise HarnessError(f"{where}: unknown key {key!r} for {fn} (allowed: {', '.join(sorted(allowed))})")
    for key in spec.required:
        if key not in step:
            raise HarnessError(f"{where}: {fn} needs key {key!r}")
    return spec.factory({k: v for k, v in step.items() if k != "function"}, where)


def build_filters(filters_spec: list[dict]) -> dict[str, Filter]:
    """Validate a task's `filters:` list and build its filters, keyed by name, in spec order.
    Every problem raises HarnessError with one line naming the filter and step."""
    if not isinstance(filters_spec, list) or not filters_spec:
        raise HarnessError("filters: expected a non-empty list of {name, steps}")
    filters: dict[str, Filter] = {}
    for i, fspec in enumerate(filters_spec):
        where = f"filters[{i}]"
        if not isinstance(fspec, dict):
            raise HarnessError(f"{where}: expected a mapping {{name, steps}}, got {show(fspec)}")
        for key in fspec:
            if key not in ("name", "steps"):
                raise HarnessError(f"{where}: unknown key {key!r} (allowed: name, steps)")
        name = fspec.get("name")
        if not isinstance(name, str) or not name.strip():
            raise HarnessError(f"{where}.name: expected a non-empty string, got {show(name)}")
        if name in filters:
            raise HarnessError(f"{where}.name: duplicate filter name {name!r}")
        steps = fspec.get("steps")
        if not isinstance(steps, list) or not steps:
            raise HarnessError(f"{where}.steps: expected a non-empty list of steps, got {show(steps)}")
        built = tuple(_validate_step(f"{where}.steps[{j}]", s) for j, s in enumerate(steps))
        filters[name] = Filter(name, built, tuple(dict(s) for s in steps))
    return filters
