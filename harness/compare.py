"""`harness compare RUN [RUN ...]`: runs side by side, and paired differences between them.

Sections (printed with rich; ``--markdown FILE`` and ``--csv FILE`` write the same content):

1. metrics — every metric of every filter with its 95% CI, one column per run;
2. paired — for each pair of runs (the later run minus the earlier one), each filter and each
   per-problem metric: the difference on the problems both runs answered, with a paired-bootstrap
   95% CI over problems (seeded), and a test: McNemar's exact test for 0/1 scores (acc: first
   sample correct; maj@n when it is 0/1) or the exact sign-flip test for fractional per-problem
   scores (mean@n, maj@k, pass@k);
3. generation — problems, samples, mean/median generated tokens, truncation, error and invalid
   rates, side by side;
4. CoT length — accuracy of the samples in each generated-length bucket (shared edges from the
   pooled lengths of all runs), per run.

Runs must share the task spec hash; otherwise compare refuses (one line) unless ``--force``.
The run-loading helpers here (``load_run``, ``problem_scores``) are also used by regress and the
HTML report.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from harness import HarnessError
from harness.rundir import SAMPLES, group_by_doc, load_results, read_samples
from harness.runner import doc_samples

# ----------------------------------------------------------------------------------------------
# Loading runs
# ----------------------------------------------------------------------------------------------


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
    """metric -> {doc_id: score} for one filter (harness.metrics.per_problem_scores), cached."""
    from harness import metrics

    if filt not in run._scores:
        if filt not in run.filters:
            raise HarnessError(f"{run.path}: unknown filter {filt!r}; this run has: {', '.join(run.filters) or 'none'}")
        try:
            run._scores[filt] = metrics.per_problem_scores(doc_samples(run.rows, filt, run.comparator), run.ks)
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


# ----------------------------------------------------------------------------------------------
# Analysis (pandas frames, long form)
# ----------------------------------------------------------------------------------------------


def _metric_sort_key(name: str) -> tuple:
    from harness.report import _metric_order

    return _metric_order(name)


def metrics_frame(runs: Sequence[Run], filters: Sequence[str] | None = None, metrics: Sequence[str] | None = None):
    """run, filter, metric, value, stderr, ci_low, ci_high — every metric in each results.json."""
    import pandas as pd

    recs = []
    for r in runs:
        for filt, ms in r.results.get("metrics", {}).items():
            if filters and filt not in filters:
                continue
            for name in ms:
                if name.endswith(("_stderr", "_ci")) or name in ("n_problems", "n_samples"):
                    continue
                canon = canonical_metric(name, r.n)
                if metrics and canon not in metrics and name not in metrics:
                    continue
                ci = ms.get(f"{name}_ci") or [None, None]
                recs.append({"run": r.label, "filter": filt, "metric": canon, "value": ms[name],
                             "stderr": ms.get(f"{name}_stderr"), "ci_low": ci[0], "ci_high": ci[1]})
    return pd.DataFrame(recs, columns=["run", "filter", "metric", "value", "stderr", "ci_low", "ci_high"])


def default_paired_metrics(runs: Sequence[Run]) -> list[str]:
    """acc, mean@n and every maj@k with k > 1 that all runs have."""
    ks = None
    for r in runs:
        rk = set(r.ks or [])
        ks = rk if ks is None else ks & rk
    return ["acc", "mean@n"] + [f"maj@{k}" for k in sorted(ks or []) if k > 1]


def paired_frame(runs: Sequence[Run], filters: Sequence[str] | None, metrics: Sequence[str] | None, *,
                 seed: int = 0, n_boot: int = 10_000, alpha: float = 0.05):
    """One row per (pair of runs, filter, metric): difference (later − earlier) on shared problems."""
    import pandas as pd

    from harness import stats

    metrics = list(metrics) if metrics else default_paired_metrics(runs)
    recs = []
    for a, b in itertools.combinations(runs, 2):
        common = [f for f in a.filters if f in b.filters and (not filters or f in filters)]
        for filt in common:
            sa, sb = problem_scores(a, filt), problem_scores(b, filt)
            for m in metrics:
                if m in NON_SCORE_METRICS:
                    continue
                try:
                    ka = resolve_metric(m, sa, a.n)
                    kb = resolve_metric(m, sb, b.n)
                except HarnessError:
                    continue  # a metric one of the runs lacks (e.g. maj@16 with n=8)
                ids, x, y = stats.align(sa[ka], sb[kb])
                rec: dict[str, Any] = {"run_a": a.label, "run_b": b.label, "filter": filt,
                                       "metric": canonical_metric(ka, a.n), "n_shared": len(ids)}
                if not ids:
                    recs.append({**rec, "test": "no shared problems"})
                    continue
                pdiff = stats.paired_bootstrap(x, y, n_boot=n_boot, alpha=alpha, seed=seed)
                rec.update(a=pdiff.mean_a, b=pdiff.mean_b, diff=pdiff.diff, ci_low=pdiff.ci_low, ci_high=pdiff.ci_high)
                if stats.is_binary(x, y):
                    mc = stats.mcnemar_exact(x, y)
                    rec.update(test="McNemar", p_value=mc.p_value, a_only=mc.a_only, b_only=mc.b_only)
                else:
                    sf = stats.sign_flip_test(y - x, "two-sided", seed=seed)
                    rec.update(test="sign-flip" + ("" if sf.method == "exact" else " MC"), p_value=sf.p_value, a_only=sf.n_negative, b_only=sf.n_positive)
                recs.append(rec)
    cols = ["run_a", "run_b", "filter", "metric", "n_shared", "a", "b", "diff", "ci_low", "ci_high", "test",
            "p_value", "a_only", "b_only"]
    return pd.DataFrame(recs, columns=cols)


def generation_frame(runs: Sequence[Run]):
    """Per run: problems, samples, mean/median generated tokens, truncation/error rates, and the
    invalid rate (no answer extracted) per filter — from the samples themselves."""
    import numpy as np
    import pandas as pd

    recs = []
    all_filters = list(dict.fromkeys(f for r in runs for f in r.filters))
    for r in runs:
        toks = np.array([int(x.get("generated_tokens") or 0) for x in r.rows], dtype=float)
        ns = len(r.rows)
        rec: dict[str, Any] = {
            "run": r.label, "problems": len({str(x["doc_id"]) for x in r.rows}), "samples": ns,
            "mean_gen_tokens": float(toks.mean()) if ns else None,
            "median_gen_tokens": float(np.median(toks)) if ns else None,
            "truncation_rate": sum(x.get("finish_reason") == "length" for x in r.rows) / ns if ns else None,
            "error_rate": sum(bool(x.get("error")) for x in r.rows) / ns if ns else None,
        }
        for f in all_filters:
            rec[f"invalid_rate[{f}]"] = (sum((x.get("keys") or {}).get(f) is None for x in r.rows) / ns
                                         if f in r.filters and ns else None)
        recs.append(rec)
    return pd.DataFrame(recs)


def length_frame(runs: Sequence[Run], filt: str, n_buckets: int = 5):
    """Accuracy (all samples, filter `filt`) by generated-length bucket; edges shared by all runs."""
    import pandas as pd

    from harness import stats

    pooled = [int(x.get("generated_tokens") or 0) for r in runs for x in r.rows]
    edges = stats.length_bucket_edges(pooled, n_buckets)
    recs = []
    for r in runs:
        if filt not in r.filters:
            continue
        lens = [int(x.get("generated_tokens") or 0) for x in r.rows]
        ok = [bool((x.get("scores") or {}).get(filt, 0.0)) for x in r.rows]
        for bk in stats.bucket_accuracy(lens, ok, edges):
            recs.append({"run": r.label, "filter": filt, "bucket": bk.label, "lo": bk.lo, "hi": bk.hi, "n": bk.n,
                         "acc": bk.acc if bk.n else None, "ci_low": bk.ci_low if bk.n else None,
                         "ci_high": bk.ci_high if bk.n else None})
    return pd.DataFrame(recs, columns=["run", "filter", "bucket", "lo", "hi", "n", "acc", "ci_low", "ci_high"])


@dataclass
class Comparison:
    runs: list[Run]
    metrics: Any  # DataFrames
    paired: Any
    generation: Any
    lengths: Any
    length_filter: str | None
    warnings: list[str]
    seed: int
    n_boot: int


def _canon_user_metric(name: str, runs: Sequence[Run]) -> str:
    """A --metric value → the canonical name used in the tables; unknown names raise HarnessError."""
    m = name.strip()
    if m in ("mean", "mean@n") or any(m == f"mean@{r.n}" for r in runs):
        m = "mean@n"
    elif m.endswith("@n"):
        m = f"{m[:-2]}@{runs[0].n}"
    known = list(dict.fromkeys(canonical_metric(k, r.n) for r in runs for ms in r.results["metrics"].values()
                               for k in ms if not k.endswith(("_stderr", "_ci")) and k not in ("n_problems", "n_samples")))
    if m not in known:
        raise HarnessError(f"unknown metric {name!r}; available: {', '.join(known)}")
    return m


def compare_runs(paths: Sequence[str | Path], *, force: bool = False, metrics: Sequence[str] | None = None,
                 filters: Sequence[str] | None = None, seed: int = 0, n_boot: int = 10_000) -> Comparison:
    if not paths:
        raise HarnessError("compare needs at least one run directory")
    runs = [load_run(p) for p in paths]
    warnings = check_same_task(runs, force)
    label_runs(runs)
    if filters:
        for f in filters:
            if not any(f in r.filters for r in runs):
                raise HarnessError(f"unknown filter {f!r}; the runs have: {', '.join(dict.fromkeys(x for r in runs for x in r.filters))}")
    canon_metrics = [_canon_user_metric(m, runs) for m in metrics] if metrics else None
    common = [f for f in runs[0].filters if all(f in r.filters for r in runs)]
    primary = runs[0].primary_filter
    length_filter = filters[0] if filters else (primary if primary in common else (common[0] if common else None))
    for a, b in itertools.combinations(runs, 2):
        shared = {str(x["doc_id"]) for x in a.rows} & {str(x["doc_id"]) for x in b.rows}
        if not shared:
            warnings.append(f"warning: {a.label} and {b.label} share no problems; no paired comparison")
    return Comparison(
        runs=runs,
        metrics=metrics_frame(runs, filters, canon_metrics),
        paired=paired_frame(runs, filters, canon_metrics, seed=seed, n_boot=n_boot) if len(runs) > 1 else None,
        generation=generation_frame(runs),
        lengths=length_frame(runs, length_filter) if length_filter else None,
        length_filter=length_filter,
        warnings=warnings,
        seed=seed,
        n_boot=n_boot,
    )


# ----------------------------------------------------------------------------------------------
# Presentation: wide tables as lists of string rows, shared by rich, Markdown and CSV
# ----------------------------------------------------------------------------------------------


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and v != v):  # None or NaN
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def _signed(v: Any, digits: int = 4) -> str:
    return "–" if v is None or v != v else f"{v:+.{digits}f}"


def _p(v: Any) -> str:
    if v is None or v != v:
        return "–"
    return f"{v:.2e}" if v < 1e-4 else f"{v:.4f}"


def runs_table(cmp: Comparison) -> tuple[list[str], list[list[str]]]:
    head = ["run", "task", "spec hash", "model", "problems", "n", "seed", "path"]
    rows = [[r.label, r.task, r.spec_hash[:12], r.model_id, str(r.results.get("n_problems", "")), str(r.n),
             str(r.results.get("seed", "")), str(r.path)] for r in cmp.runs]
    return head, rows


def metrics_table(cmp: Comparison) -> tuple[list[str], list[list[str]]]:
    df = cmp.metrics
    labels = [r.label for r in cmp.runs]
    head = ["filter", "metric"] + labels
    if df is None or df.empty:
        return head, []
    keys = list(dict.fromkeys(zip(df["filter"], df["metric"])))
    filt_order = list(dict.fromkeys(df["filter"]))
    keys.sort(key=lambda fm: (filt_order.index(fm[0]), _metric_sort_key(fm[1])))
    cell = {}
    for rec in df.itertuples(index=False):
        s = _num(rec.value)
        if rec.ci_low is not None and rec.ci_low == rec.ci_low:
            s += f" [{_num(rec.ci_low)}, {_num(rec.ci_high)}]"
        cell[(rec.filter, rec.metric, rec.run)] = s
    rows = [[f, m] + [cell.get((f, m, lab), "–") for lab in labels] for f, m in keys]
    return head, rows


def paired_tables(cmp: Comparison) -> list[tuple[str, str, tuple[list[str], list[list[str]]]]]:
    """One table per pair of runs: (label A, label B, (head, rows))."""
    head = ["filter", "metric", "shared", "A", "B", "B − A [95% CI]", "test", "p", "A↑/B↑"]
    df = cmp.paired
    out = []
    for a, b in itertools.combinations(cmp.runs, 2):
        rows = []
        if df is not None and not df.empty:
            for rec in df[(df["run_a"] == a.label) & (df["run_b"] == b.label)].to_dict("records"):
                if not rec.get("n_shared"):
                    rows.append([rec["filter"], rec["metric"], "0", "–", "–", "–", rec.get("test") or "", "–", "–"])
                    continue
                split = (f"{int(rec['a_only'])}/{int(rec['b_only'])}"
                         if rec.get("a_only") is not None and rec.get("a_only") == rec.get("a_only") else "–")
                rows.append([rec["filter"], rec["metric"], str(rec["n_shared"]), _num(rec["a"]), _num(rec["b"]),
                             f"{_signed(rec['diff'])} [{_signed(rec['ci_low'])}, {_signed(rec['ci_high'])}]",
                             rec["test"], _p(rec["p_value"]), split])
        out.append((a.label, b.label, (head, rows)))
    return out


def generation_table(cmp: Comparison) -> tuple[list[str], list[list[str]]]:
    df = cmp.generation
    labels = [r.label for r in cmp.runs]
    head = ["", *labels]
    if df is None or df.empty:
        return head, []
    rows = []
    for col in df.columns:
        if col == "run":
            continue
        vals = list(df[col])
        fmt = (lambda v: _num(v, 1)) if "tokens" in col else ((lambda v: str(int(v))) if col in ("problems", "samples") else _num)
        rows.append([col] + [fmt(v) if v is not None and v == v else "–" for v in vals])
    return head, rows


def length_table(cmp: Comparison) -> tuple[list[str], list[list[str]]]:
    labels = [r.label for r in cmp.runs]
    head = ["generated tokens", *labels]
    df = cmp.lengths
    if df is None or df.empty:
        return head, []
    buckets = list(dict.fromkeys(df["bucket"]))
    cell = {(rec.bucket, rec.run): (f"{_num(rec.acc, 3)} (n={rec.n})" if rec.n else "– (n=0)") for rec in df.itertuples(index=False)}
    return head, [[b] + [cell.get((b, lab), "–") for lab in labels] for b in buckets]


def _sections(cmp: Comparison) -> list[tuple[str, tuple[list[str], list[list[str]]], str]]:
    out = [("Runs", runs_table(cmp), ""),
           ("Metrics (value [95% CI])", metrics_table(cmp), "")]
    note = (f"A↑/B↑: problems where A (B) scores higher. 95% CI: paired percentile bootstrap over problems "
            f"({cmp.n_boot} resamples, seed {cmp.seed}). Test (two-sided): McNemar's exact test when both runs' "
            "per-problem scores are 0/1 (acc = the first sample of each problem), else the exact (or Monte Carlo) "
            "sign-flip permutation test.")
    for la, lb, table in paired_tables(cmp) if len(cmp.runs) > 1 else []:
        out.append((f"Paired differences: B = {lb} vs A = {la} (shared problems)", table, note))
    out.append(("Generation", generation_table(cmp), ""))
    if cmp.length_filter:
        out.append((f"Accuracy by CoT length (filter {cmp.length_filter}, all samples)", length_table(cmp),
                    "Buckets: quantiles of the pooled generated lengths of all runs."))
    return out


def to_markdown(cmp: Comparison) -> str:
    lines = ["# Run comparison", ""]
    for w in cmp.warnings:
        lines += [f"> {w}", ""]
    for title, (head, rows), note in _sections(cmp):
        lines += [f"## {title}", ""]
        if note:
            lines += [note, ""]
        lines.append("| " + " | ".join(_md(h) for h in head) + " |")
        lines.append("|" + "|".join("---" for _ in head) + "|")
        lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def _md(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def to_csv_frame(cmp: Comparison):
    """One long table: a `section` column (metric | paired | generation | length) and the union of
    the sections' columns."""
    import pandas as pd

    parts = []
    for name, df in (("metric", cmp.metrics), ("paired", cmp.paired), ("generation", cmp.generation), ("length", cmp.lengths)):
        if df is not None and not df.empty:
            parts.append(df.assign(section=name))
    if not parts:
        return pd.DataFrame(columns=["section"])
    out = pd.concat(parts, ignore_index=True, sort=False)
    return out[["section"] + [c for c in out.columns if c != "section"]]


