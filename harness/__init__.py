"""reasoning-harness: chain-of-thought evaluation with a paged-KV inference engine.

    cli        the `harness` command, one module per subcommand
    tasks      YAML task specs, data sources, prompts
    grading    answer extraction (filters) and comparison (comparators)
    scoring    typed records, metrics, paired statistics
    runs       the run directory and the runner
    models     presets, the model cache, GGUF conversion, loading
    backends   engine | hf: requests in, finished samples out
    analysis   compare and regress finished runs
    reporting  tables, report.md, report.html, terminal output
    bench      benchmarks against peers
    files      atomic file writes
"""

from importlib import metadata as _metadata
from pathlib import Path as _Path

try:
    __version__ = _metadata.version("reasoning-harness")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

# tasks/ and configs/ live at the project root (the design card's layout). An editable install or a
# source checkout finds them beside the package; HARNESS_ROOT overrides for other installs.
PROJECT_ROOT = _Path(__file__).resolve().parent.parent


class HarnessError(Exception):
    """A user-facing error: printed as one line, without a traceback, by the CLI."""
