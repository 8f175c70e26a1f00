"""The transformers reference backend: `model.generate` over left-padded batches.

Each (request, sample index) pair is one row; rows from many requests share batches of
`batch_size`, sorted by prompt length (longest first) to limit padding. A greedy request runs one
row whatever its n (its samples are identical by definition) and copies the result.

Sampling never touches torch's global RNG. `generate` runs with `do_sample=False` and a logits
processor that, for every sampled row, draws the token with `engine.sampler.sample` from the
counter-based uniforms `engine.sampler.uniforms(seed, step)` (step = index of the token being
generated in that row) and masks every other token to -inf, so greedy decoding picks exactly that
token. A sample's tokens therefore depend only on its seed and its logits — not on the batch it
landed in — and agree with the engine's when the logits do.

Finishing, checked after every step for each row (first match wins):
  1. EOS (any of the model's eos ids, unless `ignore_eos`) → finish "stop", stop_reason = token id;
  2. a stop string in the text decoded so far → finish "stop", stop_reason = the string;
  3. `max_tokens` generated, or the model's max length reached → finish "length".
`token_ids` holds the generated ids up to and including the one that finished the sample (the EOS
id, or the token that completed the stop string). `text` is decoded with special tokens skipped and
cut just before the earliest stop string, which never appears in it.

Timing: `ttft` and `latency` are measured from submission (the first `next()` of `generate`, when
every request is handed over, as in the engine) to the row's first token / its finish; a row that
waits for earlier batches is charged for the wait, as a request queued in a server would be.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from engine.sampler import logprobs as _logprobs
from engine.sampler import sample as _sample
from engine.sampler import uniforms as _uniforms
from harness.backends.base import Completion, GenerationRequest, SamplingParams
from harness.models import (
    ResolvedModel,
    chat_template_hash,
    encode_prompt,
    eos_token_ids,
    load_errors,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    resolve_model,
)
from harness.scoring.records import BackendInfo

_U64 = 1 << 64


@dataclass
class _Row:
    req: GenerationRequest
    samples: list[tuple[int, int]]  # (sample index, seed); several only for greedy requests
    prompt_ids: list[int]
    max_new: int  # max_tokens clipped to the model's max length
    # filled while generating
    done: bool = False
    n_gen: int = 0
    reason: str = "length"
    stop_reason: str | int | None = None
    t_finish: float | None = None
    logprobs: list[float] = field(default_factory=list)

    @property
    def params(self) -> SamplingParams:
        return self.req.params

    @property
    def seed(self) -> int:
        return self.samples[0][1]


def _validate(p: SamplingParams) -> str | None:
    if p.temperature < 0:
        return f"temperature must be >= 0 (got {p.temperature})"
    if not 0 < p.top_p <= 1:
        return f"top_p must be in (0, 1] (got {p.top_p})"
    if p.top_k < 0:
        return f"top_k must be >= 0 (got {p.top_k})"
    if not 0 <= p.min_p <= 1:
        return f"min_p must be in [0, 1] (got {p.min_p})"
    if p.max_tokens < 1:
        return f"max_tokens must be >= 1 (got {p.max_tokens})"
    if any(not isinstance(s, str) or not s for s in p.stop):
        return "stop strings must be non-empty strings"
    return None


class _Batch:
    """Per-batch state shared by the logits processor and the stopping criteria."""

    def __init__(self, rows: list[_Row], prompt_len: int, eos_ids: set[int], tokenizer: Any, device: str):
        self.rows = rows
        self.P = prompt_len
        self.eos_ids = eos_ids
        self.tok = tokenizer
        self.t_first: float | None = None
        self.done = [False] * len(rows)
        self.seeds = [r.seed for r in rows]
        p = [r.params for r in rows]
        self.temp = torch.tensor([x.temperature for x in p], dtype=torch.float32, device=device)
        self.top_k = torch.tensor([x.top_k for x in p], dtype=torch.long, device=device)
        self.top_p = torch.tensor([x.top_p for x in p], dtype=torch.float32, device=device)
        self.min_p = torch.tensor([x.min_p for x in p], dtype=torch.float32, device=device)
        self.sampled_rows = torch.tensor([i for i, x in enumerate(p) if x.temperature > 0], dtype=torch.long, device=device)
        self.want_logprobs = [x.logprobs is not None for x in p]
        # Enough tokens to hold the longest stop string even when each char takes 4 byte-tokens.
        self.stop_window = max((4 * max(map(len, x.stop)) + 8 for x in p if x.stop), default=0)


class _SeededSampler:
    """LogitsProcessor: picks each sampled row's token from its own counter-based uniform."""

    def __init__(self, b: _Batch):
        self.b = b

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        b = self.b
        step = input_ids.shape[1] - b.P  # index of the token being generated
        has_sampled = b.sampled_rows.numel() > 0
        want_lp = any(w and not d for w, d in zip(b.want_logprobs, b.done))
        if not has_sampled and not want_lp:
            return scores
        if has_sampled:
            u = _uniforms(b.seeds, [step] * len(b.seeds))
            tokens = _sample(scores, b.temp, b.top_k, b.top_p, b.min_p, u)
        else:
            tokens = scores.argmax(dim=-1)
        if want_lp:
            lp = _logprobs(scores, tokens)[0].tolist()  # raw distribution, as the engine reports
            for i, row in enumerate(b.rows):
                if b.want_logprobs[i] and not b.done[i]:
                    row.logprobs.append(float(lp[i]))
        if has_sampled:
            rows = b.sampled_rows
            masked = torch.full_like(scores[rows], float("-inf"))
            masked.scatter_(1, tokens[rows].unsqueeze(1), 0.0)
            scores[rows] = masked
        return scores


