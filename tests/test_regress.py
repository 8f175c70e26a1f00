"""harness regress: the baseline file, the paired non-inferiority gate, exit codes and JUnit XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from harness.cli import main
from tests.test_compare import degrade, make_run


@pytest.fixture()
def base_run(tmp_path):
    rng = np.random.default_rng(11)
    correct = rng.random((80, 4)) < 0.6
    return make_run(tmp_path / "base", correct), correct


@pytest.fixture()
def baseline(tmp_path, base_run, capsys):
    run, _ = base_run
    path = tmp_path / "reports" / "baselines" / "gsm8k-cot.json"
    assert main(["regress", "--write-baseline", str(run), str(path)]) == 0
    assert "Baseline written" in capsys.readouterr().out
    return path


def _junit(path):
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    cases = root.findall("./testsuite/testcase")
    return root, cases


def test_baseline_file_format(baseline, base_run):
    from harness.analysis import compare

    run, correct = base_run
    doc = json.loads(baseline.read_text())
    assert doc["format"] == "reasoning-harness-baseline" and doc["format_version"] == 1
    assert (doc["task"], doc["spec_hash"], doc["model"]["id"], doc["n"], doc["n_problems"]) == ("gsm8k-cot", "spec-aaaa", "model-a", 4, 80)
    assert doc["doc_ids"] == [str(i) for i in range(80)]
    assert set(doc["scores"]) == {"strict", "flexible"}
    assert set(doc["scores"]["strict"]) == {"acc", "mean@4", "maj@4"}
    assert doc["scores"]["strict"]["acc"] == [int(c) for c in correct[:, 0]]
    per = compare.problem_scores(compare.load_run(run), "strict")
    assert doc["scores"]["strict"]["maj@4"] == pytest.approx([per["maj@4"][d] for d in doc["doc_ids"]])
    results = json.loads((run / "results.json").read_text())
    assert doc["metrics"]["strict"]["acc"]["value"] == pytest.approx(results["metrics"]["strict"]["acc"])
    assert doc["metrics"]["strict"]["acc"]["ci"] == pytest.approx(results["metrics"]["strict"]["acc_ci"])
    # small: one line per score list, a few KB here
    assert baseline.stat().st_size < 8000
    assert max(len(line) for line in baseline.read_text().splitlines()) < 1000


def test_write_baseline_metric_selection(tmp_path, base_run, capsys):
    run, _ = base_run
    p = tmp_path / "b.json"
    assert main(["regress", "--write-baseline", str(run), str(p), "--metric", "all", "--filter", "strict"]) == 0
    doc = json.loads(p.read_text())
    assert set(doc["scores"]) == {"strict"}
    assert {"acc", "mean@4", "maj@1", "maj@2", "maj@4", "pass@1", "pass@2", "pass@4"} <= set(doc["scores"]["strict"])
    assert main(["regress", "--write-baseline", str(run), str(p), "--metric", "maj@9"]) == 2
    assert "unknown metric" in capsys.readouterr().err


def test_identical_run_passes(baseline, base_run, tmp_path, capsys):
    run, _ = base_run
    junit = tmp_path / "junit.xml"
    rc = main(["regress", "--baseline", str(baseline), str(run), "--junit", str(junit)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "PASS" in out and "p = 1.0000" in out and "+0.0000" in out
    root, cases = _junit(junit)
    assert root.get("failures") == "0" and root.get("errors") == "0"
    assert [c.get("name") for c in cases] == ["strict/acc"] and cases[0].find("failure") is None


def test_degraded_run_fails_with_junit_failure(baseline, base_run, tmp_path, capsys):
    _, correct = base_run
    worse = make_run(tmp_path / "worse", degrade(correct, 0.6), model="model-b")
    junit = tmp_path / "ci" / "junit.xml"
    rc = main(["regress", "--baseline", str(baseline), str(worse), "--junit", str(junit), "--metric", "acc",
               "--metric", "mean@n", "--metric", "maj@4"])
    out = capsys.readouterr().out
    assert rc == 1
    para = next(line for line in out.splitlines() if line.startswith("gsm8k-cot · strict/acc"))
    base_acc = correct[:, 0].mean()
    worse_acc = degrade(correct, 0.6)[:, 0].mean()
    for piece in (f"baseline {base_acc:.4f}", f"run {worse_acc:.4f}", f"{worse_acc - base_acc:+.4f}", "95% CI", "p = ",
                  "FAIL: significantly below the baseline"):
        assert piece in para
    assert "regress: FAIL (3 of 3" in out
    root, cases = _junit(junit)
    assert root.get("tests") == "3" and root.get("failures") == "3"
    assert [c.get("name") for c in cases] == ["strict/acc", "strict/mean@n", "strict/maj@4"]
    fail = cases[0].find("failure")
    assert fail is not None and "significantly below the baseline" in fail.get("message") and "baseline" in fail.text


def test_small_drop_passes_but_margin_catches_it(baseline, base_run, tmp_path, capsys):
    _, correct = base_run
    c = correct.copy()
    flip = np.flatnonzero(c[:, 0])[:2]  # two problems' first sample turn wrong: 2/80 = 0.025 drop
    c[flip, 0] = False
    run = make_run(tmp_path / "slightly", c)
    assert main(["regress", "--baseline", str(baseline), str(run)]) == 0  # p = 1/4: not significant
    assert "p = 0.2500" in capsys.readouterr().out
    assert main(["regress", "--baseline", str(baseline), str(run), "--margin", "0.05"]) == 0
    assert "within the margin 0.05" in capsys.readouterr().out
    junit = tmp_path / "j.xml"
    assert main(["regress", "--baseline", str(baseline), str(run), "--margin", "0.02", "--junit", str(junit)]) == 1
    assert "by 0.0250, more than the margin 0.02" in capsys.readouterr().out
    _, cases = _junit(junit)
    assert "margin" in cases[0].find("failure").get("message")
    # a stricter alpha never fails more, a looser one can: alpha=0.3 makes p=0.25 significant
    assert main(["regress", "--baseline", str(baseline), str(run), "--alpha", "0.3"]) == 1
    capsys.readouterr()


def test_better_run_passes(baseline, base_run, tmp_path, capsys):
    _, correct = base_run
    better = make_run(tmp_path / "better", np.ones_like(correct), model="model-c")
    assert main(["regress", "--baseline", str(baseline), str(better), "--metric", "acc", "--filter", "strict",
                 "--filter", "flexible"]) == 0
    out = capsys.readouterr().out
    assert "strict/acc" in out and "flexible/acc" in out and "PASS (2 gated metrics)" in out


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err
    return err


def test_unusable_input_exits_2(baseline, base_run, tmp_path, capsys):
    run, correct = base_run
    assert main(["regress", "--baseline", str(tmp_path / "nope.json"), str(run)]) == 2
    _one_line_error(capsys, "no such baseline file")
    assert main(["regress", "--baseline", str(baseline), str(tmp_path / "norun")]) == 2
    _one_line_error(capsys, "no such run directory")
    assert main(["regress", "--baseline", str(baseline), str(run), "--metric", "foo@3"]) == 2
    _one_line_error(capsys, "unknown metric")
    assert main(["regress", "--baseline", str(baseline), str(run), "--metric", "pass@2"]) == 2
    _one_line_error(capsys, "no per-problem scores for strict/pass@2", "--write-baseline")
    assert main(["regress", "--baseline", str(baseline), str(run), "--filter", "boxed"]) == 2
    _one_line_error(capsys, "filter 'boxed'")
    other = make_run(tmp_path / "other", correct[:5], doc_ids=[f"x{i}" for i in range(5)])
    assert main(["regress", "--baseline", str(baseline), str(other)]) == 2
    _one_line_error(capsys, "share no problems")
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    assert main(["regress", "--baseline", str(bad), str(run)]) == 2
    _one_line_error(capsys, "not a baseline file")
    bad.write_text("{not json")
    assert main(["regress", "--baseline", str(bad), str(run)]) == 2
    _one_line_error(capsys, "not a valid baseline file")
    assert main(["regress", str(run)]) == 2
    _one_line_error(capsys, "usage")
    assert main(["regress", "--baseline", str(baseline), str(run), "--alpha", "1.5"]) == 2
    _one_line_error(capsys, "--alpha")
    # unusable input still leaves a JUnit report CI can show: one testcase with an <error>
    junit = tmp_path / "err.xml"
    assert main(["regress", "--baseline", str(tmp_path / "nope.json"), str(run), "--junit", str(junit)]) == 2
    capsys.readouterr()
    root, cases = _junit(junit)
    assert root.get("errors") == "1" and cases[0].find("error") is not None


def test_spec_hash_mismatch_refused_unless_forced(baseline, base_run, tmp_path, capsys):
    _, correct = base_run
    changed = make_run(tmp_path / "changed", correct, spec_hash="spec-bbbb")
    assert main(["regress", "--baseline", str(baseline), str(changed)]) == 2
    _one_line_error(capsys, "task spec", "--force")
    assert main(["regress", "--baseline", str(baseline), str(changed), "--force"]) == 0
    captured = capsys.readouterr()
    assert "gating anyway" in captured.err and "PASS" in captured.out


def test_partial_overlap_is_paired_on_shared_problems(baseline, base_run, tmp_path, capsys):
    _, correct = base_run
    subset = make_run(tmp_path / "subset", correct[:30], doc_ids=range(30))
    assert main(["regress", "--baseline", str(baseline), str(subset)]) == 0
    out = capsys.readouterr().out
    assert "30 shared problems (baseline has 80, run has 30)" in out
    assert f"baseline {correct[:30, 0].mean():.4f}" in out
