"""`harness rollout`: a task's prompts → n samples each on the engine → rewards from the task's
grader → one JSON line per group, for an RL trainer (GRPO's advantages are one line from there).

Each line holds the prompt (text and token ids), the gold answer, and per sample the completion
token ids, text, per-token logprobs (`logprobs_mode` raw or processed, stated on the line), finish
reason, seed and reward (1.0 / 0.0 from the primary filter's grade), plus the group's reward mean
and std (population). Lines are appended and fsynced as groups complete (a group is written when
its last sample finishes); a rerun of the same command skips the groups on disk, and a file written
by a different task, model or sampling setup is refused. Seeds are eval's (`runner.sample_seed`),
so the samples are the ones `harness eval` draws for the same task and seed.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness import HarnessError
from harness.runs.runner import EvalOptions, build_requests, check_docs, prepare, sample_seed
from harness.scoring.records import JsonlWriter


@dataclass
class RolloutOptions:
    task: str
    model: str
    out: Path = Path("rollouts.jsonl")
    include_paths: list[Path] = field(default_factory=list)
    data_dir: Path | None = None
    limit: int | None = None
    n: int | None = None
    seed: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    logprobs_mode: str = "raw"
    fresh: bool = False
    engine_options: dict[str, Any] = field(default_factory=dict)


def rollout(opts: RolloutOptions, progress: Callable[..., Any] | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    prep = prepare(EvalOptions(task=opts.task, model=opts.model, include_paths=opts.include_paths, data_dir=opts.data_dir,
                               limit=opts.limit, n=opts.n, seed=opts.seed, max_tokens=opts.max_tokens,
                               temperature=opts.temperature, top_p=opts.top_p, top_k=opts.top_k))
    prep.spec = prep.spec.with_overrides(logprobs=0)  # the chosen token's logprob, every sample
    failures = check_docs(prep)
    if failures and len(failures) == len(prep.docs):
        raise HarnessError(f"none of the {len(prep.docs)} problems can run (e.g. doc {failures[0][0]}: {failures[0][1]})")
    from harness.backends.engine import EngineBackend
    from harness.models import encode_prompt, quiet_transformers, resolve_model

    quiet_transformers()
    model = resolve_model(opts.model)
    params = prep.spec.sampling
    identity = {"task": prep.spec.name, "spec_hash": prep.spec.spec_hash, "model": model.id,
                "model_revision": model.revision, "seed": params.seed, "n": params.n, "logprobs_mode": opts.logprobs_mode}
    out = Path(opts.out)
    if opts.fresh and out.exists():
        out.unlink()
    done = _groups_on_disk(out, identity)
    backend = EngineBackend(model, logprobs_mode=opts.logprobs_mode, **opts.engine_options)
    t0 = time.perf_counter()
    tokens = groups = 0
    rewards: list[float] = []
    try:
        reqs = build_requests(prep, backend.tokenizer, {(d, i) for d in done for i in range(params.n)})
        for c in reqs.failed[:1]:
            log(f"warning: {len({f.doc_id for f in reqs.failed})} problems cannot run; e.g. doc {c.doc_id}: {c.error}")
        log(f"{prep.spec.name}: {len(prep.docs)} problems × {params.n} samples; {len(done)} groups already in {out}, "
            f"{len(reqs.requests)} to roll out")
        if progress is not None:
            progress("start", total=len(prep.docs) * params.n, completed=len(done) * params.n)
        by_id = {r.doc_id: r for r in reqs.requests}
        pending: dict[str, list] = {}
        primary = prep.spec.primary_filter
        with JsonlWriter(out) as writer:
            for c in backend.generate(reqs.requests):
                pending.setdefault(c.doc_id, []).append(c)
                tokens += c.generated_tokens
                if progress is not None:
                    progress("advance", tokens=c.generated_tokens)
                req = by_id[c.doc_id]
                if len(pending[c.doc_id]) < len(req.sample_indices):
                    continue
                samples = sorted(pending.pop(c.doc_id), key=lambda x: x.sample_idx)
                line = _group_line(identity, req, encode_prompt(backend.tokenizer, req.prompt), reqs.gold[c.doc_id],
                                   samples, prep.grader, primary, params.seed)
                writer.write_obj(line, f"for doc {c.doc_id}")
                groups += 1
                rewards += [s["reward"] for s in line["samples"]]
    finally:
        backend.close()
    wall = time.perf_counter() - t0
    return {"out": str(out), "groups_written": groups, "groups_on_disk": len(done) + groups,
            "generated_tokens": tokens, "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 2) if wall > 0 else None,
            "mean_reward": round(sum(rewards) / len(rewards), 4) if rewards else None}


def _group_line(identity: dict, req: Any, prompt_ids: list[int], gold: str, samples: list, grader: Any, primary: str,
                run_seed: int) -> dict[str, Any]:
    rows = []
    for c in samples:
        reward, answer, error = 0.0, None, c.error
        if c.finish_reason != "error":
            try:
                g = grader.grade(c.text, gold, grader.prompt_opens_thinking(req.prompt))[primary]
                reward, answer, error = float(g.correct), g.answer, g.error
            except Exception as e:  # noqa: BLE001 - a grading failure costs this sample's reward, not the run
                error = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        rows.append({"sample_idx": c.sample_idx, "seed": sample_seed(run_seed, req.doc_id, c.sample_idx),
                     "completion_ids": list(c.token_ids), "text": c.text, "logprobs": c.logprobs,
                     "finish_reason": c.finish_reason, "reward": reward, "answer": answer, "error": error})
    rs = [r["reward"] for r in rows]
    return {**identity, "doc_id": req.doc_id, "prompt": req.prompt, "prompt_token_ids": prompt_ids, "gold": gold,
            "samples": rows, "reward_mean": sum(rs) / len(rs), "reward_std": statistics.pstdev(rs)}


def _groups_on_disk(out: Path, identity: dict) -> set[str]:
    """Doc ids of the complete groups already in `out` (its torn last line aside); a file from a
    different setup is refused rather than mixed into."""
    if not out.exists():
        return set()
    done: set[str] = set()
    data = out.read_bytes()
    for lineno, raw in enumerate(data.split(b"\n")[:-1], 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            raise HarnessError(f"{out}:{lineno}: corrupt rollout line ({e.msg}); pass --fresh to start over") from None
        differs = [k for k, v in identity.items() if row.get(k) != v]
        if differs:
            raise HarnessError(f"{out} holds rollouts of a different setup (differs in: {', '.join(differs)}); "
                               "choose another --out or pass --fresh")
        done.add(str(row["doc_id"]))
    return done
