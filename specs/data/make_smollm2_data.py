"""Regenerate the data of specs/smollm2-cpu.yaml (deterministic; the files are committed).

    python specs/data/make_smollm2_data.py            # train, eval and the regression candidates
    python specs/data/make_smollm2_data.py --select   # + keep the candidates the base model gets right

The task: a support ticket in, a JSON triage record out,
`{"category": "billing|shipping|account|technical", "priority": "low|medium|high"}`. The category
follows from what the ticket is about, the priority from its urgency wording ("urgent" is high, "no
rush" is low, a plain request is medium). The real base model (SmolLM2-135M-Instruct)
is weak at it: it answers in prose, or in JSON with other keys and labels, so exact match is ~0.

- smollm2-cpu-train.jsonl: 320 ChatML conversations (system prompt, ticket, JSON record)
- smollm2-cpu-eval.jsonl: 40 held-out ones (slot values never seen in train, and no 13-word
  sequence shared with a training conversation: the gate's contamination check stays at 0)
- smollm2-cpu-general.jsonl: 80 short general conversations (other facts than the regression
  questions, the model's default system prompt, answers in its own plain style), mixed into training
  so the model keeps answering general questions in prose and writes JSON only for tickets. Without
  them 40 steps at this learning rate turn every answer into JSON (measured: regression 1.0 -> 0.42).
- smollm2-cpu-regression-candidates.jsonl: general questions with a short reference answer
- smollm2-cpu-regression.jsonl (--select): the candidates the base model answers correctly when
  scored with the `contains` metric (the reference appears in the answer, case and whitespace
  folded), generated the way `ftspec evaluate` generates (the model's own template and stop tokens,
  greedy, the spec's max_new_tokens and batch size), so the regression rule measures forgetting of
  skills the model really has. --select needs torch and transformers (the train extra) and converts
  the built-in model on first use.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFIX = "smollm2-cpu"
SYSTEM = (
    "Triage the support ticket. Reply with JSON only: category (billing, shipping, account or "
    "technical) and priority (low, medium or high)."
)
N_TRAIN, N_EVAL = 320, 40
NGRAM = 13  # the spec's contamination_ngram (the schema's default)

# What a ticket is about decides its category; {x} is a slot filled from SLOTS.
ISSUES = {
    "billing": [
        "I was charged twice for my {plan} this month.",
        "My invoice shows {amount} but I expected less.",
        "Please refund the {amount} charge on my card.",
        "Why did my {plan} renewal cost {amount}?",
        "The payment for my {plan} failed.",
    ],
    "shipping": [
        "My {item} has not arrived yet.",
        "The tracking for my {item} has not moved in {days} days.",
        "The {item} arrived broken in the box.",
        "I received the wrong {item} in my package.",
        "Can you change the delivery address for my {item}?",
    ],
    "account": [
        "I cannot log in to my account since {weekday}.",
        "Please reset the password for my {plan}.",
        "How do I change the email on my account?",
        "My account was locked after a password reset on {weekday}.",
        "Please delete my account and my data.",
    ],
    "technical": [
        "The {app} keeps crashing when I open it.",
        "The {app} shows error {code} on startup.",
        "Sync in the {app} stopped working on {weekday}.",
        "The {app} is very slow after the last update.",
        "Exports from the {app} come out empty.",
    ],
}
# The urgency wording decides the priority.
URGENCY = {
    "high": ["This is urgent!", "Urgent, please fix it today.", "Please treat this as urgent."],
    "medium": ["", "Please take a look.", "Can you help me with this?", "Thanks for checking."],
    "low": ["No rush.", "No rush at all, whenever you have time.", "There is no rush on this."],
}
# Slot values; the last ones of each list appear only in the eval set.
SLOTS = {
    "plan": ["Pro plan", "Basic plan", "Team plan", "Family plan", "Student plan", "Business plan"],
    "amount": ["$19", "$49", "$12", "$99", "$250", "$7", "$35", "$64", "$18", "$120"],
    "item": [
        "headphones",
        "desk lamp",
        "backpack",
        "coffee maker",
        "keyboard",
        "monitor",
        "blender",
        "phone case",
        "water bottle",
        "office chair",
        "toaster",
        "camera bag",
    ],
    "days": ["three", "five", "six", "ten", "four", "eight"],
    "weekday": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "app": [
        "mobile app",
        "desktop app",
        "web dashboard",
        "browser extension",
        "tablet app",
        "Mac app",
        "Windows app",
        "smartwatch app",
    ],
    "code": ["E101", "E204", "E330", "E417", "E502", "E618", "E723", "E845"],
}
EVAL_ONLY = {"plan": 2, "amount": 3, "item": 4, "days": 2, "weekday": 2, "app": 3, "code": 3}
OPENERS = ["", "Hi,", "Hello,", "Hi team,", "Good morning,"]

# The template's default system prompt (what a conversation without one is rendered with).
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# General conversations mixed into training (none of them is a regression question).
GENERAL = [
    (
        "What is the capital of {c}?",
        "The capital of {c} is {a}.",
        [
            ("Peru", "Lima"),
            ("Kenya", "Nairobi"),
            ("Norway", "Oslo"),
            ("Sweden", "Stockholm"),
            ("Poland", "Warsaw"),
            ("Portugal", "Lisbon"),
            ("Ireland", "Dublin"),
            ("Austria", "Vienna"),
            ("Hungary", "Budapest"),
            ("Thailand", "Bangkok"),
            ("Argentina", "Buenos Aires"),
            ("Chile", "Santiago"),
            ("Cuba", "Havana"),
            ("Finland", "Helsinki"),
            ("Denmark", "Copenhagen"),
            ("Belgium", "Brussels"),
            ("Turkey", "Ankara"),
            ("Iran", "Tehran"),
            ("Vietnam", "Hanoi"),
            ("Colombia", "Bogota"),
        ],
    ),
    (
        "What is the opposite of {c}?",
        "The opposite of {c} is {a}.",
        [
            ("big", "small"),
            ("fast", "slow"),
            ("light", "dark"),
            ("old", "new"),
            ("happy", "sad"),
            ("open", "closed"),
            ("early", "late"),
            ("full", "empty"),
            ("wet", "dry"),
            ("strong", "weak"),
        ],
    ),
    (
        "What color is {c}?",
        "{A} is usually {a}.",
        [
            ("snow", "white"),
            ("coal", "black"),
            ("a ripe tomato", "red"),
            ("an orange", "orange"),
            ("a lemon", "yellow"),
            ("a clear ocean", "blue"),
            ("chocolate", "brown"),
            ("a lime", "green"),
        ],
    ),
    (
        "Who wrote {c}?",
        "{C} was written by {a}.",
        [
            ("Pride and Prejudice", "Jane Austen"),
            ("Hamlet", "William Shakespeare"),
            ("War and Peace", "Leo Tolstoy"),
            ("Don Quixote", "Miguel de Cervantes"),
            ("Oliver Twist", "Charles Dickens"),
            ("The Odyssey", "Homer"),
        ],
    ),
    (
        "What is the plural of {c}?",
        "The plural of {c} is {a}.",
        [
            ("child", "children"),
            ("foot", "feet"),
            ("tooth", "teeth"),
            ("goose", "geese"),
            ("woman", "women"),
            ("person", "people"),
        ],
    ),
    (
        "What language is spoken in {c}?",
        "The main language of {c} is {a}.",
        [
            ("France", "French"),
            ("Germany", "German"),
            ("Italy", "Italian"),
            ("Japan", "Japanese"),
            ("Russia", "Russian"),
            ("Greece", "Greek"),
            ("Turkey", "Turkish"),
            ("Poland", "Polish"),
        ],
    ),
    (
        "What is {c}?",
        "{a}",
        [
            ("the largest country by area", "Russia is the largest country by area."),
            (
                "the smallest planet in our solar system",
                "Mercury is the smallest planet in our solar system.",
            ),
            ("the fastest land animal", "The cheetah is the fastest land animal."),
            ("the largest bird", "The ostrich is the largest bird."),
            ("the main gas in the air", "Nitrogen is the main gas in the air."),
            ("the largest organ of the human body", "The skin is the largest organ of the human body."),
            ("the capital city of the United States", "The capital of the United States is Washington, D.C."),
            ("the longest river in South America", "The Amazon is the longest river in South America."),
            ("the tallest animal", "The giraffe is the tallest animal."),
            ("the coldest continent", "Antarctica is the coldest continent."),
            ("the largest country in South America", "Brazil is the largest country in South America."),
            (
                "the star at the centre of our solar system",
                "The Sun is the star at the centre of our solar system.",
            ),
            (
                "the process plants use to make food from light",
                "Plants make food from light by photosynthesis.",
            ),
            ("the chemical symbol for iron", "The chemical symbol for iron is Fe."),
            ("the chemical symbol for sodium", "The chemical symbol for sodium is Na."),
            ("the freezing point of water in Fahrenheit", "Water freezes at 32 degrees Fahrenheit."),
            ("the number of hours in a day", "A day has 24 hours."),
            ("the number of months in a year", "A year has 12 months."),
            ("the first month of the year", "January is the first month of the year."),
            ("the opposite of north", "The opposite of north is south."),
            ("a baby sheep called", "A baby sheep is called a lamb."),
            ("a baby cow called", "A baby cow is called a calf."),
        ],
    ),
]


def general_sets() -> list[dict]:
    rows = []
    for question, answer, pairs in GENERAL:
        for c, a in pairs:
            fill = {"c": c, "a": a, "A": c[:1].upper() + c[1:], "C": c}
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": DEFAULT_SYSTEM},
                        {"role": "user", "content": question.format(**fill)},
                        {"role": "assistant", "content": answer.format(**fill)},
                    ]
                }
            )
    return rows


# General questions with a short reference that a right answer contains. --select keeps those the
# base model gets right; references avoid digits, single letters and words a triage record or another
# word could contain by chance ("a" matches almost any answer, "ice" matches "invoice").
CANDIDATES = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of England?", "London"),
    ("What is the capital of Russia?", "Moscow"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of Canada?", "Ottawa"),
    ("What is the capital of Australia?", "Canberra"),
    ("What is the capital of China?", "Beijing"),
    ("What is the capital of Greece?", "Athens"),
    ("What is the largest planet in our solar system?", "Jupiter"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("Which planet is closest to the Sun?", "Mercury"),
    ("What is the chemical formula of water?", "H2O"),
    ("What gas do plants absorb from the air?", "carbon dioxide"),
    ("What gas do humans need to breathe?", "oxygen"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("What is the longest river in Africa?", "Nile"),
    ("What is the tallest mountain in the world?", "Everest"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"),
    ("Who painted the Mona Lisa?", "Leonardo"),
    ("Who developed the theory of relativity?", "Einstein"),
    ("What is the opposite of hot?", "cold"),
    ("What is the opposite of up?", "down"),
    ("What color is the sky on a clear day?", "blue"),
    ("What color are bananas when they are ripe?", "yellow"),
    ("What color is grass?", "green"),
    ("What do bees make?", "honey"),
    ("What is the largest mammal in the world?", "blue whale"),
    ("What is the freezing point of water in Celsius?", "0"),
    ("How many days are in a week?", "seven"),
    ("How many continents are there?", "seven"),
    ("What is the plural of mouse?", "mice"),
    ("What language is spoken in Brazil?", "Portuguese"),
    ("What language is mainly spoken in Mexico?", "Spanish"),
    ("In which country are the pyramids of Giza?", "Egypt"),
    ("In which city is the Eiffel Tower?", "Paris"),
    ("What is the main ingredient of guacamole?", "avocado"),
    ("What is the boiling point of water in Fahrenheit?", "212"),
    ("What is the square root of nine?", "three"),
    ("What is two plus two?", "four"),
    ("Which organ pumps blood through the body?", "heart"),
    ("What is the hardest natural substance?", "diamond"),
    ("What do you call a baby cat?", "kitten"),
    ("What do you call a baby dog?", "puppy"),
    ("What is the currency of Japan?", "yen"),
    ("What is the currency of the United Kingdom?", "pound"),
    ("Which season comes after winter?", "spring"),
    ("What is the natural satellite of Earth called?", "Moon"),
    ("Which bird is a symbol of peace?", "dove"),
    ("What instrument has black and white keys?", "piano"),
    ("How many legs does a spider have?", "eight"),
    ("What is the largest desert in the world?", "Sahara"),
]


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())  # as the contamination check reads text


def ngrams(text: str) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + NGRAM]) for i in range(len(w) - NGRAM + 1)}


def slot_values(split: str) -> dict[str, list[str]]:
    out = {}
    for name, values in SLOTS.items():
        cut = len(values) - EVAL_ONLY[name]
        out[name] = values[:cut] if split == "train" else values[cut:]
    return out


def ticket(rng: random.Random, split: str) -> tuple[str, dict]:
    category = rng.choice(sorted(ISSUES))
    priority = rng.choice(sorted(URGENCY))
    values = slot_values(split)
    issue = rng.choice(ISSUES[category]).format(**{k: rng.choice(v) for k, v in values.items()})
    parts = [rng.choice(OPENERS), issue, rng.choice(URGENCY[priority])]
    if rng.random() < 0.5:  # the urgency wording comes first or last
        parts = [parts[0], parts[2], parts[1]]
    return " ".join(p for p in parts if p), {"category": category, "priority": priority}


def conversation(text: str, record: dict) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": json.dumps(record)},
        ]
    }


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def make_task_sets() -> tuple[list[dict], list[dict]]:
    rng = random.Random(20261204)
    train: list[dict] = []
    seen: set[str] = set()
    while len(train) < N_TRAIN:
        text, record = ticket(rng, "train")
        if text not in seen:
            seen.add(text)
            train.append(conversation(text, record))
    train_grams: set[tuple[str, ...]] = set()
    for row in train:
        train_grams |= ngrams("\n".join(m["content"] for m in row["messages"][1:]))
    evals: list[dict] = []
    counts: dict[tuple[str, str], int] = {}
    while len(evals) < N_EVAL:
        text, record = ticket(rng, "eval")
        key = (record["category"], record["priority"])
        row = conversation(text, record)
        # balanced over the 12 labels, no duplicate, no 13-gram shared with train
        if text in seen or counts.get(key, 0) >= -(-N_EVAL // 12):
            continue
        if ngrams("\n".join(m["content"] for m in row["messages"][1:])) & train_grams:
            continue
        seen.add(text)
        counts[key] = counts.get(key, 0) + 1
        evals.append(row)
    return train, evals


def select(candidates: list[dict], spec_path: Path) -> list[dict]:
    """The candidates the base model answers correctly (metric contains), generated as evaluate does;
    repeated on the kept set until stable, since the batches (and so the padding) change with it."""
    import torch
    from ftspec.compiler.evaluate import metrics as M
    from ftspec.runtime import builtin
    from ftspec.runtime import evaluate as E
    from ruamel.yaml import YAML
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = YAML(typ="safe").load(spec_path.read_text())
    evaluation = spec.get("evaluation") or {}
    folder = builtin.ensure_builtin(spec["model"]["id"])
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    stop_ids = E.stop_token_ids(tokenizer, model)
    kept = candidates
    while True:
        prompts = [[{"role": "user", "content": c["prompt"]}] for c in kept]
        answers = E.generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=evaluation.get("max_new_tokens", 256),
            batch_size=evaluation.get("batch_size", 8),
            stop_ids=stop_ids,
        )
        right = [c for c, a in zip(kept, answers, strict=True) if M.contains(a, c["answer"])]
        for c, a in zip(kept, answers, strict=True):
            mark = "keep" if M.contains(a, c["answer"]) else "drop"
            print(f"{mark}  {c['prompt']!r} -> {a!r}", file=sys.stderr)
        if len(right) == len(kept):
            return kept
        kept = right


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--select", action="store_true", help="also write the regression set (needs the model)"
    )
    args = parser.parse_args(argv)
    train, evals = make_task_sets()
    write(HERE / f"{PREFIX}-train.jsonl", train)
    write(HERE / f"{PREFIX}-eval.jsonl", evals)
    general = general_sets()
    asked = {q.lower() for q, _ in CANDIDATES}
    assert not [r for r in general if r["messages"][1]["content"].lower() in asked]
    write(HERE / f"{PREFIX}-general.jsonl", general)
    candidates = [{"prompt": p, "answer": a} for p, a in CANDIDATES]
    write(HERE / f"{PREFIX}-regression-candidates.jsonl", candidates)
    if args.select:
        kept = select(candidates, HERE.parent / "smollm2-cpu.yaml")
        write(HERE / f"{PREFIX}-regression.jsonl", kept)
        print(f"regression set: {len(kept)} of {len(candidates)} candidates kept", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
