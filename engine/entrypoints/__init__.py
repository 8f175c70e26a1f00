"""Ways into the engine from outside the process.

    openai   the OpenAI-compatible HTTP server over AsyncLLM (`harness serve`)
"""
