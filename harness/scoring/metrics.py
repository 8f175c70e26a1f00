"""Metrics from graded samples: pure functions of each problem's ordered samples.

Per filter, each problem (doc) contributes its n samples in sample-index order: a vote key per
sample (None = invalid: abstains), whether it is correct, and optionally its finish reason and
generated-token count. Every metric is the mean over problems of a per-problem score, so its
standard error is clustered by problem: SE = std(per-problem scores, ddof=1) / sqrt(N).

maj@k and pass@k are *estimators from all n samples*: the expected value over every size-k subset
of the n samples, computed exactly (no resampling noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(slots=True)
class DocSamples:
    """One problem's samples for one filter, ordered by sample index."""

    doc_id: str
    keys: list[str | None]  # vote keys; None = invalid (nothing extracted) - abstains
    correct: list[bool]
    finish_reasons: list[str] | None = None  # "stop" | "length" | ...
    gen_tokens: list[int] | None = None
    outcomes: list[str | None] | None = None  # thinking outcome per sample (harness.grading.grader)
    thought_tokens: list[int] | None = None

    def __post_init__(self) -> None:
        n = len(self.keys)
        for name in ("correct", "finish_reasons", "gen_tokens", "outcomes", "thought_tokens"):
            value = getattr(self, name)
            assert value is None or len(value) == n, f"doc {self.doc_id!r}: {len(value)} {name} for {n} keys"


def default_ks(n: int, include_n: bool = True) -> list[int]:
    """The ks reported when none are given: the powers of two up to n, and n itself (maj@n is
    self-consistency's headline) unless `include_n` is false (a task spec's default `metrics.ks`,
    which its schema documents as powers of two)."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if include_n and n >= 1 and ks[-1] != n:
        ks.append(n)
    return ks


# ----------------------------------------------------------------------------------------------
# pass@k
# ----------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. (2021): P(at least one of k samples drawn without replacement from n, c of them
    correct, is correct) = 1 - C(n-c, k) / C(n, k), as a product of ratios (no huge binomials)."""
    assert 0 <= c <= n and 1 <= k <= n, f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})"
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


# ----------------------------------------------------------------------------------------------
# maj@k
# ----------------------------------------------------------------------------------------------


def vote_groups(keys: Sequence[str | None], correct: Sequence[bool]) -> tuple[tuple[tuple[int, bool], ...], int]:
    """((count, is_correct) per distinct key in order of first occurrence, number of invalid samples).
    A key is correct when any sample carrying it is (equal keys are equivalent answers)."""
    counts: dict[str, list] = {}
    invalid = 0
    for key, ok in zip(keys, correct):
        if key is None:
            invalid += 1
        elif key in counts:
            counts[key][0] += 1
            counts[key][1] = counts[key][1] or bool(ok)
        else:
            counts[key] = [1, bool(ok)]
    return tuple((c, ok) for c, ok in counts.values()), invalid


# Every coefficient below counts subsets of j <= n samples, so it is at most C(n, n // 2); int64
# holds that exactly up to n = 66, and numpy's object dtype (Python ints) is exact beyond.
_INT64_MAX_N = 66


@lru_cache(maxsize=4096)
def _binomial_row(m: int, exact_big: bool) -> np.ndarray:
    """[C(m, 0), ..., C(m, m)]."""
    return np.array([math.comb(m, j) for j in range(m + 1)], dtype=object if exact_big else np.int64)


