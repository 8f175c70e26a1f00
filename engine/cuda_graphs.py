"""CUDA-graph capture of decode steps (CUDA + Triton only, and only with enforce_eager=False: eager is the default).

A decode-only step of B sequences runs as the replay of a graph captured for the smallest
capture size >= B. The graph reads static buffers (token ids, positions, slots, context lengths,
block tables padded to max_model_len); the step's values are copied into them and the padding
rows get context length 0 and slot -1 (they attend to nothing and write nothing). Captured
steps use the plain paged decode kernel: the shared-prefix grouping changes every step and has a
data-dependent launch grid, so a graph cannot hold it (the results are the same either way).

If capture fails (a model whose forward syncs with the host, say), the runner logs it and stays
eager. UNVALIDATED: written without access to a GPU.
"""

from __future__ import annotations

import logging

import torch

from engine.attention import AttentionMetadata

logger = logging.getLogger(__name__)

CAPTURE_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)


class DecodeGraphs:
    def __init__(self, runner, max_batch: int):
        """`runner`: the engine's ModelRunner (its forward, device, config, kv_caches and ops)."""
        self.runner = runner
        self.sizes = [s for s in CAPTURE_SIZES if s <= max_batch] or [1]
        if max_batch > self.sizes[-1] and max_batch <= CAPTURE_SIZES[-1]:
            self.sizes.append(max_batch)
        top = self.sizes[-1]
        dev = runner.device
        width = -(-runner.config.max_model_len // runner.block_size)
        self.input_ids = torch.zeros(1, top, dtype=torch.long, device=dev)
        self.positions = torch.zeros(1, top, dtype=torch.long, device=dev)
        self.slots = torch.full((top,), -1, dtype=torch.long, device=dev)
        self.context_lens = torch.zeros(top, dtype=torch.long, device=dev)
        self.block_tables = torch.zeros(top, width, dtype=torch.long, device=dev)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        pool = None
        for size in reversed(self.sizes):  # largest first, the others reuse its memory pool
            meta = AttentionMetadata(
                kv_caches=runner.kv_caches, slot_mapping=self.slots[:size], num_decode_tokens=size,
                decode_context_lens=self.context_lens[:size], decode_block_tables=self.block_tables[:size],
                ops=runner.ops,
            )
            rows = torch.arange(size, device=dev)
            args = (self.input_ids[:, :size], self.positions[:, :size], meta, rows)
            for _ in range(2):  # compile the Triton kernels and warm the allocator outside capture
                runner.forward(*args)
            torch.cuda.synchronize(dev)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = runner.forward(*args)
            pool = graph.pool()
            self.graphs[size] = (graph, logits)
        torch.cuda.synchronize(dev)

    @property
    def max_batch(self) -> int:
        return self.sizes[-1]

    def run(self, input_ids, positions, meta, logits_rows: torch.Tensor) -> torch.Tensor:
        """Replay for a decode-only step (its eager inputs as prepare() built them)."""
        n = input_ids.shape[1]
        size = next(s for s in self.sizes if s >= n)
        width = meta.decode_block_tables.shape[1]
        self.input_ids[:, :n].copy_(input_ids)
        self.positions[:, :n].copy_(positions)
        self.slots[:n].copy_(meta.slot_mapping)
        self.context_lens[:n].copy_(meta.decode_context_lens)
        self.block_tables[:n, :width].copy_(meta.decode_block_tables)
        if size > n:
            self.input_ids[:, n:size].zero_()
            self.positions[:, n:size].zero_()
            self.slots[n:size].fill_(-1)
            self.context_lens[n:size].zero_()
        graph, logits = self.graphs[size]
        graph.replay()
        return logits[logits_rows]


def capture_decode_graphs(runner, max_batch: int) -> DecodeGraphs | None:
    try:
        return DecodeGraphs(runner, max_batch)
    except Exception as e:  # noqa: BLE001 - any capture failure means: run eagerly
        logger.warning("CUDA-graph capture failed, decoding eagerly: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        torch.cuda.synchronize(runner.device)
        return None
