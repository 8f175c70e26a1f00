"""Block manager: exact block ids, ref counts and free-list order (in the style of vLLM's
tests/v1/core/test_prefix_caching.py)."""

from __future__ import annotations

import itertools

from engine.block_manager import BlockManager
from engine.sampling_params import SamplingParams
from engine.sequence import SequenceGroup

BS = 4
_ids = itertools.count()


def make_group(tokens, n=1):
    return SequenceGroup(f"r{next(_ids)}", None, list(tokens), SamplingParams(n=n), list(range(n)), 0)


def make_seq(tokens):
    return make_group(tokens).seqs[0]


def run(bm, seq, num_new):
    """Allocate like the scheduler, then mark the step computed like `Scheduler.commit`."""
    copies = bm.allocate_slots(seq, num_new)
    seq.num_computed_tokens += num_new
    return copies


def refs(bm, ids):
    return [bm.ref_counts[b] for b in ids]


def test_allocate_free_order_and_cache_retention():
    bm = BlockManager(10, BS)
    a = make_seq(range(10))  # blocks: [0..3] [4..7] [8, 9]
    assert bm.blocks_needed([(a, 10)]) == 3
    assert run(bm, a, 10) == []
    assert a.block_table == [0, 1, 2]
    assert refs(bm, [0, 1, 2]) == [1, 1, 1]
    assert bm.free_order() == [3, 4, 5, 6, 7, 8, 9]
    assert bm.num_used_blocks == 3 and bm.peak_used_blocks == 3
    # only the two full blocks are cached
    assert bm.block_key[0] is not None and bm.block_key[1] is not None and bm.block_key[2] is None
    assert a.block_cache_ids == [1, 2]

    bm.free(a)
    # released last block first: the tail goes nearest the head, the prefix survives longest
    assert bm.free_order() == [3, 4, 5, 6, 7, 8, 9, 2, 1, 0]
    assert refs(bm, [0, 1, 2]) == [0, 0, 0]
    assert bm.block_key[0] is not None and bm.block_key[1] is not None  # freed blocks keep their key
    assert a.block_table == []


def test_prefix_hit_touches_and_reuses_blocks():
    bm = BlockManager(10, BS)
    a = make_seq(range(10))
    run(bm, a, 10)
    bm.free(a)
    # same first 8 tokens, different tail
    b = make_seq([0, 1, 2, 3, 4, 5, 6, 7, 50, 51, 52])
    hits = bm.find_cached_prefix(b.token_ids, b.num_tokens - 1)
    assert hits == [0, 1]
    assert bm.blocks_needed_from(hits, 11) == 3 - 2 + 2  # two cached free blocks leave the free list
    bm.acquire_prefix(b, hits, query_tokens=11)
    assert b.num_computed_tokens == 8 and b.block_table == [0, 1]
    assert bm.free_order() == [3, 4, 5, 6, 7, 8, 9, 2]  # hits left the free list
    assert refs(bm, [0, 1]) == [1, 1]
    run(bm, b, 3)
    assert b.block_table == [0, 1, 3]  # new block from the head
    assert bm.cache_hit_tokens == 8 and bm.cache_query_tokens == 11

    # a second live sharer: ref counts go to 2, no new blocks for the shared part
    c = make_seq([0, 1, 2, 3, 4, 5, 6, 7, 60])
    hits = bm.find_cached_prefix(c.token_ids, c.num_tokens - 1)
    assert hits == [0, 1]
    bm.acquire_prefix(c, hits, query_tokens=9)
    assert refs(bm, [0, 1]) == [2, 2]
    run(bm, c, 1)
    assert c.block_table == [0, 1, 4]
    bm.free(c)
    assert refs(bm, [0, 1, 4]) == [1, 1, 0]
    assert bm.free_order() == [5, 6, 7, 8, 9, 2, 4]


def test_hit_always_leaves_one_token_to_compute():
    bm = BlockManager(10, BS)
    a = make_seq(range(8))  # exactly two full blocks
    run(bm, a, 8)
    bm.free(a)
    b = make_seq(range(8))
    assert bm.find_cached_prefix(b.token_ids, b.num_tokens - 1) == [0]  # not both: 1 token must run
    assert bm.find_cached_prefix(b.token_ids, b.num_tokens) == [0, 1]


def test_chain_depends_on_whole_prefix():
    bm = BlockManager(10, BS)
    a = make_seq([1, 1, 1, 1, 2, 2, 2, 2, 9])
    run(bm, a, 9)
    # block 2's tokens match but its parent does not: no hit past the first mismatch
    b = make_seq([7, 7, 7, 7, 2, 2, 2, 2, 9])
    assert bm.find_cached_prefix(b.token_ids, 8) == []


def test_colliding_hashes_cannot_alias():
    """Tokens are compared on a hit: force every block key to hash alike and check that a
    different block is still a miss."""

    class Colliding(int):
        def __hash__(self):
            return 0

    bm = BlockManager(10, BS)
    a = make_seq([Colliding(t) for t in [1, 2, 3, 4, 5]])
    run(bm, a, 5)
    b_tokens = [Colliding(t) for t in [4, 3, 2, 1, 5]]
    assert hash(tuple(b_tokens[:4])) == hash(tuple(a.token_ids[:4]))
    assert bm.find_cached_prefix(b_tokens, 4) == []
    assert bm.find_cached_prefix([Colliding(t) for t in [1, 2, 3, 4, 5]], 4) == [0]


