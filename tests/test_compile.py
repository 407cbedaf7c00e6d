"""`ftspec compile`: artifacts the real tools accept, batch arithmetic, quoting, determinism, locks."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from compile_helpers import FIXTURES, ROOT, all_specs, compile_to
from ftspec.compiler.compile.launch_command import launch_command
from ftspec.compiler.compile.plan import read_plan
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

PLAN_SCHEMA = json.loads((ROOT / "schemas" / "plan.v1.schema.json").read_text())
K8S_SCHEMA = json.loads((FIXTURES / "schemas" / "pytorchjob.fields.schema.json").read_text())


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    """Every spec compiled once (forced where it does not fit); name -> build folder."""
    out = {}
    root = tmp_path_factory.mktemp("builds")
    for spec in all_specs():
        build = root / spec.stem
        result = compile_to(spec, build)
        if not result.ok:
            result = compile_to(spec, build, force=True)
        assert result.ok, [d.message for d in result.diagnostics if d.severity == "error"]
        out[spec.stem] = build
    return out


def _plans(builds):
    return {name: json.loads((b / "plan.json").read_text()) for name, b in builds.items()}


# ------------------------------------------------------------------------------------- plan.json


def test_plans_match_schema_and_arithmetic(builds):
    Draft202012Validator.check_schema(PLAN_SCHEMA)
    validator = Draft202012Validator(PLAN_SCHEMA)
    for name, plan in _plans(builds).items():
        errors = [e.message for e in validator.iter_errors(plan)]
        assert not errors, (name, errors)
        d = plan["derived"]
        assert d["world_size"] == d["nodes"] * d["gpus_per_node"]
        assert (
            d["effective_batch"] == d["micro_batch_size"] * d["gradient_accumulation_steps"] * d["world_size"]
        )
        assert d["steps_per_epoch"] == math.ceil(d["train_examples"] / d["effective_batch"])
        training = plan["spec"]["training"]
        if "max_steps" in training:
            assert d["total_steps"] == training["max_steps"]
        else:
            assert d["total_steps"] == math.ceil(training["epochs"] * d["steps_per_epoch"])
        assert 0 <= d["warmup_steps"] <= d["total_steps"]
        assert (
            d["mixed_precision"]
            == {"bf16": "bf16", "bf16-mixed": "bf16", "fp16": "fp16", "fp32": "no"}[d["precision"]]
        )
        assert plan["sources"]["/derived/effective_batch"] == "derived"
        assert read_plan(builds[name] / "plan.json") == plan


def test_plan_records_value_sources(builds):
    plan = _plans(builds)["cpu-ddp"]
    s = plan["sources"]
    assert s["/spec/training/learning_rate"] == "spec"
    assert s["/spec/training/scheduler"] == "default"
    assert s["/derived/sequence_len"] == "derived"  # p95, measured by the data check
    assert plan["derived"]["strategy"] == "ddp" and plan["derived"]["device"] == "cpu"
    assert plan["derived"]["warmup_steps"] == 2  # warmup_steps given


@given(n=st.integers(1, 5000), micro=st.integers(1, 16), world=st.integers(1, 16), accum=st.integers(1, 16))
def test_steps_per_epoch_matches_per_rank_batching(n, micro, world, accum):
    """The formula equals what a padded DistributedSampler + keep-last-batch loader + accumulation does."""
    per_rank = math.ceil(n / world)
    micro_batches = math.ceil(per_rank / micro)
    optimizer_steps = math.ceil(micro_batches / accum)
    assert optimizer_steps == math.ceil(n / (micro * world * accum))


def test_unknown_plan_version_is_rejected(builds, tmp_path):
    plan = _plans(builds)["cpu-ddp"]
    plan["metadata"]["schema_version"] = 2
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    with pytest.raises(ValueError, match="schema_version"):
        read_plan(path)


# ---------------------------------------------------------------------------- accelerate config


def test_accelerate_configs_load_with_accelerate(builds):
    from accelerate.commands.config.config_args import load_config_from_file

    for _name, build in builds.items():
        plan = json.loads((build / "plan.json").read_text())
        d = plan["derived"]
        cfg = load_config_from_file(str(build / "accelerate.yaml"))
        assert cfg.num_processes == d["world_size"] and cfg.num_machines == d["nodes"]
        # trap 7: YAML 1.1 reads a bare `no` as False
        if d["strategy"] == "deepspeed" and d["device"] == "cuda":
            assert cfg.mixed_precision is None
            assert cfg.deepspeed_config["deepspeed_config_file"] == "deepspeed.json"
            assert cfg.deepspeed_config["zero3_init_flag"] == (d["zero_stage"] == 3)
        else:
            assert cfg.mixed_precision == d["mixed_precision"] and isinstance(cfg.mixed_precision, str)
        if d["device"] == "cpu":
            assert cfg.use_cpu is True
            assert cfg.distributed_type.value == ("MULTI_GPU" if d["world_size"] > 1 else "NO")
        else:
            expected = {"single": "NO", "ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}[
                d["strategy"]
            ]
            assert cfg.distributed_type.value == expected
        if d["strategy"] == "fsdp":
            fsdp = cfg.fsdp_config
            assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == d["architecture"]["decoder_layer_class"]
            assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
            assert fsdp["fsdp_cpu_ram_efficient_loading"] is True and fsdp["fsdp_sync_module_states"] is True


def test_fsdp_config_is_accepted_by_the_fsdp_plugin(builds, monkeypatch):
    """Beyond load_config_from_file (trap 8): accelerate's FSDP plugin builds from the same values."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from ftspec.compiler.compile.accelerate_config import accelerate_env

    plan = json.loads((builds["qwen2.5-7b-full-fsdp-2node"] / "plan.json").read_text())
    for key, value in accelerate_env(plan, "/build").items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True
    assert plugin.transformer_cls_names_to_wrap == ["Qwen2DecoderLayer"]
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    assert plugin.cpu_ram_efficient_loading is True


