"""`ftspec import`: every shipped peer config translates to a spec that lints, with every dropped or
changed key reported at its line in the source config, and the written specs match golden files."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from ftspec.compiler.author.importers import ImportOptions, translate
from ftspec.compiler.cli import main
from ftspec.compiler.core.loader import load_spec, load_text
from ftspec.compiler.lint.lint import LintOptions, lint_loaded

ROOT = Path(__file__).resolve().parent
CONFIGS = ROOT / "fixtures" / "external-configs"
OWN = ROOT / "fixtures" / "import"
GOLDEN = ROOT / "golden" / "import"
TOOL_OF = {"axolotl": "axolotl", "llamafactory": "llamafactory", "torchtune": "torchtune"}

# Values that say "do what ftspec always does": nothing to write, nothing to report.
SILENT_OK = {("stage", "sft"), ("quantization_method", "bnb")}
# Nulls that mean something in the peer (torchtune `seed: null` = a random seed each run): reported.
MEANINGFUL_NULL = {"torchtune": {"seed"}}

PEER_CONFIGS = sorted(p for p in CONFIGS.iterdir() if p.suffix in (".yml", ".yaml") and "__" in p.name)


def _tool(path: Path) -> str:
    return TOOL_OF[path.name.split("__")[0]]


def _import(config: Path, out_dir: Path, **options):
    """Translate `config` (copied with its folder into out_dir) and return (result, spec path)."""
    workdir = out_dir / "repo"
    shutil.copytree(config.parent, workdir, dirs_exist_ok=True)
    source = load_spec(workdir / config.name)
    spec_path = workdir / (config.stem + ".ftspec.yaml")
    result = translate(
        options.pop("tool", None) or _tool(config), source, ImportOptions(output=spec_path, **options)
    )
    return result, spec_path


def _lint(text: str, path: Path):
    options = LintOptions(allow_remote_code=True, repo_root=path.parent)
    return lint_loaded(load_text(text, str(path)), options).diagnostics


def test_every_peer_config_is_present():
    tools = {_tool(p) for p in PEER_CONFIGS}
    assert tools == {"axolotl", "llamafactory", "torchtune"}
    assert len(PEER_CONFIGS) == 10


@pytest.mark.parametrize("config", PEER_CONFIGS, ids=lambda p: p.name)
def test_peer_config_imports_to_a_spec_that_lints(config, tmp_path):
    result, spec_path = _import(config, tmp_path)
    source = result.source
    assert not [d for d in result.diagnostics if d.severity == "error"], result.diagnostics
    diags = _lint(result.text, spec_path)
    errors = [d for d in diags if d.severity == "error"]
    # The one lint error that can remain: data files the config reads from the Hub (or from a
    # dataset_info.json that is not here). Each was reported with the path to export it to.
    reported = {
        m.group(1)
        for d in result.diagnostics
        if d.code in ("FT0904", "FT0907")
        for m in [re.search(r"(data/[\w.\-]+\.jsonl)", d.message + " " + (d.hint or ""))]
        if m
    }
    assert {d.code for d in errors} <= {"FT0230"}, errors
    for d in errors:
        missing = re.search(r"'([^']+)'", d.message).group(1)
        assert missing in reported or missing.startswith("data/"), (missing, reported)
        (spec_path.parent / missing).parent.mkdir(parents=True, exist_ok=True)
        (spec_path.parent / missing).write_text("")
    after = [d for d in _lint(result.text, spec_path) if d.severity == "error"]
    assert after == [], after
    # Never a silent drop: every non-empty top-level key is either cited in a comment of the spec
    # (`line N`) or has a diagnostic at its line in the source config.
    cited = {int(n) for n in re.findall(r"line (\d+)", result.text)}
    flagged = {d.line for d in result.diagnostics if d.file == source.path}
    for key, value in source.data.items():
        if value is None or value == "" or value == [] or value == {} or value is False or value == 0:
            continue  # unset, or switched off (load_in_4bit: false, val_set_size: 0): nothing to carry
        if isinstance(value, (str, int, float)) and (key, value) in SILENT_OK:
            continue
        line = source.key_pos[f"/{key}"][0]
        inner = {ln for ptr, (ln, _c) in source.key_pos.items() if ptr.startswith(f"/{key}/")}
        assert line in cited | flagged or inner & (cited | flagged), (
            f"{config.name}: '{key}' (line {line}) dropped silently"
        )
    # Empty values mean "unset": no diagnostic for them.
    empty_lines = {
        source.key_pos[f"/{k}"][0]
        for k, v in source.data.items()
        if (v is None or v == "") and k not in MEANINGFUL_NULL.get(_tool(config), set())
    }
    assert not (empty_lines & flagged), sorted(empty_lines & flagged)


@pytest.mark.parametrize("config", PEER_CONFIGS, ids=lambda p: p.name)
def test_written_spec_matches_golden(config, tmp_path):
    result, _ = _import(config, tmp_path)
    golden = GOLDEN / (config.stem + ".ftspec.yaml")
    if os.environ.get("FTSPEC_UPDATE_GOLDEN"):
        golden.write_text(result.text, encoding="utf-8")
    assert result.text == golden.read_text(encoding="utf-8")


def _data(config_name: str, tmp_path: Path) -> tuple[dict, list]:
    result, _ = _import(CONFIGS / config_name, tmp_path)
    return result.data, result.diagnostics


def _at(diags, code: str, line: int):
    return [d for d in diags if d.code == code and d.line == line]


def test_axolotl_qlora_meaning(tmp_path):
    data, diags = _data("axolotl__qlora-1b.yml", tmp_path)
    assert data["adapter"] == {
        "method": "qlora",
        "r": 32,
        "alpha": 16,
        "dropout": 0.05,
        "target_modules": ["gate_proj", "down_proj", "up_proj", "q_proj", "v_proj", "k_proj", "o_proj"],
        "dora": False,
        "quantization": {"bits": 4},
    }
    t = data["training"]
    assert (t["optimizer"], t["scheduler"], t["learning_rate"], t["warmup_ratio"]) == (
        "adamw_8bit",
        "cosine",
        0.0002,
        0.1,
    )
    assert (t["micro_batch_size"], t["gradient_accumulation_steps"], t["epochs"]) == (2, 4, 1)
    assert (t["sequence_len"], t["packing"], t["precision"], t["gradient_checkpointing"]) == (
        2048,
        True,
        "bf16",
        True,
    )
    # Axolotl drops rows longer than sequence_len (excess_length_strategy unset); ftspec would truncate
    assert data["dataset"] == {
        "format": "alpaca",
        "train": "data/teknium__GPT4-LLM-Cleaned.jsonl",
        "eval_split": 0.1,
        "truncation": "drop",
    }
    # Axolotl has no early stopping unless asked; ftspec's default (3) would stop runs the original finished
    assert t["early_stopping_patience"] == 0
    assert data["model"]["chat_template"] == "alpaca"
    assert _at(diags, "FT0905", 48)  # bf16: auto resolved, with a note at its line
    assert _at(diags, "FT0904", 9)  # the Hub dataset, at its path
    assert _at(diags, "FT0901", 56) and _at(diags, "FT0901", 56)[0].severity == "warning"  # loss_watchdog
    assert "adamw_bnb_8bit" in _at(diags, "FT0905", 44)[0].message


def test_axolotl_8bit_lora_is_qlora_with_8_bits(tmp_path):
    data, diags = _data("axolotl__instruct-lora-8b.yml", tmp_path)
    assert data["adapter"]["method"] == "qlora" and data["adapter"]["quantization"] == {"bits": 8}
    assert data["model"]["chat_template"] == "llama3"
    assert data["dataset"]["format"] == "chatml"  # type: chat_template with messages/role/content
    assert _at(diags, "FT0905", 8)


def test_axolotl_fsdp_and_duplicates(tmp_path):
    data, diags = _data("axolotl__qlora-fsdp-70b.yaml", tmp_path)
    assert data["hardware"]["strategy"] == "fsdp" and data["hardware"]["offload"] == "optimizer_and_params"
    assert data["hardware"]["gpus_per_node"] == 8
    assert data["training"]["learning_rate"] == 1e-05 and data["training"]["optimizer"] == "adamw_torch"
    data, diags = _data("axolotl__lora-1b-deduplicate-sft.yml", tmp_path / "b")
    assert data["dataset"]["train"] == "data/mhenrichsen__alpaca_2k_test.jsonl"
    assert "eval_split" not in data["dataset"]  # val_set_size: 0.0 = no split
    assert _at(diags, "FT0901", 33)  # lora_modules_to_save cannot be kept
    assert len([d for d in diags if d.code == "FT0904"]) == 1


def test_llamafactory_defaults_and_deepspeed_name(tmp_path):
    data, diags = _data("llamafactory__qwen3_lora_sft_ds3.yaml", tmp_path)
    assert (
        data["adapter"]["alpha"] == 16
        and data["adapter"]["dropout"] == 0.0
        and data["adapter"]["dora"] is False
    )
    assert data["adapter"]["target_modules"] == "all-linear"
    assert data["training"]["warmup_ratio"] == 0.1 and "warmup_steps" not in data["training"]
    assert data["hardware"]["strategy"] == "deepspeed" and data["hardware"]["zero_stage"] == 3
    assert _at(diags, "FT0907", 11)  # the DeepSpeed file is not here: stage from its name, said so
    # LLaMA-Factory's boilerplate trust_remote_code: true is dropped for Qwen3 (built into transformers)
    assert "trust_remote_code" not in data["model"] and _at(diags, "FT0905", 3)
    assert data["dataset"]["train"] == ["data/identity.jsonl", "data/alpaca_en_demo.jsonl"]
    assert _at(diags, "FT0901", 17)  # max_samples
    data, _ = _data("llamafactory__qwen3_lora_sft_otfq.yaml", tmp_path / "b")
    assert data["adapter"]["method"] == "qlora" and data["adapter"]["quantization"] == {"bits": 4}


def test_torchtune_meaning(tmp_path):
    data, diags = _data("torchtune__8B_lora.yaml", tmp_path)
    assert data["model"]["id"] == "meta-llama/Meta-Llama-3.1-8B-Instruct"
    assert data["adapter"]["target_modules"] == [
        "q_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert (data["adapter"]["r"], data["adapter"]["alpha"], data["adapter"]["dropout"]) == (8, 16, 0.0)
    t = data["training"]
    assert (t["max_grad_norm"], t["weight_decay"], t["warmup_steps"], t["learning_rate"]) == (
        0,
        0.01,
        100,
        0.0003,
    )
    assert t["gradient_checkpointing"] is False and t["precision"] == "bf16"
    assert data["dataset"]["eval_split"] == 0.05 and data["dataset"]["format"] == "alpaca"
    assert data["output"]["save"] == "both"
    assert _at(diags, "FT0902", 20)  # absolute /tmp output_dir cannot be kept
    # alpaca_cleaned_dataset trains on the prompt by default (train_on_input=True): loss_on: all
    assert t["loss_on"] == "all"
    assert _at(diags, "FT0905", 55) and any("train_on_input" in d.message for d in _at(diags, "FT0905", 55))
    data, _ = _data("torchtune__8B_qlora_single_device.yaml", tmp_path / "b")
    assert data["adapter"]["method"] == "qlora" and data["training"]["gradient_checkpointing"] is True
    assert data["training"]["loss_on"] == "all"


def test_local_data_deepspeed_file_and_absolute_val_size(tmp_path):
    result, spec_path = _import(OWN / "axolotl-local" / "config.yml", tmp_path, tool="axolotl")
    data = result.data
    assert data["dataset"] == {
        "format": "chatml",
        "train": "data/train.jsonl",
        "eval_split": 0.1,
        "truncation": "drop",
    }
    assert data["hardware"]["zero_stage"] == 3 and data["hardware"]["offload"] == "optimizer_and_params"
    assert data["adapter"]["dora"] is True and data["training"]["learning_rate"] == 0.0002
    json_notes = [d for d in result.diagnostics if d.file.endswith("zero3.json")]
    assert json_notes and json_notes[0].severity == "info" and json_notes[0].line == 2
    assert _at(result.diagnostics, "FT0901", 24)  # foo_bar, an unknown key
    assert not _at(result.diagnostics, "FT0901", 23)  # wandb_project: empty, so unset
    assert not [d for d in _lint(result.text, spec_path) if d.severity == "error"]


def test_llamafactory_dataset_info_beside_config(tmp_path):
    result, spec_path = _import(OWN / "llamafactory-info" / "config.yaml", tmp_path, tool="llamafactory")
    assert result.data["dataset"]["format"] == "sharegpt"
    assert result.data["dataset"]["train"] == "data/my_chat.json"
    assert result.data["adapter"]["target_modules"] == ["q_proj", "v_proj"]
    assert result.data["training"]["optimizer"] == "paged_adamw_8bit"
    assert result.data["training"]["scheduler"] == "linear"  # transformers' default, written explicitly
    assert not [d for d in _lint(result.text, spec_path) if d.severity == "error"]


def test_cli_writes_spec_and_exit_codes(tmp_path, capsys):
    shutil.copytree(OWN / "axolotl-local", tmp_path / "repo")
    config = tmp_path / "repo" / "config.yml"
    out = tmp_path / "repo" / "spec.yaml"
    argv = [
        "import",
        "axolotl",
        str(config),
        "-o",
        str(out),
        "--gpu",
        "H100-80GB",
        "--gpus",
        "8",
        "--repo-root",
        str(tmp_path / "repo"),
    ]
    assert main(argv) == 0
    text = out.read_text()
    assert "gpu: H100-80GB" in text and "# axolotl lora_r, line 11" in text
    assert main(argv) == 2  # exists: refuses without --force
    assert main([*argv, "--force", "--format", "json"]) == 0
    report = capsys.readouterr().out
    assert '"FT0901"' in report
    assert not list(out.parent.glob(".spec.yaml.*"))  # no temporary file left behind
    assert main(["import", "axolotl", str(tmp_path / "missing.yml"), "-o", str(tmp_path / "x.yaml")]) == 2
    bad = tmp_path / "bad.yml"
    bad.write_text("base_model: [unclosed\n")
    assert main(["import", "axolotl", str(bad), "-o", str(tmp_path / "y.yaml")]) == 1
    assert not (tmp_path / "y.yaml").exists()


def test_cli_exit_1_when_spec_would_not_lint(tmp_path):
    shutil.copytree(CONFIGS, tmp_path / "repo")
    out = tmp_path / "repo" / "spec.yaml"
    rc = main(
        [
            "import",
            "axolotl",
            str(tmp_path / "repo" / "axolotl__qlora-1b.yml"),
            "-o",
            str(out),
            "--repo-root",
            str(tmp_path / "repo"),
        ]
    )
    assert rc == 1 and out.is_file()  # the Hub dataset is not exported yet: FT0230 remains


def test_unsupported_training_kind_is_an_error(tmp_path):
    """KTO (and GRPO, reward modelling, ...) stay refused at their line; so does a dataset type with
    no equivalent."""
    config = tmp_path / "kto.yml"
    config.write_text(
        "base_model: meta-llama/Llama-3.2-1B\nrl: kto\nadapter: lora\n"
        "datasets:\n  - path: some/prefs\n    type: chatml.intel\n"
    )
    result = translate("axolotl", load_spec(config), ImportOptions(output=tmp_path / "s.yaml"))
    errors = [(d.code, d.line) for d in result.diagnostics if d.severity == "error"]
    assert ("FT0906", 2) in errors and ("FT0906", 6) in errors


@pytest.mark.parametrize(
    "tool, text, objective, beta, refused_line",
    [
        ("axolotl", "rl: dpo\nrl_beta: 0.05\n", "dpo", 0.05, None),
        ("axolotl", "rl: orpo\norpo_alpha: 0.2\n", "orpo", 0.2, None),
        ("axolotl", "rl: grpo\n", None, None, 1),
        ("llamafactory", "stage: dpo\npref_beta: 0.2\n", "dpo", 0.2, None),
        ("llamafactory", "stage: dpo\npref_loss: orpo\n", "orpo", None, None),
        ("llamafactory", "stage: dpo\npref_loss: simpo\n", None, None, 2),
        ("llamafactory", "stage: kto\n", None, None, 1),
        ("llamafactory", "stage: rm\n", None, None, 1),
    ],
)
def test_preference_configs_map_to_the_objective(tmp_path, tool, text, objective, beta, refused_line):
    """Axolotl rl: dpo|orpo and LLaMA-Factory stage: dpo (pref_loss sigmoid|orpo) become
    training.objective and beta over preference data; other RL methods are refused at their line."""
    rest = (
        "base_model: meta-llama/Llama-3.2-1B\nadapter: lora\ndatasets:\n  - path: data/p.jsonl\n    type: chat_template\n"
        if tool == "axolotl"
        else "model_name_or_path: Qwen/Qwen3-4B-Instruct-2507\nfinetuning_type: lora\ndataset: prefs\n"
    )
    config = tmp_path / "c.yaml"
    config.write_text(text + rest)
    result = translate(tool, load_spec(config), ImportOptions(output=tmp_path / "s.yaml"))
    errors = [(d.code, d.line) for d in result.diagnostics if d.code == "FT0906"]
    if refused_line is not None:
        assert ("FT0906", refused_line) in errors
        return
    assert errors == []
    training = result.data["training"]
    assert training["objective"] == objective and result.data["dataset"]["format"] == "preference"
    assert training.get("beta") == beta


@pytest.mark.parametrize(
    "tool, config",
    [
        ("axolotl", "axolotl__lora-1b.yml"),
        ("llamafactory", "llamafactory__qwen3_lora_sft.yaml"),
        ("torchtune", "torchtune__8B_lora.yaml"),
    ],
)
def test_no_early_stopping_the_original_did_not_have(tool, config, tmp_path):
    """Regression: imported specs with an eval set inherited ftspec's early_stopping_patience: 3, so
    they could stop before the epochs the original config trains."""
    from ftspec.compiler.core.resolve import resolve

    result, _ = _import(CONFIGS / config, tmp_path, tool=tool)
    assert resolve(result.data)["training"]["early_stopping_patience"] == 0
    assert any("early_stopping_patience: 0" in d.message for d in result.diagnostics if d.code == "FT0903")


@pytest.mark.parametrize(
    "value, expected, severity",
    [("truncate", "truncate", None), ("drop", "drop", None), ("raise", "drop", "warning")],
)
def test_axolotl_excess_length_strategy(value, expected, severity, tmp_path):
    (tmp_path / "src").mkdir()
    config = tmp_path / "src" / "cfg.yml"
    config.write_text((CONFIGS / "axolotl__lora-1b.yml").read_text() + f"excess_length_strategy: {value}\n")
    result, _ = _import(config, tmp_path, tool="axolotl")
    assert result.data["dataset"]["truncation"] == expected
    changed = [d for d in result.diagnostics if d.code == "FT0902" and "excess_length_strategy" in d.message]
    assert (changed[0].severity if changed else None) == severity
    assert not any(d.code == "FT0901" and "excess_length_strategy" in d.message for d in result.diagnostics)


# --- peer defaults that differ from ftspec's are written explicitly (issue 8) ---------------------


def _import_text(tmp_path: Path, tool: str, text: str, name: str = "cfg.yaml"):
    (tmp_path / "src").mkdir(exist_ok=True)
    config = tmp_path / "src" / name
    config.write_text(text)
    result, _ = _import(config, tmp_path, tool=tool)
    return result


def _written(result) -> str:
    return " ".join(d.message for d in result.diagnostics if d.code == "FT0903")


TORCHTUNE_MIN = """model:
  _component_: torchtune.models.llama3_1.lora_llama3_1_8b
  lora_attn_modules: [q_proj, v_proj]
