"""Paired statistics for comparing two runs problem by problem (pure functions on numpy and scipy).

Two runs of the same task answer the same problems, so every comparison here is *paired*: the unit
is the problem, and what varies is the per-problem difference ``d_i = score_run(i) - score_base(i)``.
Pairing removes the (large) between-problem variance that an unpaired comparison of two accuracies
would carry, so small regressions become detectable.

- ``paired_bootstrap``: percentile bootstrap CI of ``mean(d)``, resampling problems with
  replacement from a seeded ``numpy.random.Generator`` (deterministic for a given seed).
- ``mcnemar_exact``: McNemar's exact test on paired binary outcomes, i.e. a two-sided binomial test
  (p = 1/2) on the discordant pairs (``scipy.stats.binomtest``).
- ``sign_flip_test``: the exact paired permutation (sign-flip) test on the differences, one- or
  two-sided. Under H0 the two runs are exchangeable within a problem, so each ``d_i`` is as likely
  to have had the opposite sign. Exact (by dynamic programming over the lattice of possible sums)
  whenever the scores lie on a lattice (acc: {0,1}; mean@n: multiples of 1/n), else a seeded Monte
  Carlo estimate. For binary scores it is exactly the one-sided McNemar/sign test. It is used by
  the regression gate instead of a paired t-test because the t-test is anti-conservative when few
  problems differ (3 problems flipped the same way out of 1000 give t-test p ≈ 0.04 but exact
  p = 1/8), and instead of a bootstrap p-value because the bootstrap is not exact at small sizes.
  scipy has no exact sign-flip test for lattice-valued differences, hence the dynamic programming here.
- CoT-length buckets: shared bucket edges from pooled generation lengths, and per-bucket accuracy
  with Wilson intervals (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats as _sp

from harness.scoring.records import doc_sort_key

DEFAULT_N_BOOT = 10_000
_CHUNK = 512  # bootstrap replicates drawn per call (bounded memory; same stream as one big draw)


# ----------------------------------------------------------------------------- pairing


def align(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The problems both score maps share, in a stable order, with their two score vectors."""
    shared = sorted(set(a) & set(b), key=doc_sort_key)
    x = np.array([float(a[k]) for k in shared], dtype=np.float64)
    y = np.array([float(b[k]) for k in shared], dtype=np.float64)
    return shared, x, y



# ----------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class PairedDiff:
    n: int  # shared problems
    mean_a: float  # reference (baseline / first run)
    mean_b: float  # candidate
    diff: float  # mean_b - mean_a
    ci_low: float
    ci_high: float
    se: float  # bootstrap standard error of the difference
    alpha: float
    n_boot: int
    seed: int

    def as_dict(self) -> dict:
        return asdict(self)