# ------------------------------------------------------------------------------------- DeepSpeed


def _values(node) -> list:
    if isinstance(node, dict):
        return [v for x in node.values() for v in _values(x)]
    return [node]


def test_deepspeed_json_loads_with_deepspeed_at_target_world_size(builds, monkeypatch):
    import deepspeed.runtime.config as ds_config

    class _DataParallel:  # trap 8: outside a launch DeepSpeedConfig assumes world size 1
        def __init__(self, world):
            self.world = world

        def get_data_parallel_world_size(self):
            return self.world

    monkeypatch.setattr(ds_config.dist, "get_rank", lambda *a, **k: 0)
    checked = 0
    for _name, build in builds.items():
        path = build / "deepspeed.json"
        plan = json.loads((build / "plan.json").read_text())
        if plan["derived"]["strategy"] != "deepspeed":
            assert not path.exists()
            continue
        raw = json.loads(path.read_text())
        assert "optimizer" not in raw and "scheduler" not in raw  # the runtime builds both from the spec
        assert "auto" not in _values(raw)
        d = plan["derived"]
        cfg = ds_config.DeepSpeedConfig(str(path), mpu=_DataParallel(d["world_size"]))
        assert (
            cfg.train_batch_size == d["micro_batch_size"] * d["gradient_accumulation_steps"] * d["world_size"]
        )
        assert cfg.train_micro_batch_size_per_gpu == d["micro_batch_size"]
        assert cfg.gradient_accumulation_steps == d["gradient_accumulation_steps"]
        assert cfg.zero_optimization_stage == d["zero_stage"]
        assert cfg.bfloat16_config.enabled == (d["mixed_precision"] == "bf16")
        assert cfg.float16_config.enabled == (d["mixed_precision"] == "fp16")
        assert cfg.gradient_clipping == plan["spec"]["training"]["max_grad_norm"]
        assert cfg.optimizer_name is None and cfg.scheduler_name is None
        if d["offload"] == "optimizer_and_params":
            assert raw["zero_optimization"]["offload_param"]["device"] == "cpu"
        # the same JSON at the wrong world size is refused by DeepSpeed's own assertion
        with pytest.raises(AssertionError):
            ds_config.DeepSpeedConfig(str(path), mpu=_DataParallel(d["world_size"] + 1))
        checked += 1
    assert checked >= 3


