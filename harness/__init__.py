"""reasoning-harness: chain-of-thought evaluation with a paged-KV inference engine."""

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
