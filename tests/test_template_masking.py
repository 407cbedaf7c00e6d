"""Assistant-only loss with real chat templates (no {% generation %} blocks): for every official template
in ../shared/chat-templates/, a tokenizer built here carrying that template's special tokens masks
exactly the assistant answers and the special token that ends each turn; the check shows the same
trained text that training labels."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest
from datacheck_helpers import check, write_jsonl, write_spec
from ftspec.compiler.dataset import assistant_spans as spans_of
from ftspec.compiler.dataset import chat_templates as ct

TEMPLATES = Path(__file__).resolve().parents[2] / "shared" / "chat-templates"
pytestmark = pytest.mark.skipif(
    not TEMPLATES.is_dir(), reason=f"{TEMPLATES} (the real chat templates, ../shared) is absent"
)

CHATML = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
LLAMA3 = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"]
DEEPSEEK = [
    "<｜User｜>",
    "<｜Assistant｜>",
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>",
]
DEEPSEEK += ["<｜tool▁call▁end｜>", "<｜tool▁sep｜>", "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>"]
DEEPSEEK += ["<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"]
MISTRAL = ["[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS]"]
MISTRAL += ["[/TOOL_RESULTS]"]

# name: (bos, eos, other special tokens, system role allowed, end-of-turn marker of earlier / last turns)
# The tokens are those of each model's tokenizer_config.json that the template writes.
MODELS: dict[str, tuple[str | None, str, list[str], bool, tuple[str, str]]] = {
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use": (
        "<BOS_TOKEN>",
        "<|END_OF_TURN_TOKEN|>",
        [
            "<|START_OF_TURN_TOKEN|>",
            "<|SYSTEM_TOKEN|>",
            "<|USER_TOKEN|>",
            "<|CHATBOT_TOKEN|>",
            "<|START_RESPONSE|>",
            "<|END_RESPONSE|>",
            "<|START_THINKING|>",
            "<|END_THINKING|>",
            "<|START_ACTION|>",
            "<|END_ACTION|>",
            "<|START_TOOL_RESULT|>",
            "<|END_TOOL_RESULT|>",
        ],
        True,
        ("<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",) * 2,
    ),
    "HuggingFaceTB-SmolLM3-3B": (None, "<|im_end|>", CHATML, True, ("<|im_end|>",) * 2),
    "Mistral-Small-3.2-24B-Instruct-2506": (
        "<s>",
        "</s>",
        [*MISTRAL, "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]", "[ARGS]", "[CALL_ID]", "[TOOL_CONTENT]"],
        True,
        ("</s>",) * 2,
    ),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": (
        "<|begin_of_text|>",
        "<|im_end|>",
        CHATML,
        True,
        ("<|im_end|>",) * 2,
    ),
    "Qwen-QwQ-32B": (None, "<|im_end|>", CHATML, True, ("<|im_end|>",) * 2),
    "Qwen-Qwen2.5-7B-Instruct": (None, "<|im_end|>", CHATML, True, ("<|im_end|>",) * 2),
    "Qwen-Qwen3-0.6B": (None, "<|im_end|>", CHATML, True, ("<|im_end|>",) * 2),
    "Qwen3-Coder": (None, "<|im_end|>", CHATML, True, ("<|im_end|>",) * 2),
    "Qwen3.5-4B": (
        None,
        "<|im_end|>",
        [*CHATML, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
        True,
        ("<|im_end|>",) * 2,
    ),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": (
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
        DEEPSEEK,
        True,
        ("<｜end▁of▁sentence｜>",) * 2,
    ),
    "deepseek-ai-DeepSeek-V3.1": (
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
        DEEPSEEK,
        True,
        ("<｜end▁of▁sentence｜>",) * 2,
    ),
    "google-gemma-2-2b-it": (
        "<bos>",
        "<eos>",
        ["<start_of_turn>", "<end_of_turn>"],
        False,
        ("<end_of_turn>",) * 2,
    ),
    "google-gemma-4-31B-it": (
        "<bos>",
        "<eos>",
        ["<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|think|>", "<|tool>", "<tool|>", '<|"|>']
        + ["<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", "<|image|>", "<|audio|>"],
        True,
        ("<turn|>",) * 2,
    ),
    "ibm-granite-granite-3.3-2B-Instruct": (
        "<|end_of_text|>",
        "<|end_of_text|>",
        ["<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>", "<|start_of_cite|>", "<|end_of_cite|>"],
        True,
        ("<|end_of_text|>",) * 2,
    ),
    "meta-llama-Llama-3.1-8B-Instruct": (
        "<|begin_of_text|>",
        "<|eot_id|>",
        LLAMA3,
        True,
        ("<|eot_id|>",) * 2,
    ),
    "meta-llama-Llama-3.2-3B-Instruct": (
        "<|begin_of_text|>",
        "<|eot_id|>",
        LLAMA3,
        True,
        ("<|eot_id|>",) * 2,
    ),
    "meta-llama-Llama-3.3-70B-Instruct": (
        "<|begin_of_text|>",
        "<|eot_id|>",
        LLAMA3,
        True,
        ("<|eot_id|>",) * 2,
    ),
    "microsoft-Phi-3.5-mini-instruct": (
        "<s>",
        "<|endoftext|>",
        ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        True,
        ("<|end|>",) * 2,
    ),
    "mistralai-Mistral-Nemo-Instruct-2407": ("<s>", "</s>", MISTRAL, True, ("</s>",) * 2),
    "openai-gpt-oss-120b": (
        "<|startoftext|>",
        "<|return|>",
        ["<|start|>", "<|message|>", "<|channel|>", "<|end|>", "<|call|>", "<|constrain|>"],
        True,
        ("<|end|>", "<|return|>"),
    ),
}
NEEDS_TOOLS = {"NousResearch-Hermes-3-Llama-3.1-8B-tool_use"}  # its template iterates `tools` unguarded
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look up an item's colour.",
            "parameters": {
                "type": "object",
                "properties": {"item": {"type": "integer"}},
                "required": ["item"],
            },
        },
    }
]
SYSTEM = "Answer in one short sentence."
USERS = ["Which colour goes with item 3?", "And item 4?"]


def conversation(answers: list[str], system: bool) -> list[dict]:
    out = [{"role": "system", "content": SYSTEM}] if system else []
    for user, answer in zip(USERS, answers, strict=True):
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return out


def test_every_shared_template_is_covered():
    names = {p.stem for p in TEMPLATES.glob("*.jinja")}
    assert names == set(MODELS), f"templates without a test entry: {names ^ set(MODELS)}"
    for name, (_, _, specials, _, _) in MODELS.items():
        source = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
        assert not ct.has_generation_blocks(source)
        used = [t for t in specials if t in source]
        assert used, f"{name}: none of its special tokens appear in the template"


@cache
def tokenizers_for(name: str):
    """(tokenizers.Tokenizer, transformers PreTrainedTokenizerFast) carrying the template of `name` and
    its special tokens as special tokens; a byte-level BPE trained on a few words in milliseconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bos, eos, specials, _, _ = MODELS[name]
    special = list(dict.fromkeys([t for t in (bos, eos) if t] + specials))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = " ".join(USERS + [SYSTEM, "Item 3 is sold in red.", "Blue.", "user assistant system model"])
    tok.train_from_iterator([corpus] * 20, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)
    hf.chat_template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    return tok, hf


