"""Training data: records -> chat messages -> token ids with assistant-only labels -> batches.

- Records are read and converted with the compiler's own readers (data_io, data_formats.to_messages),
  so training sees exactly what `ftspec check` checked.
- Labels come from the chat template, through the compiler's assistant_spans.trained_text, the very
  function `ftspec check` shows its samples with: the conversation is rendered in the same sandbox
  transformers uses, and the trained character spans are the `{% generation %}` blocks where the
  template has them (ftspec's templates put them around each answer *and its turn terminator*), else
  each assistant answer located in the rendering plus the special token that ends its turn (or the
  EOS, appended when the template writes nothing after the last answer), so the model learns to stop.
  The spans become a token mask through the fast tokenizer's character offsets. Every other token
  (system, user, role headers) gets label -100. `loss_on: all` trains every token. A record whose
  answers cannot be located stops the run with its file and line (FT0713), as check reports it
  (FT0556): its prompt is never silently trained on.
- Longer than sequence_len: `truncation: truncate` cuts at the end, `drop` drops the example;
  an example left with no trained token is dropped either way (it would only add padding).
- Packing concatenates examples into rows of at most sequence_len (best-fit decreasing: few rows, each
  nearly full, so little of a packed batch is padding) with position_ids restarting at 0 for each
  example and no attention mask; a micro batch then counts packed rows, not examples. transformers
  (masking_utils.find_packed_sequence_indices) turns restarting position_ids into a block-diagonal
  causal mask for the eager and SDPA kernels, and flash-attention uses them as varlen boundaries, so
  packed examples never attend to each other on CPU or GPU; the first label of every example is
  masked so no token is predicted across a boundary.
- Batches are a pure function of (seed, step): the order of epoch e is a permutation seeded with
  seed + e, and step s takes the next global batch of it. Resuming at step s needs no saved sampler
  state, and changing micro batch x accumulation at the same product (OOM retry) keeps the order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftspec.compiler.core.schema import schema_default
from ftspec.compiler.dataset import assistant_spans
from ftspec.compiler.dataset.chat_templates import TemplateError, mask_from_offsets, render
from ftspec.compiler.dataset.formats import chat_messages, chat_tools, to_chat
from ftspec.compiler.dataset.readers import open_records
from ftspec.compiler.dataset.records import DataFileError
from ftspec.compiler.dataset.sources import mix, train_entries


class DataError(Exception):
    def __init__(self, code: str, **fields: object):
        super().__init__(f"{code}: {fields}")
        self.code = code
        self.fields = fields


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]

    @property
    def trained(self) -> int:
        return sum(1 for x in self.labels if x != -100)


class Conversation(list):
    """A record's chat messages, remembering the file and 1-based line (or row) it came from (for
    errors), the record's tool schemas (passed to the template as `tools`) and, for the formats
    without a chat template, which one it is (`plain`: completion | text)."""

    def __init__(
        self,
        messages: Sequence[dict],
        where: str = "",
        tools: list[dict] | None = None,
        plain: str | None = None,
    ):
        super().__init__(messages)
        self.where = where
        self.tools = tools
        self.plain = plain


@dataclass
class Prepared:
    train: list[Example]
    eval: list[Example]
    stats: dict


def read_conversations(path: Path, fmt: str) -> list[list[dict]]:
    if fmt == "preference":  # pairs, not conversations (runtime/preference.py)
        from ftspec.runtime.preference import read_pairs

        return read_pairs(path)
    out: list[list[dict]] = []
    try:
        for line, value, error in open_records(path, sha256=False):  # any source the data check reads
            if error is not None:
                raise DataError("FT0711", file=str(path), line=line, detail=error)
            try:
                chat = to_chat(value, fmt)
                plain = getattr(chat, "plain", None)
                out.append(Conversation(chat_messages(chat), f"{path}:{line}", chat_tools(chat), plain))
            except ValueError as exc:
                raise DataError("FT0711", file=str(path), line=line, detail=str(exc)) from None
    except DataFileError as exc:
        raise DataError("FT0711", file=str(path), line=0, detail=str(exc)) from None
    return out


def mix_sources(groups: list[tuple[list, float | None]], seed: int) -> list:
    """Plain sources are taken whole; a source with `fraction` f supplies f of the final mix (drawn
    without replacement while it lasts, then again in a new seeded order)."""
    plan = mix([(len(items), f) for items, f in groups])
    if plan.over:
        raise DataError("FT0712", total=plan.fraction_total)
    out = [x for items, f in groups if f is None for x in items]
    rng = random.Random(seed)
    for index, ((items, f), want) in enumerate(zip(groups, plan.wanted, strict=True)):
        if f is None or not items:
            continue
        drawn: list = []
        round_no = 0
        while len(drawn) < want:
            order = list(range(len(items)))
            random.Random(seed * 1000 + index * 37 + round_no).shuffle(order)
            drawn.extend(items[i] for i in order[: want - len(drawn)])
            round_no += 1
        out.extend(drawn)
    rng.shuffle(out)
    return out


def split_indices(n: int, eval_split: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, eval) indices of an eval_split: datasets' train_test_split with the training seed, so
    ceil(eval_split x n) rows go to eval (the count compile's plan states). `ftspec evaluate` calls
    this too, to rebuild exactly the eval set training held out."""
    from datasets import Dataset

    parts = Dataset.from_dict({"i": list(range(n))}).train_test_split(test_size=eval_split, seed=seed)
    return list(parts["train"]["i"]), list(parts["test"]["i"])


