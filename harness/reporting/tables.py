"""The one order and the one number format of every results table (terminal, report.md,
report.html, `harness compare`)."""

from __future__ import annotations

from typing import Any, Iterator

from harness.scoring.metrics import metric_families

COUNT_KEYS = ("n_problems", "n_samples")  # stored beside the metrics, not metrics themselves


def metric_order(name: str) -> tuple:
    """Metrics in the registry's order (harness.scoring.metrics), within a family by k."""
    families = metric_families()
    for i, fam in enumerate(families):
        if name == fam or (fam.endswith("@") and name.startswith(fam)):
            k = name.split("@", 1)[1] if fam.endswith("@") else "0"
            return (i, int(k) if k.isdigit() else 0, name)
    return (len(families), 0, name)


def metric_rows(results: dict[str, Any]) -> Iterator[tuple[str, str, float, float | None, list | None]]:
    """(filter, metric, value, stderr, ci) for every reported metric of a results.json, filters in
    their order, metrics in metric_order."""
    for filt, ms in results.get("metrics", {}).items():
        names = [k for k in ms if not k.endswith(("_stderr", "_ci")) and k not in COUNT_KEYS]
        for name in sorted(names, key=metric_order):
            yield filt, name, ms[name], ms.get(f"{name}_stderr"), ms.get(f"{name}_ci")


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: "–" for None or NaN; floats with `digits` decimals below 100, one above
    (token counts); anything else as str."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def fmt_ci(ci: Any, digits: int = 4) -> str:
    return f"[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]" if ci else ""
