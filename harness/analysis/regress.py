"""`harness regress`: a non-inferiority gate for CI, against a committed baseline.

    harness regress --write-baseline RUN FILE [--metric M ...] [--filter F ...]
    harness regress --baseline FILE RUN [--metric acc] [--filter strict] [--alpha 0.05]
                    [--margin D] [--junit FILE] [--force] [--seed N]

A baseline file (JSON, small, committed under reports/baselines/) keeps each problem's score for
a few (filter, metric) pairs, with the task, spec hash, model and metric values, so that the gate
is a *paired* test on the problems both the baseline and the run answered.

For each gated (filter, metric) the gate computes d_i = run_i − baseline_i over shared problems
and FAILS when either
  * the run is significantly below the baseline: the one-sided exact sign-flip (paired
    permutation) test of H0 "no difference" against H1 "run below baseline" gives p < α (for 0/1
    scores such as acc this is the one-sided exact McNemar / sign test); or
  * ``--margin D`` is given and the observed paired difference is below −D (a cap on the size of
    a drop, which also catches large drops on runs too small to reach significance).
Exit status: 0 all gated metrics pass, 1 at least one fails, 2 unusable input (missing or invalid
file, different task spec without --force, no shared problems, unknown metric or filter).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from harness import HarnessError, __version__
from harness.analysis.runs import NON_SCORE_METRICS, Run, canonical_metric, load_run, problem_scores, resolve_metric

BASELINE_FORMAT = "reasoning-harness-baseline"
BASELINE_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Baseline files
# ----------------------------------------------------------------------------------------------


def _default_store_metrics(run: Run) -> list[str]:
    ks = run.ks or []
    out = ["acc", f"mean@{run.n}"]
    if ks and max(ks) > 1:
        out.append(f"maj@{max(ks)}")
    return out


def _round(v: float) -> float | int:
    if v == 0.0 or v == 1.0:
        return int(v)
    return round(float(v), 10)


def make_baseline(run: Run, metrics: Sequence[str] | None = None, filters: Sequence[str] | None = None) -> dict:
    """The baseline document for `run`: per-problem scores for each (filter, metric) stored.
    metrics: names as in `--metric` (acc, mean@n, maj@8, ..., or "all"); default acc, mean@n and
    maj@<largest k>. filters: default every filter of the run."""
    filters = list(filters) if filters else run.filters
    for f in filters:
        if f not in run.filters:
            raise HarnessError(f"unknown filter {f!r}; the run has: {', '.join(run.filters)}")
    ids: list[str] | None = None
    scores: dict[str, dict[str, list]] = {}
    values: dict[str, dict[str, Any]] = {}
    for f in filters:
        per = problem_scores(run, f)
        avail = [m for m in per if m not in NON_SCORE_METRICS]
        if metrics and "all" in metrics:
            names = avail
        else:
            wanted = list(metrics) if metrics else _default_store_metrics(run)
            names = list(dict.fromkeys(resolve_metric(m, avail, run.n, where=f"filter {f}") for m in wanted))
        f_ids = list(per[names[0]]) if names else []
        if ids is None:
            ids = f_ids
        scores[f] = {m: [_round(per[m][d]) for d in ids] for m in names}
        ms = run.results.get("metrics", {}).get(f, {})
        values[f] = {m: {"value": ms.get(m, sum(per[m].values()) / max(1, len(per[m]))),
                         "stderr": ms.get(f"{m}_stderr"), "ci": ms.get(f"{m}_ci")} for m in names}
    model = run.results.get("model")
    return {
        "format": BASELINE_FORMAT,
        "format_version": BASELINE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "harness_version": __version__,
        "source_run": str(run.path),
        "task": run.task,
        "spec_hash": run.spec_hash,
        "model": {"id": run.model_id, "revision": model.get("revision") if isinstance(model, dict) else None},
        "backend": (run.results.get("backend") or {}).get("name") if isinstance(run.results.get("backend"), dict) else run.results.get("backend"),
        "chat_template_hash": run.chat_template_hash,
        "data": run.results.get("data"),
        "seed": run.results.get("seed"),
        "n": run.n,
        "ks": run.ks,
        "limit": run.results.get("limit"),
        "n_problems": len(ids or []),
        "metrics": values,
        "doc_ids": ids or [],
        "scores": scores,
    }


def dumps_baseline(doc: dict) -> str:
    """Indented JSON whose lists of scalars stay on one line (a 1319-problem score list is one line)."""

    def enc(o: Any, ind: int) -> str:
        pad, pad2 = "  " * ind, "  " * (ind + 1)
        if isinstance(o, dict):
            if not o:
                return "{}"
            items = [f"{pad2}{json.dumps(str(k))}: {enc(v, ind + 1)}" for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(o, list) and any(isinstance(x, (dict, list)) for x in o):
            return "[\n" + ",\n".join(pad2 + enc(x, ind + 1) for x in o) + "\n" + pad + "]"
        return json.dumps(o, ensure_ascii=False, separators=(",", ":"))

    return enc(doc, 0) + "\n"


def write_baseline(run_path: str | Path, file: str | Path, metrics: Sequence[str] | None = None,
                   filters: Sequence[str] | None = None) -> dict:
    run = load_run(run_path)
    doc = make_baseline(run, metrics, filters)
    path = Path(file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(dumps_baseline(doc), encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        raise HarnessError(f"cannot write {path}: {e.strerror or e}")
    return doc


def load_baseline(file: str | Path) -> dict:
    path = Path(file)
    if not path.exists():
        raise HarnessError(f"{path}: no such baseline file")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HarnessError(f"{path}: not a valid baseline file ({getattr(e, 'msg', e)})")
    except OSError as e:
        raise HarnessError(f"{path}: cannot read ({e.strerror or e})")
    if not isinstance(doc, dict) or doc.get("format") != BASELINE_FORMAT:
        raise HarnessError(f"{path}: not a baseline file (write one with `harness regress --write-baseline RUN FILE`)")
    if int(doc.get("format_version", 0)) > BASELINE_VERSION:
        raise HarnessError(f"{path}: baseline format version {doc.get('format_version')} is newer than this harness reads ({BASELINE_VERSION})")
    ids = doc.get("doc_ids")
    scores = doc.get("scores")
    if not isinstance(ids, list) or not isinstance(scores, dict):
        raise HarnessError(f"{path}: baseline file has no per-problem scores")
    for f, ms in scores.items():
        for m, vals in ms.items():
            if not isinstance(vals, list) or len(vals) != len(ids):
                raise HarnessError(f"{path}: scores for {f}/{m} do not match doc_ids ({len(vals) if isinstance(vals, list) else '?'} vs {len(ids)})")
    return doc


# ----------------------------------------------------------------------------------------------
# The gate
# ----------------------------------------------------------------------------------------------


@dataclass
class GateResult:
    filter: str
    metric: str  # canonical name (mean@n for mean@<n>)
    n_shared: int
    baseline_value: float  # on the shared problems
    run_value: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str
    n_worse: int  # problems where the run scores lower
    n_better: int
    alpha: float
    margin: float | None
    significant: bool
    beyond_margin: bool
    passed: bool
    paragraph: str

    @property
    def name(self) -> str:
        return f"{self.filter}/{self.metric}"

    @property
    def reason(self) -> str:
        parts = []
        if self.significant:
            parts.append(f"significantly below the baseline (one-sided p = {_p(self.p_value)} < α = {self.alpha:g})")
        if self.beyond_margin:
            parts.append(f"below the baseline by {-self.diff:.4f}, more than the margin {self.margin:g}")
        return "; ".join(parts)


def _p(p: float) -> str:
    return f"{p:.2e}" if p < 1e-4 else f"{p:.4f}"


def default_gate_filter(run: Run) -> str:
    """strict when the run has it, else the task's primary filter."""
    return "strict" if "strict" in run.filters else (run.primary_filter or "strict")


