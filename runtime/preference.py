"""Preference tuning (`training.objective: dpo | orpo`): pairs -> tokens -> the published losses.

- A pair is tokenized as two sequences, prompt + chosen and prompt + rejected, each rendered with the
  chat template exactly as SFT renders a conversation (runtime/data.trained_ids, the spans `ftspec
  check` shows). The *answer* of a side is its last trained run: the side's assistant turn and its
  end-of-turn token; earlier assistant turns of a multi-turn prompt are context, never scored.
- A micro batch is laid out as TRL lays it out ([chosen rows..., rejected rows...], right padded, a
  completion mask over the answer tokens), so the same tensors can be fed to TRL's trainers: the
  loss test compares both on one batch.
- DPO (Rafailov et al. 2023, TRL's `loss_type="sigmoid"`): -log sigmoid(beta * ((pi_c - ref_c) -
  (pi_r - ref_r))) with summed answer log-probabilities. The reference is the starting model, and
  its log-probabilities are computed once before the first step, over the training and eval pairs
  (`reference_logps`): for LoRA/QLoRA with the adapter disabled (the base weights, no second copy),
  for full fine-tuning with the weights as loaded (before any step or resume). No reference forward
  runs during training, and no frozen copy is held.
- ORPO (Hong et al. 2024, TRL's ORPOTrainer): NLL of the chosen side (mean over its tokens in the
  micro batch; `loss_on: all` takes every token as TRL does, `assistant` the answer only) minus
  beta * mean log sigmoid(log odds ratio) of the length-averaged answer log-probabilities. No reference.
- The train loop weighs each pair equally: `loss_sum` returns the micro batch's mean loss times its
  pair count, and the loop divides by the global pair count of the step (as it divides SFT's token
  sums by the token count).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ftspec.compiler.dataset.formats import to_pair
from ftspec.compiler.dataset.records import DataFileError, RecordReader
from ftspec.runtime.data import DataError, Example, eval_shards, trained_ids

PREFERENCE_OBJECTIVES = ("dpo", "orpo")
IGNORE = -100


def objective_of(spec: dict) -> str:
    return str((spec.get("training") or {}).get("objective") or "sft")


def is_preference(spec: dict) -> bool:
    return objective_of(spec) in PREFERENCE_OBJECTIVES


class PairRecord(dict):
    """A pair's {"prompt", "chosen", "rejected"} messages, remembering its file and line."""

    def __init__(self, pair: dict, where: str = ""):
        super().__init__(pair)
        self.where = where


@dataclass
class PairExample:
    """One tokenized pair. `ref` holds the reference's summed answer log-probabilities (DPO)."""

    chosen: Example
    rejected: Example
    ref: tuple[float, float] | None = field(default=None, compare=False)

    @property
    def tokens(self) -> int:
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)


def read_pairs(path: Path) -> list[PairRecord]:
    """Every record of a preference file as a pair; a bad record stops with its line (FT0711)."""
    out = []
    try:
        for line, value, error in RecordReader(path):
            if error is not None:
                raise DataError("FT0711", file=str(path), line=line, detail=error)
            try:
                out.append(PairRecord(to_pair(value), f"{path}:{line}"))
            except ValueError as exc:
                raise DataError("FT0711", file=str(path), line=line, detail=str(exc)) from None
    except DataFileError as exc:
        raise DataError("FT0711", file=str(path), line=0, detail=str(exc)) from None
    return out


class _Where(list):
    def __init__(self, messages, where: str):
        super().__init__(messages)
        self.where = where


def _answer_only(mask: list[bool]) -> list[bool]:
    """Keep the last run of trained tokens: the side's own answer and its end-of-turn token."""
    out = [False] * len(mask)
    i = len(mask) - 1
    while i >= 0 and not mask[i]:
        i -= 1
    while i >= 0 and mask[i]:
        out[i] = True
        i -= 1
    return out


