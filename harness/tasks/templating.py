"""Templating: the sandboxed jinja2 environment every task template runs in, with one-line errors.

Templates run in an ImmutableSandboxedEnvironment with StrictUndefined: a template sees the doc's
fields as variables (and the whole doc as `doc`), cannot reach Python internals (`__class__`,
`__globals__`, …) nor mutate anything, and a missing field is an error, never "".

A prompt must be a pure function of the doc, so only data reaches the output:
- globals and filters are allow-lists (GLOBALS, FILTERS): nothing random (`random`, `lipsum`),
  nothing that prints Python reprs (`pprint`, `attr`, `cycler`, `joiner`);
- a `{{ … }}` whose value is not text, a number, a bool, None, or a list/tuple/mapping of those is an
  error (a method, a class, a loop object, `dict_items`: their reprs carry memory addresses, which
  would change the prompt hash from run to run);
- a callable reached from a template (a method of a doc value, a global) is handed out wrapped: it
  can be called, but turning it into text (`~`, `|string`, `format`) is an error.
`check_template` reports a syntax error when a spec is loaded; `render` reports what fails later.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from typing import Any, Iterator

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from harness import HarnessError
from harness.tasks.errors import one_line

GLOBALS = ("range", "namespace", "dict")
FILTERS = (
    "abs", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape", "first", "float",
    "format", "groupby", "indent", "int", "items", "join", "last", "length", "list", "lower", "map", "max", "min",
    "reject", "rejectattr", "replace", "reverse", "round", "select", "selectattr", "slice", "sort", "string",
    "striptags", "sum", "title", "tojson", "trim", "truncate", "unique", "upper", "urlencode", "wordcount", "wordwrap",
)
MAX_TEMPLATE_CHARS = 100_000  # a template's source; the few-shot prompts of a task are a few kB
MAX_RENDERED_CHARS = 2_000_000  # one rendered template (~500k tokens): beyond any model's window
_MAX_VALUE_DEPTH = 32
_MAX_POWER_BITS = 1 << 16
RENDER_TIMEOUT_S = 2.0  # one template on one doc; real ones take well under a millisecond


class RenderTimeout(HarnessError):
    """A template that ran past RENDER_TIMEOUT_S on a doc."""


class Unrenderable(SecurityError):
    """A template tried to put something other than data into the prompt."""


class _Opaque:
    """A callable handed to a template: callable, but never text."""

    __slots__ = ("fn",)

    def __init__(self, fn: Any):
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # reached only through _Sandbox.call
        return self.fn(*args, **kwargs)

    def _refuse(self, *_: Any) -> str:
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        raise Unrenderable(f"{name!r} is a function; call it, a function itself cannot be rendered")

    __str__ = __repr__ = __format__ = _refuse


def _plain(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if depth >= _MAX_VALUE_DEPTH:
        return False
    if isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _finalize(value: Any) -> Any:
    if isinstance(value, jinja2.Undefined) or _plain(value):
        return value
    if isinstance(value, _Opaque):
        value._refuse()
    raise Unrenderable(f"a {{{{ … }}}} renders a Python {type(value).__name__} object; only text, numbers, "
                       "lists and mappings can be rendered")


class _Sandbox(ImmutableSandboxedEnvironment):
    # Intercepted operators are never constant-folded at compile time either, so `"x" * 10**9`
    # costs nothing when a spec loads and is refused when it renders.
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            seq, times = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_RENDERED_CHARS:
                raise Unrenderable(f"a repetition of {len(seq) * times} items is more than a prompt may have")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            if right * abs(left).bit_length() > _MAX_POWER_BITS:
                raise Unrenderable(f"{left} ** {right} is a number too large to render")
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        return _wrap(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        return _wrap(super().getitem(obj, argument))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - jinja's signature
        if isinstance(__obj, _Opaque):  # the sandbox's own checks (str.format, unsafe callables) see the real one
            __obj = __obj.fn
        return super().call(__context, __obj, *args, **kwargs)


def _wrap(value: Any) -> Any:
    if callable(value) and not isinstance(value, (_Opaque, jinja2.Undefined, type(jinja2.Undefined))):
        return _Opaque(value)
    return value


@functools.lru_cache(maxsize=1)
def jinja_env() -> ImmutableSandboxedEnvironment:
    env = _Sandbox(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False, finalize=_finalize)
    env.globals = {k: (_Opaque(v) if callable(v) else v) for k, v in env.globals.items() if k in GLOBALS}
    env.filters = {k: v for k, v in env.filters.items() if k in FILTERS}
    return env


@functools.lru_cache(maxsize=256)
def compile_template(src: str) -> jinja2.Template:
    return jinja_env().from_string(src)


def check_template(src: str) -> str | None:
    """None if `src` compiles, else a one-line reason with the template line number."""
    if len(src) > MAX_TEMPLATE_CHARS:
        return f"template is {len(src)} characters, more than the {MAX_TEMPLATE_CHARS} allowed"
    try:
        compile_template(src)
    except jinja2.TemplateSyntaxError as e:
        allow = " (not on the allow-list, harness.tasks.templating.FILTERS)" if "No filter named" in str(e.message) else ""
        return one_line(f"template syntax error at line {e.lineno}: {e.message}{allow}")
    except jinja2.TemplateError as e:
        return one_line(f"template error: {e}")
    except RecursionError:
        return "template nested too deeply"
    return None


def render(tpl: jinja2.Template, where: str, doc: dict) -> str:
    """`tpl` on a doc; a failure is a one-line HarnessError starting with `where` (task: key)."""
    ctx = {**doc, "doc": doc}
    did = doc.get("doc_id")
    on = f" (doc {did})" if did is not None else ""
    try:
        with _time_budget(RENDER_TIMEOUT_S):
            out = tpl.render(ctx)
    except _RenderTimeout:
        raise RenderTimeout(f"{where}: rendering took more than {RENDER_TIMEOUT_S:g} s (a loop too large?){on}") from None
    except SecurityError as e:
        raise HarnessError(one_line(f"{where}: blocked by the template sandbox: {e}{on}")) from None
    except jinja2.UndefinedError as e:
        fields = ", ".join(k for k in doc if k != "doc_id")
        raise HarnessError(one_line(f"{where}: {e}{on}; the doc's fields: {fields}")) from None
    except jinja2.TemplateSyntaxError as e:
        raise HarnessError(one_line(f"{where}: template syntax error at line {e.lineno}: {e.message}{on}")) from None
    except RecursionError:
        raise HarnessError(f"{where}: the template recurses too deeply{on}") from None
    except Exception as e:
        raise HarnessError(one_line(f"{where}: {type(e).__name__}: {e}"[:500] + on)) from None
    if len(out) > MAX_RENDERED_CHARS:
        raise HarnessError(f"{where}: renders {len(out)} characters, more than the {MAX_RENDERED_CHARS} a prompt may have{on}")
    return out


class _RenderTimeout(BaseException):  # not an Exception: a template's own error handling cannot swallow it
    pass


@contextlib.contextmanager
def _time_budget(seconds: float) -> Iterator[None]:
    """Interrupt the block after `seconds` (SIGALRM; in the main thread only, the others run
    unbounded: signals reach only the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise _RenderTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

