"""Time `ftspec lint SPEC` against `check-jsonschema` validating the same spec with the same schema.

Both run as fresh processes (what a pre-commit hook or a CI step pays), alternating, in one run;
the medians and their ratio are printed. ftspec does strictly more: positions for every finding,
"did you mean", and the cross-field rules (which open the data files the spec names).

    .venv/bin/python benchmarks/lint_speed.py [SPEC] [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = ROOT / "specs" / "llama3.1-8b-qlora-24gb.yaml"
SCHEMA = ROOT / "schemas" / "spec.v1.schema.json"


def _tool(name: str) -> str | None:
    """The console script next to this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def _time(cmd: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    return time.perf_counter() - start, proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default=str(DEFAULT_SPEC))
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    ftspec, checker = _tool("ftspec"), _tool("check-jsonschema")
    if not ftspec or not checker:
        print(
            "needs both `ftspec` and `check-jsonschema` installed (pip install -e '.[dev]')", file=sys.stderr
        )
        return 2
    commands = {
        "ftspec": [ftspec, "lint", args.spec],
        "check-jsonschema": [checker, "--schemafile", str(SCHEMA), args.spec],
    }
    env_note = f"python {sys.version.split()[0]}, {os.cpu_count()} cpus"
    for name, cmd in commands.items():  # warm the OS file cache; not timed
        _, rc = _time(cmd)
        if rc not in (0, 1):
            print(f"{name} could not run (exit {rc}): {' '.join(cmd)}", file=sys.stderr)
            return 2
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, cmd in commands.items():  # alternate, so load changes hit both alike
            elapsed, _ = _time(cmd)
            times[name].append(elapsed)
    median = {name: statistics.median(values) for name, values in times.items()}
    ratio = median["ftspec"] / median["check-jsonschema"]
    result = {
        "spec": os.path.relpath(args.spec, ROOT),
        "runs": args.runs,
        "median_s": {k: round(v, 4) for k, v in median.items()},
        "min_s": {k: round(min(v), 4) for k, v in times.items()},
        "ratio_ftspec_over_check_jsonschema": round(ratio, 3),
        "environment": env_note,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"spec: {result['spec']}  ({args.runs} fresh processes each, {env_note})")
        for name in commands:
            print(
                f"  {name:<17} median {median[name] * 1000:7.1f} ms   min {min(times[name]) * 1000:7.1f} ms"
            )
        verdict = "faster" if ratio < 1 else "slower"
        print(f"  ratio ftspec / check-jsonschema = {ratio:.2f} (ftspec is {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
