from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests import tiny


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    if not (tiny.GSM8K_DIR / "test.jsonl").exists():
        pytest.fail(f"GSM8K data not found at {tiny.GSM8K_DIR} (set HARNESS_SHARED)")
    return tiny.GSM8K_DIR


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny-tokenizer")
    tiny.build_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory, tiny_tokenizer_dir):
    """tiny_model_factory(arch, **config_overrides) -> a saved model directory (cached per args)."""
    cache: dict = {}

    def make(arch: str = "llama", **overrides) -> Path:
        key = (arch, tuple(sorted(overrides.items())))
        if key not in cache:
            d = tmp_path_factory.mktemp(f"tiny-{arch}")
            cache[key] = tiny.build_tiny_model(d, arch, tokenizer_dir=tiny_tokenizer_dir, **overrides)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_factory) -> Path:
    return tiny_model_factory("llama")


@pytest.fixture(scope="module")
def single_torch_thread():
    """torch at one thread for a module's tests, restored after (a module opts in with
    `pytestmark = pytest.mark.usefixtures("single_torch_thread")`). Tiny models gain nothing from
    intra-op threads, and on a shared 2-core machine OpenMP barriers with a descheduled thread
    make every op ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Modules that take the longest (seconds on the 2-core CI machine, measured with pytest-xdist: real
# models, subprocesses, the GPU compile check). `--dist loadfile` hands files to workers in collection
# order, so these go first and the short modules fill in behind them; in alphabetical order one
# worker was left running test_streaming alone at the end.
LONG_MODULES = ("test_long_chains", "test_streaming", "test_kernels_triton", "test_engine", "test_openai_backend", "test_engine_triton",
                "test_serve", "test_bench", "test_report_html")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))  # stable: order within a module kept
