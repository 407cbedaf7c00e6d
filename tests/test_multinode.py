"""Two nodes without Slurm: the accelerate and torchrun multi-node commands (machine rank, main address
and port) started as two node launchers on localhost, one CPU process each over gloo.

`launch_command(plan, build, machine_rank=r, main_process_ip=...)` is what launch.sh runs on each node;
here both "nodes" are this host, so the rendezvous is 127.0.0.1 on a free port.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ftspec.compiler.compile.launch_command import launch_command
from runtime_helpers import run_json, write_spec

STEPS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_node_build(folder: Path, launcher: str) -> tuple[Path, dict]:
    spec = write_spec(
        folder,
        training={"max_steps": STEPS, "save_steps": 4, "eval_steps": 8},
        hardware={
            "gpu": "cpu",
            "gpus_per_node": 1,
            "nodes": 2,
            "strategy": "ddp",
            "launcher": launcher,
            "main_process_port": _free_port(),
        },
    )
    result = subprocess.run(
        [sys.executable, "-m", "ftspec.compiler.cli", "compile", str(spec), "-o", str(folder / "build")],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return folder / "build", json.loads((folder / "build" / "plan.json").read_text())


def _run_two_nodes(build: Path, plan: dict, logs: Path) -> list[str]:
    """Start node 1 and node 0 (the order a cluster gives no guarantee of), wait for both."""
    procs = []
    for rank in (1, 0):
        argv, env = launch_command(plan, build, machine_rank=rank, main_process_ip="127.0.0.1")
        log = logs / f"node{rank}.log"
        with open(log, "w") as fh:
            procs.append(
                (
                    log,
                    subprocess.Popen(
                        argv,
                        env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                    ),
                )
            )
    deadline = time.monotonic() + 300
    for log, proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                for _, other in procs:
                    other.kill()
        assert proc.returncode == 0, log.read_text()[-4000:]
    return [log.read_text() for log, _ in procs]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_two_node_launchers_on_localhost_train_one_ddp_run(launcher, tmp_path):
    build, plan = _two_node_build(tmp_path, launcher)
    assert plan["derived"]["nodes"] == 2 and plan["derived"]["world_size"] == 2
    argv, _ = launch_command(plan, build, machine_rank=1, main_process_ip="127.0.0.1")
    if launcher == "accelerate":  # cpu-notes trap 1: --multi_gpu (with ACCELERATE_USE_CPU), never --cpu
        assert "--multi_gpu" in argv and "--cpu" not in argv
        assert argv[argv.index("--machine_rank") + 1] == "1"
        assert argv[argv.index("--main_process_ip") + 1] == "127.0.0.1"
    else:
        assert argv[argv.index("--node_rank") + 1] == "1" and argv[argv.index("--nnodes") + 1] == "2"
    node1_log, node0_log = _run_two_nodes(build, plan, tmp_path)
    # one process per node, each naming its node rank; together they are one world of two
    assert "rank 1/2" in node1_log and "node rank 1" in node1_log
    assert "rank 0/2" in node0_log and "node rank 0" in node0_log
    info = run_json(tmp_path / "runs" / "t")
    assert info["exit_status"] == "completed" and info["world_size"] == 2 and info["final_step"] == STEPS
    assert (tmp_path / "runs" / "t" / "adapter" / "adapter_model.safetensors").is_file()


# ------------------------------------------------------------------------------ kubernetes volumes

K8S_SCHEMA = Path(__file__).parent / "fixtures" / "compile" / "schemas" / "pytorchjob.fields.schema.json"


def _k8s_manifest(repo: Path, **hardware: object) -> dict:
    import yaml

    spec = write_spec(
        repo,
        hardware={
            "gpu": "cpu",
            "gpus_per_node": 1,
            "nodes": 2,
            "strategy": "ddp",
            "launcher": "kubernetes",
            **hardware,
        },
    )
    build = repo / "build" / "t"
    result = subprocess.run(
        [sys.executable, "-m", "ftspec.compiler.cli", "compile", str(spec), "-o", str(build)]
        + ["--container-build-dir", "/workspace/repo/build/t"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return yaml.safe_load((build / "pytorchjob.yaml").read_text())


def _schema_errors(manifest: dict) -> list[str]:
    from jsonschema import Draft202012Validator

    schema = json.loads(K8S_SCHEMA.read_text())
    return [e.message for e in Draft202012Validator(schema).iter_errors(manifest)]


def test_pytorchjob_mounts_the_volume_claim_where_data_and_run_folder_lie(tmp_path):
    manifest = _k8s_manifest(tmp_path, kubernetes={"volume_claim": "ft-data"})
    assert not _schema_errors(manifest)
    for role in ("Master", "Worker"):  # every pod
        pod = manifest["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]
        assert {"name": "repository", "persistentVolumeClaim": {"claimName": "ft-data"}} in pod["volumes"]
        mounts = pod["containers"][0]["volumeMounts"]
        # build folder /workspace/repo/build/t, data /workspace/repo/data, run folder /workspace/repo/runs/t
        assert {"name": "repository", "mountPath": "/workspace/repo"} in mounts
    assert "annotations" not in manifest["metadata"]


def test_pytorchjob_without_a_volume_claim_says_what_to_mount(tmp_path):
    manifest = _k8s_manifest(tmp_path)
    assert not _schema_errors(manifest)
    note = manifest["metadata"]["annotations"]["ftspec.dev/mounts"]
    assert note.startswith("no volume is mounted") and "hardware.kubernetes.volume_claim" in note
    assert "data/train.jsonl" in note and "runs/t" in note
    pod = manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["dshm"]


def test_the_spec_schema_refuses_a_volume_claim_that_is_no_kubernetes_name(tmp_path):
    spec = write_spec(
        tmp_path,
        hardware={"gpu": "cpu", "launcher": "kubernetes", "kubernetes": {"volume_claim": "Bad_Name"}},
    )
    result = subprocess.run(
        [sys.executable, "-m", "ftspec.compiler.cli", "lint", str(spec)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "volume_claim" in result.stdout + result.stderr