@lru_cache(maxsize=65536)
def _maj_winning_subsets(groups: tuple[tuple[int, bool], ...], invalid: int, k: int) -> int:
    """How many of the C(n, k) size-k subsets elect a correct key (exact integer).

    The vote winner is the key with the most votes in the subset; a tie goes to the key whose first
    occurrence among all n samples is earliest (the order of `groups`). A subset of invalid samples
    only elects nothing (wrong).

    For each vote count t the winner g can have: every key before g must get < t votes and every
    key after g <= t. Keys with fewer than t samples cannot reach t and, like invalid samples, are
    free. Walking the contenders (>= t samples) in order with generating polynomials in x (x^j:
    j samples chosen), `before` counts choices where no winner is picked yet (all caps t - 1) and
    `after` choices where a correct winner with exactly t votes has been picked (later caps t):

        after  <- after * Q(m, t) + [key correct] * C(m, t) x^t * before
        before <- before * Q(m, t - 1),       Q(m, cap) = sum_{j <= cap} C(m, j) x^j

    The free samples then fill the subset up to k: sum_j after[j] * C(free, k - j). Polynomials are
    truncated at degree k; all counts are exact integers. The lru_cache serves problems with the
    same vote pattern (most unanimous ones).
    """
    n = invalid + sum(m for m, _ in groups)
    exact_big = n > _INT64_MAX_N
    total = 0
    for t in range(1, min(k, max((m for m, _ in groups), default=0)) + 1):
        contenders = [(m, ok) for m, ok in groups if m >= t]
        last_winner = max((i for i, (_, ok) in enumerate(contenders) if ok), default=-1)
        if last_winner < 0:
            continue
        before = _binomial_row(0, exact_big)  # the polynomial 1
        after = before * 0
        for i, (m, ok) in enumerate(contenders):
            row = _binomial_row(m, exact_big)
            after = np.convolve(after, row[: t + 1])[: k + 1]
            if ok:
                picked = np.concatenate([np.zeros(t, dtype=row.dtype), row[t] * before])[: k + 1]
                after = _add(after, picked)
            if i < last_winner:
                before = np.convolve(before, row[:t])[: k + 1]
        free = invalid + sum(m for m, _ in groups if m < t)
        fill = _binomial_row(free, exact_big)
        j = np.arange(max(0, k - free), min(len(after), k + 1))  # after[j] * C(free, k - j) terms that exist
        total += int(np.dot(after[j], fill[k - j])) if j.size else 0
    return total


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) < len(b):
        a, b = b, a
    out = a.copy()
    out[: len(b)] += b
    return out


