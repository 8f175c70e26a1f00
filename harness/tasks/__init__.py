"""Tasks: YAML specs → a validated TaskSpec → docs and prompts.

    spec        the schema (pydantic models) and TaskSpec: resolved, hashable, overridable
    loader      finding task files, reading YAML, resolving `include:` with each key's origin
    errors      one-line errors `<file>: <key path>: <problem>`, from pydantic's validation errors
    templating  the sandboxed jinja2 environment: compile cache, check_template, render
    prompts     a doc → the exact prompt text (few-shot, chat template)
    data        a dataset and split → docs (data folder, task files, packages, the hub)
"""

from harness.tasks.loader import list_tasks, load_task, task_dirs
from harness.tasks.spec import TaskSpec

__all__ = ["TaskSpec", "list_tasks", "load_task", "task_dirs"]
