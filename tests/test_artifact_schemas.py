"""ftspec's own schemas of the accelerate config and the DeepSpeed JSON (schemas/*-config.v1.schema.json).

accelerate's `load_config_from_file` and DeepSpeed's `DeepSpeedConfig` accept far more than their
launchers can use (a bare YAML `no` read as false, any key inside fsdp_config, optimizer and scheduler
blocks, a ZeRO stage written as a string): compile checks every artifact against these schemas
before it writes anything, and a mismatch is an internal error (FT0619), never a traceback.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import json
import os
from importlib import resources
from pathlib import Path

import pytest
import yaml
from compile_helpers import GOLDEN, ROOT, all_specs, compile_to
from ftspec.compiler.compile import render
from ftspec.compiler.compile.accelerate_config import accelerate_config, to_yaml
from ftspec.compiler.compile.deepspeed_config import deepspeed_config
from ftspec.compiler.compile.plan import dumps_json
from jsonschema import Draft202012Validator

ACCELERATE = "accelerate-config.v1.schema.json"
DEEPSPEED = "deepspeed-config.v1.schema.json"
LOCK = "lock.v1.schema.json"
RUN = "run.v1.schema.json"
EVAL_METRICS = "eval-metrics.v1.schema.json"
SCHEMAS = {
    name: json.loads((ROOT / "schemas" / name).read_text(encoding="utf-8"))
    for name in (ACCELERATE, DEEPSPEED, LOCK, RUN, EVAL_METRICS)
}
FSDP_SPEC = Path("specs/qwen2.5-7b-full-fsdp-2node.yaml")
ZERO3_SPEC = Path("specs/llama3.1-70b-lora-zero3-8xh100.yaml")


def _errors(schema: str, instance: object) -> list[str]:
    return [e.message for e in Draft202012Validator(SCHEMAS[schema]).iter_errors(instance)]


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[Path, Path]:
    """Every example spec and compile fixture compiled once (forced where it does not fit)."""
    root = tmp_path_factory.mktemp("artifact-builds")
    out = {}
    for spec in all_specs():
        build = root / spec.stem
        result = compile_to(spec, build)
        if not result.ok:
            result = compile_to(spec, build, force=True)
        assert result.ok, [f"{d.code} {d.message}" for d in result.diagnostics if d.severity == "error"]
        out[spec] = build
    return out


# ------------------------------------------------------------------------------- the schemas


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_is_valid_draft_2020_12(name):
    schema = SCHEMAS[name]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith("/" + name)
    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", [ACCELERATE, DEEPSPEED])  # the configs handed to accelerate and DeepSpeed
def test_every_object_is_closed_and_every_property_described(name):
    schema = SCHEMAS[name]
    defs = schema.get("$defs", {})

    def resolve(node: dict) -> dict:
        while "$ref" in node:
            node = {**defs[node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    closed = set()

    def walk(node: object, where: str) -> None:
        if not isinstance(node, dict):
            return
        node = resolve(node)
        if node.get("type") == "object":
            closed.add(where or "/")
            assert node.get("additionalProperties") is False, f"{where} is open"
        for key, sub in node.get("properties", {}).items():
            if isinstance(sub, dict):
                assert sub.get("description") or resolve(sub).get("description"), (
                    f"{where}/{key} has no description"
                )
                walk(sub, f"{where}/{key}")

    walk(schema, "")
    assert closed == (
        {"/", "/fsdp_config", "/deepspeed_config"}
        if name == ACCELERATE
        else {
            "/",
            "/bf16",
            "/fp16",
            "/zero_optimization",
            "/zero_optimization/offload_optimizer",
            "/zero_optimization/offload_param",
        }
    )


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_ships_with_the_package(name):
    """Loaded through importlib.resources (as compile does), and matched by pyproject's package data."""
    packaged = resources.files("ftspec.schemas").joinpath(name)
    assert json.loads(packaged.read_text(encoding="utf-8")) == SCHEMAS[name]
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(fnmatch.fnmatch(name, pattern) for pattern in package_data["ftspec.schemas"])


# ----------------------------------------------------------------------- what compile writes


