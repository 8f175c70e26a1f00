"""The SC-8shot benchmark's outputs: `<name>.json` (the result as `run_sc` returns it), `<name>.md`
(`markdown`: a table per n) and `<name>.png` (`plot`: throughput vs n, when several n were run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("reports/bench")


def slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in s).strip("-")


def write_outputs(result: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.md"]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    paths[1].write_text(markdown(result))
    if len(result["configs"]) > 1:
        png = out_dir / f"{name}.png"
        if plot(result, png):
            paths.append(png)
    return paths


def _fmt(v: Any, spec: str = ".1f", scale: float = 1.0) -> str:
    return "—" if v is None else format(v * scale, spec)


def markdown(result: dict[str, Any]) -> str:
    m, w, c = result["machine"], result["workload"], result["ceiling"]
    lines = [
        f"# SC-8shot benchmark — {w['model']}",
        "",
        f"{w['problems']} GSM8K test problems × n samples × {w['max_tokens']} new tokens (EOS ignored), "
        f"{w['task']} prompt ({min(w['prompt_tokens'])}–{max(w['prompt_tokens'])} tokens), temperature "
        f"{w['temperature']}, top-p {w['top_p']}; {w['dtype']} on {w['device']}; median of {w['reps']} repetitions"
        + (" (" + ", ".join(f"{k}: {v}" for k, v in w.get("reps_for", {}).items()) + ")" if w.get("reps_for") else "")
        + " after a warm-up, systems alternating. Engine prefix caching across problems: "
        f"{'on' if w['prefix_caching'] else 'off'}.",
        "",
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores, torch threads {m['torch_threads']}; torch {m['torch']}, "
        f"transformers {m['transformers']}; load average at start {_fmt((m.get('load_avg_start') or [None])[0], '.2f')}"
        f", at end {_fmt((m.get('load_avg_end') or [None])[0], '.2f')}.",
        "",
        f"Ceiling: {c['basis']}; GEMM ({c['gemm']}) {c['gemm_flops_per_s'] / 1e9:.1f} GFLOP/s (median of "
        f"{len(c['gemm_flops_per_s_samples'])}, range {min(c['gemm_flops_per_s_samples']) / 1e9:.1f}–"
        f"{max(c['gemm_flops_per_s_samples']) / 1e9:.1f})"
        + (f" → {c['tokens_per_s']:.0f} tokens/s." if c.get("tokens_per_s") else "."),
        "",
    ]
    for cfg in result["configs"]:
        lines += [f"## n = {cfg['n']}", ""]
        lines.append("| system | tok/s | wall s | prompt tok computed | peak KV MiB | peak RSS MiB | TTFT p50 / p95 s "
                     "| decode tok/s | % ceiling | % all-in ceiling |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s, e in cfg["systems"].items():
            md = e.get("median")
            if not md:
                why = e.get("error") or e.get("skipped") or "no runs"
                lines.append(f"| {s} | {why} | | | | | | | | |")
                continue
            lines.append(
                f"| {s} | {md['tokens_per_s']:.1f} | {md['wall_s']:.1f} | {md['prompt_tokens_computed']:.0f} | "
                f"{_fmt(md.get('peak_kv_bytes'), '.0f', 2**-20)}{'†' if s == 'hf-cb' else ''} | "
                f"{_fmt(md.get('peak_rss_bytes'), '.0f', 2**-20)} | {_fmt(md.get('ttft_p50_s'), '.2f')} / "
                f"{_fmt(md.get('ttft_p95_s'), '.2f')} | {_fmt(md.get('decode_tokens_per_s'))} | "
                f"{_fmt(cfg['ceiling_fraction'].get(s), '.1f', 100)} | {_fmt(cfg['all_in_ceiling_fraction'].get(s), '.1f', 100)} |"
            )
        if cfg.get("ratios"):
            lines += ["", "Ratios (tokens/s): " + ", ".join(f"{k} {v:.2f}×" for k, v in sorted(cfg["ratios"].items()))]
        lines.append("")
    lines += [
        "Prompt tokens computed: model positions run minus one per decoded token (hf includes left padding and "
        "recomputes each prompt n times). † hf-cb: the KV pool it allocated (sized to the workload); peak in use is "
        "not exposed. TTFT: from submitting all requests to each sample's first token. Decode tok/s: tokens after "
        "the last prompt's first token over the time from then on (hf: per generate call). All-in ceiling: the "
        "workload's model FLOPs (each prompt once, lm_head and attention included) at the GEMM rate.",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ns = [cfg["n"] for cfg in result["configs"]]
    systems = list(result["configs"][0]["systems"])
    for s in systems:
        pts = [(cfg["n"], cfg["systems"][s]["median"]["tokens_per_s"]) for cfg in result["configs"]
               if cfg["systems"].get(s, {}).get("median")]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=s)
    ceil = [(cfg["n"], cfg["ceiling_tokens_per_s"]) for cfg in result["configs"] if cfg.get("ceiling_tokens_per_s")]
    if ceil:
        ax.plot(*zip(*ceil), linestyle="--", color="gray", label="FLOP-bound ceiling")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_yscale("log")
    ax.set_xlabel("samples per problem (n)")
    ax.set_ylabel("generated tokens/s")
    w, m = result["workload"], result["machine"]
    ax.set_title(f"SC-8shot, {w['model']}, P={w['problems']}, M={w['max_tokens']}\n"
                 f"{m['cpu']}, {m['torch_threads']} threads", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
