"""The `preference` metric of `ftspec evaluate` for `dataset.format: preference` (no `evaluation`
section needed): on the held-out pairs, the share whose chosen answer gets the higher summed
log-probability of its answer tokens, for the base and the fine-tuned model, and the pairs whose
ranking flipped between them. The pairs are tokenized exactly as training tokenized them
(runtime/preference.tokenize_pairs, the run's sequence_len), so the answer tokens are the ones DPO
and ORPO compared.
"""

from __future__ import annotations

import gc
import time

from ftspec.compiler import __version__
from ftspec.compiler.core.schema import schema_default
from ftspec.compiler.evaluate.contamination import measure as measure_contamination
from ftspec.runtime import preference as rpref

MEASURED = (
    "share of eval pairs whose chosen answer has the higher summed log-probability of its answer tokens"
)
MAX_FLIPPED = 200  # listed in report.json; all are counted


def eval_pairs(folder, read_pairs=rpref.read_pairs) -> tuple[list, list, str]:
    """(eval pairs, training pairs, how the eval set was chosen): the eval file, or eval_split of the
    training rows made with training's own split function and seed."""
    from ftspec.runtime.data import split_indices

    dataset = folder.spec["dataset"]
    train = dataset["train"]
    entries = train if isinstance(train, list) else [train]
    train_pairs = [
        p for e in entries for p in read_pairs(folder.data_path(e["path"] if isinstance(e, dict) else e))
    ]
    if dataset.get("eval"):
        return read_pairs(folder.data_path(dataset["eval"])), train_pairs, f"file {dataset['eval']}"
    if dataset.get("eval_split"):
        seed = int((folder.spec.get("training") or {}).get("seed", schema_default("/training/seed")))
        kept, held = split_indices(len(train_pairs), float(dataset["eval_split"]), seed)
        return (
            [train_pairs[i] for i in held],
            [train_pairs[i] for i in kept],
            f"eval_split {dataset['eval_split']} of train (seed {seed})",
        )
    return [], train_pairs, "none"


def margins(model, examples: list, pad_id: int, batch_size: int = 16) -> list[float]:
    """Chosen minus rejected summed answer log-probability of every pair under `model`."""
    device = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(examples), batch_size):
        batch = rpref.collate(examples[start : start + batch_size], pad_id)
        chosen, rejected = rpref.reference_logps(model, batch, device, adapter_disabled=False)
        out.extend((chosen - rejected).double().tolist())
    return out


def _conversation(pair) -> list[dict]:
    return [*pair["prompt"], *pair["chosen"], *pair["rejected"]]


def measure(
    folder, *, load_base, load_finetuned, load_tokenizer, finetuned: str, sequence_len: int | None, ngram: int
) -> dict:
    """The metrics document (same shape as runtime/evaluate.measure's) with `values.*.preference`."""
    evals, train_pairs, source = eval_pairs(folder)
    if not evals:
        raise ValueError(
            "dataset.format is preference but there are no eval pairs (set dataset.eval or eval_split)"
        )
    tokenizer = load_tokenizer(folder)
    truncation = folder.spec["dataset"].get("truncation", "truncate")
    kept_items = list(_kept(evals, tokenizer, sequence_len, truncation))
    kept, examples = [p for p, _ in kept_items], [e for _, e in kept_items]
    contamination = measure_contamination(
        [_conversation(p) for p in evals],
        ((_conversation(p), getattr(p, "where", "")) for p in train_pairs),
        ngram,
    )
    results, seconds = {}, {}
    for name, loader in (("base", load_base), ("finetuned", load_finetuned)):
        started = time.monotonic()
        model = loader(folder)
        results[name] = margins(model, examples, tokenizer.pad_token_id)
        seconds[name] = round(time.monotonic() - started, 2)
        del model
        gc.collect()
    values = {name: {"preference": sum(m > 0 for m in ms) / len(ms)} for name, ms in results.items()}
    flipped = [
        {
            "index": i,
            "where": str(getattr(kept[i], "where", "")),
            "direction": "to_chosen" if f > 0 else "to_rejected",
            "base_margin": round(b, 4),
            "finetuned_margin": round(f, 4),
        }
        for i, (b, f) in enumerate(zip(results["base"], results["finetuned"], strict=True))
        if (b > 0) != (f > 0)
    ]
    notes = []
    if len(kept) < len(evals):
        notes.append(
            f"{len(evals) - len(kept)} eval pair(s) left out, as training leaves them out (sequence_len)"
        )
    if len(flipped) > MAX_FLIPPED:
        notes.append(f"{len(flipped)} pairs flipped; the first {MAX_FLIPPED} are listed")
    return {
        "metadata": {
            "schema_version": 1,
            "kind": "ftspec-eval-metrics",
            "ftspec_version": __version__,
            "spec_sha256": (folder.plan.get("metadata") or {}).get("spec_sha256"),
        },
        "models": {"base": folder.spec["model"]["id"], "finetuned": finetuned},
        "measured": {"preference": MEASURED},
        "counts": {"preference": len(examples), "task": 0, "regression": 0},
        "values": values,
        "flipped": flipped[:MAX_FLIPPED],
        "contamination": contamination,
        "eval_source": source,
        "examples": {"task": [], "regression": []},
        "notes": notes,
        "seconds": seconds,
    }


def _kept(pairs, tokenizer, sequence_len, truncation):
    """The pairs tokenize_pairs keeps, in order, with their examples (for the flipped list's lines)."""
    for pair in pairs:
        example, _status = rpref.tokenize_pair(
            pair, tokenizer, sequence_len=sequence_len or 1 << 30, truncation=truncation
        )
        if example is not None:
            yield pair, example
