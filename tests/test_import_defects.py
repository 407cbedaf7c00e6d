"""The peer-import report's defects: refusals that wrote a spec anyway, noise for features the config
turns off, methods ftspec does not train accepted as SFT, low-bit AdamW mapped to 32-bit."""

from __future__ import annotations

import pytest
from ftspec.compiler.author.importers import ImportOptions, translate
from ftspec.compiler.cli import main
from ftspec.compiler.core.loader import load_spec

AXOLOTL = """base_model: NousResearch/Llama-3.2-1B
datasets:
  - path: data/train.jsonl
    type: chat_template
adapter: lora
"""


def _translate(tmp_path, text: str, tool: str = "axolotl"):
    config = tmp_path / "cfg.yaml"
    config.write_text(text)
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "train.jsonl").write_text('{"messages": []}\n')
    return translate(tool, load_spec(config), ImportOptions(output=tmp_path / "out.yaml"))


@pytest.mark.parametrize(
    ("extra", "what"),
    [
        ("processor_type: AutoProcessor\n", "vision"),
        ("qat:\n  weight_dtype: int8\n", "quantization-aware"),
        ("unfrozen_parameters:\n  - ^lm_head.weight$\n", "subset"),
    ],
)
def test_configs_for_methods_ftspec_does_not_train_are_refused(tmp_path, extra, what):
    result = _translate(tmp_path, AXOLOTL + extra)
    refusals = [d for d in result.diagnostics if d.code == "FT0906"]
    assert refusals and what in refusals[0].message and refusals[0].line == AXOLOTL.count("\n") + 1


def test_a_refused_import_writes_no_spec(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"messages": []}\n')
    (tmp_path / "cfg.yaml").write_text(AXOLOTL + "processor_type: AutoProcessor\n")
    code = main(["import", "axolotl", str(tmp_path / "cfg.yaml"), "-o", str(tmp_path / "out.yaml")])
    assert code == 1 and not (tmp_path / "out.yaml").exists()
    assert "FT0906" in capsys.readouterr().out


def test_features_turned_off_are_info_not_warnings(tmp_path):
    result = _translate(tmp_path, AXOLOTL + "lora_mlp_kernel: false\nactivation_offloading: false\n")
    notes = [d for d in result.diagnostics if d.code == "FT0901"]
    assert notes and all(d.severity == "info" for d in notes), [(d.message, d.severity) for d in notes]


@pytest.mark.parametrize("name", ["adamw_torch_8bit", "ao_adamw_8bit", "adamw_torch_4bit"])
def test_low_bit_adamw_stays_low_bit(tmp_path, name):
    result = _translate(tmp_path, AXOLOTL + f"optimizer: {name}\n")
    assert "optimizer: adamw_8bit" in result.text


LLAMAFACTORY_FULL = """model_name_or_path: Qwen/Qwen3-4B-Instruct-2507
trust_remote_code: true
stage: sft
do_train: true
finetuning_type: full
dataset: identity
template: qwen3
bf16: true
"""


def test_llamafactory_full_bf16_is_mixed_precision_and_boilerplate_remote_code_is_dropped(tmp_path):
    result = _translate(tmp_path, LLAMAFACTORY_FULL, tool="llamafactory")
    assert "precision: bf16-mixed" in result.text  # HF Trainer's bf16 keeps fp32 master weights
    assert "trust_remote_code" not in __import__("yaml").safe_load(result.text)["model"]
    note = [d for d in result.diagnostics if d.code == "FT0905" and "trust_remote_code" in d.message]
    assert note and note[0].line == 2


def test_torchtune_distributed_recipes_keep_their_gpu_count():
    """peer-import defect 2: torchtune multi-GPU recipes were written as 1 GPU with strategy auto."""
    from pathlib import Path

    config = Path(__file__).parent / "fixtures" / "external-configs" / "torchtune__8B_lora.yaml"
    result = translate("torchtune", load_spec(config), ImportOptions(output=config.with_suffix(".out.yaml")))
    data = __import__("yaml").safe_load(result.text)
    assert (
        data["hardware"]["gpus_per_node"] == 2 and data["hardware"]["strategy"] == "fsdp"
    )  # its launch line
    single = config.with_name("torchtune__8B_qlora_single_device.yaml")
    result = translate("torchtune", load_spec(single), ImportOptions(output=single.with_suffix(".out.yaml")))
    assert __import__("yaml").safe_load(result.text)["hardware"]["gpus_per_node"] == 1


def test_llamafactory_data_is_found_from_the_repository_root(tmp_path, monkeypatch):
    """peer-import defect 5: dataset_dir (default data) is read from the launch folder, not beside the
    config; in an unmodified clone every dataset was guessed as alpaca."""
    import json

    (tmp_path / ".git").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text(
        json.dumps({"mine": {"file_name": "mine.json", "formatting": "sharegpt"}})
    )
    (tmp_path / "data" / "mine.json").write_text("[]")
    config = tmp_path / "examples" / "train_full" / "cfg.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(LLAMAFACTORY_FULL.replace("dataset: identity", "dataset: mine"))
    monkeypatch.chdir(tmp_path / "examples")  # launched from elsewhere: the repository root still counts
    result = translate("llamafactory", load_spec(config), ImportOptions(output=config.with_name("out.yaml")))
    assert __import__("yaml").safe_load(result.text)["dataset"]["format"] == "sharegpt"