def tokenize_side(pair: PairRecord, side: str, tokenizer) -> tuple[list[int], list[int]]:
    """(ids, answer labels) of prompt + one side; labels are -100 outside the side's answer."""
    messages = _Where([*pair["prompt"], *pair[side]], f"{getattr(pair, 'where', '') or 'a pair'} ({side})")
    ids, mask = trained_ids(messages, tokenizer, "assistant")
    answer = _answer_only(mask)
    return ids, [t if m else IGNORE for t, m in zip(ids, answer, strict=True)]


def tokenize_pair(
    pair: PairRecord, tokenizer, *, sequence_len: int, truncation: str
) -> tuple[PairExample | None, str]:
    """One pair as a PairExample; (None, reason) when it is dropped. Each side is cut at the end to
    sequence_len (`drop`: a pair with a side longer than that is dropped); a pair where a side has no
    answer token left compares nothing and is dropped either way."""
    sides = []
    status = "ok"
    for side in ("chosen", "rejected"):
        ids, labels = tokenize_side(pair, side, tokenizer)
        if len(ids) > sequence_len:
            if truncation == "drop":
                return None, "too_long"
            ids, labels = ids[:sequence_len], labels[:sequence_len]
            status = "truncated"
        if not any(x != IGNORE for x in labels[1:]):
            return None, "nothing_trained"
        sides.append(Example(ids, labels, list(range(len(ids)))))
    return PairExample(sides[0], sides[1]), status


def tokenize_pairs(pairs: Sequence[PairRecord], tokenizer, *, sequence_len: int, truncation: str):
    out: list[PairExample] = []
    counts = {"ok": 0, "truncated": 0, "too_long": 0, "nothing_trained": 0}
    for pair in pairs:
        example, status = tokenize_pair(pair, tokenizer, sequence_len=sequence_len, truncation=truncation)
        counts[status] += 1
        if example is not None:
            out.append(example)
    return out, counts


def pair_stats(
    train: list[PairExample], evals: list[PairExample], train_counts, eval_counts, n_records
) -> dict:
    return {
        "objective_unit": "pairs",
        "train_conversations": n_records,
        "train_examples": len(train),
        "train_sequences": len(train),
        "train_tokens": sum(p.tokens for p in train),
        "train_trained_tokens": sum(p.chosen.trained + p.rejected.trained for p in train),
        "train_counts": train_counts,
        "eval_examples": len(evals),
        "eval_counts": eval_counts,
        "packing": False,
    }


# --- batches and losses -------------------------------------------------------------------------


def count_pairs(batch: Sequence[PairExample]) -> int:
    """The unit each pair's loss is weighed by: one per pair."""
    return len(batch)


def input_tokens(batch: Sequence[PairExample]) -> int:
    """Tokens the model reads for a micro batch (both sides, padding excluded): for tokens/s."""
    return sum(p.tokens for p in batch)


def collate(batch: Sequence[PairExample], pad_id: int) -> dict:
    """TRL's layout: chosen rows then rejected rows, right padded; `labels` hold the answer tokens
    (also as `completion_mask`), `ref_chosen_logps`/`ref_rejected_logps` the reference's sums."""
    import torch

    rows = [p.chosen for p in batch] + [p.rejected for p in batch]
    width = max(len(e.input_ids) for e in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    for row, e in enumerate(rows):
        length = len(e.input_ids)
        input_ids[row, :length] = torch.tensor(e.input_ids)
        labels[row, :length] = torch.tensor(e.labels)
        attention[row, :length] = 1
    out = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "labels": labels,
        "completion_mask": (labels != IGNORE).long(),
    }
    refs = [p.ref for p in batch if p.ref is not None]
    if len(refs) == len(batch):  # every pair has its reference
        out["ref_chosen_logps"] = torch.tensor([r[0] for r in refs], dtype=torch.float32)
        out["ref_rejected_logps"] = torch.tensor([r[1] for r in refs], dtype=torch.float32)
    return out


def token_logps(logits, labels):
    """Per-token log-probabilities of the labels (shifted by one; 0 where the label is ignored) and
    the mask of tokens that count. fp32, as TRL computes them."""
    import torch

    shifted = labels[:, 1:]
    mask = shifted != IGNORE
    safe = torch.where(mask, shifted, 0)
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logps * mask, mask