class _RowStopper:
    """StoppingCriteria: per-row EOS / stop string / length; returns a bool per row."""

    def __init__(self, b: _Batch):
        self.b = b

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        b = self.b
        now = time.perf_counter()
        if b.t_first is None:
            b.t_first = now
        n = input_ids.shape[1] - b.P  # tokens generated so far
        last = input_ids[:, -1].tolist()
        window = None
        if b.stop_window and any(r.params.stop and not d for r, d in zip(b.rows, b.done)):
            w = min(n, b.stop_window)
            window = input_ids[:, input_ids.shape[1] - w :].tolist()
        for i, r in enumerate(b.rows):
            if b.done[i]:
                continue
            p = r.params
            if not p.ignore_eos and last[i] in b.eos_ids:
                self._finish(i, n, "stop", int(last[i]), now)
            elif window is not None and p.stop and self._stop_in(window[i], p.stop):
                self._finish(i, n, "stop", "<stop>", now)  # the exact string is settled when finalising
            elif n >= r.max_new:
                self._finish(i, n, "length", None, now)
        return torch.tensor(b.done, dtype=torch.bool, device=input_ids.device)

    def _stop_in(self, ids: list[int], stops: Sequence[str]) -> bool:
        text = self.b.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return any(s in text for s in stops)

    def _finish(self, i: int, n: int, reason: str, stop_reason: str | int | None, now: float) -> None:
        r = self.b.rows[i]
        self.b.done[i] = True
        r.done, r.n_gen, r.reason, r.stop_reason, r.t_finish = True, n, reason, stop_reason, now


