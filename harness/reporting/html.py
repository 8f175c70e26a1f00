"""report.html: one self-contained page per run directory (and `harness report RUN` to rebuild it).

The page holds the results table with CIs, maj@k / pass@k curves with CI bands, generated-length
histograms (correct vs incorrect samples), accuracy vs CoT length, extractor disagreement counts,
and a per-problem browser. Plots are matplotlib PNGs embedded as base64 data URIs; nothing is
loaded from outside the file (no URLs, no JS libraries; a few lines of inline JS filter the
problem list). All model and dataset text goes through jinja2 autoescaping.

matplotlib is an optional dependency (the `report` extra): without it the page is still written,
without plots, and says so. Size stays sane for 1319 problems × 16 samples: every sample's answer
is listed, but only a few sample texts per problem are shown (sample 0 and the first sample with
the other outcome), each cut at a few thousand characters with a note.
"""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path
from typing import Any, Sequence

from harness.files import write_text_atomic
from harness.reporting.tables import COUNT_KEYS, fmt, fmt_ci, metric_rows
from harness.scoring.records import SAMPLES_FILE, doc_sort_key, group_by_doc, read_samples

REPORT_HTML = "report.html"
TEMPLATE = "report.html.j2"
MAX_TEXTS = 2  # sample texts shown per problem
MAX_CHARS = 2500  # characters of one sample text shown
MAX_ANSWER_CHARS = 24
MAX_QUESTION_CHARS = 6000
QUESTION_FIELDS = ("question", "problem", "input", "prompt", "query", "text")


# ----------------------------------------------------------------------------------------------
# Data for the page
# ----------------------------------------------------------------------------------------------



def _truncate(text: str | None, limit: int) -> tuple[str, int]:
    """(shown text, number of characters cut)."""
    t = text or ""
    if len(t) <= limit:
        return t, 0
    return t[:limit], len(t) - limit