def load_conversations(spec: dict, spec_dir: Path) -> tuple[list, list]:
    """(train, eval) conversations: the train mix, and the eval file or an eval_split of train.

    eval_split is taken from the rows of all training files in the order written (before mixing), so
    mixed-in rows are never both trained on and evaluated; the remaining rows are then mixed."""
    dataset = spec["dataset"]
    fmt = dataset.get("format", schema_default("/dataset/format"))
    seed = int(spec.get("training", {}).get("seed", schema_default("/training/seed")))
    groups = [
        (read_conversations(spec_dir / entry.path, fmt), entry.fraction) for entry in train_entries(dataset)
    ]
    if dataset.get("eval_split"):
        rows = [(g, conv) for g, (convs, _f) in enumerate(groups) for conv in convs]
        train_idx, eval_idx = split_indices(len(rows), float(dataset["eval_split"]), seed)
        eval_convs = [rows[i][1] for i in eval_idx]
        kept = sorted(train_idx)
        groups = [([rows[i][1] for i in kept if rows[i][0] == g], f) for g, (_c, f) in enumerate(groups)]
    elif dataset.get("eval"):
        eval_convs = read_conversations(spec_dir / dataset["eval"], fmt)
    else:
        eval_convs = []
    return mix_sources(groups, seed), eval_convs


def check_template(tokenizer, loss_on: str) -> None:
    """Assistant-only loss maps character spans to tokens, which needs a fast tokenizer's offsets."""
    if loss_on == "assistant" and not getattr(tokenizer, "is_fast", False):
        raise DataError(
            "FT0713",
            where="the tokenizer",
            detail="it is not a fast tokenizer, so it gives no character offsets to map the trained "
            "text to tokens",
        )


_MARKERS: dict[int, tuple[Any, int, tuple[str, ...]]] = {}  # id -> (tokenizer, its length, markers)


def _markers(tokenizer) -> tuple[str, ...]:
    """assistant_spans.marker_tokens, once per tokenizer (it reads the whole vocabulary)."""
    key = id(tokenizer)
    cached = _MARKERS.get(key)
    if cached is None or cached[0] is not tokenizer or cached[1] != len(tokenizer):
        cached = (tokenizer, len(tokenizer), assistant_spans.marker_tokens(tokenizer))
        _MARKERS[key] = cached
    return cached[2]


def _template(tokenizer) -> str:
    template = tokenizer.chat_template
    if isinstance(template, dict):  # named templates: transformers uses "default"
        template = template.get("default") or next(iter(template.values()), "")
    return template or ""


