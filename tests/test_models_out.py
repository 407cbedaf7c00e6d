"""Models out and loggers (issue 17): one real training run from a Parquet file holding the demo data
and tool-calling records, with output.export [gguf] and report_to [tensorboard, wandb]. The GGUF loads
in transformers with the merged model's logits, the Modelfile is beside it with the model card, W&B
writes offline files, TensorBoard tags are grouped with hyperparameters, metrics.jsonl rows follow
their schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ftspec.runtime import export
from ftspec.runtime.train import Metrics
from runtime_helpers import ROOT, env_with, launch, metrics, run_json, write_spec

SCHEMA = json.loads((ROOT / "schemas" / "metrics-row.v1.schema.json").read_text(encoding="utf-8"))
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def tool_row(i: int) -> dict:
    city = f"City{i}"
    return {
        "tools": json.dumps([WEATHER]),  # a JSON string column, as CSV and many Parquet exports hold it
        "messages": [
            {"role": "user", "content": f"Weather in {city}?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": f"c{i}",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": f"c{i}", "content": "sunny"},
            {"role": "assistant", "content": f"Sunny in {city}."},
        ],
    }


def test_metrics_rows_follow_their_schema_and_sinks_group_tags(tmp_path, monkeypatch):
    """Metrics alone (no training): rows validate, TensorBoard has train/ and eval/ tags and hparams,
    W&B writes an offline run."""
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    m = Metrics(tmp_path, ["tensorboard", "wandb"], True, lambda d: None, {"learning_rate": 0.003, "r": 8})
    m.write({"step": 2, "loss": 1.5, "learning_rate": 0.003, "grad_norm": None, "world_size": 2}, "train")
    m.write({"step": 2, "eval_loss": 1.7, "eval_perplexity": 5.47, "world_size": 2}, "eval")
    m.close()
    rows = metrics(tmp_path)
    for row in rows:
        jsonschema.validate(row, SCHEMA)
    assert [r["type"] for r in rows] == ["train", "eval"]
    _assert_tensorboard(tmp_path / "tensorboard")
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))


def _assert_tensorboard(folder: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "eval/loss"} <= scalars and "world_size" not in scalars
    assert not any("/" not in tag for tag in scalars)
    plugins = acc.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugins and "_hparams_/session_start_info" in plugins


@pytest.mark.slow
def test_parquet_tool_calling_run_exports_gguf_and_logs(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = write_spec(
        tmp_path,
        train_rows=120,
        dataset={"train": "data/train.parquet", "eval": None, "eval_split": 0.1},
        training={"max_steps": 6, "logging_steps": 2, "eval_steps": 3, "save_steps": 3},
        hardware={"gpus_per_node": 1, "strategy": "single"},
        output={"export": ["gguf"], "report_to": ["tensorboard", "wandb"]},
    )
    demo = [json.loads(x) for x in (tmp_path / "data" / "train.jsonl").read_text().splitlines()]
    # tool rows first: from_pylist takes the columns of its first row
    rows = [tool_row(i) for i in range(30)] + demo
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "train.parquet")
    check = launch_check(spec)
    assert check.returncode == 0, check.stdout + check.stderr
    done = launch(spec, env=env_with(WANDB_SILENT="true"), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "runs" / "t"
    info = run_json(run)
    assert info["exit_status"] == "completed" and "export" in info["outputs"]

    # the GGUF: transformers loads it with the merged model's logits (f32: training was fp32)
    gguf_file = run / "export" / "rt-test.gguf"
    assert gguf_file.is_file()
    base = AutoModelForCausalLM.from_pretrained(run / "base", dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(run / "adapter")).merge_and_unload().eval()
    loaded = AutoModelForCausalLM.from_pretrained(
        run / "export", gguf_file=gguf_file.name, dtype=torch.float32
    ).eval()
    tok = AutoTokenizer.from_pretrained(run / "adapter")
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Convert to JSON: name: Ann, age: 30"}],
        add_generation_prompt=True,
        return_tensors="pt",
    )
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    with torch.no_grad():
        diff = (merged(ids).logits - loaded(ids).logits).abs().max().item()
    assert diff < 1e-4
    gguf_tok = AutoTokenizer.from_pretrained(run / "export", gguf_file=gguf_file.name)
    assert (
        gguf_tok("<|im_start|>user\nhi<|im_end|>").input_ids
        == tok("<|im_start|>user\nhi<|im_end|>").input_ids
    )

    modelfile = (run / "export" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./rt-test.gguf\n")
    assert 'TEMPLATE """' in modelfile and "<|im_start|>assistant" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    card = (run / "export" / "README.md").read_text()
    assert "gguf_file=" in card and "data/train.parquet" in card and "ollama create" in card

    # loggers
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    _assert_tensorboard(run / "tensorboard")
    rows = metrics(run)
    for row in rows:
        jsonschema.validate(row, SCHEMA)
    assert {r["type"] for r in rows} == {"train", "eval"}
    assert export.file_stem({"name": "a b/c"}) == "a-b-c"


def launch_check(spec: Path):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "ftspec.compiler.cli", "check", str(spec), "--only", "data"],
        cwd=spec.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
