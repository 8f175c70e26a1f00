"""`harness rollout --task T --model M -n 8`: RL rollouts (harness.runs.rollout) — n samples per
problem with token ids, logprobs and rewards, one group per JSON line; rerun to resume."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.cli.eval import engine_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rollout", help="RL rollouts: samples with token ids, logprobs and rewards, one group per line")
    p.add_argument("--task", "-t", required=True, help="task name (see `harness tasks`) or a YAML path")
    p.add_argument("--model", "-m", required=True, help="preset, local dir, .gguf file or hub id")
    p.add_argument("-n", "--samples", type=int, dest="n", help="samples per problem (overrides the task)")
    p.add_argument("--limit", type=int, help="the first N problems")
    p.add_argument("--out", "-o", type=Path, default=Path("rollouts.jsonl"), help="JSONL file (default rollouts.jsonl)")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--logprobs-mode", choices=["raw", "processed"], default="raw",
                   help="raw: log-softmax of the model's logits; processed: of the distribution sampled from")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--include-path", type=Path, action="append", default=[])
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--fresh", action="store_true", help="discard the groups already in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from harness.cli import terminate_on_sigterm
    from harness.reporting.terminal import ProgressBar
    from harness.runs.rollout import RolloutOptions, rollout

    terminate_on_sigterm()
    console = Console(stderr=True)
    opts = RolloutOptions(task=args.task, model=args.model, out=args.out, include_paths=args.include_path,
                          data_dir=args.data_dir, limit=args.limit, n=args.n, seed=args.seed, max_tokens=args.max_tokens,
                          temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                          logprobs_mode=args.logprobs_mode, fresh=args.fresh, engine_options=engine_options(args.engine_arg))
    bar = ProgressBar(console, enabled=not args.no_progress)
    try:
        summary = rollout(opts, progress=bar, log=lambda s: console.print(s, highlight=False))
    finally:
        bar.stop()
    print(json.dumps(summary))
    return 0
