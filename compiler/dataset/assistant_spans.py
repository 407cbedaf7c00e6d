"""Which characters of a rendered conversation train under `loss_on: assistant`, for any chat template.

Almost no real template marks assistant text with `{% generation %}`, so the trained spans are found in
the rendered text itself: each assistant answer, then its end-of-turn marker. The marker is the first
special token after the answer (whitespace aside): `<|im_end|>`, `<|eot_id|>`, `</s>`, or, where a
template ends a turn only by opening the next one, the first special token of the next header. A run
of end-of-turn tokens right after it is trained whole (Command R's `<|END_RESPONSE|><|END_OF_TURN_TOKEN|>`).
Where the template writes nothing after the last answer, the tokenizer's EOS is appended and trained,
since a model must learn to stop.

Finding the answers: the conversation is rendered a second time with an invisible probe character
pair in front of each answer (after any `</think>` reasoning and leading whitespace). When removing
the probes gives back exactly the real rendering, each probe's place is where its answer starts: a
short answer such as "a" is never confused with the "a" of a role header. Templates transform
content (trim it, drop `<think>` reasoning from earlier turns as Qwen3 and DeepSeek R1 do), which the
probe survives since it sits where the kept part begins. Where the probe rendering differs
(a template that inspects the answer's first characters), each answer is searched in order instead,
and accepted only where a special token (or the end) follows it. Reasoning a template keeps
(`<think>...</think>` of the last turn) trains along with the answer.

What cannot be located (an answer the template rewrote or dropped, an answer followed by plain text)
comes back as a SpanProblem: the data check reports it with the record's line, and training refuses
the record, rather than silently training on the prompt.

Pure Python (jinja2 through chat_templates); the runtime imports it too, so check and training use the
same spans.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from ftspec.compiler.dataset import chat_templates as ct

WHITESPACE = " \t\r\n"
_PROBE_OPEN, _PROBE_CLOSE = "\ue000", "\ue001"  # private-use characters: no template touches them
_PROBE_RE = re.compile(f"{_PROBE_OPEN}(\\d+){_PROBE_CLOSE}")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@lru_cache(maxsize=1)
def end_of_turn_tokens() -> tuple[str, ...]:
    """End-of-turn texts of common chat formats (compiler/data/end_of_turn.json, with sources)."""
    raw = json.loads(
        resources.files("ftspec.compiler.data").joinpath("end_of_turn.json").read_text(encoding="utf-8")
    )
    return tuple(entry["text"] for entry in raw["end_of_turn"])


@dataclass(frozen=True)
class SpanProblem:
    turn: int  # 0-based index of the assistant message in the conversation
    detail: str  # why its trained text cannot be told


@dataclass
class TrainedText:
    """A rendered conversation and the character ranges [start, end) that train."""

    text: str  # what is tokenized: the rendering, plus the EOS when eos_appended
    spans: list[tuple[int, int]] = field(default_factory=list)
    problems: list[SpanProblem] = field(default_factory=list)
    eos_appended: bool = False
    method: str = "located"  # "generation": the template's {% generation %} blocks gave the spans

    def trained_strings(self) -> list[str]:
        return [self.text[a:b] for a, b in self.spans]


def marker_tokens(tokenizer) -> tuple[str, ...]:
    """Texts that can end a turn for this tokenizer: its special added tokens, its EOS, and the known
    end-of-turn texts its vocabulary holds as one token (some tokenizers add `<|im_end|>` unflagged).

    Works with a `tokenizers.Tokenizer` (the check) and a transformers tokenizer (training)."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None)
    if decoder is None and hasattr(tokenizer, "get_added_tokens_decoder"):
        decoder = tokenizer.get_added_tokens_decoder()
    out = [t.content for t in (decoder or {}).values() if getattr(t, "special", False) and t.content]
    eos = getattr(tokenizer, "eos_token", None)
    if isinstance(eos, str) and eos:
        out.append(eos)
    vocab = tokenizer.get_vocab()
    out.extend(t for t in end_of_turn_tokens() if t in vocab)
    return tuple(dict.fromkeys(out))


def default_markers(special_tokens: Mapping[str, str]) -> tuple[str, ...]:
    """Markers when no tokenizer is at hand (a length estimate): the known end-of-turn texts and the
    template's bos/eos."""
    named = [special_tokens.get(k) for k in ("eos_token", "bos_token")]
    return tuple(dict.fromkeys([t for t in named if t] + list(end_of_turn_tokens())))


def trained_text(
    source: str,
    messages: Sequence[Mapping[str, str]],
    *,
    special_tokens: Mapping[str, str] | None = None,
    markers: Iterable[str] = (),
    tools: Sequence[dict] | None = None,
) -> TrainedText:
    """Render `messages` with `source` and find what trains (TemplateError when rendering fails).

    Templates with `{% generation %}` blocks keep their spans, exactly as transformers' assistant mask."""
    special = dict(special_tokens or {})
    msgs = [dict(m) for m in messages]
    rendered = ct.render(source, msgs, special_tokens=special, tools=tools)
    if ct.has_generation_blocks(source):
        return TrainedText(rendered.text, list(rendered.spans), method="generation")
    starts = _probe_starts(source, msgs, rendered.text, special, tools)
    calls = _tool_call_starts(source, msgs, rendered.text, special, tools)
    return locate(rendered.text, msgs, markers, special.get("eos_token") or "", starts, calls)