def trained_ids(messages: Sequence[dict], tokenizer, loss_on: str) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and which of them train: the spans `ftspec check`
    shows (assistant_spans.trained_text), mapped to tokens by their character offsets."""
    special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    where = getattr(messages, "where", "") or "a record"
    conversation = [dict(m) for m in messages]
    tools = getattr(messages, "tools", None)
    try:
        if getattr(messages, "plain", None):  # completion / text: no chat template
            trained = assistant_spans.trained_plain(
                conversation, eos=tokenizer.eos_token or "", loss_on=loss_on
            )
            text, spans = trained.text, trained.spans
        elif loss_on == "assistant":
            trained = assistant_spans.trained_text(
                _template(tokenizer),
                conversation,
                special_tokens=special,
                markers=_markers(tokenizer),
                tools=tools,
            )
            text, spans = trained.text, trained.spans
        else:
            text = render(_template(tokenizer), conversation, special_tokens=special, tools=tools).text
            spans = [(0, len(text))]
    except TemplateError as exc:
        raise DataError("FT0713", where=where, detail=exc.message) from None
    if loss_on == "assistant" and trained.problems:
        first = trained.problems[0]
        raise DataError("FT0713", where=where, detail=f"turn {first.turn} (assistant): {first.detail}")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = mask_from_offsets(enc["input_ids"], enc["offset_mapping"], spans)
    return mask.ids, mask.trained


def tokenize(
    messages: list[dict], tokenizer, *, loss_on: str, sequence_len: int, truncation: str
) -> tuple[Example | None, str]:
    """One conversation as an Example; (None, reason) when it is dropped."""
    ids, mask = trained_ids(messages, tokenizer, loss_on)
    labels = [t if m else -100 for t, m in zip(ids, mask, strict=True)]
    status = "ok"
    if len(ids) > sequence_len:
        if truncation == "drop":
            return None, "too_long"
        ids, labels = ids[:sequence_len], labels[:sequence_len]
        status = "truncated"
    if not any(x != -100 for x in labels[1:]):  # the first label is never predicted
        return None, "nothing_trained"
    return Example(ids, labels, list(range(len(ids)))), status


def tokenize_all(convs: Sequence[list[dict]], tokenizer, *, loss_on: str, sequence_len: int, truncation: str):
    out: list[Example] = []
    counts = {"ok": 0, "truncated": 0, "too_long": 0, "nothing_trained": 0}
    for messages in convs:
        example, status = tokenize(
            messages, tokenizer, loss_on=loss_on, sequence_len=sequence_len, truncation=truncation
        )
        counts[status] += 1
        if example is not None:
            out.append(example)
    return out, counts


def pack(examples: Sequence[Example], sequence_len: int, seed: int) -> list[Example]:
    """Best-fit-decreasing packing: longest examples first (ties in a seeded order), each into the row
    whose free space fits it most tightly, else into a new row. Greedy next-fit in a random order
    leaves every row short by whatever the next example did not fit into (on the demo mix at 128
    tokens: 350 rows of 116 tokens on average against 334 of 122 here), and collate pads every row to
    the longest of its batch, so that gap was computed as padding on every step. Rows are then
    ordered by the Schedule's seeded shuffle, so which rows meet in a batch stays random."""
    import bisect

    order = list(range(len(examples)))
    random.Random(seed + 7919).shuffle(order)
    order.sort(key=lambda i: -len(examples[i].input_ids))  # stable: equal lengths keep the seeded order
    members: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, row), sorted: the tightest fit is found by bisection
    for i in order:
        length = len(examples[i].input_ids)
        at = bisect.bisect_left(free, (length, -1))
        if at < len(free):
            space, row = free.pop(at)
            members[row].append(i)
        else:  # no row has room (an example longer than sequence_len gets a row of its own)
            row, space = len(members), sequence_len
            members.append([i])
        if space - length > 0:
            bisect.insort(free, (space - length, row))
    rows: list[Example] = []
    for group in members:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for i in group:
            ex = examples[i]
            ids.extend(ex.input_ids)
            # No token is predicted across a boundary: the first label of each example is masked.
            labels.append(-100)
            labels.extend(ex.labels[1:])
            positions.extend(range(len(ex.input_ids)))
        rows.append(Example(ids, labels, positions))
    return rows


def prepare(spec: dict, spec_dir: Path, tokenizer) -> Prepared:
    training = spec.get("training", {})
    loss_on = training.get("loss_on", schema_default("/training/loss_on"))
    check_template(tokenizer, loss_on)
    sequence_len = resolved_sequence_len(spec)
    truncation = spec["dataset"].get("truncation", "truncate")
    train_convs, eval_convs = load_conversations(spec, spec_dir)
    if spec["dataset"].get("format") == "preference":
        from ftspec.runtime.preference import prepare_pairs

        return prepare_pairs(
            train_convs, eval_convs, tokenizer, sequence_len=sequence_len, truncation=truncation
        )
    train, train_counts = tokenize_all(
        train_convs, tokenizer, loss_on=loss_on, sequence_len=sequence_len, truncation=truncation
    )
    evals, eval_counts = tokenize_all(
        eval_convs, tokenizer, loss_on=loss_on, sequence_len=sequence_len, truncation=truncation
    )
    if not train:
        raise DataError("FT0714", counts=train_counts)
    examples = len(train)
    if training.get("packing"):
        train = pack(train, sequence_len, int(training.get("seed", schema_default("/training/seed"))))
    stats = {
        "train_conversations": len(train_convs),
        "train_examples": examples,
        "train_sequences": len(train),
        "train_tokens": sum(len(e.input_ids) for e in train),
        "train_trained_tokens": sum(e.trained for e in train),
        "train_counts": train_counts,
        "eval_examples": len(evals),
        "eval_counts": eval_counts,
        "sequence_len": sequence_len,
        "packing": bool(training.get("packing")),
    }
    return Prepared(train, evals, stats)


