"""`harness regress`: the CI gate (harness.analysis.regress) - exit 1 when a run is significantly
below a committed baseline, 2 on unusable input - and `--write-baseline`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from harness import HarnessError
from harness.analysis.regress import gate, junit_xml, load_baseline, write_baseline, write_junit
from harness.analysis.runs import canonical_metric, load_run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "regress", help="CI gate: fail when a run is significantly below a committed baseline",
        description="Non-inferiority gate. `harness regress --baseline FILE RUN` exits 1 when the run is "
                    "significantly below the baseline (one-sided exact paired sign-flip test at --alpha) or, with "
                    "--margin D, below it by more than D; 0 otherwise; 2 on unusable input. "
                    "`harness regress --write-baseline RUN FILE` writes a baseline file.")
    p.add_argument("run", nargs="?", metavar="RUN", help="run directory to gate")
    p.add_argument("--baseline", type=Path, metavar="FILE", help="baseline JSON (from --write-baseline)")
    p.add_argument("--write-baseline", nargs=2, metavar=("RUN", "FILE"), help="write RUN's per-problem scores to FILE")
    p.add_argument("--metric", action="append", default=None,
                   help="metric to gate (repeatable; default acc) or, with --write-baseline, to store "
                        "(default acc, mean@n and maj@<largest k>; 'all' for every metric)")
    p.add_argument("--filter", action="append", default=None,
                   help="filter to gate (repeatable; default strict, or the task's primary filter when it has no strict) or, with --write-baseline, to store (default all)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the one-sided test (default 0.05)")
    p.add_argument("--margin", type=float, default=None,
                   help="also fail when the paired difference is below -MARGIN (e.g. 0.02); default: no margin check")
    p.add_argument("--junit", type=Path, metavar="FILE", help="write a JUnit XML report")
    p.add_argument("--force", action="store_true", help="gate even when the task spec hashes differ")
    p.add_argument("--seed", type=int, default=0, help="bootstrap / Monte Carlo seed (default 0)")
    p.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples for the CI (default 10000)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.write_baseline:
        if args.baseline or args.run:
            raise HarnessError("use either --write-baseline RUN FILE or --baseline FILE RUN, not both")
        run_path, file = args.write_baseline
        doc = write_baseline(run_path, file, args.metric, args.filter)
        stored = ", ".join(f"{f}/{canonical_metric(m, doc['n'])}" for f, ms in doc["scores"].items() for m in ms)
        print(f"Baseline written to {file}: {doc['task']} ({doc['model']['id']}), {doc['n_problems']} problems; "
              f"per-problem scores for {stored}")
        return 0
    if not args.baseline or not args.run:
        raise HarnessError("usage: harness regress --baseline FILE RUN  (or --write-baseline RUN FILE)")
    t0 = time.perf_counter()
    suite = "harness.regress"
    props: dict[str, Any] = {"baseline": str(args.baseline), "run": str(args.run), "alpha": args.alpha,
                             "margin": args.margin}
    try:
        baseline = load_baseline(args.baseline)
        run = load_run(args.run)
        suite = f"harness.regress.{run.task}"
        props.update(task=run.task, spec_hash=run.spec_hash, baseline_spec_hash=baseline.get("spec_hash"),
                     model=run.model_id, baseline_model=(baseline.get("model") or {}).get("id"))
        warn = None
        if baseline.get("spec_hash") != run.spec_hash:
            msg = (f"the run's task spec ({run.task}, {run.spec_hash[:12]}) differs from the baseline's "
                   f"({baseline.get('task')}, {str(baseline.get('spec_hash'))[:12]})")
            if not args.force:
                raise HarnessError(f"{msg}; pass --force to gate anyway")
            warn = f"warning: {msg}; gating anyway (--force)"
        if args.n_boot < 1:
            raise HarnessError(f"--n-boot must be positive, got {args.n_boot}")
        results = gate(baseline, run, metrics=args.metric or ["acc"], filters=args.filter,
                       alpha=args.alpha, margin=args.margin, seed=args.seed, n_boot=args.n_boot,
                       baseline_name=str(args.baseline))
    except HarnessError as e:
        if args.junit:
            write_junit(args.junit, junit_xml([], suite=suite, properties=props, error=str(e),
                                               elapsed=time.perf_counter() - t0))
        raise
    if warn:
        print(warn, file=sys.stderr)
    for r in results:
        print(r.paragraph)
        print()
    failed = [r for r in results if not r.passed]
    if args.junit:
        write_junit(args.junit, junit_xml(results, suite=suite, properties=props, elapsed=time.perf_counter() - t0))
    verdict = (f"regress: FAIL ({len(failed)} of {len(results)} gated metrics below the baseline: "
               f"{', '.join(r.name for r in failed)})" if failed else f"regress: PASS ({len(results)} gated metrics)")
    print(verdict)
    return 1 if failed else 0
