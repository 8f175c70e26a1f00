"""harness compare: run loading, the side-by-side and paired tables, refusal on different specs.

Run directories are written here in exactly the runner's format (samples.jsonl rows as
runner._sample_row writes them, results.json from runner.build_results, docs.jsonl), so the
numbers are the real metrics of those samples. `make_run` is reused by test_regress and
test_report_html.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import pytest

from harness import HarnessError
from harness.cli import main


def make_run(path: Path, correct, *, spec_hash: str = "spec-aaaa", model: str = "model-a", task: str = "gsm8k-cot",
             filters: Sequence[str] = ("strict", "flexible"), invalid=None, gen_tokens=None, texts=None,
             questions=None, doc_ids=None, ks=None, max_tokens: int = 512, seed: int = 0,
             spec: dict | None = None) -> Path:
    """A finished run directory for per-sample correctness `correct` (problems × n, of the first
    filter). `invalid` marks samples where the first filter extracts nothing (the others still
    extract the same answer). Gold of problem i is str(10 + i); a wrong answer is gold + 1 + j % 3."""
    from harness.runs.runner import build_results

    correct = np.asarray(correct, dtype=bool)
    P, n = correct.shape
    invalid = np.zeros_like(correct) if invalid is None else np.asarray(invalid, dtype=bool)
    rng = np.random.default_rng(seed)
    if gen_tokens is None:
        gen_tokens = rng.integers(20, 400, size=(P, n))
    gen_tokens = np.asarray(gen_tokens)
    doc_ids = [str(i) for i in range(P)] if doc_ids is None else [str(d) for d in doc_ids]
    path.mkdir(parents=True, exist_ok=True)
    rows, docs = [], []
    for i, d in enumerate(doc_ids):
        gold = str(10 + i)
        q = questions[i % len(questions)] if questions else f"Problem {d}: what is {5 + i} + 5?"
        docs.append({"doc_id": d, "doc": {"question": q, "answer": f"... #### {gold}"}, "target": gold,
                     "prompt_hash": f"h{d}", "prompt": f"Question: {q}\nAnswer:"})
        for j in range(n):
            ans = gold if correct[i, j] else str(10 + i + 1 + j % 3)
            answers, keys, scores = {}, {}, {}
            for k, f in enumerate(filters):
                if k == 0 and invalid[i, j]:
                    answers[f], keys[f], scores[f] = None, None, 0.0
                else:
                    answers[f], keys[f] = ans, ans
                    scores[f] = float(ans == gold)
            toks = int(gen_tokens[i, j])
            text = texts[i][j] if texts is not None else f"Let me think step by step. {5 + i} + 5 = {ans}.\n#### {ans}"
            rows.append({
                "doc_id": d, "sample_idx": j, "seed": 1000 * i + j, "prompt_hash": f"h{d}", "target": gold,
                "text": text, "finish_reason": "length" if toks >= max_tokens else "stop", "stop_reason": None,
                "prompt_tokens": 50, "cached_prompt_tokens": 0, "generated_tokens": toks, "ttft": 0.01,
                "latency": 0.1, "error": None, "answers": answers, "keys": keys, "scores": scores,
            })
    fake_spec = SimpleNamespace(sampling=SimpleNamespace(n=n), primary_filter=filters[0])
    grader = SimpleNamespace(filter_names=list(filters), comparator=SimpleNamespace(name="numeric"))
    results = build_results(fake_spec, rows, grader, ks)
    results.update({
        "task": task, "description": f"synthetic {task}", "spec_hash": spec_hash,
        "model": {"id": model, "path": f"/models/{model}", "source": "test", "revision": "r1"},
        "backend": {"name": "fake"}, "chat_template_hash": None,
        "sampling": {"n": n, "temperature": 0.7 if n > 1 else 0.0, "top_p": 1.0, "top_k": 0, "max_tokens": max_tokens,
                     "seed": seed},
        "seed": seed, "limit": None, "version": "test",
        "run": {"wall_time_s": 1.0, "generated_tokens": int(gen_tokens.sum()), "tokens_per_s": 1.0,
                "finished_at": "2025-01-01T00:00:00+0000"},
    })
    with open(path / "samples.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (path / "results.json").write_text(json.dumps(results, indent=2))
    (path / "docs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in docs), encoding="utf-8")
    (path / "run.json").write_text(json.dumps({"task": task, "spec_hash": spec_hash, "model": model}))
    if spec is not None:
        import yaml

        (path / "spec.yaml").write_text(f"# resolved task spec\n# spec_hash: {spec_hash}\n" + yaml.safe_dump(spec))
    return path


def degrade(correct, frac: float, seed: int = 1):
    """A copy with `frac` of the correct samples flipped to wrong."""
    c = np.array(correct, dtype=bool, copy=True)
    rng = np.random.default_rng(seed)
    flip = c & (rng.random(c.shape) < frac)
    c[flip] = False
    return c


@pytest.fixture()
def two_runs(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.random((60, 4)) < 0.6
    a = make_run(tmp_path / "a", base, model="model-a")
    b = make_run(tmp_path / "b", degrade(base, 0.5), model="model-b", seed=1)
    return a, b, base


def test_compare_tables(two_runs, tmp_path):
    from harness.analysis import compare
    from harness.scoring import stats

    a, b, base = two_runs
    cmp = compare.compare_runs([a, b], seed=3, n_boot=2000)
    assert [r.label for r in cmp.runs] == ["model-a", "model-b"]
    # side-by-side metrics: every metric of results.json, both runs, with the CI in the cell
    head, rows = compare.metrics_table(cmp)
    assert head == ["filter", "metric", "model-a", "model-b"]
    res_a = json.loads((a / "results.json").read_text())
    acc_row = next(r for r in rows if r[:2] == ["strict", "acc"])
    ci = res_a["metrics"]["strict"]["acc_ci"]
    assert acc_row[2] == f"{res_a['metrics']['strict']['acc']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"
    assert {r[1] for r in rows} >= {"acc", "mean@n", "maj@2", "maj@4", "pass@4", "invalid_rate", "mean_gen_tokens"}
    # paired rows: acc uses McNemar on first-sample correctness, recomputed independently here
    p = cmp.paired
    row = p[(p["filter"] == "strict") & (p["metric"] == "acc")].iloc[0]
    x, y = base[:, 0], degrade(base, 0.5)[:, 0]
    mc = stats.mcnemar_exact(x, y)
    assert row["test"] == "McNemar" and row["p_value"] == pytest.approx(mc.p_value)
    assert (row["a_only"], row["b_only"]) == (mc.a_only, mc.b_only)
    assert row["diff"] == pytest.approx(y.mean() - x.mean())
    assert row["ci_low"] <= row["diff"] <= row["ci_high"]
    assert row["n_shared"] == 60
    # maj@k and mean@n: paired through harness.metrics.per_problem_scores, sign-flip test
    mrow = p[(p["filter"] == "strict") & (p["metric"] == "mean@n")].iloc[0]
    assert mrow["diff"] == pytest.approx(degrade(base, 0.5).mean() - base.mean())
    assert mrow["test"] == "sign-flip"
    assert set(p["metric"]) == {"acc", "mean@n", "maj@2", "maj@4"}
    # generation and CoT-length sections
    g = cmp.generation
    assert list(g["samples"]) == [240, 240] and "invalid_rate[strict]" in g.columns
    assert cmp.lengths is not None and set(cmp.lengths["run"]) == {"model-a", "model-b"}
    assert cmp.lengths.groupby("run")["n"].sum().tolist() == [240, 240]


def test_compare_cli_writes_markdown_and_csv(two_runs, tmp_path, capsys):
    a, b, _ = two_runs
    md, cs = tmp_path / "out" / "cmp.md", tmp_path / "out" / "cmp.csv"
    rc = main(["compare", str(a), str(b), "--markdown", str(md), "--csv", str(cs), "--seed", "1", "--n-boot", "500"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Paired differences" in out and "McNemar" in out
    text = md.read_text()
    assert "## Metrics (value [95% CI])" in text and "| strict | acc |" in text and "## Accuracy by CoT length" in text
    rows = list(csv.DictReader(cs.open()))
    sections = {r["section"] for r in rows}
    assert sections == {"metric", "paired", "generation", "length"}
    paired = [r for r in rows if r["section"] == "paired" and r["metric"] == "acc" and r["filter"] == "strict"]
    assert len(paired) == 1 and float(paired[0]["p_value"]) <= 1.0


def test_compare_same_seed_is_deterministic(two_runs):
    from harness.analysis import compare

    a, b, _ = two_runs
    c1 = compare.compare_runs([a, b], seed=7, n_boot=500)
    c2 = compare.compare_runs([a, b], seed=7, n_boot=500)
    assert c1.paired[["ci_low", "ci_high"]].equals(c2.paired[["ci_low", "ci_high"]])


def test_compare_refuses_different_spec_hash(tmp_path, capsys):
    base = np.ones((5, 2), dtype=bool)
    a = make_run(tmp_path / "a", base, spec_hash="spec-1111")
    b = make_run(tmp_path / "b", base, spec_hash="spec-2222", model="model-b")
    rc = main(["compare", str(a), str(b)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "different task specs" in err and "--force" in err
    assert main(["compare", str(a), str(b), "--force", "--n-boot", "200"]) == 0
    assert "comparing anyway" in capsys.readouterr().out


def test_compare_refusal_says_where_specs_differ(tmp_path, capsys):
    base = np.ones((4, 2), dtype=bool)
    spec = {"task": "gsm8k-cot", "sampling": {"n": 2, "seed": 0, "temperature": 0.7}, "scoring": {"comparator": "numeric"}}
    a = make_run(tmp_path / "a", base, spec_hash="h1", spec=spec)
    b = make_run(tmp_path / "b", base, spec_hash="h2", spec={**spec, "sampling": {**spec["sampling"], "seed": 5}})
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[sampling.seed: 0 vs 5]" in err


def test_compare_unusable_input(tmp_path, capsys):
    a = make_run(tmp_path / "a", np.ones((3, 1), dtype=bool))
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(["compare", str(a), "--metric", "bogus@3"]) == 2
    assert "unknown metric" in capsys.readouterr().err
    assert main(["compare", str(a), "--filter", "nope"]) == 2
    assert "unknown filter" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty")]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_compare_partial_overlap_and_metric_selection(tmp_path):
    from harness.analysis import compare

    rng = np.random.default_rng(5)
    a = make_run(tmp_path / "a", rng.random((10, 8)) < 0.5, doc_ids=range(10))
    b = make_run(tmp_path / "b", rng.random((6, 8)) < 0.5, doc_ids=range(4, 10), model="model-b")
    cmp = compare.compare_runs([a, b], metrics=["acc", "maj@8"], filters=["strict"], n_boot=300)
    assert set(cmp.paired["metric"]) == {"acc", "maj@8"}
    assert set(cmp.paired["n_shared"]) == {6}
    assert set(cmp.metrics["metric"]) == {"acc", "maj@8"} and set(cmp.metrics["filter"]) == {"strict"}


def test_compare_labels_same_model(tmp_path):
    from harness.analysis import compare

    c = np.ones((3, 1), dtype=bool)
    a = make_run(tmp_path / "run1", c)
    b = make_run(tmp_path / "run2", c)
    cmp = compare.compare_runs([a, b], n_boot=100)
    assert [r.label for r in cmp.runs] == ["model-a@run1", "model-a@run2"]
    with pytest.raises(HarnessError):
        compare.compare_runs([])
