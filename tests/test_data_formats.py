"""Formats of issue 17: `completion`, `text`, and tool calling in `chatml`, validated at each record's
line by the check and trained as it shows: assistant tool calls and answers train, tool results and
prompts do not."""

from __future__ import annotations

import json
from functools import lru_cache

import pytest
from datacheck_helpers import check, found, write_jsonl, write_spec
from ftspec.compiler.dataset import assistant_spans
from ftspec.compiler.dataset.chat_templates import template_source
from ftspec.compiler.dataset.formats import chat_messages, chat_tools, to_chat

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def tool_record(
    city: str = "Paris", arguments: object = None, name: str = "get_weather", call_id: str = "c1"
):
    args = json.dumps({"city": city}) if arguments is None else arguments
    return {
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": f"Weather in {city}?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": name, "arguments": args}}
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": f"{city}: 18C, sunny"},
            {"role": "assistant", "content": f"It is 18C and sunny in {city}."},
        ],
    }


def test_tool_calling_records_pass_check(tmp_path):
    write_jsonl(tmp_path / "data" / "t.jsonl", [tool_record(c) for c in ("Paris", "Rome", "Oslo")])
    report = check(write_spec(tmp_path, {"train": "data/t.jsonl"}))
    assert [d for d in report.diagnostics if d.severity == "error"] == []
    assert report.summary["usable"]["train"] == 3
    trained = "".join(text for text, on in report.samples[0].pieces if on)
    assert '"name": "get_weather"' in trained and "It is 18C and sunny in Paris." in trained
    assert "18C, sunny" not in trained and "Weather in Paris?" not in trained


@pytest.mark.parametrize(
    ("record", "code", "detail"),
    [
        (tool_record(name="get_time"), "FT0518", "names tool 'get_time', not declared"),
        (tool_record(arguments="{city: Paris"), "FT0518", "not valid JSON"),
        (tool_record(arguments="[1, 2]"), "FT0518", "not an object"),
        (tool_record(call_id="c9"), "FT0519", "answers 'c9'"),
        ({**tool_record(), "tools": "not json"}, "FT0518", "not JSON"),
        ({k: v for k, v in tool_record().items() if k != "tools"}, "FT0518", "the record has no `tools`"),
    ],
)
def test_bad_tool_calling_is_located_at_its_line(tmp_path, record, code, detail):
    write_jsonl(tmp_path / "data" / "t.jsonl", [tool_record(), tool_record(), record])
    report = check(write_spec(tmp_path, {"train": "data/t.jsonl"}))
    assert found(report, code) == [3]
    assert detail in next(d.message for d in report.diagnostics if d.code == code)


def test_empty_turns_stay_errors_except_beside_tool_calls(tmp_path):
    record = tool_record()
    record["messages"][3]["content"] = ""  # the final answer: empty is still an error
    write_jsonl(tmp_path / "data" / "t.jsonl", [tool_record(), record])
    report = check(write_spec(tmp_path, {"train": "data/t.jsonl"}))
    assert found(report, "FT0511") == [2]


def test_tool_result_must_follow_a_call(tmp_path):
    record = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "tool", "tool_call_id": "x", "content": "r"},
            {"role": "assistant", "content": "a"},
        ]
    }
    write_jsonl(tmp_path / "data" / "t.jsonl", [tool_record(), record])
    assert found(check(write_spec(tmp_path, {"train": "data/t.jsonl"})), "FT0519") == [2]


def test_arguments_string_is_parsed_before_rendering():
    chat = to_chat(tool_record(), "chatml")
    call = chat_messages(chat)[1]["tool_calls"][0]
    assert call["function"]["arguments"] == {"city": "Paris"} and call["id"] == "c1"
    assert chat_tools(chat) == [WEATHER]


