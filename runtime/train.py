"""The training recipe: plan.json in, a run folder out. One linear file: set-up, train, checkpoint, clean-up.

    accelerate launch ... -m ftspec.runtime.train --plan BUILD_DIR/plan.json [--resume]

Why a plain accelerate loop rather than transformers' Trainer: the parts this runtime promises are the
parts Trainer hides. Checkpoints must be atomic with a completion marker and a fallback to the one
before (Trainer writes in place and trusts the newest folder); resume must land on the exact data
position (our batches are a pure function of seed and step, so no sampler state can drift); a
NaN/inf loss must stop *before* the step is applied, on every rank at once, naming the last good
checkpoint; an out-of-memory retry must change micro batch and accumulation at a checkpoint
boundary; and the CPU traps (gloo PartialState before Accelerator for DeepSpeed, a world-size
assertion, os._exit after destroy_process_group) must be handled before Trainer's own set-up runs.
What Trainer would give is still used from the maintained libraries: accelerate for the
distributed wrapping, gradient accumulation, mixed precision and save_state/load_state (model,
optimizer, RNG of every rank, DeepSpeed/FSDP sharded states); transformers for models and
schedulers; PEFT for adapters; bitsandbytes for 4-bit bases and 8-bit optimizers.

Fault-injection switches (tests, and anyone checking the recovery paths; documented in the README):
    FTSPEC_INJECT_NAN_AT_STEP=k   the loss of optimizer step k (1-based) on rank 0 becomes NaN
    FTSPEC_INJECT_OOM_AT_STEP=k   step k on rank 0 raises torch.OutOfMemoryError, once (only while the
                                  micro batch is still the plan's)
    FTSPEC_INJECT_CRASH_AT_STEP=k step k raises RuntimeError on rank FTSPEC_INJECT_CRASH_RANK (default 1)
    FTSPEC_STEP_DELAY_S=x         sleep x seconds after each optimizer step (so a test can kill mid-run)
    FTSPEC_PARAM_DIGEST=1         each rank writes the SHA-256 of its trainable parameters at the end
                                  (<run>/.ftspec/params-rank<N>.txt: ranks of a DDP run must agree)
    FTSPEC_COLLECTIVE_TIMEOUT_S   timeout of collectives (default 1800 s: long enough for the main
                                  process to build the model and tokenize the data first)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ftspec.compiler.core.artifacts import file_sha256, free_bytes, human_bytes, is_no_space, write_atomic
from ftspec.compiler.core.diagnostics import Diagnostic, make
from ftspec.compiler.core.reporters import to_text
from ftspec.compiler.core.schema import schema_default
from ftspec.compiler.dataset.readers import source_sha256
from ftspec.compiler.dataset.sources import train_entries
from ftspec.compiler.launch.run_folder import BATCH_FILE, ERRORS_DIR, EXIT_OOM_RETRY, previous_run, run_dir_of  # noqa: F401
from ftspec.runtime import cache as rcache
from ftspec.runtime import checkpoint as ckpt
from ftspec.runtime import data as rdata
from ftspec.runtime import export, outputs
from ftspec.runtime import loss as rloss
from ftspec.runtime import preference as rpref
from ftspec.runtime.locate import SpecLocator
from ftspec.runtime.log import log
from ftspec.runtime.model import (
    SetupError,
    build_optimizer,
    build_scheduler,
    load_model,
    load_tokenizer,
    resolve_source,
    trainable_summary,
)

EXIT_OK = 0
EXIT_FAILED = 1  # the run failed (NaN, bad data, set-up error): a finding, not a tool bug
EXIT_INTERRUPTED = 128 + signal.SIGTERM  # stopped by SIGTERM (scancel, Slurm requeue or preemption)
# The signal this process was asked to stop by; every rank learns of any rank's at the next step.
_TERMINATION: dict[str, int | None] = {"signal": None}


def _catch_termination() -> None:
    """SIGTERM (Slurm's scancel, requeue and preemption send it, then SIGKILL after KillWait) stops
    the run at the next step boundary on every rank together, after a checkpoint, instead of
    killing it mid-step: a requeued job then resumes from that step."""

    def note(signum: int, _frame: object) -> None:
        _TERMINATION["signal"] = signum

    signal.signal(signal.SIGTERM, note)


def node_identity() -> tuple[str, str]:
    """(node name, node rank) for the start-up line: Slurm's node name when under Slurm, and the
    launcher's node (group) rank."""
    node = os.environ.get("SLURMD_NODENAME") or platform.node()
    rank = os.environ.get("GROUP_RANK") or os.environ.get("SLURM_NODEID") or "0"
    return node, rank


class StopRun(Exception):
    """Ends the run on every rank with a diagnostic and an exit status."""

    def __init__(self, diagnostic: Diagnostic, status: str, code: int = EXIT_FAILED):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic
        self.status = status
        self.code = code


@contextmanager
def writing(what: str, folder: Path, cleanup: Path | None = None):
    """A full disk while writing `what` into `folder` ends the run with FT0747 (what, where, how much
    is free) instead of a library's own error; `cleanup` (a half-written temporary folder) is removed
    first, which also gives back the space the last writes of the run need (run.json, the error file)."""
    try:
        yield
    except StopRun:
        raise
    except Exception as exc:
        if not is_no_space(exc, folder):
            raise
        diag = make("FT0747", what=what, folder=str(folder), free=human_bytes(free_bytes(folder)))
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        raise StopRun(diag, "failed") from exc


def write_run_json(path: Path, data: dict) -> None:
    """run.json, atomically; on a full disk (no room for a second copy) in place, so the run's end
    (failed, and why) is recorded rather than left "running"."""
    try:
        ckpt.write_json_atomic(path, data)
    except OSError as exc:
        if not is_no_space(exc):
            raise
        with open(path, "r+" if path.exists() else "w", encoding="utf-8") as fh:
            fh.truncate(0)  # gives the old copy's blocks back before writing the new one
            fh.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


# Runtime findings name the spec file the plan was compiled from, at the governing field's line
# (runtime/locate.py); set by main() once the plan is known to be the one compiled.
_LOCATOR: list[SpecLocator | None] = [None]


def located(diag: Diagnostic) -> Diagnostic:
    return _LOCATOR[0](diag) if _LOCATOR[0] is not None else diag


def as_text(diag: Diagnostic) -> str:
    """One finding as the runtime prints it: `spec.yaml:LINE:COL: CODE severity: ...` with the caret."""
    locator = _LOCATOR[0]
    return to_text([located(diag)], locator.source if locator is not None else None)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


# --- set-up -------------------------------------------------------------------------------------


def deepspeed_config(plan: dict, plan_path: Path, mbs: int, gas: int, world: int) -> dict:
    """The compiled DeepSpeed JSON (the launcher's ACCELERATE_DEEPSPEED_CONFIG_FILE, else the build
    folder's), with the batch sizes this run uses (an OOM retry changes them) filled in."""
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    name = (plan.get("launch") or {}).get("deepspeed_config") or "deepspeed.json"
    config_path = Path(path) if path else plan_path.parent / name
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["train_micro_batch_size_per_gpu"] = mbs
    config["gradient_accumulation_steps"] = gas
    config["train_batch_size"] = mbs * gas * world
    config.pop("optimizer", None)  # the runtime builds optimizer and scheduler from the spec
    config.pop("scheduler", None)
    return config


def make_accelerator(plan: dict, plan_path: Path, mbs: int, gas: int):
    """Accelerator for the plan's strategy, after the CPU traps are dealt with; then assert the world."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DeepSpeedPlugin, GradientAccumulationPlugin, InitProcessGroupKwargs

    derived = plan["derived"]
    device, strategy, world = derived["device"], derived["strategy"], int(derived["world_size"])
    timeout = timedelta(seconds=float(os.environ.get("FTSPEC_COLLECTIVE_TIMEOUT_S", "1800")))
    kwargs: dict = {
        "cpu": device == "cpu",
        "mixed_precision": derived.get("mixed_precision", "no"),
        "gradient_accumulation_plugin": GradientAccumulationPlugin(num_steps=gas, sync_with_dataloader=False),
        "kwargs_handlers": [InitProcessGroupKwargs(timeout=timeout)],
    }
    ds_config = None
    if strategy == "fsdp" and device == "cpu":
        raise SetupError("FT0704")
    if strategy == "deepspeed":
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        if device == "cpu":
            # Trap 3: without a gloo PartialState first, accelerate + DeepSpeed on CPU tells every rank
            # it is rank 0 of 1. accelerate only selects DeepSpeed when it is *not* told cpu=True
            # (AcceleratorState: `ACCELERATE_USE_DEEPSPEED and not cpu`), so the launcher's
            # ACCELERATE_USE_CPU is dropped here; with no CUDA device the default device is the CPU.
            os.environ.pop("ACCELERATE_USE_CPU", None)
            kwargs["cpu"] = False
            PartialState(backend="gloo", timeout=timeout)
        ds_config = deepspeed_config(plan, plan_path, mbs, gas, world)
        ds_config["gradient_clipping"] = float(plan["spec"]["training"].get("max_grad_norm", 1.0))
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=ds_config)
    accelerator = Accelerator(**kwargs)
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    # Trap 2: a launch that lost the CPU flag runs N unsynchronised single-process jobs; refuse.
    if not (accelerator.num_processes == env_world == world):
        raise SetupError("FT0701", expected=world, seen=accelerator.num_processes, env=env_world)
    return accelerator, ds_config


def batch_sizes(plan: dict, out: Path, resume: bool) -> tuple[int, int, list]:
    """Micro batch and accumulation: the plan's, or (resuming) those an OOM retry recorded."""
    derived = plan["derived"]
    mbs, gas = int(derived["micro_batch_size"]), int(derived["gradient_accumulation_steps"])
    path = out / BATCH_FILE
    if resume and path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        return (
            int(data["micro_batch_size"]),
            int(data["gradient_accumulation_steps"]),
            data.get("history", []),
        )
    return mbs, gas, []


# --- outputs ------------------------------------------------------------------------------------


class Metrics:
    """metrics.jsonl (every log and eval event), and TensorBoard / MLflow / W&B when report_to asks.
    Main process only.

    Each metrics.jsonl row has a `type` (train | eval) and a `time` (UTC ISO 8601) besides its step
    and values (schemas/metrics-row.v1.schema.json). The sinks get the values under grouped names
    (`train/loss`, `eval/loss`, as transformers' integrations write them) without the constants of a
    run (world size, micro batch, accumulation), which go with the hyperparameters instead:
    TensorBoard's hparams plugin and a text summary, MLflow params, the W&B run config. W&B writes
    offline files under the run folder unless WANDB_MODE says otherwise."""

    CONSTANTS = ("world_size", "micro_batch_size", "gradient_accumulation_steps")

    def __init__(self, out: Path, report_to: list[str], enabled: bool, warn, hparams: dict | None = None):
        self.enabled = enabled
        self.fh = open(out / "metrics.jsonl", "a", encoding="utf-8") if enabled else None
        self.tb = None
        self.mlflow = None
        self.wandb = None
        if not enabled:
            return
        hparams = dict(hparams or {})
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(out / "tensorboard"))
                self._tensorboard_hparams(hparams)
            except ImportError:
                warn(make("FT0718", sink="tensorboard"))
        if "mlflow" in report_to:
            try:
                import mlflow

                self.mlflow = mlflow
                mlflow.start_run(run_name=out.name)
                mlflow.log_params(hparams)
            except ImportError:
                warn(make("FT0718", sink="mlflow"))
        if "wandb" in report_to:
            try:
                import wandb

                self.wandb = wandb.init(
                    project=os.environ.get("WANDB_PROJECT", "ftspec"),
                    name=out.name,
                    dir=str(out),
                    config=hparams,
                    mode=os.environ.get("WANDB_MODE", "offline"),  # type: ignore[arg-type]  # no network unless asked; wandb validates the value
                    reinit="finish_previous",
                )
            except ImportError:
                warn(make("FT0718", sink="wandb"))

    def _tensorboard_hparams(self, hparams: dict) -> None:
        """The run's hyperparameters in this run's own event file (add_hparams would start another
        run folder), against the grouped loss tags, and as a text table."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        assert self.tb is not None  # called only right after the writer is made
        writer = self.tb._get_file_writer()
        for summary in hparams_summary(hparams, {"train/loss": None, "eval/loss": None}):
            writer.add_summary(summary)
        table = "| hyperparameter | value |\n|---|---|\n" + "".join(
            f"| {k} | {v} |\n" for k, v in sorted(hparams.items())
        )
        self.tb.add_text("hparams", table, 0)

    def write(self, record: dict, kind: str = "train") -> None:
        """One event: `kind` train (a logging window) or eval (an evaluation)."""
        if not self.enabled:
            return
        row = {"type": kind, "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **record}
        assert self.fh is not None  # enabled: the main process opened metrics.jsonl
        with writing("metrics.jsonl", Path(self.fh.name).parent):
            self.fh.write(json.dumps(row, sort_keys=True) + "\n")
            self.fh.flush()
        step = record.get("step", 0)
        values = {
            f"{kind}/{key.removeprefix(kind + '_')}": value
            for key, value in record.items()
            if key != "step"
            and key not in self.CONSTANTS
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
        }
        for tag, value in values.items():
            if self.tb is not None:
                self.tb.add_scalar(tag, value, step)
            if self.mlflow is not None:
                self.mlflow.log_metric(tag.replace("/", "_"), value, step=step)
        if self.wandb is not None and values:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.fh:
            self.fh.close()
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.end_run()
        if self.wandb is not None:
            self.wandb.finish()


def run_hparams(spec: dict, derived: dict) -> dict:
    """What a run's loggers record as its hyperparameters: scalars only (TensorBoard's hparams)."""
    adapter, training = spec.get("adapter") or {}, spec.get("training") or {}
    values = {
        "model": (spec.get("model") or {}).get("id"),
        "method": adapter.get("method"),
        "r": adapter.get("r"),
        "alpha": adapter.get("alpha"),
        "dropout": adapter.get("dropout"),
        "learning_rate": training.get("learning_rate"),
        "scheduler": training.get("scheduler"),
        "optimizer": training.get("optimizer"),
        "objective": training.get("objective"),
        "precision": derived.get("precision", training.get("precision")),
        "seed": training.get("seed"),
        "sequence_len": derived.get("sequence_len"),
        "micro_batch_size": derived.get("micro_batch_size"),
        "gradient_accumulation_steps": derived.get("gradient_accumulation_steps"),
        "world_size": derived.get("world_size"),
        "effective_batch": derived.get("effective_batch"),
        "total_steps": derived.get("total_steps"),
        "strategy": derived.get("strategy"),
    }
    return {k: v for k, v in values.items() if isinstance(v, (str, int, float, bool))}


def memory_gib(device: str) -> float:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**30, 4)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 4)  # KiB -> GiB (peak RSS)


def save_final(
    accelerator,
    model,
    tokenizer,
    spec: dict,
    source,
    out: Path,
    is_main: bool,
    *,
    spec_dir: Path,
    plan: dict,
    warn=None,
) -> dict:
    """adapter/ (PEFT format) and/or merged/ as output.save asks; tokenizer/ always. Written into temp
    folders and renamed, so a crash here never leaves a half adapter that evaluate would load.

    Deployment sees what the gate measures (runtime/outputs.py): the template's end-of-turn token is
    the EOS of the saved tokenizer and generation_config.json in every folder; adapter/ also holds the
    tokenizer and template, names a portable base, and carries a model card, as merged/ does."""
    method = spec.get("adapter", {}).get("method", "lora")
    save = spec.get("output", {}).get("save", "adapter")
    state = accelerator.get_state_dict(model)  # gathers ZeRO-3 / FSDP shards; on every rank
    written: dict[str, str] = {}
    if not is_main:
        return written
    unwrapped = accelerator.unwrap_model(model)
    generation = outputs.generation_config_of(unwrapped)
    end_of_turn = outputs.align_stop_settings(tokenizer, generation)
    base = outputs.portable_base(spec["model"], source.path_or_id, spec_dir, out)

    def place(name: str, writer) -> None:
        tmp = out / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with writing(f"{name}/", out, cleanup=tmp):
            writer(tmp)
        target = out / name
        shutil.rmtree(target, ignore_errors=True)
        os.rename(tmp, target)
        written[name] = name

    def with_tokenizer(d: Path) -> None:
        tokenizer.save_pretrained(d)
        generation.save_pretrained(d)

    def adapter(d: Path) -> None:
        unwrapped.save_pretrained(d, state_dict=state)
        outputs.point_adapter_at(d, base)
        with_tokenizer(d)

    def merged_full(d: Path) -> None:
        unwrapped.save_pretrained(d, state_dict=state)
        with_tokenizer(d)

    if method == "full":
        place("merged", merged_full)
    else:
        if save in ("adapter", "both"):
            place("adapter", adapter)
        if save in ("merged", "both"):
            place("adapter" if "adapter" not in written else ".adapter-for-merge", adapter)
            adapter_dir = out / ("adapter" if "adapter" in written else ".adapter-for-merge")
            place("merged", lambda d: merge_adapter(source, spec, adapter_dir, tokenizer, d, generation))
            shutil.rmtree(out / ".adapter-for-merge", ignore_errors=True)
            written.pop(".adapter-for-merge", None)
    place("tokenizer", with_tokenizer)
    if "gguf" in ((spec.get("output") or {}).get("export") or []):
        try:
            place(
                export.EXPORT_DIR,
                lambda d: _export_gguf(d, out, spec, source, tokenizer, generation, end_of_turn),
            )
        except export.ExportError as exc:  # the run trained and saved: the export alone is missing
            shutil.rmtree(out / f".tmp-{export.EXPORT_DIR}", ignore_errors=True)
            if warn is not None:
                warn(make("FT0730", export="gguf", detail=str(exc)))
    if "adapter" in written:
        outputs.copy_base(base, out)
    metadata = plan.get("metadata") or {}
    facts = outputs.card_facts(
        spec,
        base,
        spec_sha256=metadata.get("spec_sha256"),
        spec_file=Path(metadata["spec_file"]).name if metadata.get("spec_file") else None,
        data_sha256=_data_file_hashes(spec, spec_dir),
        end_of_turn=end_of_turn,
    )
    facts["exports"] = sorted(p.name for p in (out / export.EXPORT_DIR).glob("*.gguf"))
    outputs.write_cards(out, facts)
    return written


def _export_gguf(d: Path, out: Path, spec: dict, source, tokenizer, generation, end_of_turn) -> None:
    """export/: the GGUF and Modelfile of the merged model (merged/ when saved, else merged for the
    export into a temporary folder from adapter/)."""
    merged = out / "merged"
    temporary = None
    if not (merged / "config.json").is_file():
        temporary = out / ".merged-for-export"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir()
        merge_adapter(source, spec, out / "adapter", tokenizer, temporary, generation)
        merged = temporary
    try:
        export.export_gguf(merged, d, spec, [end_of_turn or "", tokenizer.eos_token or ""])
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


def _data_file_hashes(spec: dict, spec_dir: Path) -> dict[str, str]:
    """Training files and the eval file, for the model card."""
    hashes = _train_file_hashes(spec, spec_dir)
    eval_path = (spec.get("dataset") or {}).get("eval")
    if isinstance(eval_path, str):
        try:
            hashes[eval_path] = source_sha256(spec_dir / eval_path)
        except OSError:
            hashes[eval_path] = "unreadable"
    return hashes


def merge_adapter(source, spec: dict, adapter_dir: Path, tokenizer, target: Path, generation=None) -> None:
    """Merge into an unquantized copy of the base (a QLoRA adapter merges into the full-precision base
    it was trained over, not into 4-bit weights)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if spec.get("training", {}).get("precision") == "bf16" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(
        source.path_or_id,
        revision=source.revision,
        dtype=dtype,
        trust_remote_code=bool(spec["model"].get("trust_remote_code")),
    )
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    if generation is not None:
        merged.generation_config = generation
    merged.save_pretrained(target)
    tokenizer.save_pretrained(target)