class HFBackend:
    """transformers `generate` with per-sample counter-based seeds; see the module docstring."""

    name = "hf"

    def __init__(
        self,
        model: ResolvedModel | str,
        dtype: str = "auto",
        device: str = "auto",
        batch_size: int = 8,
        max_model_len: int | None = None,
        attn_implementation: str | None = None,
        **_: Any,
    ):
        from transformers import AutoModelForCausalLM, GenerationConfig

        self.model = model if isinstance(model, ResolvedModel) else resolve_model(str(model))
        self.device = resolve_device(device)
        self.torch_dtype = resolve_dtype(dtype, self.device, self.model)
        self.batch_size = max(1, int(batch_size))
        self._submitted = time.perf_counter()  # set again by every generate() call
        self._tok = load_tokenizer(self.model)
        kw: dict[str, Any] = {"dtype": self.torch_dtype}
        if attn_implementation:
            kw["attn_implementation"] = attn_implementation
        t0 = time.perf_counter()
        with load_errors(self.model, "weights"):
            lm = AutoModelForCausalLM.from_pretrained(str(self.model.path), **kw)
        self._lm = lm.to(self.device).eval()
        self.load_seconds = time.perf_counter() - t0

        gen = self._lm.generation_config
        eos = eos_token_ids([gen, self._lm.config.get_text_config()], self._tok, (self.model.preset or {}).get("eos_tokens") or ())
        self.eos_token_ids = eos
        pad = self._tok.pad_token_id
        if pad is None:
            pad = gen.pad_token_id if gen.pad_token_id is not None else (eos[0] if eos else 0)
        self.pad_token_id = int(pad)
        # A neutral generation config: the checkpoint's own sampling defaults (temperature,
        # repetition_penalty, eos, ...) must not leak in; EOS and lengths are handled per row here.
        self._lm.generation_config = GenerationConfig(pad_token_id=self.pad_token_id)

        limits = [self.model.max_model_len, max_model_len]
        mpe = getattr(self._lm.config.get_text_config(), "max_position_embeddings", None)
        limits.append(mpe)
        limits = [int(x) for x in limits if x]
        self.max_model_len = min(limits) if limits else None

    # ---------------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        return self._tok

    def info(self) -> BackendInfo:
        import transformers

        m = self.model
        return BackendInfo(
            backend=self.name, model=m.id, model_path=str(m.path), model_source=m.source, revision=m.revision,
            dtype=str(self.torch_dtype).removeprefix("torch."), device=self.device, max_model_len=self.max_model_len,
            chat_template_hash=chat_template_hash(self._tok), eos_token_ids=list(self.eos_token_ids),
            details={"batch_size": self.batch_size, "transformers_version": transformers.__version__,
                     "torch_version": torch.__version__},
        )

    def close(self) -> None:
        self._lm = None  # type: ignore[assignment]
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[Completion]:
        """Yield completions batch by batch; a request that cannot run yields error completions."""
        self._submitted = time.perf_counter()  # what ttft/latency count from
        rows: list[_Row] = []
        for req in requests:
            if not req.sample_indices:
                continue
            ids: list[int] = []
            try:
                err = _validate(req.params)
                if err is None and req.thinking is not None:
                    err = "thinking.budget (budget forcing) needs the engine backend"
                if err is None and any(not 0 <= int(s) < _U64 for s in req.seeds):
                    err = "seeds must be integers in [0, 2**64)"
                if err is None:
                    ids = encode_prompt(self._tok, req.prompt)
                    if not ids:
                        err = "the prompt is empty (0 tokens)"
                    elif self.max_model_len is not None and len(ids) >= self.max_model_len:
                        err = (
                            f"prompt has {len(ids)} tokens; the model's max length is {self.max_model_len} "
                            "(no room to generate)"
                        )
            except Exception as e:  # noqa: BLE001 - e.g. a tokenizer failure on odd input
                err = f"cannot tokenise the prompt: {type(e).__name__}: {e}"
            if err is not None:
                yield from self._errors(req, req.sample_indices, err, prompt_tokens=len(ids))
                continue
            max_new = req.params.max_tokens
            if self.max_model_len is not None:
                max_new = min(max_new, self.max_model_len - len(ids))
            pairs = list(zip(req.sample_indices, req.seeds))
            if req.params.temperature == 0:
                rows.append(_Row(req, pairs, ids, max_new))  # greedy: every sample is the same
            else:
                rows.extend(_Row(req, [pr], ids, max_new) for pr in pairs)
        rows.sort(key=lambda r: -len(r.prompt_ids))  # stable: ties keep request order
        for i in range(0, len(rows), self.batch_size):
            yield from self._run_safe(rows[i : i + self.batch_size])

    def _errors(self, req: GenerationRequest, indices: Sequence[int], msg: str, prompt_tokens: int = 0) -> Iterator[Completion]:
        for idx in indices:
            yield Completion(
                request_id=req.request_id,
                doc_id=req.doc_id,
                sample_idx=idx,
                text="",
                finish_reason="error",
                prompt_tokens=prompt_tokens,
                error=msg,
            )

    def _run_safe(self, rows: list[_Row]) -> Iterator[Completion]:
        """Run a batch; on failure split it in halves (OOM), and fail single rows with an error."""
        try:
            done = self._run_batch(rows)
        except Exception as e:  # noqa: BLE001 - one bad batch must not stop the stream
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            if len(rows) > 1:
                for r in rows:
                    r.done, r.logprobs = False, []
                half = len(rows) // 2
                yield from self._run_safe(rows[:half])
                yield from self._run_safe(rows[half:])
                return
            r = rows[0]
            yield from self._errors(
                r.req, [i for i, _ in r.samples], f"generation failed: {type(e).__name__}: {e}", len(r.prompt_ids)
            )
            return
        yield from done

    def _run_batch(self, rows: list[_Row]) -> list[Completion]:
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        B, P = len(rows), max(len(r.prompt_ids) for r in rows)
        input_ids = torch.full((B, P), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((B, P), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r.prompt_ids)
            input_ids[i, P - n :] = torch.tensor(r.prompt_ids, dtype=torch.long)
            attention[i, P - n :] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        b = _Batch(rows, P, set(self.eos_token_ids), self._tok, self.device)
        cfg = GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=max(r.max_new for r in rows),
            pad_token_id=self.pad_token_id,
            use_cache=True,
        )
        with torch.inference_mode():
            out = self._lm.generate(
                input_ids=input_ids,
                attention_mask=attention,
                generation_config=cfg,
                logits_processor=LogitsProcessorList([_SeededSampler(b)]),
                stopping_criteria=StoppingCriteriaList([_RowStopper(b)]),
            )
        gen = out[:, P:].tolist()
        t_end = time.perf_counter()
        completions: list[Completion] = []
        for i, r in enumerate(rows):
            completions.extend(self._finalise(r, gen[i], b, t_end, self._submitted))
        return completions

    def _finalise(self, r: _Row, gen: list[int], b: _Batch, t_end: float, submitted: float) -> list[Completion]:
        p = r.params
        if not r.done:  # generate ended without our criteria firing (should not happen)
            r.n_gen, r.reason, r.stop_reason, r.t_finish = min(len(gen), r.max_new), "length", None, t_end
        ids = gen[: r.n_gen]
        reason, stop_reason = r.reason, r.stop_reason
        decode = lambda xs: self._tok.decode(xs, skip_special_tokens=True, clean_up_tokenization_spaces=False)  # noqa: E731
        text = decode(ids)
        if p.stop and any(s in text for s in p.stop):
            # The shortest prefix of tokens whose text holds a stop string, then cut before it.
            lo, hi = 1, len(ids)
            while lo < hi:
                mid = (lo + hi) // 2
                if any(s in decode(ids[:mid]) for s in p.stop):
                    hi = mid
                else:
                    lo = mid + 1
            ids = ids[:lo]
            text = decode(ids)
            hits = [(text.find(s), k, s) for k, s in enumerate(p.stop) if s in text]
            start, _, s = min(hits)
            text, reason, stop_reason = text[:start], "stop", s
        elif stop_reason == "<stop>":  # the window saw a stop the full text does not hold (decode edge case)
            reason, stop_reason = "stop", None
        logprobs = r.logprobs[: len(ids)] if p.logprobs is not None else None
        ttft = (b.t_first - submitted) if b.t_first is not None else None
        latency = (r.t_finish or t_end) - submitted
        return [
            Completion(
                request_id=r.req.request_id,
                doc_id=r.req.doc_id,
                sample_idx=idx,
                text=text,
                token_ids=list(ids),
                finish_reason=reason,
                stop_reason=stop_reason,
                prompt_tokens=len(r.prompt_ids),
                logprobs=list(logprobs) if logprobs is not None else None,
                ttft=ttft,
                latency=latency,
            )
            for idx, _ in r.samples
        ]


__all__ = ["HFBackend"]
