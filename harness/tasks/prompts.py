"""Prompts: a task spec and a doc → the exact text (and chat messages) sent to a model.

Templates are jinja2, rendered in harness.tasks.templating's sandbox (a missing field is an error).

Layout without a chat template (`prompt.chat_template: false`)::

    [system] SEP shot_1 SEP shot_2 … SEP shot_k SEP template(doc)

where SEP is `fewshot.separator` and a shot is `template(shot) + answer_delimiter + answer(shot)`
(`fewshot.answer` defaults to `prompt.target`).

With a chat template (`prompt.chat_template: true`) the messages are::

    [system]  user: template(shot_1)  assistant: answer(shot_1)  …  user: template(doc)

(`chat_fewshot: multiturn`, the default: each shot is a user/assistant exchange, as a chat model
sees a conversation), or with `chat_fewshot: inline` one user turn holding the non-chat layout
without the system prompt. The text is `tokenizer.apply_chat_template(messages, tokenize=False,
add_generation_prompt=True)`. Without a tokenizer (a chat-API backend) the messages are what
counts; the text is their contents joined by SEP, for logs, and the prompt hash covers the messages.

Few-shot shots drawn from a split are deterministic: per doc (`sampler: per_doc`) from a generator
seeded by (fewshot.seed, doc id), or one shared draw (`sampler: fixed`). A shot that is the doc
itself (same doc id when the few-shot split is the evaluated split, or identical fields) is never
used.

`sampler: lm_eval` reproduces lm-evaluation-harness 0.4's ContextSampler, so that a task claiming
its format sends byte-identical prompts: one `random.Random(fewshot.seed)` (lm-eval's
`--fewshot_random_seed`, default 1234) whose `sample(pool, k)` is called once per evaluated doc, in
split order, with k = num (num + 1 when the shots come from the evaluated split; the doc itself is
then dropped and the first num kept). `random.sample` reads only the pool's length, so drawing
indices replays lm-eval's draws exactly. The draw of the doc at position p is the p-th of that
stream: build() needs the doc's position in the split, and a doc's shots change if docs before it
are removed (lm-eval's behaviour, the reason this is not our default).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jinja2

from harness import HarnessError
from harness.tasks.errors import one_line
from harness.tasks.templating import compile_template, render

if TYPE_CHECKING:
    from harness.tasks import TaskSpec


@dataclass(frozen=True)
class BuiltPrompt:
    text: str
    messages: list[dict[str, str]] | None
    prompt_hash: str
    fewshot_ids: tuple[str, ...] = ()


class PromptBuilder:
    def __init__(self, spec: "TaskSpec", tokenizer: Any = None, fewshot_docs: list[dict] | None = None):
        self.spec = spec
        self.tokenizer = tokenizer
        p = spec.prompt
        self.fewshot = p.fewshot
        self._template = compile_template(p.template)
        self._target = compile_template(p.target)
        self._system = compile_template(p.system) if p.system is not None else None
        self._answer_key = "prompt.fewshot.answer" if self.fewshot.answer is not None else "prompt.target"
        self._answer = compile_template(self.fewshot.answer) if self.fewshot.answer is not None else self._target
        if p.chat_template and tokenizer is not None and not getattr(tokenizer, "chat_template", None):
            who = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise HarnessError(
                f"{spec.name}: prompt.chat_template is true but the tokenizer ({who}) has no chat template; "
                "use an instruct/chat model, or a task without chat_template"
            )
        self._pool: list[dict] = []
        self._same_split = spec.dataset.fewshot_split == spec.dataset.split
        self._fixed_order: list[int] | None = None
        self._stream: tuple[random.Random, list[list[int]]] | None = None  # the lm_eval sampler's
        if spec.needs_fewshot_split:
            if fewshot_docs is None:
                raise HarnessError(
                    f"{spec.name}: few-shot shots come from split {spec.dataset.fewshot_split!r}; "
                    "its docs are needed (fewshot_docs)"
                )
            self._pool = list(fewshot_docs)
            need = self.fewshot.num + (1 if self._same_split else 0)
            if len(self._pool) < need:
                raise HarnessError(
                    f"{spec.name}: prompt.fewshot.num is {self.fewshot.num} but split "
                    f"{spec.dataset.fewshot_split!r} has only {len(self._pool)} docs"
                )

    # ---------------------------------------------------------------- public
    def build(self, doc: dict, position: int | None = None) -> BuiltPrompt:
        """The prompt of `doc`; `position` (its index in the evaluated split) is needed by the
        lm_eval sampler only."""
        shots = self.shots_for(doc, position)
        p = self.spec.prompt
        sep = self.fewshot.separator
        system = self._render(self._system, "prompt.system", doc) if self._system is not None else None
        question = self._render(self._template, "prompt.template", doc)
        shot_pairs = [
            (self._render(self._template, "prompt.template", s), self._render(self._answer, self._answer_key, s))
            for s in shots
        ]
        ids = tuple(str(s.get("doc_id", f"exemplar-{i}")) for i, s in enumerate(shots))
        inline = sep.join([q + self.fewshot.answer_delimiter + a for q, a in shot_pairs] + [question])

        if not p.chat_template:
            text = sep.join([system, inline]) if system is not None else inline
            return BuiltPrompt(text=text, messages=None, prompt_hash=_sha(text), fewshot_ids=ids)

        messages: list[dict[str, str]] = []
        if system is not None:
            messages.append({"role": "system", "content": system})
        if p.chat_fewshot == "multiturn":
            for q, a in shot_pairs:
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            messages.append({"role": "user", "content": question})
        else:
            messages.append({"role": "user", "content": inline})
        if self.tokenizer is None:
            text = sep.join(m["content"] for m in messages)
            blob = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
            return BuiltPrompt(text=text, messages=messages, prompt_hash=_sha(blob), fewshot_ids=ids)
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      **p.chat_template_kwargs)
        except Exception as e:  # jinja errors inside the model's template ("system role not supported", …)
            raise HarnessError(one_line(f"{self.spec.name}: the tokenizer's chat template failed: {type(e).__name__}: {e}")) from None
        if not isinstance(text, str):
            raise HarnessError(f"{self.spec.name}: apply_chat_template returned {type(text).__name__}, expected text")
        return BuiltPrompt(text=text, messages=messages, prompt_hash=_sha(text), fewshot_ids=ids)

    def render_target(self, doc: dict) -> str:
        return self._render(self._target, "prompt.target", doc)

    def shots_for(self, doc: dict, position: int | None = None) -> list[dict]:
        fs = self.fewshot
        if fs.num == 0:
            return []
        if fs.source == "exemplars":
            return [dict(e) for e in fs.exemplars[: fs.num]]
        if fs.sampler == "lm_eval":
            if position is None:
                raise HarnessError(f"{self.spec.name}: prompt.fewshot.sampler lm_eval needs the doc's position in the split")
            drawn = [self._pool[i] for i in self._lm_eval_draw(position)]
            return [s for s in drawn if not self._is_self(s, doc)][: fs.num]
        if fs.sampler == "fixed":
            if self._fixed_order is None:
                self._fixed_order = self._order(_rng(fs.seed, "\0fixed"))
            order = self._fixed_order
        else:
            order = self._order(_rng(fs.seed, str(doc.get("doc_id", ""))))
        picked: list[dict] = []
        for i in order:
            if not self._is_self(self._pool[i], doc):
                picked.append(self._pool[i])
                if len(picked) == fs.num:
                    return picked
        for i in range(len(self._pool)):  # only when the doc is duplicated many times in the pool
            if i not in order and not self._is_self(self._pool[i], doc):
                picked.append(self._pool[i])
                if len(picked) == fs.num:
                    return picked
        raise HarnessError(f"{self.spec.name}: not enough few-shot docs distinct from doc {doc.get('doc_id')}")

    # ---------------------------------------------------------------- internals
    def _lm_eval_draw(self, position: int) -> list[int]:
        """Pool indices of lm-eval's draw for the doc at `position`: the stream replayed up to it."""
        if self._stream is None:
            self._stream = (random.Random(self.fewshot.seed), [])
        rng, draws = self._stream
        k = self.fewshot.num + (1 if self._same_split else 0)
        while len(draws) <= position:
            draws.append(rng.sample(range(len(self._pool)), k))
        return draws[position]

    def _order(self, rng: random.Random) -> list[int]:
        n = len(self._pool)
        return rng.sample(range(n), min(n, self.fewshot.num + 8))

    def _is_self(self, cand: dict, doc: dict) -> bool:
        if self._same_split and "doc_id" in doc and str(cand.get("doc_id")) == str(doc["doc_id"]):
            return True
        return {k: v for k, v in cand.items() if k != "doc_id"} == {k: v for k, v in doc.items() if k != "doc_id"}

    def _render(self, tpl: jinja2.Template, key: str, doc: dict) -> str:
        return render(tpl, f"{self.spec.name}: {key}", doc)


def _rng(seed: int, key: str) -> random.Random:
    h = hashlib.sha256(f"harness-fewshot\0{seed}\0{key}".encode("utf-8")).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()