def special_map(name: str) -> dict[str, str]:
    bos, eos, *_ = MODELS[name]
    return {"eos_token": eos, **({"bos_token": bos} if bos else {})}


def trained_pieces(text: str, mask: ct.TokenMask) -> tuple[list[str], str]:
    """(the trained runs of text, by token offsets, and all untrained text joined)."""
    runs: list[str] = []
    untrained: list[str] = []
    previous = False
    for (start, end), on in zip(mask.offsets, mask.trained, strict=True):
        piece = text[start:end]
        if on and previous:
            runs[-1] += piece
        elif on:
            runs.append(piece)
        else:
            untrained.append(piece)
        previous = on
    return runs, "".join(untrained)


def assert_answer_then_marker(run: str, answer: str, marker: str, special: set[str]) -> None:
    body = run.strip()
    assert body.startswith(answer), (run, answer)
    rest = body[len(answer) :].strip()
    assert rest == marker, (run, marker)
    # the marker right after the answer is one special token (or a run of them)
    assert re.fullmatch("(" + "|".join(re.escape(t) for t in special) + ")+", rest), rest


@pytest.mark.parametrize("name", sorted(MODELS))
def test_mask_covers_exactly_the_answers_and_their_end_of_turn_token(name):
    tok, hf = tokenizers_for(name)
    bos, eos, specials, system_ok, markers = MODELS[name]
    source = hf.chat_template
    tools = TOOLS if name in NEEDS_TOOLS else None
    answers = ["Item 3 is sold in red.", " Blue. "]
    messages = conversation(answers, system=system_ok)
    trained = spans_of.trained_text(
        source,
        messages,
        special_tokens=special_map(name),
        markers=spans_of.marker_tokens(tok),
        tools=tools,
    )
    assert trained.problems == [] and trained.method == "located"
    # the renderer writes what transformers writes
    expected_text = hf.apply_chat_template(messages, tokenize=False, tools=tools)
    assert trained.text == expected_text + (eos if trained.eos_appended else "")
    mask = ct.token_mask(tok, trained.text, trained.spans)
    runs, untrained = trained_pieces(trained.text, mask)
    assert len(runs) == len(answers), runs
    special = {t for t in [bos, eos, *specials] if t}
    for run, answer, marker in zip(runs, answers, markers, strict=True):
        assert_answer_then_marker(run, answer.strip(), marker, special)
    for user in USERS:
        assert user in untrained and all(user not in r for r in runs)
    assert all(SYSTEM not in r for r in runs)
    if system_ok and name != "mistralai-Mistral-Nemo-Instruct-2407":
        # (Mistral Nemo writes the system prompt only before a final user turn: not in training data)
        assert SYSTEM in untrained
    assert sum(mask.trained) < len(mask) / 2


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_letter_answers_are_not_taken_from_role_headers(name):
    """Short answers ("a", "t") also occur inside "assistant": the probe places them exactly."""
    tok, hf = tokenizers_for(name)
    system_ok = MODELS[name][3]
    markers = MODELS[name][4]
    tools = TOOLS if name in NEEDS_TOOLS else None
    messages = conversation(["a", "t"], system=system_ok)
    trained = spans_of.trained_text(
        hf.chat_template,
        messages,
        special_tokens=special_map(name),
        markers=spans_of.marker_tokens(tok),
        tools=tools,
    )
    assert trained.problems == []
    assert [s.strip() for s in trained.trained_strings()] == [f"a{markers[0]}", f"t{markers[1]}"]
    assert all(trained.text[a:b].strip().startswith(("a", "t")) for a, b in trained.spans)
    # each span starts right where the template put the answer: no header text before it
    for (start, _), answer in zip(trained.spans, ["a", "t"], strict=True):
        assert trained.text[start] == answer


