"""`harness eval`: task spec → prompts → backend → graded samples on disk → metrics and reports.

The runner owns orchestration only: every step is a call into the module that owns it (tasks,
data, prompts, backends, graders, metrics, rundir, report).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness import HarnessError, __version__
from harness.backends.base import Completion, GenerationRequest
from harness.rundir import RunDir, SampleWriter, doc_sort_key, group_by_doc, read_samples, write_json_atomic, write_text_atomic


@dataclass
class EvalOptions:
    task: str
    model: str
    backend: str = "engine"
    include_paths: list[Path] = field(default_factory=list)
    data_dir: Path | None = None
    limit: int | None = None
    n: int | None = None
    seed: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    batch_size: int | None = None
    output_dir: Path | None = None
    runs_root: Path = Path("runs")
    fresh: bool = False
    backend_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalResult:
    run_dir: Path
    results: dict[str, Any]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _one_line(s: str) -> str:
    return " ".join(s.split())


def sample_seed(run_seed: int, doc_id: str, sample_idx: int) -> int:
    from engine.sampler import derive_seed

    return derive_seed("sample", run_seed, doc_id, sample_idx)


def evaluate(opts: EvalOptions, progress: Callable[..., Any] | None = None, log: Callable[[str], None] = print) -> EvalResult:
    from harness import data, prompts, tasks
    from harness.graders import Grader

    spec = tasks.load_task(opts.task, opts.include_paths)
    overrides = {k: v for k, v in dict(n=opts.n, seed=opts.seed, max_tokens=opts.max_tokens,
                                       temperature=opts.temperature, top_p=opts.top_p, top_k=opts.top_k).items() if v is not None}
    if overrides:
        spec = spec.with_overrides(**overrides)
    params = spec.sampling
    grader = Grader(spec.filters, spec.comparator, strip_think=spec.strip_think)

    # Data first: a missing split must fail in seconds, before a model is installed or loaded.
    docs = data.load_docs(spec.dataset, spec.dataset.split, opts.data_dir)
    if opts.limit is not None:
        if opts.limit < 1:
            raise HarnessError(f"--limit must be a positive integer, got {opts.limit}")
        docs = docs[: opts.limit]
    fewshot_docs = None
    if spec.needs_fewshot_split:
        try:
            fewshot_docs = data.load_docs(spec.dataset, spec.dataset.fewshot_split, opts.data_dir)
        except HarnessError as e:
            raise HarnessError(f"task {spec.name} draws its {spec.prompt.fewshot.num} few-shot shots from split "
                               f"{spec.dataset.fewshot_split!r}{_offline_hint(spec, opts.include_paths)}; {e}") from None

    from harness.models import resolve_model

    model = resolve_model(opts.model)
    identity = {
        "task": spec.name,
        "spec_hash": spec.spec_hash,
        "model": model.id,
        "model_revision": model.revision,
        "backend": opts.backend,
        "seed": params.seed,
        "n": params.n,
        "limit": opts.limit,
        "data_dir": str(opts.data_dir) if opts.data_dir else None,
    }
    run_dir = opts.output_dir or opts.runs_root / _safe(spec.name) / _safe(model.id) / f"run-{_hash(identity)[:10]}"
    rd = RunDir(Path(run_dir))
    rd.prepare(identity, fresh=opts.fresh)
    write_text_atomic(rd.path / "spec.yaml", spec.to_yaml())

    done = rd.finished()
    total = len(docs) * params.n
    on_disk = sum(1 for d in docs for i in range(params.n) if (str(d["doc_id"]), i) in done)
    log(f"{spec.name}: {len(docs)} problems × {params.n} samples; {on_disk} already on disk, {total - on_disk} to generate")

    from harness.backends import get_backend

    backend_opts = dict(opts.backend_options)
    if opts.batch_size is not None:
        backend_opts["batch_size"] = opts.batch_size
    t_load = time.perf_counter()
    backend = get_backend(opts.backend, model, **backend_opts)
    t0 = time.perf_counter()
    gen_tokens = 0
    try:
        builder = prompts.PromptBuilder(spec, backend.tokenizer, fewshot_docs)

        requests: list[GenerationRequest] = []
        doc_rows: list[dict] = []
        gold: dict[str, str] = {}
        prompt_hash: dict[str, str] = {}
        failed: list[Completion] = []
        for doc in docs:
            doc_id = str(doc["doc_id"])
            try:
                built = builder.build(doc)
                gold[doc_id] = builder.render_target(doc)
            except HarnessError as e:
                missing = [i for i in range(params.n) if (doc_id, i) not in done]
                failed += [Completion(f"doc-{doc_id}", doc_id, i, "", finish_reason="error", error=str(e)) for i in missing]
                gold[doc_id], prompt_hash[doc_id] = "", ""
                continue
            prompt_hash[doc_id] = built.prompt_hash
            doc_rows.append({"doc_id": doc_id, "doc": {k: v for k, v in doc.items() if k != "doc_id"},
                             "target": gold[doc_id], "prompt_hash": built.prompt_hash, "prompt": built.text})
            missing = [i for i in range(params.n) if (doc_id, i) not in done]
            if missing:
                requests.append(GenerationRequest(
                    request_id=f"doc-{doc_id}", doc_id=doc_id, prompt=built.text, params=params,
                    sample_indices=missing, seeds=[sample_seed(params.seed, doc_id, i) for i in missing],
                    messages=built.messages))
        write_text_atomic(rd.path / "docs.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in doc_rows))

        log(f"generating {total - on_disk} samples ({opts.backend} backend ready in {t0 - t_load:.1f} s)")
        if progress is not None:
            progress("start", total=total, completed=on_disk)
        with SampleWriter(rd.samples_path) as writer:
            stream = backend.generate(requests) if requests else iter(())
            # Lazily: each sample is graded, on disk (fsync) and reported as soon as the backend
            # yields it, so a crash loses only samples still generating.
            for c in itertools.chain(failed, stream):
                row = _sample_row(c, grader, gold.get(c.doc_id, ""), prompt_hash.get(c.doc_id, ""),
                                  sample_seed(params.seed, c.doc_id, c.sample_idx))
                writer.write(row)
                gen_tokens += c.generated_tokens
                if progress is not None:
                    progress("advance", tokens=c.generated_tokens)
        info = backend.info()
    finally:
        backend.close()
    wall = time.perf_counter() - t0

    rows = [r for r in read_samples(rd.samples_path) if str(r["doc_id"]) in {str(d["doc_id"]) for d in docs}]
    results = build_results(spec, rows, grader, ks=spec.ks)
    results.update({
        "task": spec.name,
        "description": spec.description,
        "spec_hash": spec.spec_hash,
        "model": {"id": model.id, "path": str(model.path), "source": model.source, "revision": model.revision},
        "backend": {"name": opts.backend, **info},
        "chat_template_hash": info.get("chat_template_hash"),
        "sampling": _params_dict(params),
        "seed": params.seed,
        "limit": opts.limit,
        "version": __version__,
        "run": {"wall_time_s": round(wall, 3), "generated_tokens": gen_tokens,
                "tokens_per_s": round(gen_tokens / wall, 2) if wall > 0 else None,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    })
    write_json_atomic(rd.path / "results.json", results)
    from harness import report

    report.write_reports(rd.path, results)
    return EvalResult(rd.path, results)


def _offline_hint(spec: Any, include_paths: list[Path]) -> str:
    """" (tasks that run offline with the packaged data: a, b)" for a spec whose data is missing."""
    from harness import data, tasks

    ok = []
    for name, _, path in tasks.list_tasks(include_paths):
        other = tasks.load_task(str(path))
        if other.dataset.name != spec.dataset.name or name == spec.name:
            continue
        needed = {other.dataset.split} | ({other.dataset.fewshot_split} if other.needs_fewshot_split else set())
        if needed <= data.packaged_splits(other.dataset.name):
            ok.append(name)
    return f" (tasks that run offline with the packaged data: {', '.join(ok)})" if ok else ""


def _params_dict(params: Any) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in ((f, getattr(params, f)) for f in params.__slots__)}


def _sample_row(c: Completion, grader: Any, target: str, prompt_hash: str, seed: int) -> dict:
    """The samples.jsonl line of one finished sample. Grading cannot cost the sample: if it
    raises, the raw generation is kept with `grader_error` set and no answers (invalid)."""
    graded: dict = {}
    grader_error = None
    if c.finish_reason != "error":
        try:
            graded = grader.grade(c.text, target)
        except Exception as e:  # noqa: BLE001 - recorded per sample; the run goes on
            grader_error = _one_line(f"{type(e).__name__}: {e}")[:500]
    return {
        "doc_id": c.doc_id,
        "sample_idx": c.sample_idx,
        "seed": seed,
        "prompt_hash": prompt_hash,
        "target": target,
        "text": c.text,
        "finish_reason": c.finish_reason,
        "stop_reason": c.stop_reason,
        "prompt_tokens": c.prompt_tokens,
        "cached_prompt_tokens": c.cached_prompt_tokens,
        "generated_tokens": c.generated_tokens,
        "ttft": c.ttft,
        "latency": c.latency,
        "error": c.error,
        "grader_error": grader_error or next((g.error for g in graded.values() if g.error), None),
        "answers": {f: g.answer for f, g in graded.items()},
        "keys": {f: g.key for f, g in graded.items()},
        "scores": {f: float(g.correct) for f, g in graded.items()},
    }


def doc_samples(rows: list[dict], filt: str, comparator: str | None = None) -> list:
    """metrics.DocSamples per problem (sorted by doc id) for one filter, from sample rows. With the
    math comparator, equivalent answers with different canonical keys are merged per problem before
    voting (graders.cluster_keys)."""
    from harness import metrics
    from harness.graders import cluster_keys

    def keys(v: list[dict]) -> list[str | None]:
        ks = [(r.get("keys") or {}).get(filt) for r in v]
        if comparator == "math":
            merged = cluster_keys([(r.get("answers") or {}).get(filt) for r in v], "math")
            ks = [m if k is not None else None for k, m in zip(ks, merged)]
        return ks

    return [
        metrics.DocSamples(
            doc_id=d,
            keys=keys(v),
            correct=[bool((r.get("scores") or {}).get(filt, 0.0)) for r in v],
            finish_reasons=[r.get("finish_reason") or "" for r in v],
            gen_tokens=[int(r.get("generated_tokens") or 0) for r in v],
        )
        for d, v in sorted(group_by_doc(rows).items(), key=lambda kv: doc_sort_key(kv[0]))
    ]


def build_results(spec: Any, rows: list[dict], grader: Any, ks: list[int] | None) -> dict[str, Any]:
    """Metrics per filter from the samples on disk (the only source, so resumed runs agree)."""
    from harness import metrics

    by_doc = group_by_doc(rows)
    n = spec.sampling.n
    ks = [k for k in (ks or metrics.default_ks(n)) if k <= n]
    incomplete = [d for d, v in by_doc.items() if len(v) != n]
    if incomplete:
        raise HarnessError(f"{len(incomplete)} problems have fewer than n={n} samples on disk (e.g. doc {incomplete[0]})")
    out: dict[str, Any] = {"n_problems": len(by_doc), "n_samples": len(rows), "ks": ks,
                           "primary_filter": getattr(spec, "primary_filter", None), "metrics": {}}
    out["errors"] = sum(1 for r in rows if r.get("error"))
    for f in grader.filter_names:
        out["metrics"][f] = metrics.compute_metrics(doc_samples(rows, f, grader.comparator.name), ks)
    return out