# ------------------------------------------------------------------------------- scripts and stubs


def test_scripts_pass_bash_n(builds):
    scripts = [p for b in builds.values() for p in b.iterdir() if p.suffix in (".sh", ".sbatch")]
    assert len(scripts) >= len(builds)
    for script in scripts:
        assert os.stat(script).st_mode & stat.S_IXUSR
        run = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert run.returncode == 0, (script, run.stderr)


STUB = """#!/usr/bin/env bash
# fake launcher: record argv (NUL-separated) and the launch-related environment, one file pair per call
n=$(ls "$STUB_DIR" | wc -l); f="$STUB_DIR/$(printf %04d "$n")-$(basename "$0")"
printf '%s\\0' "$@" > "$f.argv"
env | grep -E '^(ACCELERATE_|OMP_NUM_THREADS|MACHINE_RANK|MAIN_PROCESS_IP|FTSPEC_)' | sort > "$f.env"
"""

SRUN_STUB = """#!/usr/bin/env bash
# fake srun: drop srun's own options, run the command once per node with that node's SLURM_NODEID
while [[ "$1" == --* ]]; do shift; done
for node in 0 1; do SLURM_NODEID=$node SLURM_PROCID=$node "$@" || exit $?; done
"""


@pytest.fixture
def stub_path(tmp_path):
    bin_dir = tmp_path / "stubs"
    bin_dir.mkdir()
    for tool in ("accelerate", "torchrun"):
        (bin_dir / tool).write_text(STUB)
    (bin_dir / "srun").write_text(SRUN_STUB)
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\nprintf 'node-a\\nnode-b\\n'\n")
    for p in bin_dir.iterdir():
        p.chmod(0o755)
    return bin_dir


def _run_script(script: Path, stubs: Path, tmp_path: Path, extra_env: dict | None = None, args=()):
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir(exist_ok=True)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = {
        "PATH": f"{stubs}:/usr/bin:/bin",
        "STUB_DIR": str(calls_dir),
        "HOME": str(tmp_path),
        **(extra_env or {}),
    }
    run = subprocess.run(
        ["bash", str(script), *args], cwd=work, env=env, capture_output=True, text=True, timeout=60
    )
    calls = []
    for argv_file in sorted(calls_dir.glob("*.argv")):
        tool = argv_file.stem.split("-", 1)[1]
        raw = argv_file.read_text()
        argv = raw.split("\0")[:-1] if raw else []
        calls.append((tool, argv, argv_file.with_suffix(".env").read_text()))
    return run, calls


def _no_pwned(tmp_path: Path, build: Path) -> None:
    found = [
        *tmp_path.rglob("PWNED*"),
        *build.rglob("PWNED*"),
        *ROOT.glob("PWNED*"),
        *FIXTURES.rglob("PWNED*"),
    ]
    assert not found, f"injected command ran: {found}"


def test_injection_spec_runs_nothing_it_carries(builds, stub_path, tmp_path):
    build = builds["injection"]
    plan = json.loads((build / "plan.json").read_text())
    run, calls = _run_script(
        build / "slurm.sbatch",
        stub_path,
        tmp_path,
        {"SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_SUBMIT_DIR": str(build)},
        args=["--resume"],
    )
    assert run.returncode == 0, run.stderr
    _no_pwned(tmp_path, build)
    # the hostile output folder is printed verbatim, as data
    assert plan["derived"]["output_dir"] in run.stderr
    assert [c[0] for c in calls] == ["accelerate", "accelerate"]
    for rank, (_tool, argv, env) in enumerate(calls):
        assert argv[:2] == ["launch", "--config_file"] and argv[2] == f"{build}/accelerate.yaml"
        assert argv[argv.index("--machine_rank") + 1] == str(rank)
        assert argv[argv.index("--main_process_ip") + 1] == "node-a"  # first host of the allocation
        assert (
            argv[argv.index("--num_processes") + 1] == "4" and "--multi_gpu" in argv and "--cpu" not in argv
        )
        assert argv[-3:] == ["--plan", f"{build}/plan.json", "--resume"]
        assert "ACCELERATE_USE_CPU=true" in env and "OMP_NUM_THREADS=" in env


