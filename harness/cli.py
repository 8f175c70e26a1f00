"""The `harness` command line. Each subcommand parses its flags and calls one module; user errors
(HarnessError) print as one line and exit 2."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from harness import HarnessError, __version__

DEFAULT_MODEL = "smollm2-135m-instruct"


def _kv(items: Sequence[str]) -> dict[str, Any]:
    """--engine-arg key=value pairs; values parsed as YAML scalars (ints, floats, bools)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise HarnessError(f"--engine-arg {item!r}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v)
    return out


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model on a task")
    p.add_argument("--task", "-t", required=True, help="task name (see `harness tasks`) or a YAML path")
    p.add_argument("--model", "-m", default=DEFAULT_MODEL, help=f"preset, local dir, .gguf file or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--backend", "-b", default=os.environ.get("HARNESS_BACKEND", "engine"), help="engine | hf (default engine)")
    p.add_argument("--limit", type=int, help="evaluate the first N problems")
    p.add_argument("-n", "--samples", type=int, dest="n", help="samples per problem (overrides the task)")
    p.add_argument("--seed", type=int, help="run seed (overrides the task)")
    p.add_argument("--max-tokens", type=int, help="max new tokens per sample")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--batch-size", type=int, help="hf backend: rows per generate batch; engine: max_num_seqs")
    p.add_argument("--data-dir", type=Path, default=os.environ.get("HARNESS_DATA_DIR"), help="folder with the task's data files")
    p.add_argument("--include-path", type=Path, action="append", default=[], help="extra folder of task YAMLs")
    p.add_argument("--output-dir", "-o", type=Path, help="run directory (default runs/<task>/<model>/<run-id>)")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option, e.g. block_size=16, kv_cache_memory=2e9, dtype=float32")
    p.add_argument("--fresh", action="store_true", help="discard samples already in the run directory")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console

    from harness.report import headline, rich_table
    from harness.runner import EvalOptions, evaluate

    console = Console(stderr=True)
    opts = EvalOptions(
        task=args.task, model=args.model, backend=args.backend, include_paths=args.include_path,
        data_dir=Path(args.data_dir) if args.data_dir else None, limit=args.limit, n=args.n, seed=args.seed,
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        batch_size=args.batch_size, output_dir=args.output_dir, fresh=args.fresh,
        backend_options=_kv(args.engine_arg),
    )
    bar = _ProgressBar(console, enabled=not args.no_progress)
    try:
        result = evaluate(opts, progress=bar, log=lambda s: console.print(s, highlight=False))
    finally:
        bar.stop()
    Console().print(rich_table(result.results))
    print(headline(result.results))
    print(f"Run directory: {result.run_dir}")
    return 0


class _ProgressBar:
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


def cmd_tasks(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from harness.tasks import list_tasks

    t = Table(show_header=True, header_style="bold")
    t.add_column("task")
    t.add_column("description")
    for name, desc, path in list_tasks(args.include_path):
        t.add_row(name, desc)
    Console().print(t)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from harness import models

    if args.models_cmd == "pull":
        path = models.pull(args.name)
        print(f"{args.name}: ready at {path}")
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table()
    for col in ("name", "cached", "size", "description"):
        t.add_column(col)
    for m in models.list_models():
        size = m.get("size_bytes")
        t.add_row(m["name"], "yes" if m.get("cached") else "no", f"{size / 1e6:.0f} MB" if size else "", m.get("description", ""))
    Console().print(t)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description="Chain-of-thought evaluation harness with a paged-KV engine")
    parser.add_argument("--version", action="version", version=f"reasoning-harness {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    _add_eval(sub)
    p = sub.add_parser("tasks", help="list tasks")
    p.add_argument("--include-path", type=Path, action="append", default=[])
    p.set_defaults(func=cmd_tasks)
    p = sub.add_parser("models", help="model presets and the local cache")
    msub = p.add_subparsers(dest="models_cmd", required=True)
    msub.add_parser("list", help="presets and cache state")
    pp = msub.add_parser("pull", help="install, assemble and convert a preset into the cache")
    pp.add_argument("name")
    p.set_defaults(func=cmd_models)
    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list:
    """Subcommands that live in their own modules (compare, regress, report, bench) register here."""
    out = []
    for mod in ("harness.compare", "harness.regress", "harness.report_html", "harness.bench"):
        try:
            m = __import__(mod, fromlist=["register_cli"])
        except ImportError:
            continue
        if hasattr(m, "register_cli"):
            out.append(m.register_cli)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished samples are on disk — rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
