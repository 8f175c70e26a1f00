"""`harness serve` (engine.entrypoints.openai) on 127.0.0.1 with a tiny model, driven by the official
`openai` client and by raw HTTP: completions and chat, streaming, n forked samples with seeds,
logprobs against the engine's own, echo, errors, disconnects, the queue bound, and load."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MODEL = "tiny"
PROMPT = "Natalia sold clips to 48 of her friends in April."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The app in a uvicorn server on a background thread (one event loop, as in `harness serve`)."""

    def __init__(self, model_dir, api_key=None, max_waiting=1024, **engine_args):
        import uvicorn

        from engine import AsyncLLM
        from engine.entrypoints.openai.api_server import build_app
        from engine.entrypoints.openai.serving import ServingConfig

        args = {**dict(max_model_len=512, num_kv_blocks=1024, block_size=16, max_num_seqs=64), **engine_args}
        self.engine = AsyncLLM(str(model_dir), **args)
        self.app = build_app(self.engine, ServingConfig(served_model_name=MODEL, max_waiting=max_waiting), api_key=api_key)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        from engine.entrypoints.openai.api_server import KEEP_ALIVE_S

        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_keep_alive=KEEP_ALIVE_S))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)

    def client(self, **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0, **kw)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    s = Server(tiny_model_dir)
    yield s
    s.stop()


def test_completions_n_seed_and_usage(server):
    c = server.client()
    kw = dict(model=MODEL, prompt=PROMPT, max_tokens=12, n=4, temperature=0.9, seed=7, extra_body={"ignore_eos": True})
    a, b = c.completions.create(**kw), c.completions.create(**kw)
    texts = [ch.text for ch in sorted(a.choices, key=lambda ch: ch.index)]
    assert texts == [ch.text for ch in sorted(b.choices, key=lambda ch: ch.index)], "same request, same samples"
    assert len(set(texts)) == 4, "the four choices draw differently"
    n_prompt = len(server.engine.tokenizer(PROMPT).input_ids)
    assert a.usage.prompt_tokens == n_prompt and a.usage.completion_tokens == 48 and a.usage.total_tokens == n_prompt + 48
    assert all(ch.finish_reason == "length" for ch in a.choices)
    other = c.completions.create(**{**kw, "seed": 8})
    assert [ch.text for ch in sorted(other.choices, key=lambda ch: ch.index)] != texts


def test_choice_i_draws_from_derive_seed(server, tiny_model_dir):
    """choice i of a request with seed s draws from derive_seed(s, i), never s + i."""
    from engine import LLM, SamplingParams
    from engine.sampler import derive_seed

    c = server.client()
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, n=2, temperature=1.0, seed=3, extra_body={"ignore_eos": True})
    llm = LLM(str(tiny_model_dir), max_model_len=512, num_kv_blocks=256)
    ids = llm.tokenizer(PROMPT).input_ids
    want = llm.generate(ids, SamplingParams(n=2, temperature=1.0, max_tokens=8, ignore_eos=True,
                                            seeds=[derive_seed(3, 0), derive_seed(3, 1)]))[0]
    assert [ch.text for ch in sorted(r.choices, key=lambda ch: ch.index)] == [o.text for o in want.outputs]
    shifted = llm.generate(ids, SamplingParams(n=1, temperature=1.0, max_tokens=8, ignore_eos=True, seeds=[derive_seed(4, 0)]))[0]
    assert shifted.outputs[0].text != sorted(r.choices, key=lambda ch: ch.index)[1].text


