"""The launch command for a plan, as (argv, environment), built once and used twice.

`ftspec launch` runs `launch_command(...)` directly; `launch.sh` is rendered from the same words
(`launch_words`), with the build folder, machine rank and rendezvous address left as shell
variables. accelerate's own `launch` is built this way ("produce the command and the environment,
then run them"), which makes it testable without starting anything.

CPU plans (cpu-notes traps 1, 2, 9): `accelerate launch --cpu` and `distributed_type: MULTI_CPU`
each start ONE process, silently. Several CPU processes need `--multi_gpu --num_processes N` with
`ACCELERATE_USE_CPU=true`; OMP_NUM_THREADS is set to the cores per process (1 on 2 cores), since
oversubscribed threads make a 2-process run several times slower.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ftspec.compiler.compile.accelerate_config import accelerate_env
from ftspec.compiler.compile.plan import ACCELERATE_CONFIG, DEEPSPEED_CONFIG

RUNTIME_MODULE = "ftspec.runtime.train"
PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class Var:
    """A value known only at launch time: a shell variable in launch.sh, a real value in Python."""

    name: str  # BUILD_DIR | MACHINE_RANK | MAIN_PROCESS_IP
    prefix: str = ""
    suffix: str = ""


Word = str | Var


def _accelerate_words(plan: dict, *, multi_node: bool) -> list[Word]:
    derived = plan["derived"]
    words: list[Word] = [
        "accelerate",
        "launch",
        "--config_file",
        Var("BUILD_DIR", suffix=f"/{ACCELERATE_CONFIG}"),
    ]
    world = int(derived["world_size"])
    if derived["device"] == "cpu":
        if world > 1:
            words += ["--multi_gpu", "--num_processes", str(world)]
        else:
            words += ["--num_processes", "1"]
    elif derived["strategy"] == "deepspeed":
        # the config names deepspeed.json relative to the working folder; give it absolutely
        words += ["--deepspeed_config_file", Var("BUILD_DIR", suffix=f"/{DEEPSPEED_CONFIG}")]
    if multi_node:
        words += [
            "--num_machines",
            str(derived["nodes"]),
            "--machine_rank",
            Var("MACHINE_RANK"),
            "--main_process_ip",
            Var("MAIN_PROCESS_IP"),
            "--main_process_port",
            str(derived["main_process_port"]),
        ]
    return words


def _torchrun_words(plan: dict, *, multi_node: bool) -> list[Word]:
    derived = plan["derived"]
    words: list[Word] = [
        "torchrun",
        "--nnodes",
        str(derived["nodes"]),
        "--nproc_per_node",
        str(derived["gpus_per_node"]),
    ]
    if multi_node:
        # static rendezvous: each node states its rank, rank 0 hosts the store
        words += [
            "--node_rank",
            Var("MACHINE_RANK"),
            "--master_addr",
            Var("MAIN_PROCESS_IP"),
            "--master_port",
            str(derived["main_process_port"]),
        ]
    else:
        words += ["--master_port", str(derived["main_process_port"])]
    return words


def uses_torchrun(plan: dict) -> bool:
    return plan["derived"].get("launcher") == "torchrun"


def launch_words(plan: dict, *, resume: bool = False) -> list[Word]:
    """The command as words; Var marks what launch.sh leaves to the shell."""
    multi_node = int(plan["derived"]["nodes"]) > 1
    if uses_torchrun(plan):
        words = _torchrun_words(plan, multi_node=multi_node)
    else:
        words = _accelerate_words(plan, multi_node=multi_node)
    words += ["-m", RUNTIME_MODULE, "--plan", Var("BUILD_DIR", suffix=f"/{PLAN_FILE}")]
    if resume:
        words.append("--resume")
    return words


def static_env(plan: dict, build_dir: str) -> dict[str, str]:
    """Environment that does not depend on the launching machine."""
    derived = plan["derived"]
    env: dict[str, str] = {}
    if uses_torchrun(plan):
        env.update(accelerate_env(plan, build_dir))  # torchrun does not set accelerate's variables
    elif derived["device"] == "cpu":
        env["ACCELERATE_USE_CPU"] = "true"  # trap 2: without it each process trains alone
        if derived["strategy"] == "deepspeed":
            # the multi-GPU launcher does not pass the DeepSpeed config; say it as accelerate's
            # DeepSpeed launcher would (trap 3: the runtime sets up gloo itself on CPU)
            env.update(
                {
                    k: v
                    for k, v in accelerate_env(plan, build_dir).items()
                    if k.startswith("ACCELERATE_DEEPSPEED") or k == "ACCELERATE_USE_DEEPSPEED"
                }
            )
    return env


def omp_threads(plan: dict, cpu_count: int | None = None) -> int:
    """Cores per process on this machine, at least 1."""
    per_node = max(1, int(plan["derived"]["gpus_per_node"]))
    return max(1, (cpu_count or os.cpu_count() or 1) // per_node)


def _executable(name: str) -> str:
    """The tool installed next to this Python (a virtual environment's bin/), else from PATH."""
    sibling = Path(sys.executable).parent / name
    return str(sibling) if sibling.is_file() and os.access(sibling, os.X_OK) else name


def launch_command(
    plan: dict,
    build_dir: Path,
    *,
    resume: bool = False,
    machine_rank: int | None = None,
    main_process_ip: str | None = None,
    cpu_count: int | None = None,
) -> tuple[list[str], dict[str, str]]:
    """(argv, env) that start training for `plan` from `build_dir` on this machine.

    `env` holds only the variables to add to the caller's environment. Multi-node plans need this
    node's `machine_rank` and the rank-0 node's `main_process_ip`.
    """
    build = str(Path(build_dir).resolve())
    multi_node = int(plan["derived"]["nodes"]) > 1
    if multi_node and (machine_rank is None or not main_process_ip):
        raise ValueError(
            f"the plan spans {plan['derived']['nodes']} nodes: give this node's machine_rank and the "
            "rank-0 node's main_process_ip (launch.sh reads them from SLURM or Kubernetes)"
        )
    values = {
        "BUILD_DIR": build,
        "MACHINE_RANK": str(machine_rank or 0),
        "MAIN_PROCESS_IP": main_process_ip or "",
    }
    argv = []
    for word in launch_words(plan, resume=resume):
        argv.append(f"{word.prefix}{values[word.name]}{word.suffix}" if isinstance(word, Var) else word)
    argv[0] = _executable(argv[0])
    env = static_env(plan, build)
    if plan["derived"]["device"] == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(omp_threads(plan, cpu_count))
    return argv, env
