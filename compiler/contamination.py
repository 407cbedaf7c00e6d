"""Eval-versus-train overlap for the gate, measured on the exact eval set the evaluation scored.

`ftspec check` measures the same thing on the files (compiler/datacheck.py); the gate measures it again
because with `eval_split` the eval set exists only after the split, and because data can change between
check and evaluate. Both use data_dedup.Contamination over the same text (every non-system turn), so
the two agree on what counts as overlap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .data_dedup import Contamination, words_of

Messages = Sequence[dict]


def _text(messages: Messages) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages if m.get("role") != "system")


def measure(
    eval_examples: Sequence[Messages],
    train_examples: Iterable[tuple[Messages, str]],
    ngram: int,
    *,
    max_examples: int = 10,
) -> dict:
    """Eval examples sharing an `ngram`-word sequence with training data.

    `train_examples` yields (messages, where) pairs; `where` names the training record in the output
    ("data/train.jsonl:12"). Returns {"ngram", "eval_examples", "contaminated", "examples": [{"eval",
    "train"}]} with at most `max_examples` examples.
    """
    overlap = Contamination(ngram)
    for index, messages in enumerate(eval_examples):
        overlap.add_eval(words_of(_text(messages)), index)
    named: dict[int, str] = {}  # only training records that overlap something keep their name
    for position, (messages, where) in enumerate(train_examples):
        before = len(overlap.hits)
        overlap.scan_train(words_of(_text(messages)), (position, 0))
        if len(overlap.hits) != before:
            named[position] = where
    examples = [
        {"eval": index, "train": named.get(where[0], str(where[0]))}
        for index, where in sorted(overlap.hits.items())[:max_examples]
    ]
    return {
        "ngram": ngram,
        "eval_examples": len(overlap.eval_lines),
        "contaminated": overlap.count,
        "examples": examples,
    }