def test_injection_through_launch_sh_directly(builds, stub_path, tmp_path):
    build = builds["injection"]
    run, calls = _run_script(
        build / "launch.sh",
        stub_path,
        tmp_path,
        {"MACHINE_RANK": "1", "MAIN_PROCESS_IP": "$(touch PWNED_ip)"},
    )
    assert run.returncode == 0, run.stderr
    _no_pwned(tmp_path, build)
    argv = calls[0][1]
    assert argv[argv.index("--main_process_ip") + 1] == "$(touch PWNED_ip)"  # passed as data
    (tmp_path / "again").mkdir()
    missing, calls = _run_script(build / "launch.sh", stub_path, tmp_path / "again")
    assert missing.returncode != 0 and "MACHINE_RANK" in missing.stderr and not calls


def test_cpu_launch_starts_multi_process_form(builds, stub_path, tmp_path):
    build = builds["cpu-ddp"]
    run, calls = _run_script(build / "launch.sh", stub_path, tmp_path)
    assert run.returncode == 0, run.stderr
    tool, argv, env = calls[0]
    assert tool == "accelerate" and "--cpu" not in argv
    assert argv[argv.index("--num_processes") + 1] == "2" and "--multi_gpu" in argv
    assert "ACCELERATE_USE_CPU=true" in env
    argv_py, env_py = launch_command(json.loads((build / "plan.json").read_text()), build, cpu_count=2)
    assert argv_py[1:] == argv  # the script and `ftspec launch` run the same command
    if "OMP_NUM_THREADS" not in os.environ:
        assert env_py["OMP_NUM_THREADS"] == "1"
    assert env_py["ACCELERATE_USE_CPU"] == "true"


def test_torchrun_launch_carries_accelerate_environment(builds, stub_path, tmp_path):
    build = builds["cpu-zero2-torchrun"]
    run, calls = _run_script(build / "launch.sh", stub_path, tmp_path, args=["--resume"])
    assert run.returncode == 0, run.stderr
    tool, argv, env = calls[0]
    assert tool == "torchrun"
    assert argv[:4] == ["--nnodes", "1", "--nproc_per_node", "2"]
    assert argv[-5:] == ["-m", "ftspec.runtime.train", "--plan", f"{build}/plan.json", "--resume"]
    assert f"ACCELERATE_DEEPSPEED_CONFIG_FILE={build}/deepspeed.json" in env
    assert "ACCELERATE_USE_DEEPSPEED=true" in env and "ACCELERATE_USE_CPU=true" in env
    bad, _ = _run_script(build / "launch.sh", stub_path, tmp_path, args=["--oops"])
    assert bad.returncode == 2


def test_launch_command_forms(builds):
    plan = json.loads((builds["llama3.1-70b-lora-zero3-8xh100"] / "plan.json").read_text())
    argv, env = launch_command(plan, Path("/b"), resume=True)
    assert Path(argv[0]).name == "accelerate"
    assert argv[1:] == [
        "launch",
        "--config_file",
        "/b/accelerate.yaml",
        "--deepspeed_config_file",
        "/b/deepspeed.json",
        "-m",
        "ftspec.runtime.train",
        "--plan",
        "/b/plan.json",
        "--resume",
    ]
    assert env == {}
    two_node = json.loads((builds["qwen2.5-7b-full-fsdp-2node"] / "plan.json").read_text())
    with pytest.raises(ValueError, match="machine_rank"):
        launch_command(two_node, Path("/b"))
    argv, _ = launch_command(two_node, Path("/b"), machine_rank=1, main_process_ip="10.0.0.1")
    assert argv[argv.index("--machine_rank") + 1] == "1" and argv[argv.index("--num_machines") + 1] == "2"
    single_cpu = json.loads((builds["cpu-ddp"] / "plan.json").read_text())
    single_cpu["derived"].update(gpus_per_node=1, world_size=1)
    argv, env = launch_command(single_cpu, Path("/b"), cpu_count=2)
    assert "--multi_gpu" not in argv and argv[argv.index("--num_processes") + 1] == "1"