def maj_at_k(keys: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """Expected majority-vote correctness over all size-k subsets of the samples (exact)."""
    n = len(keys)
    assert 1 <= k <= n, f"maj@{k} needs 1 <= k <= n={n}"
    groups, invalid = vote_groups(keys, correct)
    return _maj_winning_subsets(groups, invalid, k) / math.comb(n, k)  # int / int: correctly rounded


# ----------------------------------------------------------------------------------------------
# Standard errors and the top level
# ----------------------------------------------------------------------------------------------


def mean_stderr_ci(
    scores: Sequence[float], clip: tuple[float, float] | None = (0.0, 1.0)
) -> tuple[float, float, list[float]]:
    """(mean, clustered standard error, 95% normal-approximation interval) of per-problem scores.
    SE = sample std (ddof=1) / sqrt(N); with N = 1 there is no spread to measure and SE is 0.0.
    The interval is clipped to `clip` (proportions stay within [0, 1])."""
    x = np.asarray(scores, dtype=float)
    assert x.size > 0, "no scores"
    mean = float(x.mean())
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else 0.0
    lo, hi = mean - Z_95 * se, mean + Z_95 * se
    if clip is not None:
        lo, hi = max(clip[0], lo), min(clip[1], hi)
    return mean, se, [lo, hi]


def _sample_count(docs: Sequence[DocSamples]) -> int:
    n = max(len(d.keys) for d in docs)
    short = [d.doc_id for d in docs if len(d.keys) != n]
    if short:
        raise AssertionError(f"every problem needs all n={n} samples; {len(short)} have fewer (first: {short[0]!r})")
    return n


# ----------------------------------------------------------------------------------------------
# The metric registry: a metric is one decorated function of one problem's samples
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem's samples for one filter, with what several metrics share computed once."""

    doc: DocSamples
    n: int
    correct: int  # samples scored correct
    groups: tuple[tuple[int, bool], ...]  # vote_groups: (count, correct) per distinct key
    invalid: int  # samples with no valid answer


@dataclass(frozen=True, slots=True)
class Metric:
    family: str  # "acc", or "maj@" for one metric per k (maj@1, maj@2, ...), "mean@" for mean@n
    score: Callable[[Problem, int], float]  # (problem, k) -> that problem's score; k unused unless per-k
    per_k: bool = False  # one metric per k in ks
    needs: str | None = None  # "finish_reasons" / "gen_tokens": reported only when every problem has them
    proportion: bool = True  # a rate in [0, 1] (its interval is clipped there)


METRICS: list[Metric] = []  # in display order


def register_metric(family: str, *, per_k: bool = False, needs: str | None = None, proportion: bool = True):
    """Decorator: `score(problem, k) -> float` becomes a reported metric (mean over problems, with
    a standard error clustered by problem), shown in registration order."""

    def add(score: Callable[[Problem, int], float]) -> Callable[[Problem, int], float]:
        assert all(m.family != family for m in METRICS), f"metric {family!r} registered twice"
        METRICS.append(Metric(family, score, per_k, needs, proportion))
        return score

    return add


@register_metric("acc")
def _acc(p: Problem, k: int) -> float:
    return float(bool(p.doc.correct[0]))  # the first sample: what a single greedy run reports


@register_metric("mean@")
def _mean_at_n(p: Problem, k: int) -> float:
    return p.correct / p.n


@register_metric("maj@", per_k=True)
def _maj_at_k(p: Problem, k: int) -> float:
    return _maj_winning_subsets(p.groups, p.invalid, k) / math.comb(p.n, k)


@register_metric("pass@", per_k=True)
def _pass_at_k(p: Problem, k: int) -> float:
    return pass_at_k(p.n, p.correct, k)


@register_metric("invalid_rate")
def _invalid_rate(p: Problem, k: int) -> float:
    return p.invalid / p.n


@register_metric("truncation_rate", needs="finish_reasons")
def _truncation_rate(p: Problem, k: int) -> float:
    return sum(r == "length" for r in p.doc.finish_reasons) / p.n  # type: ignore[union-attr]


@register_metric("no_answer_in_budget_rate", needs="outcomes")
def _no_answer_in_budget_rate(p: Problem, k: int) -> float:
    """Chains that never closed their think block (no answer, no vote): beside invalid and truncation."""
    return sum(o == "no_answer_in_budget" for o in p.doc.outcomes) / p.n  # type: ignore[union-attr]


@register_metric("mean_thought_tokens", needs="thought_tokens", proportion=False)
def _mean_thought_tokens(p: Problem, k: int) -> float:
    return float(np.mean(p.doc.thought_tokens))


@register_metric("mean_gen_tokens", needs="gen_tokens", proportion=False)
def _mean_gen_tokens(p: Problem, k: int) -> float:
    return float(np.mean(p.doc.gen_tokens))


def metric_families() -> list[str]:
    """The registered metric families in display order (for report tables), then the extras
    compute_metrics adds without a per-problem score."""
    return [m.family for m in METRICS] + ["median_gen_tokens"]


def per_problem_scores(docs: Sequence[DocSamples], ks: Sequence[int] | None = None) -> dict[str, dict[str, float]]:
    """metric -> {doc_id: that problem's score}, for every registered metric. The metric is the
    mean of these scores; paired comparisons between runs align them by doc_id. ks default to
    default_ks(n); k > n is skipped."""
    if not docs:
        return {}
    n = _sample_count(docs)
    ks = sorted({k for k in (ks if ks is not None else default_ks(n)) if 1 <= k <= n})
    metrics = [m for m in METRICS if m.needs is None or all(getattr(d, m.needs) is not None for d in docs)]
    names = {m.family: ([f"{m.family}{k}" for k in ks] if m.per_k else [f"mean@{n}" if m.family == "mean@" else m.family])
             for m in metrics}
    out: dict[str, dict[str, float]] = {name: {} for m in metrics for name in names[m.family]}
    for d in docs:
        groups, invalid = vote_groups(d.keys, d.correct)
        problem = Problem(d, n, sum(map(bool, d.correct)), groups, invalid)
        for m in metrics:
            for name, k in zip(names[m.family], ks if m.per_k else [n]):
                out[name][d.doc_id] = m.score(problem, k)
    return out


def compute_metrics(docs: Sequence[DocSamples], ks: Sequence[int] | None = None) -> dict[str, float | int | list[float]]:
    """Every metric with `<metric>_stderr` and `<metric>_ci` ([lo, hi], 95%), plus n_problems,
    n_samples (n per problem) and median_gen_tokens (over all samples; no stderr). {} for no docs.

    Keys: acc, mean@<n>, maj@<k>, pass@<k> (k in ks, k <= n), invalid_rate, truncation_rate
    (when finish reasons are given), mean_gen_tokens / median_gen_tokens (when token counts are)."""
    scores = per_problem_scores(docs, ks)
    if not scores:
        return {}
    result: dict[str, float | int | list[float]] = {"n_problems": len(docs), "n_samples": len(docs[0].keys)}
    proportion = {m.family: m.proportion for m in METRICS}
    for metric, by_doc in scores.items():
        family = metric.split("@", 1)[0] + "@" if "@" in metric else metric
        mean, se, ci = mean_stderr_ci(list(by_doc.values()), clip=(0.0, 1.0) if proportion.get(family, True) else None)
        result[metric], result[f"{metric}_stderr"], result[f"{metric}_ci"] = mean, se, ci
    if "mean_gen_tokens" in scores:
        result["median_gen_tokens"] = float(np.median([t for d in docs for t in d.gen_tokens]))  # type: ignore[union-attr]
    return result


def doc_samples(rows: Sequence[dict], filt: str, comparator: str | None = None) -> list[DocSamples]:
    """DocSamples per problem (sorted by doc id) for one filter, from sample rows (samples.jsonl
    lines). With the math comparator, equivalent answers with different canonical keys are merged
    per problem before voting (harness.grading.cluster_keys)."""
    from harness.grading import cluster_keys
    from harness.scoring.records import doc_sort_key, group_by_doc

    def keys(v: list[dict]) -> list[str | None]:
        ks = [(r.get("keys") or {}).get(filt) for r in v]
        if comparator == "math":
            merged = cluster_keys([(r.get("answers") or {}).get(filt) for r in v], "math")
            ks = [m if k is not None else None for k, m in zip(ks, merged)]
        return ks

    thinking = any(r.get("outcome") is not None for r in rows)  # a thinking run: its rates are reported
    counted = thinking and all(r.get("thought_tokens") is not None for r in rows)
    return [
        DocSamples(
            doc_id=d,
            keys=keys(v),
            correct=[bool((r.get("scores") or {}).get(filt, 0.0)) for r in v],
            finish_reasons=[r.get("finish_reason") or "" for r in v],
            gen_tokens=[int(r.get("generated_tokens") or 0) for r in v],
            outcomes=[r.get("outcome") for r in v] if thinking else None,
            thought_tokens=[int(r["thought_tokens"]) for r in v] if counted else None,
        )
        for d, v in sorted(group_by_doc(rows).items(), key=lambda kv: doc_sort_key(kv[0]))
    ]


LENGTH_EDGES = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


def by_chain_length(rows: Sequence[dict], filt: str, edges: Sequence[int] = LENGTH_EDGES) -> list[dict]:
    """Accuracy by chain length (generated tokens) for one filter: per bucket (lo, hi], its samples,
    accuracy, and the share cut by max_tokens. Only non-empty buckets; samples, not problems, so no
    clustered stderr (a problem's samples fall into different buckets)."""
    buckets: dict[int, list[dict]] = {}
    for r in rows:
        if r.get("error"):
            continue
        t = int(r.get("generated_tokens") or 0)
        i = next((j for j, e in enumerate(edges) if t <= e), len(edges))
        buckets.setdefault(i, []).append(r)
    out = []
    for i in sorted(buckets):
        rs = buckets[i]
        lo = 0 if i == 0 else edges[i - 1]
        out.append({"tokens": f"{lo + 1 if i else 0}–{edges[i]}" if i < len(edges) else f">{edges[-1]}",
                    "samples": len(rs),
                    "accuracy": sum(bool((r.get("scores") or {}).get(filt)) for r in rs) / len(rs),
                    "truncated": sum(r.get("finish_reason") == "length" for r in rs) / len(rs)})
    return out
