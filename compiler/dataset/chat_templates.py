"""Chat templates: the built-in catalog, a sandboxed renderer that reports trained spans, token masks.

Templates are untrusted input (a model folder's tokenizer_config.json can hold any Jinja), so they are
rendered the way transformers renders them: jinja2's ImmutableSandboxedEnvironment with trim_blocks and
lstrip_blocks, the same helper globals, and a `{% generation %}` tag. Our tag records the character
span of every generation block, which is what `apply_chat_template(return_assistant_tokens_mask=True)`
turns into the assistant mask; the compiler uses the spans to show and check which tokens train.

Pure Python: jinja2 and (optionally, for exact token offsets) the `tokenizers` library, never
transformers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ftspec.compiler.core import model_files
from ftspec.compiler.core.paths import MODEL_FILE_MAX_BYTES, read_bounded_text

BUILTIN = ("chatml", "llama3", "alpaca")


class TemplateError(Exception):
    """A template that does not compile or fails while rendering (message, 1-based template line)."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass(frozen=True)
class TemplateInfo:
    name: str
    source: str  # Jinja text
    terminator: str  # text that ends an assistant turn; "{eos_token}" means the tokenizer's EOS
    special_tokens: dict[str, str]
    markers: tuple[str, ...]  # template text that must never appear inside message content
    origin: str  # where the template came from (catalog source or a file path)

    def terminator_text(self, special_tokens: dict[str, str] | None = None) -> str:
        tokens = {**self.special_tokens, **(special_tokens or {})}
        return self.terminator.replace("{eos_token}", tokens.get("eos_token", ""))


@lru_cache(maxsize=1)
def _catalog() -> dict[str, dict]:
    data = resources.files("ftspec.compiler.data")
    raw = json.loads(data.joinpath("chat_templates.json").read_text(encoding="utf-8"))
    return {k: v for k, v in raw.items() if not k.startswith("$")}


def template_source(name: str, base_dir: Path | None = None) -> str:
    """Jinja source for `tokenizer.chat_template`: a built-in template (`chatml`, `llama3`, `alpaca`), or
    a `.jinja` file named relative to the spec's folder `base_dir` (see file_template)."""
    if is_template_file(name):
        if base_dir is None:
            raise TemplateError(f"chat template file {name!r} needs the spec's folder to resolve it")
        return file_template(name, base_dir).source
    return builtin_template(name).source


TEMPLATE_FILE_MAX_BYTES = 1 << 20  # real templates are a few KB (the largest official one ~ 40 KB)


def is_template_file(name: object) -> bool:
    """Does model.chat_template name a Jinja file (rather than `model` or a built-in template)?"""
    return isinstance(name, str) and name.endswith(".jinja")


def file_template(written: str, base_dir: Path, root: Path | None = None) -> TemplateInfo:
    """The template in the `.jinja` file `written` (relative to the spec's folder `base_dir`).

    Like every file a spec names, it must stay inside the repository root (`root`, else the git
    repository holding the spec) once symlinks are resolved, and be a regular file of bounded size:
    a pull request's spec must not make ftspec read (and print) files elsewhere on the machine."""
    from ftspec.compiler.core.paths import find_repo_root, resolves_inside, special_kind

    path = Path(written)
    if path.is_absolute() or written.startswith("~"):
        raise TemplateError(f"chat template file {written!r} must be a path relative to the spec's folder")
    target = base_dir / path
    top = Path(root) if root is not None else find_repo_root(base_dir)
    if not resolves_inside(target, top):
        raise TemplateError(f"chat template file {written!r} is outside the repository root {top}")
    kind = special_kind(target)
    if kind is not None or not target.is_file():
        raise TemplateError(f"chat template file {written!r} " + (f"is {kind}" if kind else "does not exist"))
    try:
        if target.stat().st_size > TEMPLATE_FILE_MAX_BYTES:
            raise TemplateError(
                f"chat template file {written!r} is larger than {TEMPLATE_FILE_MAX_BYTES} bytes"
            )
        source = target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"cannot read chat template file {written!r}: {exc}") from None
    return TemplateInfo(
        name="file",
        source=source,
        terminator="{eos_token}",
        special_tokens={},
        markers=(),
        origin=str(target),
    )


