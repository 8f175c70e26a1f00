"""Task loading: task names and files → YAML → `include:` merged, each key's origin → a TaskSpec.

A task is found by name in the include paths, then $HARNESS_TASKS_DIR, then <project>/tasks (the
first match wins; files and folders starting with "." or "_" are skipped, so `_base.yaml` is a
fragment), or given by the path of its YAML file. YAML is read with duplicate keys as errors.

`include: path | [path, …]` (relative to the including file) merges those files under this one:
included in order, then this file on top. An included file must lie inside a task folder: one of the
search folders above, or the folder of a task file given by path; anything else (`../../etc/…`, a
symlink out of the tree) is refused before it is read. Errors name files and keys, never a file's
contents. Mappings merge deeply; everything else (lists included)
is replaced. A task's name (`task:`) is never inherited. Every key remembers the file that set it,
so a validation error (harness.tasks.errors) names that file: `<file>: <key path>: <problem>`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from harness import PROJECT_ROOT, HarnessError
from harness.tasks.errors import KeyPath, forget, one_line, show, suggest
from harness.tasks.spec import TaskSpec, build

TASKS_ENV = "HARNESS_TASKS_DIR"
_YAML_SUFFIXES = (".yaml", ".yml")
# Budgets against hostile specs: a task is a few hundred nodes and a chain of 2-3 includes.
MAX_YAML_NODES = 50_000  # counted with every alias expanded (an alias bomb is tiny on disk)
MAX_INCLUDE_DEPTH = 16
MAX_INCLUDED_FILES = 64  # reads per task, a file included twice counted twice (diamonds amplify too)
MAX_TASK_FILE_BYTES = 1 << 20


# --------------------------------------------------------------------------------------------
# Public API


def load_task(name_or_path: str | os.PathLike, include_paths: Iterable[str | os.PathLike] | None = ()) -> TaskSpec:
    """A task by name (searched in the include paths, then $HARNESS_TASKS_DIR, then
    <project>/tasks; the first match wins) or by the path of a YAML file."""
    s = str(name_or_path)
    p = Path(s).expanduser()
    dirs = task_dirs(include_paths)
    if s.endswith(_YAML_SUFFIXES) or "/" in s or os.sep in s or p.is_file():
        if not p.is_file():
            raise HarnessError(f"task file not found: {s}")
        return _load_file(p, [p.resolve().parent, *dirs])
    index = _scan(dirs)
    if s in index:
        return _load_file(index[s], dirs)
    hint = suggest(s, list(index))
    known = ", ".join(sorted(index)) or "none"
    raise HarnessError(f"unknown task {s!r}{hint}; known tasks: {known}")


def list_tasks(include_paths: Iterable[str | os.PathLike] | None = ()) -> list[tuple[str, str, Path]]:
    """(name, description, path) of every task visible with these include paths, sorted by name.
    Every listed task is fully loaded, so a broken one is reported here rather than at eval."""
    index = _scan(task_dirs(include_paths))
    out = []
    dirs = task_dirs(include_paths)
    for name in sorted(index):
        spec = _load_file(index[name], dirs)
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
# Reading YAML


class _UniqueKeyLoader(yaml.SafeLoader):
    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expanded_size(node)
        return node


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a document whose node count, with aliases expanded, is over MAX_YAML_NODES (before
    anything is constructed, so an alias bomb costs a pass over its distinct nodes, not its
    expansion), or one that refers to itself."""
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in size:
            continue
        if isinstance(node, yaml.MappingNode):
            kids = [x for pair in node.value for x in pair]
        elif isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        else:
            kids = []
        if children_done:
            size[id(node)] = total = 1 + sum(size[id(k)] for k in kids)
            open_.discard(id(node))
            if total > MAX_YAML_NODES:
                raise yaml.YAMLError(f"more than {MAX_YAML_NODES} YAML nodes once aliases are expanded "
                                     f"(from line {node.start_mark.line + 1}); refusing to expand it")
            continue
        if id(node) in open_:
            raise yaml.YAMLError(f"an alias refers to its own anchor (line {node.start_mark.line + 1})")
        open_.add(id(node))
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in size)


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
        size = path.stat().st_size
        if size > MAX_TASK_FILE_BYTES:
            raise HarnessError(f"{_display(path)}: {size} bytes, more than the {MAX_TASK_FILE_BYTES} a task file may have")
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
        raise HarnessError(f"{_display(path)}: YAML syntax error{where}: {one_line(what)}") from None
    except yaml.YAMLError as e:
        raise HarnessError(f"{_display(path)}: YAML error: {one_line(str(e))}") from None
    except RecursionError:
        raise HarnessError(f"{_display(path)}: YAML nested too deeply") from None


