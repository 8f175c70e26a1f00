"""`harness bench sc` (the SC-8shot workload: engine vs HF generate vs HF continuous batching) and
`harness bench kernels` (attention kernels vs their torch references, and timings on CUDA)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import HarnessError
from harness.bench import sc as sc_bench
from harness.bench.output import DEFAULT_OUT, markdown, slug, write_outputs
from harness.bench.sc import run_sc
from harness.bench.systems import SYSTEMS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: the SC-8shot workload, attention kernels",
                       description="Side-by-side benchmarks on this machine.")
    bsub = p.add_subparsers(dest="bench_cmd", required=True)

    sc = bsub.add_parser("sc", help="self-consistency GSM8K 8-shot: engine vs HF generate vs HF continuous batching",
                         description=sc_bench.__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sc.add_argument("--model", default="smollm2-135m-instruct", help="preset name or model directory")
    sc.add_argument("--problems", "-P", type=int, default=4, help="GSM8K test problems (default 4)")
    sc.add_argument("--n", type=int, nargs="+", default=[16], help="samples per problem; several values = a sweep")
    sc.add_argument("--max-tokens", "-M", type=int, default=128, help="new tokens per sample, EOS ignored (default 128)")
    sc.add_argument("--reps", type=int, default=3, help="measured repetitions per system (default 3)")
    sc.add_argument("--reps-for", action="append", default=[], metavar="SYSTEM[@N]:K",
                    help="fewer repetitions for a system, or for it at one n (repeatable): hf-cb:1, hf@64:1")
    sc.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}")
    sc.add_argument("--skip", action="append", default=[], metavar="SYSTEM:N",
                    help="do not run SYSTEM at this n (repeatable), e.g. hf-cb:64 when it would take hours")
    sc.add_argument("--temperature", type=float, default=0.7)
    sc.add_argument("--top-p", type=float, default=0.95)
    sc.add_argument("--seed", type=int, default=1234)
    sc.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    sc.add_argument("--device", default="auto", help="auto | cpu | cuda")
    sc.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA) | float32 | bfloat16")
    sc.add_argument("--prefix-caching", action="store_true", help="engine: share the exemplar prefix across problems")
    sc.add_argument("--max-num-batched-tokens", type=int, default=None,
                    help="per-step token budget of engine and hf-cb (default: the engine's, 2048 on CPU)")
    sc.add_argument("--hf-batch-rows", type=int, default=64, help="hf: most rows per generate call (default 64)")
    sc.add_argument("--cb-page-size", type=int, default=64, help="hf-cb: tokens per KV page (default 64)")
    sc.add_argument("--task", default="gsm8k-cot", help="task whose prompt builder renders the problems")
    sc.add_argument("--data-dir", type=Path, default=None)
    sc.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    sc.add_argument("--name", default=None, help="output file stem (default sc-<model>)")
    sc.add_argument("--quiet", action="store_true")
    sc.set_defaults(func=cmd_sc)

    sv = bsub.add_parser("serve", help="the engine directly vs through `harness serve` (HTTP overhead, TTFT under load)")
    sv.add_argument("--model", default="smollm2-135m-instruct")
    sv.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    sv.add_argument("--single", type=int, default=8, help="requests one after another for the single-client rows")
    sv.add_argument("--max-tokens", "-M", type=int, default=64)
    sv.add_argument("--data-dir", type=Path, default=None)
    sv.add_argument("--out", type=Path, default=DEFAULT_OUT)
    sv.set_defaults(func=cmd_serve)

    le = bsub.add_parser("lm-eval", help="lm-eval's local-completions against `harness serve`, next to harness eval")
    le.add_argument("--lm-eval-python", required=True, help="python of an environment with lm-eval installed")
    le.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    le.add_argument("--limit", type=int, default=50)
    le.add_argument("--max-tokens", type=int, default=256, help="both sides (lm-eval's max_gen_toks default)")
    le.add_argument("--data-dir", type=Path, required=True, help="folder with GSM8K test.jsonl and train.jsonl")
    le.add_argument("--out", type=Path, default=DEFAULT_OUT)
    le.set_defaults(func=cmd_lm_eval)

    ro = bsub.add_parser("rollout", help="RL rollouts: harness rollout on the engine vs HF generate(num_return_sequences)")
    ro.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ro.add_argument("--task", default="gsm8k-cot-zeroshot")
    ro.add_argument("--limit", type=int, default=4)
    ro.add_argument("-n", type=int, default=8)
    ro.add_argument("--max-tokens", type=int, default=192)
    ro.add_argument("--temperature", type=float, default=1.0)
    ro.add_argument("--top-p", type=float, default=1.0)
    ro.add_argument("--data-dir", type=Path, default=None)
    ro.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ro.set_defaults(func=cmd_rollout)

    lc = bsub.add_parser("llama-cpp", help="llama.cpp's llama-batched-bench -pps (built from source) on Q4_1 and F32 weights",
                         description="Builds llama.cpp once from the llama-cpp-python sdist into the cache, makes an F32 "
                                     "GGUF of the preset's Q4_1 weights, and times llama-batched-bench with the prompt "
                                     "shared across n sequences (-pps).")
    lc.add_argument("--model", default="smollm2-135m-instruct", help="preset name (its GGUF) or a .gguf file")
    lc.add_argument("--prompt-tokens", type=int, default=900, help="shared prompt tokens (default 900)")
    lc.add_argument("--max-tokens", "-M", type=int, default=128, help="new tokens per sequence (default 128)")
    lc.add_argument("--n", nargs="+", default=["1", "4", "16", "64"], help="parallel sequences; several values = a sweep")
    lc.add_argument("--threads", type=int, default=2, help="llama.cpp threads, -t and -tb (default 2)")
    lc.add_argument("--reps", type=int, default=3, help="repetitions, interleaved across weights and n (default 3)")
    lc.add_argument("--quants", default="Q4_1,F32", help="weights: the GGUF as shipped (Q4_1) and/or dequantised (F32)")
    lc.add_argument("--kv-unified", action="store_true", help="llama.cpp -kvu: one KV buffer, the prompt's cells shared")
    lc.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    lc.add_argument("--build-only", action="store_true", help="only build llama.cpp and make the F32 GGUF, then stop")
    lc.set_defaults(func=cmd_llama_cpp)

    # harness.bench.kernels (Triton, imported only when this command runs) parses its own options: this
    # parser takes every argument verbatim (no prefix characters, so "--x" is not an option here)
    kp = bsub.add_parser("kernels", help="attention kernel micro-benchmark (harness.bench.kernels)", add_help=False,
                         prefix_chars="\x01", description="Delegates to harness.bench.kernels.")
    kp.add_argument("kernel_args", nargs="*")
    kp.set_defaults(func=cmd_kernels)


def cmd_serve(args: argparse.Namespace) -> int:

    from harness.bench import serve

    if args.clients < 1 or args.single < 1 or args.max_tokens < 1:
        raise HarnessError("--clients, --single and --max-tokens must be positive")
    result = serve.run_serve_bench(args.model, clients=args.clients, max_tokens=args.max_tokens, single=args.single,
                                   data_dir=args.data_dir, log=lambda m: print(m, file=sys.stderr, flush=True))
    return _write_report(args.out, f"serve-{slug(result['workload']['model'])}", result, serve.markdown(result))


def _write_report(out: Path, stem: str, result: dict, md: str) -> int:
    """<out>/<stem>.json and .md (the stem may hold dots: model names like qwen2.5-…)."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(md)
    print(md)
    print(f"wrote {out / stem}.json and .md")
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:

    from harness.bench import rollout

    result = rollout.run_rollout_bench(args.model, args.task, args.limit, args.n, args.max_tokens, args.temperature,
                                       args.top_p, args.data_dir, log=lambda m: print(m, file=sys.stderr, flush=True))
    return _write_report(args.out, f"rollout-{slug(result['workload']['model'])}", result, rollout.markdown(result))