def test_system_role_rejected_by_gemma2_is_a_template_error():
    _, hf = tokenizers_for("google-gemma-2-2b-it")
    with pytest.raises(ct.TemplateError, match="System role not supported"):
        spans_of.trained_text(hf.chat_template, conversation(["x", "y"], system=True), special_tokens={})


REASONING = [
    "<think>\nItem 3 is in the red catalogue.\n</think>\n\nItem 3 is sold in red.",
    "<think>Look up item 4.</think> Blue.",
]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # Qwen3 drops the reasoning of earlier turns and keeps the last one's, re-formatted
        (
            "Qwen-Qwen3-0.6B",
            ["Item 3 is sold in red.<|im_end|>", "<think>\nLook up item 4.\n</think>\n\n Blue.<|im_end|>"],
        ),
        # DeepSeek R1 drops the reasoning of every turn from the rendering
        (
            "deepseek-ai-DeepSeek-R1-Distill-Llama-8B",
            ["Item 3 is sold in red.<｜end▁of▁sentence｜>", "Blue.<｜end▁of▁sentence｜>"],
        ),
        # a template that renders content as it is trains the reasoning with its answer
        (
            "Qwen-Qwen2.5-7B-Instruct",
            [REASONING[0] + "<|im_end|>", REASONING[1] + "<|im_end|>"],
        ),
    ],
)
def test_reasoning_kept_or_dropped_by_the_template(name, expected):
    tok, hf = tokenizers_for(name)
    trained = spans_of.trained_text(
        hf.chat_template,
        conversation(REASONING, system=True),
        special_tokens=special_map(name),
        markers=spans_of.marker_tokens(tok),
    )
    assert trained.problems == []
    assert trained.trained_strings() == expected