@pytest.mark.parametrize(
    ("fmt", "records", "bad_line", "code"),
    [
        (
            "completion",
            [{"prompt": "2+2=", "completion": "4"}, {"prompt": "1+1=", "completion": " "}],
            2,
            "FT0511",
        ),
        ("completion", [{"prompt": "2+2=", "completion": "4"}, {"prompt": "x"}], 2, "FT0505"),
        ("text", [{"text": "Some prose to continue."}, {"text": 5}], 2, "FT0512"),
        ("text", [{"text": "Some prose."}, {"messages": []}], 2, "FT0504"),
    ],
)
def test_completion_and_text_records_are_checked(tmp_path, fmt, records, bad_line, code):
    write_jsonl(tmp_path / "data" / "t.jsonl", records)
    report = check(write_spec(tmp_path, {"train": "data/t.jsonl", "format": fmt}))
    assert found(report, code) == [bad_line]
    assert report.summary["usable"]["train"] == 1


def test_completion_trains_the_completion_text_trains_all(tmp_path):
    completion = assistant_spans.trained_plain(
        chat_messages(to_chat({"prompt": "Q: 2+2=", "completion": " 4"}, "completion")), eos="</s>"
    )
    assert completion.text == "Q: 2+2= 4</s>" and completion.trained_strings() == [" 4</s>"]
    text = assistant_spans.trained_plain(chat_messages(to_chat({"text": "Once upon"}, "text")), eos="</s>")
    assert text.trained_strings() == ["Once upon</s>"]
    write_jsonl(tmp_path / "data" / "t.jsonl", [{"prompt": "Q: 2+2=", "completion": " 4"}])
    report = check(write_spec(tmp_path, {"train": "data/t.jsonl", "format": "completion"}))
    assert report.ok
    pieces = report.samples[0].pieces
    assert [t for t, on in pieces if on] == [" 4<|im_end|>"] and [t for t, on in pieces if not on] == [
        "Q: 2+2="
    ]


@lru_cache(maxsize=1)
def _tokenizer():
    from ftspec.runtime.builtin import build_tokenizer

    return build_tokenizer()


def _trained_tokens(conversation, tok) -> str:
    from ftspec.runtime import data as rdata

    example, status = rdata.tokenize(
        conversation, tok, loss_on="assistant", sequence_len=1024, truncation="drop"
    )
    assert status == "ok"
    return tok.decode(
        [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != -100]
    )


def test_training_labels_are_the_tool_calls_and_answers(tmp_path):
    """What trains is exactly what check shows: the call markup and the answer, never the tool result."""
    from ftspec.runtime.data import read_conversations

    tok = _tokenizer()
    tok.chat_template = template_source("chatml")
    [conversation] = read_conversations(write_jsonl(tmp_path / "t.jsonl", [tool_record()]), "chatml")
    assert conversation.tools == [WEATHER]
    trained = _trained_tokens(conversation, tok)
    assert trained == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
        "It is 18C and sunny in Paris.<|im_end|>"
    )
    expected = assistant_spans.trained_text(
        tok.chat_template,
        chat_messages(to_chat(tool_record(), "chatml")),
        special_tokens={"eos_token": tok.eos_token},
        tools=[WEATHER],
    )
    assert "".join(expected.trained_strings()) == trained


QWEN_STYLE = """{%- if tools %}{{- '<|im_start|>system\\n<tools>' }}{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}{{- '\\n</tools><|im_end|>\\n' }}{%- endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls %}{{- '<|im_start|>assistant' }}{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}{%- set tool_call = tool_call.function %}{{- '\\n<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' + (tool_call.arguments | tojson) + '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}
{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""


def test_model_template_without_generation_blocks_trains_the_calls(tmp_path):
    """A model's own template (Qwen2.5-style, no {% generation %}): the located spans hold each call."""
    from ftspec.runtime.data import read_conversations

    tok = _tokenizer()
    tok.chat_template = QWEN_STYLE
    [conversation] = read_conversations(write_jsonl(tmp_path / "t.jsonl", [tool_record("Rome")]), "chatml")
    trained = _trained_tokens(conversation, tok)
    assert trained == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>'
        "It is 18C and sunny in Rome.<|im_end|>"
    )
