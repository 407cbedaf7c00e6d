"""Shared by the runtime and launch tests: a small spec over a slice of the demo data, and `ftspec launch`."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "specs" / "data"

BASE_SPEC: dict = {
    "version": 1,
    "name": "rt-test",
    "model": {"id": "builtin:tiny-llama", "chat_template": "chatml"},
    "dataset": {
        "format": "chatml",
        "train": "data/train.jsonl",
        "eval": "data/eval.jsonl",
        "min_examples": 10,
    },
    "adapter": {
        "method": "lora",
        "r": 8,
        "alpha": 16,
        "dropout": 0.05,
        "target_modules": "all-linear",
        "dora": False,
    },
    "training": {
        "max_steps": 12,
        "learning_rate": 3.0e-3,
        "warmup_steps": 1,
        "optimizer": "adamw_torch",
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "sequence_len": 64,
        "precision": "fp32",
        "gradient_checkpointing": False,
        "logging_steps": 2,
        "eval_steps": 6,
        "save_steps": 4,
        "save_total_limit": 3,
        "early_stopping_patience": 0,
        "seed": 7,
    },
    "hardware": {"gpu": "cpu", "gpus_per_node": 2, "strategy": "ddp"},
    "output": {"dir": "runs/t", "save": "adapter", "report_to": ["none"]},
}


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def write_spec(folder: Path, *, train_rows: int = 160, eval_rows: int = 24, **over: dict) -> Path:
    """A spec in `folder` over the first rows of the demo data (copied, so the folder is self-contained)."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    train = (DATA / "tiny-cpu-train.jsonl").read_text(encoding="utf-8").splitlines()[:train_rows]
    evals = (DATA / "tiny-cpu-eval.jsonl").read_text(encoding="utf-8").splitlines()[:eval_rows]
    (data / "train.jsonl").write_text("\n".join(train) + "\n", encoding="utf-8")
    (data / "eval.jsonl").write_text("\n".join(evals) + "\n", encoding="utf-8")
    spec = merge(BASE_SPEC, over)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FTSPEC_DEBUG", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def launch(
    target: Path, *args: str, build: Path | None = None, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ftspec.compiler.cli", "launch", str(target), *args]
    if build is not None:
        cmd += ["-o", str(build)]
    return subprocess.run(
        cmd,
        cwd=target.parent if target.is_file() else target,
        env=env or env_with(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text(encoding="utf-8"))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(run_dir) if "loss" in m}


def adapter_tensors(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
