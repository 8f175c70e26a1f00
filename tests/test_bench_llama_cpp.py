"""harness bench llama-cpp without building anything: the llama-batched-bench output parser on output
captured from a real run, the per-n figures, the command line it builds, and the CLI's validation."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from harness import HarnessError
from harness.bench import llama_cpp
from harness.cli import build_parser, main

# Captured from llama.cpp 0.5.0-dev (vendored in the llama-cpp-python 0.3.36 sdist, built by
# build_llama_cpp), stdout of:
#   llama-batched-bench -m SmolLM2-135M-Instruct.Q4_1.gguf -npp 64 -ntg 16 -npl 1,4 -pps -t 2 -tb 2 \
#       -c 324 -b 2048 -ub 512 -ngl 0 --output-format jsonl
JSONL_CAPTURED = """\
{"n_kv_max": 1024, "n_batch": 2048, "n_ubatch": 512, "flash_attn": -1, "is_pp_shared": 1, "n_gpu_layers": 0, "n_threads": 2, "n_threads_batch": 2, "pp": 64, "tg": 16, "pl": 1, "n_kv": 80, "t_pp": 0.217798, "speed_pp": 293.850281, "t_tg": 0.118040, "speed_tg": 135.547272, "t": 0.335838, "speed": 238.210098}
{"n_kv_max": 1024, "n_batch": 2048, "n_ubatch": 512, "flash_attn": -1, "is_pp_shared": 1, "n_gpu_layers": 0, "n_threads": 2, "n_threads_batch": 2, "pp": 64, "tg": 16, "pl": 4, "n_kv": 320, "t_pp": 0.264080, "speed_pp": 242.350815, "t_tg": 0.435645, "speed_tg": 146.908600, "t": 0.699725, "speed": 182.929001}

"""

# Captured from the same build, stdout of the same command without -ngl 0 and --output-format
# (the default markdown table).
MD_CAPTURED = """\

llama_batched_bench: n_kv_max = 1024, n_batch = 2048, n_ubatch = 512, flash_attn = -1, is_pp_shared = 1, is_tg_separate = 0, n_gpu_layers = -1, n_threads = 2, n_threads_batch = 2

|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|    64 |     16 |    1 |     80 |    0.238 |   269.34 |    0.137 |   116.90 |    0.374 |   213.62 |
|    64 |     16 |    4 |    320 |    0.236 |   271.14 |    0.461 |   138.77 |    0.697 |   183.58 |

