"""Load a YAML spec with ruamel.yaml round-trip, keeping the line and column of every key and value.

Every failure mode of reading a file (unreadable, not UTF-8, YAML syntax, duplicate keys, tabs, an
empty file, a non-mapping top level, alias bombs, huge files) becomes a Diagnostic with a location;
nothing here raises on bad input.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ftspec.compiler.core.diagnostics import Diagnostic, Location, make
from ftspec.compiler.core.paths import find_repo_root, inside, link_escapes, special_kind

MAX_BYTES = 1024 * 1024  # a spec is a page of YAML (a few KB); anything this large is a mistake or an attack
MAX_NODES = 100_000  # expanded nodes: stops alias bombs ("billion laughs") before they eat memory
MAX_DEPTH = 64
# ruamel.yaml composes the whole document before we can count nodes, at ~35 us per node: a 1 MB flow
# list of 500k items would take 20 s and 700 MB. These cheap text counts bound the work (and so the
# time) before parsing; a real spec has a few hundred lines.
MAX_LINES = 5_000
MAX_SEPARATORS = 5_000  # commas (items of flow lists and mappings), and opening brackets (nesting)


def escape_pointer_token(token: object) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def join_pointer(base: str, token: object) -> str:
    return f"{base}/{escape_pointer_token(token)}"


def split_pointer(pointer: str) -> list[str]:
    """RFC 6901 tokens of `pointer` ("" is the whole document)."""
    if not pointer:
        return []
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer.lstrip("/").split("/")]


def get_pointer(data: object, pointer: str, default: object = None) -> object:
    """The value at `pointer` in plain JSON-like data, or `default` where the path does not exist."""
    node = data
    for token in split_pointer(pointer):
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return default
    return node


@dataclass
class LoadedSpec:
    """A parsed spec: plain Python data plus a map from JSON pointer to source positions."""

    path: str  # as given by the user (what diagnostics print)
    text: str
    data: object = None
    value_pos: dict[str, tuple[int, int]] = field(default_factory=dict)  # 1-based (line, column)
    key_pos: dict[str, tuple[int, int]] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return isinstance(self.data, dict) and not any(d.severity == "error" for d in self.diagnostics)

    @property
    def base_dir(self) -> Path:
        return Path(self.path).resolve().parent

    def locate(self, pointer: str, *, key: bool = False) -> Location:
        """Location of the value at `pointer` (or of its key), falling back to the nearest parent."""
        probe = pointer
        while True:
            table = self.key_pos if key else self.value_pos
            if probe in table:
                line, col = table[probe]
                return Location(self.path, line, col, pointer)
            if key and probe in self.value_pos:
                line, col = self.value_pos[probe]
                return Location(self.path, line, col, pointer)
            if not probe:
                # The document itself: show its first key rather than a comment line above it.
                tops = [pos for ptr, pos in self.key_pos.items() if ptr.count("/") == 1]
                line, col = min(tops) if tops else (1, 1)
                return Location(self.path, line, col, pointer)
            probe = probe.rsplit("/", 1)[0]
            key = True  # a missing child is best shown at its parent's key

    def source_line(self, line: int | None) -> str | None:
        if not line:
            return None
        lines = self.text.splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else None


class _TooBig(Exception):
    def __init__(self, code: str, pointer: str, detail: str):
        self.code, self.pointer, self.detail = code, pointer, detail


def _decode(raw: bytes, path: str) -> tuple[str | None, Diagnostic | None]:
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        start = exc.start
        line = raw.count(b"\n", 0, start) + 1
        column = start - (raw.rfind(b"\n", 0, start) + 1) + 1
        return None, make(
            "FT0002", Location(path, line, column, ""), byte=f"0x{raw[start]:02x}", offset=start
        )


def load_text(text: str, path: str) -> LoadedSpec:
    spec = LoadedSpec(path=path, text=text)
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        spec.diagnostics.append(make("FT0005", Location(path, 1, 1, "")))
        return spec
    too_complex = _too_complex(text, path)
    if too_complex is not None:
        spec.diagnostics.append(too_complex)
        return spec
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        node = yaml.load(text)
    except MarkedYAMLError as exc:
        spec.diagnostics.append(_yaml_error(exc, path, text))
        return spec
    except (YAMLError, RecursionError, ValueError, TypeError) as exc:
        spec.diagnostics.append(_unmarked_error(exc, path, text))
        return spec
    if node is None:
        spec.diagnostics.append(make("FT0005", Location(path, 1, 1, "")))
        return spec
    counter = [0]
    try:
        spec.data = _convert(node, "", spec, counter, 0)
    except _TooBig as exc:
        spec.data = None
        spec.diagnostics.append(make(exc.code, spec.locate(exc.pointer), detail=exc.detail))
        return spec
    except RecursionError:
        spec.data = None
        spec.diagnostics.append(make("FT0008", Location(path, 1, 1, ""), detail="nesting too deep"))
        return spec
    if not isinstance(spec.data, dict):
        spec.diagnostics.append(make("FT0006", Location(path, 1, 1, ""), kind=json_kind(spec.data)))
        spec.data = None
    return spec


def non_finite_diagnostics(spec: LoadedSpec) -> list[Diagnostic]:
    """FT0105 for every `.nan` and `.inf` (from the file or a `--set`): YAML floats but no field's
    value. NaN passes every range check (each comparison is false), then reaches plan.json as `NaN`,
    which is not JSON, or crashes the build (`int(nan)`)."""
    out: list[Diagnostic] = []

    def walk(value: object, pointer: str) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                walk(child, join_pointer(pointer, key))
        elif isinstance(value, list):
            for index, child in enumerate(value):
                walk(child, join_pointer(pointer, index))
        elif isinstance(value, float) and not math.isfinite(value):
            field = pointer.strip("/").replace("/", ".") or "the spec"
            shown = ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
            out.append(
                make("FT0105", spec.locate(pointer), field=field, value=shown, bound="a finite number")
            )

    walk(spec.data, "")
    return out


def spec_link_problem(path: str | os.PathLike, root: os.PathLike | None = None) -> Diagnostic | None:
    """FT0013 when `path` is (or passes through) a symlink whose target leaves the repository root
    (`root`, else the git repository holding the link itself). Checked before the file is opened: a
    pull request may commit `specs/x.yaml -> /etc/shadow`, and lint would print its lines."""
    shown = str(path)
    if not os.path.lexists(path):
        return None
    lexical = Path(os.path.abspath(path))
    top = Path(root) if root is not None else find_repo_root(lexical.parent)
    if not inside(lexical, Path(os.path.abspath(top))) and not inside(lexical, Path(os.path.realpath(top))):
        return None  # named directly, outside the root: the user chose that file; only links are suspect
    target = link_escapes(lexical, top)
    if target is None:
        return None
    return make("FT0013", Location(shown, 1, 1, ""), where=f"a file outside the repository ({top})")


def load_spec(path: str | os.PathLike, *, root: os.PathLike | None = None) -> LoadedSpec:
    """Read and parse `path`; problems come back as diagnostics on the result, never as exceptions.

    A spec that resolves outside the repository root (`root`, else the link's own repository) is
    refused unread (FT0013); a FIFO or socket is refused unopened (opening it would block)."""
    shown = str(path)
    escape = spec_link_problem(path, root)
    if escape is not None:
        spec = LoadedSpec(path=shown, text="")
        spec.diagnostics.append(escape)
        return spec
    kind = special_kind(Path(path))
    if kind in ("a FIFO", "a socket"):
        spec = LoadedSpec(path=shown, text="")
        spec.diagnostics.append(make("FT0001", Location(shown), detail=f"is {kind}, not a regular file"))
        return spec
    try:
        size = os.stat(path).st_size
        if size > MAX_BYTES:
            spec = LoadedSpec(path=shown, text="")
            spec.diagnostics.append(make("FT0007", Location(shown, 1, 1, ""), size=size, limit=MAX_BYTES))
            return spec
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:  # stat lied: a device, a pipe, or a file still growing
            spec = LoadedSpec(path=shown, text="")
            spec.diagnostics.append(
                make("FT0007", Location(shown, 1, 1, ""), size=f"more than {MAX_BYTES}", limit=MAX_BYTES)
            )
            return spec
    except IsADirectoryError:
        spec = LoadedSpec(path=shown, text="")
        spec.diagnostics.append(make("FT0001", Location(shown), detail="is a directory"))
        return spec
    except OSError as exc:
        spec = LoadedSpec(path=shown, text="")
        spec.diagnostics.append(make("FT0001", Location(shown), detail=exc.strerror or str(exc)))
        return spec
    text, problem = _decode(raw, shown)
    if problem is not None:
        spec = LoadedSpec(path=shown, text=raw.decode("utf-8", "replace"))
        spec.diagnostics.append(problem)
        return spec
    assert text is not None  # _decode returns the text or a problem
    return load_text(text, shown)


def _too_complex(text: str, path: str) -> Diagnostic | None:
    lines = text.count("\n") + 1
    if lines > MAX_LINES:
        return make(
            "FT0012", Location(path, MAX_LINES + 1, 1, ""), count=lines, what="lines", limit=MAX_LINES
        )
    commas = text.count(",")
    if commas > MAX_SEPARATORS:
        # point at the line where the limit is crossed: that is where the runaway list is
        offset = -1
        for _ in range(MAX_SEPARATORS + 1):
            offset = text.find(",", offset + 1)
        line = text.count("\n", 0, offset) + 1
        return make(
            "FT0012",
            Location(path, line, 1, ""),
            count=commas,
            what="commas (flow items)",
            limit=MAX_SEPARATORS,
        )
    brackets = text.count("[") + text.count("{")
    if brackets > MAX_SEPARATORS:
        return make(
            "FT0012", Location(path, 1, 1, ""), count=brackets, what="opening brackets", limit=MAX_SEPARATORS
        )
    if brackets > MAX_DEPTH:
        # ruamel.yaml slows down sharply with flow nesting (5,000 levels: 5 s before a RecursionError):
        # measure the depth first. Brackets inside quoted strings count too, an over-estimate that
        # only a spec nested 64 levels deep could notice.
        depth = deepest = 0
        for char in text:
            if char in "[{":
                depth += 1
                if depth > deepest:
                    deepest = depth
            elif char in "]}" and depth:
                depth -= 1
        if deepest > MAX_DEPTH:
            return make(
                "FT0008",
                Location(path, 1, 1, ""),
                detail=f"flow collections nested {deepest} deep (at most {MAX_DEPTH})",
            )
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def json_kind(value: object) -> str:
    """A plain value's JSON kind with its article, for messages: "a list", "an object", "null"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _yaml_error(exc, path: str, text: str) -> Diagnostic:
    from ruamel.yaml.constructor import DuplicateKeyError

    problem = _one_line(exc.problem or "")
    context = _one_line(exc.context or "")
    opened = _unclosed(exc, problem, context, text)
    if opened is not None:
        (line, column), what = opened
        return make(
            "FT0003",
            Location(path, line, column, ""),
            detail=f"unclosed {what} opened here ({problem})",
            hint=f"close the {what} on this line",
        )
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    loc = Location(path, line, column, "")
    if isinstance(exc, DuplicateKeyError):
        first = exc.context_mark
        key = problem.split('"')[1] if problem.count('"') >= 2 else problem
        return make("FT0004", loc, key=key, first_line=(first.line + 1) if first else "?")
    src = text.splitlines()[line - 1] if 0 < line <= len(text.splitlines()) else ""
    if "\t" in problem or "'\\t'" in problem or ("\t" in src[: max(column, 1)] and "token" in problem):
        return make("FT0010", loc)
    if "expected a single document" in (context + " " + problem):
        return make("FT0011", loc)
    detail = problem if not context else f"{problem} ({context})"
    return make("FT0003", loc, detail=detail or "invalid YAML")


_OPENS_QUOTE = re.compile(r"""^\s*(?:-\s+)?(?:[^\s#'"][^#:]*:\s+)?(["'])(.*)$""")
_LOOKS_LIKE_KEY = re.compile(r"^\s*(?:-\s+)?[A-Za-z_][\w.-]*:(\s|$)")


def _unclosed(exc, problem: str, context: str, text: str) -> tuple[tuple[int, int], str] | None:
    """Where an unclosed quote or bracket opens, for errors the parser only noticed later.

    ruamel reports where it gave up (often the end of the file, or a line 50 below); the mistake is
    where the scalar or flow collection began, which it keeps as the context mark. A double-quoted
    scalar may also swallow many lines and fail on something else: then the first line that opens a
    quote without closing it, followed by a line that looks like `key: value`, is the culprit."""
    mark, at = exc.context_mark, exc.problem_mark
    gave_up_later = at is not None and mark is not None and at.line > mark.line
    if mark is not None and context.startswith("while scanning a quoted scalar") and gave_up_later:
        return (mark.line + 1, mark.column + 1), "quote"
    if mark is not None and context.startswith("while parsing a flow") and gave_up_later:
        return (mark.line + 1, mark.column + 1), "bracket"
    limit = at.line if at is not None else 0
    lines = text.splitlines()
    for index in range(min(limit, len(lines))):
        found = _OPENS_QUOTE.match(lines[index])
        if not found or _closes(found.group(1), found.group(2)):
            continue
        following = next((ln for ln in lines[index + 1 : limit + 1] if ln.strip()), "")
        if _LOOKS_LIKE_KEY.match(following):
            return (index + 1, found.start(1) + 1), "quote"
    return None


def _closes(quote: str, rest: str) -> bool:
    if quote == "'":
        return "'" in rest.replace("''", "")
    escaped = False
    for char in rest:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return True
    return False


_LONG_INT = re.compile(r"\d{4301,}")


def _unmarked_error(exc: Exception, path: str, text: str) -> Diagnostic:
    """Errors ruamel raises without a mark, located from what they carry: a reader error's character
    offset, or the digit run Python refuses to convert (CPython's 4300-digit limit)."""
    position = getattr(exc, "position", None)
    if isinstance(position, int) and 0 <= position <= len(text):
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        character = getattr(exc, "character", None)
        if isinstance(character, str) and len(character) == 1:
            character = ord(character)
        shown = f"#x{character:04x}" if isinstance(character, int) else "(control character)"
        return make(
            "FT0003",
            Location(path, line, column, ""),
            detail=f"unacceptable character {shown}: control characters are not allowed in YAML",
            hint="remove the byte, or write it as an escape inside a double-quoted string (\\x1b)",
        )
    digits = _LONG_INT.search(text) if isinstance(exc, ValueError) else None
    if digits is not None:
        line = text.count("\n", 0, digits.start()) + 1
        column = digits.start() - (text.rfind("\n", 0, digits.start()) + 1) + 1
        return make(
            "FT0105",
            Location(path, line, column, ""),
            field="a number",
            value=f"{len(digits.group())} digits long",
            bound="a number of realistic size",
        )
    return make("FT0003", Location(path, 1, 1, ""), detail=_one_line(str(exc)))


def _convert(node, pointer: str, spec: LoadedSpec, counter: list[int], depth: int):
    """Copy ruamel's round-trip nodes into plain dict/list/scalars, recording positions."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar

    counter[0] += 1
    if counter[0] > MAX_NODES:
        raise _TooBig("FT0008", pointer, f"more than {MAX_NODES} nodes after expanding aliases")
    if depth > MAX_DEPTH:
        raise _TooBig("FT0008", pointer, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, (CommentedMap, CommentedSeq)) and _has_custom_tag(node):
        # a tag on a mapping or list is as foreign to the spec language as one on a scalar
        raise _TooBig("FT0009", pointer, f"tag {_tag_value(node)}")
    if isinstance(node, CommentedMap):
        out = {}
        for key in node:
            if not isinstance(key, (str, int, float, bool)) or isinstance(key, TaggedScalar):
                raise _TooBig("FT0009", pointer, f"mapping key of type {type(key).__name__}")
            skey = str(key).lower() if isinstance(key, bool) else str(key)
            child = join_pointer(pointer, skey)
            try:
                kl, kc = node.lc.key(key)
                spec.key_pos[child] = (kl + 1, kc + 1)
                vl, vc = node.lc.value(key)
                spec.value_pos[child] = (vl + 1, vc + 1)
            except (KeyError, TypeError, AttributeError):
                pass
            out[skey] = _convert(node[key], child, spec, counter, depth + 1)
        return out
    if isinstance(node, CommentedSeq):
        out_list = []
        for index, item in enumerate(node):
            child = join_pointer(pointer, index)
            try:
                line, col = node.lc.item(index)
                spec.value_pos[child] = (line + 1, col + 1)
                spec.key_pos.setdefault(child, (line + 1, col + 1))
            except (KeyError, TypeError, AttributeError):
                pass
            out_list.append(_convert(item, child, spec, counter, depth + 1))
        return out_list
    if isinstance(node, TaggedScalar) or _has_custom_tag(node):
        raise _TooBig("FT0009", pointer, f"tag {_tag_value(node)}")
    if node is None or isinstance(node, bool):
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    # timestamps, binary and other YAML types have no JSON equivalent: keep their text form
    return str(node)


def _tag_value(node) -> object:
    tag = getattr(node, "tag", None)
    value = getattr(tag, "value", tag)
    return value.replace("tag:yaml.org,2002:", "!!", 1) if isinstance(value, str) else value


def _has_custom_tag(node) -> bool:
    value = _tag_value(node)
    if isinstance(value, str) and value.startswith("!!"):
        # the standard tags of their own kind are harmless (`!!map`); `!!python/...` and friends are not
        return value.rsplit(":", 1)[-1] not in _PLAIN_TAGS
    return isinstance(value, str) and bool(value)


_PLAIN_TAGS = (
    "map",
    "seq",
    "str",
    "int",
    "float",
    "bool",
    "null",
    "omap",
    "set",
    "timestamp",
    "binary",
    "merge",
    "value",
)