def dpo_losses(chosen_logps, rejected_logps, ref_chosen, ref_rejected, beta: float):
    """Per-pair DPO losses and the rewards beta * (pi - ref) of each side."""
    import torch.nn.functional as F

    chosen_ratio = chosen_logps - ref_chosen
    rejected_ratio = rejected_logps - ref_rejected
    losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def log1mexp(x):
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (as TRL computes it)."""
    import torch

    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_odds_ratio(chosen_avg, rejected_avg, beta: float):
    """beta * log sigmoid(log odds(chosen) - log odds(rejected)) per pair, and the rewards beta * avg logp."""
    import torch.nn.functional as F

    chosen_avg, rejected_avg = chosen_avg.float(), rejected_avg.float()
    log_odds = (chosen_avg - rejected_avg) - (log1mexp(chosen_avg) - log1mexp(rejected_avg))
    return beta * F.logsigmoid(log_odds), beta * chosen_avg.detach(), beta * rejected_avg.detach()


@dataclass
class Objective:
    """What the train loop needs from a preference objective; sums in `window` are logged."""

    kind: str  # dpo | orpo
    beta: float
    loss_on: str = "assistant"
    window: dict = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: dict) -> Objective:
        training = spec.get("training") or {}
        return cls(
            objective_of(spec), float(training.get("beta", 0.1)), str(training.get("loss_on", "assistant"))
        )

    def reset(self) -> None:
        self.window = {"pairs": 0.0, "chosen": 0.0, "rejected": 0.0, "correct": 0.0}

    def loss_sum(self, model, batch: dict, device, weights=None):
        """The micro batch's mean loss times its pair count (see the module docstring). `weights`
        (1 real, 0 filler; eval only) leaves filler pairs out of the loss and the window."""
        import torch
        import torch.nn.functional as F

        n = batch["input_ids"].shape[0] // 2
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
        labels = batch["labels"].to(device)
        w = torch.ones(n, device=device) if weights is None else weights.to(device).float()
        real = w.sum()
        logits = model(**inputs, use_cache=False).logits
        logps, mask = token_logps(logits, labels)
        if self.kind == "dpo":
            sums = logps.sum(-1)
            ref_c = batch["ref_chosen_logps"].to(device)
            ref_r = batch["ref_rejected_logps"].to(device)
            losses, reward_c, reward_r = dpo_losses(sums[:n], sums[n:], ref_c, ref_r, self.beta)
            total = (losses * w).sum()
        else:
            avg = logps.sum(-1) / mask.sum(-1).clamp(min=1)
            if self.loss_on == "all":  # TRL: every real token of the chosen side
                nll_labels = inputs["input_ids"][:n].masked_fill(inputs["attention_mask"][:n] == 0, IGNORE)
            else:
                nll_labels = labels[:n]
            nll_labels = nll_labels.masked_fill((w == 0).unsqueeze(-1), IGNORE)
            nll = F.cross_entropy(
                logits[:n, :-1].float().reshape(-1, logits.shape[-1]),
                nll_labels[:, 1:].reshape(-1),
                ignore_index=IGNORE,
            )
            ratio, reward_c, reward_r = orpo_odds_ratio(avg[:n], avg[n:], self.beta)
            total = (nll - (ratio * w).sum() / real.clamp(min=1)) * real
        if self.window:
            self.window["pairs"] += float(real)
            self.window["chosen"] += float((reward_c * w).sum())
            self.window["rejected"] += float((reward_r * w).sum())
            self.window["correct"] += float(((reward_c > reward_r).float() * w).sum())
        return total

    def log_fields(self, reduce_sum) -> dict:
        """Reward means, margin and accuracy of the window (all ranks), for metrics.jsonl."""
        pairs, chosen, rejected, correct = reduce_sum(
            [self.window.get(k, 0.0) for k in ("pairs", "chosen", "rejected", "correct")]
        )
        self.reset()
        if not pairs:
            return {}
        return {
            "rewards_chosen": round(chosen / pairs, 6),
            "rewards_rejected": round(rejected / pairs, 6),
            "rewards_margin": round((chosen - rejected) / pairs, 6),
            "rewards_accuracy": round(correct / pairs, 6),
        }


def reference_logps(model, batch: dict, device, adapter_disabled: bool):
    """Summed answer log-probabilities of both sides under the reference: the model as it is
    (full fine-tuning, before the first step) or with its adapter disabled (the base weights)."""
    import contextlib

    import torch

    inner = getattr(model, "module", model)
    off = (
        inner.disable_adapter()
        if adapter_disabled and hasattr(inner, "disable_adapter")
        else contextlib.nullcontext()
    )
    n = batch["input_ids"].shape[0] // 2
    with torch.no_grad(), off:
        logits = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            use_cache=False,
        ).logits
        sums = token_logps(logits, batch["labels"].to(device))[0].sum(-1)
    return sums[:n], sums[n:]


def fill_reference(
    model,
    pairs: list[PairExample],
    *,
    device,
    adapter_disabled: bool,
    batch_size: int,
    world: int,
    rank: int,
    all_reduce,
    pad_id: int,
) -> None:
    """Set every pair's `ref` once, before training: each rank scores its share of the pairs (equal
    numbers of batches on every rank, since sharded models run collectives inside forward) and the
    sums are added across ranks."""
    import torch

    if not pairs:
        return
    table = torch.zeros((len(pairs), 2), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    for chunk in eval_shards(len(pairs), batch_size, world, rank):
        batch = collate([pairs[i if i is not None else 0] for i in chunk], pad_id)
        chosen, rejected = reference_logps(model, batch, device, adapter_disabled)
        for row, i in enumerate(chunk):
            if i is not None:
                table[i, 0] = chosen[row].double()
                table[i, 1] = rejected[row].double()
    if was_training:
        model.train()
    table = all_reduce(table) if world > 1 else table
    for pair, (c, r) in zip(pairs, table.tolist(), strict=True):
        pair.ref = (c, r)


def evaluate_pairs(
    objective: Objective,
    model,
    pairs: list[PairExample],
    *,
    device,
    batch_size: int,
    world: int,
    rank: int,
    reduce_sum,
    pad_id: int,
) -> tuple[float | None, float | None]:
    """(mean eval loss per pair, share of pairs the policy rewards chosen over rejected), all ranks."""
    import torch

    if not pairs:
        return None, None
    saved = objective.window
    objective.window = {"pairs": 0.0, "chosen": 0.0, "rejected": 0.0, "correct": 0.0}
    loss_sum = 0.0
    model.eval()
    with torch.no_grad():
        for chunk in eval_shards(len(pairs), batch_size, world, rank):
            batch = collate([pairs[i if i is not None else 0] for i in chunk], pad_id)
            weights = torch.tensor([0.0 if i is None else 1.0 for i in chunk])
            loss_sum += float(objective.loss_sum(model, batch, device, weights))
    model.train()
    window = objective.window
    objective.window = saved
    total, pairs_n, correct = reduce_sum([loss_sum, window["pairs"], window["correct"]])
    return total / max(pairs_n, 1.0), correct / max(pairs_n, 1.0)


def prepare_pairs(train_pairs, eval_pairs, tokenizer, *, sequence_len: int, truncation: str):
    """runtime/data.prepare for preference data: tokenized pairs and their counts."""
    from ftspec.runtime.data import Prepared

    train, train_counts = tokenize_pairs(
        train_pairs, tokenizer, sequence_len=sequence_len, truncation=truncation
    )
    evals, eval_counts = tokenize_pairs(
        eval_pairs, tokenizer, sequence_len=sequence_len, truncation=truncation
    )
    if not train:
        raise DataError("FT0714", counts=train_counts)
    stats = pair_stats(train, evals, train_counts, eval_counts, len(train_pairs))
    stats["sequence_len"] = sequence_len
    return Prepared(train, evals, stats)
