"""`harness validate TASK|FILE…`: everything `harness eval` checks before it loads a model — the
spec and its includes, the data of every split it reads, and every problem's prompt and gold
answer — for the CI of a task repository. Exit 0 when all are sound, 2 otherwise (one line each)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check task specs, their data and every prompt without loading a model")
    p.add_argument("tasks", nargs="+", metavar="TASK|FILE", help="task names or YAML paths")
    p.add_argument("--include-path", type=Path, action="append", default=[], help="extra folder of task YAMLs")
    p.add_argument("--data-dir", type=Path, default=None, help="folder with the tasks' data files")
    p.add_argument("--limit", type=int, help="check only the first N problems of each task")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness import HarnessError
    from harness.runs.runner import EvalOptions, check_docs, prepare

    bad = 0
    for task in args.tasks:
        try:
            prep = prepare(EvalOptions(task=task, model="", include_paths=args.include_path, data_dir=args.data_dir,
                                       limit=args.limit))
            failures = check_docs(prep)
        except HarnessError as e:
            msg = str(e)
            named = Path(task).name in msg.split(": ", 1)[0] or msg.startswith(task)  # the message names the file already
            print(f"error: {msg}" if named else f"error: {task}: {msg}", file=sys.stderr)
            bad += 1
            continue
        data = "; ".join(f"{split} {d['source']} (sha256 {d['sha256'][:12]})" for split, d in prep.data.items())
        if failures:
            doc_id, err = failures[0]
            print(f"error: {task}: {len(failures)} of {len(prep.docs)} problems cannot run (e.g. doc {doc_id}: {err})",
                  file=sys.stderr)
            bad += 1
            continue
        print(f"ok: {task} ({prep.spec.name}, spec {prep.spec.spec_hash[:12]}): {len(prep.docs)} problems, "
              f"prompts and gold answers render; data: {data}")
    return 2 if bad else 0
