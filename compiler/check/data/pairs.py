"""The data check's view of preference pairs (`dataset.format: preference`).

The record checks themselves (structure, roles in their place, empty sides, chosen identical to
rejected) live with the format (compiler/dataset/formats.check_pair), so training refuses what check
reports. This module measures each pair against `sequence_len` the way training cuts it: each side is
the prompt plus that side's answer, rendered with the chat template and cut at the end (or dropped
under `dataset.truncation: drop`), so it says how much of the chosen and of the rejected answer is
lost, and flags a prompt that leaves no room for either answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ftspec.compiler.check.data.lengths import token_segments
from ftspec.compiler.dataset.formats import PAIR_SIDES, Pair


@dataclass
class SideLength:
    total: int  # tokens of prompt + answer
    answer_start: int  # token where this side's answer begins (the prompt's length)

    @property
    def answer(self) -> int:
        return self.total - self.answer_start


@dataclass
class PairStats:
    pairs: int = 0
    over: int = 0  # pairs with a side longer than sequence_len
    chosen_cut: int = 0  # answer tokens cut, summed over pairs
    rejected_cut: int = 0
    no_room: int = 0  # prompt alone at or beyond sequence_len
    examples: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "pairs": self.pairs,
            "longer_than_sequence_len": self.over,
            "chosen_tokens_cut": self.chosen_cut,
            "rejected_tokens_cut": self.rejected_cut,
            "prompt_fills_sequence_len": self.no_room,
        }


class PairLengths:
    """Measures each usable training pair; `check` is the data check (_Check) it reports through."""

    def __init__(self, check) -> None:
        self.check = check
        self.stats = PairStats()

    def _side(self, where: tuple[int, int], pair: Pair, side: str, report: bool) -> SideLength | None:
        check = self.check
        messages = pair.side(side)
        if check.tokenizer is not None and check.template_ok:
            trained = check._trained(where, messages, report=report)
            if trained is None or not trained.spans:
                return None
            encoding = check.tokenizer.encode(trained.text, add_special_tokens=False)
            segments = token_segments(encoding, trained.spans)
            total = len(encoding.ids)
        else:
            total, segments = check.estimator.measure(messages)
        if not segments:
            return None
        return SideLength(total, segments[-1][0])  # the side's answer is its last assistant turn

    def add(self, where: tuple[int, int], pair: Pair) -> None:
        """One training pair; a finding at its line when a side does not fit sequence_len."""
        check = self.check
        limit = check.lengths.limit
        self.stats.pairs += 1
        if limit is None:  # sequence_len: p95 is only known after the pass; its summary covers it
            return
        # the chosen side's template findings were reported with the record; the rejected side's are not
        sides = {side: self._side(where, pair, side, report=side == "rejected") for side in PAIR_SIDES}
        chosen, rejected = sides["chosen"], sides["rejected"]  # PAIR_SIDES
        if chosen is None or rejected is None:
            return
        if max(chosen.total, rejected.total) <= limit:
            return
        self.stats.over += 1
        severity = None
        if check.dataset.get("truncation", "truncate") == "drop":
            outcome = "the pair is dropped (dataset.truncation: drop)"
        else:
            cut_c = min(chosen.answer, max(0, chosen.total - limit))
            cut_r = min(rejected.answer, max(0, rejected.total - limit))
            self.stats.chosen_cut += cut_c
            self.stats.rejected_cut += cut_r
            if chosen.answer_start >= limit:
                self.stats.no_room += 1
                severity = "error"
                outcome = "the prompt alone fills it, so nothing of either answer is compared"
            else:
                outcome = (
                    f"cutting at the end loses {cut_c} of chosen's {chosen.answer} answer tokens and "
                    f"{cut_r} of rejected's {rejected.answer}"
                )
        check._record(
            "FT0573",
            where[0],
            where[1],
            {
                "prompt": chosen.answer_start,
                "chosen": chosen.answer,
                "rejected": rejected.answer,
                "limit": limit,
                "outcome": outcome,
            },
            severity=severity,
        )
