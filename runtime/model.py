"""Model, tokenizer, adapter and optimizer set-up: transformers, PEFT and bitsandbytes, nothing custom.

Every model, built-in or not, goes through the same `from_pretrained` path: `builtin:tiny-llama` is
first materialised into a local folder (runtime/builtin.py), `builtin:smollm2-135m` and a `.gguf`
model.id are converted once into a cached folder (runtime/gguf_model.py), a local folder is read as is, a hub id is
fetched at its pinned revision (or read from the local cache when HF_HUB_OFFLINE=1, which
transformers honours itself).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftspec.compiler.core import model_files
from ftspec.compiler.core.schema import schema_default
from ftspec.compiler.dataset.chat_templates import template_source
from ftspec.runtime import builtin
from ftspec.runtime.gguf_model import GGUFError, ensure_model
from ftspec.runtime.log import log


class SetupError(Exception):
    """A problem with the plan or the environment found at set-up: carries an FT07xx code and fields."""

    def __init__(self, code: str, **fields: object):
        super().__init__(f"{code}: {fields}")
        self.code = code
        self.fields = fields


@dataclass(frozen=True)
class ModelSource:
    path_or_id: str
    revision: str | None
    local: bool


def resolve_source(model_spec: dict, spec_dir: Path) -> ModelSource:
    """Where from_pretrained reads the model: the built-in model's cache folder, a local folder (relative
    to the spec's folder), or a hub id with its revision."""
    model_id = model_spec["id"]
    if builtin.is_builtin(model_id):
        try:
            return ModelSource(str(builtin.ensure_builtin(model_id, log=log)), None, True)
        except ValueError:
            raise SetupError("FT0702", model=model_id, known=", ".join(builtin.names())) from None
        except GGUFError as exc:
            raise SetupError("FT0738", model=model_id, detail=str(exc)) from None
    if model_files.is_gguf(model_id):
        try:
            return ModelSource(str(ensure_model(model_id, spec_dir, log=log)), None, True)
        except GGUFError as exc:
            raise SetupError("FT0738", model=model_id, detail=str(exc)) from None
    candidate = Path(model_id).expanduser()
    if not candidate.is_absolute():
        candidate = spec_dir / candidate
    if (candidate / "config.json").is_file():
        return ModelSource(str(candidate), None, True)
    return ModelSource(model_id, model_spec.get("revision"), False)


