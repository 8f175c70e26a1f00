"""Answer extraction (named filter chains) and answer comparison (comparators), kept apart.

A task declares filters, each a chain of steps that turns a completion into an answer string or
None; None means *invalid* (nothing extracted), an outcome of its own that never votes and is
never silently scored as a wrong answer:

    filters:
      - name: strict
        steps:
          - {function: regex, pattern: "#### (\\-?[0-9\\.\\,]+)", group: 1, select: first}
          - {function: take_first}
    scoring: {comparator: numeric}      # numeric | math | exact

A comparator then turns an answer into a vote key (a canonical form, so equivalent answers vote
together) and decides correctness against the gold answer, which goes through the same
normalisation. An answer that was extracted but is not a valid value for the comparator (a
flexible regex that caught "..." under the numeric comparator) also gets key None: invalid.

The math comparator runs sympy in a worker subprocess: sympy can loop for ever (simplify) or sit
in C code (10**10**10) where no signal reaches it, so the parent waits with a deadline and kills
the worker when it passes; the call then counts as "not equal" and the run goes on.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import regex

from harness import HarnessError

# ----------------------------------------------------------------------------------------------
# Filter steps: each maps a string to a string, or None (invalid; the chain stops).
# ----------------------------------------------------------------------------------------------

Step = Callable[[str], "str | None"]


# A filter's regex gets this long per call: a catastrophic-backtracking pattern in a task spec costs
# one sample's extraction (recorded as its grader_error), never a hung run. The `regex` package
# (a transformers dependency) runs re's syntax with timeouts.
REGEX_TIMEOUT_S = 2.0


class GradingTimeout(Exception):
    pass


def _regex_step(pattern: Any, group: int | None, select: str | int) -> Step:
    def run(text: str) -> str | None:
        try:
            matches = list(pattern.finditer(text, timeout=REGEX_TIMEOUT_S))
        except TimeoutError:
            raise GradingTimeout(f"regex {pattern.pattern!r} timed out after {REGEX_TIMEOUT_S:g} s") from None
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


def _take_first(text: str) -> str | None:
    # lm-eval uses take_first to pick the first of several responses; a sample here is graded on
    # its own, so it is the identity. Kept so lm-eval filter lists port unchanged.
    return text


_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _balanced_group(text: str, start: int) -> tuple[str, int] | None:
    """The content of the {...} group opening at text[start] and the index after it; None if open."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2  # \{ and \} are literal braces, not grouping
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...} (balanced braces; `\\boxed 5` too).
    A last box left open (a truncated completion) gives None rather than an earlier box."""
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    i = matches[-1].end()
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        group = _balanced_group(text, i)
        return group[0] if group else None
    m = re.match(r"[^\s$]+", text[i:])  # \boxed 5 : one token
    return m.group(0) if m else None


_THINK_BLOCK_RE = re.compile(r"<think>.*?</think>", re.DOTALL)


def strip_think(text: str) -> str | None:
    """Drop <think>…</think> blocks and everything before a lone </think> (the template opened the
    block in the prompt). A <think> never closed means the model never answered: None."""
    text = _THINK_BLOCK_RE.sub("", text)
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        return None
    return text


_ANSWER_IS_RE = re.compile(r"(?:the\s+(?:final\s+)?answer\s+is|answer\s*:)", re.IGNORECASE)
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


# A number as written in prose: 1,234.5 (commas only in valid thousands groups), 12, .5, $-3.
_PROSE_NUMBER_RE = re.compile(r"-?\$?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|-?\$?\.\d+")


def _nth_number(index: int) -> Step:
    def run(text: str) -> str | None:
        found = _PROSE_NUMBER_RE.findall(text)
        return found[index] if found else None

    return run


def _make_regex(params: dict[str, Any]) -> Step:
    return _regex_step(params["_compiled"], params.get("group"), params.get("select", "first"))


# function name -> (required params, optional params, factory(validated params) -> Step)
_STEP_FUNCTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...], Callable[[dict[str, Any]], Step]]] = {
    "regex": (("pattern",), ("group", "select"), _make_regex),
    "take_first": ((), (), lambda p: _take_first),
    "boxed": ((), (), lambda p: extract_boxed),
    "strip_think": ((), (), lambda p: strip_think),
    "answer_is": ((), (), lambda p: answer_is),
    "lowercase": ((), (), lambda p: str.lower),
    "strip": ((), (), lambda p: str.strip),
    "first_number": ((), (), lambda p: _nth_number(0)),
    "last_number": ((), (), lambda p: _nth_number(-1)),
}


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
        raise HarnessError(f"{where}: expected a mapping like {{function: regex, ...}}, got {step!r}")
    if "function" not in step:
        raise HarnessError(f"{where}: missing key 'function'")
    fn = step["function"]
    if not isinstance(fn, str) or fn not in _STEP_FUNCTIONS:
        raise HarnessError(f"{where}: unknown function {fn!r} (choose from {', '.join(sorted(_STEP_FUNCTIONS))})")
    required, optional, factory = _STEP_FUNCTIONS[fn]
    allowed = {"function", *required, *optional}
    for key in step:
        if key not in allowed:
            raise HarnessError(f"{where}: unknown key {key!r} for {fn} (allowed: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in step:
            raise HarnessError(f"{where}: {fn} needs key {key!r}")
    params = dict(step)
    if fn == "regex":
        pattern = step["pattern"]
        if not isinstance(pattern, str):
            raise HarnessError(f"{where}.pattern: expected a string, got {pattern!r}")
        try:
            compiled = regex.compile(pattern)
        except regex.error as e:
            raise HarnessError(f"{where}.pattern: bad regex {pattern!r}: {e}") from None
        group = step.get("group")
        if group is not None:
            if isinstance(group, bool) or not isinstance(group, int) or group < 0:
                raise HarnessError(f"{where}.group: expected a group number >= 0, got {group!r}")
            if group > compiled.groups:
                raise HarnessError(f"{where}.group: {group} but the pattern has {compiled.groups} group(s)")
        sel = step.get("select", "first")
        if sel not in ("first", "last") and (isinstance(sel, bool) or not isinstance(sel, int)):
            raise HarnessError(f"{where}.select: expected first, last or a match index, got {sel!r}")
        params["_compiled"] = compiled
    return factory(params)


def build_filters(filters_spec: list[dict]) -> dict[str, Filter]:
    """Validate a task's `filters:` list and build its filters, keyed by name, in spec order.
    Every problem raises HarnessError with one line naming the filter and step."""
    if not isinstance(filters_spec, list) or not filters_spec:
        raise HarnessError("filters: expected a non-empty list of {name, steps}")
    filters: dict[str, Filter] = {}
    for i, fspec in enumerate(filters_spec):
        where = f"filters[{i}]"
        if not isinstance(fspec, dict):
            raise HarnessError(f"{where}: expected a mapping {{name, steps}}, got {fspec!r}")
        for key in fspec:
            if key not in ("name", "steps"):
                raise HarnessError(f"{where}: unknown key {key!r} (allowed: name, steps)")
        name = fspec.get("name")
        if not isinstance(name, str) or not name.strip():
            raise HarnessError(f"{where}.name: expected a non-empty string, got {name!r}")
        if name in filters:
            raise HarnessError(f"{where}.name: duplicate filter name {name!r}")
        steps = fspec.get("steps")
        if not isinstance(steps, list) or not steps:
            raise HarnessError(f"{where}.steps: expected a non-empty list of steps, got {steps!r}")
        built = tuple(_validate_step(f"{where}.steps[{j}]", s) for j, s in enumerate(steps))
        filters[name] = Filter(name, built, tuple(dict(s) for s in steps))
    return filters


# ----------------------------------------------------------------------------------------------
# Number normalisation: equal numbers -> equal strings.
# ----------------------------------------------------------------------------------------------

_DIGITS = r"(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d*)?|\.\d+"  # 1,234.5 | 1234. | .5
_NUMBER_TEXT_RE = re.compile(
    rf"(?P<sign>[-+]?)(?P<num>{_DIGITS})(?:[eE](?P<exp>[-+]?\d+))?"
    rf"(?:\s*/\s*(?P<den>{_DIGITS}))?"
    r"\s*%?"
    r"(?:\s+(?P<unit>[A-Za-z][A-Za-z .]*))?"
)
_LATEX_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
# Scale words change the value: "1.5 million" is not 1.5; rather invalid than wrong by 10**6.
_SCALE_WORDS = {"hundred", "thousand", "million", "billion", "trillion", "dozen", "k", "m", "b"}
_MAX_EXPONENT = 100  # 1e100000 would print a 100000-digit key


def format_fraction(value: Fraction) -> str:
    """Canonical text of an exact number: a plain decimal when it terminates ("3.5", "-2", "0.125"),
    else the reduced fraction "p/q" ("1/3")."""
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    q = value.denominator
    twos = fives = 0
    while q % 2 == 0:
        q //= 2
        twos += 1
    while q % 5 == 0:
        q //= 5
        fives += 1
    if q != 1:
        return f"{sign}{abs(value.numerator)}/{value.denominator}"
    places = max(twos, fives)
    scaled = abs(value) * 10**places  # an integer now
    digits = str(scaled.numerator).rjust(places + 1, "0")
    whole, frac = digits[: len(digits) - places], digits[len(digits) - places :].rstrip("0")
    return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"


def normalize_number(s: str, *, units: bool = True) -> str | None:
    """Canonical text of a number written by a model or a dataset, or None if `s` is not one number.

    "$1,000.00" -> "1000", "3.50" -> "3.5", "73." -> "73", "**73**" -> "73", "+5" -> "5",
    "-0" -> "0", "5%" -> "5" (the percent sign is dropped), "1/2" -> "0.5", "2/6" -> "1/3",
    "1e3" -> "1000", "10 dollars" -> "10" (trailing unit words are dropped unless units=False, as
    the math comparator asks: there "5 x" is an expression), "1.5 million" -> None
    (a scale word changes the value), "3 or 4" -> None, "1,00" -> None (commas must group
    thousands). LaTeX dressing ($, \\$, \\%, {,}, \\!, \\text{...}) and markdown (** `) go too.
    Exact: "0.333" and "1/3" differ.
    """
    t = s.strip()
    t = _LATEX_TEXT_RE.sub(r" \1", t)
    t = t.replace("{,}", ",").replace("\\!", "").replace("\\,", "").replace("\\%", "%").replace("\\$", "$")
    t = t.replace("$", "").replace("\u2212", "-").replace("\\ ", " ")
    t = t.strip().strip("*`_ ").strip()
    t = t.rstrip(".,;:!?").strip()
    m = _NUMBER_TEXT_RE.fullmatch(t)
    if m is None:
        return None
    unit = m.group("unit")
    if unit and not units:
        return None
    if unit and unit.split()[0].lower().rstrip(".") in _SCALE_WORDS:
        return None
    try:
        value = Fraction(Decimal(m.group("num").replace(",", "")))
        if m.group("exp"):
            exp = int(m.group("exp"))
            if abs(exp) > _MAX_EXPONENT:
                return None
            value *= Fraction(10) ** exp
        if m.group("den"):
            den = Fraction(Decimal(m.group("den").replace(",", "")))
            if den == 0:
                return None
            value /= den
    except (InvalidOperation, ValueError):
        return None
    if m.group("sign") == "-":
        value = -value
    return format_fraction(value)


# ----------------------------------------------------------------------------------------------
# Math text: LaTeX-ish answers cleaned to one canonical spelling, then (in the worker) sympy.
# ----------------------------------------------------------------------------------------------

_MATH_DROP_RE = re.compile(
    r"\\(?:left|right|displaystyle|quad|qquad)(?![A-Za-z])|\\[!,;:]|\\ |\^\s*\{?\\circ\}?|\\circ|°|\\%|%"
)


def normalize_math_text(s: str) -> str:
    """A LaTeX-ish answer with its dressing removed: $…$, \\(…\\), a whole-answer \\boxed{…},
    \\left/\\right, spacing commands, degrees, percent, \\text{…} wrappers, \\dfrac/\\tfrac -> \\frac,
    a trailing \\text{unit}, a leading "x =", a final period; whitespace collapsed. "" when nothing is left."""
    t = s.strip()
    if _BOX_RE.match(t):
        t = extract_boxed(t) or ""
    t = t.replace("\\$", "").replace("$", "")
    for a, b in (("\\(", "\\)"), ("\\[", "\\]")):
        if t.startswith(a) and t.endswith(b):
            t = t[2:-2]
    t = _MATH_DROP_RE.sub("", t)
    # A trailing unit after a value: "5 \text{ cm}" -> "5" ("\text{(A)}" alone is the answer itself).
    t = re.sub(r"(?<=\S)\s*\\(?:text|mbox|mathrm)\{\s*[A-Za-z][A-Za-z\s.]*\}\s*$", "", t)
    t = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", t)
    t = _LATEX_TEXT_RE.sub(r"\1", t)
    t = re.sub(r"\s+", " ", t).strip().rstrip(".").strip()
    m = re.match(r"[A-Za-z]\s*=\s*", t)  # "x = 5" -> "5", but "x = y = 5" is left alone
    if m and "=" not in t[m.end() :]:
        t = t[m.end() :]
    return t


_SYMPY_FUNCTIONS = {
    "sqrt", "exp", "log", "sin", "cos", "tan", "cot", "sec", "csc",
    "asin", "acos", "atan", "sinh", "cosh", "tanh",
}  # fmt: skip
_LATEX_NAMES = {"pi": "pi", "infty": "oo", "infinity": "oo", "cdot": "*", "times": "*", "div": "/", "ln": "log",
                "arcsin": "asin", "arccos": "acos", "arctan": "atan"}  # fmt: skip
_SYMPY_SAFE_RE = re.compile(r"[0-9A-Za-z+\-*/().\s,]*")


class _NotMath(ValueError):
    pass


def _latex_arg(t: str, i: int) -> tuple[str, int]:
    """One macro argument at t[i]: a {group}, a \\command, or a single character (\\frac12)."""
    while i < len(t) and t[i] == " ":
        i += 1
    if i >= len(t):
        raise _NotMath("missing argument")
    if t[i] == "{":
        group = _balanced_group(t, i)
        if group is None:
            raise _NotMath("unbalanced braces")
        return group
    if t[i] == "\\":
        m = re.match(r"\\[A-Za-z]+", t[i:])
        if m:
            return m.group(0), i + m.end()
    return t[i], i + 1


def latex_to_sympy_text(t: str) -> str:
    """Translate cleaned LaTeX-ish math into text for sympy's parser, or raise _NotMath.
    Only digits, operators, brackets and whitelisted names come out: the parser evaluates it."""
    out: list[str] = []
    i = 0
    while i < len(t):
        c = t[i]
        if c == "\\":
            m = re.match(r"\\([A-Za-z]+)", t[i:])
            if not m:
                raise _NotMath(f"stray backslash in {t!r}")
            name, i = m.group(1), i + m.end()
            if name == "frac":
                num, i = _latex_arg(t, i)
                den, i = _latex_arg(t, i)
                out.append(f"(({latex_to_sympy_text(num)})/({latex_to_sympy_text(den)}))")
            elif name == "sqrt":
                index = None
                if i < len(t) and t[i] == "[":
                    close = t.find("]", i)
                    if close < 0:
                        raise _NotMath("unclosed \\sqrt[")
                    index, i = t[i + 1 : close], close + 1
                arg, i = _latex_arg(t, i)
                inner = latex_to_sympy_text(arg)
                out.append(f"(({inner})**(1/({latex_to_sympy_text(index)})))" if index else f"sqrt({inner})")
            elif name in _LATEX_NAMES:
                out.append(f" {_LATEX_NAMES[name]} ")
            elif name in _SYMPY_FUNCTIONS:
                out.append(f" {name} ")
            else:
                raise _NotMath(f"unsupported command \\{name}")
            continue
        out.append({"{": "(", "}": ")", "^": "**"}.get(c, c))
        i += 1
    text = "".join(out)
    if not _SYMPY_SAFE_RE.fullmatch(text) or re.search(r"\.(?=[A-Za-z_])", text):
        raise _NotMath(f"characters outside the math whitelist in {text!r}")
    for word in re.findall(r"[A-Za-z]+", text):
        # Single letters are symbols; longer runs must be known names. Splitting "yes" into y*e*s
        # would make anagrams equal, so an unknown word means "not a math expression".
        if len(word) > 1 and word not in _SYMPY_FUNCTIONS and word not in ("pi", "oo"):
            raise _NotMath(f"unknown name {word!r}")
    return text


def _split_sequence(t: str) -> tuple[str, str, list[str]] | None:
    """(open, close, items) for a tuple/interval/list like "(1, 2]" or "1, 2"; None for one item."""
    opener, closer, body = "", "", t
    if len(t) >= 2 and t[0] in "([" and t[-1] in ")]":
        depth = 0
        for i, c in enumerate(t):  # the outer brackets must enclose everything: "(1)+(2)" is one item
            depth += c in "([{"
            depth -= c in ")]}"
            if depth == 0 and i < len(t) - 1:
                break
        else:
            opener, closer, body = t[0], t[-1], t[1:-1]
    items, depth, start = [], 0, 0
    for i, c in enumerate(body):
        depth += c in "([{"
        depth -= c in ")]}"
        if c == "," and depth == 0:
            items.append(body[start:i].strip())
            start = i + 1
    if not items:
        return None
    items.append(body[start:].strip())
    return opener, closer, items


# ---- worker side (runs in the subprocess; sympy is imported only there) ----------------------

_sympy_ns: dict[str, Any] = {}


def _parse_math(t: str) -> Any:
    import sympy
    from sympy.parsing.sympy_parser import (
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    if not _sympy_ns:
        # A closed namespace with no builtins: parse_expr evaluates its input, and its default
        # namespace includes open(), input(), exec() and all of sympy.
        _sympy_ns["globals"] = {
            "__builtins__": {},
            **{n: getattr(sympy, n) for n in ("Integer", "Float", "Rational", "Symbol", "Function", "pi", "oo")},
            **{n: getattr(sympy, n) for n in _SYMPY_FUNCTIONS},
        }
        letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
        _sympy_ns["locals"] = {c: sympy.Symbol(c) for c in letters}
        _sympy_ns["transformations"] = standard_transformations + (implicit_multiplication_application,)
    text = latex_to_sympy_text(t)
    return parse_expr(
        text,
        local_dict=dict(_sympy_ns["locals"]),
        global_dict=_sympy_ns["globals"],
        transformations=_sympy_ns["transformations"],
        evaluate=True,
    )


def _expr_key(t: str) -> str:
    import sympy

    number = normalize_number(t, units=False)
    if number is not None:
        return number
    try:
        expr = _parse_math(t)
    except Exception:  # noqa: BLE001 - whatever the parser rejects is not a math expression
        return t.replace(" ", "")
    expr = sympy.simplify(expr)
    if expr.is_Rational:
        return format_fraction(Fraction(int(expr.p), int(expr.q)))
    if expr.is_Float:
        return format_fraction(Fraction(Decimal(str(expr))))
    return sympy.sstr(expr)


def _worker_key(t: str) -> str:
    seq = _split_sequence(t)
    if seq:
        opener, closer, items = seq
        return opener + ",".join(_expr_key(x) for x in items) + closer
    return _expr_key(t)


def _expr_equal(a: str, b: str) -> bool:
    import sympy

    if a.replace(" ", "") == b.replace(" ", ""):
        return True
    na, nb = normalize_number(a, units=False), normalize_number(b, units=False)
    if na is not None and nb is not None:
        return na == nb
    try:
        ea, eb = _parse_math(a), _parse_math(b)
    except Exception:  # noqa: BLE001 - not both math expressions, and the texts differ
        return False
    if ea == eb:
        return True
    diff = ea - eb
    if diff.is_number:  # compare numerically with a tight relative tolerance: 2.83 != 2*sqrt(2)
        scale = abs(complex(eb.evalf(30))) if eb.is_number else 0.0  # 0.5x - x/2 is a number too
        return abs(complex(diff.evalf(30))) <= 1e-9 * max(1.0, scale)
    return sympy.simplify(diff) == 0


def _worker_equal(a: str, b: str) -> bool:
    sa, sb = _split_sequence(a), _split_sequence(b)
    if sa or sb:
        if not (sa and sb) or sa[:2] != sb[:2] or len(sa[2]) != len(sb[2]):
            return False
        return all(_expr_equal(x, y) for x, y in zip(sa[2], sb[2]))
    return _expr_equal(a, b)


class _WorkerTimeout(BaseException):  # BaseException: sympy's `except Exception` must not eat it
    pass


def _math_worker_main() -> None:
    """Subprocess entry: JSON lines {op, args, timeout} on stdin -> {ok, result | error} on stdout."""
    import signal

    try:  # a runaway big-integer power should fail with MemoryError, not take the machine down
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    except (ImportError, ValueError, OSError):
        pass
    proto = os.fdopen(os.dup(1), "w")  # our channel; anything sympy prints goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def on_alarm(signum: int, frame: Any) -> None:
        raise _WorkerTimeout

    signal.signal(signal.SIGALRM, on_alarm)
    _parse_math("x")  # import sympy and build the namespace before saying ready
    ops = {"key": _worker_key, "equal": _worker_equal}
    proto.write("ready\n")
    proto.flush()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            # Soft deadline (Python code only); the parent's hard deadline covers C code.
            signal.setitimer(signal.ITIMER_REAL, req["timeout"])
            try:
                resp = {"ok": True, "result": ops[req["op"]](*req["args"])}
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _WorkerTimeout:
            resp = {"ok": False, "error": "timeout"}
        except Exception as e:  # noqa: BLE001 - any sympy failure means "cannot decide"
            resp = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
        proto.write(json.dumps(resp) + "\n")
        proto.flush()


# ---- parent side ----------------------------------------------------------------------------


class MathWorker:
    """One sympy subprocess, started lazily, killed and restarted when a call overruns."""

    STARTUP_TIMEOUT_S = 120.0
    GRACE_S = 1.0  # time past the soft deadline before the hard kill

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid = os.getpid()
        self._buf = b""
        self._lock = threading.Lock()
        self.kills = 0  # how many calls were cut off (reported by tests and diagnostics)

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from harness.graders import _math_worker_main; _math_worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self._pid, self._buf = os.getpid(), b""
        if self._read_line(time.monotonic() + self.STARTUP_TIMEOUT_S) != b"ready":
            self.close()
            raise HarnessError("math comparator: the sympy worker process did not start")

    def _read_line(self, deadline: float) -> bytes | None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None  # the worker died
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def call(self, op: str, *args: str, timeout: float) -> Any:
        """The op's result, or None when it failed, overran `timeout` seconds, or the worker died."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None or self._pid != os.getpid():
                self._proc = None  # after a fork the pipes belong to the parent: start our own
                self._start()
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write((json.dumps({"op": op, "args": args, "timeout": timeout}) + "\n").encode())
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self.close()
                return None
            line = self._read_line(time.monotonic() + timeout + self.GRACE_S)
            if line is None:  # stuck in C code (or dead): kill it, the next call starts a fresh one
                self.kills += 1
                self.close()
                return None
            resp = json.loads(line)
            return resp["result"] if resp.get("ok") else None

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and self._pid == os.getpid():
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


_math_worker = MathWorker()
atexit.register(_math_worker.close)


# ----------------------------------------------------------------------------------------------
# Comparators
# ----------------------------------------------------------------------------------------------


class Comparator:
    """key(answer): canonical vote key (None = not a valid answer); equal(pred, gold): correctness."""

    name = "base"

    def key(self, pred: str) -> str | None:
        raise NotImplementedError

    def equal(self, pred: str, gold: str) -> bool:
        k = self.key(pred)
        return k is not None and k == self.key(gold)

    # Whether equal keys are the only equivalence (True) or cluster_keys must also compare pairs.
    keys_are_canonical = True


class ExactComparator(Comparator):
    name = "exact"

    def key(self, pred: str) -> str | None:
        return pred.strip() or None


class NumericComparator(Comparator):
    name = "numeric"

    def key(self, pred: str) -> str | None:
        return normalize_number(pred)


class MathComparator(Comparator):
    """sympy equivalence, each worker call bounded by `timeout_s` (overrun = "not equal")."""

    name = "math"
    keys_are_canonical = False  # simplify() is not a canonical form: 0.5x and x/2 need a pairwise check
    _CACHE_LIMIT = 50_000

    def __init__(self, timeout_s: float = 2.0, worker: MathWorker | None = None) -> None:
        self.timeout_s = timeout_s
        self._worker = worker or _math_worker
        self._keys: dict[str, str | None] = {}
        self._equal: dict[tuple[str, str], bool] = {}

    def key(self, pred: str) -> str | None:
        if pred in self._keys:
            return self._keys[pred]
        text = normalize_math_text(pred)
        key: str | None = None
        if text:
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
        if not a or not b:
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


_COMPARATORS: dict[str, type[Comparator]] = {"numeric": NumericComparator, "math": MathComparator, "exact": ExactComparator}


def make_comparator(name: str) -> Comparator:
    if name not in _COMPARATORS:
        raise HarnessError(f"scoring.comparator: unknown comparator {name!r} (choose from {', '.join(_COMPARATORS)})")
    return _COMPARATORS[name]()


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
            raise HarnessError(f"gold answer {gold!r} is not a valid {self.comparator.name} answer")
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

    def vote_keys(self, answers: list[str | None]) -> list[str | None]:
        """One problem's samples' answers (one filter) -> keys for majority voting."""
        return cluster_keys(answers, self.comparator)
