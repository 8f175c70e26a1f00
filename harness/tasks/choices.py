"""Multiple-choice docs: a task's `dataset.choices` options, shuffled per doc from the run seed.

Sources such as GPQA store the right option in a fixed column ("Correct Answer"); shown in that
order the gold letter would always be A. Each doc therefore gets its own order, drawn from a
generator seeded by (run seed, doc id): reruns show the same prompts, another `--seed` another
order, and neighbouring problems unrelated ones. The order is added to the doc as fields

    choices         the option texts (stripped), in the drawn order
    choice_letters  ["A", "B", …], one per option
    answer_letter   the letter the `correct` option landed on

rather than drawn inside the template: the runner is where the run seed is known, templates stay
pure functions of the doc, and docs.jsonl then records exactly which order each problem showed.
"""

from __future__ import annotations

import hashlib
import random
import string
from typing import Any

from harness import HarnessError

ADDED_FIELDS = ("choices", "choice_letters", "answer_letter")


def shuffle_choices(spec: Any, docs: list[dict]) -> list[dict]:
    """`docs` with the choice fields added when the task declares dataset.choices, else `docs`."""
    cfg = spec.dataset.choices
    if cfg is None:
        return docs
    return [_with_choices(doc, cfg.fields, cfg.correct, spec.sampling.seed, spec.dataset.name) for doc in docs]


def choice_order(seed: int, doc_id: str, n: int) -> list[int]:
    """The drawn permutation of range(n) for one doc (sha256-seeded: stable across processes)."""
    h = hashlib.sha256(f"harness-choices\0{seed}\0{doc_id}".encode("utf-8")).digest()
    order = list(range(n))
    random.Random(int.from_bytes(h[:8], "big")).shuffle(order)
    return order


def _with_choices(doc: dict, fields: tuple[str, ...], correct: str, seed: int, dataset: str) -> dict:
    doc_id = str(doc["doc_id"])
    where = f"dataset {dataset!r}: doc {doc_id}"
    clash = next((k for k in ADDED_FIELDS if k in doc), None)
    if clash:  # never silently replace a field of the data
        raise HarnessError(f"{where}: already has a {clash!r} field, which dataset.choices would overwrite")
    texts = []
    for f in fields:
        v = doc.get(f)
        if not isinstance(v, str) or not v.strip():
            raise HarnessError(f"{where}: dataset.choices field {f!r} is missing or empty")
        texts.append(v.strip())  # GPQA's options carry stray trailing spaces and newlines
    order = choice_order(seed, doc_id, len(fields))
    letters = list(string.ascii_uppercase[: len(fields)])
    return {**doc, "choices": [texts[i] for i in order], "choice_letters": letters,
            "answer_letter": letters[order.index(fields.index(correct))]}
