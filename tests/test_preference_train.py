"""DPO and ORPO train through `ftspec launch` (2 gloo processes, the built-in model) and pass their
gate on `preference`; the same DPO spec trained on swapped pairs fails it; a DPO run killed with -9
resumes to the uninterrupted run's adapter. Each training takes ~20 s on 2 cores."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runtime_helpers import adapter_tensors, env_with, launch, run_json

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _copy(name: str, folder: Path, *, swap: bool = False, steps: int | None = None) -> Path:
    """specs/<name>.yaml and its data in `folder` (chosen and rejected exchanged when `swap`)."""
    spec = (ROOT / "specs" / f"{name}.yaml").read_text(encoding="utf-8")
    if steps is not None:
        spec = spec.replace("max_steps: 40", f"max_steps: {steps}")
    (folder / "data").mkdir(parents=True, exist_ok=True)
    stem = name.replace("-cpu", "")
    for split in ("train", "eval"):
        rows = (ROOT / "specs" / "data" / f"{stem}-{split}.jsonl").read_text(encoding="utf-8").splitlines()
        if swap and split == "train":
            rows = [
                json.dumps({**r, "chosen": r["rejected"], "rejected": r["chosen"]})
                for r in map(json.loads, rows)
            ]
        (folder / "data" / f"{stem}-{split}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    path = folder / "spec.yaml"
    path.write_text(spec, encoding="utf-8")
    return path


def _evaluate(run: Path) -> tuple[int, dict]:
    result = subprocess.run(
        [sys.executable, "-m", "ftspec.compiler.cli", "evaluate", str(run)],
        capture_output=True,
        text=True,
        env=env_with(),
        timeout=300,
    )
    report = json.loads((run / "eval" / "report.json").read_text(encoding="utf-8"))
    return result.returncode, report


@pytest.mark.parametrize("name", ["tiny-dpo-cpu", "tiny-orpo-cpu"])
def test_preference_spec_trains_and_passes_its_gate(name, tmp_path):
    result = launch(_copy(name, tmp_path), build=tmp_path / "build")
    assert result.returncode == 0, result.stderr[-4000:]
    run = tmp_path / "runs" / name
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "rewards_margin" in r]
    assert logged and {"rewards_chosen", "rewards_rejected", "rewards_accuracy"} <= set(logged[-1])
    assert logged[-1]["rewards_accuracy"] >= 0.9
    code, report = _evaluate(run)
    assert code == 0, report["summary"]
    assert (
        report["metrics"]["base"]["preference"] <= 0.2 and report["metrics"]["finetuned"]["preference"] >= 0.9
    )
    assert report["metrics"]["flipped"] and all(
        f["direction"] == "to_chosen" for f in report["metrics"]["flipped"]
    )


def test_swapped_pairs_fail_the_gate(tmp_path):
    result = launch(_copy("tiny-dpo-cpu", tmp_path, swap=True), build=tmp_path / "build")
    assert result.returncode == 0, result.stderr[-4000:]
    code, report = _evaluate(tmp_path / "runs" / "tiny-dpo-cpu")
    assert code == 1 and report["status"] == "fail"
    assert report["metrics"]["finetuned"]["preference"] < 0.5
    assert {r["metric"] for r in report["rules"] if not r["passed"]} == {"preference"}


def test_dpo_killed_with_9_resumes_to_the_uninterrupted_adapter(tmp_path):
    reference = tmp_path / "reference"
    result = launch(_copy("tiny-dpo-cpu", reference), build=reference / "build")
    assert result.returncode == 0, result.stderr[-4000:]
    folder = tmp_path / "killed"
    spec = _copy("tiny-dpo-cpu", folder)
    log = folder / "launch.log"
    cmd = [sys.executable, "-m", "ftspec.compiler.cli", "launch", str(spec), "-o", str(folder / "build")]
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd, cwd=folder, env=env_with(FTSPEC_STEP_DELAY_S="0.5"), stdout=fh, stderr=fh
        )
    run = folder / "runs" / "tiny-dpo-cpu"
    deadline = time.monotonic() + 180
    while not (run / "checkpoints" / "checkpoint-20" / "complete").is_file():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint-20 in time"
        time.sleep(0.2)
    pids = [
        int(line.split(" pid ")[1].split()[0])
        for line in log.read_text().splitlines()
        if line.startswith("ftspec: rank ") and " pid " in line
    ]
    assert len(pids) == 2, log.read_text()[-3000:]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode != 0 and not (run / "adapter").exists()
    result = launch(folder / "build", "--resume")
    assert result.returncode == 0, result.stderr[-4000:]
    assert run_json(run)["resumed_from"] == "checkpoint-20"
    expected, got = adapter_tensors(reference / "runs" / "tiny-dpo-cpu"), adapter_tensors(run)
    assert expected.keys() == got.keys()
    for key in expected:
        assert float((expected[key] - got[key]).abs().max()) <= 1e-5, key
    shutil.rmtree(reference / "runs", ignore_errors=True)