# ---------------------------------------------------------------------------------- kubernetes


def test_pytorchjob_manifest_validates(builds):
    manifest = yaml.safe_load((builds["k8s-ddp-2node"] / "pytorchjob.yaml").read_text())
    errors = [e.message for e in Draft202012Validator(K8S_SCHEMA).iter_errors(manifest)]
    assert not errors
    replicas = manifest["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] + replicas["Worker"]["replicas"] == 2
    container = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container["ports"][0]["containerPort"] == 23456
    assert manifest["metadata"]["name"] == "fixture-k8s-ddp"  # DNS-1123 from fixture_k8s.ddp


def test_pytorchjob_escapes_kubernetes_variable_expansion(tmp_path):
    result = compile_to(
        Path("tests/fixtures/compile/k8s-ddp-2node.yaml"),
        tmp_path / "b",
        container_build_dir="/data/$(HOME)/build",
        image="registry.local/ftspec:1",
    )
    manifest = yaml.safe_load(result.files["pytorchjob.yaml"])
    container = manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["bash", "/data/$$(HOME)/build/launch.sh"]
    assert container["image"] == "registry.local/ftspec:1"
    assert result.plan["sources"]["/launch/image"] == "cli"


# ------------------------------------------------------------------------- determinism and CLI


def _cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "ftspec.compiler.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_second_compile_is_identical_and_replaces_in_place(tmp_path):
    build = tmp_path / "build"
    spec = "specs/llama3.1-70b-lora-zero3-8xh100.yaml"
    first = _cli("compile", spec, "-o", str(build))
    assert first.returncode == 0, first.stderr
    snapshot = {p.name: p.read_bytes() for p in build.iterdir()}
    second = _cli("compile", spec, "-o", str(build))
    assert second.returncode == 0, second.stderr
    assert {p.name: p.read_bytes() for p in build.iterdir()} == snapshot
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging folders left behind"


def test_overrides_are_recorded_as_cli(tmp_path):
    build = tmp_path / "b"
    run = _cli(
        "compile",
        "tests/fixtures/compile/cpu-ddp.yaml",
        "-o",
        str(build),
        "--set",
        "training.learning_rate=1e-3",
        "--set",
        "training.micro_batch_size=2",
    )
    assert run.returncode == 0, run.stderr + run.stdout
    plan = json.loads((build / "plan.json").read_text())
    assert plan["spec"]["training"]["learning_rate"] == 0.001
    assert plan["sources"]["/spec/training/learning_rate"] == "cli"
    assert plan["sources"]["/derived/micro_batch_size"] == "cli"
    assert plan["derived"]["effective_batch"] == 4
    bad = _cli(
        "compile",
        "tests/fixtures/compile/cpu-ddp.yaml",
        "-o",
        str(tmp_path / "c"),
        "--set",
        "training.micro_batch_size=zero",
    )
    assert bad.returncode == 1 and not (tmp_path / "c").exists()
    assert "micro_batch_size" in bad.stdout


def test_refuses_infeasible_then_force_is_recorded(tmp_path):
    spec = "specs/llama3-70b-lora-1gpu.yaml"
    if not (ROOT / spec).exists():
        pytest.skip("example spec not present")
    refused = _cli("compile", spec, "-o", str(tmp_path / "b"))
    assert refused.returncode == 1 and "FT0604" in refused.stdout and not (tmp_path / "b").exists()
    forced = _cli("compile", spec, "-o", str(tmp_path / "b"), "--force")
    assert forced.returncode == 0
    assert json.loads((tmp_path / "b" / "plan.json").read_text())["forced"] is True
    assert "FORCED" in (tmp_path / "b" / "REVIEW.md").read_text()


def test_does_not_overwrite_a_foreign_folder(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    run = _cli("compile", "tests/fixtures/compile/cpu-ddp.yaml", "-o", str(target))
    assert run.returncode == 2 and (target / "notes.txt").read_text() == "keep me"
    assert "FT0607" in run.stdout and "choose another -o folder" in run.stdout
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]


def test_failed_swap_keeps_previous_build(tmp_path, monkeypatch):
    from ftspec.compiler.compile import compile as build_mod

    target = tmp_path / "b"
    build_mod.write_build(
        {"plan.json": json.dumps({"metadata": {"kind": "ftspec-plan", "schema_version": 1}})}, target
    )
    before = (target / "plan.json").read_text()
    real_replace = os.replace

    def failing(src, dst):
        if Path(dst) == target and ".tmp-" in str(src):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(build_mod.os, "replace", failing)
    with pytest.raises(build_mod.BuildDirError):
        build_mod.write_build({"plan.json": "{}", "launch.sh": "x"}, target)
    assert (target / "plan.json").read_text() == before and not (target / "launch.sh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_compile_modules_import_no_heavy_stack():
    code = (
        "import sys; import ftspec.compiler.compile.compile, ftspec.compiler.compile.render, ftspec.compiler.compile.launch_command, "
        "ftspec.compiler.check.lockfile, ftspec.compiler.compile.review, ftspec.compiler.verbs.compile; "
        "bad = [m for m in ('torch', 'transformers', 'accelerate', 'deepspeed', 'peft', 'datasets') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


# -------------------------------------------------------------------------------------- lock.json


def _copy_fixture(tmp_path: Path) -> Path:
    dst = tmp_path / "proj"
    shutil.copytree(FIXTURES, dst, ignore=shutil.ignore_patterns("schemas"))
    return dst / "cpu-ddp.yaml"


def test_lock_records_and_detects_drift(tmp_path, monkeypatch):
    from ftspec.compiler.check import lockfile
    from ftspec.compiler.core.loader import load_spec
    from ftspec.compiler.core.resolve import resolve

    spec_path = _copy_fixture(tmp_path)
    build = tmp_path / "build"
    run = _cli("compile", str(spec_path), "-o", str(build), "--repo-root", str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    lock = json.loads((build / "lock.json").read_text())
    assert lock["packages"]["accelerate"]["installed"] == lockfile.installed_version("accelerate")
    assert (
        lock["model"]["chat_template"]["name"] == "chatml"
        and len(lock["model"]["chat_template"]["sha256"]) == 64
    )
    assert [f["path"] for f in lock["data"]] == ["data/train.jsonl"]
    assert lock["metadata"]["overrides"] == {}
    overridden = _cli(
        "compile",
        str(spec_path),
        "-o",
        str(tmp_path / "b2"),
        "--repo-root",
        str(tmp_path),
        "--set",
        "training.learning_rate=1e-4",
    )
    assert overridden.returncode == 0, overridden.stdout + overridden.stderr
    assert json.loads((tmp_path / "b2" / "lock.json").read_text())["metadata"]["overrides"] == {
        "/training/learning_rate": 1e-4
    }

    def drift():
        spec = load_spec(spec_path)
        return lockfile.check_lock(build / "lock.json", spec, resolve(spec.data))

    assert drift() == []
    check = _cli("check", str(spec_path), "--lock", str(build / "lock.json"), "--repo-root", str(tmp_path))
    if "unrecognized arguments: --lock" not in check.stderr:
        assert "FT061" not in check.stdout
    with open(spec_path.parent / "data" / "train.jsonl", "a") as fh:
        fh.write(
            json.dumps(
                {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
            )
            + "\n"
        )
    codes = [d.code for d in drift()]
    assert codes == ["FT0612"]
    spec_path.write_text(spec_path.read_text().replace("learning_rate: 3.0e-3", "learning_rate: 2.0e-3"))
    assert sorted(d.code for d in drift()) == ["FT0611", "FT0612"]
    monkeypatch.setattr(
        lockfile,
        "installed_version",
        lambda name: "0.0.1" if name == "peft" else lock["packages"].get(name, {}).get("installed"),
    )
    assert "FT0614" in [d.code for d in drift()]
    (build / "lock.json").write_text(json.dumps({"metadata": {"kind": "ftspec-lock", "schema_version": 9}}))
    assert [d.code for d in drift()] == ["FT0610"]


# Accelerator() honours ACCELERATE_USE_CPU (a bare PartialState() does not); the gather proves the
# processes are one job, not two unsynchronised ones (trap 2). os._exit avoids trap 6's exit abort.
PROBE = """import os, sys
import torch
from accelerate import Accelerator
acc = Accelerator()
ranks = acc.gather(torch.tensor([acc.process_index])).tolist()
with open(os.path.join(sys.argv[1], f"rank{acc.process_index}"), "w") as fh:
    fh.write(f"{acc.num_processes} {os.environ.get('WORLD_SIZE')} {acc.device.type} {ranks}")
acc.wait_for_everyone()
torch.distributed.destroy_process_group()
sys.stdout.flush()
os._exit(0)
"""


@pytest.mark.slow
def test_generated_cpu_launch_starts_every_process(builds, tmp_path):
    """The real `accelerate launch` with the generated config and flags starts 2 synchronised CPU
    processes (trap 1: the --cpu / MULTI_CPU forms would start one)."""
    build = builds["cpu-ddp"]
    plan = json.loads((build / "plan.json").read_text())
    argv, env = launch_command(plan, build, cpu_count=2)
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    out = tmp_path / "out"
    out.mkdir()
    cut = argv.index("-m")
    argv = argv[:cut] + ["--main_process_port", "29531", str(probe), str(out)]
    run = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    ranks = sorted(p.name for p in out.iterdir())
    assert ranks == ["rank0", "rank1"]
    for p in out.iterdir():
        assert p.read_text() == "2 2 cpu [0, 1]"


# ------------------------------------------------------------------------- review regressions


def test_batch_arithmetic_agrees_in_every_artifact(builds):
    """train_batch_size = micro x accumulation x world, and the same micro/accumulation/world size, in
    plan.json, deepspeed.json, accelerate.yaml, the launch command and REVIEW.md, for every spec."""
    for name, build in builds.items():
        plan = json.loads((build / "plan.json").read_text())
        d, t = plan["derived"], plan["spec"]["training"]
        micro, accum, world = d["micro_batch_size"], d["gradient_accumulation_steps"], d["world_size"]
        assert (micro, accum) == (t["micro_batch_size"], t["gradient_accumulation_steps"]), name
        assert world == plan["spec"]["hardware"]["nodes"] * plan["spec"]["hardware"]["gpus_per_node"], name
        assert d["effective_batch"] == micro * accum * world, name
        acc = yaml.safe_load((build / "accelerate.yaml").read_text())
        assert (acc["num_processes"], acc["num_machines"]) == (world, d["nodes"]), name
        # accelerate's own gradient_accumulation_steps (if any) must not disagree with the plan's
        assert acc.get("gradient_accumulation_steps", accum) == accum, name
        assert (acc.get("deepspeed_config") or {}).get("gradient_accumulation_steps", accum) == accum, name
        ds_path = build / "deepspeed.json"
        if ds_path.exists():
            ds = json.loads(ds_path.read_text())
            assert (
                ds["train_batch_size"]
                == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world
            ), name
            assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
                micro,
                accum,
            ), name
        review = (build / "REVIEW.md").read_text()
        assert (
            f"effective {d['effective_batch']} = {micro} micro x {accum} accumulation x {world} processes"
            in review
        ), name
        launch = (build / "launch.sh").read_text()
        if d["device"] == "cpu" and world > 1 and d["launcher"] != "torchrun":
            assert f"--num_processes {world}" in launch, name
        if d["launcher"] == "torchrun":
            assert (
                f"--nproc_per_node {d['gpus_per_node']}" in launch and f"--nnodes {d['nodes']}" in launch
            ), name


def test_slurm_script_claims_whole_nodes(builds):
    """Regression: with --ntasks-per-node=1 and nothing else, Slurm grants one CPU (and its default
    memory) per task, which would host all of a node's training processes and data loaders. CPU
    plans (issue 13) ask for one CPU per node and no GRES, as a small CPU partition grants."""
    scripts = [b / "slurm.sbatch" for b in builds.values() if (b / "slurm.sbatch").exists()]
    assert scripts
    for script in scripts:
        text = script.read_text()
        header = [line for line in text.splitlines() if line.startswith("#SBATCH")]
        if json.loads((script.parent / "plan.json").read_text())["derived"]["device"] == "cpu":
            assert "#SBATCH --cpus-per-task=1" in header and not any("gpu" in x for x in header), script
        else:
            assert "#SBATCH --exclusive" in header and "#SBATCH --mem=0" in header, script
        # every #SBATCH line comes before the first command, or sbatch ignores it
        first_command = next(
            i for i, line in enumerate(text.splitlines()) if line and not line.startswith("#")
        )
        assert all(
            i < first_command for i, line in enumerate(text.splitlines()) if line.startswith("#SBATCH")
        )


def test_replacing_a_build_keeps_files_compile_did_not_write(tmp_path):
    """Regression: a folder holding an earlier build was replaced whole, deleting anything else in it
    (checkpoints when output.dir points into the build folder, a reviewer's notes)."""
    build = tmp_path / "b"
    assert _cli("compile", "tests/fixtures/compile/cpu-ddp.yaml", "-o", str(build)).returncode == 0
    (build / "runs").mkdir()
    (build / "runs" / "checkpoint-10").write_text("weights")
    again = _cli("compile", "tests/fixtures/compile/cpu-ddp.yaml", "-o", str(build))
    assert again.returncode == 2 and "runs" in again.stdout and "would delete them" in again.stdout
    assert (build / "runs" / "checkpoint-10").read_text() == "weights"
    # a symlinked build folder is refused rather than replaced by a real folder beside the link
    link = tmp_path / "link"
    os.symlink(build, link)
    refused = _cli("compile", "tests/fixtures/compile/cpu-ddp.yaml", "-o", str(link))
    assert refused.returncode == 2 and "symbolic link" in refused.stdout and link.is_symlink()


def test_interrupted_swap_keeps_previous_build(tmp_path, monkeypatch):
    """Regression: Ctrl-C (not an OSError) between moving the old build aside and moving the new one in
    left no build folder, a hidden .old folder and a staging folder behind."""
    from ftspec.compiler.compile import compile as build_mod

    target = tmp_path / "b"
    build_mod.write_build(
        {"plan.json": json.dumps({"metadata": {"kind": "ftspec-plan", "schema_version": 1}})}, target
    )
    before = (target / "plan.json").read_text()
    real_replace = os.replace

    def interrupted(src, dst):
        if Path(dst) == target and ".tmp-" in str(src):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(build_mod.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_mod.write_build({"plan.json": "{}", "launch.sh": "x"}, target)
    assert (target / "plan.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_findings_about_set_values_name_the_override(tmp_path):
    """A finding on a --set value points at the file's line, which holds the replaced value: say so."""
    run = _cli(
        "compile",
        "tests/fixtures/compile/cpu-ddp.yaml",
        "-o",
        str(tmp_path / "b"),
        "--set",
        "training.micro_batch_size=abc",
    )
    assert run.returncode == 1
    assert "(value from --set training.micro_batch_size)" in run.stdout
    unknown = _cli(
        "compile",
        "tests/fixtures/compile/cpu-ddp.yaml",
        "-o",
        str(tmp_path / "b"),
        "--set",
        "training.nonexistent=3",
    )
    assert (
        "unknown key 'nonexistent'" in unknown.stdout
        and "(value from --set training.nonexistent)" in unknown.stdout
    )


def test_force_does_not_grant_remote_code(tmp_path):
    """Regression: --force compiled a trust_remote_code spec, and launch would have run the repo's code."""
    spec = _copy_fixture(tmp_path)
    spec.write_text(
        spec.read_text().replace(
            "  chat_template: chatml\n", "  chat_template: chatml\n  trust_remote_code: true\n", 1
        )
    )
    forced = _cli("compile", str(spec), "-o", str(tmp_path / "b"), "--force", "--repo-root", str(tmp_path))
    assert forced.returncode == 1 and "--allow-remote-code" in forced.stdout and not (tmp_path / "b").exists()
    allowed = _cli(
        "compile", str(spec), "-o", str(tmp_path / "b"), "--allow-remote-code", "--repo-root", str(tmp_path)
    )
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert (
        json.loads((tmp_path / "b" / "plan.json").read_text())["spec"]["model"]["trust_remote_code"] is True
    )
