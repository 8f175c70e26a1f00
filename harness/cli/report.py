"""`harness report RUN`: rebuild a run directory's report.md and report.html."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness.reporting.html import REPORT_HTML
from harness.reporting.markdown import write_reports
from harness.runs.rundir import SAMPLES, load_results
from harness.scoring.records import read_samples


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild report.md and report.html of a run directory")
    p.add_argument("run", metavar="RUN", type=Path, help="run directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_dir, results = load_results(args.run)
    t0 = time.perf_counter()
    write_reports(run_dir, results, read_samples(run_dir / SAMPLES))
    page = run_dir / REPORT_HTML
    print(f"Wrote {run_dir / 'report.md'} and {page} ({page.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    return 0
