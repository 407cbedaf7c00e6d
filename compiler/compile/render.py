"""Render a plan into the build folder's files: configs, launch scripts, manifest, lock and review.

Shell scripts come from jinja2 templates (compiler/templates/) rendered with StrictUndefined and a
`finalize` hook that refuses any value not produced by `sh()` (shlex.quote) or checked against a
strict pattern: a spec value can reach a script only quoted. YAML artifacts are dumped from dicts
with PyYAML (never templated), JSON with sorted keys. Nothing depends on the clock or the machine,
so the same inputs give the same bytes. The accelerate config and the DeepSpeed JSON are checked
against ftspec's own schemas of them (schemas/*-config.v1.schema.json) before anything is written:
accelerate's and DeepSpeed's loaders accept far more than their launchers can use.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass
from functools import cache
from importlib import resources

import jinja2
import yaml
from ftspec.compiler import __version__
from ftspec.compiler.compile.accelerate_config import accelerate_config, to_yaml
from ftspec.compiler.compile.deepspeed_config import deepspeed_config
from ftspec.compiler.compile.launch_command import Var, launch_words, static_env, uses_torchrun
from ftspec.compiler.compile.plan import ACCELERATE_CONFIG, DEEPSPEED_CONFIG, dumps_json
from ftspec.compiler.dataset.sources import train_entries

PLAN_FILE = "plan.json"
LOCK_FILE = "lock.json"
REVIEW_FILE = "REVIEW.md"
LAUNCH_FILE = "launch.sh"
SLURM_FILE = "slurm.sbatch"
K8S_FILE = "pytorchjob.yaml"

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_BUILD_SENTINEL = "\x00BUILD_DIR\x00"


class Shell(str):
    """Text that is safe to paste into a shell script as is: quoted, or checked against a pattern."""


def sh(value: object) -> Shell:
    return Shell(shlex.quote(str(value)))


def token(value: object) -> Shell:
    """A bare word ([A-Za-z0-9._+-], e.g. an enum value or a version): anything else is replaced."""
    text = str(value)
    return Shell(text if _TOKEN.fullmatch(text) else re.sub(r"[^A-Za-z0-9._+-]", "_", text) or "_")


def _finalize(value: object) -> object:
    if isinstance(value, Shell) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise TypeError(f"unquoted value {value!r} reached a shell template: pass it through sh() or token()")


def _load_template(name: str) -> str:
    return resources.files("ftspec.compiler.compile").joinpath("templates", name).read_text(encoding="utf-8")


@cache
def _environment(shell: bool) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize if shell else None,
        # bash's ${#array[@]} would open a jinja comment
        comment_start_string="{##",
        comment_end_string="##}",
    )


def render_template(name: str, context: dict, *, shell: bool) -> str:
    return _environment(shell).get_template(name).render(**context)


# ------------------------------------------------------------------------------------------- shell


def shell_word(word: str | Var) -> str:
    if isinstance(word, Var):
        return (
            (shlex.quote(word.prefix) if word.prefix else "")
            + f'"${{{word.name}}}"'
            + (shlex.quote(word.suffix) if word.suffix else "")
        )
    return shlex.quote(word)


def _shell_value(value: str) -> Shell:
    """An environment value, where the build folder stays the script's $BUILD_DIR."""
    if _BUILD_SENTINEL not in value:
        return sh(value)
    head, _, tail = value.partition(_BUILD_SENTINEL)
    return Shell((shlex.quote(head) if head else "") + '"${BUILD_DIR}"' + (shlex.quote(tail) if tail else ""))


def command_text(plan: dict) -> Shell:
    words = [shell_word(w) for w in launch_words(plan)]
    # break before each option so the command reads one flag per line in review
    lines: list[str] = []
    for word in words:
        if word.startswith("-") and lines:
            lines.append(" \\\n  " + word)
        else:
            lines.append((" " if lines else "") + word)
    return Shell("".join(lines))


def _comment_safe(text: str) -> Shell:
    return Shell(re.sub(r"[^A-Za-z0-9._/+ -]", "_", text))


