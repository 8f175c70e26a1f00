"""Task specs: a YAML file (plus the files it includes) → one validated, resolved, hashable TaskSpec.

Schema (every key optional unless marked required; `null` means "use the default")::

    task: str                      required, in the task file itself (never inherited);
                                   [A-Za-z0-9][A-Za-z0-9._-]*
    description: str               one line; default ""
    include: str | [str]           files merged under this one, paths relative to this file;
                                   included in order, then this file on top. Mappings merge
                                   deeply, everything else (lists included) is replaced.
    dataset:                       required
      name: str                    required; the data folder name and the package-table key
      split: str                   default "test"; the split that is evaluated
      fewshot_split: str | null    default null; required when few-shot shots come from a split
      hub: {path: str, name: str | null, revision: str | null} | null     for datasets.load_dataset
      files: {split: path}         default {}; explicit data files, relative to the declaring file
      id_field: str | null         default null: use the data's `doc_id`/`id` field when present
                                   and unique, else the row index
    prompt:                        required
      template: str                required; jinja2 (sandboxed, StrictUndefined): doc → prompt
      target: str                  required; jinja2: doc → the gold answer string
      system: str | null           default null; jinja2 system prompt
      fewshot:
        num: int >= 0              default 0
        source: exemplars | split  default: split when num > 0 and no exemplars, else exemplars
        sampler: per_doc | fixed   default per_doc: each doc draws its own shots (seeded by
                                   seed and doc id); fixed: one seeded draw shared by all docs
                                   (a shared prefix the engine's prefix cache reuses)
        seed: int                  default 1234
        exemplars: [mapping]       default []; fixed shots, fields like a doc's
        answer: str | null         jinja2 rendering a shot's answer; default: prompt.target
        answer_delimiter: str      default " "; between a shot's rendered template and answer
        separator: str             default "\\n\\n"; between shots, and before the question
      chat_template: bool          default false; true: render with the tokenizer's chat template
      chat_fewshot: multiturn | inline   default multiturn (see harness.prompts)
      strip_think: bool            default true; graders strip <think>…</think> before extraction
    sampling:                      harness.backends.base.SamplingParams
      n: int >= 1 (1)  temperature: float >= 0 (0.0)  top_p: float in (0, 1] (1.0)
      top_k: int >= 0 (0)  min_p: float in [0, 1] (0.0)  max_tokens: int >= 1 (512)
      stop: str | [str] ([])  seed: int >= 0 (1234)  logprobs: int >= 0 | null (null)
      ignore_eos: bool (false)
    filters:                       required, non-empty; names unique
      - name: str
        steps: [{function: str, ...}]     step details are validated by harness.graders
    scoring:
      comparator: numeric | math | exact    default numeric
      primary_filter: str | null   default: the first filter; the headline metric
    metrics:
      ks: [int]                    default: powers of two up to sampling.n; each <= n

Errors are one line: `<file>: <key path>: <problem>`, naming the file that set the key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, NoReturn, Sequence

import yaml

from harness import PROJECT_ROOT, HarnessError
from harness.backends.base import SamplingParams
from harness.scoring.metrics import default_ks

FEWSHOT_SOURCES = ("exemplars", "split")
FEWSHOT_SAMPLERS = ("per_doc", "fixed")
CHAT_FEWSHOT = ("multiturn", "inline")
DEFAULT_SEED = 1234
TASKS_ENV = "HARNESS_TASKS_DIR"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_YAML_SUFFIXES = (".yaml", ".yml")

_TOP_KEYS = ("task", "description", "dataset", "prompt", "sampling", "filters", "scoring", "metrics")
_DATASET_KEYS = ("name", "split", "fewshot_split", "hub", "files", "id_field")
_HUB_KEYS = ("path", "name", "revision")
_PROMPT_KEYS = ("system", "template", "target", "fewshot", "chat_template", "chat_fewshot", "strip_think")
_FEWSHOT_KEYS = ("num", "source", "sampler", "seed", "exemplars", "answer", "answer_delimiter", "separator")
_SAMPLING_KEYS = ("n", "temperature", "top_p", "top_k", "min_p", "max_tokens", "stop", "seed", "logprobs", "ignore_eos")
_FILTER_KEYS = ("name", "steps")
_SCORING_KEYS = ("comparator", "primary_filter")
_METRICS_KEYS = ("ks",)
_OVERRIDABLE = _SAMPLING_KEYS + ("ks", "num_fewshot")

KeyPath = tuple  # of str | int


# --------------------------------------------------------------------------------------------
# The resolved spec


@dataclass(frozen=True)
class HubSpec:
    path: str
    name: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    split: str = "test"
    fewshot_split: str | None = None
    hub: HubSpec | None = None
    files: Mapping[str, str] = field(default_factory=dict)  # split → absolute path
    id_field: str | None = None


@dataclass(frozen=True)
class FewshotSpec:
    num: int = 0
    source: str = "exemplars"
    sampler: str = "per_doc"
    seed: int = DEFAULT_SEED
    exemplars: tuple[dict, ...] = ()
    answer: str | None = None  # None: prompt.target
    answer_delimiter: str = " "
    separator: str = "\n\n"


@dataclass(frozen=True)
class PromptSpec:
    template: str
    target: str
    system: str | None = None
    fewshot: FewshotSpec = field(default_factory=FewshotSpec)
    chat_template: bool = False
    chat_fewshot: str = "multiturn"
    strip_think: bool = True


@dataclass(frozen=True, eq=False)
class TaskSpec:
    name: str
    description: str
    path: Path | None
    dataset: DatasetSpec
    prompt: PromptSpec
    sampling: SamplingParams
    filters: list[dict]
    comparator: str
    primary_filter: str
    ks: tuple[int, ...]
    _raw: dict = field(repr=False, default_factory=dict)
    _origins: dict = field(repr=False, default_factory=dict)

    @property
    def needs_fewshot_split(self) -> bool:
        fs = self.prompt.fewshot
        return fs.num > 0 and fs.source == "split"

    @property
    def strip_think(self) -> bool:
        return self.prompt.strip_think

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved spec (defaults filled in), plain JSON/YAML types only."""
        d, p, fs, s = self.dataset, self.prompt, self.prompt.fewshot, self.sampling
        return {
            "task": self.name,
            "description": self.description,
            "path": str(self.path) if self.path is not None else None,
            "dataset": {
                "name": d.name,
                "split": d.split,
                "fewshot_split": d.fewshot_split,
                "hub": dataclasses.asdict(d.hub) if d.hub is not None else None,
                "files": dict(d.files),
                "id_field": d.id_field,
            },
            "prompt": {
                "system": p.system,
                "template": p.template,
                "target": p.target,
                "fewshot": {
                    "num": fs.num,
                    "source": fs.source,
                    "sampler": fs.sampler,
                    "seed": fs.seed,
                    "exemplars": copy.deepcopy(list(fs.exemplars)),
                    "answer": fs.answer,
                    "answer_delimiter": fs.answer_delimiter,
                    "separator": fs.separator,
                },
                "chat_template": p.chat_template,
                "chat_fewshot": p.chat_fewshot,
                "strip_think": p.strip_think,
            },
            "sampling": {k: (list(getattr(s, k)) if k == "stop" else getattr(s, k)) for k in _SAMPLING_KEYS},
            "filters": copy.deepcopy(self.filters),
            "scoring": {"comparator": self.comparator, "primary_filter": self.primary_filter},
            "metrics": {"ks": list(self.ks)},
        }

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

    def with_overrides(self, **overrides: Any) -> "TaskSpec":
        """A new spec with sampling values (n, temperature, top_p, top_k, min_p, max_tokens, stop,
        seed, logprobs, ignore_eos), `ks` or `num_fewshot` replaced; None values are ignored.
        Validated like the YAML. An explicit metrics.ks is clipped to the new n."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = [k for k in given if k not in _OVERRIDABLE]
        if unknown:
            raise HarnessError(f"{self.name}: cannot override {unknown[0]!r}{_suggest(unknown[0], _OVERRIDABLE)}; "
                               f"overridable: {', '.join(_OVERRIDABLE)}")
        if not given:
            return self
        raw = copy.deepcopy(self._raw)
        origins = dict(self._origins)
        label = f"overrides for {self.name}"
        for k, v in given.items():
            if k == "ks":
                kp: KeyPath = ("metrics", "ks")
            elif k == "num_fewshot":
                kp = ("prompt", "fewshot", "num")
            else:
                kp = ("sampling", k)
            node = raw
            for part in kp[:-1]:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
            node[kp[-1]] = copy.deepcopy(v)
            _forget(origins, kp)
            origins[kp] = label
        if "n" in given and "ks" not in given:
            ks = (raw.get("metrics") or {}).get("ks")
            if isinstance(ks, list) and isinstance(given["n"], int):
                kept = [k for k in ks if isinstance(k, int) and k <= given["n"]]
                if kept:
                    raw["metrics"]["ks"] = kept
                else:
                    raw["metrics"].pop("ks")
        return _build(raw, origins, self.path, default_origin=label)


class _SpecDumper(yaml.SafeDumper):
    """Multi-line strings (templates) as literal blocks, so spec.yaml reads like a task file."""


def _represent_str(dumper: yaml.SafeDumper, s: str) -> yaml.ScalarNode:
    if "\n" in s and s.strip() and not s[0].isspace():
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|")
    if "\n" in s:
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style='"')
    return dumper.represent_scalar("tag:yaml.org,2002:str", s)


_SpecDumper.add_representer(str, _represent_str)


# --------------------------------------------------------------------------------------------
# Public API


def load_task(name_or_path: str | os.PathLike, include_paths: Iterable[str | os.PathLike] | None = ()) -> TaskSpec:
    """A task by name (searched in the include paths, then $HARNESS_TASKS_DIR, then
    <project>/tasks; the first match wins) or by the path of a YAML file."""
    s = str(name_or_path)
    p = Path(s).expanduser()
    if s.endswith(_YAML_SUFFIXES) or "/" in s or os.sep in s or p.is_file():
        if not p.is_file():
            raise HarnessError(f"task file not found: {s}")
        return _load_file(p)
    index = _scan(task_dirs(include_paths))
    if s in index:
        return _load_file(index[s])
    hint = _suggest(s, list(index))
    known = ", ".join(sorted(index)) or "none"
    raise HarnessError(f"unknown task {s!r}{hint}; known tasks: {known}")


def list_tasks(include_paths: Iterable[str | os.PathLike] | None = ()) -> list[tuple[str, str, Path]]:
    """(name, description, path) of every task visible with these include paths, sorted by name.
    Every listed task is fully loaded, so a broken one is reported here rather than at eval."""
    index = _scan(task_dirs(include_paths))
    out = []
    for name in sorted(index):
        spec = _load_file(index[name])
        out.append((name, spec.description, index[name]))
    return out


def task_dirs(include_paths: Iterable[str | os.PathLike] | None = ()) -> list[Path]:
    """Where task names are looked up, in priority order."""
    dirs: list[Path] = []
    for p in include_paths or ():
        q = Path(p).expanduser()
        if not q.exists():
            raise HarnessError(f"include path not found: {p}")
        dirs.append(q)
    for p in filter(None, os.environ.get(TASKS_ENV, "").split(os.pathsep)):
        q = Path(p).expanduser()
        if not q.exists():
            raise HarnessError(f"${TASKS_ENV}: folder not found: {p}")
        dirs.append(q)
    dirs.append(Path(os.environ.get("HARNESS_ROOT", PROJECT_ROOT)) / "tasks")
    return dirs


# --------------------------------------------------------------------------------------------
# Finding task files


def _yaml_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if any(part.startswith(".") for part in rel) or p.name.startswith("_"):
            continue
        if p.suffix in _YAML_SUFFIXES and p.is_file():
            out.append(p)
    return out


def _scan(dirs: Sequence[Path]) -> dict[str, Path]:
    """name → file (first root wins); a name declared twice inside one root is an error."""
    index: dict[str, Path] = {}
    for root in dirs:
        seen: dict[str, Path] = {}
        for f in _yaml_files(root):
            data = _read_yaml(f)
            if not isinstance(data, dict) or not isinstance(data.get("task"), str):
                continue  # not a task file (a fragment, or some other YAML)
            name = data["task"]
            if name in seen:
                raise HarnessError(f"{_display(f)}: task: name {name!r} is also declared by {_display(seen[name])}")
            seen[name] = f
            index.setdefault(name, f)
    return index


# --------------------------------------------------------------------------------------------
# Reading YAML and resolving includes


class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            dup = key in seen
        except TypeError:
            dup = False
        if dup:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        try:
            seen.add(key)
        except TypeError:
            pass
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise HarnessError(f"{_display(path)}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise HarnessError(f"{_display(path)}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise HarnessError(f"{_display(path)}: YAML syntax error{where}: {_one_line(what)}") from None
    except yaml.YAMLError as e:
        raise HarnessError(f"{_display(path)}: YAML error: {_one_line(str(e))}") from None


def _load_file(path: Path) -> TaskSpec:
    path = path.resolve()
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise HarnessError(f"{_display(path)}: expected a mapping of task keys at the top, got {_show(data)}")
    if "task" not in data:
        raise HarnessError(f"{_display(path)}: task: missing (every task file names itself with 'task: <name>')")
    raw, origins = _resolve(path, data, [])
    return _build(raw, origins, path, default_origin=_display(path))


def _resolve(path: Path, data: dict, stack: list[Path]) -> tuple[dict, dict]:
    """Merge the includes of `data` (read from `path`) under it; origins: key path → file label."""
    label = _display(path)
    data = dict(data)
    inc = data.pop("include", None)
    if inc is None:
        incs: list = []
    elif isinstance(inc, str):
        incs = [inc]
    elif isinstance(inc, list) and all(isinstance(x, str) for x in inc):
        incs = inc
    else:
        raise HarnessError(f"{label}: include: expected a file path or a list of file paths, got {_show(inc)}")
    merged: dict = {}
    origins: dict = {}
    for i, rel in enumerate(incs):
        key = "include" if isinstance(inc, str) else f"include[{i}]"
        target = (path.parent / Path(rel).expanduser()).resolve()
        if target in stack or target == path:
            chain = " -> ".join(_display(p) for p in [*stack, path, target])
            raise HarnessError(f"{label}: {key}: include cycle: {chain}")
        if not target.is_file():
            raise HarnessError(f"{label}: {key}: file not found: {rel} (looked for {_display(target)})")
        sub = _read_yaml(target)
        if sub is None:
            sub = {}
        if not isinstance(sub, dict):
            raise HarnessError(f"{_display(target)}: expected a mapping of task keys at the top, got {_show(sub)}")
        sub_raw, sub_origins = _resolve(target, sub, [*stack, path])
        sub_raw.pop("task", None)  # a task's name is never inherited
        _forget(sub_origins, ("task",))
        merged = _merge(merged, sub_raw, origins, sub_origins, ())
    _absolutise_files(data, path.parent)
    own: dict = {}
    _walk(data, (), own, label)
    merged = _merge(merged, data, origins, own, ())
    return merged, origins


def _absolutise_files(data: dict, base: Path) -> None:
    ds = data.get("dataset")
    if isinstance(ds, dict) and isinstance(ds.get("files"), dict):
        ds["files"] = {
            k: (str((base / Path(v).expanduser()).resolve()) if isinstance(v, str) and v else v)
            for k, v in ds["files"].items()
        }


def _walk(obj: Any, prefix: KeyPath, out: dict, label: str) -> None:
    out[prefix] = label
    if isinstance(obj, dict):
        for k, v in obj.items():
            _walk(v, prefix + (k,), out, label)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _walk(v, prefix + (i,), out, label)


def _forget(origins: dict, prefix: KeyPath) -> None:
    n = len(prefix)
    for k in [k for k in origins if k[:n] == prefix]:
        del origins[k]


def _merge(base: dict, child: dict, origins: dict, child_origins: dict, prefix: KeyPath) -> dict:
    out = dict(base)
    for k, v in child.items():
        p = prefix + (k,)
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, origins, child_origins, p)
            if p in child_origins:
                origins[p] = child_origins[p]
        else:
            out[k] = copy.deepcopy(v)
            _forget(origins, p)
            n = len(p)
            origins.update({q: o for q, o in child_origins.items() if q[:n] == p})
    return out


# --------------------------------------------------------------------------------------------
# Validation


class _Checker:
    def __init__(self, origins: dict, default_origin: str):
        self.origins = origins
        self.default_origin = default_origin

    def where(self, kp: KeyPath) -> str:
        for i in range(len(kp), -1, -1):
            o = self.origins.get(tuple(kp[:i]))
            if o is not None:
                return o
        return self.default_origin

    def fail(self, kp: KeyPath, msg: str) -> NoReturn:
        key = _fmt_path(kp)
        raise HarnessError(_one_line(f"{self.where(kp)}: {key + ': ' if key else ''}{msg}"))

    # -- containers
    def mapping(self, v: Any, kp: KeyPath, allowed: Sequence[str], *, nullable: bool = True) -> dict:
        if v is None and nullable:
            return {}
        if not isinstance(v, dict):
            self.fail(kp, f"expected a mapping, got {_show(v)}")
        for k in v:
            if not isinstance(k, str):
                self.fail(kp, f"keys must be strings, got {_show(k)}")
            if k not in allowed:
                self.fail(kp + (k,), f"unknown key{_suggest(k, allowed)}; allowed: {', '.join(allowed)}")
        return v

    # -- scalars
    def string(self, d: dict, kp: KeyPath, key: str, *, default: Any = None, required: bool = False,
               choices: Sequence[str] | None = None, nonempty: bool = True) -> Any:
        v = d.get(key)
        if v is None:
            if required:
                self.fail(kp + (key,), "missing (required)")
            return default
        if not isinstance(v, str):
            self.fail(kp + (key,), f"expected a string, got {_show(v)}")
        if choices is not None and v not in choices:
            self.fail(kp + (key,), f"expected one of {', '.join(choices)}, got {v!r}{_suggest(v, choices)}")
        if nonempty and not v:
            self.fail(kp + (key,), "must not be empty")
        return v

    def integer(self, d: dict, kp: KeyPath, key: str, *, default: Any, minimum: int | None = None,
                nullable: bool = False) -> Any:
        v = d.get(key)
        if v is None:
            return default
        what = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(kp + (key,), f"expected {what}{' or null' if nullable else ''}, got {_show(v)}")
        if minimum is not None and v < minimum:
            self.fail(kp + (key,), f"expected {what}, got {v}")
        return v

    def number(self, d: dict, kp: KeyPath, key: str, *, default: float) -> float:
        v = d.get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(kp + (key,), f"expected a number, got {_show(v)}")
        if v != v or v in (float("inf"), float("-inf")):
            self.fail(kp + (key,), f"expected a finite number, got {v}")
        return float(v)

    def boolean(self, d: dict, kp: KeyPath, key: str, *, default: bool) -> bool:
        v = d.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            self.fail(kp + (key,), f"expected true or false, got {_show(v)}")
        return v

    def template(self, src: str | None, kp: KeyPath) -> None:
        if src is None:
            return
        from harness.tasks.prompts import check_template

        err = check_template(src)
        if err:
            self.fail(kp, err)


def _build(raw: dict, origins: dict, path: Path | None, default_origin: str) -> TaskSpec:
    c = _Checker(origins, default_origin)
    top = c.mapping(raw, (), _TOP_KEYS, nullable=False)

    name = c.string(top, (), "task", required=True)
    if not _NAME_RE.match(name):
        c.fail(("task",), f"{name!r} is not a valid task name (letters, digits, '.', '_', '-'; starting with a letter or digit)")
    description = c.string(top, (), "description", default="", nonempty=False).strip()
    if "\n" in description:
        c.fail(("description",), "must be one line")

    # dataset
    kp: KeyPath = ("dataset",)
    if top.get("dataset") is None:
        c.fail(kp, "missing (required)")
    ds = c.mapping(top["dataset"], kp, _DATASET_KEYS)
    hub = None
    if ds.get("hub") is not None:
        h = c.mapping(ds["hub"], kp + ("hub",), _HUB_KEYS)
        hub = HubSpec(
            path=c.string(h, kp + ("hub",), "path", required=True),
            name=c.string(h, kp + ("hub",), "name"),
            revision=c.string(h, kp + ("hub",), "revision"),
        )
    files = {}
    if ds.get("files") is not None:
        fd = ds["files"]
        if not isinstance(fd, dict):
            c.fail(kp + ("files",), f"expected a mapping of split → file path, got {_show(fd)}")
        for k, v in fd.items():
            if not isinstance(k, str):
                c.fail(kp + ("files",), f"split names must be strings, got {_show(k)}")
            if not isinstance(v, str) or not v:
                c.fail(kp + ("files", k), f"expected a file path, got {_show(v)}")
            files[k] = v
    dataset = DatasetSpec(
        name=c.string(ds, kp, "name", required=True),
        split=c.string(ds, kp, "split", default="test"),
        fewshot_split=c.string(ds, kp, "fewshot_split"),
        hub=hub,
        files=files,
        id_field=c.string(ds, kp, "id_field"),
    )

    # prompt
    kp = ("prompt",)
    if top.get("prompt") is None:
        c.fail(kp, "missing (required)")
    pr = c.mapping(top["prompt"], kp, _PROMPT_KEYS)
    template = c.string(pr, kp, "template", required=True)
    target = c.string(pr, kp, "target", required=True)
    system = c.string(pr, kp, "system")
    for key, src in (("template", template), ("target", target), ("system", system)):
        c.template(src, kp + (key,))

    fkp = kp + ("fewshot",)
    fr = c.mapping(pr.get("fewshot"), fkp, _FEWSHOT_KEYS)
    num = c.integer(fr, fkp, "num", default=0, minimum=0)
    ex_raw = fr.get("exemplars")
    exemplars: list[dict] = []
    if ex_raw is not None:
        if not isinstance(ex_raw, list):
            c.fail(fkp + ("exemplars",), f"expected a list of mappings, got {_show(ex_raw)}")
        for i, ex in enumerate(ex_raw):
            if not isinstance(ex, dict) or not ex:
                c.fail(fkp + ("exemplars", i), f"expected a mapping of doc fields, got {_show(ex)}")
            for k in ex:
                if not isinstance(k, str):
                    c.fail(fkp + ("exemplars", i), f"field names must be strings, got {_show(k)}")
            exemplars.append(copy.deepcopy(ex))
    source_default = "split" if num > 0 and not exemplars else "exemplars"
    source = c.string(fr, fkp, "source", default=source_default, choices=FEWSHOT_SOURCES)
    answer = c.string(fr, fkp, "answer")
    c.template(answer, fkp + ("answer",))
    fewshot = FewshotSpec(
        num=num,
        source=source,
        sampler=c.string(fr, fkp, "sampler", default="per_doc", choices=FEWSHOT_SAMPLERS),
        seed=c.integer(fr, fkp, "seed", default=DEFAULT_SEED, minimum=0),
        exemplars=tuple(exemplars),
        answer=answer,
        answer_delimiter=c.string(fr, fkp, "answer_delimiter", default=" ", nonempty=False),
        separator=c.string(fr, fkp, "separator", default="\n\n", nonempty=False),
    )
    if source == "exemplars" and num > len(exemplars):
        c.fail(fkp + ("num",), f"asks for {num} shots but exemplars has {len(exemplars)}")
    if source == "split" and num > 0 and dataset.fewshot_split is None:
        c.fail(("dataset", "fewshot_split"), "missing: required when prompt.fewshot.source is 'split'")
    prompt = PromptSpec(
        template=template,
        target=target,
        system=system,
        fewshot=fewshot,
        chat_template=c.boolean(pr, kp, "chat_template", default=False),
        chat_fewshot=c.string(pr, kp, "chat_fewshot", default="multiturn", choices=CHAT_FEWSHOT),
        strip_think=c.boolean(pr, kp, "strip_think", default=True),
    )

    # sampling
    kp = ("sampling",)
    sr = c.mapping(top.get("sampling"), kp, _SAMPLING_KEYS)
    defaults = SamplingParams()
    temperature = c.number(sr, kp, "temperature", default=defaults.temperature)
    if temperature < 0:
        c.fail(kp + ("temperature",), f"must be >= 0, got {temperature:g}")
    top_p = c.number(sr, kp, "top_p", default=defaults.top_p)
    if not 0 < top_p <= 1:
        c.fail(kp + ("top_p",), f"must be in (0, 1], got {top_p:g}")
    min_p = c.number(sr, kp, "min_p", default=defaults.min_p)
    if not 0 <= min_p <= 1:
        c.fail(kp + ("min_p",), f"must be in [0, 1], got {min_p:g}")
    stop_raw = sr.get("stop")
    if stop_raw is None:
        stop: list[str] = []
    elif isinstance(stop_raw, str):
        stop = [stop_raw]
    elif isinstance(stop_raw, list):
        stop = stop_raw
    else:
        c.fail(kp + ("stop",), f"expected a string or a list of strings, got {_show(stop_raw)}")
    for i, s in enumerate(stop):
        if not isinstance(s, str) or not s:
            c.fail(kp + ("stop", i), f"expected a non-empty string, got {_show(s)}")
    sampling = SamplingParams(
        n=c.integer(sr, kp, "n", default=defaults.n, minimum=1),
        temperature=temperature,
        top_p=top_p,
        top_k=c.integer(sr, kp, "top_k", default=defaults.top_k, minimum=0),
        min_p=min_p,
        max_tokens=c.integer(sr, kp, "max_tokens", default=defaults.max_tokens, minimum=1),
        stop=tuple(dict.fromkeys(stop)),
        seed=c.integer(sr, kp, "seed", default=DEFAULT_SEED, minimum=0),
        logprobs=c.integer(sr, kp, "logprobs", default=None, minimum=0, nullable=True),
        ignore_eos=c.boolean(sr, kp, "ignore_eos", default=False),
    )

    # filters
    kp = ("filters",)
    fl = top.get("filters")
    if fl is None:
        c.fail(kp, "missing (required): a list of {name, steps} answer extractors")
    if not isinstance(fl, list) or not fl:
        c.fail(kp, f"expected a non-empty list of {{name, steps}} mappings, got {_show(fl)}")
    filters: list[dict] = []
    names: dict[str, int] = {}
    for i, f in enumerate(fl):
        fk = kp + (i,)
        f = c.mapping(f, fk, _FILTER_KEYS, nullable=False)
        fname = c.string(f, fk, "name", required=True)
        if not _NAME_RE.match(fname):
            c.fail(fk + ("name",), f"{fname!r} is not a valid filter name (letters, digits, '.', '_', '-')")
        if fname in names:
            c.fail(fk + ("name",), f"duplicate filter name {fname!r} (also filters[{names[fname]}])")
        names[fname] = i
        steps = f.get("steps")
        if not isinstance(steps, list) or not steps:
            c.fail(fk + ("steps",), f"expected a non-empty list of steps, got {_show(steps)}")
        for j, st in enumerate(steps):
            sk = fk + ("steps", j)
            if not isinstance(st, dict):
                c.fail(sk, f"expected a mapping with a 'function' key, got {_show(st)}")
            for k in st:
                if not isinstance(k, str):
                    c.fail(sk, f"keys must be strings, got {_show(k)}")
            if not isinstance(st.get("function"), str):
                c.fail(sk + ("function",), f"missing or not a string (got {_show(st.get('function'))})")
        filters.append({"name": fname, "steps": copy.deepcopy(steps)})
    from harness import grading

    try:
        grading.build_filters(copy.deepcopy(filters))
    except HarnessError as e:
        msg = str(e)
        m = re.match(r"filters\[(\d+)\]", msg)
        where = c.where(kp + ((int(m.group(1)),) if m else ()))
        raise HarnessError(_one_line(f"{where}: {msg if msg.startswith('filters') else 'filters: ' + msg}")) from None

    # scoring
    kp = ("scoring",)
    sc = c.mapping(top.get("scoring"), kp, _SCORING_KEYS)
    comparator = c.string(sc, kp, "comparator", default="numeric")
    if comparator not in grading.COMPARATORS:
        known = list(grading.COMPARATORS)
        c.fail(kp + ("comparator",), f"unknown comparator {comparator!r} (choose from {', '.join(known)}){_suggest(comparator, known)}")
    primary = c.string(sc, kp, "primary_filter", default=filters[0]["name"])
    if primary not in names:
        c.fail(kp + ("primary_filter",), f"no filter named {primary!r}{_suggest(primary, list(names))}; filters: {', '.join(names)}")

    # metrics
    kp = ("metrics",)
    mt = c.mapping(top.get("metrics"), kp, _METRICS_KEYS)
    ks_raw = mt.get("ks")
    if ks_raw is None:
        ks = tuple(default_ks(sampling.n, include_n=False))
    else:
        if not isinstance(ks_raw, list) or not ks_raw:
            c.fail(kp + ("ks",), f"expected a non-empty list of positive integers, got {_show(ks_raw)}")
        for i, k in enumerate(ks_raw):
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                c.fail(kp + ("ks", i), f"expected a positive integer, got {_show(k)}")
            if k > sampling.n:
                c.fail(kp + ("ks", i), f"k = {k} exceeds sampling.n = {sampling.n}")
        ks = tuple(sorted(set(ks_raw)))

    return TaskSpec(
        name=name,
        description=description,
        path=path,
        dataset=dataset,
        prompt=prompt,
        sampling=sampling,
        filters=filters,
        comparator=comparator,
        primary_filter=primary,
        ks=ks,
        _raw=copy.deepcopy(raw),
        _origins=dict(origins),
    )


# --------------------------------------------------------------------------------------------
# Formatting helpers


def _fmt_path(kp: KeyPath) -> str:
    out = ""
    for part in kp:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _show(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list" if v else "an empty list"
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _suggest(word: str, choices: Iterable[str]) -> str:
    m = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {m[0]!r}?)" if m else ""


def _one_line(s: str) -> str:
    return " ".join(s.split("\n")).strip()


def _display(path: Path) -> str:
    try:
        rel = path.resolve().relative_to(Path.cwd().resolve())
        return str(rel)
    except (ValueError, OSError):
        return str(path)
