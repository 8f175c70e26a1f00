"""The pure-torch paged ops against dense causal attention on the gathered KV."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import copy_blocks, paged_decode_attention, paged_prefill_attention, shared_prefix_decode_attention, write_kv

pytestmark = pytest.mark.usefixtures("single_torch_thread")
HEAD_DIM = 16


def dense_attention(q, k, v, q_pos, scale, window, softcap):
    """q [M, H, D] at absolute positions q_pos, k/v [L, kvH, D] at positions 0..L-1."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1).transpose(0, 1)  # [H, L, D]
    v = v.repeat_interleave(group, dim=1).transpose(0, 1)
    qh = q.transpose(0, 1)  # [H, M, D]
    k_pos = torch.arange(k.shape[1])
    mask = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        mask &= k_pos[None, :] > q_pos[:, None] - window
    if softcap is None:
        out = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask, scale=scale)
    else:
        s = qh @ k.transpose(-1, -2) * scale
        s = torch.tanh(s / softcap) * softcap
        out = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1) @ v
    return out.transpose(0, 1)


def make_paged(context_lens, num_kv_heads, block_size, seed=0, pad=-1):
    """Random dense K/V per sequence, scattered into shuffled blocks through write_kv."""
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in context_lens]
    num_blocks = sum(blocks_per_seq) + 3  # a few spare blocks that must never be read
    perm = torch.randperm(num_blocks, generator=g).tolist()
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, HEAD_DIM, generator=g) * 50  # garbage
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, HEAD_DIM, generator=g) * 50
    tables = torch.full((len(context_lens), max(blocks_per_seq) + 2), pad, dtype=torch.long)
    dense = []
    for b, n in enumerate(context_lens):
        ids = [perm.pop() for _ in range(blocks_per_seq[b])]
        tables[b, : len(ids)] = torch.tensor(ids)
        k = torch.randn(n, num_kv_heads, HEAD_DIM, generator=g)
        v = torch.randn(n, num_kv_heads, HEAD_DIM, generator=g)
        pos = torch.arange(n)
        slots = torch.tensor(ids)[pos // block_size] * block_size + pos % block_size
        write_kv(k_cache, v_cache, k, v, slots)
        dense.append((k, v))
    return k_cache, v_cache, tables, dense


CASES = [
    pytest.param(1, 16, None, None, id="mha-bs16"),
    pytest.param(4, 16, None, None, id="gqa4-bs16"),
    pytest.param(4, 32, None, None, id="gqa4-bs32"),
    pytest.param(1, 32, 7, None, id="mha-bs32-window7"),
    pytest.param(4, 16, 20, None, id="gqa4-bs16-window20"),
    pytest.param(4, 16, None, 5.0, id="gqa4-bs16-softcap"),
    pytest.param(1, 32, 16, 3.0, id="mha-bs32-window16-softcap"),
]


@pytest.mark.parametrize("ratio,block_size,window,softcap", CASES)
def test_prefill_matches_dense(ratio, block_size, window, softcap):
    num_kv_heads = 2
    num_heads = num_kv_heads * ratio
    context_lens = [1, 17, 40, 77, 33]
    q_lens = [1, 17, 9, 30, 1]  # whole prompts, a chunk after a cached prefix, a single token
    k_cache, v_cache, tables, dense = make_paged(context_lens, num_kv_heads, block_size)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(sum(q_lens), num_heads, HEAD_DIM, generator=g)
    cu = torch.tensor([0] + q_lens).cumsum(0)
    scale = HEAD_DIM**-0.5
    out = paged_prefill_attention(
        q, k_cache, v_cache, cu, torch.tensor(context_lens), tables, scale, window, softcap
    )
    for b, (n, ql) in enumerate(zip(context_lens, q_lens)):
        k, v = dense[b]
        ref = dense_attention(q[cu[b] : cu[b + 1]], k, v, torch.arange(n - ql, n), scale, window, softcap)
        torch.testing.assert_close(out[cu[b] : cu[b + 1]], ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("ratio,block_size,window,softcap", CASES)
def test_decode_matches_dense(ratio, block_size, window, softcap):
    num_kv_heads = 2
    num_heads = num_kv_heads * ratio
    context_lens = [1, 15, 33, 70, 100, 16]
    k_cache, v_cache, tables, dense = make_paged(context_lens, num_kv_heads, block_size, pad=0)
    q = torch.randn(len(context_lens), num_heads, HEAD_DIM, generator=torch.Generator().manual_seed(2))
    scale = HEAD_DIM**-0.5
    out = paged_decode_attention(q, k_cache, v_cache, torch.tensor(context_lens), tables, scale, window, softcap)
    for b, n in enumerate(context_lens):
        k, v = dense[b]
        ref = dense_attention(q[b : b + 1], k, v, torch.tensor([n - 1]), scale, window, softcap)
        torch.testing.assert_close(out[b : b + 1], ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("ratio,block_size,window,softcap", CASES)
def test_decode_shared_prefix_matches_plain(ratio, block_size, window, softcap):
    """The cascade path (prefix gathered once per fork group) equals per-row attention."""
    num_kv_heads = 2
    num_heads = num_kv_heads * ratio
    g = torch.Generator().manual_seed(3)
    prefix_blocks = 3
    prefix_len = prefix_blocks * block_size
    num_blocks = 40
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, HEAD_DIM, generator=g)
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, HEAD_DIM, generator=g)
    # rows 0,2,3 share blocks [5, 9, 1]; rows 1 and 4 are unrelated sequences
    shared = [5, 9, 1]
    tables = torch.tensor(
        [
            shared + [20, 21, 0],
            [30, 31, 32, 33, 0, 0],
            shared + [22, 0, 0],
            shared + [23, 24, 25],
            [34, 0, 0, 0, 0, 0],
        ]
    )
    context_lens = torch.tensor([prefix_len + block_size + 3, 4 * block_size - 1, prefix_len + 1, prefix_len + 2 * block_size + 5, 7])
    q = torch.randn(5, num_heads, HEAD_DIM, generator=g)
    scale = HEAD_DIM**-0.5
    plain = paged_decode_attention(q, k_cache, v_cache, context_lens, tables, scale, window, softcap)
    cascade = shared_prefix_decode_attention(
        q, k_cache, v_cache, context_lens, tables, scale, window, softcap,
        shared_prefixes=[(torch.tensor([0, 2, 3]), prefix_blocks)],
    )
    torch.testing.assert_close(cascade, plain, atol=2e-5, rtol=1e-4)
    for b in range(5):
        n = int(context_lens[b])
        ids = tables[b, : -(-n // block_size)]
        k = k_cache[ids].flatten(0, 1)[:n]
        v = v_cache[ids].flatten(0, 1)[:n]
        ref = dense_attention(q[b : b + 1], k, v, torch.tensor([n - 1]), scale, window, softcap)
        torch.testing.assert_close(cascade[b : b + 1], ref, atol=2e-5, rtol=1e-4)


def test_write_kv_skips_negative_slots():
    k_cache = torch.zeros(4, 16, 2, HEAD_DIM)
    v_cache = torch.zeros(4, 16, 2, HEAD_DIM)
    k = torch.randn(3, 2, HEAD_DIM)
    v = torch.randn(3, 2, HEAD_DIM)
    write_kv(k_cache, v_cache, k, v, torch.tensor([17, -1, 63]))
    torch.testing.assert_close(k_cache[1, 1], k[0])
    torch.testing.assert_close(v_cache[3, 15], v[2])
    assert int((k_cache != 0).any(-1).any(-1).sum()) == 2  # only two slots written


def test_copy_blocks_single_layer_and_list():
    layers = [(torch.randn(6, 16, 2, HEAD_DIM), torch.randn(6, 16, 2, HEAD_DIM)) for _ in range(3)]
    before = [(k.clone(), v.clone()) for k, v in layers]
    src, dst = torch.tensor([0, 2]), torch.tensor([5, 3])
    copy_blocks([k for k, _ in layers], [v for _, v in layers], src, dst)
    for (k, v), (k0, v0) in zip(layers, before):
        torch.testing.assert_close(k[5], k0[0])
        torch.testing.assert_close(v[3], v0[2])
        torch.testing.assert_close(k[[0, 1, 2, 4]], k0[[0, 1, 2, 4]])
    k, v = layers[0]
    copy_blocks(k, v, torch.tensor([1]), torch.tensor([4]))
    torch.testing.assert_close(k[4], k[1])
