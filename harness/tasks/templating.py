"""Templating: the sandboxed jinja2 environment every task template runs in, with one-line errors.

Templates run in an ImmutableSandboxedEnvironment with StrictUndefined: a template sees the doc's
fields as variables (and the whole doc as `doc`), cannot reach Python internals (`__class__`,
`__globals__`, …) nor mutate anything, and a missing field is an error, never "".
`check_template` reports a syntax error when a spec is loaded; `render` reports what fails later.
"""

from __future__ import annotations

import functools

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from harness import HarnessError
from harness.tasks.errors import one_line


@functools.lru_cache(maxsize=1)
def jinja_env() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


@functools.lru_cache(maxsize=256)
def compile_template(src: str) -> jinja2.Template:
    return jinja_env().from_string(src)


def check_template(src: str) -> str | None:
    """None if `src` compiles, else a one-line reason with the template line number."""
    try:
        compile_template(src)
    except jinja2.TemplateSyntaxError as e:
        return one_line(f"template syntax error at line {e.lineno}: {e.message}")
    except jinja2.TemplateError as e:
        return one_line(f"template error: {e}")
    return None


def render(tpl: jinja2.Template, where: str, doc: dict) -> str:
    """`tpl` on a doc; a failure is a one-line HarnessError starting with `where` (task: key)."""
    ctx = {**doc, "doc": doc}
    did = doc.get("doc_id")
    on = f" (doc {did})" if did is not None else ""
    try:
        return tpl.render(ctx)
    except SecurityError as e:
        raise HarnessError(one_line(f"{where}: blocked by the template sandbox: {e}{on}")) from None
    except jinja2.UndefinedError as e:
        fields = ", ".join(k for k in doc if k != "doc_id")
        raise HarnessError(one_line(f"{where}: {e}{on}; the doc's fields: {fields}")) from None
    except Exception as e:
        raise HarnessError(one_line(f"{where}: {type(e).__name__}: {e}{on}")) from None