def test_logprobs_match_the_engine(server, tiny_model_dir):
    from engine import LLM, SamplingParams

    c = server.client()
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3,
                             extra_body={"ignore_eos": True, "return_token_ids": True})
    llm = LLM(str(tiny_model_dir), max_model_len=512, num_kv_blocks=256)
    ref = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=6, logprobs=3, ignore_eos=True))[0].outputs[0]
    ch = r.choices[0]
    assert ch.text == ref.text and ch.model_extra["token_ids"] == ref.token_ids
    assert ch.logprobs.token_logprobs == pytest.approx(ref.logprobs, abs=1e-4)
    tok = llm.tokenizer
    for got, want in zip(ch.logprobs.top_logprobs, ref.top_logprobs):
        best = max(want, key=want.get)
        assert got[tok.decode([best])] == pytest.approx(want[best], abs=1e-4) and len(got) <= 3
    chat = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                     temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in content)
    assert all(t.logprob <= t.top_logprobs[0].logprob + 1e-6 for t in content), "greedy: the chosen token is the top one"


def test_echo_prompt_logprobs_as_lm_eval_asks(server, tiny_model_dir):
    """lm-eval's loglikelihood request: token ids, echo, max_tokens 0, logprobs 1."""
    import torch
    from transformers import AutoModelForCausalLM

    ids = server.engine.tokenizer(PROMPT).input_ids
    r = httpx.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": ids, "echo": True, "max_tokens": 0,
                                                        "logprobs": 1, "temperature": 0}, timeout=60).json()
    lp = r["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] is None and len(lp["token_logprobs"]) == len(ids) and r["usage"]["completion_tokens"] == 0
    assert r["choices"][0]["text"] == server.engine.tokenizer.decode(ids)
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = torch.log_softmax(m(torch.tensor([ids])).logits[0].float(), -1)
    want = [ref[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
    assert lp["token_logprobs"][1:] == pytest.approx(want, abs=1e-4)
    assert all(len(t) == 1 for t in lp["top_logprobs"][1:])


def test_streaming_equals_non_streaming(server):
    c = server.client()
    kw = dict(model=MODEL, max_tokens=10, temperature=0.8, seed=11, n=2)
    full = c.completions.create(prompt=PROMPT, stop=["ab"], **kw)
    parts = {0: "", 1: ""}
    usage = None
    for chunk in c.completions.create(prompt=PROMPT, stop=["ab"], stream=True, stream_options={"include_usage": True}, **kw):
        for ch in chunk.choices:
            parts[ch.index] += ch.text
        usage = chunk.usage or usage
    assert [parts[i] for i in range(2)] == [ch.text for ch in sorted(full.choices, key=lambda ch: ch.index)]
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens
    msgs = [{"role": "user", "content": "What is 2 + 2?"}]
    chat = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0)
    streamed = "".join(ch.choices[0].delta.content or "" for ch in
                       c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0, stream=True))
    assert streamed == chat.choices[0].message.content
    raw = httpx.post(server.url + "/v1/chat/completions", json={"model": MODEL, "messages": msgs, "max_tokens": 3, "stream": True},
                     timeout=60).text
    assert raw.rstrip().endswith("data: [DONE]")


def test_models_health_tokenize_metrics(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert httpx.get(server.url + "/health").status_code == 200
    tok = httpx.post(server.url + "/tokenize", json={"prompt": PROMPT}).json()
    assert tok["tokens"] == server.engine.tokenizer(PROMPT).input_ids and tok["count"] == len(tok["tokens"])
    assert httpx.post(server.url + "/detokenize", json={"tokens": tok["tokens"]}).json()["prompt"] == PROMPT
    info = httpx.get(server.url + "/tokenizer_info").json()
    assert info["eos_token"] == "<|im_end|>" and info["chat_template"]
    text = httpx.get(server.url + "/metrics").text
    for name in ("engine_time_to_first_token_seconds_bucket", "engine_num_requests_running", "engine_kv_blocks_used",
                 "engine_prefix_cache_hit_rate", "engine_num_preemptions_total", "engine_generation_tokens_total"):
        assert name in text, name


MALFORMED = [
    ("bad json", "/v1/completions", b"{not json"),
    ("not an object", "/v1/completions", [1, 2]),
    ("no model", "/v1/completions", {"prompt": "x"}),
    ("no prompt", "/v1/completions", {"model": MODEL}),
    ("unknown model", "/v1/completions", {"model": "nope", "prompt": "x"}),
    ("n=0", "/v1/completions", {"model": MODEL, "prompt": "x", "n": 0}),
    ("n as text", "/v1/completions", {"model": MODEL, "prompt": "x", "n": "2"}),
    ("top_p=2", "/v1/completions", {"model": MODEL, "prompt": "x", "top_p": 2}),
    ("top_p=0", "/v1/completions", {"model": MODEL, "prompt": "x", "top_p": 0}),
    ("temperature<0", "/v1/completions", {"model": MODEL, "prompt": "x", "temperature": -1}),
    ("temperature text", "/v1/completions", {"model": MODEL, "prompt": "x", "temperature": "hot"}),
    ("min_p=5", "/v1/completions", {"model": MODEL, "prompt": "x", "min_p": 5}),
    ("top_k=-5", "/v1/completions", {"model": MODEL, "prompt": "x", "top_k": -5}),
    ("huge max_tokens", "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 10**9}),
    ("max_tokens=-1", "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": -1}),
    ("logprobs=99", "/v1/completions", {"model": MODEL, "prompt": "x", "logprobs": 99}),
    ("empty prompt list", "/v1/completions", {"model": MODEL, "prompt": []}),
    ("token id out of vocab", "/v1/completions", {"model": MODEL, "prompt": [10**8]}),
    ("prompt of dicts", "/v1/completions", {"model": MODEL, "prompt": [{"a": 1}]}),
    ("stop not a string", "/v1/completions", {"model": MODEL, "prompt": "x", "stop": 5}),
    ("seed<0", "/v1/completions", {"model": MODEL, "prompt": "x", "seed": -3}),
    ("penalty", "/v1/completions", {"model": MODEL, "prompt": "x", "presence_penalty": 1.0}),
    ("prompt too long", "/v1/completions", {"model": MODEL, "prompt": "word " * 2000}),
    ("no messages", "/v1/chat/completions", {"model": MODEL, "messages": []}),
    ("bad role", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}),
    ("content number", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": 5}]}),
    ("top_logprobs without logprobs", "/v1/chat/completions",
     {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}),
    ("stream as text", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
]


@pytest.mark.parametrize("what,path,body", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_requests_are_4xx_with_the_error_shape(server, what, path, body):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server.url + path, content=content, headers={"content-type": "application/json"}, timeout=30)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert (r.status_code == 404) == (what == "unknown model")


def test_api_key(tiny_model_dir):
    s = Server(tiny_model_dir, api_key="sekret", num_kv_blocks=128)
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").models.list()
        assert [m.id for m in s.client(api_key="sekret").models.list().data] == [MODEL]
        assert httpx.get(s.url + "/health").status_code == 200  # not behind the key
    finally:
        s.stop()


def test_disconnects_abort_and_the_queue_bound_answers_429(tiny_model_dir):
    s = Server(tiny_model_dir, max_waiting=2, num_kv_blocks=128, max_num_seqs=2)
    try:
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 480, "ignore_eos": True, "stream": True}

        async def burst():
            # Every client holds its stream until all 12 have an answer, so the admitted ones still
            # occupy the engine when the last arrive (on a loaded machine arrivals spread out, and a
            # client that left at once freed its slot for the next: all 200s).
            answered, everyone = [0], asyncio.Event()

            async with httpx.AsyncClient(base_url=s.url, timeout=60) as client:
                async def one():
                    async with client.stream("POST", "/v1/completions", json=body) as r:
                        answered[0] += 1
                        if answered[0] == 12:
                            everyone.set()
                        if r.status_code != 200:
                            return r.status_code, r.headers.get("retry-after")
                        await everyone.wait()
                        async for _ in r.aiter_lines():  # the first chunk, then walk away mid-generation
                            break
                        return 200, None
                return await asyncio.gather(*[one() for _ in range(12)])

        results = asyncio.run(burst())
        codes = [c for c, _ in results]
        assert set(codes) <= {200, 429} and 429 in codes and 200 in codes, codes
        assert all(ra == "1" for c, ra in results if c == 429)
        deadline = time.time() + 60
        while (s.engine.num_running or s.engine.num_waiting) and time.time() < deadline:
            time.sleep(0.1)
        stats = s.engine.stats
        assert stats.requests_aborted == codes.count(200), "every client that walked away was aborted"
        assert stats.blocks_in_use == 0 and s.engine.num_running == 0
    finally:
        s.stop()


def test_load_64_clients(tiny_model_dir):
    """64 concurrent clients x 20 requests: mixed n, streamed or not, every 7th walks away midway."""
    s = Server(tiny_model_dir, num_kv_blocks=4096, max_num_seqs=128)
    try:
        async def client_run(client, c):
            codes, walked = [], 0
            for j in range(20):
                n, stream, leave = 1 + (c + j) % 3, (c + j) % 2 == 0, (c * 20 + j) % 7 == 0
                body = {"model": MODEL, "prompt": f"{PROMPT} {c} {j}", "n": n, "temperature": 0.7, "seed": c * 100 + j,
                        "max_tokens": 200 if leave else 6, "ignore_eos": leave, "stream": stream or leave}
                if stream or leave:
                    async with client.stream("POST", "/v1/completions", json=body) as r:
                        codes.append(r.status_code)
                        done = False
                        async for line in r.aiter_lines():
                            if leave:
                                walked += 1
                                break
                            done = done or line == "data: [DONE]"
                        assert leave or done, "a streamed response lost its end"
                else:
                    r = await client.post("/v1/completions", json=body)
                    codes.append(r.status_code)
                    assert len(r.json()["choices"]) == n
            return codes, walked

        async def run_all():
            async with httpx.AsyncClient(base_url=s.url, timeout=300, limits=httpx.Limits(max_connections=128)) as client:
                return await asyncio.gather(*[client_run(client, c) for c in range(64)])

        t0 = time.time()
        results = asyncio.run(run_all())
        codes = [x for cs, _ in results for x in cs]
        walked = sum(w for _, w in results)
        assert len(codes) == 64 * 20 and set(codes) == {200}, "0 lost responses, 0 errors"
        deadline = time.time() + 60
        while (s.engine.num_running or s.engine.num_waiting) and time.time() < deadline:
            time.sleep(0.1)
        stats = s.engine.stats
        assert stats.requests_aborted == walked and stats.blocks_in_use == 0
        print(f"load: 1280 requests in {time.time() - t0:.1f} s, {walked} disconnects aborted")
    finally:
        s.stop()


def test_reasoning_parser_splits_think():
    from engine.entrypoints.openai.serving import OpenAIServing, _Choice, split_think

    assert split_think("<think>2+2 is 4</think>\n\nThe answer is 4.") == ("2+2 is 4", "The answer is 4.")
    assert split_think("no thinking here") == (None, "no thinking here")
    assert split_think("<think>still thinking when the budget ran out") == ("still thinking when the budget ran out", None)
    assert split_think("the template opened it</think>answer") == ("the template opened it", "answer")
    st, deltas = _Choice(), []
    for piece in ["<think>", "let me", " see</think>\n", "It is 4."]:
        deltas.append(OpenAIServing._think_delta(st, piece))
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "let me see"
    assert "".join(d.get("content", "") for d in deltas) == "It is 4."


def test_chat_template_kwargs_and_cached_tokens(server):
    c = server.client()
    msgs = [{"role": "user", "content": "The same long question, asked twice, to hit the prefix cache. " * 4}]
    first = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2, temperature=0,
                                      extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    again = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2, temperature=0)
    assert first.choices[0].message.content == again.choices[0].message.content
    assert again.usage.prompt_tokens_details.cached_tokens >= 16  # whole blocks of the first request's prompt