def test_every_artifact_of_every_spec_validates(builds):
    kinds = {"ddp": 0, "fsdp": 0, "deepspeed": 0, "multi-node": 0, "cpu": 0, "single": 0}
    for spec, build in builds.items():
        plan = json.loads((build / "plan.json").read_text())
        d = plan["derived"]
        # as accelerate reads it: PyYAML, YAML 1.1
        acc = yaml.safe_load((build / "accelerate.yaml").read_text(encoding="utf-8"))
        assert _errors(ACCELERATE, acc) == [], spec
        ds_path = build / "deepspeed.json"
        if d["strategy"] == "deepspeed":
            assert _errors(DEEPSPEED, json.loads(ds_path.read_text(encoding="utf-8"))) == [], spec
        else:
            assert not ds_path.exists()
        assert _errors(LOCK, json.loads((build / "lock.json").read_text(encoding="utf-8"))) == [], spec
        kinds[d["strategy"]] += 1
        kinds["multi-node"] += d["nodes"] > 1
        kinds["cpu"] += d["device"] == "cpu"
    assert all(kinds.values()), kinds  # the examples cover every form


def test_golden_artifacts_validate():
    checked = 0
    for folder in sorted(p for p in GOLDEN.iterdir() if (p / "accelerate.yaml").is_file()):
        assert _errors(ACCELERATE, yaml.safe_load((folder / "accelerate.yaml").read_text())) == [], (
            folder.name
        )
        if (folder / "deepspeed.json").is_file():
            assert _errors(DEEPSPEED, json.loads((folder / "deepspeed.json").read_text())) == [], folder.name
        checked += 1
    assert checked >= 10


def test_generators_satisfy_the_schemas_for_every_strategy(builds):
    """single, DDP, FSDP (layer class known or not, full or adapter, offload), DeepSpeed ZeRO 0-3 with
    each offload and precision, one or two nodes, CUDA or CPU: every combination the plan can hold."""
    base = json.loads((builds[FSDP_SPEC] / "plan.json").read_text())
    grid = itertools.product(
        ["single", "ddp", "fsdp", "deepspeed"],
        ["cuda", "cpu"],
        [(1, 1), (1, 2), (2, 8)],
        [0, 1, 2, 3],
        ["none", "optimizer", "optimizer_and_params"],
        ["no", "bf16", "fp16"],
        ["known", "no-layer-class", "none"],
        ["full", "lora"],
        ["adamw_torch", "paged_adamw_8bit"],
    )
    checked = 0
    for strategy, device, (nodes, per_node), stage, offload, precision, arch, method, optimizer in grid:
        if strategy != "deepspeed" and stage:
            continue
        plan = copy.deepcopy(base)
        d = plan["derived"]
        d.update(
            strategy=strategy,
            device=device,
            nodes=nodes,
            gpus_per_node=per_node,
            world_size=nodes * per_node,
            zero_stage=stage if strategy == "deepspeed" else None,
            offload=offload,
            mixed_precision=precision,
        )
        if arch == "none":
            d["architecture"] = None
        elif arch == "no-layer-class":
            d["architecture"] = {**d["architecture"], "decoder_layer_class": None}
        plan["spec"]["adapter"]["method"] = method
        plan["spec"]["training"]["optimizer"] = optimizer
        files = {"accelerate.yaml": to_yaml(accelerate_config(plan))}
        if strategy == "deepspeed":
            files["deepspeed.json"] = dumps_json(deepspeed_config(plan))
        violations = render.artifact_violations(files)
        assert violations == [], (
            strategy,
            device,
            nodes,
            per_node,
            stage,
            offload,
            precision,
            arch,
            method,
            violations,
        )
        checked += 1
    assert checked > 1000


def test_ddp_on_one_device_is_not_written_as_multi_gpu(tmp_path):
    """strategy: ddp with a single process was written as MULTI_GPU with num_processes 1, which
    accelerate's multi-GPU launch refuses when asked for it directly (--multi_gpu wants two or more)."""
    result = compile_to(
        Path("specs/llama3.1-8b-dora-a100.yaml"),
        tmp_path / "b",
        force=True,
        overrides={"/hardware/strategy": "ddp"},
    )
    assert result.ok, [f"{d.code} {d.message}" for d in result.diagnostics if d.severity == "error"]
    assert result.plan["derived"]["strategy"] == "ddp" and result.plan["derived"]["world_size"] == 1
    config = yaml.safe_load((tmp_path / "b" / "accelerate.yaml").read_text())
    assert config["distributed_type"] == "NO" and config["num_processes"] == 1


# ------------------------------------------------------------------- what the schemas refuse

FSDP_BASE, ZERO3_BASE = "fsdp-2node", "zero3-2node"
BASES = {FSDP_BASE: FSDP_SPEC, ZERO3_BASE: Path("tests/fixtures/compile/zero3-offload-slurm.yaml")}


