"""What the SC-8shot benchmark measures about the machine and the model, apart from the systems.

Machine facts (CPU, cores, threads, library versions, load average, git commit); the fp32 GEMM rate
(`measure_gemm`) and, on CUDA, the copy bandwidth (`measure_bandwidth`); the peak RSS of a block
(`RssSampler`); the model's facts (`model_facts`: parameters, KV bytes per token, FLOPs per token);
and the throughput ceiling they give (`ceiling`, `ceiling_for`).
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any

GEMM_SIZE = 2048


# --------------------------------------------------------------------------------------------------
# Machine


def machine_facts(device: str) -> dict[str, Any]:
    import numpy
    import torch
    import transformers

    import harness

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    facts = {
        "cpu": cpu, "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "numpy": numpy.__version__,
        "harness": getattr(harness, "__version__", None), "device": device,
        "load_avg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "malloc": "glibc: mmap threshold 1 GiB, no heap trim (engine.cpu_tuning.keep_freed_memory, process-wide, "
                  "before any system runs)" if str(device) == "cpu" else None,
    }
    try:
        import subprocess

        facts["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                             cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001
        facts["git_commit"] = None
    if str(device).startswith("cuda"):
        facts["gpu"] = torch.cuda.get_device_name()
    return facts


# --------------------------------------------------------------------------------------------------
# Peak RSS


class RssSampler:
    """Peak resident set size of this process while the block runs. On Linux the kernel keeps the
    high-water mark (VmHWM), which writing 5 to /proc/self/clear_refs resets: no sampling thread,
    whose wake-ups would stall the measured systems' GEMM threads on a small machine. Elsewhere a
    thread samples the RSS every `interval` seconds."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RssSampler":
        self.start = self.peak = rss_bytes()
        if not _reset_hwm():
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.peak = max(self.peak, rss_bytes(), _hwm_bytes() if self._thread is None else 0)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _hwm_bytes() > 0
    except OSError:
        return False


def _hwm_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------------------------------
# GEMM rate and bandwidth


def measure_gemm(device: str, dtype, size: int = GEMM_SIZE, reps: int = 5) -> float:
    """Median FLOP/s of a size^3 matmul at the current thread count; on CPU the better of torch.mm
    (MKL) and oneDNN's matmul (what the engine's linear layers use there), so that the ceiling is
    the machine's best GEMM rate, not the slower library's."""
    import torch

    from engine.cpu_tuning import onednn_available, onednn_linear

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    products = [torch.mm]
    if torch.device(device).type == "cpu" and onednn_available():
        products.append(onednn_linear)  # a @ b.T: the same FLOPs
    best = 0.0
    for product in products:
        times = []
        for i in range(reps + 1):
            _sync(device)
            t = time.perf_counter()
            product(a, b)
            _sync(device)
            if i:
                times.append(time.perf_counter() - t)
        best = max(best, 2 * size**3 / statistics.median(times))
    return best


def measure_bandwidth(device: str, mib: int = 1024) -> float:
    """Bytes/s of a large on-device copy (read + write)."""
    import torch

    x = torch.empty(mib << 18, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    times = []
    for i in range(6):
        _sync(device)
        t = time.perf_counter()
        y.copy_(x)
        _sync(device)
        if i:
            times.append(time.perf_counter() - t)
    return 2 * x.nbytes / statistics.median(times)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------------
# The model and the ceiling


def kv_bytes_per_token(lm) -> int:
    text = lm.config.get_text_config()
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * lm.dtype.itemsize


def model_facts(lm, prompt_ids: list[list[int]], max_tokens: int) -> dict[str, Any]:
    text = lm.config.get_text_config()
    total = sum(p.numel() for p in lm.parameters())
    emb_in = lm.get_input_embeddings().weight
    emb_out = lm.get_output_embeddings()
    emb_out = emb_out.weight if emb_out is not None else None
    tied = emb_out is not None and emb_out.data_ptr() == emb_in.data_ptr()
    embedding = emb_in.numel() + (0 if tied or emb_out is None else emb_out.numel())
    non_emb = total - embedding
    lm_head = emb_out.numel() if emb_out is not None else 0
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    layers = text.num_hidden_layers
    mean_prompt = statistics.mean(map(len, prompt_ids))
    mean_ctx = mean_prompt + max_tokens / 2
    attn_per_token = 4 * layers * heads * head_dim * mean_ctx  # QK^T and PV at the mean decode context
    return {
        "parameters": total, "non_embedding_parameters": non_emb, "lm_head_parameters": lm_head,
        "tied_embeddings": tied, "layers": layers, "hidden_size": text.hidden_size, "heads": heads,
        "kv_heads": getattr(text, "num_key_value_heads", None) or heads, "head_dim": head_dim,
        "vocab_size": text.vocab_size, "kv_bytes_per_token": kv_bytes_per_token(lm),
        "weight_bytes": sum(p.numel() * p.element_size() for p in lm.parameters()),
        "flops_per_token": 2 * non_emb,
        "flops_per_generated_token_all_in": 2 * non_emb + 2 * lm_head + attn_per_token,
        "mean_prompt_tokens": mean_prompt,
    }


def ceiling(device: str, facts: dict[str, Any], gemm_samples: list[float], configs: list[dict], prompt_ids, max_tokens: int) -> dict[str, Any]:
    gemm = statistics.median(gemm_samples)
    out: dict[str, Any] = {
        "gemm": f"{GEMM_SIZE}x{GEMM_SIZE}x{GEMM_SIZE} matmul" + (", best of MKL and oneDNN" if str(device) == "cpu" else ""),
        "gemm_flops_per_s": gemm,
        "gemm_flops_per_s_samples": gemm_samples,
        "basis": "FLOP-bound: GEMM FLOP/s / (2 x non-embedding parameters) per token",
        "tokens_per_s": gemm / facts["flops_per_token"],
        # the whole workload's model FLOPs (prefill once per prompt, lm_head and attention included) per
        # generated token: what an engine doing no redundant work could reach at the GEMM rate
        "all_in": {},
    }
    prompt_tokens = sum(map(len, prompt_ids))
    for cfg in configs:
        gen = len(prompt_ids) * cfg["n"] * max_tokens
        work = prompt_tokens * facts["flops_per_token"] + gen * facts["flops_per_generated_token_all_in"]
        out["all_in"][str(cfg["n"])] = gemm * gen / work
    if str(device).startswith("cuda"):
        bw = measure_bandwidth(device)
        out["bandwidth_bytes_per_s"] = bw
        out["basis"] = "memory-bound decode: weights once per step + each row's KV, at the measured copy bandwidth"
        out["per_n"] = {}
        for cfg in configs:
            rows = len(prompt_ids) * cfg["n"]
            ctx = facts["mean_prompt_tokens"] + max_tokens / 2
            step_bytes = facts["weight_bytes"] + rows * ctx * facts["kv_bytes_per_token"]
            out["per_n"][str(cfg["n"])] = rows * bw / step_bytes
        out["tokens_per_s"] = None
    return out


def ceiling_for(ceil: dict[str, Any], n: int) -> float | None:
    if ceil.get("per_n"):
        return ceil["per_n"].get(str(n))
    return ceil.get("tokens_per_s")