def test_search_fallback_when_the_probe_rendering_differs():
    """A template that inspects the answer's first character defeats the probe; answers are then
    searched in order and accepted only where a special token follows."""
    source = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['content'][0] == '\ue000' %}!{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    messages = conversation(["assistant", "a"], system=False)
    trained = spans_of.trained_text(
        source, messages, special_tokens={"eos_token": "<|im_end|>"}, markers=CHATML
    )
    assert trained.problems == []
    assert trained.trained_strings() == ["assistant<|im_end|>", "a<|im_end|>"]


def test_end_of_turn_list_knows_every_real_templates_marker():
    """data/end_of_turn.json (the one list check, training and evaluation share) holds the end-of-turn
    token of every shared template."""
    tokens = spans_of.end_of_turn_tokens()
    for name, (_, _, _, _, markers) in MODELS.items():
        for marker in markers:
            assert any(marker.startswith(t) for t in tokens), (name, marker)


# --- check and training agree -------------------------------------------------------------------


def model_folder(folder: Path, name: str) -> Path:
    """A local model folder as save_pretrained writes it: tokenizer.json, tokenizer_config.json and the
    model's template in chat_template.jinja."""
    _, hf = tokenizers_for(name)
    hf.save_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}), encoding="utf-8")
    assert ct.model_template(folder) is not None
    return folder


@pytest.mark.parametrize(
    "name",
    ["meta-llama-Llama-3.1-8B-Instruct", "openai-gpt-oss-120b", "mistralai-Mistral-Nemo-Instruct-2407"],
)
def test_training_labels_are_what_check_shows(tmp_path, name):
    from ftspec.runtime import data as rdata
    from transformers import AutoTokenizer

    model_folder(tmp_path / "model", name)
    records = [
        {"messages": conversation(["Item 3 is sold in red.", f"Blue {i}."], system=True)} for i in range(3)
    ]
    write_jsonl(tmp_path / "t.jsonl", records)
    report = check(
        write_spec(
            tmp_path,
            {"train": "t.jsonl", "system_prompt": "any"},
            model={"id": "model", "chat_template": "model"},
            training={"sequence_len": 512},
        )
    )
    assert report.ok, [d.message for d in report.diagnostics if d.severity == "error"]
    assert report.summary["lengths"]["method"] == "tokenizer"
    samples = report.summary["samples"]
    assert [s["line"] for s in samples] == [1, 2, 3]
    markers = MODELS[name][4]
    for sample, i in zip(samples, range(3), strict=True):
        answers = ["Item 3 is sold in red.", f"Blue {i}."]
        for run, answer, marker in zip(sample["trained_text"], answers, markers, strict=True):
            assert run.strip() == answer + marker
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "model"))
    for sample, conv in zip(samples, rdata.read_conversations(tmp_path / "t.jsonl", "chatml"), strict=True):
        example, status = rdata.tokenize(
            conv, tokenizer, loss_on="assistant", sequence_len=512, truncation="drop"
        )
        assert status == "ok"
        text = sample["rendered"]
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        assert enc["input_ids"] == example.input_ids
        mask = ct.TokenMask(example.input_ids, enc["offset_mapping"], [x != -100 for x in example.labels])
        runs, _ = trained_pieces(text, mask)
        assert runs == sample["trained_text"]
        assert example.trained == sample["trained_tokens"]


def test_check_reports_a_record_that_cannot_be_masked(tmp_path):
    """An answer the template rewrites cannot be located: the record is an error at its line."""
    name = "meta-llama-Llama-3.2-3B-Instruct"
    folder = model_folder(tmp_path / "model", name)
    template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    rewrite = template.replace("message['content'] | trim", "message['content'] | trim | upper")
    assert rewrite != template
    (folder / "chat_template.jinja").write_text(rewrite, encoding="utf-8")
    write_jsonl(
        tmp_path / "t.jsonl",
        [
            {"messages": conversation(["OK.", "FINE."], system=False)},
            {"messages": conversation(["ok.", "Fine."], system=False)},
        ],
    )
    report = check(
        write_spec(tmp_path, {"train": "t.jsonl"}, model={"id": "model", "chat_template": "model"})
    )
    located = [d for d in report.diagnostics if d.code == "FT0556"]
    assert [d.line for d in located] == [2, 2] and not report.ok
    assert located[0].file.endswith("t.jsonl") and "rewrites the answer" in located[0].message