dataset:
  _component_: {builder}
{extra}optimizer:
  _component_: {optimizer}
{opt_extra}epochs: 1
batch_size: 2
gradient_accumulation_steps: 1
"""


@pytest.mark.parametrize(
    "builder, extra, expected",
    [
        # torchtune/datasets/_alpaca.py: alpaca_dataset(..., train_on_input: bool = True)
        ("torchtune.datasets.alpaca_dataset", "", "all"),
        # alpaca_cleaned_dataset = partial(alpaca_dataset, source="yahma/alpaca-cleaned")
        ("torchtune.datasets.alpaca_cleaned_dataset", "", "all"),
        ("torchtune.datasets.alpaca_cleaned_dataset", "  train_on_input: False\n", "assistant"),
        ("torchtune.datasets.alpaca_dataset", "  train_on_input: null\n", "all"),
        # _slimorca.py and _chat.py: train_on_input: bool = False
        ("torchtune.datasets.slimorca_dataset", "", "assistant"),
        ("torchtune.datasets.slimorca_dataset", "  train_on_input: True\n", "all"),
        (
            "torchtune.datasets.chat_dataset",
            "  source: json\n  data_files: d.jsonl\n  conversation_style: openai\n"
            "  conversation_column: messages\n",
            "assistant",
        ),
    ],
)
def test_torchtune_builder_train_on_input_default(builder, extra, expected, tmp_path):
    """Regression: alpaca builders default to train_on_input=True, so an import that only looked at an
    explicit `train_on_input: True` turned the shipped configs into assistant-only loss."""
    from ftspec.compiler.core.resolve import resolve

    text = TORCHTUNE_MIN.format(
        builder=builder, extra=extra, optimizer="torch.optim.AdamW", opt_extra="  lr: 3e-4\n"
    )
    result = _import_text(tmp_path, "torchtune", text)
    assert not [d for d in result.diagnostics if d.severity == "error"], result.diagnostics
    assert resolve(result.data)["training"]["loss_on"] == expected
    from_default = "train_on_input" not in extra or "null" in extra
    if from_default and expected == "all":  # written, commented and reported as torchtune's default
        assert "training.loss_on: all" in _written(result)
        assert "torchtune default for unset dataset.train_on_input" in result.text
        assert [
            d for d in _at(result.diagnostics, "FT0905", 5) if "train_on_input" in d.message
        ]  # the builder
    if not from_default:
        assert re.search(r"loss_on: \w+ +# torchtune dataset.train_on_input, line \d+", result.text)


def test_torchtune_dataset_table_has_every_default_and_source():
    from ftspec.compiler.author.importers.common import load_table

    table = load_table("import_torchtune.json")
    for builder, entry in table["datasets"].items():
        if builder.startswith("$"):
            continue
        assert set(entry["defaults"]) == {"train_on_input", "packed"}, builder
        assert "train_on_input" in entry["source"], builder
    for name, entry in table["optimizers"].items():
        if not name.startswith("$"):
            assert entry["source"] and "lr" in entry["defaults"], name
    for table_name in ("import_torchtune.json", "import_axolotl.json", "import_llamafactory.json"):
        for entry in load_table(table_name)["defaults"]:
            assert entry.get("source"), (table_name, entry["key"])


@pytest.mark.parametrize(
    "optimizer, opt_extra, lr, weight_decay",
    [
        ("torch.optim.AdamW", "", 0.001, 0.01),  # torch.optim.AdamW(lr=1e-3, weight_decay=1e-2)
        ("torch.optim.SGD", "", 0.001, 0.0),  # torch.optim.SGD(lr=1e-3, weight_decay=0): not AdamW's 0.01
        ("bitsandbytes.optim.PagedAdamW8bit", "  lr: 2e-5\n", 2e-05, 0.01),
    ],
)
def test_torchtune_optimizer_and_lora_defaults(optimizer, opt_extra, lr, weight_decay, tmp_path):
    from ftspec.compiler.core.resolve import resolve

    text = TORCHTUNE_MIN.format(
        builder="torchtune.datasets.slimorca_dataset", extra="", optimizer=optimizer, opt_extra=opt_extra
    )
    result = _import_text(tmp_path, "torchtune", text)
    spec = resolve(result.data)
    assert (spec["training"]["learning_rate"], spec["training"]["weight_decay"]) == (lr, weight_decay)
    # torchtune's lora builders: lora_rank=8 (ftspec's default is 16), lora_alpha=16, lora_dropout=0.0
    assert (spec["adapter"]["r"], spec["adapter"]["alpha"], spec["adapter"]["dropout"]) == (8, 16, 0.0)
    assert "adapter.r: 8" in _written(result)


LLAMAFACTORY_MIN = "model_name_or_path: Qwen/Qwen2.5-0.5B\nstage: sft\nfinetuning_type: lora\ndataset: foo\n"


@pytest.mark.parametrize(
    "extra, length, truncation",
    [
        ("", 2048, "truncate"),  # data_args.py cutoff_len default 2048; the supervised processor cuts
        ("cutoff_len: 1024\n", 1024, "truncate"),
        ("cutoff_len: 1024\npacking: true\n", 1024, "drop"),  # the packed processor drops longer examples
        ("neat_packing: true\n", 2048, "drop"),
    ],
)
def test_llamafactory_cutoff_len_maps_to_sequence_len_and_truncation(extra, length, truncation, tmp_path):
    from ftspec.compiler.core.resolve import resolve

    result = _import_text(tmp_path, "llamafactory", LLAMAFACTORY_MIN + extra)
    assert result.data["training"]["sequence_len"] == length
    assert result.data["dataset"]["truncation"] == truncation
    assert resolve(result.data)["training"]["loss_on"] == "assistant"  # train_on_prompt defaults to False
    notes = [d for d in result.diagnostics if d.code == "FT0905" and "cutoff_len" in d.message]
    assert len(notes) == 1
    note = notes[0]
    assert f"training.sequence_len: {length}" in note.message and f"truncation: {truncation}" in note.message
    if "cutoff_len" in extra:
        assert note.line == extra.split("\n").index(f"cutoff_len: {length}") + 5
        assert f"# llamafactory cutoff_len, line {note.line}" in result.text
    else:
        assert "llamafactory default cutoff_len: 2048" in result.text


def test_llamafactory_train_on_prompt(tmp_path):
    result = _import_text(tmp_path, "llamafactory", LLAMAFACTORY_MIN + "train_on_prompt: true\n")
    assert result.data["training"]["loss_on"] == "all"


@pytest.mark.parametrize(
    "drop, message_keys",
    [
        ("", set()),
        ("learning_rate", {"learning_rate"}),
        ("lora_r lora_alpha", {"lora_r", "lora_alpha"}),
    ],
)
def test_axolotl_keys_without_default_are_reported(drop, message_keys, tmp_path):
    """Axolotl has no default for learning_rate, lora_r or lora_alpha: the spec's value is ftspec's, said so."""
    from ftspec.compiler.core.resolve import resolve

    lines = [
        "base_model: meta-llama/Llama-3.2-1B",
        "adapter: lora",
        "learning_rate: 0.0001",
        "lora_r: 8",
        "lora_alpha: 16",
        "datasets:",
        "  - path: x/y",
        "    type: alpaca",
    ]
    lines = [ln for ln in lines if ln.split(":")[0] not in drop.split()]
    result = _import_text(tmp_path, "axolotl", "\n".join(lines) + "\n", name="cfg.yml")
    said = {
        k
        for d in result.diagnostics
        if d.code == "FT0905" and "has no default" in d.message
        for k in ("learning_rate", "lora_r", "lora_alpha")
        if d.message.startswith(k + " ")
    }
    assert said == message_keys
    assert all(d.severity == "warning" for d in result.diagnostics if "has no default" in d.message)
    spec = resolve(result.data)
    assert spec["training"]["loss_on"] == "assistant"  # train_on_inputs defaults to False in Axolotl


@pytest.mark.parametrize(
    "tool, text",
    [
        (
            "axolotl",
            "base_model: meta-llama/Llama-3.2-1B\nadapter: lora\nlearning_rate: 0.0001\nlora_r: 8\n"
            "lora_alpha: 16\ndatasets:\n  - path: x/y\n    type: alpaca\n",
        ),
        ("llamafactory", LLAMAFACTORY_MIN),
        (
            "torchtune",
            TORCHTUNE_MIN.format(
                builder="torchtune.datasets.alpaca_dataset",
                extra="",
                optimizer="torch.optim.AdamW",
                opt_extra="",
            ),
        ),
    ],
)
def test_minimal_config_trains_with_the_peers_defaults(tool, text, tmp_path):
    """Every default in the tool's table holds in the resolved spec of a config that sets none of them."""
    from ftspec.compiler.author.importers.common import load_table
    from ftspec.compiler.core.resolve import resolve

    result = _import_text(tmp_path, tool, text, name="cfg.yml" if tool == "axolotl" else "cfg.yaml")
    spec = resolve(result.data)
    for entry in load_table(f"import_{tool}.json")["defaults"]:
        node = spec
        for part in entry["field"].strip("/").split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if entry["key"] in ("lora_alpha", "model.lora_alpha") and tool == "llamafactory":
            continue
        assert node == entry["value"], (tool, entry["key"], node, entry["value"])


def test_torchtune_values_of_the_wrong_type_are_errors_not_crashes(tmp_path):
    text = TORCHTUNE_MIN.format(
        builder="torchtune.datasets.alpaca_dataset",
        extra="",
        optimizer="torch.optim.AdamW",
        opt_extra="  lr: abc\n  weight_decay: [1]\n",
    ).replace(
        "  lora_attn_modules: [q_proj, v_proj]\n", "  lora_attn_modules: [q_proj, v_proj]\n  lora_rank: x\n"
    )
    result = _import_text(tmp_path, "torchtune", text)
    dropped = {
        d.message.split("'")[1] for d in result.diagnostics if d.code == "FT0901" and d.severity == "error"
    }
    assert {"optimizer.lr", "optimizer.weight_decay", "model.lora_rank"} <= dropped
    comment = _import_text(
        tmp_path,
        "torchtune",
        TORCHTUNE_MIN.format(builder="$comment", extra="", optimizer="$comment", opt_extra=""),
        name="c.yaml",
    )
    assert any(d.code == "FT0909" or d.severity == "error" for d in comment.diagnostics)
