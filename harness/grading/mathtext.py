"""LaTeX answer text: \\boxed{} extraction, cleaning a LaTeX-ish answer to one canonical spelling,
and translating it into the whitelisted text sympy's parser gets (harness.grading.math_worker)."""

from __future__ import annotations

import re

from harness.grading.numbers import LATEX_TEXT_RE

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def balanced_group(text: str, start: int) -> tuple[str, int] | None:
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
        group = balanced_group(text, i)
        return group[0] if group else None
    m = re.match(r"[^\s$]+", text[i:])  # \boxed 5 : one token
    return m.group(0) if m else None


# ----------------------------------------------------------------------------------------------
# Math text: LaTeX-ish answers cleaned to one canonical spelling, then (in the worker) sympy.
# ----------------------------------------------------------------------------------------------

_MATH_DROP_RE = re.compile(
    # (?<!\\): in "1 \\ 2" (a matrix row break) the "\ " is not a spacing command
    r"\\(?:left|right|displaystyle|quad|qquad)(?![A-Za-z])|(?<!\\)\\[!,;: ]|\^\s*\{?\\circ\}?|\\circ|°|\\%|%"
)


def normalize_math_text(s: str) -> str:
    """A LaTeX-ish answer with its dressing removed: $…$, \\(…\\), a whole-answer \\boxed{…},
    \\left/\\right, spacing commands, degrees, percent, \\text{…} wrappers, \\dfrac/\\tfrac -> \\frac,
    a trailing \\text{unit}, a leading "x =" or "x \\in", a final period; whitespace collapsed. "" when
    nothing is left."""
    t = s.strip()
    if _BOX_RE.match(t):
        t = extract_boxed(t) or ""
    t = t.replace("\\$", "").replace("$", "")
    for a, b in (("\\(", "\\)"), ("\\[", "\\]")):
        if t.startswith(a) and t.endswith(b):
            t = t[2:-2]
    t = _MATH_DROP_RE.sub("", t)
    # A trailing unit after a value: "5 \text{ cm}" or "4\text{ cm}^2" -> the value ("\text{(A)}"
    # alone is the answer itself).
    t = re.sub(r"(?<=\S)\s*\\(?:text|mbox|mathrm)\{\s*[A-Za-z][A-Za-z\s.]*\}(?:\s*\^\s*\{?\d\}?)?\s*$", "", t)
    t = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", t)
    t = LATEX_TEXT_RE.sub(r"\1", t)
    t = re.sub(r"\s+", " ", t).strip().rstrip(".").strip()
    m = re.match(r"[A-Za-z]\s*(?:=|\\in(?![A-Za-z]))\s*", t)  # "x = 5" -> "5", "x \in (1, 2]" -> "(1, 2]",
    if m and "=" not in t[m.end() :]:  # but "x = y = 5" is left alone
        t = t[m.end() :]
    return t


SYMPY_FUNCTIONS = {
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
        group = balanced_group(t, i)
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
            elif name in SYMPY_FUNCTIONS:
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
        if len(word) > 1 and word not in SYMPY_FUNCTIONS and word not in ("pi", "oo"):
            raise _NotMath(f"unknown name {word!r}")
    return text


def latex_problem(t: str) -> str | None:
    """Why cleaned answer text `t` is malformed LaTeX (so no comparator can read it), or None:
    a gold answer like "\\frac{1}{" is a data bug to report, and a prediction like it was cut off."""
    if not t:
        return "nothing left after removing the LaTeX dressing"
    depth = 0
    i = 0
    while i < len(t):
        if t[i] == "\\":
            if i + 1 == len(t):
                return "it ends in a lone backslash"
            i += 2  # \{ \} are literal braces
            continue
        depth += {"{": 1, "}": -1}.get(t[i], 0)
        if depth < 0:
            return "a } closes a brace never opened"
        i += 1
    if depth:
        return f"{depth} unclosed {{"
    for m in re.finditer(r"\\[dt]?frac(?![A-Za-z])", t):
        try:
            _latex_arg(t, _latex_arg(t, m.end())[1])
        except _NotMath:
            return "a \\frac without its two arguments"
    return None


def split_sequence(t: str) -> tuple[str, str, list[str]] | None:
    """(open, close, items) for a tuple/interval/list like "(1, 2]" or "1, 2", or a set "\\{1, 2\\}"
    (open "{"); None for one item. Bare lists and sets are unordered (solutions of an equation)."""
    opener, closer, body = "", "", t
    if t.startswith("\\{") and t.endswith("\\}") and "\\{" not in t[2:-2] and "\\}" not in t[2:-2]:
        opener, closer, body = "{", "}", t[2:-2]
    elif len(t) >= 2 and t[0] in "([" and t[-1] in ")]":
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
    if not items:  # one item: a sequence only when it is a set, \{5\} or \{(1, 2)\}
        return (opener, closer, [body.strip()]) if opener == "{" else None
    items.append(body[start:].strip())
    return opener, closer, items
