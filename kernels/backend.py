"""Pick the implementation of the KV-cache and attention ops: pure torch or Triton.

    ops = get_ops("auto", device)   # Triton on CUDA when triton imports, torch otherwise
    ops.write_kv(...); ops.paged_decode_attention(...); ...

Both backends expose the same five functions with the same signatures (the torch ones are the
oracle): write_kv, copy_blocks, paged_prefill_attention, paged_decode_attention,
shared_prefix_decode_attention. Asking for "triton" where it cannot run raises a one-line
BackendError. On a CPU device "triton" is accepted only under the Triton interpreter
(TRITON_INTERPRET=1) - slow, for tests.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import torch

BACKENDS = ("auto", "torch", "triton")


class BackendError(RuntimeError):
    """The requested kernel backend cannot run here; the message is one line."""


def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """'torch' or 'triton' for this device, or a BackendError saying why not."""
    device = torch.device(device)
    if backend not in BACKENDS:
        raise BackendError(f"attention backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "auto" and device.type != "cuda":
        return "torch"
    error = _triton_import_error()
    if backend == "auto":
        return "triton" if error is None else "torch"
    if error is not None:
        raise BackendError(f"attention_backend='triton' but triton does not import ({error}); use 'torch' or 'auto'")
    if device.type != "cuda" and not _interpreter_on():
        raise BackendError(
            f"attention_backend='triton' needs a CUDA device (got {device.type}); use 'torch' or 'auto', "
            "or set TRITON_INTERPRET=1 to run the kernels in the (slow) interpreter"
        )
    return "triton"


@functools.cache
def _torch_ops() -> SimpleNamespace:
    from kernels.copy_blocks import copy_blocks
    from kernels.paged_attention import paged_decode_attention, paged_prefill_attention
    from kernels.shared_prefix import shared_prefix_decode_attention
    from kernels.write_kv import write_kv

    return SimpleNamespace(
        name="torch",
        write_kv=write_kv,
        copy_blocks=copy_blocks,
        paged_prefill_attention=paged_prefill_attention,
        paged_decode_attention=paged_decode_attention,
        shared_prefix_decode_attention=shared_prefix_decode_attention,
    )


_TRITON_MODULES = (  # dependency order
    "kernels.triton_common",
    "kernels.triton_paged_decode",
    "kernels.triton_shared_prefix",
    "kernels.triton_paged_prefill",
    "kernels.triton_write_kv",
    "kernels.triton_copy_blocks",
)
_MODE_PROBES = (("kernels.triton_common", "paged_tile_scores"), ("kernels.triton_paged_decode", "_decode_kernel"))


def _sync_interpreter_mode() -> None:
    """triton.jit decides compiled-vs-interpreted when a kernel module is imported; if
    TRITON_INTERPRET changed since (a test set it after something imported the kernels),
    re-import the kernel modules so they follow it."""
    import importlib
    import sys

    # the shared helpers, which the prefill kernel imports without the decode kernel, and the latter
    probes = [getattr(sys.modules[name], attr) for name, attr in _MODE_PROBES if name in sys.modules]
    if not probes:
        return
    from triton.runtime.interpreter import InterpretedFunction

    if all(isinstance(fn, InterpretedFunction) == _interpreter_on() for fn in probes):
        return
    for name in _TRITON_MODULES:
        if name in sys.modules:
            importlib.reload(sys.modules[name])
    _triton_ops.cache_clear()


@functools.cache
def _triton_ops() -> SimpleNamespace:
    from kernels.triton_copy_blocks import copy_blocks
    from kernels.triton_paged_decode import paged_decode_attention
    from kernels.triton_paged_prefill import paged_prefill_attention
    from kernels.triton_shared_prefix import shared_prefix_decode_attention
    from kernels.triton_write_kv import write_kv

    return SimpleNamespace(
        name="triton",
        write_kv=write_kv,
        copy_blocks=copy_blocks,
        paged_prefill_attention=paged_prefill_attention,
        paged_decode_attention=paged_decode_attention,
        shared_prefix_decode_attention=shared_prefix_decode_attention,
    )


def get_ops(backend: str = "auto", device: torch.device | str = "cpu") -> SimpleNamespace:
    """The op namespace for `backend` ("auto" | "torch" | "triton") on `device`; `.name` says
    which was picked."""
    if resolve_backend(backend, device) == "torch":
        return _torch_ops()
    _sync_interpreter_mode()
    return _triton_ops()
