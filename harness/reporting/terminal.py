"""What `harness eval` shows in the terminal: the progress bar, the results table, the headline."""

from __future__ import annotations

import time
from typing import Any

from harness.reporting.tables import fmt, fmt_ci, metric_rows


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
                label = f"pass@1 (mean@{n})" if name == f"mean@{n}" else name
                parts.append(f"{label} {m[name]:.3f}" + (f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else ""))
        # how many chains hit the token cap, or never closed their thoughts: a score is read with these
        for name, label in (("truncation_rate", "truncated"), ("no_answer_in_budget_rate", "no answer in budget")):
            if m.get(name):
                parts.append(f"{label} {m[name]:.1%}")
    what = f"{results.get('n_problems')} problems × {n} sample{'s' if n != 1 else ''}"
    errors = f", {results['errors']} errors" if results.get("errors") else ""
    return f"{results.get('task')} · {results.get('model', {}).get('id')} · {filt}: {', '.join(parts) or 'no metrics'} on {what}{errors}"




def rich_table(results: dict[str, Any]):
    from rich.table import Table

    t = Table(title=f"{results.get('task')} · {results.get('model', {}).get('id')}")
    for col in ("filter", "metric", "value", "stderr", "95% CI"):
        t.add_column(col, justify="right" if col in ("value", "stderr") else "left")
    for filt, name, value, se, ci in metric_rows(results):
        t.add_row(filt, name, fmt(value), fmt(se) if se is not None else "", fmt_ci(ci, 3))
    return t


def length_table(results: dict[str, Any]):
    """Accuracy and truncation by chain length (the primary filter), or None for a single bucket."""
    from rich.table import Table

    buckets = results.get("by_length") or []
    if len(buckets) < 2:
        return None
    t = Table(title=f"by chain length ({results.get('primary_filter')})")
    for col in ("generated tokens", "samples", "accuracy", "truncated"):
        t.add_column(col, justify="right")
    for b in buckets:
        t.add_row(b["tokens"], str(b["samples"]), f"{b['accuracy']:.3f}", f"{b['truncated']:.1%}")
    return t


class ProgressBar:
    """samples done/total, generated tokens/s, ETA (rich)."""

    def __init__(self, console: Any, enabled: bool = True):
        self.console, self.enabled = console, enabled
        self.progress = None
        self.tokens = 0
        self.t0 = time.perf_counter()

    def __call__(self, event: str, **kw: Any) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        if event == "start":
            self.progress = Progress(
                TextColumn("samples"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("eval", total=kw["total"], completed=kw["completed"], rate="")
            self.t0 = time.perf_counter()
        elif event == "advance" and self.progress is not None:
            self.tokens += kw.get("tokens", 0)
            rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
            self.progress.update(self.task, advance=1, rate=f"{rate:,.0f} tok/s")

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
