"""Regenerate the demo data of specs/tiny-cpu.yaml (deterministic; the .jsonl files are committed).

    python specs/data/make_tiny_cpu_data.py

- tiny-cpu-train.jsonl: 1000 ChatML conversations, `name: X, age: N` -> {"name": "X", "age": N}
- tiny-cpu-eval.jsonl: 100 held-out conversations of the same task (no (name, age) pair from train)
- tiny-cpu-regression.jsonl: {prompt, answer} pairs of the built-in model's general skill
  (single-digit sums, word opposites), which a fine-tune should keep
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ftspec.runtime.builtin import NAMES, general_skill

HERE = Path(__file__).resolve().parent


def record(name: str, age: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"Convert to JSON: name: {name}, age: {age}"},
            {"role": "assistant", "content": json.dumps({"name": name, "age": age})},
        ]
    }


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(20261125)
    pairs = [(name, age) for name in NAMES for age in range(18, 91)]
    rng.shuffle(pairs)
    train, held_out = pairs[:1000], pairs[1000:1100]
    write(HERE / "tiny-cpu-train.jsonl", [record(*p) for p in train])
    write(HERE / "tiny-cpu-eval.jsonl", [record(*p) for p in held_out])
    skill = general_skill()
    sums, opposites = skill[:100], skill[100:]
    regression = rng.sample(sums, 40) + rng.sample(opposites, 20)
    write(HERE / "tiny-cpu-regression.jsonl", regression)


if __name__ == "__main__":
    main()