"""

# A few of the stderr lines the same run writes around its results (model loading, a warning).
STDERR_NOISE = """\
llama_model_loader: - type q4_1:  210 tensors
0.00.116.711 W llama_context: n_ctx is not divisible by n_seq_max - rounding down to 1024
"""


def test_parse_jsonl_captured():
    rows = llama_cpp.parse_batched_bench(STDERR_NOISE + JSONL_CAPTURED)
    assert [r["pl"] for r in rows] == [1, 4]
    assert all(r["pp"] == 64 and r["tg"] == 16 and r["is_pp_shared"] == 1 for r in rows)
    r4 = rows[1]
    assert r4["t_pp"] == pytest.approx(0.264080) and r4["t_tg"] == pytest.approx(0.435645)
    assert r4["raw"].startswith('{"n_kv_max": 1024') and r4["raw"].endswith('"speed": 182.929001}')
    # with -pps (no -kvu) the tool's n_kv counts the prompt once per sequence: n*(P+M)
    assert r4["n_kv"] == 4 * (64 + 16)
    # and its "speed" counts the shared prompt once plus the generated tokens
    assert r4["speed"] == pytest.approx((64 + 4 * 16) / r4["t"], rel=1e-5)


def test_row_result_counts_generated_tokens_only():
    rows = llama_cpp.parse_batched_bench(JSONL_CAPTURED)
    res = llama_cpp.row_result(rows[1])
    assert res["n"] == 4 and res["prompt_tokens"] == 64 and res["new_tokens"] == 16
    assert res["generated_tokens"] == 64
    assert res["prompt_s"] == pytest.approx(0.264080) and res["decode_s"] == pytest.approx(0.435645)
    assert res["total_s"] == pytest.approx(0.699725)
    assert res["tokens_per_s"] == pytest.approx(64 / 0.699725)
    assert res["decode_tokens_per_s"] == pytest.approx(rows[1]["speed_tg"], rel=1e-5)  # pl*tg / t_tg
    assert res["tokens_per_s"] < res["llama_speed"]  # the tool's figure also counts the 64 prompt tokens


def test_parse_markdown_captured():
    rows = llama_cpp.parse_batched_bench(STDERR_NOISE + MD_CAPTURED)
    assert [(r["pp"], r["tg"], r["pl"], r["n_kv"]) for r in rows] == [(64, 16, 1, 80), (64, 16, 4, 320)]
    assert rows[0]["t_pp"] == pytest.approx(0.238) and rows[0]["speed"] == pytest.approx(213.62)
    res = llama_cpp.row_result(rows[1])
    assert res["generated_tokens"] == 64 and res["tokens_per_s"] == pytest.approx(64 / 0.697)
    assert llama_cpp.parse_batched_bench("no table here\n| PP | TG |\n") == []


def test_jsonl_wins_over_a_table_and_bad_lines_are_skipped():
    rows = llama_cpp.parse_batched_bench(MD_CAPTURED + '{"pl": broken\n' + JSONL_CAPTURED)
    assert len(rows) == 2 and rows[0]["t"] == pytest.approx(0.335838)


def test_context_covers_what_the_tool_asks_for():
    # batched-bench skips (silently) a configuration whose n_ctx_req exceeds n_kv_max:
    # pps without -kvu: n*P + n*M; with -kvu: P + n*M
    for n in (1, 4, 16, 64):
        assert llama_cpp.context_size(900, 128, n) >= n * 900 + n * 128
        assert llama_cpp.context_size(900, 128, n, kv_unified=True) >= 900 + n * 128
    cmd = llama_cpp.batched_bench_command(Path("/b"), Path("/m.gguf"), 900, 128, [4], 2)
    assert cmd[0] == "/b/llama-batched-bench" and "-pps" in cmd and "-kvu" not in cmd
    assert cmd[cmd.index("-npl") + 1] == "4" and cmd[cmd.index("-c") + 1] == str(4 * (900 + 128 + 1))
    assert cmd[cmd.index("--output-format") + 1] == "jsonl"
    assert "-kvu" in llama_cpp.batched_bench_command(Path("/b"), Path("/m.gguf"), 900, 128, [4], 2, kv_unified=True)


def _fake_bench(tmp_path: Path, text: str) -> Path:
    """A bin dir whose llama-batched-bench prints the captured output."""
    (tmp_path / "out.txt").write_text(text)
    exe = tmp_path / "llama-batched-bench"
    exe.write_text(f"#!/bin/sh\ncat '{tmp_path / 'out.txt'}'\necho 'llama_perf_context_print: load time' >&2\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return tmp_path


@pytest.mark.skipif(os.name != "posix", reason="a shell script stands in for the binary")
def test_run_batched_bench_on_captured_output(tmp_path):
    bin_dir = _fake_bench(tmp_path, JSONL_CAPTURED)
    rows = llama_cpp.run_batched_bench(bin_dir, tmp_path / "m.gguf", 64, 16, [4, 1], 2, log=lambda m: None)
    assert [r["n"] for r in rows] == [4, 1]  # in the order asked for
    assert rows[0]["tokens_per_s"] == pytest.approx(64 / 0.699725) and rows[1]["generated_tokens"] == 16
    assert rows[0]["is_pp_shared"] == 1 and rows[0]["n_threads"] == 2
    with pytest.raises(HarnessError, match="no row for n=8"):
        llama_cpp.run_batched_bench(bin_dir, tmp_path / "m.gguf", 64, 16, [1, 8], 2, log=lambda m: None)


def test_quants():
    assert llama_cpp.parse_quants("q4_1, F32") == ("Q4_1", "F32")
    for bad, msg in (("", "empty"), ("Q4_1,F64", "F64 is not a llama.cpp weight type"), ("F32,f32", "twice")):
        with pytest.raises(HarnessError, match=msg):
            llama_cpp.parse_quants(bad)
    llama_cpp.check_quants(("Q4_1", "F32"), "Q4_1")
    with pytest.raises(HarnessError, match="Q8_0 is not available: the source GGUF is Q4_1"):
        llama_cpp.check_quants(("Q8_0",), "Q4_1")


def test_cli_registered_with_defaults():
    args = build_parser().parse_args(["bench", "llama-cpp"])
    assert args.model == "smollm2-135m-instruct" and args.prompt_tokens == 900 and args.max_tokens == 128
    assert args.n == ["1", "4", "16", "64"] and args.threads == 2 and args.reps == 3 and args.quants == "Q4_1,F32"
    assert str(args.out) == "reports/bench" and not args.build_only


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "--n values must be positive integers, got '0'"),
    (["--n", "1", "x"], "--n values must be positive integers, got 'x'"),
    (["--n", "4", "4"], "--n: 4 4 repeats a value"),
    (["--quants", "Q4_1,F64"], "--quants: F64 is not a llama.cpp weight type"),
    (["--quants", ","], "--quants: empty"),
    (["--reps", "0"], "--reps must be positive"),
])
def test_cli_rejects_bad_arguments_in_one_line(argv, message, monkeypatch, capsys):
    def no_work(*a, **k):
        raise AssertionError("validation must come before any model resolution or build")

    monkeypatch.setattr(llama_cpp, "build_llama_cpp", no_work)
    monkeypatch.setattr(llama_cpp, "resolve_gguf", no_work)
    assert main(["bench", "llama-cpp", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
