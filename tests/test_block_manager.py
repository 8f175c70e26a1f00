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
    b = make_seq(range(100, 120))  # 5 blocks: takes 2, 3, 4, 5 and then evicts 1
    run(bm, b, 17)
    assert b.block_table == [2, 3, 4, 5, 1]
    assert bm.block_key[1] is None  # evicted; now b's partial last block, not cached
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
    run(bm, e, 17)  # takes 3, 4, 2, 1, 0
    assert e.block_table == [3, 4, 2, 1, 0]
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
