"""`ftspec schema [spec|plan|lock|run|eval-metrics|metrics-row|report|accelerate-config|deepspeed-config]`:
print a JSON Schema (for editors and other tools)."""

from __future__ import annotations

import argparse
import json

NAMES = {
    "spec": "spec.v1.schema.json",
    "plan": "plan.v1.schema.json",
    "lock": "lock.v1.schema.json",
    "run": "run.v1.schema.json",
    "eval-metrics": "eval-metrics.v1.schema.json",
    "metrics-row": "metrics-row.v1.schema.json",
    "report": "report.v1.schema.json",
    "accelerate-config": "accelerate-config.v1.schema.json",
    "deepspeed-config": "deepspeed-config.v1.schema.json",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "which", nargs="?", default="spec", choices=sorted(NAMES), help="which schema (default: spec)"
    )


def run(args: argparse.Namespace) -> int:
    from importlib import resources

    from ftspec.compiler.verbs.common import fail

    res = resources.files("ftspec.schemas").joinpath(NAMES[args.which])
    if not res.is_file():
        return fail(f"the {args.which} schema is not part of this build")
    print(json.dumps(json.loads(res.read_text(encoding="utf-8")), indent=2))
    return 0
