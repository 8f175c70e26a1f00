"""`harness eval`: task spec → prompts → backend → graded samples on disk → metrics and reports.

The runner owns orchestration only; every step calls the module that owns it:

    prepare              spec (with overrides), grader, data (before any model is loaded)
    open backend         the backend resolves its own model and says what it is (BackendInfo)
    the run directory    identity (spec hash, model, revision, data sha256, seed, n, limit) → resume
    build_requests       prompts and gold answers per doc; a doc that cannot render is recorded
    generate_and_grade   each completion graded, fsynced into samples.jsonl and reported as it
                         arrives: a crash loses only samples that were still generating
    finalize             metrics from the samples on disk (so a resumed run equals an
                         uninterrupted one), results.json, report.md, report.html
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from harness import HarnessError, __version__
from harness.backends.base import Backend, Completion, GenerationRequest, ThinkingBudget
from harness.files import write_json_atomic, write_text_atomic
from harness.grading import Grader
from harness.runs.rundir import RunDir
from harness.scoring.records import BackendInfo, RunResults, SampleRecord, SampleWriter, group_by_doc, read_samples

Progress = Callable[..., Any]  # progress("start", total=, completed=) / progress("advance", tokens=)


# Published sampling protocols, so "the number in the paper" is one flag (`--protocol`); explicit
# command-line values still win. r1: DeepSeek-R1's evaluation (T=0.6, top-p 0.95, 32k-token budget,
# pass@1 estimated as the mean over n samples, reported as mean@n with its problem-clustered
# stderr); n=16 as open-r1 / lighteval use for AIME-sized sets.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "r1": dict(n=16, temperature=0.6, top_p=0.95, top_k=0, min_p=0.0, max_tokens=32768),
}


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
    protocol: str | None = None  # a key of PROTOCOLS


@dataclass
class EvalResult:
    run_dir: Path
    results: dict[str, Any]


@dataclass
class Prepared:
    """Everything that is known before a model is loaded."""

    spec: Any  # harness.tasks.TaskSpec
    grader: Grader
    docs: list[dict]
    fewshot_docs: list[dict] | None
    data: dict[str, dict[str, str]]  # split -> {"source", "sha256"}


@dataclass
class Requests:
    requests: list[GenerationRequest]
    failed: list[Completion]  # docs whose prompt or gold answer failed: recorded as error samples
    doc_rows: list[dict]  # docs.jsonl
    gold: dict[str, str]
    prompt_hash: dict[str, str]
    opened: dict[str, bool] = field(default_factory=dict)  # doc id -> the prompt leaves a think block open
    tokenizer: Any = None  # to split a sample's tokens into thoughts and answer


def sample_seed(run_seed: int, doc_id: str, sample_idx: int) -> int:
    from engine.sampler import derive_seed

    return derive_seed("sample", run_seed, doc_id, sample_idx)


def evaluate(opts: EvalOptions, progress: Progress | None = None, log: Callable[[str], None] = print) -> EvalResult:
    prep = prepare(opts)
    for split, d in prep.data.items():
        log(f"data {split}: {d['source']} (sha256 {d['sha256'][:12]})")
    failures = check_docs(prep)
    if failures and len(failures) == len(prep.docs):  # a broken spec: say so before any model loads
        doc_id, err = failures[0]
        raise HarnessError(f"none of the {len(prep.docs)} problems can run (e.g. doc {doc_id}: {err})")
    from harness.backends import resolve_backend_model
    from harness.models import quiet_transformers

    quiet_transformers()  # no conversion / weight-loading bars: ours is the one progress display
    model = resolve_backend_model(opts.backend, opts.model)
    rd = _open_run_dir(opts, prep, model)
    try:
        results = _generate(opts, prep, model, rd, progress, log)
    finally:
        rd.release()
    return EvalResult(rd.path, results)


def _generate(opts: EvalOptions, prep: Prepared, model: Any, rd: RunDir, progress: Progress | None,
              log: Callable[[str], None]) -> dict[str, Any]:
    from harness.backends import get_backend

    options = dict(opts.backend_options)
    if opts.batch_size is not None:
        options["batch_size"] = opts.batch_size
    t_load = time.perf_counter()
    backend = get_backend(opts.backend, model, **options)
    try:
        done = rd.finished()
        params = prep.spec.sampling
        total = len(prep.docs) * params.n
        on_disk = sum(1 for d in prep.docs for i in range(params.n) if (str(d["doc_id"]), i) in done)
        log(f"{prep.spec.name}: {len(prep.docs)} problems × {params.n} samples; {on_disk} already on disk, "
            f"{total - on_disk} to generate")
        if params.n > 1 and params.temperature == 0:
            log(f"warning: n={params.n} at temperature 0 (greedy): the samples of a problem are identical; "
                "pass --temperature (or --protocol r1) for self-consistency")
        reqs = build_requests(prep, backend.tokenizer, done)
        write_text_atomic(rd.path / "docs.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in reqs.doc_rows))
        for c in reqs.failed[:1]:
            log(f"warning: {len({f.doc_id for f in reqs.failed})} problems cannot run, recorded as errors; e.g. doc {c.doc_id}: {c.error}")
        t0 = time.perf_counter()
        log(f"generating {total - on_disk} samples ({opts.backend} backend ready in {t0 - t_load:.1f} s)")
        if progress is not None:
            progress("start", total=total, completed=on_disk)
        gen_tokens = generate_and_grade(backend, reqs, prep, rd, progress)
        wall = time.perf_counter() - t0
        info = backend.info()
    finally:
        backend.close()
    return finalize(opts, prep, rd, info, gen_tokens, wall)


def prepare(opts: EvalOptions) -> Prepared:
    """The spec with the command line's overrides, its grader, and its data: a missing split fails
    in seconds, before any model is installed or loaded."""
    from harness import tasks
    from harness.tasks import data
    from harness.tasks.choices import shuffle_choices

    spec = tasks.load_task(opts.task, opts.include_paths)
    if opts.protocol is not None and opts.protocol not in PROTOCOLS:
        raise HarnessError(f"--protocol: unknown protocol {opts.protocol!r} (choose from {', '.join(PROTOCOLS)})")
    overrides = dict(PROTOCOLS.get(opts.protocol, {}))
    overrides.update({k: v for k, v in dict(n=opts.n, seed=opts.seed, max_tokens=opts.max_tokens, temperature=opts.temperature,
                                            top_p=opts.top_p, top_k=opts.top_k).items() if v is not None})
    if overrides:
        spec = spec.with_overrides(**overrides)
    grader = Grader.for_spec(spec)
    split = data.load_split(spec.dataset, spec.dataset.split, opts.data_dir)
    docs = shuffle_choices(spec, split.docs)  # multiple-choice options: order from the run seed
    provenance = {spec.dataset.split: {"source": split.source, "sha256": split.sha256}}
    if opts.limit is not None:
        if opts.limit < 1:
            raise HarnessError(f"--limit must be a positive integer, got {opts.limit}")
        docs = docs[: opts.limit]
    fewshot_docs = None
    if spec.needs_fewshot_split:
        try:
            shots = data.load_split(spec.dataset, spec.dataset.fewshot_split, opts.data_dir)
        except HarnessError as e:
            raise HarnessError(f"task {spec.name} draws its {spec.prompt.fewshot.num} few-shot shots from split "
                               f"{spec.dataset.fewshot_split!r}{_offline_hint(spec, opts.include_paths)}; {e}") from None
        fewshot_docs = shuffle_choices(spec, shots.docs)
        provenance[spec.dataset.fewshot_split] = {"source": shots.source, "sha256": shots.sha256}
    return Prepared(spec, grader, docs, fewshot_docs, provenance)


def check_docs(prep: Prepared) -> list[tuple[str, str]]:
    """(doc id, one-line error) of every doc whose prompt or gold answer cannot be built, without a
    tokenizer (a chat template's own failures show only once the model's tokenizer is loaded)."""
    from harness.tasks.prompts import PromptBuilder

    from harness.tasks.templating import RenderTimeout

    builder = PromptBuilder(prep.spec, None, prep.fewshot_docs)
    failures = []
    slow = 0
    for position, doc in enumerate(prep.docs):
        try:
            builder.build(doc, position)
            prep.grader.gold_key(builder.render_target(doc))
        except RenderTimeout as e:
            slow += 1
            if slow >= 3:  # a template that loops for seconds on a doc: the spec's fault, not the doc's
                raise HarnessError(f"{e}; the same on {slow} problems: refusing the task") from None
            failures.append((str(doc["doc_id"]), str(e)))
        except HarnessError as e:
            failures.append((str(doc["doc_id"]), str(e)))
    return failures


def _open_run_dir(opts: EvalOptions, prep: Prepared, model: Any) -> RunDir:
    """Create or reopen the run directory; `model` is a ResolvedModel (local backends) or the
    model string (remote backends, whose revision only the server knows)."""
    spec, params = prep.spec, prep.spec.sampling
    model_id, revision = (model, None) if isinstance(model, str) else (model.id, model.revision)
    identity = {
        "task": spec.name,
        "spec_hash": spec.spec_hash,
        "model": model_id,
        "model_revision": revision,
        "backend": opts.backend,
        "seed": params.seed,
        "n": params.n,
        "limit": opts.limit,
        # what was read, not where from: moving the data folder keeps the run, changing a file does not
        "data_sha256": {split: d["sha256"] for split, d in prep.data.items()},
    }
    path = opts.output_dir or opts.runs_root / _safe(spec.name) / _safe(model_id) / f"run-{_hash(identity)[:10]}"
    rd = RunDir(Path(path))
    rd.prepare(identity, fresh=opts.fresh)
    write_text_atomic(rd.path / "spec.yaml", spec.to_yaml())
    return rd


def build_requests(prep: Prepared, tokenizer: Any, done: Iterable[tuple[str, int]]) -> Requests:
    """One request per doc for its samples not on disk yet. A doc whose prompt cannot render, or
    whose gold answer the comparator cannot read, becomes error samples (one bad item never stops
    the run, and never scores as silently wrong)."""
    from harness.tasks.prompts import PromptBuilder

    spec, params, grader = prep.spec, prep.spec.sampling, prep.grader
    done = set(done)
    builder = PromptBuilder(spec, tokenizer, prep.fewshot_docs)
    out = Requests([], [], [], {}, {}, tokenizer=tokenizer)
    t = spec.thinking
    thinking = None if t.budget is None else ThinkingBudget(t.budget, t.close, t.forced_text)
    for position, doc in enumerate(prep.docs):  # prep.docs: a prefix of the split, so index = position
        doc_id = str(doc["doc_id"])
        missing = [i for i in range(params.n) if (doc_id, i) not in done]
        try:
            built = builder.build(doc, position)
            gold = builder.render_target(doc)
            grader.gold_key(gold)
        except HarnessError as e:
            out.failed += [Completion(f"doc-{doc_id}", doc_id, i, "", finish_reason="error", error=str(e)) for i in missing]
            out.gold[doc_id], out.prompt_hash[doc_id] = "", ""
            continue
        out.gold[doc_id], out.prompt_hash[doc_id] = gold, built.prompt_hash
        out.opened[doc_id] = grader.prompt_opens_thinking(built.text)
        out.doc_rows.append({"doc_id": doc_id, "doc": {k: v for k, v in doc.items() if k != "doc_id"},
                             "target": gold, "prompt_hash": built.prompt_hash, "prompt": built.text})
        if missing:
            out.requests.append(GenerationRequest(
                request_id=f"doc-{doc_id}", doc_id=doc_id, prompt=built.text, params=params, sample_indices=missing,
                seeds=[sample_seed(params.seed, doc_id, i) for i in missing], messages=built.messages,
                chat_template_kwargs=dict(spec.prompt.chat_template_kwargs) or None, thinking=thinking))
    return out


def generate_and_grade(backend: Backend, reqs: Requests, prep: Prepared, rd: RunDir, progress: Progress | None) -> int:
    """Consume the backend's stream lazily: each sample is graded, on disk (fsync) and reported as
    soon as it is yielded. Returns the generated token count."""
    seed = prep.spec.sampling.seed
    gen_tokens = 0
    with SampleWriter(rd.samples_path) as writer:
        stream = backend.generate(reqs.requests) if reqs.requests else iter(())
        for c in itertools.chain(reqs.failed, stream):
            writer.write(sample_record(c, prep.grader, reqs.gold.get(c.doc_id, ""), reqs.prompt_hash.get(c.doc_id, ""),
                                       sample_seed(seed, c.doc_id, c.sample_idx), reqs.opened.get(c.doc_id, False),
                                       reqs.tokenizer))
            gen_tokens += c.generated_tokens
            if progress is not None:
                progress("advance", tokens=c.generated_tokens)
    return gen_tokens


def sample_record(c: Completion, grader: Grader, target: str, prompt_hash: str, seed: int, opened: bool = False,
                  tokenizer: Any = None) -> SampleRecord:
    """The samples.jsonl line of one finished sample. Grading cannot cost the sample: if it
    raises, the raw generation is kept with `grader_error` set and no answers (invalid).
    `opened`: the prompt left a think block open (the completion starts inside the thoughts)."""
    graded: dict = {}
    grader_error = None
    outcome = thought = answer = None
    if c.finish_reason != "error":
        try:
            graded = grader.grade(c.text, target, opened)
            outcome = grader.outcome(c.text, opened)
            thought, answer = _thought_tokens(c, grader, opened, outcome, tokenizer)
        except Exception as e:  # noqa: BLE001 - recorded per sample; the run goes on
            grader_error = _one_line(f"{type(e).__name__}: {e}")[:500]
    return SampleRecord(
        doc_id=c.doc_id, sample_idx=c.sample_idx, seed=seed, prompt_hash=prompt_hash, target=target, text=c.text,
        finish_reason=c.finish_reason, stop_reason=c.stop_reason, prompt_tokens=c.prompt_tokens,
        cached_prompt_tokens=c.cached_prompt_tokens, generated_tokens=c.generated_tokens, ttft=c.ttft,
        latency=c.latency, error=c.error,
        grader_error=grader_error or next((g.error for g in graded.values() if g.error), None),
        answers={f: g.answer for f, g in graded.items()}, keys={f: g.key for f, g in graded.items()},
        scores={f: float(g.correct) for f, g in graded.items()},
        outcome=outcome, thought_tokens=thought, answer_tokens=answer, forced_at=c.forced_at,
    )


def _thought_tokens(c: Completion, grader: Grader, opened: bool, outcome: str | None,
                    tokenizer: Any) -> tuple[int | None, int | None]:
    """(thought tokens through the close tag, answer tokens after it) of a sample with a think
    block; an unclosed chain is all thoughts. None without a think block or without a way to count
    (a remote backend that returned no token ids and no local tokenizer)."""
    if outcome is None and not opened:
        return None, None
    total = c.generated_tokens
    split = grader.thought_split(c.text, opened)
    if split is None:
        return total, 0
    if tokenizer is None:
        return None, None
    if c.token_ids:  # the shortest token prefix whose text holds the close tag
        lo, hi = 1, len(c.token_ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if grader.close_tag in tokenizer.decode(c.token_ids[:mid], skip_special_tokens=False):
                hi = mid
            else:
                lo = mid + 1
        return lo, total - lo
    thought = len(tokenizer.encode(c.text[:split], add_special_tokens=False))
    return thought, max(0, total - thought)


def finalize(opts: EvalOptions, prep: Prepared, rd: RunDir, info: BackendInfo, gen_tokens: int, wall: float) -> dict[str, Any]:
    """Metrics from the samples on disk (the only source, so resumed runs agree), provenance,
    results.json and the reports."""
    from harness.reporting.markdown import write_reports
    from harness.scoring.metrics import by_chain_length

    spec = prep.spec
    wanted = {str(d["doc_id"]) for d in prep.docs}
    rows = [r for r in read_samples(rd.samples_path) if str(r["doc_id"]) in wanted]
    scored = build_results(spec, rows, prep.grader, ks=spec.ks)
    results = RunResults(
        task=spec.name,
        description=spec.description,
        spec_hash=spec.spec_hash,
        n_problems=scored["n_problems"],
        n_samples=scored["n_samples"],
        ks=scored["ks"],
        primary_filter=scored["primary_filter"],
        metrics=scored["metrics"],
        errors=scored["errors"],
        grader_errors=sum(1 for r in rows if r["grader_error"]),
        model={"id": info.model, "path": info.model_path, "source": info.model_source, "revision": info.revision},
        backend={"name": opts.backend, **info.to_dict()},
        chat_template_hash=info.chat_template_hash,
        data=prep.data,
        sampling=_params_dict(spec.sampling),
        seed=spec.sampling.seed,
        limit=opts.limit,
        version=__version__,
        run={"wall_time_s": round(wall, 3), "generated_tokens": gen_tokens,
             "tokens_per_s": round(gen_tokens / wall, 2) if wall > 0 else None,
             "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        by_length=by_chain_length(rows, scored["primary_filter"]),
        protocol=opts.protocol,
    ).to_dict()
    write_json_atomic(rd.path / "results.json", results)
    write_reports(rd.path, results, rows)
    return results


def build_results(spec: Any, rows: list[dict], grader: Any, ks: list[int] | None) -> dict[str, Any]:
    """Metrics per filter from sample rows: n_problems, n_samples, ks, primary_filter, errors and
    metrics[filter] (harness.scoring.metrics.compute_metrics)."""
    from harness.scoring import metrics

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
        out["metrics"][f] = metrics.compute_metrics(metrics.doc_samples(rows, f, grader.comparator.name), ks)
    return out


def _offline_hint(spec: Any, include_paths: list[Path]) -> str:
    """" (tasks that run offline with the packaged data: a, b)" for a spec whose data is missing."""
    from harness import tasks
    from harness.tasks import data

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


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _one_line(s: str) -> str:
    return " ".join(s.split())
