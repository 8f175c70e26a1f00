"""report.md, and write_reports: a run directory's report.md and report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from harness.files import write_text_atomic
from harness.reporting.tables import fmt, fmt_ci, metric_rows


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
        lines.append(f"| {filt} | {name} | {fmt(value)} | {fmt(se) if se is not None else ''} | {fmt_ci(ci)} |")
    if results.get("by_length"):
        lines += ["", f"## Accuracy by chain length ({results.get('primary_filter')})", "",
                  "| generated tokens | samples | accuracy | truncated |", "|---|---:|---:|---:|"]
        for b in results["by_length"]:
            lines.append(f"| {b['tokens']} | {b['samples']} | {b['accuracy']:.3f} | {b['truncated']:.1%} |")
    return "\n".join(lines) + "\n"


def write_reports(run_dir: Path, results: dict[str, Any], rows: Sequence[dict] | None = None) -> None:
    """report.md and report.html (plots need matplotlib, the `report` extra; without it the page
    says so). `rows`: the run's sample rows, read from the run directory when not given."""
    from harness.reporting import html

    write_text_atomic(run_dir / "report.md", markdown(results))
    html.write(run_dir, results, rows=rows)
