"""Text form of a data check: a summary table, a small length histogram, and rendered samples that
show which text is trained (inside {+ +}) and which is masked. Plain text, deterministic, no colour,
so it reads the same in a terminal, a CI log and a golden file."""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE_CHARS = 1200  # longer rendered samples are shortened in the middle
BAR = 30


@dataclass
class Sample:
    file: str
    line: int
    pieces: list[tuple[str, bool]]  # (text, trained) in order
    tokens: int
    trained_tokens: int
    method: str  # tokenizer | estimate

    def marked(self) -> str:
        return "".join(f"{{+{text}+}}" if trained else text for text, trained in self.pieces)

    def to_json(self) -> dict:
        return {
            "file": self.file,
            "line": self.line,
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
            "method": self.method,
            "rendered": "".join(t for t, _ in self.pieces),
            "trained_text": [t for t, trained in self.pieces if trained],
        }


def _shorten(text: str) -> str:
    if len(text) <= SAMPLE_CHARS:
        return text
    half = SAMPLE_CHARS // 2
    return f"{text[:half]}\n  [... {len(text) - SAMPLE_CHARS} characters ...]\n{text[-half:]}"


def render_text(summary: dict, samples: list[Sample]) -> str:
    out: list[str] = []
    add = out.append
    add(f"Data ({summary['format']}):")
    rows = [("file", "split", "layout", "records", "usable")]
    for f in summary["files"]:
        split = f["split"] + (f" ({f['fraction']:g} of mix)" if f.get("fraction") is not None else "")
        rows.append((f["file"], split, f["layout"], str(f["records"]), str(f["usable"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        add(
            "  "
            + "  ".join(
                c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    split = f", eval_split {summary['eval_split']}" if summary.get("eval_split") else ""
    add(
        f"  examples: {summary['train_examples']} train, {summary['eval_examples']} eval{split}"
        f" (min_examples {summary['min_examples']})"
    )
    if summary["errors"] or summary["warnings"]:
        add("Findings by kind:")
        for label, counts in (("error", summary["errors"]), ("warning", summary["warnings"])):
            for name, n in counts.items():
                add(f"  {name:<30} {n:>8}  {label}")
    sp = summary["system_prompt"]
    if sp["policy"] == "consistent":
        add(f"System prompt ({sp['policy']}): {sp['with']} with, {sp['without']} without")
    dup = summary["duplicates"]
    if dup["method"] == "off":
        add("Duplicates: not checked (dedup: off)")
    else:
        near = (
            f", near {dup['near']} (Jaccard >= {dup['near_dup_threshold']})"
            if dup["method"] == "near"
            else ""
        )
        add(f"Duplicates: exact {dup['exact']}{near}")
    con = summary["contamination"]
    if con.get("checked"):
        add(
            f"Contamination: {con['count']} of {con['eval_records']} eval examples share a "
            f"{con['ngram']}-gram with train (max_contaminated {con['max_contaminated']})"
        )
    else:
        add("Contamination: not checked (no dataset.eval file)")
    ln = summary["lengths"]
    how = (
        f"tokenizer {ln['tokenizer']}"
        if ln["method"] == "tokenizer"
        else f"ESTIMATE, ~{ln['chars_per_token']} characters per token"
    )
    add(f"Lengths in tokens ({how}):")
    add(f"  min {ln['min']}  p50 {ln['p50']}  p95 {ln['p95']}  max {ln['max']}  mean {ln['mean']}")
    setting = " (p95)" if ln["sequence_len_setting"] == "p95" else ""
    if ln["truncation"] == "drop":
        add(f"  sequence_len {ln['sequence_len']}{setting}: {ln['dropped']} examples dropped")
    else:
        add(
            f"  sequence_len {ln['sequence_len']}{setting}: {ln['truncated']} truncated, "
            f"{ln['assistant_tokens_lost']} assistant tokens lost, {ln['answers_lost']} answers lost entirely"
        )
    hist = ln["histogram"]
    if hist:
        top = max(c for _, _, c in hist) or 1
        label_w = max(len(f"{lo}-{hi}") for lo, hi, _ in hist)
        for lo, hi, count in hist:
            bar = "#" * (round(BAR * count / top) if count else 0)
            add(f"  {f'{lo}-{hi}':>{label_w}} | {bar:<{BAR}} {count}")
    tpl = summary["template"]
    if samples:
        add(
            f"Samples rendered with the {tpl['origin']} template: trained text in {{+ +}}, the rest is masked"
        )
        for s in samples:
            unit = "tokens" if s.method == "tokenizer" else "tokens, estimated"
            add(f"--- {s.file}:{s.line} ({s.tokens} {unit}, {s.trained_tokens} trained)")
            add(_shorten(s.marked()))
    return "\n".join(out) + "\n"