def trained_plain(
    messages: Sequence[Mapping[str, str]], *, eos: str, loss_on: str = "assistant"
) -> TrainedText:
    """The formats without a chat template: `completion` (a user turn, the prompt, and an assistant
    turn, the completion) is prompt + completion + EOS with the completion and EOS trained; `text`
    (one assistant turn) is the text + EOS, all trained (continued pretraining). `loss_on: all`
    trains the prompt too. The EOS is appended so the model learns to stop, as after a chat answer."""
    prompt = "".join(str(m.get("content", "")) for m in messages if m.get("role") != "assistant")
    answer = "".join(str(m.get("content", "")) for m in messages if m.get("role") == "assistant")
    text = prompt + answer + (eos or "")
    start = 0 if loss_on == "all" else len(prompt)
    return TrainedText(text, [(start, len(text))], eos_appended=bool(eos), method="plain")


def locate(
    text: str,
    messages: Sequence[Mapping[str, str]],
    markers: Iterable[str],
    eos: str,
    starts: Mapping[int, int | None] | None = None,
    calls: Mapping[int, int] | None = None,
) -> TrainedText:
    """The trained spans of `text`, the rendering of `messages`: for each assistant message its answer
    (from `starts[i]` when known, else searched in order) through its end-of-turn marker. A turn with
    tool calls trains from `calls[i]` (where the assistant's output begins) through the end-of-turn
    marker after its last call, whatever markup the template writes around the calls."""
    ordered, extend = _marker_order(tuple(markers), eos)
    out = TrainedText(text)
    cursor = 0
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, str):
            continue
        role = message.get("role")
        if role != "assistant":
            # The system prompt is skipped: templates move it (Mistral folds it into the last user turn).
            if role != "system":
                found = out.text.find(content.strip(), cursor)
                if found >= 0 and content.strip():
                    cursor = found + len(content.strip())
            continue
        if message.get("tool_calls"):
            span = _tool_turn(out.text, message, (calls or {}).get(i), cursor, extend)
            if isinstance(span, str):
                out.problems.append(SpanProblem(i, span))
                continue
            out.spans.append(span)
            cursor = span[1]
            continue
        answer = _answer(content)
        start = _answer_start(out.text, answer, cursor, ordered, extend, starts, i, out.problems)
        if start is None:
            continue
        stop = _marker_end(out.text, start + len(answer), ordered, extend)
        if stop is None and not out.text[start + len(answer) :].strip(WHITESPACE) and i == last and eos:
            out.text += eos  # nothing after the last answer: the model must still learn to stop
            out.eos_appended = True
            stop = len(out.text)
        if stop is None:
            out.problems.append(SpanProblem(i, _no_marker(out.text, start + len(answer))))
            continue
        out.spans.append((_reasoning_start(out.text, content, cursor, start), stop))
        cursor = stop
    return out