def _set(*path_and_value):
    """A mutation: set config[a][b]... = value (or delete it when value is ...)."""
    *path, value = path_and_value

    def mutate(config: dict) -> None:
        node = config
        for key in path[:-1]:
            node = node[key]
        if value is ...:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return mutate


# (name, base build, mutation, whether accelerate's load_config_from_file accepts it)
ACCELERATE_CASES = [
    ("mixed_precision false", FSDP_BASE, _set("mixed_precision", False), True),
    ("mixed_precision fp32", FSDP_BASE, _set("mixed_precision", "fp32"), True),
    ("mixed_precision next to DeepSpeed", ZERO3_BASE, _set("mixed_precision", "bf16"), True),
    (
        "unknown key inside fsdp_config",
        FSDP_BASE,
        _set("fsdp_config", "fsdp_sharding_stratgy", "FULL_SHARD"),
        True,
    ),
    ("fsdp_version 3", FSDP_BASE, _set("fsdp_config", "fsdp_version", 3), True),
    ("fsdp_version as a string", FSDP_BASE, _set("fsdp_config", "fsdp_version", "2"), True),
    (
        "FSDP1 state dict type",
        FSDP_BASE,
        _set("fsdp_config", "fsdp_state_dict_type", "LOCAL_STATE_DICT"),
        True,
    ),
    ("layer class and min params", FSDP_BASE, _set("fsdp_config", "fsdp_min_num_params", 10), True),
    (
        "efficient loading without sync",
        FSDP_BASE,
        _set("fsdp_config", "fsdp_sync_module_states", False),
        True,
    ),
    ("offload flag as a string", FSDP_BASE, _set("fsdp_config", "fsdp_offload_params", "true"), True),
    ("num_processes 0", FSDP_BASE, _set("num_processes", 0), True),
    ("machine_rank beyond num_machines", FSDP_BASE, _set("machine_rank", 2), True),
    ("port as a string", FSDP_BASE, _set("main_process_port", "29500"), True),
    ("port out of range", FSDP_BASE, _set("main_process_port", 70000), True),
    ("MULTI_CPU", FSDP_BASE, _set("distributed_type", "MULTI_CPU"), True),
    ("FSDP without fsdp_config", FSDP_BASE, _set("fsdp_config", ...), True),
    (
        "deepspeed_config next to FSDP",
        FSDP_BASE,
        _set("deepspeed_config", {"deepspeed_config_file": "deepspeed.json", "zero3_init_flag": False}),
        True,
    ),
    ("multi-node without main_process_ip", FSDP_BASE, _set("main_process_ip", ...), True),
    ("pdsh launcher", ZERO3_BASE, _set("deepspeed_config", "deepspeed_multinode_launcher", "pdsh"), True),
    (
        "multi-node DeepSpeed without a launcher",
        ZERO3_BASE,
        _set("deepspeed_config", "deepspeed_multinode_launcher", ...),
        True,
    ),
    ("unknown key inside deepspeed_config", ZERO3_BASE, _set("deepspeed_config", "zero_stage", 3), True),
    ("bare YAML no", FSDP_BASE, None, True),
]


def _accelerate_case(base: str, mutate, builds) -> tuple[dict, str]:
    """(the config as accelerate reads it, its YAML text) for a negative case."""
    config = yaml.safe_load((builds[BASES[base]] / "accelerate.yaml").read_text())
    if mutate is None:  # what a hand-written or templated file gets wrong: YAML 1.1 reads `no` as false
        config["mixed_precision"] = "no"
        text = to_yaml(config).replace("mixed_precision: 'no'", "mixed_precision: no")
        return yaml.safe_load(text), text
    mutate(config)
    return config, to_yaml(config)


