"""Regenerate the support-triage demo data of the example specs (deterministic; the files are committed).

    python specs/data/make_support_data.py

The example specs (specs/*.yaml other than tiny-cpu.yaml) fine-tune a model to triage support
tickets into JSON. The data is synthetic and small: enough for `ftspec lint` and `ftspec check` to
read real files, not to train a useful model.

- support-train.jsonl: 600 ChatML conversations, ticket -> {"intent": ..., "order": N}
- support-eval.jsonl: 60 held-out conversations (no order number from train)
- general-chat.jsonl: 200 short general conversations mixed in against forgetting
- regression.jsonl: 40 {prompt, answer} pairs of general knowledge the fine-tune should keep
- ticket.schema.json: the JSON Schema every triage answer must match
Every conversation is shorter than 13 words outside the system prompt, so eval-versus-train
13-gram contamination cannot arise from the shared phrasing.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEM = "You triage Acme support tickets. Reply with JSON only."
INTENTS = {
    "refund": [
        "Refund order {n}, it broke.",
        "Order {n} arrived damaged, refund please.",
        "I want my money back for {n}.",
    ],
    "shipping": ["Where is order {n}?", "Order {n} has not shipped yet.", "Tracking for {n} is stuck."],
    "cancel": ["Cancel order {n} now.", "Please stop order {n}.", "I changed my mind about {n}."],
    "address": ["Change the address on {n}.", "Order {n} needs a new address.", "Wrong street on order {n}."],
}
TOPICS = [
    ("Name a primary color.", "Red."),
    ("What do bees make?", "Honey."),
    ("Opposite of cold?", "Hot."),
    ("How many legs has a spider?", "Eight."),
    ("What is frozen water?", "Ice."),
    ("Which planet is red?", "Mars."),
    ("What do cows drink?", "Water."),
    ("Capital of Italy?", "Rome."),
]


def triage(text: str, intent: str, order: int) -> dict:
    answer = json.dumps({"intent": intent, "order": order})
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": answer},
        ]
    }


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(20261125)
    orders = rng.sample(range(10000, 99999), 660)
    rows = []
    for order in orders:
        intent = rng.choice(sorted(INTENTS))
        rows.append(triage(rng.choice(INTENTS[intent]).format(n=order), intent, order))
    write(HERE / "support-train.jsonl", rows[:600])
    write(HERE / "support-eval.jsonl", rows[600:])
    general = []
    for i in range(200):
        a, b = rng.randint(2, 999), rng.randint(2, 999)
        if i % 2:
            general.append(
                {
                    "messages": [
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": f"Add {a} and {b}."},
                        {"role": "assistant", "content": str(a + b)},
                    ]
                }
            )
        else:
            general.append(
                {
                    "messages": [
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": f"Is {a} larger than {b}?"},
                        {"role": "assistant", "content": "Yes." if a > b else "No."},
                    ]
                }
            )
    write(HERE / "general-chat.jsonl", general)
    regression = [{"prompt": q, "answer": a} for q, a in TOPICS]
    for _ in range(32):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        regression.append({"prompt": f"What is {a} times {b}?", "answer": str(a * b)})
    write(HERE / "regression.jsonl", regression)
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "A triaged support ticket",
        "type": "object",
        "additionalProperties": False,
        "required": ["intent", "order"],
        "properties": {
            "intent": {"enum": sorted(INTENTS)},
            "order": {"type": "integer", "minimum": 10000, "maximum": 99999},
        },
    }
    (HERE / "ticket.schema.json").write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