def bootstrap_means(d: Sequence[float] | np.ndarray, n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of ``d``.

    Replicate r uses the r-th row of ``Generator(PCG64(seed)).integers(0, n, size=(n_boot, n))``,
    drawn in chunks (identical to drawing one index vector per replicate in a loop)."""
    d = np.asarray(d, dtype=np.float64)
    n = d.size
    if n == 0:
        raise ValueError("bootstrap of an empty sample")
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, _CHUNK):
        m = min(_CHUNK, n_boot - start)
        idx = rng.integers(0, n, size=(m, n), dtype=np.int64)
        out[start:start + m] = d[idx].mean(axis=1)
    return out


def paired_bootstrap(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, n_boot: int = DEFAULT_N_BOOT,
                     alpha: float = 0.05, seed: int = 0) -> PairedDiff:
    """Percentile bootstrap CI (level 1 - alpha) of mean(b - a) over paired problems."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    d = b - a
    means = bootstrap_means(d, n_boot, seed)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return PairedDiff(n=int(d.size), mean_a=float(a.mean()), mean_b=float(b.mean()), diff=float(d.mean()),
                      ci_low=float(lo), ci_high=float(hi), se=float(means.std(ddof=1)) if n_boot > 1 else 0.0,
                      alpha=alpha, n_boot=n_boot, seed=seed)


# ----------------------------------------------------------------------------- exact binomial / McNemar


def binom_half_cdf(k: int, m: int) -> float:
    """P(X <= k) for X ~ Binomial(m, 1/2)."""
    return float(_sp.binom.cdf(k, m, 0.5))


@dataclass(frozen=True)
class McNemar:
    n: int  # pairs
    a_only: int  # a correct, b wrong
    b_only: int  # b correct, a wrong
    both: int
    neither: int
    p_value: float  # exact two-sided

    @property
    def discordant(self) -> int:
        return self.a_only + self.b_only

    def as_dict(self) -> dict:
        return {**asdict(self), "discordant": self.discordant}


def mcnemar_exact_counts(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value from the two discordant counts: a two-sided binomial test of
    ``a_only`` successes in ``a_only + b_only`` trials at p = 1/2 (1 when there are none)."""
    m = a_only + b_only
    if m == 0:
        return 1.0
    return float(_sp.binomtest(a_only, m, 0.5).pvalue)


def mcnemar_exact(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray) -> McNemar:
    a = np.asarray(a).astype(bool)
    b = np.asarray(b).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    a_only = int((a & ~b).sum())
    b_only = int((~a & b).sum())
    return McNemar(n=int(a.size), a_only=a_only, b_only=b_only, both=int((a & b).sum()),
                   neither=int((~a & ~b).sum()), p_value=mcnemar_exact_counts(a_only, b_only))


def is_binary(*arrays: Iterable[float]) -> bool:
    return all(np.isin(np.asarray(x, dtype=np.float64), (0.0, 1.0)).all() for x in arrays)


# ----------------------------------------------------------------------------- sign-flip test


@dataclass(frozen=True)
class SignFlip:
    statistic: float  # sum of the differences (b - a)
    mean_diff: float
    n: int
    n_nonzero: int
    n_positive: int
    n_negative: int
    p_value: float
    alternative: str  # less | greater | two-sided (about mean(b - a) vs 0)
    method: str  # "exact" | "monte-carlo (B=...)"

    def as_dict(self) -> dict:
        return asdict(self)


_LATTICE_MAX_DENOMINATOR = 10_000
_EXACT_MAX_WORK = 2e8  # nonzero count × lattice half-width; beyond this use Monte Carlo


def _lattice(values: np.ndarray) -> int | None:
    """Smallest L such that every value × L is an integer (within 1e-9), or None."""
    L = 1
    for v in np.unique(values):
        f = Fraction(float(v)).limit_denominator(_LATTICE_MAX_DENOMINATOR)
        if abs(float(f) - float(v)) > 1e-9:
            return None
        L = L * f.denominator // math.gcd(L, f.denominator)
        if L > _LATTICE_MAX_DENOMINATOR * 100:
            return None
    return L


def _exact_sign_flip_dist(steps: np.ndarray) -> np.ndarray:
    """Distribution of sum(±s_i) (independent fair signs) over integers -S..S, index = value + S."""
    S = int(steps.sum())
    dist = np.zeros(2 * S + 1, dtype=np.float64)
    dist[S] = 1.0
    reach = 0  # support is [S - reach, S + reach]
    for s in steps.tolist():
        lo, hi = S - reach, S + reach + 1
        cur = dist[lo:hi].copy()
        dist[lo:hi] = 0.0
        dist[lo - s:hi - s] += 0.5 * cur
        dist[lo + s:hi + s] += 0.5 * cur
        reach += s
    return dist


def sign_flip_test(d: Sequence[float] | np.ndarray, alternative: str = "less", *, seed: int = 0,
                   n_resamples: int = 20_000) -> SignFlip:
    """Paired permutation test of H0 "the two runs are exchangeable within each problem" on the
    differences ``d = b - a``; ``alternative="less"`` asks whether b is below a.

    Exact whenever the |d_i| lie on a lattice k/L (binary scores, mean@n) and the work is bounded,
    otherwise Monte Carlo with ``n_resamples`` seeded sign draws (p = (1 + #extreme) / (1 + B))."""
    if alternative not in ("less", "greater", "two-sided"):
        raise ValueError(f"alternative must be less, greater or two-sided, not {alternative!r}")
    d = np.asarray(d, dtype=np.float64)
    nz = d[d != 0.0]
    T = float(d.sum())
    base = dict(statistic=T, mean_diff=float(d.mean()) if d.size else 0.0, n=int(d.size), n_nonzero=int(nz.size),
                n_positive=int((nz > 0).sum()), n_negative=int((nz < 0).sum()), alternative=alternative)
    if nz.size == 0:
        return SignFlip(p_value=1.0, method="exact", **base)
    mags = np.abs(nz)
    L = _lattice(mags)
    if L is not None and nz.size * float(mags.sum()) * L <= _EXACT_MAX_WORK:
        steps = np.rint(mags * L).astype(np.int64)
        t = int(np.rint(T * L))
        dist = _exact_sign_flip_dist(steps)
        S = int(steps.sum())
        p_le = float(dist[: t + S + 1].sum())
        p_ge = float(dist[t + S:].sum())
        method = "exact"
    else:
        rng = np.random.default_rng(seed)
        le = ge = 0
        eps = 1e-12 * max(1.0, float(mags.sum()))
        for start in range(0, n_resamples, _CHUNK):
            m = min(_CHUNK, n_resamples - start)
            signs = rng.integers(0, 2, size=(m, nz.size), dtype=np.int8) * 2 - 1
            sims = signs @ mags
            le += int((sims <= T + eps).sum())
            ge += int((sims >= T - eps).sum())
        p_le = (1 + le) / (1 + n_resamples)
        p_ge = (1 + ge) / (1 + n_resamples)
        method = f"monte-carlo (B={n_resamples})"
    if alternative == "less":
        p = p_le
    elif alternative == "greater":
        p = p_ge
    else:
        p = 2.0 * min(p_le, p_ge)
    return SignFlip(p_value=float(min(1.0, p)), method=method, **base)


# ----------------------------------------------------------------------------- intervals, buckets


def wilson_ci(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval (level 1 - alpha) for a binomial proportion k/n; exactly 0 at k = 0
    and 1 at k = n; (nan, nan) when n = 0."""
    if n == 0:
        return (float("nan"), float("nan"))
    ci = _sp.binomtest(k, n).proportion_ci(1 - alpha, method="wilson")
    return (float(ci.low), float(ci.high))


def length_bucket_edges(lengths: Iterable[int], n_buckets: int = 5) -> list[int]:
    """Integer edges e_0 < e_1 < ... < e_m of CoT-length buckets [e_i, e_{i+1}), from quantiles of
    the pooled lengths (pool every run to compare, so all use the same buckets)."""
    arr = np.asarray(list(lengths), dtype=np.float64)
    if arr.size == 0:
        return []
    qs = np.quantile(arr, np.linspace(0.0, 1.0, n_buckets + 1))
    edges = sorted(set(int(math.ceil(q)) for q in qs[1:-1]))
    lo, hi = int(arr.min()), int(arr.max()) + 1
    return [lo] + [e for e in edges if lo < e < hi] + [hi]


def bucket_label(lo: int, hi: int) -> str:
    return f"{lo}–{hi - 1}" if hi - 1 > lo else f"{lo}"


@dataclass(frozen=True)
class Bucket:
    lo: int  # inclusive
    hi: int  # exclusive
    n: int
    correct: int
    acc: float
    ci_low: float
    ci_high: float

    @property
    def label(self) -> str:
        return bucket_label(self.lo, self.hi)


def bucket_accuracy(lengths: Sequence[int], correct: Sequence[bool], edges: Sequence[int],
                    alpha: float = 0.05) -> list[Bucket]:
    """Accuracy (with a Wilson interval) of the samples whose length falls in each bucket; lengths
    outside [edges[0], edges[-1]) go to the nearest end bucket."""
    if len(edges) < 2:
        return []
    lens = np.asarray(lengths, dtype=np.float64)
    ok = np.asarray(correct).astype(bool)
    inner = np.asarray(edges[1:-1], dtype=np.float64)
    which = np.searchsorted(inner, lens, side="right")
    out = []
    for i in range(len(edges) - 1):
        mask = which == i
        n = int(mask.sum())
        k = int(ok[mask].sum())
        lo, hi = wilson_ci(k, n, alpha)
        out.append(Bucket(lo=int(edges[i]), hi=int(edges[i + 1]), n=n, correct=k,
                          acc=k / n if n else float("nan"), ci_low=lo, ci_high=hi))
    return out