def load_tokenizer(source: ModelSource, model_spec: dict, spec_dir: Path | None = None):
    """The model's tokenizer, with the chat template the spec names: ftspec's (chatml/llama3/alpaca) or
    a .jinja file relative to the spec's folder `spec_dir`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        source.path_or_id,
        revision=source.revision,
        trust_remote_code=bool(model_spec.get("trust_remote_code", False)),
    )
    choice = model_spec.get("chat_template", "model")
    if choice != "model":
        tokenizer.chat_template = template_source(choice, spec_dir)
    elif not getattr(tokenizer, "chat_template", None):
        raise SetupError("FT0703", model=model_spec["id"])
    if tokenizer.pad_token is None:
        # Padding positions never reach the loss (labels -100, attention mask 0): any token will do,
        # and reusing EOS keeps the vocabulary (and the embedding matrix) unchanged.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def weight_dtype(precision: str):
    """bf16: weights in bf16 (what transformers does with a bf16 model); the *-mixed / fp16 / fp32
    settings keep fp32 master weights and let autocast pick the compute dtype."""
    import torch

    return torch.bfloat16 if precision == "bf16" else torch.float32


def load_model(
    source: ModelSource,
    spec: dict,
    *,
    device: str,
    local_rank: int,
    ds_config: dict | None,
    strategy: str = "single",
):
    """The base model (quantized for qlora), with the adapter attached and gradient checkpointing set."""
    from transformers import AutoModelForCausalLM

    adapter = spec.get("adapter", {})
    training = spec.get("training", {})
    method = adapter.get("method", "lora")
    kwargs: dict = {
        "revision": source.revision,
        "trust_remote_code": bool(spec["model"].get("trust_remote_code", False)),
        "dtype": weight_dtype(training.get("precision", "bf16")),
    }
    keep_alive = None
    if ds_config is not None and (ds_config.get("zero_optimization") or {}).get("stage") == 3:
        # ZeRO-3: from_pretrained must see a live HfDeepSpeedConfig to build the model already
        # partitioned (cpu-notes trap 4: wrapping it in deepspeed.zero.Init by hand fails).
        from transformers.integrations import HfDeepSpeedConfig

        keep_alive = HfDeepSpeedConfig(ds_config)
    if method == "qlora":
        sharded = keep_alive is not None or strategy == "fsdp"
        # ZeRO-3 and FSDP shard the 4-bit weights themselves: transformers refuses a device_map
        # under ZeRO-3 ("not compatible with passing a device_map"), and both need the packed
        # 4-bit data stored in the dtype of the other weights (bnb_4bit_quant_storage) so that
        # they can be flattened and partitioned with them. DDP places the whole model per rank.
        kwargs["quantization_config"] = quantization_config(
            adapter.get("quantization") or {}, storage=kwargs["dtype"] if sharded else None
        )
        if not sharded:
            kwargs["device_map"] = {"": "cpu" if device == "cpu" else local_rank}
    # Any: a transformers model, then PEFT's wrapper of it, carrying our attribute below
    model: Any = AutoModelForCausalLM.from_pretrained(source.path_or_id, **kwargs)
    if method == "qlora" and device == "cpu" and "device_map" not in kwargs:
        _no_cpu_repacking(model)
    model.config.use_cache = False
    gradient_checkpointing = bool(training.get("gradient_checkpointing", False))
    # Not PEFT's prepare_model_for_kbit_training for QLoRA: it also casts every 16-bit parameter
    # (embeddings, lm_head, norms) to fp32, ~2 GiB more for an 8B model's 128k-token embeddings, which
    # neither `precision: bf16` ("weights in bf16") nor the memory estimate promises; it also mixes
    # dtypes that ZeRO-3/FSDP flatten together. Freezing the base is all QLoRA needs (torchtune keeps
    # bf16 norms too); get_peft_model below adds the trainable adapters.
    if method == "qlora":
        model.requires_grad_(False)
    if gradient_checkpointing:
        # Non-reentrant checkpointing needs no input grads trick for PEFT and works under DDP.
        if hasattr(
            model, "activation_checkpointing_enable"
        ):  # transformers >= 5.2x; the old name is deprecated
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=int(adapter.get("r", 16)),
            # PEFT annotates lora_alpha as int but only divides by it; the spec's alpha is a number
            lora_alpha=float(adapter.get("alpha", 16)),  # type: ignore[arg-type]
            lora_dropout=float(adapter.get("dropout", 0.0)),
            # PEFT resolves "all-linear" to every linear layer except the output head, per architecture.
            target_modules=adapter.get("target_modules", "all-linear"),
            use_dora=bool(adapter.get("dora", False)),
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    else:
        model.requires_grad_(True)
    model._ftspec_ds_config_ref = keep_alive  # keeps HfDeepSpeedConfig alive as long as the model
    return model


def _no_cpu_repacking(model) -> None:
    """bitsandbytes repacks 4-bit weights for its CPU kernels on the first eval-mode forward (on CPUs
    with AVX512-BF16) and unpacks them again in state_dict, asserting uint8 storage; sharded QLoRA
    stores them in the float dtype ZeRO-3/FSDP flatten, so the first checkpoint after an evaluation
    failed. Keep the training layout: the repacking only speeds up inference."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def quantization_config(quant: dict, storage=None):
    import torch
    from transformers import BitsAndBytesConfig

    compute = getattr(torch, TORCH_DTYPES[quant.get("compute_dtype", "bf16")])
    if int(quant.get("bits", 4)) == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    extra = {"bnb_4bit_quant_storage": storage} if storage is not None else {}
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.get("quant_type", "nf4"),
        bnb_4bit_use_double_quant=bool(quant.get("double_quant", True)),
        bnb_4bit_compute_dtype=compute,
        **extra,
    )


def build_optimizer(model, training: dict, device: str, warn):
    """The optimizer the spec names, over the trainable parameters only."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    name = training.get("optimizer", "adamw_torch")
    lr = float(training.get("learning_rate", schema_default("/training/learning_rate")))
    wd = float(training.get("weight_decay", 0.0))
    if name == "adamw_torch":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    import bitsandbytes as bnb

    if name.startswith("paged_") and device == "cpu":
        # Paged optimizers page their state through CUDA unified memory; without CUDA there is
        # nothing to page, so use the same optimizer unpaged and say so.
        warn("FT0705", optimizer=name, fallback=name.removeprefix("paged_"))
        name = name.removeprefix("paged_")
    classes = {
        "adamw_8bit": bnb.optim.AdamW8bit,
        "adamw_32bit": bnb.optim.AdamW32bit,
        "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
        "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
    }
    return classes[name](params, lr=lr, weight_decay=wd)


def build_scheduler(optimizer, training: dict, total_steps: int, warmup_steps: int):
    from transformers import get_scheduler

    return get_scheduler(
        training.get("scheduler", "cosine"),
        optimizer=optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=total_steps,
    )


def trainable_summary(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")