@cache
def builtin_template(name: str) -> TemplateInfo:
    entry = _catalog().get(name)
    if entry is None:
        raise KeyError(f"unknown chat template {name!r}; built-in ones: {', '.join(BUILTIN)}")
    data = resources.files("ftspec.compiler.data")
    source = data.joinpath(*entry["file"].split("/")).read_text(encoding="utf-8")
    return TemplateInfo(
        name=name,
        source=source,
        terminator=entry["terminator"],
        special_tokens=dict(entry.get("special_tokens", {})),
        markers=tuple(entry.get("markers", ())),
        origin=entry.get("source", ""),
    )


@lru_cache(maxsize=1)
def all_markers() -> tuple[str, ...]:
    """Template markup of the built-in templates and of other common chat formats: text that must never
    sit inside message content (it is how template text leaked into a dataset shows)."""
    out: list[str] = []
    raw = json.loads(
        resources.files("ftspec.compiler.data").joinpath("chat_templates.json").read_text("utf-8")
    )
    others = raw.get("$other_markers", {}).get("markers", [])
    for name in BUILTIN:
        out.extend(m for m in builtin_template(name).markers if m not in out)
    out.extend(m for m in others if m not in out)
    return tuple(out)


# --- sandboxed rendering -------------------------------------------------------------------------

_TRACK: ContextVar[tuple[list[str], list[tuple[int, int]]] | None] = ContextVar(
    "ftspec_generation_track", default=None
)


def _generation_extension():
    import jinja2
    from jinja2.ext import Extension

    class GenerationExtension(Extension):
        """`{% generation %}...{% endgeneration %}`: renders its body and records its character span.

        The span start is the length of everything the template has produced so far, which is why
        rendering goes through `Template.generate()` (chunks arrive in order) rather than `render()`.
        """

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_generation", []), [], [], body).set_lineno(
                lineno
            )

        def _generation(self, caller) -> str:
            text = caller()
            track = _TRACK.get()
            if track is not None:
                chunks, spans = track
                start = sum(len(c) for c in chunks)
                spans.append((start, start + len(text)))
            return text

    return GenerationExtension


# A model's template is untrusted code: the sandbox stops escapes, these stop it from running forever
# or filling memory (security review D7: nested range(100000) loops hung `check`; 'a' * 10**9 cost
# 1 GB per render). Steps count loop iterations over range() and every call the sandbox sees.
RENDER_MAX_STEPS = 2_000_000
RENDER_MAX_CHARS = 4 << 20  # a rendered conversation far longer than any sequence_len
RENDER_MAX_SECONDS = 10.0
_BUDGET: ContextVar[list | None] = ContextVar("ftspec_render_budget", default=None)


def _spend(steps: int = 1) -> None:
    """Charge the current render; TemplateError once it is over its step or time budget."""
    budget = _BUDGET.get()
    if budget is None:
        return
    budget[0] += steps
    if budget[0] > RENDER_MAX_STEPS or (budget[0] & 0x3FF == 0 and time.monotonic() > budget[1]):
        raise TemplateError(
            f"template exceeded its rendering budget ({RENDER_MAX_STEPS} steps or {RENDER_MAX_SECONDS:g} s)"
        )


