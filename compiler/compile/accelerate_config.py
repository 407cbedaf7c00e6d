"""The accelerate config for a plan (what `accelerate launch --config_file` reads), and its YAML.

accelerate reads YAML 1.1 with PyYAML: an unquoted `no` is the boolean false there (cpu-notes trap
7), so the file is written with PyYAML's safe_dump, which quotes such strings.
"""

from __future__ import annotations

import yaml
from ftspec.compiler.compile.plan import DEEPSPEED_CONFIG

DISTRIBUTED = {"single": "NO", "ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}
FSDP_MIN_NUM_PARAMS = 100_000_000  # size-based wrapping when the decoder layer class is unknown


def fsdp_config(plan: dict) -> dict:
    """FSDP2 through accelerate: one shard unit per decoder layer, fully sharded."""
    derived = plan["derived"]
    arch = derived.get("architecture") or {}
    layer_class = arch.get("decoder_layer_class")
    full = plan["spec"]["adapter"].get("method") == "full"
    config: dict = {
        "fsdp_version": 2,
        # FSDP2's FULL_SHARD: parameters are re-sharded after each layer's forward
        "fsdp_reshard_after_forward": True,
        # FSDP offloads parameters, gradients and optimizer state together: either offload level
        # of the spec maps to it
        "fsdp_offload_params": derived.get("offload", "none") != "none",
        # full fine-tuning checkpoints are large: each rank writes its shard; adapters are small
        "fsdp_state_dict_type": "SHARDED_STATE_DICT" if full else "FULL_STATE_DICT",
        # rank 0 loads the weights, the others start empty and receive their shards
        "fsdp_cpu_ram_efficient_loading": True,
        # accelerate's launcher requires this with cpu_ram_efficient_loading (FSDP2 ignores it)
        "fsdp_sync_module_states": True,
        # gradient checkpointing is the runtime's (transformers' non-reentrant checkpointing);
        # turning on FSDP's as well would checkpoint twice
        "fsdp_activation_checkpointing": False,
    }
    if layer_class:
        config["fsdp_auto_wrap_policy"] = "TRANSFORMER_BASED_WRAP"
        config["fsdp_transformer_layer_cls_to_wrap"] = layer_class
    else:
        config["fsdp_auto_wrap_policy"] = "SIZE_BASED_WRAP"
        config["fsdp_min_num_params"] = FSDP_MIN_NUM_PARAMS
    return config


def accelerate_config(plan: dict) -> dict:
    derived = plan["derived"]
    strategy = derived["strategy"]
    cpu = derived["device"] == "cpu"
    nodes = int(derived["nodes"])
    world = int(derived["world_size"])
    if cpu:
        # CPU: accelerate's MULTI_CPU and --cpu start ONE process (trap 1); several processes need
        # the multi-GPU launcher with ACCELERATE_USE_CPU=true. accelerate's FSDP cannot run on CPU
        # (trap 5) and its DeepSpeed launcher misreports ranks there (trap 3): the runtime takes
        # the strategy from plan.json and the DeepSpeed JSON from the environment instead.
        distributed = "MULTI_GPU" if world > 1 else "NO"
    else:
        distributed = DISTRIBUTED[strategy]
        if strategy == "single" and world > 1:
            distributed = "MULTI_GPU"
        elif strategy == "ddp" and world == 1:
            # one process is not data parallel: accelerate's multi-GPU launch wants at least two
            distributed = "NO"
    config: dict = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": distributed,
        "downcast_bf16": "no",
        "enable_cpu_affinity": False,
        "gpu_ids": "all",
        "machine_rank": 0,
        "main_training_function": "main",
        "mixed_precision": derived["mixed_precision"],
        "num_machines": nodes,
        "num_processes": world,
        "rdzv_backend": "static",
        "same_network": True,
        "main_process_port": int(derived.get("main_process_port", 29500)),
        "tpu_env": [],
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
        "use_cpu": cpu,
    }
    if nodes > 1:
        # the first node's address is known only in the allocation: launch.sh passes
        # --main_process_ip (slurm: first host of the job; kubernetes: the master service)
        config["main_process_ip"] = None
    if distributed == "DEEPSPEED":
        # precision lives in the DeepSpeed JSON; accelerate refuses a mixed_precision from its own
        # config next to a deepspeed_config_file
        config["mixed_precision"] = None
        ds: dict = {
            "deepspeed_config_file": DEEPSPEED_CONFIG,
            "zero3_init_flag": derived["zero_stage"] == 3,
        }
        if nodes > 1:
            ds["deepspeed_multinode_launcher"] = "standard"  # torchrun on each node, no ssh/pdsh
        config["deepspeed_config"] = ds
    elif distributed == "FSDP":
        config["fsdp_config"] = fsdp_config(plan)
    return config


def to_yaml(config: dict) -> str:
    """YAML 1.1 as accelerate reads it: PyYAML safe_dump (quotes 'no'), sorted keys, block style."""
    return yaml.safe_dump(config, sort_keys=True, default_flow_style=False, allow_unicode=True)


def accelerate_env(plan: dict, build_dir: str) -> dict[str, str]:
    """The environment `accelerate launch` would give the training processes for this config, for
    launchers that start them without accelerate (torchrun, kubernetes): Accelerator() reads these."""
    derived = plan["derived"]
    env = {"ACCELERATE_MIXED_PRECISION": derived["mixed_precision"]}
    if derived["device"] == "cpu":
        env["ACCELERATE_USE_CPU"] = "true"
    if derived["strategy"] == "deepspeed":
        env["ACCELERATE_USE_DEEPSPEED"] = "true"
        env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = f"{build_dir}/{DEEPSPEED_CONFIG}"
        env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] = str(derived["zero_stage"] == 3).lower()
        env.pop("ACCELERATE_MIXED_PRECISION")  # the JSON decides (see accelerate_config)
    elif derived["strategy"] == "fsdp" and derived["device"] != "cpu":
        fsdp = fsdp_config(plan)
        env.update(
            {
                "ACCELERATE_USE_FSDP": "true",
                "FSDP_VERSION": str(fsdp["fsdp_version"]),
                "FSDP_RESHARD_AFTER_FORWARD": str(fsdp["fsdp_reshard_after_forward"]).lower(),
                "FSDP_OFFLOAD_PARAMS": str(fsdp["fsdp_offload_params"]).lower(),
                "FSDP_STATE_DICT_TYPE": fsdp["fsdp_state_dict_type"],
                "FSDP_CPU_RAM_EFFICIENT_LOADING": str(fsdp["fsdp_cpu_ram_efficient_loading"]).lower(),
                "FSDP_SYNC_MODULE_STATES": str(fsdp["fsdp_sync_module_states"]).lower(),
                "FSDP_ACTIVATION_CHECKPOINTING": str(fsdp["fsdp_activation_checkpointing"]).lower(),
                "FSDP_AUTO_WRAP_POLICY": fsdp["fsdp_auto_wrap_policy"],
            }
        )
        if "fsdp_transformer_layer_cls_to_wrap" in fsdp:
            env["FSDP_TRANSFORMER_CLS_TO_WRAP"] = fsdp["fsdp_transformer_layer_cls_to_wrap"]
        else:
            env["FSDP_MIN_NUM_PARAMS"] = str(fsdp["fsdp_min_num_params"])
    return env
