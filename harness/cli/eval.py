"""`harness eval`: evaluate a model on a task (harness.runs.runner); rerun the same command to resume."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

from harness import HarnessError

DEFAULT_MODEL = "smollm2-135m-instruct"


def engine_options(items: Sequence[str]) -> dict[str, Any]:
    """--engine-arg key=value pairs; values parsed as YAML scalars (ints, floats, bools)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise HarnessError(f"--engine-arg {item!r}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v)
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model on a task")
    p.add_argument("--task", "-t", required=True, help="task name (see `harness tasks`) or a YAML path")
    p.add_argument("--model", "-m", default=DEFAULT_MODEL, help=f"preset, local dir, .gguf file or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--backend", "-b", default=os.environ.get("HARNESS_BACKEND", "engine"),
                   help="engine | hf | openai (default engine)")
    p.add_argument("--base-url", default=None, help="openai backend: the server's /v1 URL (default $OPENAI_BASE_URL)")
    p.add_argument("--api-key-env", default=None, help="openai backend: environment variable holding the API key "
                                                       "(default OPENAI_API_KEY)")
    p.add_argument("--limit", type=int, help="evaluate the first N problems")
    p.add_argument("-n", "--samples", type=int, dest="n", help="samples per problem (overrides the task)")
    p.add_argument("--seed", type=int, help="run seed (overrides the task)")
    p.add_argument("--max-tokens", type=int, help="max new tokens per sample")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--protocol", choices=["r1"], default=None,
                   help="a published protocol's sampling: r1 = n 16, T 0.6, top-p 0.95, max_tokens 32768, "
                        "pass@1 as mean@n (explicit flags still win)")
    p.add_argument("--batch-size", type=int, help="hf backend: rows per generate batch; engine: max_num_seqs")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder with the task's data files (over the task's own dataset.files and $HARNESS_DATA_DIR)")
    p.add_argument("--include-path", type=Path, action="append", default=[], help="extra folder of task YAMLs")
    p.add_argument("--output-dir", "-o", type=Path, help="run directory (default runs/<task>/<model>/<run-id>)")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option, e.g. block_size=16, kv_cache_memory=2e9, dtype=float32")
    p.add_argument("--fresh", action="store_true", help="discard samples already in the run directory")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from harness.reporting.terminal import ProgressBar, headline, length_table, rich_table
    from harness.runs.runner import EvalOptions, evaluate

    console = Console(stderr=True)
    opts = EvalOptions(
        task=args.task, model=args.model, backend=args.backend, include_paths=args.include_path,
        data_dir=Path(args.data_dir) if args.data_dir else None, limit=args.limit, n=args.n, seed=args.seed,
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        batch_size=args.batch_size, output_dir=args.output_dir, fresh=args.fresh, protocol=args.protocol,
        backend_options={**engine_options(args.engine_arg),
                         **{k: v for k, v in (("base_url", args.base_url), ("api_key_env", args.api_key_env)) if v}},
    )
    from harness.cli import terminate_on_sigterm

    terminate_on_sigterm()
    bar = ProgressBar(console, enabled=not args.no_progress)
    try:
        result = evaluate(opts, progress=bar, log=lambda s: console.print(s, highlight=False))
    finally:
        bar.stop()
    Console().print(rich_table(result.results))
    if (by_length := length_table(result.results)) is not None:
        Console().print(by_length)
    print(headline(result.results))
    print(f"Run directory: {result.run_dir}")
    return 0
