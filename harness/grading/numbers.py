"""Number normalisation: equal numbers → equal strings ("$1,000.00" and "1000" vote together)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

_DIGITS = r"(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d*)?|\.\d+"  # 1,234.5 | 1234. | .5
_NUMBER_TEXT_RE = re.compile(
    rf"(?P<sign>[-+]?)(?P<num>{_DIGITS})(?:[eE](?P<exp>[-+]?\d+))?"
    rf"(?:\s*/\s*(?P<den>{_DIGITS}))?"
    r"\s*%?"
    r"(?:\s+(?P<unit>[A-Za-z][A-Za-z .]*))?"
)
LATEX_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
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
    t = LATEX_TEXT_RE.sub(r" \1", t)
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
    try:
        return format_fraction(value)
    except ValueError:  # more digits than Python turns into text (4300): no answer is such a number
        return None
