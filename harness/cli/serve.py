"""`harness serve MODEL`: the engine behind an OpenAI-compatible HTTP server
(engine.entrypoints.openai), for any tool that speaks the OpenAI API."""

from __future__ import annotations

import argparse

from harness.cli.eval import engine_options


def register(sub: argparse._SubParsersAction) -> None:
    from engine.entrypoints.openai.cli_args import add_server_arguments

    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                       description="Start the engine and an OpenAI-compatible server: /v1/completions, "
                                   "/v1/chat/completions, /v1/models, /health, /metrics, /tokenize, /detokenize.")
    p.add_argument("model", help="preset, local dir, .gguf file or hub id")
    add_server_arguments(p)
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="engine option, e.g. max_num_seqs=64, kv_cache_memory=2GiB, dtype=float32")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from engine.entrypoints.openai.api_server import config_from_args, serve
    from harness.backends.engine import EngineBackend
    from harness.models import quiet_transformers, resolve_model

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_transformers()
    model = resolve_model(args.model)
    backend = EngineBackend(model, asynchronous=True, **engine_options(args.engine_arg))
    serve(backend.async_engine, config_from_args(args, args.served_model_name or model.id), host=args.host,
          port=args.port, api_key=args.api_key, shutdown_timeout=args.shutdown_timeout, log_level=args.log_level)
    return 0