@lru_cache(maxsize=1)
def _environment():
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BudgetedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's own signature
            _spend()
            return super().call(__context, __obj, *args, **kwargs)

        def call_binop(self, context, operator, left, right):
            _spend()
            if operator == "*" and isinstance(right, int) and isinstance(left, (str, list, tuple)):
                if len(left) * right > RENDER_MAX_CHARS:
                    raise TemplateError(f"template builds a value longer than {RENDER_MAX_CHARS} characters")
            if operator == "**" and isinstance(right, int) and right > 1024:
                raise TemplateError("template raises a number to a power above 1024")
            return super().call_binop(context, operator, left, right)

    def budgeted_range(*args):
        for value in range(*args):  # jinja's own range caps one range at 100000 items; nesting multiplies
            _spend()
            yield value

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
        # like transformers: no HTML escaping
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    class SafeNamespace(jinja2.utils.Namespace):
        # Namespaces must not store dunder names: that is how sandbox escapes reach CPython internals.
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                SafeNamespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            SafeNamespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} is not allowed")

    env = BudgetedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_generation_extension(), jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["namespace"] = SafeNamespace
    env.globals["range"] = budgeted_range
    return env


@lru_cache(maxsize=16)
def compile_template(source: str):
    """Compile untrusted template text in the sandbox; TemplateError on bad syntax."""
    import jinja2

    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message}", exc.lineno) from None


@dataclass
class Rendered:
    text: str
    spans: list[tuple[int, int]] = field(default_factory=list)  # trained character ranges [start, end)

    def trained_chars(self) -> int:
        return sum(end - start for start, end in self.spans)


@contextmanager
def _tracking(chunks: list[str], spans: list[tuple[int, int]]) -> Iterator[None]:
    token = _TRACK.set((chunks, spans))
    try:
        yield
    finally:
        _TRACK.reset(token)


def render(
    source: str,
    messages: Sequence[dict],
    *,
    add_generation_prompt: bool = False,
    special_tokens: dict[str, str] | None = None,
    tools: Sequence[dict] | None = None,
) -> Rendered:
    """Render `messages` with template `source`; the text and the spans of its generation blocks.

    `tools` (JSON schemas) as transformers passes them; None, as there, when the data has none."""
    import jinja2

    template = compile_template(source)
    chunks: list[str] = []
    spans: list[tuple[int, int]] = []
    context: dict[str, Any] = dict(special_tokens or {})
    context.update(
        messages=list(messages),
        add_generation_prompt=add_generation_prompt,
        tools=list(tools) if tools is not None else None,
        documents=None,
    )
    budget = _BUDGET.set([0, time.monotonic() + RENDER_MAX_SECONDS])
    size = 0
    try:
        with _tracking(chunks, spans):
            for chunk in template.generate(**context):
                chunks.append(chunk)
                size += len(chunk)
                if size > RENDER_MAX_CHARS:
                    raise TemplateError(f"template output is longer than {RENDER_MAX_CHARS} characters")
                _spend()
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"template tried an unsafe operation: {exc}", _template_line(exc)) from None
    except jinja2.TemplateError as exc:  # raise_exception(), undefined values, syntax found late
        raise TemplateError(f"template error: {exc}", _template_line(exc)) from None
    except (
        TypeError,
        ValueError,
        KeyError,
        IndexError,
        AttributeError,
        OverflowError,
        RecursionError,
    ) as exc:
        raise TemplateError(f"template failed: {type(exc).__name__}: {exc}", _template_line(exc)) from None
    finally:
        _BUDGET.reset(budget)
    return Rendered("".join(chunks), spans)


def _template_line(exc: BaseException) -> int | None:
    line = getattr(exc, "lineno", None)
    if line:
        return int(line)
    tb = exc.__traceback__
    found = None
    while tb is not None:  # jinja maps template frames to "<template>" with template line numbers
        if tb.tb_frame.f_code.co_filename == "<template>":
            found = tb.tb_lineno
        tb = tb.tb_next
    return found


def has_generation_blocks(source: str) -> bool:
    import re

    return re.search(r"\{%-?\s*generation\s*-?%\}", source) is not None


# --- the model's own template and tokenizer ------------------------------------------------------


def _token_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(
        value.get("content"), str
    ):  # AddedToken as saved by transformers
        return value["content"]
    return None


