"""Every Triton op against its torch reference (kernels/*.py), on small shapes.

Without a GPU the kernels run in the Triton interpreter. triton.jit reads TRITON_INTERPRET when a
kernel module is imported (not at launch), so this module sets it before asking for the ops, and
kernels.backend.get_ops re-imports the kernel modules if something in this pytest process
imported them earlier without it. With CUDA the kernels run natively on the GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

ON_CUDA = torch.cuda.is_available()
if not ON_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

try:
    import triton  # noqa: F401
except Exception as e:  # pragma: no cover - depends on the install
    pytest.skip(f"triton is not importable ({type(e).__name__}: {e}); Triton kernels untested", allow_module_level=True)

from kernels.backend import BackendError, get_ops, resolve_backend  # noqa: E402

DEVICE = torch.device("cuda" if ON_CUDA else "cpu")
T = get_ops("triton", DEVICE)  # re-imports the kernel modules if they were decorated before TRITON_INTERPRET was set

R = get_ops("torch", "cpu")
HEAD_DIM = 16
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def to_dev(*ts):
    return [t.to(DEVICE) for t in ts]


def check(out, ref, dtype):
    assert out.dtype == dtype and out.shape == ref.shape
    torch.testing.assert_close(out.float().cpu(), ref.float().cpu(), **TOL[dtype])


def random_paged(context_lens, num_kv_heads, block_size, dtype=torch.float32, seed=0, pad=-1, head_dim=HEAD_DIM):
    """A cache holding each sequence's K/V in shuffled blocks (spare blocks full of large garbage,
    never to be read) and block tables padded with `pad`."""
    g = torch.Generator().manual_seed(seed)
    per_seq = [-(-n // block_size) for n in context_lens]
    num_blocks = sum(per_seq) + 3
    free = torch.randperm(num_blocks, generator=g).tolist()
    k_cache = (torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g) * 50).to(dtype)
    v_cache = (torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g) * 50).to(dtype)
    tables = torch.full((len(context_lens), max(per_seq) + 2), pad, dtype=torch.long)
    for b, n in enumerate(per_seq):
        ids = [free.pop() for _ in range(n)]
        tables[b, :n] = torch.tensor(ids, dtype=torch.long)
        k_cache[ids] = torch.randn(n, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
        v_cache[ids] = torch.randn(n, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    return k_cache, v_cache, tables


# ratio (query heads per KV head), block size, sliding window, soft-cap
CASES = [
    pytest.param(1, 16, None, None, id="mha-bs16"),
    pytest.param(4, 16, None, None, id="gqa4-bs16"),
    pytest.param(7, 32, None, None, id="gqa7-bs32"),
    pytest.param(1, 32, 7, None, id="mha-bs32-window7"),
    pytest.param(4, 16, 20, None, id="gqa4-bs16-window20"),
    pytest.param(4, 32, None, 5.0, id="gqa4-bs32-softcap"),
    pytest.param(7, 16, 16, 3.0, id="gqa7-bs16-window16-softcap"),
]
BF16_CASES = [
    pytest.param(4, 16, 20, None, id="bf16-gqa4-bs16-window20"),
    pytest.param(7, 32, None, 5.0, id="bf16-gqa7-bs32-softcap"),
]


# --- write_kv / copy_blocks -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_write_kv(dtype):
    g = torch.Generator().manual_seed(0)
    num_kv_heads, block_size = 3, 16
    k_cache = torch.randn(5, block_size, num_kv_heads, HEAD_DIM, generator=g).to(dtype)
    v_cache = torch.randn(5, block_size, num_kv_heads, HEAD_DIM, generator=g).to(dtype)
    # strided like the runner's key[0].transpose(0, 1), fp32 data cast into a bf16 cache
    k = torch.randn(num_kv_heads, 6, HEAD_DIM, generator=g).transpose(0, 1)
    v = torch.randn(num_kv_heads, 6, HEAD_DIM, generator=g).transpose(0, 1)
    slots = torch.tensor([17, -1, 79, 0, -1, 40])
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    R.write_kv(ref_k, ref_v, k, v, slots)
    kc, vc, kd, vd, sd = to_dev(k_cache, v_cache, k, v, slots)
    T.write_kv(kc, vc, kd, vd, sd)
    assert torch.equal(kc.cpu(), ref_k) and torch.equal(vc.cpu(), ref_v)
    T.write_kv(kc, vc, kd[:0], vd[:0], sd[:0])  # nothing to write


def test_copy_blocks_layers_in_one_storage_and_apart():
    g = torch.Generator().manual_seed(0)
    kv = torch.randn(3, 2, 7, 16, 2, HEAD_DIM, generator=g).to(DEVICE)  # the runner's layout
    ref = kv.cpu().clone()
    src, dst = torch.tensor([0, 4, 2]), torch.tensor([5, 1, 6])
    T.copy_blocks([kv[i, 0] for i in range(3)], [kv[i, 1] for i in range(3)], *to_dev(src, dst))
    R.copy_blocks([ref[i, 0] for i in range(3)], [ref[i, 1] for i in range(3)], src, dst)
    assert torch.equal(kv.cpu(), ref)
    # separate tensors (no common storage), and one layer given as a single tensor pair
    ks = [torch.randn(7, 32, 2, HEAD_DIM, generator=g) for _ in range(2)]
    vs = [torch.randn(7, 32, 2, HEAD_DIM, generator=g) for _ in range(2)]
    ks_d, vs_d = to_dev(*ks), to_dev(*vs)
    T.copy_blocks(ks_d, vs_d, *to_dev(src, dst))
    R.copy_blocks(ks, vs, src, dst)
    assert all(torch.equal(a.cpu(), b) for a, b in zip(ks_d + vs_d, ks + vs))
    T.copy_blocks(ks_d[0], vs_d[0], *to_dev(torch.tensor([3]), torch.tensor([0])))
    assert torch.equal(ks_d[0][0].cpu(), ks[0][3]) and torch.equal(vs_d[0][0].cpu(), vs[0][3])


# --- decode -----------------------------------------------------------------------------------


def _decode_case(ratio, block_size, window, softcap, dtype, splits):
    num_kv_heads = 2
    context_lens = [1, 15, 33, 70, 100, 16]  # 1 token, partial blocks, exact blocks
    k_cache, v_cache, tables = random_paged(context_lens, num_kv_heads, block_size, dtype, pad=0)
    q = torch.randn(len(context_lens), num_kv_heads * ratio, HEAD_DIM, generator=torch.Generator().manual_seed(2)).to(dtype)
    lens = torch.tensor(context_lens)
    ref = R.paged_decode_attention(q, k_cache, v_cache, lens, tables, HEAD_DIM**-0.5, window, softcap)
    args = to_dev(q, k_cache, v_cache, lens, tables)
    for n in splits:
        out = T.paged_decode_attention(*args, HEAD_DIM**-0.5, window, softcap, num_splits=n)
        check(out, ref, dtype)


@pytest.mark.parametrize("ratio,block_size,window,softcap", CASES)
def test_decode_matches_torch(ratio, block_size, window, softcap):
    """One split (direct write) and split-K with the LSE merge, several splits empty for short rows."""
    _decode_case(ratio, block_size, window, softcap, torch.float32, splits=(1, 3, None))


@pytest.mark.parametrize("ratio,block_size,window,softcap", BF16_CASES)
def test_decode_bf16(ratio, block_size, window, softcap):
    _decode_case(ratio, block_size, window, softcap, torch.bfloat16, splits=(1, 4))


def test_decode_strided_query_and_odd_head_dim():
    """q as the runner passes it (a transposed view) and a head_dim that is not a power of two."""
    head_dim, num_kv_heads = 24, 2
    context_lens = [5, 40]
    k_cache, v_cache, tables = random_paged(context_lens, num_kv_heads, 16, head_dim=head_dim)
    q = torch.randn(4, 2, head_dim).transpose(0, 1)  # [B=2, H=4, D] non-contiguous
    lens = torch.tensor(context_lens)
    ref = R.paged_decode_attention(q, k_cache, v_cache, lens, tables, 0.3)
    out = T.paged_decode_attention(*to_dev(q, k_cache, v_cache, lens, tables), 0.3, num_splits=2)
    check(out, ref, torch.float32)


# --- prefill ----------------------------------------------------------------------------------


def _prefill_case(ratio, block_size, window, softcap, dtype):
    num_kv_heads = 2
    context_lens = [1, 17, 40, 77, 33, 20]
    q_lens = [1, 17, 9, 30, 1, 0]  # whole prompts, chunks after a cached prefix, one token, none
    k_cache, v_cache, tables = random_paged(context_lens, num_kv_heads, block_size, dtype)
    q = torch.randn(sum(q_lens), num_kv_heads * ratio, HEAD_DIM, generator=torch.Generator().manual_seed(1)).to(dtype)
    cu = torch.tensor([0] + q_lens).cumsum(0)
    lens = torch.tensor(context_lens)
    ref = R.paged_prefill_attention(q, k_cache, v_cache, cu, lens, tables, HEAD_DIM**-0.5, window, softcap)
    out = T.paged_prefill_attention(*to_dev(q, k_cache, v_cache, cu, lens, tables), HEAD_DIM**-0.5, window, softcap)
    check(out, ref, dtype)


@pytest.mark.parametrize("ratio,block_size,window,softcap", CASES)
def test_prefill_matches_torch(ratio, block_size, window, softcap):
    _prefill_case(ratio, block_size, window, softcap, torch.float32)


@pytest.mark.parametrize("ratio,block_size,window,softcap", BF16_CASES)
def test_prefill_bf16(ratio, block_size, window, softcap):
    _prefill_case(ratio, block_size, window, softcap, torch.bfloat16)


# --- shared prefix ----------------------------------------------------------------------------


def forked_batch(block_size, num_kv_heads, ratio, groups, loners, dtype=torch.float32, seed=3):
    """A decode batch of fork groups plus unrelated rows.

    groups: list of (prompt_len, [suffix lengths]) - the rows of a group share the prompt's
    whole blocks (prompt_len // block_size of them); a partial last prompt block is the rows'
    own copy (copy-on-write), so the shared part is whole blocks only. A row's context is
    prompt_len + suffix (suffix 0 = the query is the prompt's last token).
    loners: context lengths of rows in no group.
    Returns q, caches, context_lens, tables, shared_prefixes (list of (rows, num_blocks)).
    """
    g = torch.Generator().manual_seed(seed)
    rows_ctx, rows_ids, shared = [], [], []
    next_block = 0

    def take(n):
        nonlocal next_block
        ids = list(range(next_block, next_block + n))
        next_block += n
        return ids

    for prompt_len, suffixes in groups:
        nb = prompt_len // block_size
        common = take(nb)
        first_row = len(rows_ctx)
        for suffix in suffixes:
            ctx = prompt_len + suffix
            rows_ctx.append(ctx)
            rows_ids.append(common + take(-(-ctx // block_size) - nb))
        shared.append((torch.arange(first_row, len(rows_ctx)), nb))
    for ctx in loners:
        rows_ctx.append(ctx)
        rows_ids.append(take(-(-ctx // block_size)))
    num_blocks = next_block + 2
    perm = torch.randperm(num_blocks, generator=g)  # scatter logical blocks over the cache
    width = max(len(ids) for ids in rows_ids) + 1
    tables = torch.zeros(len(rows_ctx), width, dtype=torch.long)
    for r, ids in enumerate(rows_ids):
        tables[r, : len(ids)] = perm[torch.tensor(ids, dtype=torch.long)]
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, HEAD_DIM, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, HEAD_DIM, generator=g).to(dtype)
    # interleave group rows with loners so group rows are not contiguous in the batch
    order = torch.randperm(len(rows_ctx), generator=g)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    q = torch.randn(len(rows_ctx), num_kv_heads * ratio, HEAD_DIM, generator=g).to(dtype)
    shared = [(inverse[rows], nb) for rows, nb in shared]
    return q, k_cache, v_cache, torch.tensor(rows_ctx)[order], tables[order], shared


SHARED_GROUPS = [
    (50, [0, 1, 9, 40]),  # prompt 50 = 3 whole blocks of 16 + 2 tokens (own CoW copies)
    (48, [0, 5, 33]),  # prompt exactly 3 blocks of 16; suffix 0 = empty suffix
    (37, [4]),  # a group of one row
]


@pytest.mark.parametrize("ratio,block_size,window,softcap", CASES)
def test_shared_prefix_matches_plain_decode(ratio, block_size, window, softcap):
    """Cascade == plain paged decode on the same inputs (and == the torch cascade). The windows
    (7, 16, 20) cut into the prefix for some rows and hide it entirely from others."""
    groups = [(p * block_size // 16, s) for p, s in SHARED_GROUPS]
    q, kc, vc, lens, tables, shared = forked_batch(block_size, 2, ratio, groups, loners=[1, 70, 23])
    scale = HEAD_DIM**-0.5
    plain = R.paged_decode_attention(q, kc, vc, lens, tables, scale, window, softcap)
    torch_cascade = R.shared_prefix_decode_attention(q, kc, vc, lens, tables, scale, window, softcap, shared_prefixes=shared)
    check(torch_cascade, plain, torch.float32)
    dev_shared = [(rows.to(DEVICE), nb) for rows, nb in shared]
    args = to_dev(q, kc, vc, lens, tables)
    for splits, prefix_splits in ((1, 1), (2, 3), (None, None)):
        out = T.shared_prefix_decode_attention(
            *args, scale, window, softcap, shared_prefixes=dev_shared, num_splits=splits, num_prefix_splits=prefix_splits
        )
        check(out, plain, torch.float32)


def test_shared_prefix_bf16_large_group():
    """bf16, GQA 4, a group of 12 rows (48 queries per KV head: three 16-row query tiles in the
    interpreter) over a 5-block prefix."""
    q, kc, vc, lens, tables, shared = forked_batch(16, 2, 4, [(85, list(range(0, 36, 3)))], [30], torch.bfloat16)
    plain = R.paged_decode_attention(q, kc, vc, lens, tables, 0.25, None, 5.0)
    out = T.shared_prefix_decode_attention(
        *to_dev(q, kc, vc, lens, tables), 0.25, None, 5.0,
        shared_prefixes=[(r.to(DEVICE), n) for r, n in shared], num_prefix_splits=2,
    )
    check(out, plain, torch.bfloat16)


def test_shared_prefix_degenerate_groups():
    """No groups, groups with 0 blocks or no rows, and rows whose context ends inside the shared
    blocks (outside the engine's contract: the kernel masks those prefix keys causally)."""
    q, kc, vc, lens, tables, shared = forked_batch(16, 2, 1, [(64, [0, 3, 20])], [9])
    args = to_dev(q, kc, vc, lens, tables)
    plain = R.paged_decode_attention(q, kc, vc, lens, tables, 0.25)
    for groups in ([], [(torch.tensor([], dtype=torch.long), 2)], [(shared[0][0], 0)]):
        out = T.shared_prefix_decode_attention(*args, 0.25, shared_prefixes=[(r.to(DEVICE), n) for r, n in groups])
        check(out, plain, torch.float32)
    short = lens.clone()
    rows = shared[0][0]
    short[rows[0]] = 30  # row's context ends in the 2nd of 4 shared blocks
    short[rows[1]] = 1
    plain = R.paged_decode_attention(q, kc, vc, short, tables, 0.25)
    out = T.shared_prefix_decode_attention(
        *to_dev(q, kc, vc, short, tables), 0.25, shared_prefixes=[(rows.to(DEVICE), shared[0][1])]
    )
    check(out, plain, torch.float32)


# --- backend selection ------------------------------------------------------------------------


def test_backend_selection(monkeypatch):
    assert get_ops("torch", "cpu").name == "torch"
    assert get_ops("auto", "cpu").name == "torch"
    assert T.name == "triton"
    assert resolve_backend("auto", "cuda") == "triton"  # triton imports here
    with pytest.raises(BackendError, match="must be one of"):
        get_ops("cuda-graphs", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendError, match="needs a CUDA device"):
        get_ops("triton", "cpu")


# --- compiled mode without a GPU --------------------------------------------------------------

AOT_SCRIPT = r'''
import sys, torch, triton
from triton.backends.compiler import GPUTarget
import kernels.triton_paged_decode as D, kernels.triton_paged_prefill as P, kernels.triton_shared_prefix as S
import kernels.triton_write_kv as W, kernels.triton_copy_blocks as C

launches = []  # record each launch the python wrappers make, instead of running it

class Record:
    def __init__(self, kernel):
        self.kernel = kernel
    def __getitem__(self, grid):
        return lambda *args, **kwargs: launches.append((self.kernel, args, kwargs))

for mod, names in ((D, ["_decode_kernel", "_merge_kernel"]), (P, ["_prefill_kernel"]),
                   (S, ["_prefix_kernel"]), (W, ["_write_kv_kernel"]), (C, ["_copy_blocks_kernel"])):
    for name in names:
        setattr(mod, name, Record(getattr(mod, name)))
for mod in (D, P, S):
    mod.interpreting = lambda: False  # the GPU tile sizes
D.target_programs = S.target_programs = lambda device: 528

H, KV, HD = 32, 8, 128
for dt in (torch.bfloat16, torch.float32):
    kc = torch.zeros(10, 16, KV, HD, dtype=dt)
    q = torch.zeros(4, H, HD, dtype=dt)
    ctx, bt = torch.tensor([5, 300, 17, 1000]), torch.zeros(4, 70, dtype=torch.long)
    for w, cap in ((None, None), (256, 30.0)):
        D.paged_decode_attention(q, kc, kc, ctx, bt, 0.1, w, cap, num_splits=1)
        S.shared_prefix_decode_attention(q, kc, kc, ctx, bt, 0.1, w, cap, shared_prefixes=[(torch.tensor([0, 3]), 2)])
        cu = torch.tensor([0, 3, 10, 11, 20])
        P.paged_prefill_attention(torch.zeros(20, H, HD, dtype=dt), kc, kc, cu, ctx, bt, 0.1, w, cap)
    W.write_kv(kc, kc, torch.zeros(3, KV, HD, dtype=dt), torch.zeros(3, KV, HD, dtype=dt), torch.tensor([1, -1, 2]))
C.copy_blocks([kc, kc], [kc, kc], torch.tensor([1]), torch.tensor([2]))

TYPES = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.int64: "*i64", torch.int32: "*i32"}
seen = set()
for kernel, args, kwargs in launches:
    values = dict(zip(kernel.arg_names, args))
    values.update({k: v for k, v in kwargs.items() if k in kernel.arg_names})
    sig, consts = {}, {}
    for param, name in zip(kernel.params, kernel.arg_names):
        v = values[name]
        if param.is_constexpr:
            sig[name], consts[name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[name] = TYPES[v.dtype]
        else:
            sig[name] = "fp32" if isinstance(v, float) else "i32" if abs(v) < 2**31 else "i64"
    key = (kernel.fn.__name__, str(sorted(sig.items())), str(sorted(consts.items())))
    if key in seen:
        continue
    seen.add(key)
    options = {k: v for k, v in kwargs.items() if k not in kernel.arg_names}
    triton.compile(triton.compiler.ASTSource(kernel, sig, consts), target=GPUTarget("cuda", 90, 32), options=options)
print(f"compiled {len(seen)} kernel variants for sm_90")
'''


@pytest.mark.skipif(ON_CUDA, reason="with a GPU the tests above compile and run the kernels for real")
def test_kernels_compile_for_gpu(tmp_path):
    """Every kernel variant the wrappers launch compiles for an H100 (sm_90, through ptxas)
    without a GPU: catches what the interpreter accepts but the compiler does not."""
    import pathlib
    import subprocess
    import sys

    ptxas = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip(f"no ptxas at {ptxas}: cannot compile for the GPU here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # hermetic: really compile, leave no sm_90 binaries behind
    root = pathlib.Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-c", AOT_SCRIPT], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "compiled" in proc.stdout
