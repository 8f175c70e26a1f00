"""Kernel benchmark: correctness of every Triton op against its torch reference on the device,
then (CUDA only) timings - paged decode attention's achieved bandwidth against the memory
roofline, and shared-prefix (cascade) decode against plain paged decode for fork groups.

    python -m harness.bench_kernels [--out-dir reports/bench] [--quick]
    (the CLI wires the same flags as `harness bench kernels`)

Results go to <out-dir>/kernels-<device>-<time>.json. Bandwidth: bytes the kernel must read or
write at least once (each visible K/V element, the block-table entries it reads, q and the
output) divided by the median time (triton.testing.do_bench, L2 flushed between runs). The
roofline is a measured device-to-device copy (read + write bytes of a 2 GiB copy / time); the
theoretical peak from the device's memory clock and bus width is reported beside it when torch
exposes them. On a CPU there are no timings: the correctness part runs in the Triton
interpreter with tiny shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from harness import PROJECT_ROOT

DEFAULT_OUT = PROJECT_ROOT / "reports" / "bench"
CPU_TIMING_REFUSAL = (
    "kernel timings need a CUDA device; on this CPU only the correctness checks ran, in the Triton interpreter"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help=f"where the JSON goes (default {DEFAULT_OUT})")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"), help="timing dtype")
    parser.add_argument("--quick", action="store_true", help="fewer timing configurations")
    parser.add_argument("--no-timing", action="store_true", help="correctness only")


def main(args: argparse.Namespace) -> int:
    result = run_kernel_bench(
        args.out_dir, device=args.device, dtype=args.dtype, quick=args.quick, timing=not args.no_timing
    )
    _print_summary(result)
    return 0 if result["correctness"]["passed"] else 1


# --- setup ------------------------------------------------------------------------------------


def _ops(device: torch.device):
    if device.type != "cuda":
        os.environ["TRITON_INTERPRET"] = "1"  # kernels.backend re-imports the kernels if needed
    from kernels.backend import get_ops

    return get_ops("triton", device), get_ops("torch", device)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _random_cache(num_blocks, block_size, num_kv_heads, head_dim, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    v = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    return k.to(device), v.to(device)


def _tables(context_lens, block_size, num_blocks, seed, shared_prefix_blocks=0, group_rows=None):
    """Block tables over a shuffled cache; rows in group_rows start with the same blocks."""
    g = torch.Generator().manual_seed(seed)
    free = torch.randperm(num_blocks, generator=g).tolist()
    common = [free.pop() for _ in range(shared_prefix_blocks)]
    width = max(-(-n // block_size) for n in context_lens)
    tables = torch.zeros(len(context_lens), width, dtype=torch.long)
    for r, n in enumerate(context_lens):
        need = -(-n // block_size)
        ids = list(common) if group_rows is not None and r in group_rows else []
        ids += [free.pop() for _ in range(need - len(ids))]
        tables[r, :need] = torch.tensor(ids)
    return tables


# --- correctness ------------------------------------------------------------------------------


def _max_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).abs().max()) if out.numel() else 0.0


def run_correctness(device: torch.device, tiny: bool) -> dict[str, Any]:
    """Each Triton op against the torch reference on the same inputs; fp32 within 1e-4, bf16
    within 2e-2 (absolute, on outputs of unit scale); write_kv / copy_blocks bit-exact."""
    tri, ref = _ops(device)
    if tiny:
        heads, kv_heads, head_dim, lens, window = 4, 2, 16, [1, 17, 40, 77], 20
    else:
        heads, kv_heads, head_dim, lens, window = 32, 8, 128, [1, 17, 300, 1500, 4100], 256
    checks: list[dict[str, Any]] = []

    def record(name: str, err: float, tol: float) -> None:
        checks.append({"op": name, "max_abs_err": err, "tol": tol, "passed": bool(err <= tol)})

    # write_kv / copy_blocks
    for dtype in (torch.float32, torch.bfloat16):
        kc, vc = _random_cache(8, 16, kv_heads, head_dim, dtype, device, 0)
        k = torch.randn(kv_heads, 5, head_dim).transpose(0, 1).to(device, dtype)
        slots = torch.tensor([3, -1, 77, 16, 127], device=device)
        rk, rv, tk, tv = kc.clone(), vc.clone(), kc.clone(), vc.clone()
        ref.write_kv(rk, rv, k, k * 2, slots)
        tri.write_kv(tk, tv, k, k * 2, slots)
        record(f"write_kv/{str(dtype)[6:]}", float(not (torch.equal(rk, tk) and torch.equal(rv, tv))), 0.0)
    layers = torch.randn(3, 2, 6, 16, kv_heads, head_dim, device=device)
    expect = layers.clone()
    src, dst = torch.tensor([0, 3], device=device), torch.tensor([5, 1], device=device)
    tri.copy_blocks([layers[i, 0] for i in range(3)], [layers[i, 1] for i in range(3)], src, dst)
    ref.copy_blocks([expect[i, 0] for i in range(3)], [expect[i, 1] for i in range(3)], src, dst)
    record("copy_blocks", float(not torch.equal(layers, expect)), 0.0)

    variants = [(None, None), (window, None), (None, 30.0 if not tiny else 5.0), (window, 5.0)]
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        name = str(dtype)[6:]
        for bs in (16, 32):
            num_blocks = sum(-(-n // bs) for n in lens) + 2
            kc, vc = _random_cache(num_blocks, bs, kv_heads, head_dim, dtype, device, 1)
            tables = _tables(lens, bs, num_blocks, 2).to(device)
            ctx = torch.tensor(lens, device=device)
            q = torch.randn(len(lens), heads, head_dim).to(device, dtype)
            for w, cap in variants:
                tag = f"{name}/bs{bs}/window={w}/softcap={cap}"
                expect = ref.paged_decode_attention(q, kc, vc, ctx, tables, head_dim**-0.5, w, cap)
                for splits in (1, None, 5):
                    out = tri.paged_decode_attention(q, kc, vc, ctx, tables, head_dim**-0.5, w, cap, num_splits=splits)
                    record(f"paged_decode/{tag}/splits={splits}", _max_err(out, expect), tol)
                q_lens = [1, 17, max(lens[2] // 3, 1), lens[3] // 2] + ([lens[4] // 4] if len(lens) > 4 else [])
                tq = torch.randn(sum(q_lens), heads, head_dim).to(device, dtype)
                cu = torch.tensor([0] + q_lens, device=device).cumsum(0)
                expect = ref.paged_prefill_attention(tq, kc, vc, cu, ctx, tables, head_dim**-0.5, w, cap)
                out = tri.paged_prefill_attention(tq, kc, vc, cu, ctx, tables, head_dim**-0.5, w, cap)
                record(f"paged_prefill/{tag}", _max_err(out, expect), tol)
        # shared prefix: a fork group of 6 (prefix of 3 whole blocks + a partial one each), a
        # group of 1, and loners; compared with plain paged decode
        bs = 16
        prompt = 3 * bs + 5 if tiny else 64 * bs + 5
        group_lens = [prompt + s for s in (0, 1, 7, 30, 31, 90)]
        all_lens = group_lens + [prompt + 3, 9, 64]
        nb = prompt // bs
        num_blocks = sum(-(-n // bs) for n in all_lens) + 2
        kc, vc = _random_cache(num_blocks, bs, kv_heads, head_dim, dtype, device, 3)
        tables = _tables(all_lens, bs, num_blocks, 4, shared_prefix_blocks=nb, group_rows=set(range(6)))
        tables[6, :nb] = tables[0, :nb]  # the group of one also uses the prompt's blocks
        tables = tables.to(device)
        ctx = torch.tensor(all_lens, device=device)
        q = torch.randn(len(all_lens), heads, head_dim).to(device, dtype)
        groups = [(torch.arange(6, device=device), nb), (torch.tensor([6], device=device), nb)]
        for w, cap in variants:
            expect = ref.paged_decode_attention(q, kc, vc, ctx, tables, head_dim**-0.5, w, cap)
            out = tri.shared_prefix_decode_attention(
                q, kc, vc, ctx, tables, head_dim**-0.5, w, cap, shared_prefixes=groups
            )
            record(f"shared_prefix_decode/{name}/window={w}/softcap={cap}", _max_err(out, expect), tol)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"passed": all(c["passed"] for c in checks), "checks": checks, "shapes": "tiny" if tiny else "model-sized"}


# --- timings ----------------------------------------------------------------------------------


def _bench_ms(fn: Callable[[], Any]) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def measured_copy_bandwidth(device: torch.device) -> float:
    """GB/s of a 2 GiB device-to-device copy, counting the bytes read and written."""
    src = torch.empty(1 << 30, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    ms = _bench_ms(partial(dst.copy_, src))
    bytes_moved = 2 * src.numel() * src.element_size()
    src = dst = None  # free before the next allocation
    torch.cuda.empty_cache()
    return bytes_moved / (ms * 1e-3) / 1e9


def theoretical_bandwidth(device: torch.device) -> float | None:
    """GB/s from the memory clock (kHz) and bus width (bits) where torch exposes them (DDR: x2)."""
    props = torch.cuda.get_device_properties(device)
    clock = getattr(props, "memory_clock_rate", None)
    width = getattr(props, "memory_bus_width", None)
    if not clock or not width:
        return None
    return 2 * clock * 1e3 * width / 8 / 1e9


def _decode_bytes(context_lens: list[int], heads, kv_heads, head_dim, block_size, itemsize, window=None) -> int:
    visible = [min(n, window) if window else n for n in context_lens]
    kv = sum(visible) * kv_heads * head_dim * 2 * itemsize
    tables = sum(-(-n // block_size) for n in visible) * 8 + len(context_lens) * 8
    q_out = 2 * len(context_lens) * heads * head_dim * itemsize
    return kv + tables + q_out


def bench_decode(device, dtype, configs, heads=32, kv_heads=8, head_dim=128, block_size=16) -> list[dict[str, Any]]:
    tri, ref = _ops(device)
    from kernels.triton_paged_decode import choose_splits

    itemsize = torch.empty((), dtype=dtype).element_size()
    rows = []
    for batch, ctx_len in configs:
        lens = [ctx_len] * batch
        num_blocks = batch * -(-ctx_len // block_size) + 1
        kc, vc = _random_cache(num_blocks, block_size, kv_heads, head_dim, dtype, device, 0)
        tables = _tables(lens, block_size, num_blocks, 1).to(device)
        ctx = torch.tensor(lens, device=device)
        q = torch.randn(batch, heads, head_dim, device=device).to(dtype)
        inputs = (q, kc, vc, ctx, tables, head_dim**-0.5)
        ms = _bench_ms(partial(tri.paged_decode_attention, *inputs))
        ms_one = _bench_ms(partial(tri.paged_decode_attention, *inputs, num_splits=1))
        try:
            ms_torch = _bench_ms(partial(ref.paged_decode_attention, *inputs))
        except torch.cuda.OutOfMemoryError:
            ms_torch = None
        nbytes = _decode_bytes(lens, heads, kv_heads, head_dim, block_size, itemsize)
        rows.append({
            "batch": batch, "context": ctx_len, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
            "block_size": block_size, "splits": choose_splits(batch, kv_heads, tables.shape[1], block_size, device),
            "bytes": nbytes, "triton_ms": ms, "triton_GBps": nbytes / (ms * 1e-3) / 1e9,
            "triton_one_split_ms": ms_one, "torch_reference_ms": ms_torch,
        })
        del inputs, q, kc, vc
        torch.cuda.empty_cache()
    return rows


def bench_shared_prefix(device, dtype, prefixes, ns, num_groups=(1, 4), suffix=256, heads=32, kv_heads=8,
                        head_dim=128, block_size=16) -> list[dict[str, Any]]:
    """Fork groups of n samples over a prompt of `prefix` tokens (whole blocks shared), each
    sample with its own ~suffix generated tokens."""
    tri, _ = _ops(device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    rows = []
    for groups in num_groups:
        for prefix in prefixes:
            for n in ns:
                nb = prefix // block_size
                lens, group_rows, tables_parts, next_block = [], [], [], 0
                g = torch.Generator().manual_seed(prefix + n)
                for _ in range(groups):
                    common = list(range(next_block, next_block + nb))
                    next_block += nb
                    rows_of_group = []
                    for _ in range(n):
                        ctx = prefix + suffix // 2 + int(torch.randint(0, suffix, (1,), generator=g))
                        own = -(-ctx // block_size) - nb
                        tables_parts.append(common + list(range(next_block, next_block + own)))
                        next_block += own
                        rows_of_group.append(len(lens))
                        lens.append(ctx)
                    group_rows.append(rows_of_group)
                perm = torch.randperm(next_block, generator=g)
                width = max(len(t) for t in tables_parts)
                tables = torch.zeros(len(lens), width, dtype=torch.long)
                for r, t in enumerate(tables_parts):
                    tables[r, : len(t)] = perm[torch.tensor(t)]
                kc, vc = _random_cache(next_block, block_size, kv_heads, head_dim, dtype, device, 5)
                tables, ctx = tables.to(device), torch.tensor(lens, device=device)
                q = torch.randn(len(lens), heads, head_dim, device=device).to(dtype)
                shared = [(torch.tensor(r, device=device), nb) for r in group_rows]
                inputs = (q, kc, vc, ctx, tables, head_dim**-0.5)
                plain_fn = partial(tri.paged_decode_attention, *inputs)
                shared_fn = partial(tri.shared_prefix_decode_attention, *inputs, shared_prefixes=shared)
                err = _max_err(shared_fn(), plain_fn())
                ms_plain = _bench_ms(plain_fn)
                ms_shared = _bench_ms(shared_fn)
                plain_bytes = _decode_bytes(lens, heads, kv_heads, head_dim, block_size, itemsize)
                per_token = kv_heads * head_dim * 2 * itemsize
                shared_bytes = plain_bytes - (n - 1) * groups * nb * block_size * per_token
                rows.append({
                    "groups": groups, "n": n, "prefix": prefix, "suffix_mean": suffix, "batch": len(lens),
                    "plain_ms": ms_plain, "shared_ms": ms_shared, "speedup": ms_plain / ms_shared,
                    "plain_bytes": plain_bytes, "shared_min_bytes": shared_bytes,
                    "plain_GBps": plain_bytes / (ms_plain * 1e-3) / 1e9,
                    "shared_effective_GBps": shared_bytes / (ms_shared * 1e-3) / 1e9,
                    "max_abs_diff_vs_plain": err,
                })
                del inputs, plain_fn, shared_fn, q, kc, vc
                torch.cuda.empty_cache()
    return rows


# --- entry ------------------------------------------------------------------------------------


def run_kernel_bench(
    out_dir: Path = DEFAULT_OUT,
    *,
    device: str | None = None,
    dtype: str = "bfloat16",
    quick: bool = False,
    timing: bool = True,
) -> dict[str, Any]:
    """Correctness on the device, then timings (CUDA only); writes the JSON when timings ran and
    returns the result (its "path" says where)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_cuda = dev.type == "cuda"
    import triton

    result: dict[str, Any] = {
        "device": (
            torch.cuda.get_device_name(dev) if on_cuda
            else f"cpu ({platform.processor() or platform.machine()}), Triton interpreter"
        ),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    result["correctness"] = run_correctness(dev, tiny=not on_cuda)
    if not on_cuda:
        result["timing"] = {"skipped": CPU_TIMING_REFUSAL}
        return result
    if not timing:
        result["timing"] = {"skipped": "--no-timing"}
        return result
    tdtype = getattr(torch, dtype)
    copy_bw = measured_copy_bandwidth(dev)
    peak = theoretical_bandwidth(dev)
    decode_cfgs = [(1, 4096), (16, 4096), (64, 1024)] if quick else [
        (1, 1024), (1, 4096), (1, 16384), (16, 1024), (16, 4096), (64, 1024), (64, 4096), (256, 1024),
    ]
    decode = bench_decode(dev, tdtype, decode_cfgs)
    for row in decode:
        row["fraction_of_copy_bw"] = row["triton_GBps"] / copy_bw
        row["fraction_of_theoretical_bw"] = row["triton_GBps"] / peak if peak else None
    shared = bench_shared_prefix(dev, tdtype, prefixes=(1024, 4096), ns=(16, 64), num_groups=(1,) if quick else (1, 4))
    result["timing"] = {
        "dtype": dtype,
        "roofline": {
            "measured_copy_GBps": copy_bw,
            "theoretical_GBps": peak,
            "used_for_fractions": "measured_copy_GBps (2 GiB device-to-device copy, read + write bytes)",
        },
        "decode": decode,
        "shared_prefix_vs_plain": shared,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"kernels-{_slug(result['device'])}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    result["path"] = str(path)
    return result


def _print_summary(result: dict[str, Any]) -> None:
    c = result["correctness"]
    bad = [x for x in c["checks"] if not x["passed"]]
    print(f"device: {result['device']}")
    print(f"correctness ({c['shapes']} shapes): {len(c['checks']) - len(bad)}/{len(c['checks'])} passed")
    for x in bad:
        print(f"  FAILED {x['op']}: max abs err {x['max_abs_err']:.3g} > {x['tol']:.3g}")
    t = result["timing"]
    if "skipped" in t:
        print(f"timings: {t['skipped']}")
        return
    r = t["roofline"]
    peak = f", theoretical {r['theoretical_GBps']:.0f} GB/s" if r["theoretical_GBps"] else ""
    print(f"roofline: measured copy {r['measured_copy_GBps']:.0f} GB/s{peak}")
    for d in t["decode"]:
        print(
            f"  decode B={d['batch']:<4} ctx={d['context']:<6} splits={d['splits']:<3} {d['triton_ms']:.3f} ms "
            f"{d['triton_GBps']:.0f} GB/s ({100 * d['fraction_of_copy_bw']:.0f}% of copy)"
        )
    for s in t["shared_prefix_vs_plain"]:
        print(
            f"  shared-prefix groups={s['groups']} n={s['n']:<3} prefix={s['prefix']:<5} plain {s['plain_ms']:.3f} ms "
            f"shared {s['shared_ms']:.3f} ms  x{s['speedup']:.2f}"
        )
    print(f"written: {result['path']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m harness.bench_kernels", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