def test_lru_eviction_from_free_list_head():
    bm = BlockManager(6, BS)
    a = make_seq(range(8))
    run(bm, a, 8)  # blocks 0, 1 cached
    bm.free(a)
    assert bm.free_order() == [2, 3, 4, 5, 1, 0]
    b = make_seq(range(100, 120))  # 5 blocks: no clean run of 5, so the 5 least recently freed
    run(bm, b, 17)                  # (2, 3, 4, 5, then 1 evicted), in id order
    assert b.block_table == [1, 2, 3, 4, 5]
    assert bm.block_key[1][1] == (100, 101, 102, 103)  # a's entry evicted; now b's first block
    assert bm.free_order() == [0]
    # a's second block is gone; its first block (freed last) survived
    c = make_seq(range(9))
    assert bm.find_cached_prefix(c.token_ids, 8) == [0]
    # evicting block 0 drops a's first block as well
    bm.free(b)
    d = make_seq(range(200, 205))
    run(bm, d, 5)
    assert d.block_table[0] == 0
    assert bm.find_cached_prefix(c.token_ids, 8) == []


def test_stale_child_unreachable_after_parent_evicted():
    """A child block registered under a parent entry cannot be reached through a newer entry
    for the same parent tokens (entry ids are never reused)."""
    bm = BlockManager(5, BS)
    a = make_seq(range(12))
    run(bm, a, 12)  # blocks 0, 1, 2 cached, chained
    bm.free(a)  # free order: 3 4 2 1 0
    # evict only block 0 (a's first block): allocate until it is popped
    e = make_seq(range(500, 520))
    run(bm, e, 17)  # takes 3, 4, 2, 1, 0 (the least recently freed), in id order
    assert e.block_table == [0, 1, 2, 3, 4]
    bm.free(e)
    again = make_seq(range(12))
    assert bm.find_cached_prefix(again.token_ids, 12) == []


def test_fork_shares_blocks_and_cow_copies_partial_block():
    bm = BlockManager(12, BS)
    group = make_group(range(6), n=4)  # prompt: one full block + 2 tokens
    parent, kids = group.seqs[0], group.seqs[1:]
    run(bm, parent, 6)
    assert parent.block_table == [0, 1]
    for kid in kids:
        bm.fork(parent, kid)
    assert [k.block_table for k in kids] == [[0, 1]] * 3
    assert refs(bm, [0, 1]) == [4, 4]
    assert [k.num_computed_tokens for k in kids] == [6, 6, 6]
    assert bm.num_used_blocks == 2  # no KV copied by the fork
    for i, seq in enumerate(group.seqs):
        seq.append(100 + i)

    plan = [(s, 1) for s in group.seqs]
    assert bm.blocks_needed(plan) == 3  # four appenders into block 1: three copies, last in place
    copies = [run(bm, s, 1) for s in group.seqs]
    assert copies == [[(1, 2)], [(1, 3)], [(1, 4)], []]
    assert [s.block_table for s in group.seqs] == [[0, 2], [0, 3], [0, 4], [0, 1]]
    assert refs(bm, [0, 1, 2, 3, 4]) == [4, 1, 1, 1, 1]
    assert bm.free_order() == [5, 6, 7, 8, 9, 10, 11]

    # fewer appenders than owners: every appender copies
    bm2 = BlockManager(12, BS)
    g2 = make_group(range(6), n=3)
    run(bm2, g2.seqs[0], 6)
    for kid in g2.seqs[1:]:
        bm2.fork(g2.seqs[0], kid)
    g2.seqs[0].append(1)
    assert bm2.blocks_needed([(g2.seqs[0], 1)]) == 1
    assert run(bm2, g2.seqs[0], 1) == [(1, 2)]
    assert refs(bm2, [1, 2]) == [2, 1]


def test_full_shared_blocks_are_never_copied():
    bm = BlockManager(10, BS)
    group = make_group(range(8), n=2)  # prompt fills two blocks exactly
    run(bm, group.seqs[0], 8)
    bm.fork(group.seqs[0], group.seqs[1])
    for s in group.seqs:
        s.append(42)
    assert bm.blocks_needed([(s, 1) for s in group.seqs]) == 2
    assert [run(bm, s, 1) for s in group.seqs] == [[], []]
    assert [s.block_table for s in group.seqs] == [[0, 1, 2], [0, 1, 3]]
    assert refs(bm, [0, 1]) == [2, 2]
    bm.free(group.seqs[1])
    bm.free(group.seqs[0])
    assert bm.free_order() == [4, 5, 6, 7, 8, 9, 3, 2, 1, 0]


