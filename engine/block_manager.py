"""Physical KV blocks: ref counts, an LRU free list, fork, copy-on-write and the prefix cache.

Free list. An OrderedDict of block ids used as a queue with O(1) removal from the middle.
A block whose ref count drops to 0 is appended at the tail and keeps its prefix-cache entry, so
the head is always the least recently freed block: eviction is LRU. A sequence's blocks are
released last-to-first, so its tail blocks sit nearer the head and the prefix - the part other
requests can share - survives longest. A prefix-cache hit on a free block takes it out of the
queue (ref count 0 -> 1).

Allocation. One block (a decode step, a copy-on-write copy) is the queue's head. A run of k > 1
blocks (a prefill chunk) is taken as consecutive ids when free blocks that cache nothing allow
it - first the ids right after the sequence's last block, else the lowest such run - and
otherwise as the k least recently freed blocks, sorted by id. Consecutive ids matter to the CPU
attention path, which reads a fork group's shared prompt as one view of the cache instead of
gathering it in every layer and step; taking clean blocks out of LRU order costs the prefix
cache nothing. `clean` is a byte mask of the free blocks with no cache entry, so that search is
one bytes.find in C.

Prefix cache. A full block is cached under the key (parent entry id, its token ids, extra key),
where the parent entry id names the cache entry of the block before it (0 for the first block).
The key is thus chained: it stands for the whole prefix. The dict hashes the key and compares
the full key (token ids included) on a hit, so a hash collision cannot make two different
prefixes share KV; naming the parent by a never-reused entry id (not by its hash) extends that
to the whole chain. Blocks are registered when they are allocated for a step that fills them, so
a request scheduled later in the same step can already share them (each layer writes the step's
K/V before it attends).

Copy-on-write. Only a partially filled block can be shared by sequences that will append to it
(the last prompt block, shared by a fork). The first sequences to append copy it; the last one
writes in place. Full blocks are never written again.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Hashable, Iterable

from engine.sequence import Sequence

CacheKey = tuple[int, tuple[int, ...], Hashable]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True, extra_key: Hashable = None):
        assert num_blocks > 0 and block_size > 0
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.extra_key = extra_key  # e.g. a LoRA or model id: keeps different weights' KV apart
        self.ref_counts = [0] * num_blocks
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.clean = bytearray(b"\x01") * num_blocks  # 1: free and caching nothing
        self.cache: dict[CacheKey, int] = {}  # key -> block id
        self.block_key: list[CacheKey | None] = [None] * num_blocks
        self.block_entry: list[int] = [0] * num_blocks  # the cache entry id a block is registered as
        self._next_entry = 1
        self.peak_used_blocks = 0
        self.cache_query_tokens = 0
        self.cache_hit_tokens = 0

    # --- accounting -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks with no owner, cached or not (a cached free block is evictable)."""
        return len(self.free_queue)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_queue)

    def free_order(self) -> list[int]:
        """The free list, next-to-allocate first (tests and debugging)."""
        return list(self.free_queue)

    def _allocate(self, block_id: int | None = None) -> int:
        """Take a free block: `block_id`, or else the least recently freed one (evicting its cache entry)."""
        if block_id is None:
            block_id, _ = self.free_queue.popitem(last=False)
        else:
            del self.free_queue[block_id]
        assert self.ref_counts[block_id] == 0
        if self.block_key[block_id] is not None:
            self._uncache(block_id)
        self.ref_counts[block_id] = 1
        self.clean[block_id] = 0
        return block_id

    def _allocate_run(self, k: int, after: int | None) -> list[int]:
        """k blocks for one sequence whose last block is `after`: consecutive ids when clean free
        blocks allow it (see the module docstring)."""
        if k == 1:
            return [self._allocate()]
        run = b"\x01" * k
        if after is not None and self.clean[after + 1 : after + 1 + k] == run:
            start = after + 1
        else:
            start = self.clean.find(run)
        if start >= 0:
            return [self._allocate(b) for b in range(start, start + k)]
        return sorted(self._allocate() for _ in range(k))

    def _release(self, block_id: int) -> bool:
        """Drop one reference; True if the block became free."""
        self.ref_counts[block_id] -= 1
        assert self.ref_counts[block_id] >= 0, f"block {block_id} released more often than taken"
        if self.ref_counts[block_id] == 0:
            self.free_queue[block_id] = None
            self.clean[block_id] = self.block_key[block_id] is None
            return True
        return False

    def _uncache(self, block_id: int) -> None:
        key = self.block_key[block_id]
        assert self.cache.get(key) == block_id
        del self.cache[key]
        self.block_key[block_id] = None
        self.clean[block_id] = self.ref_counts[block_id] == 0

    def _note_peak(self) -> None:
        self.peak_used_blocks = max(self.peak_used_blocks, self.num_used_blocks)

    # --- prefix cache -----------------------------------------------------------------------
    def reset_prefix_cache(self) -> bool:
        """Forget every cached block (after a weight update their K/V is stale). Only when no
        block is in use, as vLLM: False (nothing changed) while a request holds blocks."""
        if self.num_used_blocks:
            return False
        for block_id, key in enumerate(self.block_key):
            if key is not None:
                self._uncache(block_id)
        assert not self.cache and all(self.clean)
        return True

    def find_cached_prefix(self, token_ids: list[int], max_tokens: int) -> list[int]:
        """Block ids caching the longest prefix of token_ids made of full blocks, at most
        max_tokens tokens long. No side effects: `acquire_prefix` takes them."""
        if not self.enable_prefix_caching:
            return []
        bs, hits, parent = self.block_size, [], 0
        for i in range(max_tokens // bs):
            block_id = self.cache.get((parent, tuple(token_ids[i * bs : (i + 1) * bs]), self.extra_key))
            if block_id is None:
                break
            hits.append(block_id)
            parent = self.block_entry[block_id]
        return hits

    def acquire_prefix(self, seq: Sequence, block_ids: list[int], query_tokens: int) -> None:
        """Start `seq` (which holds no blocks) on cached blocks: its first len(block_ids) blocks
        count as computed. query_tokens: how many tokens were looked up (for the hit rate)."""
        assert not seq.block_table and seq.num_computed_tokens == 0
        for block_id in block_ids:
            if self.ref_counts[block_id] == 0:
                del self.free_queue[block_id]
            self.ref_counts[block_id] += 1
        seq.block_table = list(block_ids)
        seq.block_cache_ids = [self.block_entry[b] for b in block_ids]
        seq.num_computed_tokens = len(block_ids) * self.block_size
        if self.enable_prefix_caching:
            self.cache_query_tokens += query_tokens
            self.cache_hit_tokens += seq.num_computed_tokens
        self._note_peak()

    def _cache_full_blocks(self, seq: Sequence, num_tokens: int) -> None:
        """Register seq's blocks that are full within its first num_tokens tokens."""
        bs = self.block_size
        for i in range(len(seq.block_cache_ids), num_tokens // bs):
            parent = seq.block_cache_ids[i - 1] if i else 0
            key = (parent, tuple(seq.token_ids[i * bs : (i + 1) * bs]), self.extra_key)
            twin = self.cache.get(key)
            if twin is not None:  # identical content already cached (e.g. greedy samples): chain on it
                seq.block_cache_ids.append(self.block_entry[twin])
                continue
            block_id = seq.block_table[i]
            assert self.block_key[block_id] is None, "a registered block is already in the chain"
            self.cache[key] = block_id
            self.block_key[block_id] = key
            self.block_entry[block_id] = self._next_entry
            seq.block_cache_ids.append(self._next_entry)
            self._next_entry += 1

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.cache_hit_tokens / self.cache_query_tokens if self.cache_query_tokens else 0.0

    # --- per-step allocation ----------------------------------------------------------------
    def blocks_needed(self, plan: Iterable[tuple[Sequence, int]]) -> int:
        """Exactly how many free blocks `allocate_slots` will take for (seq, new tokens) pairs
        scheduled in this order, copy-on-write copies included."""
        bs, need, appenders = self.block_size, 0, Counter()
        for seq, num_new in plan:
            assert len(seq.block_table) == cdiv(seq.num_computed_tokens, bs)
            need += cdiv(seq.num_computed_tokens + num_new, bs) - len(seq.block_table)
            if seq.num_computed_tokens % bs and self.ref_counts[seq.block_table[-1]] > 1:
                appenders[seq.block_table[-1]] += 1
        for block_id, k in appenders.items():
            # the last of a block's owners to append writes in place
            need += k if k < self.ref_counts[block_id] else k - 1
        return need

    def blocks_needed_from(self, cached: list[int], num_tokens: int) -> int:
        """Free blocks a new sequence takes to start on `cached` and cover num_tokens tokens
        (a cached block that is currently free leaves the free list too)."""
        return cdiv(num_tokens, self.block_size) - len(cached) + sum(self.ref_counts[b] == 0 for b in cached)

    def allocate_slots(self, seq: Sequence, num_new: int) -> list[tuple[int, int]]:
        """Give `seq` room for num_new more tokens. Returns the (src, dst) block copies the runner
        must make before writing K/V (copy-on-write of a shared partial block)."""
        bs = self.block_size
        table = seq.block_table
        assert len(table) == cdiv(seq.num_computed_tokens, bs), "every allocated slot is computed each step"
        copies = []
        if seq.num_computed_tokens % bs and self.ref_counts[table[-1]] > 1:
            new_block = self._allocate()
            copies.append((table[-1], new_block))
            self._release(table[-1])
            table[-1] = new_block
        num_blocks = cdiv(seq.num_computed_tokens + num_new, bs) - len(table)
        if num_blocks > 0:
            table += self._allocate_run(num_blocks, table[-1] if table else None)
        if self.enable_prefix_caching:
            self._cache_full_blocks(seq, seq.num_computed_tokens + num_new)
        self._note_peak()
        return copies

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Child shares every block of parent's computed tokens (ref +1, no KV copied)."""
        assert not child.block_table
        num_tokens = parent.num_computed_tokens
        child.block_table = parent.block_table[: cdiv(num_tokens, self.block_size)]
        for block_id in child.block_table:
            self.ref_counts[block_id] += 1
        child.block_cache_ids = parent.block_cache_ids[: num_tokens // self.block_size]
        child.num_computed_tokens = num_tokens

    def free(self, seq: Sequence) -> None:
        """Release seq's blocks, last block first. A block allocated for KV that was never
        computed (its sequence was preempted in the step that scheduled it) loses its cache entry."""
        computed_blocks = seq.num_computed_tokens // self.block_size
        for i in range(len(seq.block_table) - 1, -1, -1):
            block_id = seq.block_table[i]
            if self._release(block_id) and i >= computed_blocks and self.block_key[block_id] is not None:
                self._uncache(block_id)
        seq.block_table = []
        seq.block_cache_ids = []
