"""The user audit's console findings: no progress-bar `\\r` fragments in a non-terminal log, no
DeepSpeed "Setting accelerator to CPU" warning on every run, and runtime findings named by the spec
file (at the governing field's line) instead of `<spec>`."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from ftspec.compiler.core.diagnostics import make
from ftspec.compiler.core.reporters import to_text
from ftspec.runtime.locate import SpecLocator
from runtime_helpers import launch, run_json, write_spec


def _plan_for(spec: Path, build: Path, *, sha256: str | None = None) -> dict:
    build.mkdir(parents=True, exist_ok=True)
    digest = sha256 or hashlib.sha256(spec.read_bytes()).hexdigest()
    return {
        "metadata": {"spec_file": spec.name, "spec_sha256": digest},
        "paths": {"spec_dir": str(Path("..") / spec.parent.name)},
    }


def test_a_runtime_finding_names_the_spec_file_at_the_governing_line(tmp_path, monkeypatch):
    spec = write_spec(tmp_path / "proj")
    monkeypatch.chdir(tmp_path)
    build = tmp_path / "build"
    locate = SpecLocator(_plan_for(spec, build), build / "plan.json")
    diag = locate(make("FT0747", what="checkpoint-4", folder="runs/t/checkpoints", free="0 bytes"))
    line = next(
        i for i, text in enumerate(spec.read_text().splitlines(), 1) if text.strip().startswith("dir:")
    )
    assert (diag.file, diag.line, diag.pointer) == ("proj/spec.yaml", line, "/output/dir")
    text = to_text([diag], locate.source)
    assert text.startswith(f"proj/spec.yaml:{line}:") and "<spec>" not in text
    assert "dir: runs/t" in text and "^" in text  # the source line and its caret


def test_an_edited_spec_is_named_without_a_line(tmp_path, monkeypatch):
    spec = write_spec(tmp_path / "proj")
    monkeypatch.chdir(tmp_path)
    build = tmp_path / "build"
    locate = SpecLocator(_plan_for(spec, build, sha256="0" * 64), build / "plan.json")
    diag = locate(make("FT0703", model="m"))
    assert (diag.file, diag.line, diag.pointer) == ("proj/spec.yaml", None, "/model/chat_template")
    assert locate(make("FT0720", detail="x")).file == "proj/spec.yaml"


def test_only_deepspeeds_cpu_message_is_silenced_at_its_logger():
    script = """
import logging
from ftspec.runtime.quiet import quiet_known_noise
quiet_known_noise()
from deepspeed.accelerator.real_accelerator import get_accelerator
get_accelerator()
from deepspeed.utils import logger
logger.warning("another DeepSpeed warning")
logging.getLogger("other").warning("Setting accelerator to CPU from someone else")
"""
    pytest.importorskip("deepspeed")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "we were unable to detect it" not in out
    assert "another DeepSpeed warning" in out and "from someone else" in out


def test_the_filter_is_on_the_deepspeed_logger_only():
    from ftspec.runtime.quiet import quiet_known_noise

    quiet_known_noise()
    quiet_known_noise()  # idempotent
    assert len(logging.getLogger("DeepSpeed").filters) == 1
    assert not logging.getLogger().filters


@pytest.mark.slow
def test_a_logged_run_has_plain_lines_and_named_findings(tmp_path):
    spec = write_spec(
        tmp_path,
        training={"max_steps": 4, "save_steps": 100, "eval_steps": 100, "logging_steps": 2},
        output={"dir": "runs/t", "save": "adapter", "report_to": ["none"]},
    )
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    done = launch(spec, build=tmp_path / "build")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    # stderr is a pipe: no bar (its redraws are "\r" fragments; text mode reads "\r" as a newline)
    assert "%|" not in out and "step/s]" not in out and "s/step]" not in out
    assert "ftspec: step 2/4 loss" in out and "ftspec: step 4/4 loss" in out
    assert "Setting accelerator to CPU" not in out
    assert "<spec>" not in out
    # a runtime finding (FT0722: the steps per epoch differ from the plan's estimate, or none) names the spec
    for d in run_json(tmp_path / "runs" / "t").get("diagnostics", []):
        assert d["file"] and d["file"].endswith("spec.yaml"), d