def test_chat_template_file_in_the_spec(tmp_path):
    (tmp_path / ".git").mkdir()  # the repository root
    name = "google-gemma-4-31B-it"
    model_folder(tmp_path / "model", name)
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "gemma.jinja").write_bytes((TEMPLATES / f"{name}.jinja").read_bytes())
    write_jsonl(tmp_path / "data" / "t.jsonl", [{"messages": conversation(["Red.", "Blue."], system=False)}])
    (tmp_path / "specs").mkdir()
    spec = write_spec(
        tmp_path / "specs",
        {"train": "../data/t.jsonl"},
        model={"id": "../model", "chat_template": "../templates/gemma.jinja"},
    )
    report = check(spec)
    assert report.ok, [d.message for d in report.diagnostics]
    assert report.summary["template"]["origin"].endswith("gemma.jinja")
    assert [r.strip() for r in report.summary["samples"][0]["trained_text"]] == [
        "Red.<turn|>",
        "Blue.<turn|>",
    ]
    assert ct.template_source("../templates/gemma.jinja", tmp_path / "specs").startswith("{%")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.jinja"
    outside.write_text("{{ messages }}", encoding="utf-8")
    try:
        with pytest.raises(ct.TemplateError, match="outside the repository"):
            ct.file_template(f"../../{outside.name}", tmp_path / "specs")
    finally:
        outside.unlink()
    (tmp_path / "templates" / "link.jinja").symlink_to("/etc/hostname")
    with pytest.raises(ct.TemplateError, match="outside the repository"):
        ct.file_template("../templates/link.jinja", tmp_path / "specs")
    with pytest.raises(ct.TemplateError, match="relative"):
        ct.file_template("/etc/x.jinja", tmp_path / "specs")
    spec = write_spec(
        tmp_path / "specs",
        {"train": "../data/t.jsonl"},
        model={"id": "../model", "chat_template": "../none.jinja"},
    )
    report = check(spec)
    assert [d.pointer for d in report.diagnostics if d.code == "FT0550"] == ["/model/chat_template"]


def test_generation_blocks_keep_their_spans():
    info = ct.builtin_template("chatml")
    messages = conversation(["Item 3 is sold in red.", " Blue. "], system=True)
    trained = spans_of.trained_text(info.source, messages, special_tokens=info.special_tokens, markers=CHATML)
    assert trained.method == "generation"
    assert trained.spans == ct.render(info.source, messages, special_tokens=info.special_tokens).spans


def test_jinja_file_reaches_training_and_matches_the_check(tmp_path):
    """chat_template: a .jinja file (Qwen2.5's own, no generation blocks) with the built-in model's
    tokenizer: training loads the file and labels the answers plus <|im_end|>, as check shows them."""
    from ftspec.runtime import data as rdata
    from ftspec.runtime.builtin import build_tokenizer
    from ftspec.runtime.model import ModelSource, load_tokenizer

    (tmp_path / ".git").mkdir()
    build_tokenizer().save_pretrained(str(tmp_path / "tok"))
    (tmp_path / "qwen.jinja").write_bytes((TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_bytes())
    answers = [["Item 3 is sold in red.", f"Blue {i}."] for i in range(3)]
    write_jsonl(tmp_path / "t.jsonl", [{"messages": conversation(a, system=True)} for a in answers])
    model = {"id": "builtin:tiny-llama", "chat_template": "qwen.jinja"}
    spec_path = write_spec(tmp_path, {"train": "t.jsonl"}, model=model, training={"sequence_len": 256})
    report = check(spec_path)
    assert report.ok, [d.message for d in report.diagnostics if d.severity == "error"]
    shown = [s["trained_text"] for s in report.summary["samples"]]
    assert shown == [[f"{a}<|im_end|>" for a in pair] for pair in answers]
    tokenizer = load_tokenizer(ModelSource(str(tmp_path / "tok"), None, True), model, tmp_path)
    assert tokenizer.chat_template == (tmp_path / "qwen.jinja").read_text(encoding="utf-8")
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    prepared = rdata.prepare(spec, tmp_path, tokenizer)
    assert prepared.stats["train_examples"] == 3
    labelled = []
    for example in prepared.train:  # (in the training mix's shuffled order)
        runs, current = [], []
        for tid, label in zip(example.input_ids, example.labels, strict=True):
            if label != -100:
                current.append(tid)
            elif current:
                runs, current = [*runs, current], []
        runs += [current] if current else []
        labelled.append([tokenizer.decode(r) for r in runs])
    assert sorted(labelled) == sorted(shown)