def read_special_tokens(model_dir: Path) -> dict[str, str]:
    """bos/eos/unk/pad tokens from tokenizer_config.json and special_tokens_map.json (strings only)."""
    out: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins, as in transformers
        path = model_dir / name
        try:
            data = json.loads(read_bounded_text(path, MODEL_FILE_MAX_BYTES))  # regular file, capped
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            text = _token_text(data.get(key))
            if text is not None:
                out[key] = text
    return out


def model_template(model_dir: Path) -> TemplateInfo | None:
    """The model folder's own chat template: chat_template.jinja (transformers >= 4.43 saves it there),
    else tokenizer_config.json's `chat_template` (a string, or a list of named templates: `default`)."""
    special = read_special_tokens(model_dir)
    source: str | None = None
    origin = ""
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        try:
            source, origin = read_bounded_text(jinja_file, MODEL_FILE_MAX_BYTES), str(jinja_file)
        except (OSError, UnicodeDecodeError):
            source = None
    if source is None:
        cfg = model_dir / "tokenizer_config.json"
        try:
            data = json.loads(read_bounded_text(cfg, MODEL_FILE_MAX_BYTES))
        except (OSError, ValueError):
            data = None
        value = data.get("chat_template") if isinstance(data, dict) else None
        if isinstance(value, list):
            named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
            value = named.get("default") or next(iter(named.values()), None)
        if isinstance(value, str) and value.strip():
            source, origin = value, str(cfg)
    if source is None:
        return None
    eos = special.get("eos_token", "")
    return TemplateInfo(
        name="model",
        source=source,
        terminator="{eos_token}" if eos else "",
        special_tokens=special,
        markers=(),
        origin=origin,
    )


def local_model_dir(model_id: str, base_dir: Path) -> Path | None:
    """A local model folder named by model.id (relative to the spec's folder, or absolute). A GGUF-based
    model (builtin:smollm2-135m, a .gguf file) reads as its converted folder in the cache (made on
    first use: compiler/core/model_files.py)."""
    if model_files.converts_from_gguf(model_id):
        return model_files.folder_for_check(model_id, base_dir)
    if not model_id or model_id.startswith("builtin:"):
        return None
    candidate = Path(model_id).expanduser()
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    return candidate if candidate.is_dir() else None


def load_tokenizer(model_dir: Path):
    """A `tokenizers.Tokenizer` from the folder's tokenizer.json, or None when there is none/it is bad."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path))
    except Exception:  # the Rust side raises bare Exceptions for malformed files
        return None


@dataclass
class TokenMask:
    ids: list[int]
    offsets: list[tuple[int, int]]
    trained: list[bool]

    def __len__(self) -> int:
        return len(self.ids)


def mask_from_encoding(encoding, spans: Sequence[tuple[int, int]]) -> TokenMask:
    """A token is trained when its character range overlaps a generation span (what transformers'
    char_to_token mapping of span starts and ends amounts to)."""
    return mask_from_offsets(encoding.ids, encoding.offsets, spans)


def mask_from_offsets(
    ids: Sequence[int], offsets: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]]
) -> TokenMask:
    """mask_from_encoding for token ids and character offsets given apart (a transformers tokenizer's
    `input_ids` and `offset_mapping`), so check and training map spans to tokens the same way."""
    ranges = [(int(o[0]), int(o[1])) for o in offsets]
    trained = [False] * len(ranges)
    ordered = sorted(spans)
    j = 0
    for i, (start, end) in enumerate(ranges):
        end = max(
            end, start + 1
        )  # a zero-width token (an added special token at a boundary) still has a place
        while j < len(ordered) and ordered[j][1] <= start:
            j += 1
        if j < len(ordered) and ordered[j][0] < end:
            trained[i] = True
    return TokenMask(list(ids), ranges, trained)


def token_mask(tokenizer, text: str, spans: Sequence[tuple[int, int]]) -> TokenMask:
    """Tokenize rendered text as apply_chat_template does (no extra special tokens) and mark trained tokens."""
    return mask_from_encoding(tokenizer.encode(text, add_special_tokens=False), spans)
