"""`harness models list` (presets and cache state) and `harness models pull NAME`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="model presets and the local cache")
    msub = p.add_subparsers(dest="models_cmd", required=True)
    msub.add_parser("list", help="presets and cache state")
    pp = msub.add_parser("pull", help="install, assemble and convert a preset into the cache")
    pp.add_argument("name", help="a preset name or a .gguf file")
    pp.add_argument("--force", action="store_true", help="rebuild the cache entry even if it looks complete (repairs a damaged one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness import models

    if args.models_cmd == "pull":
        path = models.pull(args.name, force=args.force)
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