def render_launch_sh(plan: dict) -> str:
    derived = plan["derived"]
    env = static_env(plan, _BUILD_SENTINEL)
    cpu = derived["device"] == "cpu"
    context = {
        "version": token(__version__),
        "spec_file": _comment_safe(plan["metadata"]["spec_file"]),
        "world_size": int(derived["world_size"]),
        "nodes": int(derived["nodes"]),
        "launcher": _comment_safe("torchrun" if uses_torchrun(plan) else "accelerate launch"),
        "strategy": token(derived["strategy"]),
        "multi_node": int(derived["nodes"]) > 1,
        "last_rank": int(derived["nodes"]) - 1,
        "env": [(token(k), _shell_value(v)) for k, v in sorted(env.items())],
        "omp_default": cpu,
        "procs_per_node": max(1, int(derived["gpus_per_node"])),
        "name": sh(plan["spec"]["name"]),
        "output_dir": sh(derived["output_dir"]),
        "command": command_text(plan),
    }
    return render_template("launch.sh.j2", context, shell=True)


def render_slurm(plan: dict) -> str:
    derived = plan["derived"]
    context = {
        "job_name": token(plan["spec"]["name"]),
        "nodes": int(derived["nodes"]),
        "cpu": derived["device"] == "cpu",
        "gpus_per_node": int(derived["gpus_per_node"]),
        "procs_per_node": max(1, int(derived["gpus_per_node"])),
        "version": token(__version__),
        "spec_file": _comment_safe(plan["metadata"]["spec_file"]),
        "name": sh(plan["spec"]["name"]),
    }
    return render_template("slurm.sbatch.j2", context, shell=True)


# -------------------------------------------------------------------------------------- kubernetes


def k8s_name(name: str) -> str:
    """A DNS-1123 label from the run name: lower case, [a-z0-9-], at most 63 characters
    (the operator appends -master-0 / -worker-N to pod names, so keep room: 50)."""
    out = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:50].strip("-")
    return out or "ftspec-run"


def _k8s_escape(text: str) -> str:
    # Kubernetes expands $(VAR) in command and args; $$ is a literal $.
    return text.replace("$", "$$")


REPO_VOLUME = "repository"


def container_paths(plan: dict) -> dict[str, object]:
    """Where the pods see the build folder, the spec's data and the run folder (POSIX paths inside the
    container), and `mount`: the deepest folder holding all of them, where the repository belongs."""
    build = posixpath.normpath(plan["launch"]["container_build_dir"])
    spec_dir = posixpath.normpath(posixpath.join(build, plan["paths"]["spec_dir"]))
    dataset = plan["spec"].get("dataset") or {}
    written = [entry.path for entry in train_entries(dataset)]
    written += [dataset["eval"]] if isinstance(dataset.get("eval"), str) else []
    data = [posixpath.normpath(posixpath.join(spec_dir, path)) for path in written]
    run = posixpath.normpath(posixpath.join(spec_dir, plan["derived"]["output_dir"]))
    mount = posixpath.commonpath([build, spec_dir, run, *(posixpath.dirname(p) for p in data)])
    return {"build": build, "data": data, "run": run, "mount": mount}


def _volumes(plan: dict) -> tuple[list[dict], list[dict], dict[str, str]]:
    """(volumes, volume mounts, annotations): the spec's PersistentVolumeClaim mounted where the pods
    read the data and write the run folder; without one, an annotation saying what must be mounted
    (the run folder would otherwise vanish with the pods)."""
    claim = ((plan["spec"].get("hardware") or {}).get("kubernetes") or {}).get("volume_claim")
    where = container_paths(plan)
    if claim and where["mount"] != "/":
        volume = {"name": REPO_VOLUME, "persistentVolumeClaim": {"claimName": claim}}
        return [volume], [{"name": REPO_VOLUME, "mountPath": where["mount"]}], {}
    dataset = plan["spec"].get("dataset") or {}
    written = [entry.path for entry in train_entries(dataset)]
    written += [dataset["eval"]] if isinstance(dataset.get("eval"), str) else []
    # paths as the spec writes them (relative to its folder): the same text on every machine
    needs = (
        f"the build folder at {where['build']}, and the spec's folder at {where['build']}/<paths.spec_dir of "
        f"plan.json> holding {', '.join(written) or 'its data'} and the run folder {plan['derived']['output_dir']}"
    )
    if claim:
        note = (
            f"the PersistentVolumeClaim {claim} is not mounted: the build folder, data and run folder share "
            f"no folder but / in the container; compile with --container-build-dir where the build folder "
            f"lies inside the claim's mount point. Every pod needs {needs}"
        )
    else:
        note = (
            f"no volume is mounted: every pod needs {needs}, and the run folder must outlive the pods. "
            "Set hardware.kubernetes.volume_claim to a PersistentVolumeClaim holding the repository "
            "(mounted in every pod), or add the volume here"
        )
    return [], [], {"ftspec.dev/mounts": note}