def cmd_lm_eval(args: argparse.Namespace) -> int:
    import json

    from harness.bench.lm_eval import run_lm_eval_bench

    result = run_lm_eval_bench(args.lm_eval_python, args.model, args.limit, args.data_dir.resolve(), args.max_tokens,
                               log=lambda m: print(m, file=sys.stderr, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"lm-eval-serve-{slug(result['model'])}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for side in ("lm_eval", "harness"):
        r = result[side]
        print(f"{side:>8}: strict {r['strict']:.3f} ± {r['stderr_strict']:.3f}, flexible {r['flexible']:.3f}, {r['wall_s']:.0f} s")
    print(f"wrote {path}")
    return 0


def cmd_kernels(args: argparse.Namespace) -> int:
    from harness.bench import kernels as bk  # torch and the kernels: imported only for this command

    parser = argparse.ArgumentParser(prog="harness bench kernels", description=(bk.__doc__ or "").strip() or None)
    bk.add_arguments(parser)
    return int(bk.main(parser.parse_args(args.kernel_args)) or 0)


def cmd_sc(args: argparse.Namespace) -> int:
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in systems if s not in SYSTEMS]
    if bad or not systems:
        raise HarnessError(f"--systems: unknown {bad or 'empty'}; choose from {', '.join(SYSTEMS)}")
    skip = set()
    for item in args.skip:
        name, _, n = item.partition(":")
        if name not in SYSTEMS or not n.isdigit():
            raise HarnessError(f"--skip wants SYSTEM:N with SYSTEM in {', '.join(SYSTEMS)}, got {item!r}")
        skip.add((name, int(n)))
    reps_for = {}
    for item in args.reps_for:
        target, _, k = item.rpartition(":")
        name, _, n = target.partition("@")
        if name not in SYSTEMS or not k.isdigit() or int(k) < 1 or (n and not n.isdigit()):
            raise HarnessError(f"--reps-for wants SYSTEM[@N]:K with SYSTEM in {', '.join(SYSTEMS)}, K >= 1, got {item!r}")
        reps_for[target] = int(k)
    for flag in ("problems", "reps", "max_tokens", "hf_batch_rows", "cb_page_size"):
        if getattr(args, flag) < 1:
            raise HarnessError(f"--{flag.replace('_', '-')} must be positive")
    if any(n < 1 for n in args.n):
        raise HarnessError("--n values must be positive")
    log = (lambda *_: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    result = run_sc(
        model=args.model, problems=args.problems, ns=args.n, max_tokens=args.max_tokens, reps=args.reps,
        reps_for=reps_for, systems=systems, skip=skip, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
        threads=args.threads, device=args.device, dtype=args.dtype, prefix_caching=args.prefix_caching,
        max_num_batched_tokens=args.max_num_batched_tokens, hf_batch_rows=args.hf_batch_rows,
        cb_page_size=args.cb_page_size, task=args.task, data_dir=args.data_dir, log=log,
    )
    result["command"] = "harness bench sc " + " ".join(sys.argv[3:]) if sys.argv[1:3] == ["bench", "sc"] else None
    name = args.name or f"sc-{slug(result['workload']['model'])}"
    paths = write_outputs(result, args.out, name)
    print(markdown(result))
    for p in paths:
        print(f"wrote {p}")
    return 0


def _llama_cpp_ns(values: list[str]) -> list[int]:
    ns = []
    for item in values:
        for part in str(item).split(","):
            if not part.strip():
                continue
            if not part.strip().isdigit() or int(part) < 1:
                raise HarnessError(f"--n values must be positive integers, got {part.strip()!r}")
            ns.append(int(part))
    if not ns:
        raise HarnessError("--n: give at least one value")
    if len(set(ns)) != len(ns):
        raise HarnessError(f"--n: {' '.join(map(str, ns))} repeats a value")
    return ns


def cmd_llama_cpp(args: argparse.Namespace) -> int:
    from harness.bench import llama_cpp

    ns = _llama_cpp_ns(args.n)
    quants = llama_cpp.parse_quants(args.quants)
    for flag in ("prompt_tokens", "max_tokens", "threads", "reps"):
        if getattr(args, flag) < 1:
            raise HarnessError(f"--{flag.replace('_', '-')} must be positive")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.build_only:
        src, _ = llama_cpp.resolve_gguf(args.model)
        llama_cpp.check_quants(quants, llama_cpp.gguf_summary(src)["file_type"])
        bin_dir = llama_cpp.build_llama_cpp(log)
        print(f"llama.cpp binaries: {bin_dir}")
        if "F32" in quants:
            print(f"F32 GGUF: {llama_cpp.f32_gguf(bin_dir, src, log)}")
        return 0
    result = llama_cpp.run_llama_cpp_bench(args.model, args.prompt_tokens, args.max_tokens, ns, args.threads, args.reps,
                                           quants=quants, log=log, kv_unified=args.kv_unified)
    result["command"] = "harness " + " ".join(sys.argv[1:]) if sys.argv[1:3] == ["bench", "llama-cpp"] else None
    return _write_report(args.out, f"llama-cpp-{slug(result['workload']['model'])}", result, llama_cpp.markdown(result))