def test_identical_blocks_chain_on_their_twin():
    bm = BlockManager(10, BS)
    group = make_group(range(2), n=2)
    run(bm, group.seqs[0], 2)
    bm.fork(group.seqs[0], group.seqs[1])
    for s in group.seqs:  # greedy samples: the same tokens
        for t in [7, 7, 7, 7, 7, 7]:
            s.append(t)
        run(bm, s, 6)
    a, b = group.seqs
    # a copied the shared partial block 0 into 1; b, the last owner, appended in place
    assert a.block_table == [1, 2] and b.block_table == [0, 3]
    assert bm.block_key[1] is not None and bm.block_key[2] is not None
    assert bm.block_key[0] is None and bm.block_key[3] is None  # b's duplicates are not re-cached
    assert b.block_cache_ids == a.block_cache_ids  # ... but b chains on a's entries
    assert len(bm.cache) == 2


def test_preempted_uncomputed_blocks_lose_cache_entry():
    bm = BlockManager(10, BS)
    a = make_seq(range(9))
    bm.allocate_slots(a, 9)  # registered for this step, but the step never ran
    assert bm.block_key[0] is not None
    bm.free(a)
    assert bm.block_key[0] is None and bm.block_key[1] is None
    assert bm.find_cached_prefix(list(range(9)), 8) == []


def test_prefix_caching_disabled():
    bm = BlockManager(10, BS, enable_prefix_caching=False)
    a = make_seq(range(9))
    run(bm, a, 9)
    bm.free(a)
    assert bm.cache == {} and bm.find_cached_prefix(list(range(9)), 8) == []


def test_prefill_takes_consecutive_clean_blocks():
    bm = BlockManager(16, BS, enable_prefix_caching=False)
    a, b = make_seq(range(12)), make_seq(range(12))
    run(bm, a, 12)
    run(bm, b, 12)
    assert a.block_table == [0, 1, 2] and b.block_table == [3, 4, 5]
    bm.free(a)
    bm.free(b)
    # freed last-to-first: the queue holds both runs backwards, yet a prefill gets one ascending run
    assert bm.free_order() == [6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 2, 1, 0, 5, 4, 3]
    c = make_seq(range(20))
    run(bm, c, 20)
    assert c.block_table == [0, 1, 2, 3, 4]  # the lowest run of 5 clean blocks
    # a decode's single block is the queue's head
    c.append(1)
    run(bm, c, 1)
    assert c.block_table[-1] == 6
    # a prefill gets the lowest clean run ...
    d = make_seq(range(24))
    run(bm, d, 8)
    assert d.block_table == [7, 8]  # 5 alone is too short
    # ... but a later chunk of it continues its last block while the ids after it are free
    bm.free(c)
    assert bm.clean[:7] == b"\x01" * 7  # 0, 1 would be the lowest run now
    run(bm, d, 8)
    assert d.block_table == [7, 8, 9, 10]
    # no clean run long enough: the k least recently freed blocks, sorted
    e = make_seq(range(20))
    run(bm, e, 20)
    assert e.block_table == [0, 1, 2, 3, 4]
    f = make_seq(range(24))
    run(bm, f, 24)  # clean now: 5, 6, 11..15 (no run of 6); the queue: 11 12 13 14 15 5 6
    assert f.block_table == [5, 11, 12, 13, 14, 15]
    assert bm.free_order() == [6]


def test_prefill_run_leaves_cached_free_blocks_alone():
    bm = BlockManager(8, BS)
    a = make_seq(range(12))
    run(bm, a, 12)
    bm.free(a)  # 0, 1, 2 free but cached; queue: 3 4 5 6 7 2 1 0
    b = make_seq(range(100, 108))
    run(bm, b, 8)
    assert b.block_table == [3, 4]
    assert bm.find_cached_prefix(list(range(12)), 12) == [0, 1, 2]


def test_scheduler_gives_prefill_chunks_their_blocks_before_decodes():
    """A chunked prompt's second chunk continues the ids of its first even though another
    group's decodes (a copy-on-write copy here) take blocks in the same step."""
    from engine.config import EngineConfig
    from engine.scheduler import Scheduler

    bm = BlockManager(32, BS, enable_prefix_caching=False)
    sched = Scheduler(EngineConfig(max_num_batched_tokens=16, num_kv_blocks=32), bm)
    a, b = make_group(range(6), n=2), make_group(range(100, 130))
    sched.add(a)
    sched.add(b)

    def step():
        batch = sched.schedule()
        sched.commit(batch)
        for targets in batch.sample_targets:
            for seq in targets:
                seq.append(7)
        return batch

    first = step()  # a's prompt (6 tokens) and b's first 10
    assert first.num_new_tokens == [6, 10]
    assert a.seqs[0].block_table == [0, 1] and b.seqs[0].block_table == [2, 3, 4]
    second = step()  # a's two samples decode, b's next 14 tokens
    assert second.num_new_tokens == [1, 1, 14]
    assert b.seqs[0].block_table == [2, 3, 4, 5, 6, 7]
    assert second.copies == [(1, 8)]  # the first sample copies the shared partial block after b took its run
    assert [s.block_table for s in a.seqs] == [[0, 8], [0, 1]]