def resolved_sequence_len(spec: dict, derived: dict | None = None) -> int:
    value = spec.get("training", {}).get("sequence_len", schema_default("/training/sequence_len"))
    if isinstance(value, int):
        return value
    if derived and isinstance(derived.get("sequence_len"), int):
        return int(derived["sequence_len"])
    raise DataError("FT0715", value=value)


# --- batching ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Which sequences each rank sees at each optimizer step: a pure function of (seed, step)."""

    n: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    world_size: int
    seed: int
    # Unpacked runs: each sequence's length. The epoch's shuffled order is then grouped by length
    # (group_by_length), so a micro batch pads to a length close to its rows' own.
    lengths: tuple[int, ...] | None = None

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.n / self.global_batch))

    def _order(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed * 100_003 + epoch).shuffle(order)
        if self.lengths is not None and len(self.lengths) == self.n:
            order = group_by_length(order, self.lengths, self.global_batch, self.seed * 100_003 + epoch)
        return order

    def step_indices(self, step: int) -> list[int]:
        """The global batch of 0-based optimizer step `step` (a last partial batch wraps around to the
        start of the same epoch's order, so every step has the same size on every rank)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = self._order(epoch)
        start = k * self.global_batch
        return [order[(start + i) % self.n] for i in range(self.global_batch)]

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """This rank's micro batches of `step`: micro batch j of rank r is slot (j * world + r)."""
        idx = self.step_indices(step)
        mbs, world = self.micro_batch_size, self.world_size
        return [
            idx[(j * world + rank) * mbs : (j * world + rank + 1) * mbs]
            for j in range(self.gradient_accumulation_steps)
        ]

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch


LENGTH_GROUP_BATCHES = 50  # global batches per length-sorted group (transformers' LengthGroupedSampler)


def group_by_length(order: list[int], lengths: Sequence[int], global_batch: int, seed: int) -> list[int]:
    """A shuffled order regrouped by length, as transformers' LengthGroupedSampler does: groups of
    LENGTH_GROUP_BATCHES global batches are sorted longest first, then cut into global batches, and
    the batches are shuffled (the epoch's longest batch stays first: an out-of-memory shows at step
    one). The group depends only on the global batch, so micro batch x accumulation at the same
    product keeps the order; each rank's micro batch is a contiguous run of sorted rows."""
    size = max(1, global_batch * LENGTH_GROUP_BATCHES)
    grouped: list[int] = []
    for start in range(0, len(order), size):
        grouped.extend(sorted(order[start : start + size], key=lambda i: -lengths[i]))
    batches = [grouped[i : i + global_batch] for i in range(0, len(grouped), global_batch)]
    if len(batches) > 1:
        longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
        first = batches.pop(longest)
        random.Random(seed + 1).shuffle(batches)
        batches.insert(0, first)
    return [i for batch in batches for i in batch]


def collate(batch: Sequence[Example], pad_id: int, packed: bool):
    """Right-padded tensors. Unpacked: an attention mask. Packed: position_ids and no mask (see top);
    the padding tail of a row is its own position run, so it attends to nothing real."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    n = len(batch)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    out = {"input_ids": input_ids, "labels": labels}
    if packed:
        positions = torch.zeros((n, width), dtype=torch.long)
        for row, e in enumerate(batch):
            length = len(e.input_ids)
            input_ids[row, :length] = torch.tensor(e.input_ids)
            labels[row, :length] = torch.tensor(e.labels)
            positions[row, :length] = torch.tensor(e.position_ids)
            positions[row, length:] = torch.arange(width - length)
        out["position_ids"] = positions
    else:
        mask = torch.zeros((n, width), dtype=torch.long)
        for row, e in enumerate(batch):
            length = len(e.input_ids)
            input_ids[row, :length] = torch.tensor(e.input_ids)
            labels[row, :length] = torch.tensor(e.labels)
            mask[row, :length] = 1
        out["attention_mask"] = mask
    return out


def count_trained(batch: Sequence[Example]) -> int:
    """Tokens that count in the loss (labels shift by one: the first label of a row is never used)."""
    return sum(sum(1 for x in e.labels[1:] if x != -100) for e in batch)


def eval_shards(n: int, batch_size: int, world_size: int, rank: int) -> list[list[int | None]]:
    """Equal numbers of eval batches on every rank (sharded models run collectives inside forward):
    slots past the end are None and contribute nothing."""
    per_rank = math.ceil(n / world_size) if n else 0
    mine = [i * world_size + rank for i in range(per_rank)]
    slots = [i if i < n else None for i in mine]
    return [slots[i : i + batch_size] for i in range(0, len(slots), batch_size)]
