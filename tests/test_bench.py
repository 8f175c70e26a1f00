"""`harness bench sc` on a tiny random model: the JSON schema, the Markdown, and the engine
computing each prompt once. No timing assertions."""

from __future__ import annotations

import json

import pytest

from harness.bench import sc as bench
from harness.bench.machine import RssSampler
from harness.bench.output import write_outputs
from harness.cli import bench as bench_cli
from harness.cli import build_parser

pytestmark = pytest.mark.usefixtures("single_torch_thread")


RUN_KEYS = {
    "wall_s", "generated_tokens", "tokens_per_s", "tokens_forwarded", "prompt_tokens_computed", "ttft_p50_s",
    "ttft_p95_s", "decode_tokens_per_s", "peak_kv_bytes", "peak_rss_bytes", "rss_before_bytes", "rep",
}


def test_bench_sc_smoke(tiny_model_dir, gsm8k_dir, tmp_path):
    P, ns, M = 2, [1, 3], 4
    result = bench.run_sc(
        model=str(tiny_model_dir), problems=P, ns=ns, max_tokens=M, reps=1, systems=("engine", "hf"),
        skip={("hf", 3)}, data_dir=gsm8k_dir, log=lambda *_: None,
    )
    assert result["schema"] == bench.SCHEMA
    assert {"cpu", "usable_cores", "torch_threads", "torch", "transformers", "python"} <= set(result["machine"])
    w = result["workload"]
    assert w["problems"] == P and w["n"] == ns and w["max_tokens"] == M and len(w["prompt_tokens"]) == P
    assert result["model_facts"]["non_embedding_parameters"] > 0
    assert result["ceiling"]["gemm_flops_per_s"] > 0 and result["ceiling"]["tokens_per_s"] > 0
    assert [c["n"] for c in result["configs"]] == ns

    for cfg in result["configs"]:
        eng = cfg["systems"]["engine"]
        assert eng["error"] is None and len(eng["runs"]) == 1
        run = eng["runs"][0]
        assert RUN_KEYS <= set(run)
        assert run["generated_tokens"] == P * cfg["n"] * M
        # each prompt is computed once, whatever n
        assert run["prompt_tokens_computed"] == sum(w["prompt_tokens"])
        assert run["engine_prompt_tokens_computed"] == sum(w["prompt_tokens"])
        assert run["peak_kv_bytes"] > 0 and eng["median"]["tokens_per_s"] > 0
        assert "engine" in cfg["ceiling_fraction"]
    n1, n3 = result["configs"]
    hf = n1["systems"]["hf"]["runs"][0]
    assert hf["generated_tokens"] == P * M and hf["prompt_tokens_computed"] == hf["padded_prompt_tokens"]
    assert set(n1["ratios"]) == {"engine/hf", "hf/engine"}
    assert n3["systems"]["hf"]["skipped"] and n3["systems"]["hf"]["median"] is None

    paths = write_outputs(result, tmp_path, "sc-tiny")
    assert {p.suffix for p in paths} == {".json", ".md", ".png"}
    assert json.loads(paths[0].read_text())["configs"][0]["n"] == 1
    md = paths[1].read_text()
    assert "| engine |" in md and "skipped" in md


def test_bench_cli_registered():
    parser = build_parser()
    args = parser.parse_args(["bench", "sc", "--n", "1", "4", "--skip", "hf-cb:4", "-M", "8"])
    assert args.func is bench_cli.cmd_sc and args.n == [1, 4] and args.max_tokens == 8
    args = parser.parse_args(["bench", "kernels", "--anything", "x"])
    assert args.func is bench_cli.cmd_kernels and args.kernel_args == ["--anything", "x"]


def test_bench_hf_continuous_batching_runs(tiny_model_dir, gsm8k_dir):
    """transformers' generate_batch as the bench drives it: every sample gets exactly M tokens and
    each prompt is computed about once (children fork after the prefill)."""
    P, n, M = 2, 3, 4
    result = bench.run_sc(
        model=str(tiny_model_dir), problems=P, ns=[n], max_tokens=M, reps=1, systems=("hf-cb",),
        data_dir=gsm8k_dir, warmup=False, log=lambda *_: None,
    )
    entry = result["configs"][0]["systems"]["hf-cb"]
    assert entry["error"] is None, entry.get("traceback")
    run = entry["runs"][0]
    assert run["generated_tokens"] == P * n * M
    assert abs(run["prompt_tokens_computed"] - sum(result["workload"]["prompt_tokens"])) <= P * n
    assert run["ttft_p50_s"] is not None and run["kv_pool_bytes"] > 0


def test_rss_sampler_sees_a_freed_peak_and_resets():
    """The peak of memory freed inside the block is seen; the next block starts afresh. (An
    anonymous mmap, so the memory really goes back at close, whatever malloc's settings.)"""
    import mmap

    size = 200 * 2**20
    with RssSampler() as first:
        m = mmap.mmap(-1, size)
        for off in range(0, size, 4096):
            m[off] = 1
        m.close()
    assert first.peak - first.start >= 150 * 2**20
    with RssSampler() as second:
        pass
    assert second.peak < first.peak - 100 * 2**20