# --- the recipe ---------------------------------------------------------------------------------


def _refuse_unsafe_start(
    accelerator, out: Path, ckroot: Path, identity: dict, plan_path: Path, *, resume: bool
) -> None:
    """Before anything is written: a fresh run never replaces an earlier run's checkpoints or model
    silently (also when started through launch.sh, not `ftspec launch`), and a resume never continues a
    checkpoint of a changed plan (its optimizer, scheduler and data position belong to the plan that
    built them). Every rank looks before the barrier, so all see the same folder and stop together."""
    if not resume:
        found = previous_run(out)
        accelerator.wait_for_everyone()
        if found:
            import shlex

            build = shlex.quote(os.path.relpath(plan_path.parent))  # the hint names the real build folder
            raise SetupError("FT0723", folder=str(out), found="; ".join(found), build=build)
        return
    refusal = _resume_refusal(ckroot, identity)
    accelerator.wait_for_everyone()
    if refusal:
        raise SetupError("FT0724", **refusal)


def _open_run_folder(plan_path: Path, out: Path, ckroot: Path, run_info: dict, *, resume: bool) -> None:
    """Main process: copy plan.json and lock.json in, clear what a crash or an earlier run left, and
    write run.json's start."""
    lock_path = plan_path.parent / "lock.json"
    with writing("plan.json and lock.json", out):
        shutil.copyfile(plan_path, out / "plan.json")
        if lock_path.is_file():
            shutil.copyfile(lock_path, out / "lock.json")
            run_info["lock_sha256"] = file_sha256(lock_path)
    for removed in ckpt.clean_partial(ckroot):
        log(f"ftspec: removed an unfinished checkpoint write {removed.name}")
    if not resume:
        # A fresh run owns its folder: stale checkpoints and metrics of an earlier run would
        # otherwise be resumed from or plotted.
        shutil.rmtree(ckroot, ignore_errors=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
    with writing("run.json", out):
        ckpt.write_json_atomic(out / "run.json", run_info)


@dataclass(frozen=True)
class LoopSettings:
    """How often the loop logs, evaluates and saves, and when it stops early (spec values)."""

    log_every: int
    eval_every: int
    save_every: int
    keep: int
    patience: int
    max_norm: float

    @classmethod
    def of(cls, training: dict) -> LoopSettings:
        return cls(
            log_every=int(training.get("logging_steps", 10)),
            eval_every=int(training.get("eval_steps", 50)),
            save_every=int(training.get("save_steps", 100)),
            keep=int(training.get("save_total_limit", 3)),
            patience=int(training.get("early_stopping_patience", 0)),
            max_norm=float(training.get("max_grad_norm", 1.0)),
        )


@dataclass(frozen=True)
class Injections:
    """Faults the tests inject through the environment (FTSPEC_INJECT_*, FTSPEC_STEP_DELAY_S)."""

    nan_at: int | None
    oom_at: int | None
    crash_at: int | None
    crash_rank: int
    delay: float

    @classmethod
    def from_env(cls) -> Injections:
        crash_rank = env_int("FTSPEC_INJECT_CRASH_RANK")
        return cls(
            nan_at=env_int("FTSPEC_INJECT_NAN_AT_STEP"),
            oom_at=env_int("FTSPEC_INJECT_OOM_AT_STEP"),
            crash_at=env_int("FTSPEC_INJECT_CRASH_AT_STEP"),
            crash_rank=1 if crash_rank is None else crash_rank,
            delay=float(os.environ.get("FTSPEC_STEP_DELAY_S", "0") or 0),
        )


def _resume_from_checkpoint(
    accelerator, ckroot: Path, out: Path, scheduler, run_info: dict, warn, *, load_kwargs: dict
) -> tuple[int, float, int]:
    """--resume: the newest checkpoint that verifies, chosen by the main process for everyone, loaded
    on every rank; (step, best eval loss, evaluations without improvement). None verifying: step 0."""
    from accelerate.utils import broadcast_object_list

    is_main = accelerator.is_main_process
    chosen: list[str | None] = [None]
    if is_main:
        found = ckpt.latest_valid(
            ckroot, lambda c, why: warn(make("FT0709", checkpoint=str(c.path), reason=why))
        )
        chosen = [str(found.path) if found else None]
    broadcast_object_list(chosen)
    if chosen[0] is None:
        warn(make("FT0710", folder=str(ckroot)))
        if is_main:  # starting from step 0: the earlier attempt's records would repeat every step
            _truncate_metrics(out / "metrics.jsonl", 0)
        return 0, math.inf, 0
    path = Path(chosen[0])
    accelerator.load_state(str(path), **load_kwargs)
    state = json.loads((path / ckpt.STATE).read_text(encoding="utf-8"))
    scheduler.load_state_dict(ckpt.load_scheduler(path))  # JSON, never a pickle
    start_step = int(state["step"])
    saved_best = state.get("best_eval_loss")
    run_info["resumed_from"] = path.name
    if is_main:
        _truncate_metrics(out / "metrics.jsonl", start_step)
    log(f"ftspec: rank {accelerator.process_index} resumed from {path.name} (step {start_step})")
    best = math.inf if saved_best is None else float(saved_best)
    return start_step, best, int(state.get("evals_without_improvement", 0))


def run(plan_path: Path, resume: bool) -> int:
    import torch
    from accelerate.utils import set_seed
    from ftspec.compiler.core.artifacts import read_plan

    plan = read_plan(plan_path)
    _catch_termination()
    spec, derived = plan["spec"], plan["derived"]
    training = spec.get("training", {})
    spec_dir = (plan_path.parent / plan["paths"]["spec_dir"]).resolve()
    out = run_dir_of(plan, plan_path.parent)
    out.mkdir(parents=True, exist_ok=True)
    mbs, gas, batch_history = batch_sizes(plan, out, resume)
    accelerator, ds_config = make_accelerator(plan, plan_path, mbs, gas)
    rank, world = accelerator.process_index, accelerator.num_processes
    is_main = accelerator.is_main_process
    device = derived["device"]
    started = now()
    diagnostics: list[Diagnostic] = []

    def warn(diag: Diagnostic) -> None:
        diag = located(diag)
        diagnostics.append(diag)
        if is_main:
            log(as_text(diag))

    node, node_rank = node_identity()
    log(
        f"ftspec: rank {rank}/{world} pid {os.getpid()} on {platform.node()}: {derived['strategy']} "
        f"on {device}, distributed type {accelerator.distributed_type.value}, micro batch {mbs} x "
        f"accumulation {gas} x {world} processes; node {node}, node rank {node_rank}"
    )

    ckroot = out / "checkpoints"
    run_json = out / "run.json"
    identity = ckpt.training_identity(plan, _train_file_hashes(spec, spec_dir))
    _refuse_unsafe_start(accelerator, out, ckroot, identity, plan_path, resume=resume)
    run_info: dict = {
        "schema_version": 1,
        "kind": "ftspec-run",
        "plan_sha256": file_sha256(plan_path),
        "spec_sha256": plan["metadata"].get("spec_sha256"),
        "training_sha256": ckpt.identity_sha256(identity),
        "started": started,
        "ended": None,
        "exit_status": "running",
        "world_size": world,
        "strategy": derived["strategy"],
        "device": device,
        "total_steps": int(derived["total_steps"]),
        "final_step": 0,
        "resumed_from": None,
        "batch": {
            "micro_batch_size": mbs,
            "gradient_accumulation_steps": gas,
            "world_size": world,
            "effective_batch": mbs * gas * world,
        },
        "batch_changes": batch_history,
        "versions": _versions(),
    }
    if is_main:
        _open_run_folder(plan_path, out, ckroot, run_info, resume=resume)

    # Model and data: the main process first (it may build the built-in model and tokenizes once into
    # a cache the others then read), the others after it, inside the collective timeout.
    seed = int(training.get("seed", schema_default("/training/seed")))
    with accelerator.main_process_first():
        source = resolve_source(spec["model"], spec_dir)
        tokenizer = load_tokenizer(source, spec["model"], spec_dir)
        with writing("the tokenised data cache", out / ERRORS_DIR):
            prepared = cached_prepare(spec, derived, spec_dir, tokenizer, out, source)
    stats = prepared.stats
    total_steps = int(derived["total_steps"])
    # unpacked supervised runs: batches grouped by length (little padding); packed rows are full already
    grouped = not stats["packing"] and not rpref.is_preference(spec)
    lengths = tuple(len(e.input_ids) for e in prepared.train) if grouped else None
    schedule = rdata.Schedule(len(prepared.train), mbs, gas, world, seed, lengths=lengths)
    planned_per_epoch = int(derived.get("steps_per_epoch") or 0)
    if planned_per_epoch and schedule.steps_per_epoch != planned_per_epoch:
        warn(
            make(
                "FT0722",
                steps=total_steps,
                sequences=len(prepared.train),
                per_epoch=schedule.steps_per_epoch,
                planned=f"{planned_per_epoch} steps per epoch",
            )
        )
    # total_steps is authoritative (docs/contracts.md): with packing an "epoch" of the plan counts
    # examples, so the run may pass over the packed rows more often than the spec's epochs say.
    warmup = int(derived.get("warmup_steps") or 0)
    run_info["total_steps"] = total_steps
    run_info["data"] = stats

    set_seed(seed)  # same initial adapter weights on every rank (DDP also broadcasts them)
    model = load_model(
        source,
        spec,
        device=device,
        local_rank=accelerator.local_process_index,
        ds_config=ds_config,
        strategy=derived["strategy"],
    )
    trainable, total = trainable_summary(model)
    if is_main:
        log(
            f"ftspec: {spec['model']['id']}: {trainable:,} trainable of {total:,} parameters "
            f"({spec.get('adapter', {}).get('method', 'lora')}); {stats['train_sequences']} training sequences, "
            f"{stats['eval_examples']} eval examples, {total_steps} steps"
        )
    optimizer = build_optimizer(model, training, device, lambda code, **f: warn(make(code, **f)))
    scheduler = build_scheduler(optimizer, training, total_steps, int(warmup))
    # lm_head + cross-entropy on trained positions only, in chunks (runtime/loss.py); not under ZeRO-3,
    # whose partitioned output layer is gathered by hooks the chunks' recomputation would bypass
    zero3 = accelerator.distributed_type.value == "DEEPSPEED" and (
        getattr(accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3
    )
    chunked_head = None if (zero3 or rpref.is_preference(spec)) else rloss.install(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    _register_trainable_hooks(accelerator, is_main)
    # Preference objectives (runtime/preference.py); DPO's reference log-probabilities are computed
    # here, once, before any step or resume: the starting weights (an adapter disabled) are the reference.
    pref = rpref.Objective.from_spec(spec) if rpref.is_preference(spec) else None
    if pref is not None and pref.kind == "dpo":
        for pairs in (prepared.train, prepared.eval):
            rpref.fill_reference(
                model,
                pairs,
                device=accelerator.device,
                adapter_disabled=spec.get("adapter", {}).get("method", "lora") != "full",
                batch_size=mbs,
                world=world,
                rank=rank,
                all_reduce=lambda t: accelerator.reduce(t, reduction="sum"),
                pad_id=tokenizer.pad_token_id,
            )
        if is_main:
            scored = len(prepared.train) + len(prepared.eval)
            log(f"ftspec: DPO reference log-probabilities of {scored} pairs computed before the first step")
    count_units = rpref.count_pairs if pref is not None else rdata.count_trained  # the loss's unit
    tokens_of = rpref.input_tokens if pref is not None else (lambda ex: sum(len(e.input_ids) for e in ex))
    if pref is not None:
        pref.reset()
    # DeepSpeed checkpoints hold the whole module unless told otherwise; with an adapter the frozen base
    # is what from_pretrained loads again on resume, so only the trainable part is saved (accelerate
    # passes these to engine.save_checkpoint / load_checkpoint). Loading then cannot be strict: the
    # base keys are absent by design; the trainable ones are restored from the module states and the
    # ZeRO optimizer's fp32 partitions.
    adapter_only_ds = (
        accelerator.distributed_type.value == "DEEPSPEED"
        and spec.get("adapter", {}).get("method", "lora") != "full"
    )
    ds_save_kwargs = {"exclude_frozen_parameters": True} if adapter_only_ds else {}
    ds_load_kwargs = {"load_module_strict": False} if adapter_only_ds else {}

    start_step, best_eval, bad_evals = 0, math.inf, 0
    if resume:
        start_step, best_eval, bad_evals = _resume_from_checkpoint(
            accelerator, ckroot, out, scheduler, run_info, warn, load_kwargs=ds_load_kwargs
        )
    else:
        set_seed(
            seed, device_specific=True
        )  # dropout masks differ per rank; restored by load_state on resume

    metrics = Metrics(
        out,
        spec.get("output", {}).get("report_to", []),
        is_main,
        warn,
        run_hparams(spec, plan.get("derived") or {}),
    )
    packed = bool(stats["packing"])
    pad_id = tokenizer.pad_token_id
    inject = Injections.from_env()
    loop = LoopSettings.of(training)
    is_ds = accelerator.distributed_type.value == "DEEPSPEED"
    dev = accelerator.device

    def reduce_sum(values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=dev)
        return accelerator.reduce(t, reduction="sum").tolist() if world > 1 else t.tolist()

    def forward_loss_sum(batch):
        inputs = {k: v.to(dev) for k, v in batch.items() if k != "labels"}
        labels = batch["labels"].to(dev)
        # Sum over trained tokens in fp32; the caller divides by the global count of the whole step,
        # so every token weighs the same whatever micro batch or rank it landed on.
        return rloss.loss_sum(model, chunked_head, inputs, labels)

    def evaluate() -> float | None:
        if not prepared.eval:
            return None
        if pref is not None:  # mean preference loss per eval pair
            return rpref.evaluate_pairs(
                pref,
                model,
                prepared.eval,
                device=dev,
                batch_size=mbs,
                world=world,
                rank=rank,
                reduce_sum=reduce_sum,
                pad_id=pad_id,
            )[0]
        model.eval()
        loss_sum, count = 0.0, 0
        with torch.no_grad():
            for chunk in rdata.eval_shards(len(prepared.eval), mbs, world, rank):
                examples = [prepared.eval[i if i is not None else 0] for i in chunk]
                batch = rdata.collate(examples, pad_id, packed=False)
                for row, i in enumerate(chunk):
                    if i is None:
                        batch["labels"][row] = -100  # a filler slot: same shapes on every rank, no weight
                loss_sum += float(forward_loss_sum(batch))
                count += int((batch["labels"][:, 1:] != -100).sum())
        model.train()
        total_sum, total_count = reduce_sum([loss_sum, float(count)])
        return total_sum / max(total_count, 1.0)

    def save_checkpoint(step: int) -> None:
        tmp, final = ckpt.temp_dir(ckroot, step), ckpt.final_dir(ckroot, step)
        # A full disk: the half-written temporary folder goes (it has no completion marker, so resume
        # never trusts it either way) and the complete checkpoints before it stay.
        with writing(final.name, ckroot, cleanup=tmp if is_main else None):
            _save_checkpoint(step, tmp, final)

    def _save_checkpoint(step: int, tmp: Path, final: Path) -> None:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), **ds_save_kwargs)
        if is_main:
            ckpt.save_scheduler(scheduler.state_dict(), tmp)
            state = {
                "step": step,
                "epoch": schedule.epoch_of(step),
                "micro_batch_size": mbs,
                "gradient_accumulation_steps": gas,
                "world_size": world,
                "best_eval_loss": best_eval if math.isfinite(best_eval) else None,
                "evals_without_improvement": bad_evals,
                "saved": now(),
                "training_sha256": ckpt.identity_sha256(identity),
                "training_identity": identity,
            }
            (tmp / ckpt.STATE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        accelerator.wait_for_everyone()
        if is_main:
            ckpt.seal(tmp, final, step)
            ckpt.prune(ckroot, loop.keep)
        accelerator.wait_for_everyone()

    def last_good() -> str:
        found = ckpt.latest_valid(ckroot)
        return str(found.path) if found else "none (no checkpoint was saved yet)"

    # --- train ----------------------------------------------------------------------------------
    from tqdm.auto import tqdm

    # The bar redraws with \r: on a terminal only. In a file or CI log every redraw would be a "\r"
    # fragment among the log lines; the "ftspec: step N/M loss ..." line every logging_steps is the
    # progress there (FTSPEC_PROGRESS_BAR=1 forces the bar, 0 turns it off).
    forced = os.environ.get("FTSPEC_PROGRESS_BAR", "")
    bar = tqdm(
        total=total_steps,
        initial=start_step,
        disable=not is_main or (forced == "0" or (forced != "1" and not sys.stderr.isatty())),
        desc="train",
        unit="step",
        file=sys.stderr,
        mininterval=1.0,
        dynamic_ncols=True,
    )
    model.train()
    window = {"loss": 0.0, "tokens": 0.0, "input_tokens": 0.0, "t0": time.monotonic()}
    step = start_step
    last_loss = None
    last_eval = None
    stopped_early = False
    status, code = "completed", EXIT_OK
    try:
        while step < total_steps:
            micro = [[prepared.train[i] for i in m] for m in schedule.micro_batches(step, rank)]
            # the stop vote rides on the step's first collective: all ranks stop at the same step
            n_global, stop_votes = reduce_sum(
                [float(sum(count_units(b) for b in micro)), 1.0 if _TERMINATION["signal"] else 0.0]
            )
            if stop_votes:
                raise _interrupted(step, start_step, loop.save_every, total_steps, save_checkpoint, last_good)
            scale = world * gas / max(n_global, 1.0)
            grad_norm = None
            try:
                if (
                    inject.oom_at is not None
                    and step + 1 == inject.oom_at
                    and rank == 0
                    and mbs == int(derived["micro_batch_size"])
                ):
                    raise torch.OutOfMemoryError(f"injected by FTSPEC_INJECT_OOM_AT_STEP={inject.oom_at}")
                if inject.crash_at is not None and step + 1 == inject.crash_at and rank == inject.crash_rank:
                    raise RuntimeError(
                        f"injected by FTSPEC_INJECT_CRASH_AT_STEP={inject.crash_at} on rank {rank}"
                    )
                for j, examples in enumerate(micro):
                    if pref is not None:
                        batch = rpref.collate(examples, pad_id)
                    else:
                        batch = rdata.collate(examples, pad_id, packed)
                    with accelerator.accumulate(model):
                        if pref is not None:
                            loss_sum = pref.loss_sum(model, batch, dev)
                        else:
                            loss_sum = forward_loss_sum(batch)
                        if inject.nan_at is not None and step + 1 == inject.nan_at and rank == 0 and j == 0:
                            loss_sum = loss_sum * float("nan")
                        # Every rank learns whether any rank's loss is not finite before anything is
                        # applied, so all stop together and the weights stay those of the last step.
                        bad = reduce_sum([0.0 if torch.isfinite(loss_sum) else 1.0])[0]
                        if bad:
                            value = float(loss_sum.detach())
                            raise StopRun(
                                make(
                                    "FT0706",
                                    value=value if not math.isfinite(value) else "not finite",
                                    step=step + 1,
                                    rank="any" if math.isfinite(value) else rank,
                                    checkpoint=last_good(),
                                ),
                                "nan",
                            )
                        accelerator.backward(loss_sum * scale)
                        if accelerator.sync_gradients:
                            if is_ds:
                                grad_norm = accelerator.deepspeed_engine_wrapped.get_global_grad_norm()
                            else:
                                grad_norm = accelerator.clip_grad_norm_(
                                    model.parameters(), loop.max_norm if loop.max_norm > 0 else float("inf")
                                )
                            optimizer.step()
                            optimizer.zero_grad(set_to_none=True)
                        window["loss"] += float(loss_sum.detach())
                        window["input_tokens"] += float(tokens_of(examples))
                window["tokens"] += float(sum(count_units(b) for b in micro))
            except torch.OutOfMemoryError as exc:
                raise _oom(plan, out, step, rank, mbs, gas, batch_history, last_good(), exc) from None
            scheduler.step()
            step += 1
            bar.update(1)
            if inject.delay:
                time.sleep(inject.delay)
            if step % loop.log_every == 0 or step == total_steps:
                loss_total, tokens, input_tokens = reduce_sum(
                    [window["loss"], window["tokens"], window["input_tokens"]]
                )
                elapsed = max(time.monotonic() - window["t0"], 1e-9)
                last_loss = loss_total / max(tokens, 1.0)
                record = {
                    "step": step,
                    "epoch": round(schedule.epoch_of(step), 4),
                    "loss": round(last_loss, 6),
                    "learning_rate": scheduler.get_last_lr()[0],
                    "grad_norm": None if grad_norm is None else round(float(grad_norm), 6),
                    "tokens_per_second": round(input_tokens / elapsed, 2),
                    "memory": memory_gib(device),  # GiB: peak allocated (CUDA) or peak RSS (CPU)
                    "window_tokens": int(input_tokens),
                    "window_seconds": round(elapsed, 4),
                    "world_size": world,
                    **(pref.log_fields(reduce_sum) if pref is not None else {}),
                    "micro_batch_size": mbs,
                    "gradient_accumulation_steps": gas,
                }
                metrics.write(record, "train")
                if is_main:
                    bar.write(
                        f"ftspec: step {step}/{total_steps} loss {last_loss:.4f} lr {record['learning_rate']:.3g} "
                        f"{record['tokens_per_second']:.0f} tok/s",
                        file=sys.stderr,
                    )
                window = {"loss": 0.0, "tokens": 0.0, "input_tokens": 0.0, "t0": time.monotonic()}
            if step % loop.eval_every == 0 or step == total_steps:
                last_eval = evaluate()
                if last_eval is not None:
                    metrics.write(
                        {
                            "step": step,
                            "eval_loss": round(last_eval, 6),
                            "eval_perplexity": round(math.exp(min(last_eval, 50)), 4),
                            "world_size": world,
                        },
                        "eval",
                    )
                    if is_main:
                        bar.write(f"ftspec: step {step} eval loss {last_eval:.4f}", file=sys.stderr)
                    if last_eval < best_eval:
                        best_eval, bad_evals = last_eval, 0
                    else:
                        bad_evals += 1
                        if loop.patience and bad_evals >= loop.patience and step < total_steps:
                            warn(make("FT0719", step=step, best=f"{best_eval:.4f}", patience=loop.patience))
                            stopped_early = True
            if step % loop.save_every == 0 or (stopped_early and step % loop.save_every):
                save_checkpoint(step)
            if stopped_early:
                break
        bar.close()
        if os.environ.get("FTSPEC_PARAM_DIGEST"):
            _write_param_digest(accelerator, model, out, rank)
        with writing("the final model and its cards", out):
            written = save_final(
                accelerator,
                model,
                tokenizer,
                spec,
                source,
                out,
                is_main,
                spec_dir=spec_dir,
                plan=plan,
                warn=warn,
            )
        run_info["outputs"] = written
        run_info["final"] = {
            "loss": last_loss,
            "eval_loss": last_eval,
            "best_eval_loss": best_eval if math.isfinite(best_eval) else None,
        }
        run_info["stopped_early"] = stopped_early
    except StopRun as stop:
        bar.close()
        stop.diagnostic = located(stop.diagnostic)
        diagnostics.append(stop.diagnostic)
        if is_main or stop.status == "oom":
            log(as_text(stop.diagnostic))
            if stop.status != "interrupted":  # asked to stop: not an error of this rank
                _record_failure(plan_path, stop.diagnostic, stop)
        status, code = stop.status, stop.code
    finally:
        metrics.close()
    run_info.update(
        exit_status=status,
        exit_code=code,
        ended=now(),
        final_step=step,
        diagnostics=[d.to_json() for d in diagnostics],
    )
    if code == EXIT_OK:  # a failed rank may be gone already: never wait on it
        accelerator.wait_for_everyone()
    if is_main:
        write_run_json(run_json, run_info)
        log(f"ftspec: {status} at step {step}/{total_steps}; run folder {out}")
    return code


def _interrupted(step: int, start_step: int, save_every: int, total: int, save, last_good) -> StopRun:
    """Stopped by a signal: save this step unless it is saved already (or nothing was trained since
    the resume), so the last complete checkpoint is as recent as it can be."""
    if step > start_step and step % save_every:
        save(step)
    name = signal.Signals(_TERMINATION["signal"] or signal.SIGTERM).name
    return StopRun(
        make("FT0725", signal=name, step=step, total=total, checkpoint=last_good()),
        "interrupted",
        EXIT_INTERRUPTED,
    )


def _train_file_hashes(spec: dict, spec_dir: Path) -> dict[str, str]:
    hashes = {}
    for path in (entry.path for entry in train_entries(spec["dataset"])):
        try:
            hashes[path] = source_sha256(spec_dir / path)
        except OSError:  # reported with its line by data preparation (FT0711); here it is just different
            hashes[path] = "unreadable"
    return hashes


def _resume_refusal(ckroot: Path, identity: dict) -> dict | None:
    """FT0724's fields when the newest checkpoint was trained under a plan whose training-relevant
    fields (checkpoint.RESUMABLE says which may change) differ from this one; else None."""
    recorded = ckpt.recorded_identity(ckroot)
    if recorded is None:  # nothing saved yet, or a checkpoint from before identities were recorded
        return None
    found, old = recorded
    changes = ckpt.identity_changes(old, identity)
    if not changes:
        return None
    shown = [
        f"{pointer}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}"
        for pointer, a, b in changes[:4]
    ]
    more = f" (and {len(changes) - 4} more)" if len(changes) > 4 else ""
    return {"checkpoint": str(found.path), "changes": "; ".join(shown) + more}


def _write_param_digest(accelerator, model, out: Path, rank: int) -> None:
    digest = hashlib.sha256()
    inner = accelerator.unwrap_model(model)
    for name, param in sorted(inner.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    folder = out / ERRORS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"params-rank{rank}.txt").write_text(digest.hexdigest() + "\n", encoding="utf-8")


def _truncate_metrics(path: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop their earlier records."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                kept.append(line)
        except (ValueError, AttributeError, TypeError):
            continue
    write_atomic(path, "".join(x + "\n" for x in kept))


def reduced_batch(mbs: int, gas: int) -> tuple[int, int]:
    """The next smaller micro batch that keeps micro batch x accumulation (the effective batch, and
    so the data each optimizer step sees) exactly the same: micro batch / its smallest prime factor."""
    factor = next(f for f in range(2, mbs + 1) if mbs % f == 0)
    return mbs // factor, gas * factor


def _oom(plan, out: Path, step: int, rank: int, mbs: int, gas: int, history: list, last: str, exc) -> StopRun:
    """Record the reduced micro batch (same effective batch) for the relaunch (ftspec launch resumes
    from the last checkpoint)."""
    policy = plan["spec"]["training"].get("on_oom", "reduce_batch")
    if policy != "reduce_batch" or mbs <= 1:
        return StopRun(make("FT0708", step=step + 1, rank=rank, mbs=mbs), "oom")
    new_mbs, new_gas = reduced_batch(mbs, gas)
    change = {
        "step": step + 1,
        "rank": rank,
        "from": {"micro_batch_size": mbs, "gradient_accumulation_steps": gas},
        "to": {"micro_batch_size": new_mbs, "gradient_accumulation_steps": new_gas},
        "resume_from": last,
        "error": str(exc)[:300],
        "time": now(),
    }
    ckpt.write_json_atomic(
        out / BATCH_FILE,
        {
            "micro_batch_size": new_mbs,
            "gradient_accumulation_steps": new_gas,
            "history": [*history, change],
            "pending": True,
        },
    )
    return StopRun(
        make("FT0707", step=step + 1, rank=rank, old_mbs=mbs, checkpoint=last, mbs=new_mbs, gas=new_gas),
        "oom",
        EXIT_OOM_RETRY,
    )


def cached_prepare(spec: dict, derived: dict, spec_dir: Path, tokenizer, out: Path, source) -> rdata.Prepared:
    """Tokenize once: the main process (which runs first) writes the result keyed by everything it
    depends on; the other ranks, and a resumed run, read it instead of tokenizing again."""
    key_data = {
        "dataset": spec["dataset"],
        "training": {
            k: spec.get("training", {}).get(k) for k in ("seed", "loss_on", "packing", "sequence_len")
        },
        "sequence_len": derived.get("sequence_len"),
        "template": tokenizer.chat_template,
        "model": source.path_or_id,
        "files": {},
    }
    for path in [entry.path for entry in train_entries(spec["dataset"])] + (
        [spec["dataset"]["eval"]] if spec["dataset"].get("eval") else []
    ):
        try:
            key_data["files"][path] = file_sha256(spec_dir / path)
        except OSError as exc:  # the file moved or vanished since compile
            raise rdata.DataError(
                "FT0711", file=str(spec_dir / path), line=0, detail=exc.strerror or str(exc)
            ) from None
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True, default=str).encode()).hexdigest()[:16]
    # safetensors + JSON, never a pickle: a run folder may be writable by others (runtime/cache.py)
    cache = out / ERRORS_DIR / f"data-{key}{rcache.SUFFIX}"
    cached = rcache.load_prepared(cache)
    if cached is not None:
        return cached
    spec_for_data = dict(spec)
    if not isinstance(spec.get("training", {}).get("sequence_len"), int):
        spec_for_data["training"] = {
            **spec["training"],
            "sequence_len": rdata.resolved_sequence_len(spec, derived),
        }
    prepared = rdata.prepare(spec_for_data, spec_dir, tokenizer)
    rcache.save_prepared(prepared, cache)
    return prepared


def _register_trainable_hooks(accelerator, is_main: bool) -> None:
    """Checkpoints hold only the trainable parameters (the adapter; everything for full fine-tuning)
    instead of accelerate's default full state dict: an 8B LoRA checkpoint is then megabytes, not
    16 GB. DeepSpeed and FSDP checkpoints hold their own (sharded) model states: no hooks there."""
    from accelerate.utils import DistributedType
    from safetensors.torch import load_file, save_file

    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        # accelerate calls the save hooks for these too, but their checkpoint already holds the
        # model; a second copy from named_parameters would be empty ZeRO-3 partitions, or rank 0's
        # FSDP shards, or (full fine-tuning under ZeRO-1/2) the whole model again.
        return

    def save_hook(models, weights, output_dir):
        for i, model in enumerate(models):
            if is_main:
                inner = accelerator.unwrap_model(model)
                state = {
                    n: p.detach().cpu().contiguous() for n, p in inner.named_parameters() if p.requires_grad
                }
                save_file(state, os.path.join(output_dir, f"trainable_{i}.safetensors"))
        weights.clear()

    def load_hook(models, input_dir):
        for i in range(len(models)):
            inner = accelerator.unwrap_model(models[i])
            state = load_file(os.path.join(input_dir, f"trainable_{i}.safetensors"))
            wanted = {n for n, p in inner.named_parameters() if p.requires_grad}
            missing = wanted - set(state)
            if missing:
                raise RuntimeError(
                    f"checkpoint lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[:3]}"
                )
            inner.load_state_dict(state, strict=False)
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "deepspeed", "bitsandbytes", "ftspec"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _record_failure(plan_path: Path, diag: Diagnostic | None, exc: BaseException | None) -> None:
    """A rank that fails writes its error where `ftspec launch` finds it and shows it."""
    rank = os.environ.get("RANK", "0")
    try:
        # read raw, not through read_plan: a plan of the wrong version must still get its error written
        plan = json.loads(plan_path.read_text(encoding="utf-8"))
        folder = run_dir_of(plan, plan_path.parent) / ERRORS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        if diag is not None:
            text = as_text(diag)
        elif exc is not None:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        else:
            text = "failed without a message"
        (folder / f"error-rank{rank}.txt").write_text(text, encoding="utf-8")
    except Exception:  # the error itself is already on stderr; never mask it
        pass


def _shutdown(code: int) -> None:
    """Trap 6: multi-process CPU jobs can abort at interpreter exit after all work is done; leave the
    process group explicitly, flush, and exit without running interpreter teardown."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ftspec.runtime.train", description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True, help="plan.json of a build folder")
    parser.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    args = parser.parse_args(argv)
    from ftspec.runtime.quiet import quiet_known_noise

    quiet_known_noise()
    plan_path = Path(args.plan).resolve()
    code = EXIT_FAILED
    from ftspec.compiler.launch.integrity import verify_build

    edited = verify_build(plan_path.parent)  # launch.sh reaches here without `ftspec launch`: check again
    if edited:
        if os.environ.get("RANK", "0") == "0":
            log(to_text(edited))
        _shutdown(EXIT_FAILED)  # nothing written: the edited plan names the run folder too
    try:
        _LOCATOR[0] = SpecLocator(json.loads(plan_path.read_text(encoding="utf-8")), plan_path)
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    try:
        code = run(plan_path, args.resume)
    except (SetupError, rdata.DataError) as exc:
        diag = make(exc.code, **exc.fields)
        log(as_text(diag))
        _record_failure(plan_path, diag, exc)
        code = EXIT_FAILED
    except StopRun as stop:  # raised outside the loop (OOM before the first step)
        log(as_text(stop.diagnostic))
        _record_failure(plan_path, stop.diagnostic, stop)
        code = stop.code
    except BaseException as exc:  # noqa: BLE001 - any crash: show it, record it, exit non-zero
        traceback.print_exc()
        _record_failure(plan_path, None, exc)
        code = EXIT_FAILED
    _shutdown(code)


if __name__ == "__main__":
    main()
