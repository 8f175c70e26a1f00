"""Human-readable results: the terminal table, report.md (and report.html when rendering is available)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from harness.rundir import write_text_atomic


def metric_rows(results: dict[str, Any]) -> Iterator[tuple[str, str, float, float | None, list | None]]:
    """(filter, metric, value, stderr, ci) for every reported metric, in a stable, readable order."""
    for filt, ms in results.get("metrics", {}).items():
        names = [k for k in ms if not k.endswith(("_stderr", "_ci")) and k not in ("n_problems", "n_samples")]
        for name in sorted(names, key=_metric_order):
            yield filt, name, ms[name], ms.get(f"{name}_stderr"), ms.get(f"{name}_ci")


def _metric_order(name: str) -> tuple:
    families = ["acc", "mean@", "maj@", "pass@", "invalid_rate", "truncation_rate", "mean_gen_tokens", "median_gen_tokens"]
    for i, fam in enumerate(families):
        if name == fam or (fam.endswith("@") and name.startswith(fam)):
            k = name.split("@", 1)[1] if fam.endswith("@") else "0"
            return (i, int(k) if k.isdigit() else 0, name)
    return (len(families), 0, name)


def fmt(value: Any, stderr: Any = None) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        s = f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    else:
        s = str(value)
    if stderr is not None:
        s += f" ± {stderr:.4f}" if abs(value) < 10 else f" ± {stderr:.1f}"
    return s


def headline(results: dict[str, Any]) -> str:
    """One line: the primary filter's accuracy (mean@n and maj@k too when n > 1) with 95% CIs."""
    ms = results.get("metrics", {})
    filt = results.get("primary_filter") if results.get("primary_filter") in ms else next(iter(ms), None)
    n = (results.get("sampling") or {}).get("n") or 1
    parts = []
    if filt is not None:
        m = ms[filt]
        names = ["acc"] if n == 1 else [f"mean@{n}", f"maj@{max(results.get('ks') or [1])}"]
        for name in names:
            if name in m:
                ci = m.get(f"{name}_ci")
                parts.append(f"{name} {m[name]:.3f}" + (f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else ""))
    what = f"{results.get('n_problems')} problems × {n} sample{'s' if n != 1 else ''}"
    errors = f", {results['errors']} errors" if results.get("errors") else ""
    return f"{results.get('task')} · {results.get('model', {}).get('id')} · {filt}: {', '.join(parts) or 'no metrics'} on {what}{errors}"


def markdown(results: dict[str, Any]) -> str:
    model = results.get("model", {})
    run = results.get("run", {})
    lines = [
        f"# {results.get('task')} — {model.get('id')}",
        "",
        f"{results.get('description') or ''}",
        "",
        f"- problems: {results.get('n_problems')}, samples: {results.get('n_samples')}, "
        f"n = {results.get('sampling', {}).get('n')}, seed = {results.get('seed')}",
        f"- backend: {results.get('backend', {}).get('name')}, spec hash `{str(results.get('spec_hash'))[:12]}`, "
        f"version {results.get('version')}",
        f"- wall time {run.get('wall_time_s')} s, {run.get('tokens_per_s')} generated tokens/s",
        "",
        "| filter | metric | value | stderr | 95% CI |",
        "|---|---|---:|---:|---|",
    ]
    for filt, name, value, se, ci in metric_rows(results):
        ci_s = f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
        se_s = f"{se:.4f}" if se is not None else ""
        lines.append(f"| {filt} | {name} | {fmt(value)} | {se_s} | {ci_s} |")
    return "\n".join(lines) + "\n"


def write_reports(run_dir: Path, results: dict[str, Any]) -> None:
    write_text_atomic(run_dir / "report.md", markdown(results))
    try:
        from harness import report_html  # rendered HTML with plots (optional extras: matplotlib)
    except ImportError:
        return
    report_html.write(run_dir, results)


def rich_table(results: dict[str, Any]):
    from rich.table import Table

    t = Table(title=f"{results.get('task')} · {results.get('model', {}).get('id')}")
    for col in ("filter", "metric", "value", "stderr", "95% CI"):
        t.add_column(col, justify="right" if col in ("value", "stderr") else "left")
    for filt, name, value, se, ci in metric_rows(results):
        t.add_row(filt, name, fmt(value), f"{se:.4f}" if se is not None else "",
                  f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    return t
