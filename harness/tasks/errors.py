"""Spec errors: one line, `<file>: <key path>: <problem>`, naming the file that set the key.

Holds what the loader (harness.tasks.loader) and the spec (harness.tasks.spec, for overrides) both
need: key paths and shown values, "did you mean" suggestions, the origins map (key path → the label
of the file that set it, written by the include resolution), and pydantic's validation errors in
those terms. The wording of a problem comes from the schema: the type and constraints of the field
at the error's key path (found by walking the models' annotations), or a `Wording` placed in the
field's annotation where the type alone would be vague.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from typing_extensions import is_typeddict

KeyPath = tuple  # of str | int; () is the whole file


@dataclass(frozen=True)
class Wording:
    """How errors describe a field, placed in its annotation: `expected` ("a mapping of split →
    file path") replaces the wording derived from the type; `invalid` ("task name (letters, …)")
    completes "'x y' is not a valid …" when the value does not match the field's pattern."""

    expected: str | None = None
    invalid: str | None = None


class Invalid(ValueError):
    """A cross-field rule broken at `loc`, relative to the model or field whose validator raises it
    (pydantic keeps the exception, so the message can name the key the rule is about)."""

    def __init__(self, loc: KeyPath, problem: str):
        super().__init__(problem)
        self.loc = tuple(loc)


# --------------------------------------------------------------------------------------------
# Origins: key path → the file that set it


def origin_of(origins: dict, kp: KeyPath, default: str) -> str:
    """The file that set `kp`, or the nearest key above it that a file set."""
    for i in range(len(kp), -1, -1):
        o = origins.get(tuple(kp[:i]))
        if o is not None:
            return o
    return default


def forget(origins: dict, prefix: KeyPath) -> None:
    """Drop the origins of `prefix` and of every key below it (the value is being replaced)."""
    n = len(prefix)
    for k in [k for k in origins if k[:n] == prefix]:
        del origins[k]


def located(origins: dict, kp: KeyPath, default: str, problem: str) -> str:
    key = fmt_path(kp)
    return one_line(f"{origin_of(origins, kp, default)}: {key + ': ' if key else ''}{problem}")


# --------------------------------------------------------------------------------------------
# Formatting


def fmt_path(kp: KeyPath) -> str:
    out = ""
    for part in kp:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def parse_path(text: str) -> KeyPath:
    """fmt_path backwards: "filters[0].steps[1]" → ("filters", 0, "steps", 1)."""
    return tuple(int(i) if i else k for k, i in re.findall(r"([^.\[\]]+)|\[(\d+)\]", text))


def show(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "a mapping" if v else "an empty mapping"
    if isinstance(v, (list, tuple)):
        return "a list" if v else "an empty list"
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def suggest(word: Any, choices: Iterable[Any]) -> str:
    m = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {m[0]!r}?)" if m else ""


def one_line(s: str) -> str:
    return " ".join(str(s).split("\n")).strip()


# --------------------------------------------------------------------------------------------
# pydantic's errors → one line

_UNKNOWN_KEY = ("extra_forbidden", "unexpected_keyword_argument")
_MISSING = ("missing", "missing_argument", "missing_keyword_only_argument")
_RANGE = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def describe(err: ValidationError, root: type, origins: dict, default_origin: str) -> str:
    """The one-line message for a failed validation of `root`: its first error (an unknown key
    before anything else: a misspelt key also makes the key it meant look missing)."""
    errors = err.errors()
    e = next((x for x in errors if x["type"] in _UNKNOWN_KEY + ("invalid_key",)), errors[0])
    loc, kind, ctx = tuple(e["loc"]), e["type"], e.get("ctx") or {}
    if kind == "value_error":  # a validator's own message; Invalid adds the key it is about
        exc = ctx.get("error")
        return located(origins, loc + getattr(exc, "loc", ()), default_origin, str(exc))
    if kind == "invalid_key":  # a non-string key of a model
        return located(origins, loc[:-1], default_origin, f"keys must be strings, got {show(loc[-1])}")
    if loc and loc[-1] == "[key]":  # a non-string key of a plain mapping
        return located(origins, loc[:-2], default_origin, f"keys must be strings, got {show(e['input'])}")
    return located(origins, loc, default_origin, _problem(e, root))


def _problem(e: dict, root: type) -> str:
    loc, kind, value = tuple(e["loc"]), e["type"], e["input"]
    if kind in _UNKNOWN_KEY:
        parent = _node_at(root, loc[:-1])
        keys = list(_fields(parent.tp) or {}) if parent else []
        return f"unknown key{suggest(loc[-1], keys)}; allowed: {', '.join(keys)}"
    node = _node_at(root, loc)
    if node is None:  # not reachable through the annotations: pydantic's own words
        return f"{e['msg'][:1].lower()}{e['msg'][1:]}, got {show(value)}"
    wording = node.first(Wording) or Wording()
    if kind in _MISSING:
        return "missing (required)" + (f": {wording.expected}" if wording.expected else "")
    if kind == "string_pattern_mismatch":
        return f"{value!r} is not a valid {wording.invalid or 'value'}"
    if kind == "finite_number":
        return f"expected a finite number, got {value}"
    if kind in _RANGE and node.tp is float:
        return f"must be {_interval(node)}, got {value:g}"
    if kind == "too_long" and node.first(at.MaxLen) is not None:
        what = "characters" if node.tp is str else "items"
        return f"at most {node.first(at.MaxLen).max_length} {what} allowed, got {len(value)}"
    hint = suggest(value, get_args(node.tp)) if kind == "literal_error" and isinstance(value, str) else ""
    return f"expected {wording.expected or _derived(node)}, got {show(value)}{hint}"


@dataclass
class _Node:
    """A type in the schema with the metadata of its annotations (constraints, Wording)."""

    tp: Any
    meta: list

    def first(self, cls: type) -> Any:
        return next((m for m in self.meta if isinstance(m, cls)), None)


def _unwrap(tp: Any, meta: Iterable[Any] = ()) -> _Node:
    """Peel Annotated[...] (collecting its metadata, Field(...)'s constraints included) and
    Optional[...] off a type (null is valid everywhere: it means the default)."""
    node = _Node(tp, list(meta))
    while True:
        origin, args = get_origin(node.tp), get_args(node.tp)
        if origin is Annotated:
            node.tp = args[0]
            for m in args[1:]:
                node.meta += m.metadata if isinstance(m, FieldInfo) else [m]
        elif origin in (Union, types.UnionType) and type(None) in args and len(args) == 2:
            node.tp = next(a for a in args if a is not type(None))
        else:
            return node


def _fields(tp: Any) -> dict[str, _Node] | None:
    """key → node of a model, dataclass or TypedDict, in declaration order; None for other types."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {f.alias or name: _unwrap(f.annotation, f.metadata) for name, f in tp.model_fields.items()}
    if dataclasses.is_dataclass(tp) or is_typeddict(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        names = [f.name for f in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp) else list(hints)
        return {name: _unwrap(hints[name]) for name in names}
    return None


def _node_at(root: type, loc: KeyPath) -> _Node | None:
    node = _unwrap(root)
    for part in loc:
        fields = _fields(node.tp)
        origin, args = get_origin(node.tp), get_args(node.tp)
        if fields is not None:
            node = fields.get(part)
            if node is None:
                return None
        elif origin in (list, tuple, set, frozenset) and args:
            node = _unwrap(args[0])
        elif origin is dict and len(args) == 2:
            node = _unwrap(args[1])
        else:
            return None
    return node


def _derived(node: _Node) -> str:
    """What a valid value is, in words, from the type and its constraints."""
    tp, origin = node.tp, get_origin(node.tp)
    min_len = node.first(at.MinLen)
    if tp is bool:
        return "true or false"
    if tp is int:
        low = node.first(at.Ge)
        low = low.ge if low is not None else None
        le, lt = node.first(at.Le), node.first(at.Lt)
        high = le.le if le is not None else (lt.lt - 1 if lt is not None else None)
        if high is not None:
            return f"an integer from {low if low is not None else '-inf'} to {high}"
        return {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")
    if tp is float:
        return "a number"
    if tp is str:
        return "a non-empty string" if min_len is not None and min_len.min_length > 0 else "a string"
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(tp))
    if _fields(tp) is not None or origin is dict or tp is dict:
        return "a mapping"
    if origin in (list, tuple) or tp in (list, tuple):
        return "a non-empty list" if min_len is not None and min_len.min_length > 0 else "a list"
    return "a valid value"


def _interval(node: _Node) -> str:
    """A number's range from its constraints: ">= 0", "in (0, 1]"."""
    gt, ge, lt, le = (node.first(c) for c in (at.Gt, at.Ge, at.Lt, at.Le))
    low = (f"({gt.gt:g}", f"> {gt.gt:g}") if gt is not None else (f"[{ge.ge:g}", f">= {ge.ge:g}") if ge is not None else None
    high = (f"{lt.lt:g})", f"< {lt.lt:g}") if lt is not None else (f"{le.le:g}]", f"<= {le.le:g}") if le is not None else None
    if low and high:
        return f"in {low[0]}, {high[0]}"
    return (low or high or ("", "valid"))[1]
