"""Eval-versus-train overlap for the gate, measured on the exact eval set the evaluation scored.

`ftspec check` measures the same thing on the files (compiler/datacheck.py); the gate measures it again
because with `eval_split` the eval set exists only after the split, and because data can change between
check and evaluate. Both use data_dedup.Contamination over the same text (every non-system turn), so
the two agree on what counts as overlap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ftspec.compiler.check.data.dedup import Contamination, words_of

Messages = Sequence[dict]


def _text(messages: Messages) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages if m.get("role") != "system")


def measure(
    eval_examples: Sequence[Messages],
    train_examples: Iterable[tuple[Messages, str]],
    ngram: int,
    *,
    max_examples: int = 10,
    regression: Sequence[Messages] | None = None,
) -> dict:
    """Eval examples sharing an `ngram`-word sequence with training data.

    `train_examples` yields (messages, where) pairs; `where` names the training record in the output
    ("data/train.jsonl:12"). Returns {"ngram", "eval_examples", "contaminated", "examples": [{"eval",
    "train"}]} with at most `max_examples` examples. With `regression` (the regression prompts and
    answers), the same training pass also fills a "regression" entry of the same shape: a regression
    set the model trained on measures memory, not forgetting.
    """
    overlap = Contamination(ngram)
    sets = {"eval": list(eval_examples), "regression": list(regression or [])}
    for name, examples in sets.items():
        for index, messages in enumerate(examples):
            overlap.add_eval(words_of(_text(messages)), (name, index))
    named: dict[int, str] = {}  # only training records that overlap something keep their name
    for position, (messages, where) in enumerate(train_examples):
        before = len(overlap.hits)
        overlap.scan_train(words_of(_text(messages)), (position, 0))
        if len(overlap.hits) != before:
            named[position] = where

    def summary(name: str) -> dict:
        labels = overlap.eval_lines  # the (set, index) each added example was given
        hits = sorted(
            (labels[key][1], where) for key, where in overlap.hits.items() if labels[key][0] == name
        )
        return {
            "ngram": ngram,
            "eval_examples": sum(1 for set_name, _i in overlap.eval_lines if set_name == name),
            "contaminated": len(hits),
            "examples": [
                {"eval": index, "train": named.get(where[0], str(where[0]))}
                for index, where in hits[:max_examples]
            ],
        }

    out = summary("eval")
    if regression is not None:
        out["regression"] = summary("regression")
    return out
