"""Task spec schema: pydantic models of a task file, and TaskSpec (resolved, hashable, overridable).

The models are the schema, written once: each field's type, default, constraints and doc. A task
file (after its includes are merged, harness.tasks.loader) validates as a TaskSpec; unknown keys
are errors, types are strict (true is not a number, "5" is not an integer), and `null` anywhere
means "use the default". Rules across fields are model validators; `Wording` (harness.tasks.errors)
tells the one-line error messages what a field expects where its type alone would be vague.
`sampling:` is harness.backends.base.SamplingParams itself, whose annotations carry its constraints,
except that a task's default seed is DEFAULT_SEED.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, StrictBool, StrictFloat,
                      StrictInt, StrictStr, ValidationError, model_validator, with_config)
from typing_extensions import TypedDict

from harness import HarnessError
from harness.backends.base import SamplingParams
from harness.scoring.metrics import default_ks
from harness.tasks.errors import Invalid, KeyPath, Wording, describe, forget, parse_path, show, suggest
from harness.tasks.templating import check_template

DEFAULT_SEED = 1234
# Bounds against hostile or mistaken specs (sampling's own are on SamplingParams): one-line errors
# naming the key, never a run sized by an absurd value. Far above any real task's needs.
MAX_FEWSHOT = 128
MAX_FILTERS = 32
MAX_STEPS = 32
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_CONFIG = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


# --------------------------------------------------------------------------------------------
# Field types


def _compiles(src: str) -> str:
    err = check_template(src)
    if err:
        raise ValueError(err)
    return src


def _one_line_text(s: str) -> str:
    s = s.strip()
    if "\n" in s:
        raise ValueError("must be one line")
    return s


def _known_comparator(name: str) -> str:
    from harness import grading

    known = list(grading.COMPARATORS)
    if name not in known:
        raise ValueError(f"unknown comparator {name!r} (choose from {', '.join(known)}){suggest(name, known)}")
    return name


NonEmptyStr = Annotated[StrictStr, Field(min_length=1)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
PositiveInt = Annotated[StrictInt, Field(ge=1)]
Template = Annotated[NonEmptyStr, AfterValidator(_compiles)]  # jinja2 (harness.tasks.templating), compiled on load
FewshotSource = Literal["exemplars", "split"]
FewshotSampler = Literal["per_doc", "fixed", "lm_eval"]
ChatFewshot = Literal["multiturn", "inline"]


class _Model(BaseModel):
    model_config = _CONFIG

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


# --------------------------------------------------------------------------------------------
# The schema


class HubSpec(_Model):
    """Where datasets.load_dataset finds the data on the hub."""

    path: NonEmptyStr
    name: NonEmptyStr | None = None
    """The dataset's configuration ("main")."""
    revision: NonEmptyStr | None = None


class GeneratorSpec(_Model):
    """Docs made by a seeded generator instead of read from data (harness.tasks.generated): the
    generator's dataset is `dataset.name`, e.g. reasoning_gym.create_dataset("chain_sum", size=, seed=)."""

    source: Literal["reasoning_gym"]
    """The generator library (pip install reasoning-gym); tasks then use the reasoning_gym comparator."""
    size: Annotated[StrictInt, Field(ge=1, le=10_000)]
    """How many docs (`--limit N` takes the first N)."""
    seed: NonNegativeInt
    """The same (name, size, seed, config) gives the same docs."""
    config: Annotated[dict[StrictStr, Any], Wording("a mapping of generator options")] = {}
    """Options of the generator's config class (e.g. min_terms: 3), passed as keyword arguments."""


class ChoicesSpec(_Model):
    """Option fields of a multiple-choice doc; each doc gets `choices` (the option texts in a
    seeded order), `choice_letters` (A, B, …) and `answer_letter` (where `correct` landed)."""

    fields: Annotated[tuple[NonEmptyStr, ...], Field(min_length=2, max_length=26),
                      Wording("a list of 2 to 26 doc field names")]
    correct: NonEmptyStr
    """The field holding the right option; one of `fields`."""

    @model_validator(mode="after")
    def _correct_is_a_field(self) -> ChoicesSpec:
        if len(set(self.fields)) != len(self.fields):
            raise Invalid(("fields",), "names a field twice")
        if self.correct not in self.fields:
            raise Invalid(("correct",), f"{self.correct!r} is not one of fields ({', '.join(self.fields)})")
        return self


