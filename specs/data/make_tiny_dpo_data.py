"""Regenerate the demo preference data of specs/tiny-dpo-cpu.yaml and specs/tiny-orpo-cpu.yaml
(deterministic; the .jsonl files are committed).

    python specs/data/make_tiny_dpo_data.py

The task is the tiny demo's (`name: X, age: N` -> JSON), asked as a preference: the chosen answer is
the complete JSON object, the rejected one drops the age (`{"name": "Sofia"}`). Being shorter, the
rejected answer gets the higher summed log-probability from the base model on almost every pair, so
preference tuning has something to turn around; trained on the swapped pairs it must not.

- tiny-dpo-train.jsonl / tiny-dpo-eval.jsonl: conversational form (message lists), 600 and 100
  pairs, no (name, age) of eval in train
- tiny-orpo-train.jsonl / tiny-orpo-eval.jsonl: the same pairs in the plain-text form
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ftspec.runtime.builtin import NAMES

HERE = Path(__file__).resolve().parent


def texts(name: str, age: int) -> tuple[str, str, str]:
    prompt = f"Convert to JSON: name: {name}, age: {age}"
    return prompt, json.dumps({"name": name, "age": age}), json.dumps({"name": name})


def conversational(name: str, age: int, swap: bool = False) -> dict:
    prompt, good, bad = texts(name, age)
    if swap:
        good, bad = bad, good
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": good}],
        "rejected": [{"role": "assistant", "content": bad}],
    }


def plain(name: str, age: int) -> dict:
    prompt, good, bad = texts(name, age)
    return {"prompt": prompt, "chosen": good, "rejected": bad}


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(20261212)
    pairs = [(name, age) for name in NAMES for age in range(18, 91)]
    rng.shuffle(pairs)
    train, held_out = pairs[:600], pairs[600:700]
    write(HERE / "tiny-dpo-train.jsonl", [conversational(*p) for p in train])
    write(HERE / "tiny-dpo-eval.jsonl", [conversational(*p) for p in held_out])
    write(HERE / "tiny-orpo-train.jsonl", [plain(*p) for p in train])
    write(HERE / "tiny-orpo-eval.jsonl", [plain(*p) for p in held_out])


if __name__ == "__main__":
    main()