def gate(baseline: dict, run: Run, *, metrics: Sequence[str] = ("acc",), filters: Sequence[str] | None = None,
         alpha: float = 0.05, margin: float | None = None, seed: int = 0, n_boot: int = 10_000,
         baseline_name: str = "baseline") -> list[GateResult]:
    from harness.scoring import stats

    if not 0.0 < alpha < 1.0:
        raise HarnessError(f"--alpha must be between 0 and 1, got {alpha}")
    if margin is not None and (margin < 0 or not math.isfinite(margin)):
        raise HarnessError(f"--margin must be a non-negative number, got {margin}")
    filters = list(filters) if filters else [default_gate_filter(run)]
    ids = [str(d) for d in baseline["doc_ids"]]
    b_n = int(baseline.get("n") or run.n)
    out = []
    for f in filters:
        if f not in baseline["scores"]:
            raise HarnessError(f"baseline {baseline_name} has no scores for filter {f!r}; it has: {', '.join(baseline['scores'])}")
        if f not in run.filters:
            raise HarnessError(f"unknown filter {f!r} for run {run.path}; it has: {', '.join(run.filters)}")
        run_scores = problem_scores(run, f)
        for m in metrics:
            kr = resolve_metric(m, [k for k in run_scores if k not in NON_SCORE_METRICS], run.n, where=f"run {run.path}")
            kb = _resolve_baseline_metric(m, baseline, f, b_n, baseline_name)
            if canonical_metric(kb, b_n) != canonical_metric(kr, run.n):
                raise HarnessError(f"metric {m!r} means {kb} in the baseline but {kr} in the run")
            base_map = dict(zip(ids, (float(v) for v in baseline["scores"][f][kb])))
            shared, x, y = stats.align(base_map, run_scores[kr])
            if not shared:
                raise HarnessError(f"the run {run.path} and baseline {baseline_name} share no problems")
            pdiff = stats.paired_bootstrap(x, y, n_boot=n_boot, alpha=0.05, seed=seed)
            sf = stats.sign_flip_test(y - x, "less", seed=seed)
            significant = sf.p_value < alpha
            beyond = margin is not None and pdiff.diff < -margin - 1e-12
            res = GateResult(filter=f, metric=canonical_metric(kr, run.n), n_shared=len(shared), baseline_value=pdiff.mean_a,
                             run_value=pdiff.mean_b, diff=pdiff.diff, ci_low=pdiff.ci_low, ci_high=pdiff.ci_high,
                             p_value=sf.p_value, test=f"one-sided {sf.method} sign-flip test" + (" (= exact McNemar)" if stats.is_binary(x, y) and sf.method == "exact" else ""),
                             n_worse=sf.n_negative, n_better=sf.n_positive, alpha=alpha, margin=margin,
                             significant=significant, beyond_margin=beyond, passed=not (significant or beyond), paragraph="")
            res.paragraph = _paragraph(res, baseline, run, len(ids), seed, n_boot)
            out.append(res)
    return out


