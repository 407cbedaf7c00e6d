"""benchmarks/gpu_check.sh and gpu_memory.py without a GPU: the dry run (estimates only)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("gpu_memory", ROOT / "benchmarks" / "gpu_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_memory_dry_run_estimates_at_least_three_configurations(tmp_path, capsys):
    module = _module()
    out = tmp_path / "m.json"
    assert module.main(["--dry-run", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) >= 3
    assert {r["setup"]["method"] for r in rows} == {"lora", "qlora"}
    for r in rows:
        assert "measured" not in r and r["estimate"]["device_gib"] > r["estimate"]["allocated_gib"] > 0
    assert "| configuration |" in capsys.readouterr().out


def test_gpu_check_script_parses_and_names_its_steps():
    script = ROOT / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert "pytest -m gpu" in text and "gpu_memory.py" in text and "--dry-run" in text
    # the timed steps fit the 8-minute budget with room for start-up
    import re

    real = [int(x) for x in re.findall(r'^timeout (\d+) "\$PY"', text, re.MULTILINE)]
    assert len(real) == 2 and sum(real) <= 480 - 30  # the two steps, and half a minute for the rest
