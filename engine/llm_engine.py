"""The step loop: schedule, run the model, sample, detokenise, stop, report."""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from engine import sampler
from engine.block_manager import BlockManager, cdiv
from engine.config import EngineConfig
from engine.model_runner import ModelRunner
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.tokenizer import encode_prompt, eos_token_ids
from engine.sequence import RequestOutput, Sequence, SequenceGroup


@dataclass(slots=True)
class EngineStats:
    num_blocks: int
    block_size: int
    blocks_in_use: int
    peak_blocks_in_use: int
    steps: int
    requests_added: int
    requests_rejected: int
    requests_aborted: int
    prompt_tokens: int  # submitted (admitted requests)
    prompt_tokens_computed: int  # prompt positions whose K/V were computed (recompute included)
    prompt_tokens_cached: int  # served by the prefix cache at first admission
    tokens_computed: int  # all positions run through the model
    generated_tokens: int
    num_preemptions: int
    prefix_cache_hit_rate: float
    elapsed_s: float  # from the first step to the last
    forward_s: float
    sample_s: float

    @property
    def generated_tokens_per_s(self) -> float:
        return self.generated_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "generated_tokens_per_s": self.generated_tokens_per_s}


class LLMEngine:
    def __init__(self, config: EngineConfig, tokenizer=None):
        from transformers import AutoConfig, AutoTokenizer

        hf_config = AutoConfig.from_pretrained(config.model, trust_remote_code=config.trust_remote_code)
        self.config = config.resolve(hf_config)
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(config.model, trust_remote_code=config.trust_remote_code)
        self.runner = ModelRunner(self.config, hf_config)
        self.block_manager = BlockManager(
            self.runner.num_blocks, self.config.block_size, self.config.enable_prefix_caching
        )
        self.scheduler = Scheduler(self.config, self.block_manager)
        model = self.runner.model
        self.eos_token_ids = set(eos_token_ids([getattr(model, "generation_config", None), model.config], self.tokenizer))
        self._ids = itertools.count()
        self._next_seq_id = 0
        self._pending: list[RequestOutput] = []  # rejected/aborted requests, reported at the next step
        self._counters = dict(steps=0, requests_added=0, requests_rejected=0, requests_aborted=0, prompt_tokens=0,
                              generated_tokens=0, forward_s=0.0, sample_s=0.0)
        self._first_step: float | None = None
        self._last_step: float | None = None
        self._asleep = 0  # sleep level, 0 when awake
        self._weights_version = 0

    # --- requests ---------------------------------------------------------------------------
    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        stream: bool = False,
        arrival_time: float | None = None,
    ) -> str:
        """Queue a request. One that can never run becomes an error result (reported by the next
        `step`); it never raises for a too-long prompt."""
        if self._asleep:
            raise RuntimeError("the engine is asleep: call wake_up() before adding requests")
        params = params or SamplingParams()
        request_id = str(next(self._ids)) if request_id is None else request_id
        if isinstance(prompt, str):
            text, token_ids = prompt, encode_prompt(self.tokenizer, prompt)
        else:
            text, token_ids = None, [int(t) for t in prompt]
        if params.seeds is not None:
            seeds = params.seeds
        elif params.seed is not None:
            seeds = [sampler.derive_seed(params.seed, i) for i in range(params.n)]
        else:
            seeds = [sampler.derive_seed(self.config.seed, request_id, i) for i in range(params.n)]
        group = SequenceGroup(request_id, text, token_ids, params, seeds, self._next_seq_id, arrival_time, stream)
        if params.thinking_budget is not None:
            group.forced_ids = list(self.tokenizer.encode(params.thinking_forced_text, add_special_tokens=False))
            if params.thinking_budget == 0:  # no thoughts at all: the first tokens are the close
                for seq in group.seqs:
                    seq.forced_at, seq.forced = 0, list(group.forced_ids)
        self._next_seq_id += params.n
        self._counters["requests_added"] += 1
        error = self.check_fits(len(token_ids), params)
        if error:
            group.error = error
            for seq in group.seqs:
                seq.finish_reason = "error"
            group.metrics.finish_time = time.monotonic()
            self._counters["requests_rejected"] += 1
            self._pending.append(RequestOutput.from_group(group, [s.index for s in group.seqs]))
        else:
            self._counters["prompt_tokens"] += len(token_ids)
            self.scheduler.add(group)
        return request_id

    def check_fits(self, prompt_len: int, params: SamplingParams) -> str | None:
        """Why a request with this prompt length and these params can never run, or None."""
        cfg, bs = self.config, self.config.block_size
        if prompt_len == 0:
            return "empty prompt"
        if prompt_len + params.max_tokens > cfg.max_model_len:
            return (f"prompt ({prompt_len} tokens) + max_tokens ({params.max_tokens}) exceeds "
                    f"max_model_len ({cfg.max_model_len})")
        # most blocks the request can hold: shared full prompt blocks + each sample's own tail
        last = prompt_len + params.max_tokens - 1  # the last sampled token's K/V is never computed
        shared = prompt_len // bs if params.n > 1 else 0
        footprint = shared + params.n * (cdiv(last, bs) - shared)
        if footprint > self.block_manager.num_blocks:
            return (f"request needs up to {footprint} KV blocks (n={params.n}, {prompt_len} prompt + "
                    f"{params.max_tokens} new tokens) but the cache has {self.block_manager.num_blocks}")
        return None

    def abort_request(self, request_id: str) -> None:
        group = self.scheduler.abort(request_id)
        if group is not None:
            self._counters["requests_aborted"] += 1
            self._pending.append(RequestOutput.from_group(group, [s.index for s in group.seqs if s.finish_reason == "abort"]))

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self._pending)

    # --- weights and memory between rollout phases (RL) ---------------------------------------
    def load_weights(self, weights) -> int:
        """Update the model in place from (HF parameter name, tensor) pairs, then forget the
        prefix cache: a block computed by the old weights must never serve a new request.
        Between requests only (their K/V would mix two models)."""
        self._require_idle("load_weights")
        count = self.runner.load_weights(weights)
        assert self.block_manager.reset_prefix_cache()
        self._weights_version += 1
        return count

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix block; False (nothing done) while requests hold blocks."""
        return self.block_manager.reset_prefix_cache()

    def sleep(self, level: int = 1) -> None:
        """Release the KV pool (level 1) and the weights too (level 2; wake_up reloads them from
        the checkpoint, so call load_weights after it to restore trained ones), between phases."""
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level}")
        self._require_idle("sleep")
        if self._asleep:
            return
        assert self.block_manager.reset_prefix_cache()
        self.runner.release_kv()
        if level == 2:
            self.runner.release_weights()
        self._asleep = level

    def wake_up(self) -> None:
        if not self._asleep:
            return
        if self._asleep == 2:
            self.runner.reload_weights()
        self.runner.allocate_kv()
        self._asleep = 0

    @property
    def is_sleeping(self) -> bool:
        return bool(self._asleep)

    def _require_idle(self, what: str) -> None:
        if self.has_unfinished_requests():
            raise RuntimeError(f"{what}: {self.scheduler.num_running_seqs()} sequences are still running; "
                               "finish or abort every request first")

    # --- the step ---------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One scheduling step. Returns an output for each request that finished a sample this
        step (or, for streaming requests, that made progress), plus rejected/aborted ones."""
        outputs, self._pending = self._pending, []
        batch = self.scheduler.schedule()
        if batch.is_empty:
            assert not self.scheduler.running or outputs, "scheduler stalled with running requests"
            return outputs
        now = time.monotonic()
        self._first_step = self._first_step or now
        logits = self.runner.execute(batch)
        t_forward = time.monotonic()

        rows, targets, first = [], [], 0
        for seq, span, seqs in zip(batch.seqs, batch.logits_spans(), batch.sample_targets):
            if seq.group.wants_prompt_logits and seq.num_computed_tokens < seq.num_prompt_tokens - 1:
                self._record_prompt_logprobs(seq, logits[first : first + span])
            if seqs:
                rows += [first + span - 1] * len(seqs)
                targets += seqs
            first += span
        tokens, logprob_info = self._sample(logits, rows, targets)
        self._counters["sample_s"] += time.monotonic() - t_forward
        self._counters["forward_s"] += t_forward - now
        self.scheduler.commit(batch)

        touched: dict[str, tuple[SequenceGroup, list[int]]] = {}
        for i, (seq, token) in enumerate(zip(targets, tokens)):
            finished = self._append_token(seq, token, [x[i] for x in logprob_info] if logprob_info else None)
            entry = touched.setdefault(seq.group.request_id, (seq.group, []))
            if finished:
                entry[1].append(seq.index)
        for group, newly_finished in touched.values():
            if newly_finished or group.stream:
                outputs.append(RequestOutput.from_group(group, newly_finished))
        self._counters["steps"] += 1
        self._last_step = time.monotonic()
        return outputs

    @torch.inference_mode()
    def _sample(self, logits: torch.Tensor, rows: list[int], targets: list[Sequence]):
        if not targets:
            return [], None
        if len(rows) != logits.shape[0] or rows[-1] != len(rows) - 1:  # a fork's prompt row, once per sample
            logits = logits[torch.tensor(rows, device=logits.device)]
        ps = [s.group.params for s in targets]
        dev = logits.device
        temperature = torch.tensor([p.temperature for p in ps], dtype=torch.float32, device=dev)
        top_k = torch.tensor([p.top_k for p in ps], dtype=torch.long, device=dev)
        top_p = torch.tensor([p.top_p for p in ps], dtype=torch.float32, device=dev)
        min_p = torch.tensor([p.min_p for p in ps], dtype=torch.float32, device=dev)
        u = sampler.uniforms([s.seed for s in targets], [s.num_output_tokens for s in targets])
        tokens = sampler.sample(logits, temperature, top_k, top_p, min_p, u)
        for i, s in enumerate(targets):  # budget forcing: the close-think tokens replace the draws
            if s.forced:
                tokens[i] = s.forced[0]
        info = None
        want = [p.logprobs for p in ps if p.logprobs is not None]
        if want:
            chosen, top_vals, top_ids = sampler.logprobs(logits, tokens, max(want))
            processed = [i for i, p in enumerate(ps) if p.logprobs is not None and p.logprobs_mode == "processed"]
            if processed:
                r = torch.tensor(processed, device=dev)
                c2, v2, i2 = sampler.processed_logprobs(logits[r], temperature[r], top_k[r], top_p[r], min_p[r],
                                                        tokens[r], max(want))
                chosen[r] = c2
                if top_vals is not None:
                    top_vals[r], top_ids[r] = v2, i2
            info = [chosen.tolist()]
            if top_vals is not None:
                info += [top_vals.tolist(), top_ids.tolist()]
        return tokens.tolist(), info

    @torch.inference_mode()
    def _record_prompt_logprobs(self, seq: Sequence, logits: torch.Tensor) -> None:
        """Logprobs of the prompt tokens that this chunk's rows predict (row i: position start+i
        predicts token start+i+1), before the scheduler advances the sequence."""
        group, start = seq.group, seq.num_computed_tokens
        end = min(start + logits.shape[0], seq.num_prompt_tokens - 1)  # the last row predicts an output token
        if end <= start:
            return
        nxt = torch.tensor(group.prompt_token_ids[start + 1 : end + 1], device=logits.device)
        chosen, top_vals, top_ids = sampler.logprobs(logits[: end - start], nxt, group.params.prompt_logprobs or 0)
        group.prompt_logprobs[start + 1 : end + 1] = chosen.tolist()
        if top_vals is not None:
            group.prompt_top_logprobs[start + 1 : end + 1] = [dict(zip(i, v)) for i, v in zip(top_ids.tolist(), top_vals.tolist())]

    def _append_token(self, seq: Sequence, token: int, logprob: list | None) -> bool:
        """Add a sampled token, detokenise, apply stop rules. True if seq finished."""
        group, params = seq.group, seq.group.params
        if seq.forced:
            assert seq.forced[0] == token, "a forced token was not the one appended"
            seq.forced.pop(0)
        seq.append(token)
        if seq.logprobs is not None:
            seq.logprobs.append(logprob[0])
            if seq.top_logprobs is not None:
                k = params.logprobs
                seq.top_logprobs.append(dict(zip(logprob[2][:k], logprob[1][:k])))
        metrics = group.metrics
        metrics.num_generated_tokens += 1
        self._counters["generated_tokens"] += 1
        if metrics.first_token_time is None:
            metrics.first_token_time = time.monotonic()
        old_len = len(seq.text)
        seq.text += self._detokenize(seq)
        if seq.thinking:
            self._track_thinking(seq, old_len)
        reason, stop_reason = None, None
        if seq.forced_at is not None and (seq.forced or seq.num_output_tokens == seq.forced_at + len(group.forced_ids)):
            pass  # a forced token never ends the sample by EOS or a stop string (max_tokens still applies)
        elif not params.ignore_eos and token in self.eos_token_ids:
            reason, stop_reason = "stop", token
        elif token in params.stop_token_ids:
            reason, stop_reason = "stop", token
        elif params.stop and len(seq.text) > old_len:
            hit = _find_stop(seq.text, old_len, params.stop)
            if hit is not None:
                at, stop = hit
                seq.text = seq.text[: at + (len(stop) if params.include_stop_str_in_output else 0)]
                reason, stop_reason = "stop", stop
        if reason is None and seq.num_output_tokens >= params.max_tokens:
            reason = "length"
        if reason is None:
            return False
        if stop_reason is None or not isinstance(stop_reason, str):
            seq.text += self._detokenize(seq, flush=True)
        self.scheduler.finish(seq, reason, stop_reason)
        return True

    def _track_thinking(self, seq: Sequence, old_len: int) -> None:
        """Budget forcing: the thoughts end when thinking_end appears in the text; once the budget
        is spent without it, queue the forced close-think tokens (fed by _sample from the next step)."""
        params = seq.group.params
        end = params.thinking_end
        if seq.text.find(end, max(0, old_len - len(end) + 1)) != -1:
            seq.thinking = False
        elif seq.forced_at is None and seq.num_output_tokens >= params.thinking_budget:
            seq.forced_at = seq.num_output_tokens
            seq.forced = list(seq.group.forced_ids)

    def _detokenize(self, seq: Sequence, flush: bool = False) -> str:
        """Text added by the tokens after read_offset, decoding only a short window; holds back
        an incomplete UTF-8 character unless flushing at the end."""
        if seq.read_offset >= seq.num_tokens:
            return ""
        skip = seq.group.params.skip_special_tokens
        decode = self.tokenizer.decode
        before = decode(seq.token_ids[seq.prefix_offset : seq.read_offset], skip_special_tokens=skip)
        after = decode(seq.token_ids[seq.prefix_offset :], skip_special_tokens=skip)
        if len(after) <= len(before) or (after.endswith("\ufffd") and not flush):
            return ""
        seq.prefix_offset, seq.read_offset = seq.read_offset, seq.num_tokens
        return after[len(before) :]

    # --- stats ------------------------------------------------------------------------------
    @property
    def stats(self) -> EngineStats:
        c, bm = self._counters, self.block_manager
        elapsed = (self._last_step - self._first_step) if self._first_step and self._last_step else 0.0
        return EngineStats(
            num_blocks=bm.num_blocks, block_size=bm.block_size, blocks_in_use=bm.num_used_blocks,
            peak_blocks_in_use=bm.peak_used_blocks, steps=c["steps"], requests_added=c["requests_added"],
            requests_rejected=c["requests_rejected"], requests_aborted=c["requests_aborted"], prompt_tokens=c["prompt_tokens"],
            prompt_tokens_computed=self.scheduler.prompt_tokens_computed,
            prompt_tokens_cached=self.scheduler.prompt_tokens_cached, tokens_computed=self.scheduler.tokens_computed,
            generated_tokens=c["generated_tokens"], num_preemptions=self.scheduler.num_preemptions,
            prefix_cache_hit_rate=bm.prefix_cache_hit_rate, elapsed_s=elapsed, forward_s=c["forward_s"],
            sample_s=c["sample_s"],
        )


def _find_stop(text: str, old_len: int, stops: list[str]) -> tuple[int, str] | None:
    """Earliest stop string that ends in the newly added text."""
    best = None
    for stop in stops:
        at = text.find(stop, max(0, old_len - len(stop) + 1))
        if at != -1 and (best is None or at < best[0]):
            best = (at, stop)
    return best