def print_rich(cmp: Comparison, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=max(console.width, 180))
    for w in cmp.warnings:
        console.print(Text(w, style="yellow"))
    left = {"", "filter", "metric", "run", "task", "spec hash", "model", "path", "test", "generated tokens"}
    for title, (head, rows), note in _sections(cmp):
        t = Table(title=title, title_justify="left", min_width=min(len(title) + 4, console.width))
        for h in head:
            t.add_column(h, justify="left" if h in left else "right", overflow="fold")
        for row in rows:
            t.add_row(*(Text(str(c)) for c in row))  # Text: cells are data, never rich markup
        console.print(t)
        if note:
            console.print(Text(note, style="dim"))
        console.print()


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare runs side by side, with paired differences",
                       description="Compare finished runs of the same task: every metric with its CI, paired "
                                   "differences on shared problems (bootstrap CI, McNemar / sign-flip test), "
                                   "generation lengths and rates, accuracy by CoT length.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (the first is the reference A)")
    p.add_argument("--force", action="store_true", help="compare runs whose task spec hashes differ")
    p.add_argument("--metric", action="append", default=None,
                   help="restrict to this metric (repeatable): acc, mean@n, maj@K, pass@K, ...")
    p.add_argument("--filter", action="append", default=None, help="restrict to this filter (repeatable)")
    p.add_argument("--markdown", type=Path, metavar="FILE", help="also write the tables as Markdown")
    p.add_argument("--csv", type=Path, metavar="FILE", help="also write the tables as one long CSV")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    if args.n_boot < 1:
        raise HarnessError(f"--n-boot must be positive, got {args.n_boot}")
    try:
        import pandas  # noqa: F401  (the `report` extra)
    except ImportError:
        raise HarnessError("harness compare needs pandas: pip install 'reasoning-harness[report]'") from None
    cmp = compare_runs(args.runs, force=args.force, metrics=args.metric, filters=args.filter, seed=args.seed,
                       n_boot=args.n_boot)
    print_rich(cmp)
    if args.markdown:
        _write(args.markdown, to_markdown(cmp))
        print(f"Markdown: {args.markdown}")
    if args.csv:
        _write(args.csv, to_csv_frame(cmp).to_csv(index=False))
        print(f"CSV: {args.csv}")
    return 0


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise HarnessError(f"cannot write {path}: {e.strerror or e}")
