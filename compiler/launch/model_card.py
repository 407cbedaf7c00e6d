"""The model card (README.md) of a run's adapter/ and merged/ folders, the Hugging Face way.

Training writes it (base model, spec name and hash, data hashes, how to load); `ftspec evaluate` adds
the gate's result. The facts live in `<run>/.ftspec/model_card.json`, so evaluate re-renders the
cards from them instead of editing Markdown. Pure Python: the runtime and the evaluate verb both use it.
"""

from __future__ import annotations

import json
from pathlib import Path

FACTS_FILE = Path(".ftspec") / "model_card.json"
CARD_FOLDERS = ("adapter", "merged", "export")  # export/: output.export's GGUF and Modelfile


def render_card(facts: dict, folder_name: str) -> str:
    """README.md text for `adapter` or `merged`: YAML front matter the Hub reads, then the facts."""
    base = facts.get("base_model") or ""
    hub_base = base if facts.get("base_is_hub_id") else None
    front = ["---"]
    if hub_base:
        front.append(f"base_model: {hub_base}")
    library = {"adapter": "peft", "export": "gguf"}.get(folder_name, "transformers")
    front.append("library_name: " + library)
    front.append("pipeline_tag: text-generation")
    front.append("tags:\n- ftspec\n- " + {"adapter": "lora", "export": "gguf"}.get(folder_name, "merged"))
    if facts.get("license"):
        front.append(f"license: {facts['license'].lower()}")
    front.append("---")
    lines = [
        *front,
        "",
        f"# {facts.get('spec_name') or 'ftspec run'} ({folder_name})",
        "",
        f"Fine-tuned with ftspec {facts.get('ftspec_version', '')} from the spec "
        f"`{facts.get('spec_file') or '?'}` (SHA-256 `{facts.get('spec_sha256') or '?'}`).",
        "",
        "## Base model",
        "",
        f"- `model.id` in the spec: `{facts.get('model_id', '')}`",
        f"- `base_model_name_or_path`: `{base}`" + ("" if hub_base else " (relative to the run folder)"),
    ]
    lines += [f"- {note}" for note in facts.get("base_notes") or []]
    lines += ["", "## Training", ""]
    lines.append(f"- method: {facts.get('method', '')}; chat template: {facts.get('chat_template', '')}")
    if facts.get("end_of_turn"):
        lines.append(
            f"- generation stops at `{facts['end_of_turn']}` (the template's end of turn; "
            "generation_config.json `eos_token_id`)"
        )
    lines += ["", "| data file | SHA-256 |", "|---|---|"]
    for path, digest in sorted((facts.get("data_sha256") or {}).items()):
        lines.append(f"| `{path}` | `{digest}` |")
    lines += ["", "## Acceptance gate", ""]
    gate = facts.get("gate")
    if not gate:
        lines.append("Not evaluated yet: `ftspec evaluate RUN_DIR` records its result here.")
    else:
        lines.append(f"**{gate.get('summary', gate.get('status', ''))}**")
        rows = gate.get("metrics") or {}
        if rows:
            lines += ["", "| metric | base | fine-tuned |", "|---|---|---|"]
            for name, pair in sorted(rows.items()):
                lines.append(f"| {name} | {_num(pair.get('base'))} | {_num(pair.get('finetuned'))} |")
    lines += ["", "## Loading", "", "```python"]
    if folder_name == "adapter":
        lines += [
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            "# from the run folder" + ("" if hub_base else " (base_model_name_or_path is relative to it)"),
            'model = AutoPeftModelForCausalLM.from_pretrained("adapter")',
            'tokenizer = AutoTokenizer.from_pretrained("adapter")',
        ]
    elif folder_name == "export":
        gguf = next(iter(facts.get("exports") or []), "MODEL.gguf")
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("export", gguf_file="{gguf}")',
            f'tokenizer = AutoTokenizer.from_pretrained("export", gguf_file="{gguf}")',
            "```",
            "",
            f"llama.cpp: `llama-cli -m export/{gguf} -cnv`; Ollama: `ollama create NAME -f export/Modelfile`.",
        ]
        return "\n".join([*lines, ""])
    else:
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained("merged")',
            'tokenizer = AutoTokenizer.from_pretrained("merged")',
        ]
    lines += ["```", ""]
    return "\n".join(lines)


def _num(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def write_cards(run_dir: Path, facts: dict) -> list[str]:
    """Store the facts and (re)write README.md in every card folder the run has; the folders written."""
    path = run_dir / FACTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    written = []
    for name in CARD_FOLDERS:
        folder = run_dir / name
        if folder.is_dir():
            (folder / "README.md").write_text(render_card(facts, name), encoding="utf-8")
            written.append(name)
    return written


def record_gate(run_dir: Path, report: dict) -> list[str]:
    """Add the gate's verdict (report.json's status, summary and the measured metrics) to the cards of
    a run trained with a card; runs from before cards existed are left as they are."""
    path = run_dir / FACTS_FILE
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    metrics = report.get("metrics") or {}
    base, tuned = metrics.get("base") or {}, metrics.get("finetuned") or {}
    facts["gate"] = {
        "status": report.get("status"),
        "summary": report.get("summary"),
        "metrics": {
            name: {"base": base.get(name), "finetuned": tuned.get(name)}
            for name in sorted(set(base) | set(tuned))
            if base.get(name) is not None or tuned.get(name) is not None
        },
    }
    return write_cards(run_dir, facts)