def pytorchjob(plan: dict) -> dict:
    derived = plan["derived"]
    launch = plan["launch"]
    name = k8s_name(plan["spec"]["name"])
    nodes = int(derived["nodes"])
    per_node = int(derived["gpus_per_node"])
    build = launch["container_build_dir"].rstrip("/") or "/"
    repo_volumes, repo_mounts, annotations = _volumes(plan)
    resources_: dict[str, dict[str, str | int]]
    if derived["device"] == "cpu":
        resources_ = {"limits": {"cpu": str(per_node)}, "requests": {"cpu": str(per_node)}}
    else:
        resources_ = {"limits": {"nvidia.com/gpu": per_node}, "requests": {"nvidia.com/gpu": per_node}}
    container = {
        "name": "pytorch",  # the training operator looks for the container by this name
        "image": launch["image"],
        "imagePullPolicy": "IfNotPresent",
        "command": ["bash", _k8s_escape(f"{build}/{LAUNCH_FILE}")],
        "env": [{"name": "FTSPEC_CLUSTER", "value": "kubernetes"}],
        "ports": [{"name": "pytorchjob-port", "containerPort": int(derived["main_process_port"])}],
        "resources": resources_,
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, *repo_mounts],
    }
    template = {
        "metadata": {"labels": {"app.kubernetes.io/name": "ftspec", "ftspec.dev/run": name}},
        "spec": {
            "containers": [container],
            # NCCL and dataloader workers need more shared memory than a container's default 64 MiB
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}, *repo_volumes],
        },
    }
    replicas = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}
    if nodes > 1:
        replicas["Worker"] = {"replicas": nodes - 1, "restartPolicy": "Never", "template": template}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": "ftspec", "ftspec.dev/run": name},
            **({"annotations": annotations} if annotations else {}),
        },
        "spec": {
            "runPolicy": {"backoffLimit": 0, "cleanPodPolicy": "None"},
            "pytorchReplicaSpecs": replicas,
        },
    }


def render_pytorchjob(plan: dict) -> str:
    # one document, no anchors/aliases (the same template dict appears twice)
    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: object) -> bool:
            return True

    return yaml.dump(
        pytorchjob(plan), Dumper=_NoAliases, sort_keys=True, default_flow_style=False, allow_unicode=True
    )


# ------------------------------------------------------------------------------------------- build

FILE_DESCRIPTIONS = {
    PLAN_FILE: "the resolved spec, derived values and where each came from (read by the runtime)",
    ACCELERATE_CONFIG: "accelerate config for the strategy",
    DEEPSPEED_CONFIG: "DeepSpeed config: ZeRO stage, offload, precision, concrete batch sizes; no optimizer or scheduler",
    LAUNCH_FILE: "starts training on this node: `bash launch.sh [--resume]`",
    SLURM_FILE: "Slurm batch script, one launcher per node: `cd BUILD && sbatch slurm.sbatch`",
    K8S_FILE: "Kubeflow PyTorchJob: `kubectl apply -f pytorchjob.yaml`",
    LOCK_FILE: "hashes of spec and data, model revision, package versions at compile time",
    REVIEW_FILE: "this summary",
}


def artifact_names(plan: dict) -> list[str]:
    names = [PLAN_FILE, ACCELERATE_CONFIG]
    if plan["derived"]["strategy"] == "deepspeed":
        names.append(DEEPSPEED_CONFIG)
    names.append(LAUNCH_FILE)
    launcher = plan["derived"]["launcher"]
    if launcher == "slurm":
        names.append(SLURM_FILE)
    elif launcher == "kubernetes":
        names.append(K8S_FILE)
    names += [LOCK_FILE, REVIEW_FILE]
    return names


def render_build(plan: dict, lock: dict, review: str) -> dict[str, str]:
    """File name -> content for every artifact of the build folder."""
    files: dict[str, str] = {PLAN_FILE: dumps_json(plan), ACCELERATE_CONFIG: to_yaml(accelerate_config(plan))}
    if plan["derived"]["strategy"] == "deepspeed":
        files[DEEPSPEED_CONFIG] = dumps_json(deepspeed_config(plan))
    files[LAUNCH_FILE] = render_launch_sh(plan)
    if plan["derived"]["launcher"] == "slurm":
        files[SLURM_FILE] = render_slurm(plan)
    elif plan["derived"]["launcher"] == "kubernetes":
        files[K8S_FILE] = render_pytorchjob(plan)
    files[LOCK_FILE] = dumps_json(lock)
    files[REVIEW_FILE] = review
    return files


