"""A finished run directory loaded for analysis (Run), its per-problem scores, metric names, and the
check that runs being compared evaluated the same task. Shared by compare, regress and report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from harness import HarnessError
from harness.runs.rundir import SAMPLES, load_results
from harness.scoring.metrics import doc_samples, per_problem_scores
from harness.scoring.records import group_by_doc, read_samples



@dataclass
class Run:
    path: Path
    results: dict
    rows: list[dict]
    docs: dict[str, dict] = field(default_factory=dict)  # doc_id -> docs.jsonl row (may be empty)
    label: str = ""
    _scores: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict, repr=False)
    _meta: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def spec_hash(self) -> str:
        return str(self.results.get("spec_hash") or "")

    @property
    def task(self) -> str:
        return str(self.results.get("task") or "?")

    @property
    def model_id(self) -> str:
        m = self.results.get("model")
        return str(m.get("id") if isinstance(m, dict) else m or "?")

    @property
    def chat_template_hash(self) -> str | None:
        """results.json's chat_template_hash; runs written before it was filled in have it only
        in the backend section (as chat_template_sha256)."""
        backend = self.results.get("backend")
        return self.results.get("chat_template_hash") or (backend.get("chat_template_sha256") if isinstance(backend, dict) else None)

    @property
    def filters(self) -> list[str]:
        return list(self.results.get("metrics", {}))

    @property
    def n(self) -> int:
        n = (self.results.get("sampling") or {}).get("n")
        if n:
            return int(n)
        by_doc = group_by_doc(self.rows)
        return max((len(v) for v in by_doc.values()), default=0)

    @property
    def primary_filter(self) -> str | None:
        p = self.results.get("primary_filter")
        if p in self.filters:
            return p
        return self.filters[0] if self.filters else None

    @property
    def comparator(self) -> str | None:
        """The task's comparator (from the run's resolved spec.yaml), or None when unknown."""
        spec = self.spec or {}
        return (spec.get("scoring") or {}).get("comparator")

    @property
    def spec(self) -> dict | None:
        """The run's resolved spec.yaml as a dict, or None when absent or unreadable."""
        if "spec" not in self._meta:
            spec = None
            sp = self.path / "spec.yaml"
            if sp.exists():
                try:
                    import yaml

                    spec = yaml.safe_load(sp.read_text(encoding="utf-8"))
                except Exception:
                    spec = None
            self._meta["spec"] = spec if isinstance(spec, dict) else None
        return self._meta["spec"]

    @property
    def ks(self) -> list[int] | None:
        ks = self.results.get("ks")
        return [int(k) for k in ks] if ks else None


def load_run(path: str | Path) -> Run:
    """A finished run directory (or its results.json): results, samples and docs."""
    p, results = load_results(path)
    rows = read_samples(p / SAMPLES)
    if not rows:
        raise HarnessError(f"{p}: no samples in {SAMPLES}")
    docs: dict[str, dict] = {}
    dp = p / "docs.jsonl"
    if dp.exists():
        for line in dp.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                docs[str(r.get("doc_id"))] = r
    return Run(path=p, results=results, rows=rows, docs=docs)


def problem_scores(run: Run, filt: str) -> dict[str, dict[str, float]]:
    """metric -> {doc_id: score} for one filter (harness.scoring.metrics.per_problem_scores), cached."""
    if filt not in run._scores:
        if filt not in run.filters:
            raise HarnessError(f"{run.path}: unknown filter {filt!r}; this run has: {', '.join(run.filters) or 'none'}")
        try:
            run._scores[filt] = per_problem_scores(doc_samples(run.rows, filt, run.comparator), run.ks)
        except AssertionError as e:
            raise HarnessError(f"{run.path}: {e}")
    return run._scores[filt]


NON_SCORE_METRICS = ("invalid_rate", "truncation_rate", "mean_gen_tokens", "median_gen_tokens", "n_problems", "n_samples")


def canonical_metric(name: str, n: int) -> str:
    """mean@<n> → mean@n (so runs with different n line up); every other name unchanged."""
    return "mean@n" if name == f"mean@{n}" else name


def resolve_metric(name: str, available: Iterable[str], n: int, where: str = "") -> str:
    """A user's metric name (acc, mean@n, maj@8, pass@n, ...) → the key in this run's scores."""
    avail = list(available)
    cand = name.strip()
    if cand in ("mean@n", "mean"):
        cand = f"mean@{n}"
    elif cand.endswith("@n"):
        cand = f"{cand[:-2]}@{n}"
    if cand in avail:
        return cand
    shown = ", ".join(canonical_metric(m, n) for m in avail if m not in NON_SCORE_METRICS)
    raise HarnessError(f"unknown metric {name!r}{' for ' + where if where else ''}; available: {shown}")


def spec_difference(a: Run, b: Run) -> str:
    """Where two runs' resolved specs differ, e.g. "sampling.seed: 1234 vs 5"; "" when unknown."""
    sa, sb = a.spec, b.spec
    if sa is None or sb is None:
        return ""
    diffs: list[str] = []

    def walk(x: Any, y: Any, path: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in list(dict.fromkeys([*x, *y])):
                walk(x.get(k), y.get(k), f"{path}.{k}" if path else str(k))
        elif x != y:
            show = lambda v: (repr(v)[:30] + "…") if len(repr(v)) > 31 else repr(v)  # noqa: E731
            diffs.append(f"{path}: {show(x)} vs {show(y)}")

    walk(sa, sb, "")
    if not diffs:
        return ""
    return "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")


def check_same_task(runs: Sequence[Run], force: bool, verb: str = "compare") -> list[str]:
    """Refuse (HarnessError) when the runs' task spec hashes differ, unless forced. Returns warnings."""
    hashes = {r.spec_hash for r in runs}
    if len(hashes) <= 1:
        return []
    a = runs[0]
    b = next(r for r in runs if r.spec_hash != a.spec_hash)
    where = spec_difference(a, b)
    msg = (f"runs have different task specs: {a.path} ({a.task}, spec {a.spec_hash[:12] or '?'}) vs "
           f"{b.path} ({b.task}, spec {b.spec_hash[:12] or '?'})" + (f" [{where}]" if where else ""))
    if not force:
        raise HarnessError(f"{msg}; pass --force to {verb} them anyway")
    return [f"warning: {msg}; comparing anyway (--force)"]


def label_runs(runs: Sequence[Run]) -> None:
    """Short unique column labels: the model id, else model@dir, else #i."""
    models = [r.model_id for r in runs]
    labels = models if len(set(models)) == len(models) else [f"{r.model_id}@{r.path.name}" for r in runs]
    if len(set(labels)) != len(labels):
        labels = [f"#{i + 1} {lab}" for i, lab in enumerate(labels)]
    for r, lab in zip(runs, labels):
        r.label = lab
