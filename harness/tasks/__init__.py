"""Tasks: YAML specs → a validated TaskSpec → docs and prompts.

    spec        the spec's schema and TaskSpec (resolved, hashable, overridable)
    loader      finding task files, reading YAML, resolving `include:` with each key's origin
    templating  the sandboxed jinja2 environment
    prompts     a doc → the exact prompt text (few-shot, chat template)
    data        a dataset and split → docs (data folder, task files, packages, the hub)
"""

from harness.tasks.spec import TaskSpec, list_tasks, load_task, task_dirs

__all__ = ["TaskSpec", "list_tasks", "load_task", "task_dirs"]
