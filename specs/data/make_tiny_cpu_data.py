"""Regenerate the demo data of specs/tiny-cpu.yaml (deterministic; the .jsonl files are committed).

    python specs/data/make_tiny_cpu_data.py

- tiny-cpu-train.jsonl: 1000 ChatML conversations, `name: X, age: N` -> {"name": "X", "age": N}
- tiny-cpu-eval.jsonl: 100 held-out conversations of the same task (no (name, age) pair from train)
- tiny-cpu-general.jsonl: the built-in model's own general-skill conversations (sums, opposites,
  `Repeat: X N` copying), mixed into training at a small fraction against forgetting
- tiny-cpu-regression.jsonl: {prompt, answer} pairs of the general copying skill on names and numbers
  the base model never saw (fresh pairs, none in the general mix): it measures the skill, not
  memorised answers. The base model gets nearly all right; a LoRA fine-tune with the general mix
  keeps most; a full fine-tune at a very high learning rate loses it.
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
    write(
        HERE / "tiny-cpu-general.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": s["prompt"]},
                    {"role": "assistant", "content": s["answer"]},
                ]
            }
            for s in skill
        ],
    )
    seen = {s["prompt"] for s in skill}
    regression: list[dict] = []
    while len(regression) < 60:
        name, number = rng.choice(NAMES), rng.randint(0, 99)
        prompt = f"Repeat: {name} {number}"
        if prompt not in seen:
            seen.add(prompt)
            regression.append({"prompt": prompt, "answer": f"{name} {number}"})
    write(HERE / "tiny-cpu-regression.jsonl", regression)


if __name__ == "__main__":
    main()
