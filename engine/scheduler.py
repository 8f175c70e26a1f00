"""Continuous batching: which sequences compute how many tokens this step.

Every sequence has `num_computed_tokens` of `num_tokens` in the KV cache; a step gives each
scheduled sequence a chunk of its uncomputed tokens. A decoding sequence has one (its last
sampled token), a prefill or a recompute after preemption has many and is chunked under the
step's token budget. So prefill chunks and decode tokens share one flattened batch.

Policy: FCFS. Running groups are kept in arrival order and served oldest first; when the blocks
a group needs are not free, the most recently arrived running group is preempted (all its
samples together - they share blocks), freed, and put back at the head of the waiting queue to
be recomputed. Waiting groups are admitted oldest first, only in steps that preempted nothing.
Admission is optimistic for a new group (its first chunk must fit) and conservative for one that
was preempted: it resumes only when its whole footprint fits beside the worst-case growth of the
running groups (every running sample to its max_tokens), or when nothing else runs. Without that,
a long chain that was just preempted fits again at once, recomputes thousands of tokens, and is
preempted again a block later (measured: 387 preemptions for two n=4 requests of 8k tokens).

Forks: a group with n > 1 unfinished samples and no shared blocks yet (`needs_fork`) schedules
only its carrier, and only up to the end of the prompt. When the carrier has computed the prompt
the others take its blocks (`commit`). On the first fork the prompt's last-token logits are
sampled once per sample (`ScheduledBatch.sample_targets`).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from engine.block_manager import BlockManager, cdiv
from engine.config import EngineConfig
from engine.sequence import Sequence, SequenceGroup


@dataclass(slots=True)
class ScheduledBatch:
    """One step's work. Entries with one new token (decodes) come first."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    # per entry: the sequences its last token's logits are sampled for (empty = no sampling)
    sample_targets: list[list[Sequence]] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write (src, dst) blocks
    # (decode rows, n): those rows' block tables start with the same n blocks (a fork's prompt,
    # or a prompt prefix served by the prefix cache); the runner reads those blocks once
    shared_prefixes: list[tuple[list[int], int]] = field(default_factory=list)
    num_decode: int = 0
    num_preempted: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.seqs

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def logits_spans(self) -> list[int]:
        """Logits rows per entry, in batch order: every new token of a prompt chunk whose request
        asked for prompt logprobs, else one row for an entry that samples, else none."""
        return [num_new if seq.group.wants_prompt_logits and seq.num_computed_tokens < seq.num_prompt_tokens
                else int(bool(targets))
                for seq, num_new, targets in zip(self.seqs, self.num_new_tokens, self.sample_targets)]


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager):
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.block_manager = block_manager
        self.waiting: deque[SequenceGroup] = deque()
        self.running: list[SequenceGroup] = []
        self.num_preemptions = 0
        self.prompt_tokens_computed = 0  # prompt positions whose K/V were computed (recompute included)
        self.tokens_computed = 0
        self.prompt_tokens_cached = 0  # prompt tokens served by the prefix cache at first admission

    def add(self, group: SequenceGroup) -> None:
        self.waiting.append(group)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def num_running_seqs(self) -> int:
        return sum(len(g.unfinished()) for g in self.running)

    # --- scheduling -------------------------------------------------------------------------
    def _plan(self, group: SequenceGroup, budget: int, slots: int) -> list[tuple[Sequence, int]]:
        """(sequence, new tokens) for a running group under the remaining token/sequence budget."""
        if group.needs_fork:
            seq = group.carrier()
            num_new = min(group.fork_len - seq.num_computed_tokens, budget)
            assert num_new > 0 or budget == 0
            return [(seq, num_new)] if num_new > 0 and slots > 0 else []
        plan = []
        for seq in group.seqs:
            if seq.finished:
                continue
            if budget <= 0 or len(plan) >= slots:
                break
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            assert num_new > 0, "a running sequence always has its last token to compute"
            plan.append((seq, num_new))
            budget -= num_new
        return plan

    def _preempt(self, group: SequenceGroup) -> None:
        """Free the group's blocks; it restarts from the waiting queue's head by recompute."""
        for seq in group.unfinished():
            self.block_manager.free(seq)
            seq.num_computed_tokens = 0
        group.forked = False
        group.metrics.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(group)

    def schedule(self) -> ScheduledBatch:
        bm = self.block_manager
        budget, slots = self.max_num_batched_tokens, self.max_num_seqs
        entries: list[tuple[Sequence, int]] = []
        reserved = 0  # free blocks promised to `entries`, allocated once the step is decided
        preempted = 0

        i = 0
        while i < len(self.running) and budget > 0 and slots > 0:
            group = self.running[i]
            plan = self._plan(group, budget, slots)
            need = bm.blocks_needed(plan)
            while need > bm.num_free_blocks - reserved and self.running[-1] is not group:
                self._preempt(self.running.pop())
                preempted += 1
            if need > bm.num_free_blocks - reserved:  # lowest priority left and still no room: it waits
                assert self.running[-1] is group and len(self.running) > 1, "admission guarantees a lone group fits"
                self._preempt(self.running.pop())
                preempted += 1
                break
            entries += plan
            reserved += need
            budget -= sum(num_new for _, num_new in plan)
            slots -= len(plan)
            i += 1

        # admit waiting groups, oldest first; never in a step that had to preempt
        while not preempted and self.waiting and budget > 0 and slots > 0:
            group = self.waiting[0]
            if self.running and self.num_running_seqs() + len(group.unfinished()) > self.max_num_seqs:
                break
            if self.running and group.metrics.num_preemptions and not self._resume_fits(group, reserved):
                break
            seq = group.carrier()
            limit = group.fork_len if group.needs_fork else seq.num_tokens
            # always compute >= 1 token; a request for prompt logprobs computes its whole prompt
            cached = [] if group.wants_prompt_logits else bm.find_cached_prefix(seq.token_ids, limit - 1)
            num_new = min(limit - len(cached) * bm.block_size, budget)
            if bm.blocks_needed_from(cached, len(cached) * bm.block_size + num_new) > bm.num_free_blocks - reserved:
                break
            self.waiting.popleft()
            self.running.append(group)
            bm.acquire_prefix(seq, cached, query_tokens=limit)
            if group.metrics.first_scheduled_time is None:
                group.metrics.first_scheduled_time = time.monotonic()
                group.metrics.num_cached_prompt_tokens = seq.num_computed_tokens
                self.prompt_tokens_cached += seq.num_computed_tokens
            entries.append((seq, num_new))
            reserved += bm.blocks_needed([(seq, num_new)])
            budget -= num_new
            slots -= 1

        # Prefill chunks take their blocks before decodes do, so that a chunk can continue the
        # ids of the sequence's previous chunk (see BlockManager's allocation). Each group's
        # entries keep their order: copy-on-write accounting depends on it.
        copies: list[tuple[int, int]] = []
        free_before = bm.num_free_blocks
        for seq, num_new in sorted(entries, key=lambda e: e[1] == 1):
            copies += bm.allocate_slots(seq, num_new)
        assert free_before - bm.num_free_blocks == reserved, "blocks_needed must be exact"
        return self._build_batch(entries, copies, preempted)

    def _resume_fits(self, group: SequenceGroup, reserved: int) -> bool:
        """Whether a preempted group's current tokens and the running groups' remaining growth fit
        in the free blocks (a fork's full prompt blocks counted once)."""
        bs = self.block_manager.block_size
        seqs = group.unfinished()
        shared = group.fork_len // bs if len(seqs) > 1 else 0
        footprint = shared + sum(cdiv(s.num_tokens, bs) - shared for s in seqs)
        growth = 0
        for g in self.running:
            for s in g.unfinished():
                final = cdiv(s.num_prompt_tokens + g.params.max_tokens, bs)
                growth += max(0, final - max(len(s.block_table), cdiv(s.num_tokens, bs)))
        return footprint + growth <= self.block_manager.num_free_blocks - reserved

    def _build_batch(self, entries: list[tuple[Sequence, int]], copies, preempted: int) -> ScheduledBatch:
        entries.sort(key=lambda e: e[1] > 1)  # stable: decodes first, each part in priority order
        batch = ScheduledBatch(copies=copies, num_preempted=preempted)
        for seq, num_new in entries:
            batch.seqs.append(seq)
            batch.num_new_tokens.append(num_new)
            if seq.num_computed_tokens + num_new < seq.num_tokens:
                batch.sample_targets.append([])
            elif seq.group.needs_fork:  # the prompt's last token: one draw per sample, then fork
                batch.sample_targets.append(seq.group.unfinished())
            else:
                batch.sample_targets.append([seq])
            batch.num_decode += num_new == 1
        batch.shared_prefixes = self._shared_prefixes(batch.seqs[: batch.num_decode])
        return batch

    @staticmethod
    def _shared_prefixes(decodes: list[Sequence]) -> list[tuple[list[int], int]]:
        """Decode rows whose block tables start with the same blocks - the samples of a fork, or
        requests sharing a cached prompt prefix - and how many blocks they share. Shared blocks
        are full and lie before every row's new token (the block being written is never shared)."""
        by_first: dict[int, list[int]] = {}
        for row, seq in enumerate(decodes):
            if len(seq.block_table) > 1:
                by_first.setdefault(seq.block_table[0], []).append(row)
        shared = []
        for rows in by_first.values():
            if len(rows) < 2:
                continue
            tables = [decodes[r].block_table for r in rows]
            first, limit, n = tables[0], min(len(t) for t in tables) - 1, 1
            while n < limit and all(t[n] == first[n] for t in tables):
                n += 1
            shared.append((rows, n))
        return shared

    # --- after the forward ------------------------------------------------------------------
    def commit(self, batch: ScheduledBatch) -> None:
        """The step's K/V are in the cache: advance the sequences and fork where a carrier has
        just completed its group's prompt."""
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            start = seq.num_computed_tokens
            seq.num_computed_tokens += num_new
            self.tokens_computed += num_new
            self.prompt_tokens_computed += max(0, min(seq.num_computed_tokens, seq.num_prompt_tokens) - start)
            group = seq.group
            if group.needs_fork and seq.num_computed_tokens == group.fork_len:
                for other in group.unfinished():
                    if other is not seq:
                        self.block_manager.fork(seq, other)
                group.forked = True
            assert len(seq.block_table) == cdiv(seq.num_computed_tokens, self.block_manager.block_size)

    def finish(self, seq: Sequence, reason: str, stop_reason: int | str | None = None) -> None:
        assert seq.finish_reason is None
        seq.finish_reason, seq.stop_reason = reason, stop_reason
        self.block_manager.free(seq)
        group = seq.group
        if group.finished:
            group.metrics.finish_time = time.monotonic()
            if group in self.running:
                self.running.remove(group)

    def abort(self, request_id: str) -> SequenceGroup | None:
        for queue in (self.running, self.waiting):
            for group in queue:
                if group.request_id == request_id:
                    for seq in group.unfinished():
                        self.finish(seq, "abort")
                    if group in self.waiting:
                        self.waiting.remove(group)
                    return group
        return None