DEEPSPEED_CASES = [
    ("auto bucket size", lambda c: c["zero_optimization"].update(reduce_bucket_size="auto"), True),
    ("auto train_batch_size", lambda c: c.update(train_batch_size="auto"), False),
    ("auto gradient accumulation", lambda c: c.update(gradient_accumulation_steps="auto"), False),
    ("optimizer block", lambda c: c.update(optimizer={"type": "AdamW", "params": {"lr": 1e-4}}), True),
    (
        "scheduler block",
        lambda c: c.update(scheduler={"type": "WarmupLR", "params": {"warmup_num_steps": 10}}),
        True,
    ),
    ("zero stage 4", lambda c: c["zero_optimization"].update(stage=4), False),
    ("zero stage as a string", lambda c: c["zero_optimization"].update(stage="3"), True),
    ("stage 1-2 key at stage 3", lambda c: c["zero_optimization"].update(allgather_bucket_size=5), True),
    (
        "offload to nvme without a path",
        lambda c: c["zero_optimization"]["offload_param"].update(device="nvme"),
        None,
    ),
    ("offload device gpu", lambda c: c["zero_optimization"]["offload_param"].update(device="gpu"), False),
    ("unknown top-level key", lambda c: c.update(zero_optimisation={"stage": 2}), True),
    ("negative clipping", lambda c: c.update(gradient_clipping=-1.0), True),
    ("bf16 and fp16 together", lambda c: c["fp16"].update(enabled=True), False),
]


def _deepspeed_case(mutate, builds) -> dict:
    config = json.loads((builds[BASES[ZERO3_BASE]] / "deepspeed.json").read_text())
    mutate(config)
    return config


@pytest.mark.parametrize(
    ("name", "base", "mutate", "_accepted"), ACCELERATE_CASES, ids=[c[0] for c in ACCELERATE_CASES]
)
def test_accelerate_schema_refuses(name, base, mutate, _accepted, builds):
    config, _ = _accelerate_case(base, mutate, builds)
    assert _errors(ACCELERATE, config), name


@pytest.mark.parametrize(
    ("name", "mutate", "_accepted"), DEEPSPEED_CASES, ids=[c[0] for c in DEEPSPEED_CASES]
)
def test_deepspeed_schema_refuses(name, mutate, _accepted, builds):
    assert _errors(DEEPSPEED, _deepspeed_case(mutate, builds)), name


def test_accelerate_itself_accepts_what_the_schema_refuses(builds, tmp_path):
    """Why the schema exists: load_config_from_file takes each of these without a word."""
    config_args = pytest.importorskip("accelerate.commands.config.config_args")
    path = tmp_path / "accelerate.yaml"
    for _name, base, mutate, accepted in ACCELERATE_CASES:
        if accepted:
            _, text = _accelerate_case(base, mutate, builds)
            path.write_text(text)
            config_args.load_config_from_file(str(path))  # no exception
    # the trap itself: a bare `no` reaches accelerate as the boolean false
    _, text = _accelerate_case(FSDP_BASE, None, builds)
    path.write_text(text)
    assert config_args.load_config_from_file(str(path)).mixed_precision is False


def test_deepspeed_itself_accepts_what_the_schema_refuses(builds, tmp_path, monkeypatch):
    """DeepSpeedConfig (at the target world size) takes the cases marked accepted; the others it
    refuses too, and the schema refuses them before a launch gets that far."""
    ds_config = pytest.importorskip("deepspeed.runtime.config")

    class _DataParallel:
        def get_data_parallel_world_size(self):
            return 16  # zero3-offload-slurm: 2 nodes x 8

    monkeypatch.setattr(ds_config.dist, "get_rank", lambda *a, **k: 0)
    for name, mutate, accepted in DEEPSPEED_CASES:
        if accepted is None:
            continue
        path = tmp_path / "deepspeed.json"
        path.write_text(json.dumps(_deepspeed_case(mutate, builds)))
        try:
            ds_config.DeepSpeedConfig(str(path), mpu=_DataParallel())
            refused = None
        except Exception as exc:  # TypeError, AssertionError or pydantic's ValidationError
            refused = exc
        assert (refused is None) == accepted, (name, refused)


def test_cross_checks_between_the_two_configs(builds):
    build = builds[BASES[ZERO3_BASE]]
    files = {name: (build / name).read_text() for name in ("accelerate.yaml", "deepspeed.json")}
    assert render.artifact_violations(files) == []
    ds = json.loads(files["deepspeed.json"])
    ds["train_batch_size"] += ds["train_micro_batch_size_per_gpu"]  # valid alone, wrong for 16 processes
    found = render.artifact_violations({**files, "deepspeed.json": json.dumps(ds)})
    assert [(v.file, v.detail.split(":")[0]) for v in found] == [("deepspeed.json", "/train_batch_size")]
    acc = yaml.safe_load(files["accelerate.yaml"])
    acc["deepspeed_config"]["zero3_init_flag"] = False  # stage 3 in the JSON
    found = render.artifact_violations({**files, "accelerate.yaml": to_yaml(acc)})
    assert [v.detail.split(":")[0] for v in found] == ["/deepspeed_config/zero3_init_flag"]
    found = render.artifact_violations({**files, "deepspeed.json": "{not json"})
    assert found and "cannot be read back" in found[0].detail


