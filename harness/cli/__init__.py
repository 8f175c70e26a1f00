"""The `harness` command line: one module per subcommand, each with `register(subparsers)`.

    eval      evaluate a model on a task (and resume)        harness.cli.eval
    tasks     list tasks                                     harness.cli.tasks
    validate  check specs, data and prompts (no model)       harness.cli.validate
    rollout   RL rollouts: token ids, logprobs, rewards      harness.cli.rollout
    models    presets and the model cache                    harness.cli.models
    compare   runs side by side, paired statistics           harness.cli.compare
    regress   the CI gate against a baseline                 harness.cli.regress
    report    rebuild report.md / report.html                harness.cli.report
    bench     benchmarks (SC-8shot, attention kernels)       harness.cli.bench
    serve     an OpenAI-compatible server over the engine    harness.cli.serve

User errors (HarnessError) print as one line and exit 2; Ctrl-C exits 130 and SIGTERM (for the
commands that write samples) 143, each with the resume hint. A subcommand module that fails to import
is an error of the whole command line, never a silently missing subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from typing import Sequence

from harness import HarnessError, __version__

COMMANDS = ("eval", "tasks", "validate", "rollout", "models", "compare", "regress", "report", "bench", "serve")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread by a command that writes samples (terminate_on_sigterm), so
    its `finally` blocks run: the sample file closed, the backend shut down, the run lock released."""


def terminate_on_sigterm() -> None:
    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description="Chain-of-thought evaluation harness with a paged-KV engine")
    parser.add_argument("--version", action="version", version=f"reasoning-harness {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in COMMANDS:
        importlib.import_module(f"harness.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated (SIGTERM); finished samples are on disk — rerun the same command to resume", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted; finished samples are on disk — rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
