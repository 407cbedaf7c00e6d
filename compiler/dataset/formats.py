"""Dataset record formats: detect a record's format, check its structure, turn it into chat messages.

One record at a time and allocation-light, because `check` runs this on every line of files with
millions of records. Problems come back as (code, fields) pairs; datacheck.py turns them into
diagnostics with the file and line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ftspec.compiler.core.loader import json_kind

FORMATS = ("chatml", "sharegpt", "alpaca", "preference", "completion", "text")
PLAIN_FORMATS = ("completion", "text")  # no chat template: the record's own text is what trains
TOOL_ROLE = "tool"  # chatml only: a tool's result, answering an assistant tool call

CHATML_ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}

Problem = tuple[str, dict]
Messages = list[tuple[str, str]]  # (role in chatml terms: system/user/assistant/tool, content)


class Chat(list):
    """A checked record's (role, content) pairs, and what tool calling adds to them: the record's
    `tools` (JSON schemas, as transformers' apply_chat_template(tools=...) takes them) and, by turn
    position, an assistant turn's `tool_calls` (arguments parsed to objects) or a tool result's
    `tool_call_id` and `name`. `plain` names a format without a chat template (completion, text)."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = (), *, tools=None, extras=None, plain=None):
        super().__init__(pairs)
        self.tools: list[dict] | None = tools
        self.extras: dict[int, dict] = extras or {}
        self.plain: str | None = plain


def text_view(messages: Messages) -> Messages:
    """`messages` with each tool call's JSON after its turn's content: what counts for duplicates and
    length estimates, so two records that differ only in a call's arguments are not duplicates."""
    extras = getattr(messages, "extras", None)
    if not extras:
        return messages
    out = list(messages)
    for pos, extra in extras.items():
        calls = extra.get("tool_calls")
        if calls:
            role, content = out[pos]
            out[pos] = (role, content + "\n" + json.dumps(calls, ensure_ascii=False, sort_keys=True))
    return out


def chat_messages(messages: Messages) -> list[dict]:
    """The messages as a chat template takes them: {"role", "content"} plus any tool-calling keys."""
    extras = getattr(messages, "extras", None) or {}
    return [
        {"role": role, "content": content, **extras.get(pos, {})}
        for pos, (role, content) in enumerate(messages)
    ]


def chat_tools(messages: Messages) -> list[dict] | None:
    """The record's tool schemas for the template's `tools` (None, as transformers passes, without)."""
    return getattr(messages, "tools", None)


def detect_format(record: dict) -> str | None:
    """The format a record looks like, by its keys (None: no known format)."""
    if "messages" in record:
        return "chatml"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and ("output" in record or "input" in record):
        return "alpaca"
    if "chosen" in record and "rejected" in record:
        return "preference (chosen/rejected)"
    if "prompt" in record and ("completion" in record or "response" in record):
        return "prompt/completion"
    if "text" in record:
        return "plain text"
    return None


_KEY_OF = {
    "chatml": "messages",
    "sharegpt": "conversations",
    "alpaca": "instruction",
    "completion": "completion",
    "text": "text",
}
_DETECTED = {"prompt/completion": "completion", "plain text": "text"}  # detect_format's names -> formats


class LeakScanner:
    """Finds template markup and role labels inside message content.

    Markup (`<|im_start|>`, `### Response:`) in content changes where the model thinks turns begin and
    end; a role label at the start of a turn ("Assistant: ...") is usually a transcript pasted into
    the wrong field.
    """

    def __init__(self, markers: Iterable[str]):
        ordered = sorted({m for m in markers if m}, key=len, reverse=True)
        self.markers = tuple(ordered)  # data_fast scans a block of records for the same markup
        self._markup = re.compile("|".join(re.escape(m) for m in ordered)) if ordered else None
        self._markup_firsts = tuple({m[0] for m in ordered})  # cheap `in` tests before the regex
        self._label_start = re.compile(r"\s*(assistant|user|human|gpt|system|ai|bot)\s*:", re.IGNORECASE)
        self._next_turn = re.compile(r"\n\s*(user|human)\s*:", re.IGNORECASE)

    def scan_messages(self, messages: Messages, offset: int, out: list[Problem]) -> None:
        """Scan every turn; `offset` maps positions in `messages` to turn indexes.

        The clean case (almost every record) costs a few substring tests and anchored matches; only a
        record that trips one of them is scanned turn by turn to say which turn and what.
        """
        joined = "\x00".join([content for _, content in messages])
        suspect = False
        if self._markup is not None:
            for first in self._markup_firsts:
                if first in joined:
                    suspect = self._markup.search(joined) is not None
                    break
        if not suspect:
            match = self._label_start.match
            suspect = any(match(content) is not None for _, content in messages)
        if not suspect:
            suspect = self._next_turn.search(joined) is not None
        if suspect:
            for pos, (role, content) in enumerate(messages):
                if content and not content.isspace():
                    self.scan(role, content, pos - offset, out)

    def scan(self, role: str, content: str, index: int | str, out: list[Problem]) -> None:
        if self._markup is not None:
            hit = self._markup.search(content)
            if hit is not None:
                out.append(("FT0513", {"index": index, "role": role, "marker": hit.group(0)}))
                return
        hit = self._label_start.match(content)
        if hit is not None:
            out.append(
                (
                    "FT0514",
                    {"index": index, "role": role, "label": hit.group(1) + ":", "where": "starts with"},
                )
            )
        elif role == "assistant":
            hit = self._next_turn.search(content)
            if hit is not None:
                out.append(
                    (
                        "FT0514",
                        {
                            "index": index,
                            "role": role,
                            "label": hit.group(1) + ":",
                            "where": "continues into a new turn with",
                        },
                    )
                )


def check_record(
    record: object, declared: str, leaks: LeakScanner | None, out: list[Problem]
) -> Messages | None:
    """Check one parsed record against the declared format; append problems to `out`.

    Returns the conversation as (role, content) pairs when its structure is usable (so that later
    checks can count, deduplicate and render it), else None. Content problems (empty, leaked markup)
    still return the messages; structural ones do not.
    """
    if type(record) is not dict:
        out.append(("FT0503", {"kind": json_kind(record)}))
        return None
    if declared == "preference":  # checked as a pair; the chosen conversation stands for the record
        pair = check_pair(record, leaks, out)
        return None if pair is None else pair.prompt + pair.chosen
    if _KEY_OF[declared] not in record:
        detected = detect_format(record)
        if detected is not None and _DETECTED.get(detected, detected) != declared:
            out.append(("FT0504", {"detected": detected, "declared": declared}))
        else:
            keys = ", ".join(sorted(map(str, record))[:8]) or "none"
            out.append(("FT0505", {"detail": f"no `{_KEY_OF[declared]}` key (keys: {keys})"}))
        return None
    if declared == "alpaca":
        return _alpaca(record, leaks, out)
    if declared in PLAIN_FORMATS:
        return _plain(record, declared, leaks, out)
    if declared == "chatml":
        turns, role_key, content_key, roles = record["messages"], "role", "content", None
    else:
        turns, role_key, content_key, roles = record["conversations"], "from", "value", SHAREGPT_ROLES
    if type(turns) is not list:
        out.append(("FT0505", {"detail": f"`{_KEY_OF[declared]}` is {json_kind(turns)}, not a list"}))
        return None
    if not turns:
        out.append(("FT0505", {"detail": f"`{_KEY_OF[declared]}` is empty"}))
        return None
    messages: Messages = []
    usable = True
    tools = _declared_tools(record, out) if roles is None else None
    if tools is False:
        return None
    extras: dict[int, dict] = {}
    open_calls: dict[str, str] = {}  # call id -> tool name, of calls no tool result has answered yet
    if roles is not None:
        system = record.get("system")  # some ShareGPT exports keep the system prompt beside the turns
        if isinstance(system, str) and system.strip():
            messages.append(("system", system))
    for index, turn in enumerate(turns):
        if type(turn) is not dict:
            out.append(("FT0505", {"detail": f"turn {index} is {json_kind(turn)}, not an object"}))
            usable = False
            continue
        role = turn.get(role_key)
        if role is None or content_key not in turn:
            missing = role_key if role is None else content_key
            hint_keys = ", ".join(sorted(map(str, turn))[:6])
            out.append(("FT0505", {"detail": f"turn {index} has no `{missing}` (keys: {hint_keys})"}))
            usable = False
            continue
        if type(role) is not str:
            out.append(("FT0505", {"detail": f"turn {index}: `{role_key}` is {json_kind(role)}"}))
            usable = False
            continue
        if roles is None:
            if role not in CHATML_ROLES and role != TOOL_ROLE:
                allowed = ", ".join((*CHATML_ROLES, TOOL_ROLE))
                out.append(("FT0506", {"index": index, "role": role, "allowed": allowed}))
                usable = False
                continue
        else:
            mapped = roles.get(role)
            if mapped is None:
                out.append(("FT0506", {"index": index, "role": role, "allowed": ", ".join(roles)}))
                usable = False
                continue
            role = mapped
        content = turn[content_key]
        calls = turn.get("tool_calls") if roles is None and role == "assistant" else None
        if calls is not None:
            parsed = _tool_calls(calls, index, tools, out)
            if parsed is None:
                usable = False
                continue
            open_calls.update({c["id"]: c["function"]["name"] for c in parsed if "id" in c})
            extras[len(messages)] = {"tool_calls": parsed}
            if content is None:  # OpenAI writes null content beside tool calls
                content = ""
        if type(content) is not str:
            out.append(("FT0512", {"index": index, "role": role, "kind": json_kind(content)}))
            usable = False
            continue
        if role == "tool":
            answered = _tool_result(turn, index, open_calls, out)
            if answered is None:
                usable = False
                continue
            extras[len(messages)] = answered
        if (not content or content.isspace()) and not calls:  # a turn of tool calls may have no text
            out.append(("FT0511", {"index": index, "role": role}))
        messages.append((role, content))
    if not usable:
        return None
    offset = len(messages) - len(turns)
    if leaks is not None:
        leaks.scan_messages(messages, offset, out)
    _check_order(messages, out, offset=offset)
    if tools is not None or extras:
        return Chat(messages, tools=tools or None, extras=extras)
    return messages


def _declared_tools(record: dict, out: list[Problem]) -> list[dict] | None | Literal[False]:
    """The record's `tools` list (None when it has none; False, with a problem, when it is malformed):
    OpenAI's {"type": "function", "function": {"name", ...}} or a bare {"name", ...} schema."""
    tools = record.get("tools")
    if tools is None:
        return None
    if isinstance(tools, str):  # a column of JSON text (CSV, some Parquet exports)
        try:
            tools = json.loads(tools)
        except ValueError as exc:
            out.append(
                ("FT0518", {"index": "tools", "detail": f"`tools` is a string that is not JSON ({exc})"})
            )
            return False
    if type(tools) is not list or not all(type(t) is dict for t in tools):
        out.append(
            ("FT0518", {"index": "tools", "detail": f"`tools` is {json_kind(tools)}, not a list of objects"})
        )
        return False
    for i, tool in enumerate(tools):
        if tool_name(tool) is None:
            out.append(
                ("FT0518", {"index": "tools", "detail": f"tool {i} has no `function.name` (or `name`)"})
            )
            return False
    return tools


def tool_name(tool: dict) -> str | None:
    """The name a tool schema declares ({"function": {"name"}} or a bare {"name"})."""
    function = tool.get("function")
    if not isinstance(function, dict):
        function = tool
    name = function.get("name")
    return name if isinstance(name, str) and name else None


def _tool_calls(calls: object, index: int, tools: list[dict] | None, out: list[Problem]) -> list[dict] | None:
    """An assistant turn's tool calls in OpenAI's shape, arguments parsed to an object; None (with a
    problem) when one names no declared tool or its arguments are not a JSON object."""
    if type(calls) is not list or not calls:
        out.append(
            ("FT0518", {"index": index, "detail": f"`tool_calls` is {json_kind(calls)}, not a list of calls"})
        )
        return None
    declared = {tool_name(t) for t in tools or ()}
    parsed: list[dict] = []
    for k, call in enumerate(calls):
        function = call.get("function") if type(call) is dict else None
        name = function.get("name") if type(function) is dict else None
        if type(name) is not str or not name:
            out.append(("FT0518", {"index": index, "detail": f"call {k} has no `function.name`"}))
            return None
        if name not in declared:
            known = ", ".join(sorted(n for n in declared if n)) or "none: the record has no `tools`"
            out.append(
                (
                    "FT0518",
                    {
                        "index": index,
                        "detail": f"call {k} names tool '{name}', not declared (declared: {known})",
                    },
                )
            )
            return None
        assert isinstance(function, dict)  # the name came from it
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError as exc:
                out.append(
                    (
                        "FT0518",
                        {
                            "index": index,
                            "detail": f"call {k} ({name}): `arguments` is not valid JSON ({exc})",
                        },
                    )
                )
                return None
        if type(arguments) is not dict:
            out.append(
                (
                    "FT0518",
                    {
                        "index": index,
                        "detail": f"call {k} ({name}): `arguments` is {json_kind(arguments)}, not an object",
                    },
                )
            )
            return None
        entry: dict = {"type": "function", "function": {"name": name, "arguments": arguments}}
        if isinstance(call.get("id"), str) and call["id"]:
            entry["id"] = call["id"]
        parsed.append(entry)
    return parsed


def _tool_result(turn: dict, index: int, open_calls: dict[str, str], out: list[Problem]) -> dict | None:
    """A tool message's `tool_call_id` (and the tool's name), when it answers a call still open."""
    call_id = turn.get("tool_call_id")
    if not isinstance(call_id, str) or call_id not in open_calls:
        detail = (
            "has no `tool_call_id`"
            if call_id is None
            else f"answers '{call_id}', which no earlier tool call of the record left open"
        )
        open_ids = ", ".join(open_calls) or "none"
        out.append(("FT0519", {"index": index, "detail": detail, "open": open_ids}))
        return None
    name = open_calls.pop(call_id)
    return {"tool_call_id": call_id, "name": turn["name"] if isinstance(turn.get("name"), str) else name}


def _plain(record: dict, declared: str, leaks: LeakScanner | None, out: list[Problem]) -> Chat | None:
    """completion ({"prompt", "completion"}: the completion trains) and text ({"text"}: everything
    trains), as a user and an assistant turn for the checks that count, deduplicate and scan turns."""
    keys = ("prompt", "completion") if declared == "completion" else ("text",)
    fields = {}
    for key in keys:
        if key not in record:
            out.append(("FT0505", {"detail": f"no `{key}` key"}))
            return None
        value = record[key]
        if type(value) is not str:
            out.append(("FT0512", {"index": key, "role": key, "kind": json_kind(value)}))
            return None
        fields[key] = value
    trained = fields[keys[-1]]
    if not trained or trained.isspace():
        out.append(("FT0511", {"index": keys[-1], "role": keys[-1]}))
    if leaks is not None:
        for key, value in fields.items():
            if value and not value.isspace():
                leaks.scan("assistant" if key == keys[-1] else "user", value, key, out)
    pairs = [("user", fields["prompt"])] if declared == "completion" else []
    return Chat([*pairs, ("assistant", trained)], plain=declared)


def _alpaca(record: dict, leaks: LeakScanner | None, out: list[Problem]) -> Messages | None:
    fields = {}
    ok = True
    for key, required in (("instruction", True), ("input", False), ("output", True), ("system", False)):
        if key not in record:
            if required:
                detail = "no `output` key (the answer)" if key == "output" else f"no `{key}` key"
                out.append(("FT0505", {"detail": detail}))
                ok = False
            continue
        value = record[key]
        if value is None and not required:
            continue
        if type(value) is not str:
            out.append(("FT0512", {"index": key, "role": key, "kind": json_kind(value)}))
            ok = False
            continue
        fields[key] = value
    if not ok:
        return None
    role_of = {"instruction": "user", "input": "user", "output": "assistant", "system": "system"}
    for key in ("instruction", "output"):
        value = fields[key]
        if not value or value.isspace():
            out.append(("FT0511", {"index": key, "role": role_of[key]}))
    if leaks is not None:
        for key, value in fields.items():
            if value and not value.isspace():
                leaks.scan(role_of[key], value, key, out)
    user = fields["instruction"]
    extra = fields.get("input", "")
    if extra and not extra.isspace():
        user = f"{user}\n\n{extra}"  # the Alpaca input is part of the instruction turn
    messages: Messages = []
    system = fields.get("system", "")
    if system and not system.isspace():
        messages.append(("system", system))
    messages.append(("user", user))
    messages.append(("assistant", fields["output"]))
    return messages


def _check_order(messages: Messages, out: list[Problem], offset: int) -> None:
    """System first only; user and assistant alternate starting with user; an assistant turn ends it.

    `offset` maps positions in `messages` back to the record's turn index (a ShareGPT top-level
    system prompt adds a message that has no turn index).
    """
    previous = None
    seen_assistant = False
    for pos, (role, _content) in enumerate(messages):
        index = pos - offset
        if role == "tool":  # part of the assistant's turn: it follows a call, an assistant answer follows it
            if previous not in ("assistant", "tool"):
                out.append(
                    (
                        "FT0508",
                        {"index": index, "detail": "a tool result that follows no assistant tool call"},
                    )
                )
                return
            previous = role
            continue
        if previous == "tool" and role != "assistant":
            out.append(
                (
                    "FT0508",
                    {
                        "index": index,
                        "detail": f"a {role} turn right after a tool result (the assistant answers it)",
                    },
                )
            )
            return
        if role == "system":
            if pos != 0:
                out.append(("FT0507", {"index": index}))
                return
            continue
        if role == "assistant":
            seen_assistant = True
        if previous is None:
            if role != "user":
                out.append(
                    ("FT0508", {"index": index, "detail": "the conversation starts with an assistant turn"})
                )
                return
        elif role == previous:
            out.append(
                (
                    "FT0508",
                    {"index": index, "detail": f"two {role} turns in a row (turns {index - 1} and {index})"},
                )
            )
            return
        previous = role
    if not seen_assistant:
        out.append(("FT0509", {}))
    elif previous != "assistant":
        out.append(("FT0510", {"index": len(messages) - 1 - offset, "role": previous}))


# --- preference pairs ----------------------------------------------------------------------------

PAIR_SIDES = ("chosen", "rejected")


@dataclass(frozen=True)
class Pair:
    """A preference record: the prompt turns, and the chosen and rejected answers (assistant turns)."""

    prompt: Messages
    chosen: Messages
    rejected: Messages

    def side(self, name: str) -> Messages:
        """The conversation one side trains on: the prompt, then that side's answer."""
        return self.prompt + (self.chosen if name == "chosen" else self.rejected)

    def key_messages(self) -> Messages:
        """The whole pair as one message list, for duplicate and contamination checks over pairs
        (the same prompt and chosen answer with another rejected answer is another pair)."""
        return self.prompt + self.chosen + [("rejected " + role, content) for role, content in self.rejected]


def check_pair(record: object, leaks: LeakScanner | None, out: list[Problem]) -> Pair | None:
    """Check one `{"prompt", "chosen", "rejected"}` record; append problems to `out`.

    Each side is plain text or a message list: a text prompt is the user turn and a text answer the
    assistant turn, so both forms render through the chat template alike. The prompt holds the
    conversation so far and ends with a user turn; chosen and rejected each hold one assistant turn.
    Returns the pair when its structure is usable (content problems still return it)."""
    if type(record) is not dict:
        out.append(("FT0503", {"kind": json_kind(record)}))
        return None
    missing = [key for key in ("prompt", *PAIR_SIDES) if key not in record]
    if missing:
        detected = detect_format(record)
        if detected is not None and not detected.startswith("preference") and "prompt" in missing:
            out.append(("FT0504", {"detected": detected, "declared": "preference"}))
        else:
            keys = ", ".join(sorted(map(str, record))[:8]) or "none"
            shown = ", ".join(f"`{k}`" for k in missing)
            out.append(
                (
                    "FT0505",
                    {"detail": f"no {shown} key (keys: {keys}); a pair needs prompt, chosen, rejected"},
                )
            )
        return None
    parts = {}
    for key in ("prompt", *PAIR_SIDES):
        messages = _pair_side(key, record[key], out)
        if messages is None:
            return None
        parts[key] = messages
    pair = Pair(parts["prompt"], parts["chosen"], parts["rejected"])
    ok = _pair_roles(pair, out)
    if leaks is not None:
        for key in ("prompt", *PAIR_SIDES):
            for index, (role, content) in enumerate(parts[key]):
                if content and not content.isspace():
                    leaks.scan(role, content, f"{key}[{index}]", out)
    if ok and normalized_key(pair.chosen) == normalized_key(pair.rejected) and not _blank(pair.chosen):
        out.append(("FT0570", {}))
    return pair


def _blank(messages: Messages) -> bool:
    return all(not content or content.isspace() for _, content in messages)


def _pair_side(key: str, value: object, out: list[Problem]) -> Messages | None:
    """One side as (role, content) turns; None when its structure is unusable."""
    if type(value) is str:
        if not value or value.isspace():
            out.append(("FT0571", {"side": key, "detail": "is empty or whitespace only"}))
        return [("user" if key == "prompt" else "assistant", value)]
    if type(value) is not list:
        out.append(("FT0505", {"detail": f"`{key}` is {json_kind(value)}, not text or a list of messages"}))
        return None
    if not value:
        out.append(("FT0571", {"side": key, "detail": "is an empty list"}))
        return None
    messages: Messages = []
    for index, turn in enumerate(value):
        where = f"{key}[{index}]"
        if type(turn) is not dict or type(turn.get("role")) is not str or "content" not in turn:
            out.append(("FT0505", {"detail": f"{where} is not a {{role, content}} message"}))
            return None
        role, content = turn["role"], turn["content"]
        if role not in CHATML_ROLES:
            out.append(("FT0506", {"index": where, "role": role, "allowed": ", ".join(CHATML_ROLES)}))
            return None
        if type(content) is not str:
            out.append(("FT0512", {"index": where, "role": role, "kind": json_kind(content)}))
            return None
        if not content or content.isspace():
            out.append(("FT0571", {"side": where, "detail": f"({role}) is empty or whitespace only"}))
        messages.append((role, content))
    return messages


def _pair_roles(pair: Pair, out: list[Problem]) -> bool:
    """The prompt is a conversation that ends with a user turn; each answer is one assistant turn."""
    before = len(out)
    previous = None
    for index, (role, _content) in enumerate(pair.prompt):
        if role == "system":
            if index != 0:
                out.append(("FT0507", {"index": f"prompt[{index}]"}))
                return False
            continue
        if (previous is None and role != "user") or role == previous:
            detail = (
                "the prompt starts with an assistant turn"
                if previous is None
                else f"two {role} turns in a row"
            )
            out.append(("FT0508", {"index": f"prompt[{index}]", "detail": detail}))
            return False
        previous = role
    if previous != "user":
        last = pair.prompt[-1][0]
        out.append(
            (
                "FT0572",
                {"side": "prompt", "detail": f"ends with a {last} turn; the answers must follow a user turn"},
            )
        )
    for side in PAIR_SIDES:
        turns = pair.chosen if side == "chosen" else pair.rejected
        wrong = [f"{side}[{i}] is a {role} turn" for i, (role, _c) in enumerate(turns) if role != "assistant"]
        if wrong:
            out.append(
                (
                    "FT0572",
                    {"side": side, "detail": wrong[0] + "; the conversation so far belongs in `prompt`"},
                )
            )
        elif len(turns) > 1:
            out.append(
                (
                    "FT0572",
                    {"side": side, "detail": f"has {len(turns)} assistant turns; an answer is one turn"},
                )
            )
    return len(out) == before


def to_pair(record: dict) -> dict[str, list[dict[str, str]]]:
    """A preference record as {"prompt", "chosen", "rejected"} chat messages; raises ValueError when
    it is not a usable pair. The runtime uses this, so training sees the pairs `check` checked."""
    problems: list[Problem] = []
    pair = check_pair(record, None, problems)
    errors = [p for p in problems if p[0] not in ("FT0513", "FT0514")]
    if pair is None or errors:
        raise ValueError(f"record is not a usable preference pair: {errors[0] if errors else ''}")
    return {
        key: [{"role": role, "content": content} for role, content in getattr(pair, key)]
        for key in ("prompt", *PAIR_SIDES)
    }


def to_messages(record: dict, fmt: str) -> list[dict[str, str]]:
    """The record as chat messages ({"role", "content"}, plus tool-calling keys) for a chat template;
    raises ValueError when the record does not fit `fmt`. The runtime uses this too (to_chat), so
    training sees what `check` checked."""
    return chat_messages(to_chat(record, fmt))


def to_chat(record: dict, fmt: str) -> Messages:
    """The checked record (a Chat when it carries tools or is completion/text); ValueError when the
    record does not fit `fmt` or has an error (a tool call of no declared tool trains nothing sane)."""
    problems: list[Problem] = []
    messages = check_record(record, fmt, None, problems)
    tool_problem = next((p for p in problems if p[0] in ("FT0518", "FT0519")), None)
    if messages is None or tool_problem is not None:
        first = tool_problem or (problems[0] if problems else ("", ""))
        raise ValueError(f"record does not fit format {fmt}: {first[1]}")
    return messages


def normalized_key(messages: Messages) -> str:
    """Whitespace-normalised conversation text: two records with the same key are exact duplicates."""
    # One split/join over the whole conversation: NUL and SOH separate turns and roles because, unlike
    # the ASCII record separators, str.split() does not treat them as whitespace.
    # The separators are padded with spaces so that whitespace at the start or end of a turn goes too.
    return " ".join(" \x00 ".join([role + " \x01 " + content for role, content in messages]).split())