# ------------------------------------------------------------------------ inside ftspec compile


def _cli_compile(spec: Path, out: Path, capsys, *extra: str) -> tuple[int, str, str]:
    """`ftspec compile` in this process (so a monkeypatched generator is the one that runs)."""
    from ftspec.compiler.cli import main

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        rc = main(["compile", str(spec), "-o", str(out), *extra])
    finally:
        os.chdir(cwd)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize("force", [False, True], ids=["plain", "forced"])
def test_bad_accelerate_config_fails_compile_and_writes_nothing(tmp_path, monkeypatch, capsys, force):
    real = render.accelerate_config

    def broken(plan):
        config = real(plan)
        config["mixed_precision"] = False  # what an unquoted `no` turns into
        config["fsdp_config"]["fsdp_bogus"] = True
        return config

    monkeypatch.setattr(render, "accelerate_config", broken)
    out = tmp_path / "build"
    rc, stdout, stderr = _cli_compile(FSDP_SPEC, out, capsys, *(["--force"] if force else []))
    text = stdout + stderr
    assert rc == 2  # an internal error: the tool could not run
    assert "FT0619" in text and "accelerate.yaml" in text and ACCELERATE in text
    assert "/mixed_precision" in text and "fsdp_bogus" in text
    assert "Traceback" not in text
    assert not out.exists() and list(tmp_path.iterdir()) == []  # not even a staging folder


def test_bad_deepspeed_json_fails_compile_as_json_diagnostics(tmp_path, monkeypatch, capsys):
    real = render.deepspeed_config

    def with_scheduler(plan):
        config = real(plan)
        config["scheduler"] = {"type": "WarmupDecayLR", "params": {"total_num_steps": "auto"}}
        config["train_batch_size"] = "auto"
        return config

    monkeypatch.setattr(render, "deepspeed_config", with_scheduler)
    out = tmp_path / "build"
    rc, stdout, stderr = _cli_compile(ZERO3_SPEC, out, capsys, "--force", "--format", "json")
    assert rc == 2 and not out.exists() and list(tmp_path.iterdir()) == []
    assert "Traceback" not in stdout + stderr
    report = json.loads(stdout)
    found = [d for d in report["diagnostics"] if d["code"] == "FT0619"]
    assert report["status"] == "fail" and found
    assert all(d["severity"] == "error" and "deepspeed.json" in d["message"] for d in found)
    details = " ".join(d["message"] for d in found)
    assert "/scheduler: Never written" in details and "/train_batch_size" in details


def test_a_good_build_is_unchanged(tmp_path, capsys):
    out = tmp_path / "build"
    rc, stdout, stderr = _cli_compile(Path("tests/fixtures/compile/cpu-ddp.yaml"), out, capsys)
    assert rc == 0, stdout + stderr
    assert "FT0619" not in stdout + stderr and (out / "accelerate.yaml").is_file()


@pytest.mark.parametrize("which", ["accelerate-config", "deepspeed-config"])
def test_schema_verb_prints_the_artifact_schemas(which, capsys):
    from ftspec.compiler.cli import main

    assert main(["schema", which]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["$id"].endswith(f"{which}.v1.schema.json")


# ------------------------------------------------------------------------- what a run writes


def test_the_run_artifact_schemas_are_valid_and_describe_their_kinds():
    for name, kind in ((RUN, "ftspec-run"), (LOCK, "ftspec-lock"), (EVAL_METRICS, "ftspec-eval-metrics")):
        Draft202012Validator.check_schema(SCHEMAS[name])
        assert kind in json.dumps(SCHEMAS[name]), name
    # an edited or foreign file is refused by the schema, not only by the reader
    assert _errors(RUN, {"kind": "ftspec-run", "schema_version": 2}) != []
    assert _errors(EVAL_METRICS, {"metadata": {"kind": "other"}, "values": {}, "models": {}}) != []


def validate_run_folder(run_dir: Path, build_dir: Path) -> None:
    """Every artifact of a finished run matches its schema (used by the end-to-end demo test)."""
    assert _errors(RUN, json.loads((run_dir / "run.json").read_text(encoding="utf-8"))) == []
    assert _errors(LOCK, json.loads((build_dir / "lock.json").read_text(encoding="utf-8"))) == []
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert _errors(EVAL_METRICS, metrics) == []