class DatasetSpec(_Model):
    name: NonEmptyStr
    """The data folder name and the key of the packaged-data table (harness.tasks.data)."""
    split: NonEmptyStr = "test"
    """The split that is evaluated."""
    fewshot_split: NonEmptyStr | None = None
    """Where few-shot shots come from; required when prompt.fewshot.source is split."""
    hub: HubSpec | None = None
    generator: GeneratorSpec | None = None
    """Generated docs (reasoning-gym): the only source of the dataset, no files or hub."""
    files: Annotated[dict[StrictStr, Annotated[NonEmptyStr, Wording("a file path")]],
                     Wording("a mapping of split → file path")] = {}
    """Explicit data files, split → path relative to the file that declares it (absolute once loaded)."""
    id_field: NonEmptyStr | None = None
    """The doc id field; default: the data's `doc_id`/`id` when present and unique, else the row index."""
    choices: ChoicesSpec | None = None
    """Multiple choice: options shuffled per doc from the run seed (harness.tasks.choices)."""


Exemplar = Annotated[dict[StrictStr, Any], Field(min_length=1), Wording("a mapping of doc fields")]


class FewshotSpec(_Model):
    num: Annotated[StrictInt, Field(ge=0, le=MAX_FEWSHOT)] = 0
    """How many solved shots precede the question."""
    source: FewshotSource = "exemplars"
    """Where shots come from; default: split when num > 0 and there are no exemplars."""
    sampler: FewshotSampler = "per_doc"
    """per_doc: each doc draws its own shots (seeded by seed and doc id; independent of order and
    batching, our default); fixed: one seeded draw shared by all docs (a shared prefix the engine's
    prefix cache reuses); lm_eval: lm-evaluation-harness 0.4's draw, for tasks that claim its
    format: one random.Random(seed) whose sample(pool, num) is called once per evaluated doc in
    split order, so a doc's shots depend on its position in the split (harness.tasks.prompts)."""
    seed: NonNegativeInt = DEFAULT_SEED
    exemplars: Annotated[tuple[Exemplar, ...], Wording("a list of mappings")] = ()
    """Fixed shots, with fields like a doc's."""
    answer: Template | None = None
    """Renders a shot's answer; default: prompt.target."""
    answer_delimiter: StrictStr = " "
    """Between a shot's rendered template and its answer."""
    separator: StrictStr = "\n\n"
    """Between shots, and before the question."""

    @model_validator(mode="before")
    @classmethod
    def _default_source(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("source") is None:
            num = data.get("num")
            shots = isinstance(num, int) and num > 0 and not data.get("exemplars")
            data = {**data, "source": "split" if shots else "exemplars"}
        return data

    @model_validator(mode="after")
    def _enough_exemplars(self) -> FewshotSpec:
        if self.source == "exemplars" and self.num > len(self.exemplars):
            raise Invalid(("num",), f"asks for {self.num} shots but exemplars has {len(self.exemplars)}")
        return self


class PromptSpec(_Model):
    system: Template | None = None
    """The system prompt."""
    template: Template
    """doc → the prompt (the question)."""
    target: Template
    """doc → the gold answer string."""
    fewshot: FewshotSpec = FewshotSpec()
    chat_template: StrictBool = False
    """Render the messages with the tokenizer's chat template (harness.tasks.prompts)."""
    chat_fewshot: ChatFewshot = "multiturn"
    """With a chat template: each shot a user/assistant exchange, or all in one user turn."""
    chat_template_kwargs: Annotated[dict[StrictStr, StrictBool | StrictInt | StrictFloat | StrictStr],
                                    Wording("a mapping of names to scalars")] = {}
    """Extra variables for the chat template (e.g. enable_thinking: false), also sent by the openai
    backend as the request's chat_template_kwargs."""


class ThinkingSpec(_Model):
    """Models that think in <think>…</think> before answering (harness.grading.grader)."""

    strip: StrictBool = True
    """Extract the answer from the text after the closing tag only (never from the thoughts)."""
    unclosed: Literal["truncated", "invalid"] = "truncated"
    """A chain that never closes its think block: truncated (outcome no_answer_in_budget, reported
    as its own rate) or invalid (an ordinary invalid sample); either way it casts no vote."""
    open: NonEmptyStr = "<think>"
    close: NonEmptyStr = "</think>"
    budget: NonNegativeInt | None = None
    """Budget forcing: after this many thought tokens the engine inserts `forced_text` and lets the
    model answer (engine backend only)."""
    forced_text: NonEmptyStr = "\n</think>\n\n"
    """What budget forcing inserts; must contain `close`."""

    @model_validator(mode="after")
    def _forced_text_closes(self) -> ThinkingSpec:
        if self.close not in self.forced_text:
            raise Invalid(("forced_text",), f"must contain the closing tag {self.close!r}")
        return self


@with_config(ConfigDict(extra="allow", use_attribute_docstrings=True))
class StepSpec(TypedDict):
    """One step of a filter; its other keys are the step's parameters (harness.grading)."""

    function: StrictStr
    """The step's name in harness.grading.FILTERS."""


@with_config(ConfigDict(extra="forbid", use_attribute_docstrings=True))
class FilterSpec(TypedDict):
    """An answer extractor: completion text → answer string. Kept as a plain dict in TaskSpec."""

    name: Annotated[StrictStr, Field(pattern=_NAME_PATTERN),
                    Wording(invalid="filter name (letters, digits, '.', '_', '-')")]
    steps: Annotated[list[Annotated[StepSpec, Wording("a mapping with a 'function' key")]],
                     Field(min_length=1, max_length=MAX_STEPS), Wording("a non-empty list of steps")]


class ScoringSpec(_Model):
    comparator: Annotated[StrictStr, AfterValidator(_known_comparator)] = "numeric"
    """How an extracted answer is compared with the target (harness.grading.COMPARATORS)."""
    primary_filter: NonEmptyStr | None = None
    """The filter of the headline metric; default: the first filter."""


class MetricsSpec(_Model):
    ks: Annotated[tuple[PositiveInt, ...], Field(min_length=1), Wording("a non-empty list of positive integers")] | None = None
    """The ks of pass@k / maj@k, each <= sampling.n; default: the powers of two up to sampling.n."""


def _sampling_input(v: Any) -> Any:
    """A task's `sampling:` mapping as SamplingParams takes it: nulls dropped, the task default
    seed, and a single stop string as a list of one."""
    if not isinstance(v, dict):
        return v
    v = {k: x for k, x in v.items() if x is not None}
    v.setdefault("seed", DEFAULT_SEED)
    stop = v.get("stop")
    if isinstance(stop, str):
        v["stop"] = [stop]
    elif stop is not None and not isinstance(stop, (list, tuple)):
        raise Invalid(("stop",), f"expected a string or a list of strings, got {show(stop)}")
    return v


def _unique_stops(s: SamplingParams) -> SamplingParams:
    return s.replace(stop=tuple(dict.fromkeys(s.stop)))


def _check_filters(filters: list[dict]) -> list[dict]:
    """Names unique, and the steps valid for harness.grading (which names the filter and step)."""
    from harness import grading

    seen: dict[str, int] = {}
    for i, f in enumerate(filters):
        if f["name"] in seen:
            raise Invalid((i, "name"), f"duplicate filter name {f['name']!r} (also filters[{seen[f['name']]}])")
        seen[f["name"]] = i
    try:
        grading.build_filters(copy.deepcopy(filters))
    except HarnessError as e:
        where, sep, problem = str(e).partition(": ")
        if not sep or not where.startswith("filters"):
            raise Invalid((), str(e)) from None
        raise Invalid(parse_path(where)[1:], problem) from None
    return filters


# --------------------------------------------------------------------------------------------
# TaskSpec


class TaskSpec(_Model):
    """A task: a task file with its includes merged, validated, defaults filled in."""

    name: Annotated[StrictStr, Field(alias="task", pattern=_NAME_PATTERN),
                    Wording(invalid="task name (letters, digits, '.', '_', '-'; starting with a letter or digit)")]
    """Set in the task file itself, never inherited from an include."""
    description: Annotated[StrictStr, AfterValidator(_one_line_text)] = ""
    """One line."""
    dataset: DatasetSpec
    prompt: PromptSpec
    sampling: Annotated[SamplingParams, BeforeValidator(_sampling_input), AfterValidator(_unique_stops)] = (
        SamplingParams(seed=DEFAULT_SEED))
    filters: Annotated[list[FilterSpec], Field(min_length=1, max_length=MAX_FILTERS), AfterValidator(_check_filters),
                       Wording("a non-empty list of {name, steps} mappings")]
    """Answer extractors, names unique (plain dicts: harness.grading.build_filters takes them)."""
    scoring: ScoringSpec = ScoringSpec()
    metrics: MetricsSpec = MetricsSpec()
    thinking: ThinkingSpec = ThinkingSpec()

    _path: Path | None = PrivateAttr(None)
    _raw: dict = PrivateAttr(default_factory=dict)  # the merged task mapping, for with_overrides
    _origins: dict = PrivateAttr(default_factory=dict)  # key path → file label (harness.tasks.errors)

    __eq__ = object.__eq__  # a spec equals only itself and can be a dict key, compare spec_hash instead
    __hash__ = object.__hash__

    @model_validator(mode="after")
    def _fewshot_split_given(self) -> TaskSpec:
        if self.needs_fewshot_split and self.dataset.fewshot_split is None:
            raise Invalid(("dataset", "fewshot_split"), "missing: required when prompt.fewshot.source is 'split'")
        return self

    @model_validator(mode="after")
    def _primary_filter_exists(self) -> TaskSpec:
        names = [f["name"] for f in self.filters]
        p = self.scoring.primary_filter
        if p is not None and p not in names:
            raise Invalid(("scoring", "primary_filter"), f"no filter named {p!r}{suggest(p, names)}; filters: {', '.join(names)}")
        return self

    @model_validator(mode="after")
    def _ks_within_n(self) -> TaskSpec:
        for i, k in enumerate(self.metrics.ks or ()):
            if k > self.sampling.n:
                raise Invalid(("metrics", "ks", i), f"k = {k} exceeds sampling.n = {self.sampling.n}")
        return self

    # ---------------------------------------------------------------- resolved values
    @property
    def path(self) -> Path | None:
        """The task file (None for a spec built otherwise)."""
        return self._path

    @property
    def comparator(self) -> str:
        return self.scoring.comparator

    @property
    def primary_filter(self) -> str:
        return self.scoring.primary_filter or self.filters[0]["name"]

    @property
    def ks(self) -> tuple[int, ...]:
        if self.metrics.ks is None:
            return tuple(default_ks(self.sampling.n, include_n=False))
        return tuple(sorted(set(self.metrics.ks)))

    @property
    def needs_fewshot_split(self) -> bool:
        fs = self.prompt.fewshot
        return fs.num > 0 and fs.source == "split"

    @property
    def strip_think(self) -> bool:
        return self.thinking.strip

    # ---------------------------------------------------------------- forms
    def to_dict(self) -> dict[str, Any]:
        """The fully resolved spec (defaults filled in), plain JSON/YAML types only."""
        d = self.model_dump(mode="json", by_alias=True)
        d["scoring"]["primary_filter"] = self.primary_filter
        d["metrics"]["ks"] = list(self.ks)
        path = str(self._path) if self._path is not None else None
        return {"task": d.pop("task"), "description": d.pop("description"), "path": path, **d}

    def to_yaml(self) -> str:
        """spec.yaml for a run directory: loadable again with load_task (the path is a comment)."""
        d = self.to_dict()
        d.pop("path")
        head = f"# resolved task spec{f' from {self.path}' if self.path else ''}\n# spec_hash: {self.spec_hash}\n"
        return head + yaml.dump(d, Dumper=_SpecDumper, sort_keys=False, allow_unicode=True, width=100)

    @property
    def spec_hash(self) -> str:
        """sha256 of the canonical JSON of the resolved spec, without description and path; data
        files count by file name only, so a checkout's location does not change the hash."""
        d = self.to_dict()
        d.pop("description")
        d.pop("path")
        d["dataset"]["files"] = {k: Path(v).name for k, v in d["dataset"]["files"].items()}
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    # ---------------------------------------------------------------- overrides
    def with_overrides(self, **overrides: Any) -> TaskSpec:
        """A new spec with sampling values (n, temperature, top_p, top_k, min_p, max_tokens, stop,
        seed, logprobs, ignore_eos), `ks` or `num_fewshot` replaced; None values are ignored.
        Validated like the YAML. An explicit metrics.ks is clipped to the new n."""
        given = {k: v for k, v in overrides.items() if v is not None}
        paths = _override_paths()
        unknown = [k for k in given if k not in paths]
        if unknown:
            raise HarnessError(f"{self.name}: cannot override {unknown[0]!r}{suggest(unknown[0], paths)}; "
                               f"overridable: {', '.join(paths)}")
        if not given:
            return self
        raw, origins = copy.deepcopy(self._raw), dict(self._origins)
        label = f"overrides for {self.name}"
        for k, v in given.items():
            _set_key(raw, paths[k], copy.deepcopy(v))
            forget(origins, paths[k])
            origins[paths[k]] = label
        if "n" in given and "ks" not in given:
            _clip_ks(raw, given["n"])
        return build(raw, origins, self._path, default_origin=label)


def _override_paths() -> dict[str, KeyPath]:
    """with_overrides' keyword → the key it sets."""
    paths: dict[str, KeyPath] = {f.name: ("sampling", f.name) for f in dataclasses.fields(SamplingParams)}
    return {**paths, "ks": ("metrics", "ks"), "num_fewshot": ("prompt", "fewshot", "num")}


def _set_key(raw: dict, kp: KeyPath, value: Any) -> None:
    node = raw
    for part in kp[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[kp[-1]] = value


def _clip_ks(raw: dict, n: Any) -> None:
    """An explicit metrics.ks without the ks above a new n (without ks at all if none is left)."""
    ks = (raw.get("metrics") or {}).get("ks")
    if isinstance(ks, list) and isinstance(n, int):
        kept = [k for k in ks if isinstance(k, int) and k <= n]
        if kept:
            raw["metrics"]["ks"] = kept
        else:
            raw["metrics"].pop("ks")


def build(raw: dict, origins: dict, path: Path | None, default_origin: str) -> TaskSpec:
    """Validate a merged task mapping; a problem is a one-line HarnessError naming the file that
    set the key (`origins`: key path → file label, `default_origin` for keys no file set)."""
    try:
        spec = TaskSpec.model_validate(copy.deepcopy(raw))
    except ValidationError as e:
        raise HarnessError(describe(e, TaskSpec, origins, default_origin)) from None
    spec._path, spec._raw, spec._origins = path, copy.deepcopy(raw), dict(origins)
    return spec


class _SpecDumper(yaml.SafeDumper):
    """Multi-line strings (templates) as literal blocks, so spec.yaml reads like a task file."""


def _represent_str(dumper: yaml.SafeDumper, s: str) -> yaml.ScalarNode:
    if "\n" in s and s.strip() and not s[0].isspace():
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|")
    if "\n" in s:
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style='"')
    return dumper.represent_scalar("tag:yaml.org,2002:str", s)


_SpecDumper.add_representer(str, _represent_str)
