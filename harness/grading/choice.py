"""The `choice_letter` filter step: a multiple-choice completion → its option letter.

    - {function: choice_letter}                 # letters A-D
    - {function: choice_letter, letters: ABCDE}

Models state a letter in many dressings: "Answer: (C)", "**Answer:** C", "The answer is C.",
"\\boxed{C}", "$\\boxed{\\text{(C)}}$". An explicit statement wins, the one latest in the text
(the final answer, after any reconsidering): the last "answer is"/"answer:" followed by a letter,
or the last \\boxed{} holding one. Only without any such statement does a bare letter count: a
bold one ("**C**") or a line that is just the letter ("(C)"), the last of them. The letter must
be a capital standing alone ("Answer: Carbon" and "the answer is a bit…" are no letter), and
nothing found is None (invalid), never a guess.
"""

from __future__ import annotations

import re
import string
from typing import Any

from harness import HarnessError
from harness.grading.filters import Step, register_filter, show
from harness.grading.mathtext import extract_boxed

# Dressing between a marker and the letter: spaces, colons, bold, $, (, [, and \text{ / \textbf{ / \mathrm{.
_DRESS = r"(?:[\s:*$(\[]|\\(?:text|textbf|mathrm|mathbf)\{)*"
_ALONE = r"(?![A-Za-z0-9])"  # the letter is not the start of a word or a number
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")  # where the last box starts (extract_boxed gives its content)


def _step(letters: str) -> Step:
    cls = f"[{re.escape(letters)}]"
    marker = re.compile(r"(?i:\banswer(?:\s+is)?)\s*(?:-|:)?\s*(?i:(?:option|choice)\s+)?" + _DRESS + f"({cls}){_ALONE}")
    boxed = re.compile(r"^" + _DRESS + f"({cls}){_ALONE}")
    bare = re.compile(rf"\*\*\(?({cls})\)?\*\*|^[ \t(*]*({cls})[ \t).*]*$", re.MULTILINE)

    def run(text: str) -> str | None:
        found: list[tuple[int, str]] = []
        m = None
        for m in marker.finditer(text):
            pass
        if m is not None:
            found.append((m.start(), m.group(1)))
        box = list(_BOX.finditer(text))
        if box and (content := extract_boxed(text)) is not None and (b := boxed.match(content)):
            found.append((box[-1].start(), b.group(1)))
        if found:
            return max(found)[1]
        last = None
        for last in bare.finditer(text):
            pass
        return (last.group(1) or last.group(2)) if last is not None else None

    return run


@register_filter("choice_letter", optional=("letters",))
def _choice_letter(params: dict[str, Any], where: str) -> Step:
    letters = params.get("letters", "ABCD")
    if (not isinstance(letters, str) or not letters or any(c not in string.ascii_uppercase for c in letters)
            or len(set(letters)) != len(letters)):
        raise HarnessError(f"{where}.letters: expected distinct capital letters like 'ABCD', got {show(letters)}")
    return _step(letters)
