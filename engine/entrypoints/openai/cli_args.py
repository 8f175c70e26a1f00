"""The server's command-line options, shared by `harness serve` and `python -m
engine.entrypoints.openai.api_server`; argparse only, so building the `harness` parser stays light."""

from __future__ import annotations

import argparse


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1 routes")
    p.add_argument("--served-model-name", default=None, help="the model name clients send (default: the model)")
    p.add_argument("--max-waiting", type=int, default=1024, help="waiting requests beyond which new ones get 429")
    p.add_argument("--reasoning-parser", choices=["think"], default=None,
                   help="think: return <think>…</think> as message.reasoning_content")
    p.add_argument("--shutdown-timeout", type=float, default=30.0, help="seconds in-flight requests get on SIGTERM")
    p.add_argument("--log-level", default="info")