def _display(path: Path) -> str:
    """A file's label in messages: relative to the working directory when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


# --------------------------------------------------------------------------------------------
# Resolving includes


def _load_file(path: Path, roots: Sequence[Path]) -> TaskSpec:
    """The task in `path`; its includes must lie under one of `roots` (the task folders)."""
    path = path.resolve()
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise HarnessError(f"{_display(path)}: expected a mapping of task keys at the top, got {_kind(data)}")
    if "task" not in data:
        raise HarnessError(f"{_display(path)}: task: missing (every task file names itself with 'task: <name>')")
    walk = _Includes([r.resolve() for r in roots])
    raw, origins = _resolve(path, data, [], walk)
    return build(raw, origins, path, default_origin=_display(path))


class _Includes:
    """The state of one task's include walk: where includes may point, how many were read."""

    def __init__(self, roots: list[Path]):
        self.roots = roots
        self.reads = 0

    def check(self, label: str, key: str, rel: str, target: Path) -> None:
        if not any(target.is_relative_to(r) for r in self.roots):
            folders = ", ".join(_display(r) for r in self.roots)
            raise HarnessError(f"{label}: {key}: {rel} is outside the task folders ({folders}); an include must name a "
                               "file under them (add its folder with --include-path)")
        self.reads += 1
        if self.reads > MAX_INCLUDED_FILES:
            raise HarnessError(f"{label}: {key}: more than {MAX_INCLUDED_FILES} included files in one task")


def _kind(v: Any) -> str:
    """What a YAML document is, without echoing it (it may be a file that is not a task at all)."""
    if v is None:
        return "an empty document"
    return {str: "a string", list: "a list", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(v), type(v).__name__)


def _resolve(path: Path, data: dict, stack: list[Path], walk: _Includes) -> tuple[dict, dict]:
    """Merge the includes of `data` (read from `path`) under it; origins: key path → file label."""
    label = _display(path)
    data = dict(data)
    inc = data.pop("include", None)
    merged: dict = {}
    origins: dict = {}
    includes = _includes(inc, label)
    if includes and len(stack) + 1 >= MAX_INCLUDE_DEPTH:
        chain = " -> ".join(_display(p) for p in [*stack[:2], path])
        raise HarnessError(f"{label}: include: more than {MAX_INCLUDE_DEPTH} levels of includes ({chain} …)")
    for key, rel in includes:
        target = (path.parent / Path(rel).expanduser()).resolve()
        if target in stack or target == path:
            chain = " -> ".join(_display(p) for p in [*stack, path, target])
            raise HarnessError(f"{label}: {key}: include cycle: {chain}")
        walk.check(label, key, rel, target)
        if not target.is_file():
            raise HarnessError(f"{label}: {key}: file not found: {rel} (looked for {_display(target)})")
        sub = _read_yaml(target)
        if sub is None:
            sub = {}
        if not isinstance(sub, dict):
            raise HarnessError(f"{_display(target)}: expected a mapping of task keys at the top, got {_kind(sub)}")
        sub_raw, sub_origins = _resolve(target, sub, [*stack, path], walk)
        sub_raw.pop("task", None)  # a task's name is never inherited
        forget(sub_origins, ("task",))
        merged = _merge(merged, sub_raw, origins, sub_origins, ())
    _absolutise_files(data, path.parent)
    own: dict = {}
    _walk(data, (), own, label)
    merged = _merge(merged, data, origins, own, ())
    return merged, origins


def _includes(inc: Any, label: str) -> list[tuple[str, str]]:
    """(key path for messages, relative path) of each file an `include:` value names."""
    if inc is None:
        return []
    if isinstance(inc, str):
        return [("include", inc)]
    if isinstance(inc, list) and all(isinstance(x, str) for x in inc):
        return [(f"include[{i}]", rel) for i, rel in enumerate(inc)]
    raise HarnessError(f"{label}: include: expected a file path or a list of file paths, got {show(inc)}")


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
            forget(origins, p)
            n = len(p)
            origins.update({q: o for q, o in child_origins.items() if q[:n] == p})
    return out
