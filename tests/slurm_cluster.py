"""A real two-node Slurm cluster on this host, for the `slurm` tests (cpu-notes: "A two-node Slurm
cluster on one host").

Debian's slurm-wlm and munge: one controller and two slurmd (node1, node2, one CPU each, both named
localhost on their own ports), one partition, a config written for the test run (SLURM_CONF points at
it). The cluster owns a folder of its own: config, state, spool, logs and pid files. Teardown stops
only the daemons whose pid files it wrote, and munged only when it started it; an /etc/hosts line is
added only when node1/node2 do not resolve, and left for the next run (other clusters may rely on it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

NODES = ("node1", "node2")
PARTITION = "debug"
MUNGE_SOCKET_DIR = Path("/run/munge")
DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scontrol", "sinfo", "scancel")


class ClusterUnavailable(Exception):
    """Slurm cannot run here; the message says why (a skip locally, a failure under CI)."""


@dataclass
class Cluster:
    root: Path
    conf: Path
    ctld_port: int
    node_ports: dict[str, int]
    pid_files: list[Path] = field(default_factory=list)
    started_munged: bool = False

    @property
    def env(self) -> dict[str, str]:
        """The environment that talks to this cluster (and to no other)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(
        self, *argv: str, timeout: float = 30, check: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(argv, env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def node_states(self) -> dict[str, str]:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False).stdout
        return dict(line.split()[:2] for line in out.splitlines() if len(line.split()) >= 2)

    def logs(self) -> str:
        """The daemons' logs, for a failure message."""
        parts = []
        for path in sorted((self.root / "log").glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)


def missing_tools() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None and not Path(f"/usr/sbin/{name}").exists()]


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _resolves(name: str) -> bool:
    try:
        return socket.gethostbyname(name) == "127.0.0.1"
    except OSError:
        return False


def ensure_hosts() -> None:
    """node1 and node2 must resolve: slurm.sbatch rendezvous on the allocation's first host name."""
    if all(_resolves(n) for n in NODES):
        return
    try:
        with open("/etc/hosts", "a", encoding="utf-8") as fh:
            fh.write(f"127.0.0.1 {' '.join(NODES)}  # ftspec test Slurm cluster\n")
    except OSError as exc:
        raise ClusterUnavailable(
            f"node1/node2 do not resolve and /etc/hosts is not writable: {exc}"
        ) from None
    if not all(_resolves(n) for n in NODES):
        raise ClusterUnavailable("node1/node2 still do not resolve after adding them to /etc/hosts")


def _munge_running() -> bool:
    return (MUNGE_SOCKET_DIR / "munge.socket.2").exists() and (
        subprocess.run(["munge", "-n"], capture_output=True, timeout=10).returncode == 0
    )


def ensure_munged(root: Path) -> bool:
    """Start munged unless one answers already; True when this call started it."""
    if _munge_running():
        return False
    MUNGE_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_SOCKET_DIR, "munge", "munge")
    if not Path("/etc/munge/munge.key").is_file():
        raise ClusterUnavailable("/etc/munge/munge.key is missing (install the munge package)")
    pid_file = root / "munged.pid"
    result = subprocess.run(
        ["munged", "--force", f"--pid-file={pid_file}", f"--log-file={root / 'log' / 'munged.log'}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        raise ClusterUnavailable(f"munged did not start: {result.stderr.strip()}")
    deadline = time.monotonic() + 10
    while not _munge_running():
        if time.monotonic() > deadline:
            raise ClusterUnavailable("munged started but does not answer")
        time.sleep(0.2)
    return True


def write_config(root: Path, ctld_port: int, node_ports: dict[str, int]) -> Path:
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "log", "spool", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for node in node_ports:
        (root / "spool" / node).mkdir(exist_ok=True)
    lines = [
        "ClusterName=ftspec-test",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool' / '%n'}",
        f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'run' / 'slurmd-%n.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd-%n.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "ReturnToService=2",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=bf_interval=1,sched_min_interval=100000",
        "SlurmdTimeout=60",
        # a requeued/cancelled job's processes get SIGTERM, then SIGKILL this many seconds later
        "KillWait=20",
        "MinJobAge=600",
        "JobRequeue=1",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
    ]
    for node, port in node_ports.items():
        lines.append(
            f"NodeName={node} NodeHostname=localhost Port={port} CPUs=1 RealMemory=2048 State=UNKNOWN"
        )
    lines.append(
        f"PartitionName={PARTITION} Nodes={','.join(node_ports)} Default=YES MaxTime=INFINITE State=UP"
    )
    conf = root / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return conf


def start(root: Path, wait_s: float = 60) -> Cluster:
    """Bring the cluster up; raises ClusterUnavailable with the reason when it cannot."""
    missing = missing_tools()
    if missing:
        raise ClusterUnavailable(f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        raise ClusterUnavailable("the test cluster's daemons run as root")
    root.mkdir(parents=True, exist_ok=True)
    (root / "log").mkdir(exist_ok=True)
    ensure_hosts()
    ctld_port, *ports = _free_ports(1 + len(NODES))
    node_ports = dict(zip(NODES, ports, strict=True))
    cluster = Cluster(root, write_config(root, ctld_port, node_ports), ctld_port, node_ports)
    cluster.started_munged = ensure_munged(root)
    if cluster.started_munged:
        cluster.pid_files.append(root / "munged.pid")
    try:
        _daemon(cluster, ["slurmctld", "-f", str(cluster.conf)], root / "run" / "slurmctld.pid")
        for node in NODES:
            _daemon(
                cluster, ["slurmd", "-f", str(cluster.conf), "-N", node], root / "run" / f"slurmd-{node}.pid"
            )
        _wait_idle(cluster, wait_s)
    except BaseException:
        stop(cluster)
        raise
    return cluster


def _daemon(cluster: Cluster, argv: list[str], pid_file: Path) -> None:
    cluster.pid_files.append(pid_file)
    result = subprocess.run(argv, env=cluster.env, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ClusterUnavailable(
            f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}\n{cluster.logs()}"
        )


def _wait_idle(cluster: Cluster, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = cluster.node_states()
        if all(states.get(n) == "idle" for n in NODES):
            return
        time.sleep(0.5)
    raise ClusterUnavailable(f"nodes not idle after {wait_s:.0f} s: {states}\n{cluster.logs()}")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop(cluster: Cluster, wait_s: float = 15) -> None:
    """Stop the daemons this cluster started (by their pid files), slurmd first, munged last."""
    for path in reversed(cluster.pid_files):  # started ctld, node1, node2: stop node2, node1, ctld
        pid = _read_pid(path)
        if pid is None:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
