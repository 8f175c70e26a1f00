"""The OpenAI-compatible HTTP server: FastAPI + uvicorn over one AsyncLLM.

    POST /v1/completions  /v1/chat/completions      (n forked samples, seeds, logprobs, echo, SSE)
    GET  /v1/models  /health  /metrics  /tokenizer_info      POST /tokenize  /detokenize

    python -m engine.entrypoints.openai.api_server --model DIR [--port 8000] [--api-key KEY]

Errors are OpenAI's `{"error": {...}}` with 400 (malformed body, out-of-range value, a prompt that
can never fit), 401 (wrong API key), 404 (unknown model), 429 + Retry-After (waiting queue over its
bound). A client that disconnects aborts its request and frees its blocks. On SIGTERM uvicorn stops
accepting, lets in-flight requests finish for `--shutdown-timeout` seconds, then the engine aborts
what is left.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from engine.async_llm import AsyncLLM
from engine.entrypoints.openai.cli_args import add_server_arguments
from engine.entrypoints.openai.metrics import ServerMetrics
from engine.entrypoints.openai.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from engine.entrypoints.openai.serving import ClientGone, OpenAIServing, ServingConfig
from engine.tokenizer import encode_prompt

logger = logging.getLogger(__name__)
# Idle keep-alive connections live longer here than in clients' pools (httpx: 5 s), so a client never
# sends a request on a connection the server is closing at that moment (a ReadError under load).
KEEP_ALIVE_S = 65


def build_app(engine: AsyncLLM, config: ServingConfig, api_key: str | None = None) -> FastAPI:
    metrics = ServerMetrics(engine, config.served_model_name)
    serving = OpenAIServing(engine, config, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await engine.shutdown()  # abort whatever uvicorn's graceful shutdown left running

    app = FastAPI(title="reasoning-harness engine", lifespan=lifespan)
    app.state.serving = serving

    def error(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return error(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        return error(_validation_error(e.errors()))

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error(APIError(401, "invalid API key", type="authentication_error", code="invalid_api_key"))
        return await call_next(request)

    async def body_of(request: Request, model: type) -> Any:
        raw = await request.body()
        try:
            data = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise APIError(400, "the body must be a JSON object")
        from pydantic import ValidationError

        try:
            return model.model_validate(data)
        except ValidationError as e:
            raise _validation_error(e.errors()) from None

    async def generate(request: Request, model: type, handler) -> Response:
        """Parse the body, run the handler; a dict is the JSON response, anything else SSE."""
        req = await body_of(request, model)
        try:
            result = await handler(req, request.is_disconnected)
        except ClientGone:
            return Response(status_code=499)  # nobody is listening; the engine request is aborted
        if isinstance(result, dict):
            return JSONResponse(result)
        return StreamingResponse(result, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, CompletionRequest, serving.completions)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await generate(request, ChatCompletionRequest, serving.chat)

    @app.get("/v1/models")
    async def models():
        cfg = engine.engine.config
        return {"object": "list", "data": [{
            "id": config.served_model_name, "object": "model", "created": int(time.time()), "owned_by": "reasoning-harness",
            "root": cfg.model, "max_model_len": cfg.max_model_len,
        }]}

    @app.get("/health")
    async def health():
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/tokenize")
    async def tokenize(request: Request):
        req = await body_of(request, TokenizeRequest)
        tok = engine.tokenizer
        if req.messages is not None:
            text = tok.apply_chat_template([{"role": m.role, "content": m.text()} for m in req.messages], tokenize=False,
                                           add_generation_prompt=req.add_generation_prompt)
            ids = encode_prompt(tok, text)
        elif req.add_special_tokens:
            ids = encode_prompt(tok, req.prompt)
        else:
            ids = list(tok(req.prompt, add_special_tokens=False)["input_ids"])
        return {"count": len(ids), "max_model_len": engine.engine.config.max_model_len, "tokens": ids}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        req = await body_of(request, DetokenizeRequest)
        if any(not 0 <= t < len(engine.tokenizer) for t in req.tokens):
            raise APIError(400, "token ids must be in the tokenizer's vocabulary", param="tokens")
        return {"prompt": engine.tokenizer.decode(req.tokens)}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        tok = engine.tokenizer
        return {"tokenizer_class": type(tok).__name__, "model_max_length": engine.engine.config.max_model_len,
                "bos_token": tok.bos_token, "eos_token": tok.eos_token, "pad_token": tok.pad_token,
                "unk_token": tok.unk_token, "add_bos_token": getattr(tok, "add_bos_token", None),
                "chat_template": tok.chat_template, "vocab_size": len(tok)}

    return app


def _validation_error(errors: list[dict]) -> APIError:
    """The first pydantic error as a 400 naming its field (e.g. `top_p`, `messages.0.role`)."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    # drop pydantic's union-branch names (`str`, `list[int]`, ...) from the field path
    loc = [x for x in loc if not (x[:1].isalpha() and ("[" in x or x in ("str", "int", "float", "bool")))]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return APIError(400, f"{param}: {msg}" if param else msg, param=param)


# ---------------------------------------------------------------------------------------------- running


def serve(engine: AsyncLLM, config: ServingConfig, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          shutdown_timeout: float = 30.0, log_level: str = "info") -> None:
    """Serve `engine` until SIGINT/SIGTERM (uvicorn handles both: stop accepting, drain, exit)."""
    import uvicorn

    app = build_app(engine, config, api_key=api_key)
    logger.info("serving %s on http://%s:%d", config.served_model_name, host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=shutdown_timeout,
                timeout_keep_alive=KEEP_ALIVE_S)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.entrypoints.openai.api_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a local Hugging Face model directory")
    add_server_arguments(p)
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE", help="EngineConfig field, e.g. max_num_seqs=64")
    args = p.parse_args(argv)
    engine_args = {}
    for item in args.engine_arg:
        k, _, v = item.partition("=")
        engine_args[k.replace("-", "_")] = json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v
    logging.basicConfig(level=logging.INFO)
    engine = AsyncLLM(args.model, **engine_args)
    serve(engine, config_from_args(args, args.served_model_name or args.model), host=args.host, port=args.port,
          api_key=args.api_key, shutdown_timeout=args.shutdown_timeout, log_level=args.log_level)
    return 0


def config_from_args(args: argparse.Namespace, served_model_name: str) -> ServingConfig:
    return ServingConfig(served_model_name=served_model_name, max_waiting=args.max_waiting,
                         reasoning_parser=args.reasoning_parser)


if __name__ == "__main__":
    raise SystemExit(main())