def _load_docs(run_dir: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    p = run_dir / "docs.jsonl"
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[str(r.get("doc_id"))] = r
    return out


def _question(doc_row: dict | None) -> str:
    if not doc_row:
        return ""
    doc = doc_row.get("doc") or {}
    for f in QUESTION_FIELDS:
        v = doc.get(f)
        if isinstance(v, str) and v.strip():
            return v
    return json.dumps(doc, ensure_ascii=False)[:MAX_QUESTION_CHARS] if doc else ""


def metrics_rows(results: dict) -> list[dict]:
    return [{"filter": filt, "metric": name, "value": fmt(value), "stderr": fmt(se) if se is not None else "",
             "ci": fmt_ci(ci)} for filt, name, value, se, ci in metric_rows(results) if name not in COUNT_KEYS]


def disagreement(rows: Sequence[dict], filters: Sequence[str]) -> dict:
    """Per pair of filters: samples whose vote keys differ (an invalid answer counts as its own
    value), of those how many have one side invalid, samples whose correctness differs, and
    problems with at least one differing sample; plus per-filter invalid counts."""
    pairs = []
    by_doc = group_by_doc(rows)
    for i, a in enumerate(filters):
        for b in filters[i + 1:]:
            diff_s = one_invalid = corr_s = 0
            probs = set()
            corr_p = set()
            for d, v in by_doc.items():
                for r in v:
                    ka, kb = (r.get("keys") or {}).get(a), (r.get("keys") or {}).get(b)
                    sa, sb = bool((r.get("scores") or {}).get(a)), bool((r.get("scores") or {}).get(b))
                    if ka != kb:
                        diff_s += 1
                        probs.add(d)
                        if (ka is None) != (kb is None):
                            one_invalid += 1
                    if sa != sb:
                        corr_s += 1
                        corr_p.add(d)
            pairs.append({"a": a, "b": b, "samples": diff_s, "one_invalid": one_invalid, "problems": len(probs),
                          "correct_samples": corr_s, "correct_problems": len(corr_p)})
    all_agree = sum(1 for r in rows if len({(r.get("keys") or {}).get(f) for f in filters}) <= 1)
    invalid = {f: sum((r.get("keys") or {}).get(f) is None for r in rows) for f in filters}
    return {"pairs": pairs, "all_agree": all_agree, "n_samples": len(rows), "invalid": invalid}


def _majority(keys: Sequence[str | None], ok: Sequence[bool]) -> tuple[str | None, bool, list[tuple[str, int, bool]]]:
    """(winning key, its correctness, [(key, votes, correct)] by votes) — ties to first occurrence,
    invalid samples abstain (as in harness.scoring.metrics)."""
    votes: dict[str, list] = {}
    for k, c in zip(keys, ok):
        if k is None:
            continue
        if k not in votes:
            votes[k] = [0, False]
        votes[k][0] += 1
        votes[k][1] = votes[k][1] or bool(c)
    ranked = sorted(votes.items(), key=lambda kv: -kv[1][0])  # stable: ties keep first occurrence
    if not ranked:
        return None, False, []
    return ranked[0][0], bool(ranked[0][1][1]), [(k, v[0], bool(v[1])) for k, v in ranked]


def problems(rows: Sequence[dict], docs: dict[str, dict], filters: Sequence[str], primary: str | None,
             max_texts: int = MAX_TEXTS, max_chars: int = MAX_CHARS) -> list[dict]:
    out = []
    for d, v in sorted(group_by_doc(rows).items(), key=lambda kv: doc_sort_key(kv[0])):
        keys = {f: [(r.get("keys") or {}).get(f) for r in v] for f in filters}
        ok = {f: [bool((r.get("scores") or {}).get(f)) for r in v] for f in filters}
        p_ok = ok.get(primary, [False] * len(v)) if primary else [False] * len(v)
        p_keys = keys.get(primary, [None] * len(v)) if primary else [None] * len(v)
        maj_key, maj_ok, ranked = _majority(p_keys, p_ok)
        disagree = any(len({keys[f][i] for f in filters}) > 1 for i in range(len(v)))
        invalid = any(k is None for k in p_keys)
        # which texts to show: sample 0, the first sample with the other outcome, then in order
        chosen: list[int] = [0] if v else []
        for want in (False, True):
            j = next((i for i, c in enumerate(p_ok) if c == want), None)
            if j is not None and j not in chosen:
                chosen.append(j)
        for i in range(len(v)):
            if len(chosen) >= max_texts:
                break
            if i not in chosen:
                chosen.append(i)
        chosen = sorted(chosen[:max_texts])
        texts = []
        for i in chosen:
            r = v[i]
            shown, cut = _truncate(r.get("text"), max_chars)
            texts.append({"idx": r.get("sample_idx", i), "text": shown, "cut": cut, "ok": p_ok[i],
                          "invalid": p_keys[i] is None, "tokens": r.get("generated_tokens"),
                          "finish": r.get("finish_reason"), "error": r.get("error"),
                          "answers": [(f, _truncate((r.get("answers") or {}).get(f), MAX_ANSWER_CHARS)[0]
                                       if (r.get("keys") or {}).get(f) is not None else None, ok[f][i]) for f in filters]})
        grid = []
        for f in filters:
            cells = []
            for i, r in enumerate(v):
                ans = (r.get("answers") or {}).get(f)
                k = keys[f][i]
                if r.get("error"):
                    cells.append(("e", "error"))
                elif k is None:
                    cells.append(("i", "–"))
                else:
                    a = ans if isinstance(ans, str) and ans else str(k)
                    cells.append(("o" if ok[f][i] else "x", _truncate(a, MAX_ANSWER_CHARS)[0]))
            grid.append((f, cells))
        doc_row = docs.get(d)
        question, qcut = _truncate(_question(doc_row), MAX_QUESTION_CHARS)
        gold = (doc_row or {}).get("target") if doc_row else None
        if gold is None:
            gold = v[0].get("target", "")
        out.append({
            "id": d, "question": question, "qcut": qcut, "summary_q": question[:140].replace("\n", " "),
            "gold": gold, "n": len(v), "n_ok": sum(p_ok), "acc": bool(p_ok[0]) if p_ok else False,
            "maj_key": maj_key, "maj_ok": maj_ok, "votes": ranked[:6], "more_votes": max(0, len(ranked) - 6),
            "n_invalid": sum(k is None for k in p_keys), "invalid": invalid, "disagree": disagree,
            "texts": texts, "hidden": len(v) - len(texts), "grid": grid, "indices": [r.get("sample_idx", i) for i, r in enumerate(v)],
        })
    return out


# ----------------------------------------------------------------------------------------------
# Plots (matplotlib, optional)
# ----------------------------------------------------------------------------------------------


def _figure(w: float, h: float) -> Any:
    """A matplotlib Figure that is not registered with pyplot (no global state, no backend switch)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _curves(results: dict) -> str | None:
    ms = results.get("metrics", {})
    fams = []
    for fam in ("maj", "pass"):
        series = {}
        for filt, m in ms.items():
            pts = sorted((int(k.split("@", 1)[1]), m[k], m.get(f"{k}_ci")) for k in m
                         if k.startswith(fam + "@") and not k.endswith(("_stderr", "_ci")) and k.split("@", 1)[1].isdigit())
            if pts:
                series[filt] = pts
        if series:
            fams.append((fam, series))
    if not fams:
        return None
    fig = _figure(5.2 * len(fams), 3.4)
    axes = fig.subplots(1, len(fams), squeeze=False)
    for ax, (fam, series) in zip(axes[0], fams):
        for filt, pts in series.items():
            ks = [p[0] for p in pts]
            line = ax.plot(ks, [p[1] for p in pts], marker="o", ms=3, label=filt)[0]
            if all(p[2] for p in pts):
                ax.fill_between(ks, [p[2][0] for p in pts], [p[2][1] for p in pts], color=line.get_color(), alpha=0.18, lw=0)
        ax.set_xscale("log", base=2)
        allk = sorted({p[0] for pts in series.values() for p in pts})
        ax.set_xticks(allk, [str(k) for k in allk])
        ax.set_xlabel("k")
        ax.set_ylabel(f"{fam}@k")
        ax.set_title(f"{fam}@k vs k (95% CI band)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _length_hist(rows: Sequence[dict], primary: str) -> str | None:
    import numpy as np

    lens = np.array([int(r.get("generated_tokens") or 0) for r in rows])
    if lens.size == 0:
        return None
    ok = np.array([bool((r.get("scores") or {}).get(primary)) for r in rows])
    inv = np.array([(r.get("keys") or {}).get(primary) is None for r in rows])
    trunc = np.array([r.get("finish_reason") == "length" for r in rows])
    bins = np.histogram_bin_edges(lens, bins=min(40, max(5, int(np.sqrt(lens.size)))))
    fig = _figure(6.4, 3.4)
    ax = fig.subplots()
    for mask, label, color in ((ok, "correct", "#2a9d4b"), (~ok & ~inv, "incorrect", "#d1495b"), (~ok & inv, "invalid (no answer)", "#777777")):
        if mask.any():
            ax.hist(lens[mask], bins=bins, histtype="stepfilled", alpha=0.25, color=color)
            ax.hist(lens[mask], bins=bins, histtype="step", lw=1.4, color=color, label=f"{label} ({int(mask.sum())})")
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("samples")
    ax.set_title(f"generated length, filter {primary}" + (f" — {int(trunc.sum())} truncated" if trunc.any() else ""))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _acc_vs_length(rows: Sequence[dict], filters: Sequence[str]) -> str | None:
    from harness.scoring import stats

    lens = [int(r.get("generated_tokens") or 0) for r in rows]
    edges = stats.length_bucket_edges(lens, 8)
    if len(edges) < 2:
        return None
    fig = _figure(6.4, 3.4)
    ax = fig.subplots()
    for f in filters:
        ok = [bool((r.get("scores") or {}).get(f)) for r in rows]
        bks = [b for b in stats.bucket_accuracy(lens, ok, edges) if b.n]
        if not bks:
            continue
        xs = [(b.lo + b.hi - 1) / 2 for b in bks]
        line = ax.plot(xs, [b.acc for b in bks], marker="o", ms=3, label=f)[0]
        ax.fill_between(xs, [b.ci_low for b in bks], [b.ci_high for b in bks], color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlabel("generated tokens (bucket midpoint; quantile buckets)")
    ax.set_ylabel("accuracy (all samples)")
    ax.set_title("accuracy vs CoT length (95% Wilson band)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def make_plots(results: dict, rows: Sequence[dict], filters: Sequence[str], primary: str | None) -> tuple[dict[str, str], str | None]:
    """{name: data URI} and a note (None when all went well)."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return {}, "Plots are not shown: matplotlib is not installed (pip install 'reasoning-harness[report]')."
    plots: dict[str, str] = {}
    errors = []
    for name, fn in (("curves", lambda: _curves(results)),
                     ("lengths", lambda: _length_hist(rows, primary) if primary else None),
                     ("acc_length", lambda: _acc_vs_length(rows, filters))):
        try:
            uri = fn()
        except Exception as e:  # a plot must never cost the report
            errors.append(f"{name}: {type(e).__name__}: {e}")
            continue
        if uri:
            plots[name] = uri
    return plots, ("Some plots failed: " + "; ".join(errors)) if errors else None


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def _env() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    return env


def build_context(run_dir: Path, results: dict, *, rows: Sequence[dict] | None = None, plots: bool = True,
                  max_texts: int = MAX_TEXTS, max_chars: int = MAX_CHARS) -> dict:
    rows = list(rows) if rows is not None else read_samples(run_dir / SAMPLES_FILE)
    filters = list(results.get("metrics", {})) or list(dict.fromkeys(f for r in rows for f in (r.get("keys") or {})))
    primary = results.get("primary_filter") if results.get("primary_filter") in filters else (filters[0] if filters else None)
    docs = _load_docs(run_dir)
    model = results.get("model") if isinstance(results.get("model"), dict) else {"id": results.get("model")}
    backend = results.get("backend") if isinstance(results.get("backend"), dict) else {"name": results.get("backend")}
    run = results.get("run") or {}
    meta = [
        ("task", results.get("task")), ("model", model.get("id")), ("revision", model.get("revision")),
        ("backend", backend.get("name")), ("spec hash", str(results.get("spec_hash") or "")[:16]),
        ("problems", results.get("n_problems")), ("samples", results.get("n_samples")),
        ("n per problem", (results.get("sampling") or {}).get("n")), ("seed", results.get("seed")),
        ("temperature", (results.get("sampling") or {}).get("temperature")),
        ("max tokens", (results.get("sampling") or {}).get("max_tokens")),
        ("wall time (s)", run.get("wall_time_s")), ("generated tokens/s", run.get("tokens_per_s")),
        ("finished", run.get("finished_at")), ("version", results.get("version")),
    ]
    if plots:
        plot_uris, plot_note = make_plots(results, rows, filters, primary)
    else:
        plot_uris, plot_note = {}, "Plots were not requested."
    probs = problems(rows, docs, filters, primary, max_texts=max_texts, max_chars=max_chars)
    return {
        "title": f"{results.get('task')} — {model.get('id')}",
        "description": results.get("description") or "",
        "meta": [(k, v) for k, v in meta if v not in (None, "")],
        "metrics": metrics_rows(results),
        "plots": plot_uris,
        "plot_note": plot_note,
        "filters": filters,
        "primary": primary,
        "disagreement": disagreement(rows, filters) if len(filters) > 1 else None,
        "problems": probs,
        "counts": {"acc_wrong": sum(not p["acc"] for p in probs), "maj_wrong": sum(not p["maj_ok"] for p in probs),
                   "invalid": sum(p["invalid"] for p in probs), "disagree": sum(p["disagree"] for p in probs)},
        "max_texts": max_texts,
        "max_chars": max_chars,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "errors": results.get("errors") or 0,
    }


def render(context: dict) -> str:
    return _env().get_template(TEMPLATE).render(**context)


def write(run_dir: Path | str, results: dict, **kw: Any) -> Path:
    """Render report.html into the run directory (called by harness.reporting.markdown.write_reports)."""
    run_dir = Path(run_dir)
    html = render(build_context(run_dir, results, **kw))
    out = run_dir / REPORT_HTML
    write_text_atomic(out, html)
    return out