EXECUTABLE = {LAUNCH_FILE, SLURM_FILE}
# every file a build folder can hold: compile replaces an old build only when it holds nothing else
ARTIFACT_FILES = frozenset(
    {
        PLAN_FILE,
        ACCELERATE_CONFIG,
        DEEPSPEED_CONFIG,
        LAUNCH_FILE,
        SLURM_FILE,
        K8S_FILE,
        LOCK_FILE,
        REVIEW_FILE,
    }
)


# ------------------------------------------------------------------------------ artifact schemas

ARTIFACT_SCHEMAS = {
    ACCELERATE_CONFIG: "accelerate-config.v1.schema.json",
    DEEPSPEED_CONFIG: "deepspeed-config.v1.schema.json",
}
_MAX_ERRORS_PER_FILE = 10


@dataclass(frozen=True)
class ArtifactViolation:
    """A generated artifact that does not match its schema (a bug in ftspec, never in the spec)."""

    file: str
    schema: str
    detail: str


def _read_artifact(name: str, text: str) -> object:
    # accelerate reads its config with PyYAML (YAML 1.1: a bare `no` is false): check what it will see
    return yaml.safe_load(text) if name.endswith((".yaml", ".yml")) else json.loads(text)


def _error_text(error) -> str:
    where = "".join(f"/{p}" for p in error.absolute_path) or "/"
    if error.validator is None:  # a `false` schema: a key that must not be there
        return f"{where}: not allowed here"
    if error.validator == "not":
        reason = (error.validator_value or {}).get("description") or error.schema.get("description")
        if reason:
            return f"{where}: {reason}"
    message = error.message if len(error.message) <= 300 else error.message[:297] + "..."
    return f"{where}: {message}"


def _cross_checks(data: dict[str, object]) -> list[ArtifactViolation]:
    """What a JSON Schema cannot say: relations between fields, and between the two configs."""
    out: list[ArtifactViolation] = []
    acc, ds = data.get(ACCELERATE_CONFIG), data.get(DEEPSPEED_CONFIG)
    if not isinstance(acc, dict):
        return out

    def violation(name: str, detail: str) -> None:
        out.append(ArtifactViolation(name, ARTIFACT_SCHEMAS[name], detail))

    nodes, world, rank = acc["num_machines"], acc["num_processes"], acc["machine_rank"]
    if world % nodes:
        violation(
            ACCELERATE_CONFIG, f"/num_processes: {world} processes do not divide among {nodes} machines"
        )
    if rank >= nodes:
        violation(ACCELERATE_CONFIG, f"/machine_rank: {rank} is not below num_machines {nodes}")
    if isinstance(ds, dict):
        micro, accum, total = (
            ds[k]
            for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")
        )
        if total != micro * accum * world:
            violation(
                DEEPSPEED_CONFIG,
                f"/train_batch_size: {total} is not {micro} x {accum} x {world} "
                f"({ACCELERATE_CONFIG} num_processes)",
            )
        stage = ds["zero_optimization"]["stage"]
        init = acc.get("deepspeed_config", {}).get("zero3_init_flag")
        if init is not None and init != (stage == 3):
            violation(
                ACCELERATE_CONFIG,
                f"/deepspeed_config/zero3_init_flag: {str(init).lower()} with ZeRO "
                f"stage {stage} in {DEEPSPEED_CONFIG}",
            )
    return out


def artifact_violations(files: dict[str, str]) -> list[ArtifactViolation]:
    """Check the accelerate config and the DeepSpeed JSON among `files` against their schemas (as
    the tools will read them), and against each other. Empty when every artifact is sound."""
    from ftspec.compiler.core.schema import validator

    out: list[ArtifactViolation] = []
    data: dict[str, object] = {}
    for name, schema in ARTIFACT_SCHEMAS.items():
        if name not in files:
            continue
        try:
            data[name] = _read_artifact(name, files[name])
        except (yaml.YAMLError, ValueError) as exc:
            out.append(ArtifactViolation(name, schema, f"cannot be read back: {' '.join(str(exc).split())}"))
            continue
        errors = sorted(
            validator(schema).iter_errors(data[name]),
            key=lambda e: ([str(p) for p in e.absolute_path], e.message),
        )
        for error in errors[:_MAX_ERRORS_PER_FILE]:
            out.append(ArtifactViolation(name, schema, _error_text(error)))
        if len(errors) > _MAX_ERRORS_PER_FILE:
            out.append(ArtifactViolation(name, schema, f"and {len(errors) - _MAX_ERRORS_PER_FILE} more"))
    # the cross-checks read fields the schemas guarantee: only once both match
    return out or _cross_checks(data)
