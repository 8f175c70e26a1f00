"""`harness compare RUN [RUN ...]`: runs side by side, and paired differences (harness.analysis.compare)."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import HarnessError
from harness.analysis.compare import compare_runs, print_rich, to_csv_frame, to_markdown
from harness.files import write_text_atomic


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare runs side by side, with paired differences",
                       description="Compare finished runs of the same task: every metric with its CI, paired "
                                   "differences on shared problems (bootstrap CI, McNemar / sign-flip test), "
                                   "generation lengths and rates, accuracy by CoT length.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (the first is the reference A)")
    p.add_argument("--force", action="store_true", help="compare runs whose task spec hashes differ")
    p.add_argument("--metric", action="append", default=None,
                   help="restrict to this metric (repeatable): acc, mean@n, maj@K, pass@K, ...")
    p.add_argument("--filter", action="append", default=None, help="restrict to this filter (repeatable)")
    p.add_argument("--markdown", type=Path, metavar="FILE", help="also write the tables as Markdown")
    p.add_argument("--csv", type=Path, metavar="FILE", help="also write the tables as one long CSV")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.n_boot < 1:
        raise HarnessError(f"--n-boot must be positive, got {args.n_boot}")
    try:
        import pandas  # noqa: F401  (the `report` extra)
    except ImportError:
        raise HarnessError("harness compare needs pandas: pip install 'reasoning-harness[report]'") from None
    cmp = compare_runs(args.runs, force=args.force, metrics=args.metric, filters=args.filter, seed=args.seed,
                       n_boot=args.n_boot)
    print_rich(cmp)
    if args.markdown:
        _write(args.markdown, to_markdown(cmp))
        print(f"Markdown: {args.markdown}")
    if args.csv:
        _write(args.csv, to_csv_frame(cmp).to_csv(index=False))
        print(f"CSV: {args.csv}")
    return 0


def _write(path: Path, text: str) -> None:
    try:
        write_text_atomic(path, text)
    except OSError as e:
        raise HarnessError(f"cannot write {path}: {e.strerror or e}") from None
