"""Generated tasks graded by their generator's own verifier (reasoning-gym's `score_answer`).

The gold answer of a generated doc is a reference, not the answer itself: the JSON text that
gold_ref() writes, naming the generator's dataset, its (size, seed, config) and the doc's index.
The comparator regenerates that entry (generation is deterministic: reasoning-gym seeds item i with
Random(seed + i)) and asks the dataset's score_answer(pred, entry). A reference rather than the
entry itself because entries carry tuples and other values JSON does not round-trip, and because
regenerating checks that the installed reasoning-gym still makes the question the prompt showed.

Correct means a score of 1.0: reasoning-gym's partial credit (0.05 for a well-formed but wrong
countdown expression, len(gold)/len(answer) when the gold is a substring) is not counted as
correct; score() returns the raw value for anyone who wants it.

reasoning-gym is imported lazily (it is an optional extra, and takes a second to import); this
module is imported by harness.grading so that task specs can name the comparator.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import Any

from harness import HarnessError
from harness.grading.comparators import Comparator, register_comparator

SOURCE = "reasoning_gym"
DIST = "reasoning-gym"
MAX_ANSWER_CHARS = 20_000  # a verifier's cost grows with the answer; no real answer comes near this
# Verifiers that hand the answer to sympy's parse_expr (which evaluates Python): only plain
# arithmetic reaches them, without `**` (9**9**9**9 would never finish).
_SAFE_ANSWER = {"countdown": re.compile(r"[0-9\s+\-*/().]+")}


def require_reasoning_gym(who: str) -> Any:
    """The reasoning_gym module, or a one-line HarnessError saying how to install it."""
    try:
        import reasoning_gym
    except ImportError:
        raise HarnessError(f"{who} generates its docs with reasoning-gym: pip install reasoning-gym "
                           "(or reasoning-harness[gym])") from None
    return reasoning_gym


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version(DIST)
    except metadata.PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=64)
def _dataset(name: str, size: int, seed: int, config_json: str) -> Any:
    rg = require_reasoning_gym(f"dataset {name!r}")
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        raise HarnessError(f"dataset {name!r}: not a reasoning-gym dataset (e.g. {', '.join(sorted(DATASETS)[:8])}, …)")
    try:
        return rg.create_dataset(name, size=size, seed=seed, **json.loads(config_json))
    except (TypeError, ValueError, AssertionError) as e:  # an unknown option, or the config's validate()
        raise HarnessError(f"dataset {name!r}: reasoning-gym rejects the generator config: "
                           f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None


def dataset(name: str, size: int, seed: int, config: dict) -> Any:
    """The (cached) reasoning-gym dataset object; HarnessError for an unknown name or bad config."""
    return _dataset(name, size, seed, json.dumps(config, sort_keys=True))


def entry(name: str, size: int, seed: int, config: dict, index: int) -> dict:
    return dataset(name, size, seed, config)[index]


def question_hash(question: str) -> str:
    return hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]


def gold_ref(name: str, size: int, seed: int, config: dict, index: int, answer: str, question: str) -> str:
    """The gold string of a generated doc: what the comparator needs to regenerate and verify it.
    `answer` is for people reading samples.jsonl (and the gold's vote key); the verifier decides."""
    return json.dumps({"source": SOURCE, "name": name, "size": size, "seed": seed, "config": config, "index": index,
                       "answer": answer, "question_sha256": question_hash(question)},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _parse_ref(gold: str) -> dict | None:
    """The reference in a gold string, or None when it is not one (then it is a plain answer)."""
    t = gold.strip()
    if not t.startswith("{"):
        return None
    try:
        ref = json.loads(t)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return None
    return ref if isinstance(ref, dict) and ref.get("source") == SOURCE else None


@register_comparator("reasoning_gym")
class ReasoningGymComparator(Comparator):
    """key(answer) = the stripped answer (identical answers vote together; two different valid
    conclusions of a logic problem vote apart); the key of a gold reference is its answer.
    equal(pred, gold) = the generator's score_answer(pred, entry) == 1.0."""

    _CACHE_LIMIT = 50_000

    def __init__(self) -> None:
        require_reasoning_gym("scoring.comparator reasoning_gym")
        self._refs: dict[str, tuple[str, Any, dict] | str] = {}  # gold → (name, dataset, entry), or why it is unusable

    def _resolve(self, gold: str) -> tuple[str, Any, dict] | str:
        if gold in self._refs:
            return self._refs[gold]
        ref = _parse_ref(gold)
        try:
            if ref is None:
                raise HarnessError("not a reasoning-gym reference (JSON with source reasoning_gym)")
            fields = {k: ref.get(k) for k in ("name", "size", "seed", "index")}
            if (not isinstance(fields["name"], str) or not isinstance(ref.get("config", {}), dict)
                    or not all(isinstance(fields[k], int) and not isinstance(fields[k], bool) for k in ("size", "seed", "index"))):
                raise HarnessError("malformed reasoning-gym reference (needs name, size, seed, index, config)")
            if not 0 <= fields["index"] < fields["size"]:
                raise HarnessError(f"index {fields['index']} outside the dataset's size {fields['size']}")
            ds = dataset(fields["name"], fields["size"], fields["seed"], ref.get("config", {}))
            e = ds[fields["index"]]
            if ref.get("question_sha256") not in (None, question_hash(e["question"])):
                raise HarnessError(f"reasoning-gym {version()} regenerates a different question for {fields['name']} "
                                   f"#{fields['index']} (the docs came from another reasoning-gym version?)")
            got: tuple[str, Any, dict] | str = (fields["name"], ds, e)
        except HarnessError as err:
            got = str(err)
        if len(self._refs) >= self._CACHE_LIMIT:
            self._refs.clear()
        self._refs[gold] = got
        return got

    def key(self, pred: str) -> str | None:
        ref = _parse_ref(pred)
        if ref is None:
            return pred.strip() or None
        if isinstance(self._resolve(pred), str):  # a gold reference: valid when it regenerates
            return None
        return str(ref.get("answer") or "").strip() or "(verified by reasoning-gym)"

    def score(self, pred: str, gold: str) -> float:
        """The verifier's score in [0, 1]; 0 for an unusable gold, an unsafe or oversized answer,
        or a verifier that raises on this answer."""
        got = self._resolve(gold)
        if isinstance(got, str):
            return 0.0
        name, ds, e = got
        answer = pred.strip()
        safe = _SAFE_ANSWER.get(name)
        if len(answer) > MAX_ANSWER_CHARS or (safe and (not safe.fullmatch(answer) or "**" in answer)):
            return 0.0
        try:
            return float(ds.score_answer(answer, e))
        except Exception:  # a verifier that chokes on odd text: that answer is not right
            return 0.0

    def equal(self, pred: str, gold: str) -> bool:
        return self.score(pred, gold) >= 1.0

    def invalid_reason(self, answer: str) -> str | None:
        if _parse_ref(answer) is None:
            return None if answer.strip() else "empty"
        got = self._resolve(answer)
        return got if isinstance(got, str) else None
