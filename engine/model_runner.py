"""Runs an HF transformers causal LM over the paged KV cache, one scheduled step at a time.

Two forwards over the same loaded weights. The llama and qwen2 families run the engine's native
forward (engine/native_llama.py: fused projections, no per-op module overhead) unless
model_impl="transformers". Every other model runs its own modeling code unchanged with only its
attention function ours (engine/attention.py): the model is loaded with
attn_implementation=ATTN_NAME, and every step passes its AttentionMetadata to `model(...)` as the
keyword `attn_metadata`, which transformers hands on to each attention layer.

A step is one flattened batch: input_ids and position_ids [1, T] hold every scheduled
sequence's new tokens back to back, decodes first, then prefill chunks. Logits are computed
only for the rows that sample (through `logits_to_keep`, so model-specific final soft-capping
still applies).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from engine.attention import ATTN_NAME, AttentionMetadata, register_attention
from engine.config import EngineConfig, EngineConfigError
from engine.cpu_tuning import keep_freed_memory, trim_heap, use_onednn_linears
from engine.native_llama import NativeLlama, unsupported_reason
from engine.scheduler import ScheduledBatch
from kernels.backend import get_ops
from kernels.paged_attention import plan_decode


def _give_back_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        trim_heap()


class ModelRunner:
    def __init__(self, config: EngineConfig, hf_config):
        register_attention()
        self.config = config
        self.device = torch.device(config.device)
        self.dtype = config.torch_dtype
        self.block_size = config.block_size
        self.hf_config = hf_config
        self._load_model()
        if self.device.type == "cpu":
            keep_freed_memory()
        text = self.model.config.get_text_config()
        self.num_layers = text.num_hidden_layers
        self.num_kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        self.head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.supports_logits_to_keep = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self.ops = get_ops(config.attention_backend, self.device)
        self.num_blocks = self._decide_num_blocks()
        self.allocate_kv()

    def _load_model(self) -> None:
        from transformers import AutoModelForCausalLM

        cfg = self.config
        self.model = AutoModelForCausalLM.from_pretrained(
            cfg.model, config=self.hf_config, dtype=self.dtype, attn_implementation=ATTN_NAME,
            trust_remote_code=cfg.trust_remote_code,
        ).to(self.device).eval()
        if self.device.type == "cpu":
            use_onednn_linears(self.model)  # same Parameter objects: load_weights updates them in place
        self.native = None
        if cfg.model_impl != "transformers":
            reason = unsupported_reason(self.model)
            if reason is None:
                self.native = NativeLlama(self.model)  # views the model's Parameters: in-place updates reach it
            elif cfg.model_impl == "native":
                raise EngineConfigError(f"model_impl=native: {reason}")

    # --- the KV pool and the weights between rollout phases (LLMEngine.sleep / wake_up) -------
    def allocate_kv(self) -> None:
        shape = (self.num_layers, 2, self.num_blocks, self.block_size, self.num_kv_heads, self.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.kv_caches = [(self.kv_cache[i, 0], self.kv_cache[i, 1]) for i in range(self.num_layers)]
        self.graphs = None  # CUDA graphs of decode steps (engine/cuda_graphs.py; unvalidated)
        if self.device.type == "cuda" and self.ops.name == "triton" and not self.config.enforce_eager:
            from engine.cuda_graphs import capture_decode_graphs

            with torch.inference_mode():
                self.graphs = capture_decode_graphs(self, self.config.max_num_seqs)

    def release_kv(self) -> None:
        """Give the KV pool's memory back (the graphs hold its addresses: they go too)."""
        self.kv_cache, self.kv_caches, self.graphs = None, [], None
        _give_back_memory(self.device)

    def release_weights(self) -> None:
        self.model = self.native = None
        _give_back_memory(self.device)

    def reload_weights(self) -> None:
        self._load_model()

    @torch.no_grad()
    def load_weights(self, weights) -> int:
        """Copy (name, tensor) pairs into the model's parameters in place: HF parameter names,
        shapes checked, dtype and device cast. Tied parameters are one object under two names,
        so updating either keeps them tied. Returns how many tensors were loaded."""
        params = dict(self.model.named_parameters(remove_duplicate=False))
        count = 0
        for name, tensor in weights:
            p = params.get(name)
            if p is None:
                near = [k for k in params if k.endswith(name.split(".", 1)[-1])][:1]
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise ValueError(f"load_weights: the model has no parameter {name!r}{hint}")
            if tuple(tensor.shape) != tuple(p.shape):
                raise ValueError(f"load_weights: {name}: shape {tuple(tensor.shape)} does not match the model's {tuple(p.shape)}")
            p.copy_(tensor.detach().to(device=p.device, dtype=p.dtype))
            count += 1
        return count

    @property
    def bytes_per_block(self) -> int:
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * self.dtype.itemsize

    def _decide_num_blocks(self) -> int:
        cfg = self.config
        if cfg.num_kv_blocks is not None:
            num_blocks, budget = cfg.num_kv_blocks, f"num_kv_blocks={cfg.num_kv_blocks}"
        elif self.device.type == "cuda":
            free_bytes = self._profile_cuda_free_bytes()
            num_blocks = max(free_bytes // self.bytes_per_block, 0)
            budget = f"gpu_memory_utilization={cfg.gpu_memory_utilization} ({free_bytes / 2**30:.2f} GiB left for KV)"
        else:
            num_blocks = cfg.kv_cache_memory // self.bytes_per_block
            budget = f"kv_cache_memory={cfg.kv_cache_memory} bytes"
        need = -(-cfg.max_model_len // self.block_size)
        if num_blocks < need:
            raise EngineConfigError(
                f"{budget} gives {num_blocks} KV blocks of {self.block_size} tokens, but one "
                f"max_model_len={cfg.max_model_len} sequence needs {need}: raise the KV budget or lower max_model_len"
            )
        return int(num_blocks)

    @torch.inference_mode()
    def _profile_cuda_free_bytes(self) -> int:
        """Peak memory of a worst-case step (max_num_batched_tokens tokens, max_num_seqs logits),
        as vLLM does; what the utilisation target leaves after it is for KV."""
        cfg = self.config
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        num_tokens = cfg.max_num_batched_tokens
        seq_len = min(cfg.max_model_len, num_tokens, 1024)
        lens = [seq_len] * (num_tokens // seq_len) + ([num_tokens % seq_len] if num_tokens % seq_len else [])
        blocks = [-(-n // self.block_size) for n in lens]
        scratch = torch.zeros(
            (self.num_layers, 2, sum(blocks), self.block_size, self.num_kv_heads, self.head_dim), dtype=self.dtype, device=self.device
        )
        caches = [(scratch[i, 0], scratch[i, 1]) for i in range(self.num_layers)]
        tables, first = [], 0
        for b in blocks:
            tables.append(list(range(first, first + b)))
            first += b
        width = max(blocks)
        slots = torch.cat([torch.arange(n) + t[0] * self.block_size for n, t in zip(lens, tables)])
        meta = AttentionMetadata(
            kv_caches=caches, slot_mapping=slots.to(self.device), num_decode_tokens=0, ops=self.ops,
            prefill_cu_seqlens_q=torch.tensor([0] + lens, device=self.device).cumsum(0),
            prefill_context_lens=torch.tensor(lens, device=self.device),
            prefill_block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], device=self.device),
        )
        positions = torch.cat([torch.arange(n) for n in lens]).to(self.device)[None]
        input_ids = torch.zeros_like(positions)
        keep = torch.arange(max(num_tokens - cfg.max_num_seqs, 0), num_tokens, device=self.device)
        self.forward(input_ids, positions, meta, keep)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        del scratch, caches, meta
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        # memory outside torch's allocator (CUDA context, cuBLAS workspaces, other processes)
        non_torch = max(total - free - torch.cuda.memory_reserved(self.device), 0)
        scratch_bytes = sum(blocks) * self.bytes_per_block
        return int(total * cfg.gpu_memory_utilization - (peak - scratch_bytes) - non_torch)

    def forward(self, input_ids, positions, meta: AttentionMetadata, logits_rows: torch.Tensor) -> torch.Tensor:
        """The model over one step's prepared inputs: logits [R, V] in the model's dtype for rows
        `logits_rows`. No block copies, no host sync (engine/cuda_graphs.py captures this)."""
        if self.native is not None:
            return self.native.forward(input_ids, positions, meta, logits_rows)
        if self.supports_logits_to_keep:
            out = self.model(
                input_ids=input_ids, position_ids=positions, use_cache=False, attn_metadata=meta, logits_to_keep=logits_rows
            )
            return out.logits[0]
        hidden = self.model.get_decoder()(input_ids=input_ids, position_ids=positions, use_cache=False, attn_metadata=meta)
        return self.model.get_output_embeddings()(hidden.last_hidden_state[0, logits_rows])

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> torch.Tensor:
        """Run one step; return float32 logits [R, V]: per entry in batch order, the rows of
        `batch.logits_spans()` (its last row is the one it samples from). The caller samples."""
        if batch.copies:
            src, dst = zip(*batch.copies)
            self.ops.copy_blocks(
                [k for k, _ in self.kv_caches], [v for _, v in self.kv_caches],
                torch.tensor(src, device=self.device), torch.tensor(dst, device=self.device),
            )
        input_ids, positions, meta, logits_rows = self.prepare(batch)
        # Steps with forked samples run eagerly: their sharing layout changes every step, and the
        # shared-prefix kernel (prompt KV read once per group) is worth more than launch savings.
        if (self.graphs is not None and not batch.shared_prefixes
                and batch.num_decode == len(batch.seqs) <= self.graphs.max_batch):
            return self.graphs.run(input_ids, positions, meta, logits_rows).float()
        return self.forward(input_ids, positions, meta, logits_rows).float()

    def prepare(self, batch: ScheduledBatch):
        bs, dev = self.block_size, self.device
        ids, slots, positions, logits_rows = [], [], [], []
        context_lens, tables = [], []
        offset = 0
        for seq, num_new, span in zip(batch.seqs, batch.num_new_tokens, batch.logits_spans()):
            start = seq.num_computed_tokens
            ids.extend(seq.token_ids[start : start + num_new])
            pos = np.arange(start, start + num_new)
            positions.append(pos)
            slots.append(np.asarray(seq.block_table)[pos // bs] * bs + pos % bs)
            context_lens.append(start + num_new)
            tables.append(seq.block_table)
            offset += num_new
            logits_rows.extend(range(offset - span, offset))
        to_tensor = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.long, device=dev)  # noqa: E731
        nd = batch.num_decode
        meta = AttentionMetadata(
            kv_caches=self.kv_caches, slot_mapping=to_tensor(np.concatenate(slots)), num_decode_tokens=nd, ops=self.ops
        )
        if nd:
            meta.decode_context_lens = to_tensor(context_lens[:nd])
            meta.decode_block_tables = to_tensor(_pad(tables[:nd]))
            for rows, num_blocks in batch.shared_prefixes:
                first = tables[rows[0]][:num_blocks]
                assert all(tables[r][:num_blocks] == first for r in rows), "shared prefix blocks differ"
                meta.shared_prefixes.append((to_tensor(rows), num_blocks))
            if self.ops.name == "torch":
                meta.decode_plan = plan_decode(context_lens[:nd], tables[:nd], batch.shared_prefixes, bs, dev)
        if nd < len(batch.seqs):
            meta.prefill_cu_seqlens_q = to_tensor(np.cumsum([0] + batch.num_new_tokens[nd:]))
            meta.prefill_context_lens = to_tensor(context_lens[nd:])
            meta.prefill_block_tables = to_tensor(_pad(tables[nd:]))
        input_ids = to_tensor(ids)[None]
        pos = to_tensor(np.concatenate(positions))[None]
        return input_ids, pos, meta, to_tensor(logits_rows)


def _pad(tables: list[list[int]]) -> np.ndarray:
    width = max(len(t) for t in tables)
    out = np.zeros((len(tables), width), dtype=np.int64)
    for i, t in enumerate(tables):
        out[i, : len(t)] = t
    return out
