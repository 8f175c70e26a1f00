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
Runs are loaded by harness.analysis.runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from harness import HarnessError
from harness.analysis.runs import (
    NON_SCORE_METRICS,
    Run,
    canonical_metric,
    check_same_task,
    label_runs,
    load_run,
    problem_scores,
    resolve_metric,
)
from harness.reporting.tables import fmt, metric_order

# ----------------------------------------------------------------------------------------------
# Analysis (pandas frames, long form)
# ----------------------------------------------------------------------------------------------


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

    from harness.scoring import stats

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

    from harness.scoring import stats

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
    keys.sort(key=lambda fm: (filt_order.index(fm[0]), metric_order(fm[1])))
    cell = {}
    for rec in df.itertuples(index=False):
        s = fmt(rec.value)
        if rec.ci_low is not None and rec.ci_low == rec.ci_low:
            s += f" [{fmt(rec.ci_low)}, {fmt(rec.ci_high)}]"
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
                rows.append([rec["filter"], rec["metric"], str(rec["n_shared"]), fmt(rec["a"]), fmt(rec["b"]),
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
        cell = (lambda v: fmt(v, 1)) if "tokens" in col else ((lambda v: str(int(v))) if col in ("problems", "samples") else fmt)
        rows.append([col] + [cell(v) if v is not None and v == v else "–" for v in vals])
    return head, rows


def length_table(cmp: Comparison) -> tuple[list[str], list[list[str]]]:
    labels = [r.label for r in cmp.runs]
    head = ["generated tokens", *labels]
    df = cmp.lengths
    if df is None or df.empty:
        return head, []
    buckets = list(dict.fromkeys(df["bucket"]))
    cell = {(rec.bucket, rec.run): (f"{fmt(rec.acc, 3)} (n={rec.n})" if rec.n else "– (n=0)") for rec in df.itertuples(index=False)}
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