def _resolve_baseline_metric(m: str, baseline: dict, f: str, n: int, name: str) -> str:
    have = list(baseline["scores"][f])
    try:
        return resolve_metric(m, have, n)
    except HarnessError:
        shown = ", ".join(canonical_metric(k, n) for k in have)
        raise HarnessError(f"baseline {name} has no per-problem scores for {f}/{m} (it has: {shown}); "
                           f"rewrite it with `harness regress --write-baseline RUN FILE --metric {m}`") from None


def _paragraph(r: GateResult, baseline: dict, run: Run, n_base: int, seed: int, n_boot: int) -> str:
    run_total = len({str(x["doc_id"]) for x in run.rows})
    cover = f"{r.n_shared} shared problems"
    if r.n_shared != n_base or r.n_shared != run_total:
        cover += f" (baseline has {n_base}, run has {run_total})"
    verdict = f"FAIL: {r.reason}." if not r.passed else (
        f"PASS: not significantly below the baseline (p = {_p(r.p_value)} ≥ α = {r.alpha:g})"
        + (f" and within the margin {r.margin:g}" if r.margin is not None else "") + ".")
    return (
        f"{baseline.get('task', run.task)} · {r.filter}/{r.metric}: baseline {r.baseline_value:.4f} "
        f"({baseline.get('model', {}).get('id', '?')}) vs run {r.run_value:.4f} ({run.model_id}) on {cover}. "
        f"Paired difference (run − baseline) {r.diff:+.4f}, 95% CI [{r.ci_low:+.4f}, {r.ci_high:+.4f}] "
        f"(paired bootstrap over problems, {n_boot} resamples, seed {seed}); the run is worse on {r.n_worse} "
        f"and better on {r.n_better} problems; {r.test}: p = {_p(r.p_value)}. {verdict}"
    )


# ----------------------------------------------------------------------------------------------
# JUnit XML
# ----------------------------------------------------------------------------------------------


def junit_xml(results: Sequence[GateResult], *, suite: str, properties: dict[str, Any] | None = None,
              error: str | None = None, elapsed: float = 0.0) -> str:
    """A JUnit XML report: one testcase per gated metric, a <failure> with the reason when it fails;
    with `error` (unusable input), one testcase carrying an <error>."""
    import xml.etree.ElementTree as ET

    n_fail = sum(not r.passed for r in results)
    n_err = 1 if error else 0
    n_tests = len(results) + n_err
    root = ET.Element("testsuites", name="harness regress", tests=str(n_tests), failures=str(n_fail),
                      errors=str(n_err), time=f"{elapsed:.3f}")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(n_tests), failures=str(n_fail), errors=str(n_err),
                       skipped="0", time=f"{elapsed:.3f}", timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if properties:
        props = ET.SubElement(ts, "properties")
        for k, v in properties.items():
            ET.SubElement(props, "property", name=str(k), value="" if v is None else str(v))
    for r in results:
        tc = ET.SubElement(ts, "testcase", classname=suite, name=r.name, time="0")
        if not r.passed:
            fl = ET.SubElement(tc, "failure", message=r.reason, type="Regression")
            fl.text = r.paragraph
        so = ET.SubElement(tc, "system-out")
        so.text = r.paragraph
    if error:
        tc = ET.SubElement(ts, "testcase", classname=suite, name="input", time="0")
        er = ET.SubElement(tc, "error", message=error, type="UnusableInput")
        er.text = error
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise HarnessError(f"cannot write {path}: {e.strerror or e}")
