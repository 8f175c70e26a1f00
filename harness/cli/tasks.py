"""`harness tasks`: the tasks visible with the include paths, one line each."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tasks", help="list tasks")
    p.add_argument("--include-path", type=Path, action="append", default=[])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
