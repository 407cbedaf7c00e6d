"""Importing and running the linter never imports the training stack, and stays fast.

Runs in a fresh interpreter: the test process itself may have imported torch already.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "deepspeed",
    "bitsandbytes",
    "datasets",
    "ftspec.runtime",
)

PROBE = """
import contextlib, io, json, sys
from ftspec.compiler.cli import main
codes = []
with contextlib.redirect_stdout(io.StringIO()):
    codes.append(main(["lint", "specs", "--format", "json"]))
    codes.append(main(["lint", "tests/cases/invalid", "--format", "sarif", "--repo-root", "tests/cases"]))
    codes.append(main(["codes", "--format", "markdown"]))
    codes.append(main(["schema"]))
heavy = sorted({m.split(".")[0] if not m.startswith("ftspec") else m for m in sys.modules
                if m.split(".")[0] in HEAVY or m.startswith("ftspec.runtime")})
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_lint_never_imports_the_training_stack() -> None:
    code = f"HEAVY = {HEAVY!r}\n" + PROBE
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["codes"] == [0, 1, 0, 0]


def test_fresh_process_lint_is_fast() -> None:
    """`ftspec lint SPEC` in a new process, best of three: well under a second (measured ~0.15 s)."""
    spec = ROOT / "specs" / "llama3.1-8b-qlora-24gb.yaml"
    times = []
    for _ in range(3):
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "ftspec.compiler.cli", "lint", str(spec)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        times.append(time.perf_counter() - start)
        assert out.returncode == 0, out.stdout + out.stderr
    assert min(times) < 1.0, times
