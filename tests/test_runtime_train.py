"""Real multi-process training on CPU through `ftspec launch` (2 gloo processes, the built-in model).

Each launch takes ~10 s on 2 cores. What is not here and why:
- accelerate's FSDP cannot run on CPU (cpu-notes trap 5: v1 finds no device, v2 silently becomes DDP);
  the runtime refuses such a plan (test below), real sharding is tested with plain FSDP2 in
  test_runtime_fsdp2.py, and the accelerate FSDP path runs in the `gpu` test at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runtime_helpers import adapter_tensors, env_with, launch, metrics, run_json, train_losses, write_spec

pytestmark = pytest.mark.slow


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def _digests(run_dir: Path) -> list[str]:
    return [p.read_text().strip() for p in sorted((run_dir / ".ftspec").glob("params-rank*.txt"))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted 2-process DDP run (16 steps, checkpoints every 4) that other tests compare to."""
    folder = tmp_path_factory.mktemp("reference")
    spec = write_spec(folder, training={"max_steps": 16})
    result = launch(spec, build=folder / "build", env=env_with(FTSPEC_PARAM_DIGEST="1"))
    _ok(result)
    return folder


def test_ddp_two_ranks_end_identical_and_leave_a_run_folder(reference):
    run = reference / "runs" / "t"
    digests = _digests(run)
    assert len(digests) == 2 and digests[0] == digests[1]  # both ranks hold the same parameters
    info = run_json(run)
    assert info["exit_status"] == "completed" and info["world_size"] == 2 and info["final_step"] == 16
    assert info["plan_sha256"] and info["started"] and info["ended"]
    for name in (
        "plan.json",
        "lock.json",
        "metrics.jsonl",
        "adapter/adapter_config.json",
        "tokenizer/tokenizer.json",
    ):
        assert (run / name).is_file(), name
    losses = train_losses(run)
    assert losses[16] < losses[2]
    events = metrics(run)
    assert any("eval_loss" in m for m in events)
    assert all(m["world_size"] == 2 for m in events)
    assert {"learning_rate", "grad_norm", "tokens_per_second", "memory"} <= set(events[0])
    # save_total_limit 3 of checkpoints 4, 8, 12, 16
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "checkpoint-12",
        "checkpoint-16",
        "checkpoint-8",
    ]


