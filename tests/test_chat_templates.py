"""Built-in chat templates, the sandboxed renderer and its trained spans, token masks, model templates."""

from __future__ import annotations

import json

import pytest
from datacheck_helpers import build_tokenizer, write_model_dir
from ftspec.compiler.dataset import chat_templates as ct

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Which colour goes with item 3?"},
    {"role": "assistant", "content": "Item 3 is sold in red."},
    {"role": "user", "content": "And item 4?"},
    {"role": "assistant", "content": " Blue. "},
]


def test_template_source_names_and_unknown():
    for name in ("chatml", "llama3", "alpaca"):
        source = ct.template_source(name)
        assert ct.has_generation_blocks(source)
        assert "endgeneration" in source
    with pytest.raises(KeyError, match="chatml"):
        ct.template_source("vicuna")


@pytest.mark.parametrize(
    ("name", "trained"),
    [
        ("chatml", ["Item 3 is sold in red.<|im_end|>", " Blue. <|im_end|>"]),
        ("llama3", ["Item 3 is sold in red.<|eot_id|>", "Blue.<|eot_id|>"]),
        ("alpaca", ["Item 3 is sold in red.</s>", " Blue. </s>"]),
    ],
)
def test_generation_spans_cover_answer_and_terminator(name, trained):
    info = ct.builtin_template(name)
    rendered = ct.render(info.source, CONVERSATION, special_tokens=info.special_tokens)
    assert [rendered.text[a:b] for a, b in rendered.spans] == trained
    assert rendered.text.count(info.terminator_text()) >= 2


def test_chatml_text_exactly():
    rendered = ct.render(ct.template_source("chatml"), CONVERSATION[:3], add_generation_prompt=False)
    assert rendered.text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhich colour goes with item 3?<|im_end|>\n"
        "<|im_start|>assistant\nItem 3 is sold in red.<|im_end|>\n"
    )
    prompt = ct.render(ct.template_source("chatml"), CONVERSATION[:2], add_generation_prompt=True)
    assert prompt.text.endswith("<|im_start|>assistant\n") and prompt.spans == []


def test_alpaca_default_preamble_and_bad_role():
    text = ct.render(
        ct.template_source("alpaca"), CONVERSATION[1:3], special_tokens={"eos_token": "</s>"}
    ).text
    assert text.startswith("Below is an instruction that describes a task.")
    assert (
        "### Instruction:\nWhich colour goes with item 3?\n\n### Response:\nItem 3 is sold in red.</s>"
        in text
    )
    with pytest.raises(ct.TemplateError, match="system message can only come first|only come first"):
        ct.render(ct.template_source("alpaca"), [CONVERSATION[1], CONVERSATION[0], CONVERSATION[2]])


@pytest.mark.parametrize("name", ["chatml", "llama3", "alpaca"])
def test_matches_transformers_apply_chat_template(name):
    """Same text, same token ids and the same assistant mask as transformers' return_assistant_tokens_mask."""
    transformers = pytest.importorskip("transformers")
    tok = build_tokenizer()
    info = ct.builtin_template(name)
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=info.special_tokens["bos_token"] or None,
        eos_token=info.special_tokens["eos_token"],
    )
    hf.chat_template = ct.template_source(name)
    special = {k: v for k, v in hf.special_tokens_map.items() if isinstance(v, str)}
    out = hf.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    rendered = ct.render(info.source, CONVERSATION, special_tokens=special)
    assert rendered.text == hf.apply_chat_template(CONVERSATION, tokenize=False)
    mask = ct.token_mask(tok, rendered.text, rendered.spans)
    assert mask.ids == list(out["input_ids"])
    assert [int(t) for t in mask.trained] == list(out["assistant_masks"])
    assert sum(mask.trained) > 0
    with_prompt = hf.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert (
        ct.render(info.source, CONVERSATION[:2], add_generation_prompt=True, special_tokens=special).text
        == with_prompt
    )


def test_token_mask_marks_terminator_token():
    tok = build_tokenizer()
    rendered = ct.render(ct.template_source("chatml"), CONVERSATION[1:3])
    mask = ct.token_mask(tok, rendered.text, rendered.spans)
    im_end = tok.token_to_id("<|im_end|>")
    positions = [i for i, t in enumerate(mask.ids) if t == im_end]
    assert len(positions) == 2  # user turn and assistant turn
    assert mask.trained[positions[0]] is False and mask.trained[positions[1]] is True
    trained_text = tok.decode(
        [t for t, on in zip(mask.ids, mask.trained, strict=True) if on], skip_special_tokens=False
    )
    assert trained_text == "Item 3 is sold in red.<|im_end|>"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__ }}{{ cycler.__init__.__globals__ }}",
        "{% set x = messages.append(1) %}{{ x }}",
        "{% set ns = namespace(_secret=1) %}{{ ns }}",
    ],
)
def test_sandbox_refuses_unsafe_templates(source):
    with pytest.raises(ct.TemplateError):
        ct.render(source, CONVERSATION)


def test_syntax_error_has_template_line():
    with pytest.raises(ct.TemplateError) as info:
        ct.compile_template("{% for m in messages %}\n{{ m['content'] }\n{% endfor %}")
    assert info.value.line == 2
    with pytest.raises(ct.TemplateError, match="boom"):
        ct.render("{{ raise_exception('boom') }}", CONVERSATION)


def test_model_template_from_config_and_jinja_file(tmp_path):
    inline = write_model_dir(tmp_path / "inline", ct.template_source("chatml"))
    info = ct.model_template(inline)
    assert info is not None and info.source == ct.template_source("chatml")
    assert info.special_tokens["eos_token"] == "<|im_end|>" and info.terminator_text() == "<|im_end|>"
    as_file = write_model_dir(tmp_path / "file", "{{ messages[0]['content'] }}", template_file=True)
    assert ct.model_template(as_file).source == "{{ messages[0]['content'] }}"
    named = write_model_dir(tmp_path / "named", None)
    cfg = json.loads((named / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "y"}]
    cfg["eos_token"] = {"content": "</s>", "special": True}
    (named / "tokenizer_config.json").write_text(json.dumps(cfg))
    info = ct.model_template(named)
    assert info.source == "y" and info.special_tokens["eos_token"] == "</s>"
    assert ct.model_template(write_model_dir(tmp_path / "none", None)) is None
    assert ct.load_tokenizer(inline) is not None
    assert ct.load_tokenizer(tmp_path) is None


def test_local_model_dir(tmp_path):
    (tmp_path / "m").mkdir()
    assert ct.local_model_dir("m", tmp_path) == tmp_path / "m"
    assert ct.local_model_dir(str(tmp_path / "m"), tmp_path / "elsewhere") == tmp_path / "m"
    assert ct.local_model_dir("meta-llama/Llama-3.1-8B", tmp_path) is None
    assert ct.local_model_dir("builtin:tiny-llama", tmp_path) is None