@lru_cache(maxsize=8)
def _marker_order(markers: tuple[str, ...], eos: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(markers longest first, so `<|end_of_text|>` wins over a shorter prefix; the end-of-turn ones
    among them, which extend a marker they directly follow). Once per tokenizer, not per record."""
    ordered = tuple(sorted({m for m in markers if m} | ({eos} if eos else set()), key=len, reverse=True))
    ends = set(end_of_turn_tokens()) | {eos}
    return ordered, tuple(m for m in ordered if m in ends)


def _answer(content: str) -> str:
    """The part of an assistant message every template renders: after any `</think>` reasoning."""
    return content.rsplit(THINK_CLOSE, 1)[-1].strip(WHITESPACE)


def _answer_start(
    text: str,
    answer: str,
    cursor: int,
    markers: Sequence[str],
    extend: Sequence[str],
    starts: Mapping[int, int | None] | None,
    index: int,
    problems: list[SpanProblem],
) -> int | None:
    if starts is not None:
        start = starts.get(index)
        if start is None:
            problems.append(SpanProblem(index, "the template does not render this assistant turn"))
            return None
        if not text.startswith(answer, start):
            problems.append(
                SpanProblem(
                    index, f"the template rewrites the answer (it renders {text[start : start + 40]!r})"
                )
            )
            return None
        return start
    seen = False
    at = text.find(answer, cursor)
    while at >= 0:
        seen = True
        end = at + len(answer)
        if _marker_end(text, end, markers, extend) is not None or not text[end:].strip(WHITESPACE):
            return at
        at = text.find(answer, at + 1)
    problems.append(
        SpanProblem(
            index,
            "no special token follows the answer in the rendered text"
            if seen
            else "the answer does not appear in the rendered text (the template changes it)",
        )
    )
    return None


def _tool_turn(
    text: str, message: Mapping, start: int | None, cursor: int, extend: Sequence[str]
) -> tuple[int, int] | str:
    """[start, stop) of an assistant turn with tool calls: from where its output begins through the
    end-of-turn token after its last call's name; a problem's detail when the calls are not there."""
    if start is None or start < cursor:
        return "the template's rendering of this tool-calling turn could not be told from the prompt"
    pos = start
    for call in message.get("tool_calls") or ():
        name = str((call.get("function") or {}).get("name", ""))
        found = text.find(name, pos)
        if not name or found < 0:
            return f"the template does not render the tool call {name!r} (does it read `tool_calls`?)"
        pos = found + len(name)
    ends = [(at, m) for m in extend if (at := text.find(m, pos)) >= 0]
    if not ends:
        return "no end-of-turn token follows the tool calls in the rendered text"
    at, first = min(ends)
    return start, _marker_end(text, at, extend, extend) or at + len(first)


def _tool_call_starts(
    source: str,
    messages: list[dict],
    text: str,
    special: Mapping[str, str],
    tools: Sequence[dict] | None,
) -> dict[int, int]:
    """Where the output of each assistant turn with tool calls begins in `text`: the end of the
    conversation before it rendered with the generation prompt, as the model would see it at
    inference (whitespace the template writes after the prompt skipped)."""
    out: dict[int, int] = {}
    for i, message in enumerate(messages):
        if message.get("role") != "assistant" or not message.get("tool_calls"):
            continue
        try:
            prompt = ct.render(
                source, messages[:i], add_generation_prompt=True, special_tokens=dict(special), tools=tools
            ).text
        except ct.TemplateError:
            continue
        if text.startswith(prompt):
            start = len(prompt)
            while start < len(text) and text[start] in WHITESPACE:
                start += 1
            out[i] = start
    return out


def _marker_end(text: str, end: int, markers: Sequence[str], extend: Sequence[str]) -> int | None:
    """End of the end-of-turn marker after position `end` (whitespace skipped), None when plain text
    or nothing follows. End-of-turn tokens directly after the first marker belong to it."""
    j = end
    while j < len(text) and text[j] in WHITESPACE:
        j += 1
    first = next((m for m in markers if text.startswith(m, j)), None)
    if first is None:
        return None
    stop = j + len(first)
    while True:
        more = next((m for m in extend if text.startswith(m, stop)), None)
        if more is None:
            return stop
        stop += len(more)


def _no_marker(text: str, end: int) -> str:
    rest = text[end:].lstrip(WHITESPACE)
    if not rest:
        return "nothing follows the last answer and the tokenizer has no EOS to append"
    return f"the answer is followed by {rest[:30]!r}, not by a special token that ends the turn"


def _reasoning_start(text: str, content: str, cursor: int, start: int) -> int:
    """Where the kept reasoning of this turn begins (its `<think>` tag when the template wrote one), or
    `start` when the message has none or the template dropped it from this turn."""
    if THINK_CLOSE not in content:
        return start
    reasoning = content.rsplit(THINK_CLOSE, 1)[0].split(THINK_OPEN)[-1].strip(WHITESPACE)
    at = text.rfind(reasoning, cursor, start) if reasoning else -1
    if at < 0:
        return start
    before = text[cursor:at].rstrip(WHITESPACE)
    if before.endswith(THINK_OPEN):
        return cursor + len(before) - len(THINK_OPEN)
    return at


def _with_probe(content: str, index: int) -> str:
    """`content` with a probe where its answer starts (after reasoning and leading whitespace)."""
    probe = f"{_PROBE_OPEN}{index}{_PROBE_CLOSE}"
    head, sep, tail = content.rpartition(THINK_CLOSE)
    lead = tail[: len(tail) - len(tail.lstrip(WHITESPACE))]
    return head + sep + lead + probe + tail[len(lead) :]


def _probe_starts(
    source: str,
    messages: list[dict],
    text: str,
    special: Mapping[str, str],
    tools: Sequence[dict] | None,
) -> dict[int, int | None] | None:
    """Where each assistant answer starts in `text`, by rendering again with probes; None when the
    probe rendering is not the real one plus probes (then answers are searched instead)."""
    if _PROBE_OPEN in text or _PROBE_CLOSE in text:
        return None
    probed = [
        {**m, "content": _with_probe(m["content"], i)}
        if m.get("role") == "assistant" and isinstance(m.get("content"), str)
        else m
        for i, m in enumerate(messages)
    ]
    try:
        with_probes = ct.render(source, probed, special_tokens=dict(special), tools=tools).text
    except ct.TemplateError:
        return None
    starts: dict[int, int | None] = {i: None for i, m in enumerate(messages) if m.get("role") == "assistant"}
    removed = 0
    previous = -1
    for match in _PROBE_RE.finditer(with_probes):
        index = int(match.group(1))
        if index not in starts or starts[index] is not None or index < previous:
            return None  # a probe twice or out of order: the template does something unusual
        starts[index] = match.start() - removed
        removed += len(match.group(0))
        previous = index
    if _PROBE_RE.sub("", with_probes) != text:
        return None
    return starts