def test_adapter_loads_with_peft(reference):
    from ftspec.runtime.builtin import ensure_builtin
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = reference / "runs" / "t"
    base = AutoModelForCausalLM.from_pretrained(str(ensure_builtin()))
    model = PeftModel.from_pretrained(base, str(run / "adapter"))
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_kill_9_mid_run_then_resume_matches_uninterrupted(reference, tmp_path):
    """Tolerance: the resumed run's adapter equals the uninterrupted one's to 1e-5 (absolute) and its
    final training loss to 1e-4 (relative). On CPU with the RNG restored both are exact in practice."""
    spec = write_spec(tmp_path, training={"max_steps": 16})
    log = tmp_path / "launch.log"
    cmd = [sys.executable, "-m", "ftspec.compiler.cli", "launch", str(spec), "-o", str(tmp_path / "build")]
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=env_with(FTSPEC_STEP_DELAY_S="0.8"), stdout=fh, stderr=fh
        )
    run = tmp_path / "runs" / "t"
    deadline = time.monotonic() + 180
    while not (run / "checkpoints" / "checkpoint-8" / "complete").is_file():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint-8 in time"
        time.sleep(0.2)

    def rank_pids() -> list[int]:
        return [
            int(line.split(" pid ")[1].split()[0])
            for line in log.read_text().splitlines()
            if line.startswith("ftspec: rank ") and " pid " in line
        ]

    # Each rank's start-up line reaches the log through the launcher's stream: wait for both.
    while len(pids := rank_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(pids) == 2, log.read_text()[-3000:]
    for pid in pids:  # the whole node goes away: every training process, no chance to clean up
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert run_json(run)["exit_status"] == "failed"
    assert not (run / "adapter").exists()

    result = launch(tmp_path / "build", "--resume")
    _ok(result)
    info = run_json(run)
    assert info["exit_status"] == "completed"
    assert info["resumed_from"] in ("checkpoint-8", "checkpoint-12")
    expected, got = adapter_tensors(reference / "runs" / "t"), adapter_tensors(run)
    assert expected.keys() == got.keys()
    for name in expected:
        assert float((expected[name] - got[name]).abs().max()) <= 1e-5, name
    ref_loss, loss = train_losses(reference / "runs" / "t")[16], train_losses(run)[16]
    assert abs(loss - ref_loss) <= 1e-4 * abs(ref_loss)
    steps = [m["step"] for m in metrics(run) if "loss" in m]
    assert steps == sorted(set(steps))  # the repeated steps' old records were dropped


def test_corrupt_last_checkpoint_is_skipped_for_the_one_before(reference, tmp_path):
    import shutil

    shutil.copytree(reference, tmp_path / "r", symlinks=True)
    folder = tmp_path / "r"
    run = folder / "runs" / "t"
    shutil.rmtree(run / "adapter")
    victim = run / "checkpoints" / "checkpoint-16" / "trainable_0.safetensors"
    raw = bytearray(victim.read_bytes())
    raw[-64:] = bytes(64)  # same size, different bytes: only the recorded hash can tell
    victim.write_bytes(bytes(raw))
    # the build folder's plan points at the spec folder relatively, so the copy trains into the copy
    result = launch(folder / "build", "--resume")
    _ok(result)
    assert "FT0709" in result.stderr and "checkpoint-16" in result.stderr
    info = run_json(run)
    assert info["resumed_from"] == "checkpoint-12"
    assert any(d["code"] == "FT0709" for d in info["diagnostics"])
    expected, got = adapter_tensors(reference / "runs" / "t"), adapter_tensors(run)
    for name in expected:
        assert float((expected[name] - got[name]).abs().max()) <= 1e-5


def test_nan_loss_stops_cleanly_naming_step_and_checkpoint(tmp_path):
    spec = write_spec(tmp_path)
    result = launch(spec, build=tmp_path / "build", env=env_with(FTSPEC_INJECT_NAN_AT_STEP="6"))
    assert result.returncode != 0
    text = result.stderr
    assert "FT0706" in text and "at step 6" in text and "checkpoint-4" in text
    run = tmp_path / "runs" / "t"
    info = run_json(run)
    assert info["exit_status"] == "nan" and info["final_step"] == 5
    assert not (run / "adapter").exists()
    assert (run / "checkpoints" / "checkpoint-4" / "complete").is_file()


def test_oom_halves_micro_batch_doubles_accumulation_and_resumes(tmp_path):
    spec = write_spec(tmp_path)
    result = launch(spec, build=tmp_path / "build", env=env_with(FTSPEC_INJECT_OOM_AT_STEP="6"))
    _ok(result)
    assert "FT0707" in result.stderr
    info = run_json(tmp_path / "runs" / "t")
    assert info["exit_status"] == "completed" and info["resumed_from"] == "checkpoint-4"
    assert info["batch"] == {
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 4,
        "world_size": 2,
        "effective_batch": 16,
    }
    (change,) = info["batch_changes"]
    assert change["step"] == 6 and change["from"]["micro_batch_size"] == 4
    after = [m for m in metrics(tmp_path / "runs" / "t") if "loss" in m and m["step"] > 4]
    assert after and all(m["micro_batch_size"] == 2 and m["gradient_accumulation_steps"] == 4 for m in after)


def test_one_failing_rank_stops_the_other_promptly(tmp_path):
    spec = write_spec(tmp_path, training={"max_steps": 200})
    started = time.monotonic()
    result = launch(
        spec,
        build=tmp_path / "build",
        env=env_with(FTSPEC_INJECT_CRASH_AT_STEP="3", FTSPEC_INJECT_CRASH_RANK="1"),
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 90  # not the 30-minute collective timeout
    assert "FT0717" in result.stderr and "rank 1 failed" in result.stderr and "injected" in result.stderr
    assert run_json(tmp_path / "runs" / "t")["exit_status"] == "failed"


def test_world_mismatch_is_refused(tmp_path):
    """Trap 2: one process started on a 2-process plan must not train alone."""
    spec = write_spec(tmp_path)
    _ok(launch(spec, "--dry-run", build=tmp_path / "build"))
    env = env_with()
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    result = subprocess.run(
        [sys.executable, "-m", "ftspec.runtime.train", "--plan", str(tmp_path / "build" / "plan.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "FT0701" in result.stderr and "plan asks for 2 processes" in result.stderr


def test_accelerate_fsdp_on_cpu_is_refused(tmp_path):
    """Lint refuses it at hardware.strategy (FT0276) before anything runs; the runtime's own FT0704
    stays for a build started through launch.sh."""
    spec = write_spec(tmp_path, hardware={"strategy": "fsdp"})
    result = launch(spec, build=tmp_path / "build")
    assert result.returncode != 0
    assert "FT0276" in result.stdout + result.stderr


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_on_cpu_processes(tmp_path, stage):
    spec = write_spec(
        tmp_path,
        hardware={"strategy": "deepspeed", "zero_stage": stage},
        training={"max_steps": 8, "save_steps": 4},
    )
    result = launch(spec, build=tmp_path / "build", env=env_with(FTSPEC_PARAM_DIGEST="1"))
    _ok(result)
    assert "distributed type DEEPSPEED" in result.stderr
    assert result.stderr.count("ftspec: rank ") >= 2
    run = tmp_path / "runs" / "t"
    assert run_json(run)["exit_status"] == "completed"
    losses = train_losses(run)
    assert losses[8] < losses[2]
    tensors = adapter_tensors(run)
    assert tensors and all(t.numel() > 0 for t in tensors.values())  # ZeRO-3 shards were gathered
    if stage == 2:
        digests = _digests(run)
        assert len(digests) == 2 and digests[0] == digests[1]
    # With an adapter, the DeepSpeed checkpoint leaves out the frozen base (exclude_frozen_parameters):
    # its module states hold the LoRA tensors, and only the tied lm_head alias of the embedding besides
    # (DeepSpeed filters by named_parameters, which lists a tied weight once, as embed_tokens).
    import torch

    files = sorted((run / "checkpoints" / "checkpoint-8").rglob("*model_states.pt"))  # ZeRO-3: one per rank
    assert files
    for states in files:
        saved = torch.load(states, map_location="cpu", weights_only=False)
        assert any("lora_" in key for key in saved["module"])
        assert [key for key in saved["module"] if "lora_" not in key] == ["base_model.model.lm_head.weight"]
        assert saved.get("frozen_param_fragments") is None
    # a DeepSpeed checkpoint resumes too, restoring the trained adapter (a fresh LoRA B would be zeros)
    result = launch(tmp_path / "build", "--resume")
    _ok(result)
    assert run_json(run)["resumed_from"] == "checkpoint-8"
    resumed = adapter_tensors(run)
    assert resumed.keys() == tensors.keys()
    assert all(torch.allclose(resumed[k], tensors[k], atol=1e-6) for k in tensors)


def test_qlora_on_cpu_processes(tmp_path):
    spec = write_spec(
        tmp_path,
        adapter={
            "method": "qlora",
            "quantization": {"bits": 4, "quant_type": "nf4", "compute_dtype": "fp32"},
        },
        training={"max_steps": 8},
    )
    result = launch(spec, build=tmp_path / "build", env=env_with(FTSPEC_PARAM_DIGEST="1"))
    _ok(result)
    run = tmp_path / "runs" / "t"
    losses = train_losses(run)
    assert losses[8] < losses[2]
    digests = _digests(run)
    assert len(digests) == 2 and digests[0] == digests[1]
    assert (run / "adapter" / "adapter_config.json").is_file()


def test_qlora_under_zero3_saves_checkpoints_after_evaluating(tmp_path):
    """Regression: bitsandbytes repacked the 4-bit weights for its CPU kernels during evaluation and
    then failed to unpack the float-stored (ZeRO-3) weights in state_dict: the first save crashed."""
    spec = write_spec(
        tmp_path,
        adapter={
            "method": "qlora",
            "quantization": {"bits": 4, "quant_type": "nf4", "compute_dtype": "fp32"},
        },
        hardware={"gpu": "cpu", "gpus_per_node": 2, "strategy": "deepspeed", "zero_stage": 3},
        training={"max_steps": 4, "save_steps": 2, "eval_steps": 2, "precision": "fp32"},
    )
    _ok(launch(spec, build=tmp_path / "build"))
    run = tmp_path / "runs" / "t"
    assert (run / "checkpoints" / "checkpoint-2" / "complete").is_file()
    tensors = adapter_tensors(run)
    assert tensors and all("lora_" in name for name in tensors)


def test_dora_full_and_merged_outputs(tmp_path):
    spec = write_spec(
        tmp_path,
        adapter={"dora": True},
        training={"max_steps": 4, "optimizer": "adamw_8bit"},
        output={"save": "both", "report_to": ["tensorboard"]},
    )
    _ok(launch(spec, build=tmp_path / "build"))
    run = tmp_path / "runs" / "t"
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "merged" / "config.json").is_file() and (run / "merged" / "tokenizer.json").is_file()
    assert any((run / "tensorboard").iterdir())
    import json

    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["use_dora"] is True


@pytest.mark.gpu
def test_fsdp_through_accelerate_on_cuda(tmp_path):
    import torch

    spec = write_spec(
        tmp_path,
        hardware={"gpu": "H100-80GB", "gpus_per_node": torch.cuda.device_count(), "strategy": "fsdp"},
        training={"precision": "bf16", "max_steps": 8},
    )
    result = launch(spec, build=tmp_path / "build")
    _ok(result)
    assert "distributed type FSDP" in result.stderr


@pytest.mark.gpu
def test_qlora_on_cuda_reports_peak_memory(tmp_path):
    spec = write_spec(
        tmp_path,
        adapter={"method": "qlora"},
        hardware={"gpu": "H100-80GB", "gpus_per_node": 1, "strategy": "single"},
        training={"precision": "bf16", "max_steps": 8, "gradient_checkpointing": True},
    )
    _ok(launch(spec, build=tmp_path / "build"))
    events = [m for m in metrics(tmp_path / "runs" / "t") if "memory" in m]
    assert events and events[-1]["memory"] > 0


def test_runtime_refuses_to_start_over_an_earlier_run(reference, tmp_path):
    """launch.sh (not `ftspec launch`) into a finished run: the runtime itself refuses, losing nothing."""
    import json
    import shutil

    from ftspec.compiler.compile.launch_command import launch_command

    shutil.copytree(reference, tmp_path / "r", symlinks=True)
    folder = tmp_path / "r"
    run = folder / "runs" / "t"
    before = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    plan = json.loads((folder / "build" / "plan.json").read_text())
    argv, env = launch_command(plan, folder / "build")
    result = subprocess.run(argv, env=env_with(**env), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "FT0723" in result.stderr
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "checkpoint-12",
        "checkpoint-16",
        "checkpoint-8",
    ]
    assert run_json(run)["exit_status"] == "completed"


def test_resume_without_a_checkpoint_starts_over_with_clean_metrics(tmp_path):
    spec = write_spec(tmp_path, training={"max_steps": 4, "save_steps": 4, "logging_steps": 2})
    run = tmp_path / "runs" / "t"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 2, "loss": 99.0}\n{"step": 6, "loss": 98.0}\n')
    result = launch(spec, "--resume", build=tmp_path / "build")
    _ok(result)
    assert "FT0710" in result.stderr
    losses = [m["loss"] for m in metrics(run) if "loss" in m]
    assert len(losses) == 2 and 99.0 not in losses and 98.0 not in losses


def test_resume_refuses_a_changed_plan_and_allows_harmless_changes(tmp_path):
    """One process, 4 steps: a changed learning rate is refused touching nothing; logging steps and a
    micro batch split at the same effective batch (what the OOM retry does) resume."""
    single = {"gpus_per_node": 1, "strategy": "single"}
    train = {"max_steps": 4, "save_steps": 2, "eval_steps": 4}
    spec = write_spec(tmp_path, train_rows=64, hardware=single, training=train)
    _ok(launch(spec, build=tmp_path / "build"))
    run = tmp_path / "runs" / "t"
    assert run_json(run)["training_sha256"]
    before = {
        p.relative_to(run).as_posix(): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and ".ftspec" not in p.parts
    }

    write_spec(tmp_path, train_rows=64, hardware=single, training={**train, "learning_rate": 1.0e-3})
    result = launch(spec, "--resume", build=tmp_path / "build")
    assert result.returncode != 0
    assert "FT0724" in result.stderr and "/spec/training/learning_rate: 0.003 -> 0.001" in result.stderr
    after = {
        p.relative_to(run).as_posix(): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and ".ftspec" not in p.parts
    }
    assert after == before  # nothing in the run folder changed

    write_spec(
        tmp_path,
        train_rows=64,
        hardware=single,
        training={**train, "logging_steps": 1, "micro_batch_size": 2, "gradient_accumulation_steps": 4},
    )
    result = launch(spec, "--resume", build=tmp_path / "build")
    _ok(result)
    assert run_json(run)["resumed_from"] == "checkpoint-4"
