"""The OpenAI-compatible server.

    protocol     request bodies (pydantic) and the error shape
    serving      completions / chat completions over AsyncLLM: params, streaming, logprobs, echo
    metrics      Prometheus metrics (`/metrics`)
    api_server   the FastAPI app, its routes, and running it with uvicorn
    cli_args     the server's command-line options (argparse only)
"""
