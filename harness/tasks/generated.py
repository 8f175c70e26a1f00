"""Generated docs: a dataset spec with a `generator:` (DatasetSpec.generator) → docs made by that
generator, seeded, offline, no data files. The one generator is reasoning-gym:

    dataset:
      name: basic_arithmetic            # reasoning_gym.create_dataset's name
      generator: {source: reasoning_gym, size: 200, seed: 42, config: {min_terms: 2}}

Each doc: doc_id (its index, as a string), question, answer (the generator's answer; for datasets
without a single one, as propositional_logic, its example answer: one right answer among others),
metadata (the entry's metadata as JSON types) and gold, the reference the reasoning_gym comparator
verifies against (harness.grading.verifiers.gold_ref; a task's prompt.target is "{{ gold }}").

The same (name, size, seed, config) gives the same docs. reasoning-gym seeds item i with seed + i,
so seed 43's docs are seed 42's shifted by one: two splits of one generator need seeds at least
`size` apart to share no item.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from harness import HarnessError
from harness.grading import verifiers


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def generate(dataset_spec: Any, split: str) -> tuple[list[dict], str]:
    """(docs, source label) of the evaluated split of a generated dataset."""
    name, gen = _get(dataset_spec, "name"), _get(dataset_spec, "generator")
    source = _get(gen, "source")
    if source != verifiers.SOURCE:
        raise HarnessError(f"dataset {name!r}: dataset.generator.source: unknown generator {source!r} "
                           f"(choose from {verifiers.SOURCE})")
    if _get(dataset_spec, "files") or _get(dataset_spec, "hub"):
        raise HarnessError(f"dataset {name!r}: a generated dataset reads no data; drop dataset.files and dataset.hub")
    served = _get(dataset_spec, "split") or "test"
    if split != served:
        raise HarnessError(f"dataset {name!r}: the generator makes one split, {served!r} (dataset.split), "
                           f"not {split!r}")
    size, seed, config = _get(gen, "size"), _get(gen, "seed"), dict(_get(gen, "config") or {})
    clash = sorted({"size", "seed"} & set(config))
    if clash:
        raise HarnessError(f"dataset {name!r}: dataset.generator.config sets {', '.join(clash)}; "
                           "use dataset.generator.size / seed")
    ds = verifiers.dataset(name, size, seed, config)
    docs = []
    for i in range(size):
        e = ds[i]
        meta = json.loads(json.dumps(e.get("metadata") or {}, default=str))  # tuples → lists: plain JSON
        answer = e.get("answer")
        if answer is None:
            answer = meta.get("example_answer", "")
        answer = str(answer)
        docs.append({"doc_id": str(i), "question": e["question"], "answer": answer, "metadata": meta,
                     "gold": verifiers.gold_ref(name, size, seed, config, i, answer, e["question"])})
    cfg = f" config={json.dumps(config, sort_keys=True)}" if config else ""
    return docs, f"reasoning_gym {name} size={size} seed={seed}{cfg} (reasoning-gym {verifiers.version()})"
