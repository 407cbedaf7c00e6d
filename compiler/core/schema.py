"""The spec's JSON Schema: loading it, validating against it, and turning its errors into diagnostics."""

from __future__ import annotations

import difflib
import json
from functools import cache, lru_cache
from importlib import resources

from ftspec.compiler.core.diagnostics import Diagnostic, make
from ftspec.compiler.core.loader import LoadedSpec, get_pointer, join_pointer, split_pointer

SPEC_SCHEMA = "spec.v1.schema.json"


@cache
def load_schema(name: str = SPEC_SCHEMA) -> dict:
    return json.loads(resources.files("ftspec.schemas").joinpath(name).read_text(encoding="utf-8"))


@cache
def validator(name: str = SPEC_SCHEMA):
    from jsonschema import Draft202012Validator

    return Draft202012Validator(load_schema(name))


MISSING = object()  # no value and no schema default at a pointer


@lru_cache(maxsize=512)
def schema_default(pointer: str) -> object:
    """The schema's `default` for the field at `pointer` (list indices as digits), or MISSING."""
    root = load_schema()
    node: object = root
    for token in split_pointer(pointer):
        node = _deref(node, root) if isinstance(node, dict) else {}
        if token.isdigit() and isinstance(node.get("items"), dict):
            node = node["items"]
            continue
        props = node.get("properties", {})
        if token not in props:
            return MISSING
        node = props[token]
    node = _deref(node, root) if isinstance(node, dict) else {}
    return node.get("default", MISSING)


def setting(data: object, pointer: str) -> object:
    """The value at `pointer` in a (resolved or raw) spec, else the schema's default for it.

    The one way downstream code reads a field that has a default, so no stage restates the default
    (`sequence_len` 2048, `seed` 42, ...) and a change of it in the schema reaches every stage.
    """
    value = get_pointer(data, pointer) if isinstance(data, dict) else MISSING
    if value is None or value is MISSING:
        default = schema_default(pointer)
        return None if default is MISSING else default
    return value


def _pointer(path) -> str:
    out = ""
    for token in path:
        out = join_pointer(out, token)
    return out


def _deref(schema: dict, root: dict) -> dict:
    while isinstance(schema, dict) and "$ref" in schema and schema["$ref"].startswith("#/"):
        node = root
        for part in schema["$ref"][2:].split("/"):
            node = node[part]
        merged = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**node, **merged}
    return schema


@lru_cache(maxsize=1)
def _key_index() -> dict[str, list[str]]:
    """Every property name in the spec schema -> the sections (JSON pointers) where it is allowed."""
    root = load_schema()
    index: dict[str, list[str]] = {}

    def walk(schema: dict, pointer: str, depth: int) -> None:
        schema = _deref(schema, root)
        if depth > 6:
            return
        for name, sub in schema.get("properties", {}).items():
            index.setdefault(name, []).append(pointer or "/")
            walk(sub, join_pointer(pointer, name), depth + 1)
        for branch in schema.get("oneOf", []) + schema.get("anyOf", []):
            walk(branch, pointer, depth + 1)
        if isinstance(schema.get("items"), dict):
            walk(schema["items"], pointer + "/*", depth + 1)

    walk(root, "", 0)
    return index


def suggest(word: str, choices) -> str | None:
    choices = [str(c) for c in choices]
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return lowered[word.lower()]
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if match:
        return match[0]
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def _prefix_match(word: str, choices: list[str]) -> str | None:
    """The one allowed key that starts with what was typed (`zero` -> `zero_stage`), if exactly one."""
    if len(word) < 3:
        return None
    hits = [c for c in choices if c.lower().startswith(word.lower())]
    return hits[0] if len(hits) == 1 else None


def _section_name(pointer: str) -> str:
    return "the top level" if pointer in ("", "/") else "`" + pointer.strip("/").replace("/", ".") + "`"


def _describe(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "mapping"


def schema_diagnostics(spec: LoadedSpec, schema_name: str = SPEC_SCHEMA) -> list[Diagnostic]:
    """Validate `spec.data` against the schema; every error becomes a located diagnostic."""
    out: list[Diagnostic] = []
    for error in validator(schema_name).iter_errors(spec.data):
        out.extend(_to_diagnostics(error, spec))
    return out


def _to_diagnostics(error, spec: LoadedSpec) -> list[Diagnostic]:

    pointer = _pointer(error.absolute_path)
    kw = error.validator
    if kw == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        extras = [k for k in error.instance if k not in allowed]
        # A key already written is not what a typo meant (`gpus: 8` next to `gpu:` is not `gpu`).
        unused = [k for k in allowed if k not in error.instance]
        found = []
        for key in extras:
            child = join_pointer(pointer, key)
            hint = None
            guess = suggest(key, unused) or _prefix_match(str(key), unused)
            if guess:
                hint = f"did you mean '{guess}'?"
            else:
                homes = [p for p in _key_index().get(key, []) if p not in (pointer or "/",)]
                if homes:
                    hint = f"'{key}' belongs under {_section_name(homes[0])}"
                elif allowed:
                    hint = "allowed here: " + ", ".join(sorted(allowed))
            found.append(
                make(
                    "FT0103",
                    spec.locate(child, key=True),
                    key=key,
                    section=_section_name(pointer),
                    hint=hint or "",
                )
            )
        return found
    loc = spec.locate(pointer)
    field = pointer.strip("/").replace("/", ".") or "the spec"
    if kw == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return [make("FT0102", spec.locate(pointer, key=True), key=missing, section=_section_name(pointer))]
    if kw == "type":
        expected = error.validator_value
        wanted = expected if isinstance(expected, list) else [expected]
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        hint = None
        if (
            "string" in wanted
            and isinstance(error.instance, (int, float))
            and not isinstance(error.instance, bool)
        ):
            # `python: 3.10` or `torch: 2.8`: YAML reads an unquoted version as a number (3.10 -> 3.1)
            raw = _scalar_text(spec, loc) or str(error.instance)
            if pointer.startswith("/environment/"):
                hint = (
                    f'write a quoted version specifier such as ">={raw}" or "=={raw}.*" '
                    f"(YAML reads an unquoted {raw} as a number)"
                )
            else:
                hint = f'quote it: "{raw}" (YAML reads an unquoted {raw} as a number)'
        return [
            make(
                "FT0101",
                loc,
                field=field,
                expected=expected,
                actual=_type_name(error.instance),
                value=_describe(error.instance),
                hint=hint,
            )
        ]
    if kw in ("enum", "const"):
        allowed = error.validator_value if kw == "enum" else [error.validator_value]
        hint = None
        if isinstance(error.instance, str):
            guess = suggest(error.instance, [a for a in allowed if isinstance(a, str)])
            if guess:
                hint = f"did you mean '{guess}'?"
        return [
            make(
                "FT0104",
                loc,
                field=field,
                value=_describe(error.instance),
                allowed=", ".join(_describe(a) for a in allowed),
                hint=hint or "",
            )
        ]
    if kw in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        words = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
        return [
            make(
                "FT0105",
                loc,
                field=field,
                value=_describe(error.instance),
                bound=f"{words[kw]} {error.validator_value}",
            )
        ]
    if kw in ("pattern", "minLength", "maxLength"):
        return [make("FT0106", loc, field=field, value=_describe(error.instance), detail=error.message)]
    if kw in ("oneOf", "anyOf"):
        alternatives = list(error.context or [])
        chosen = _closest_branch(alternatives, error.absolute_path)
        if not chosen:
            return [make("FT0107", loc, field=field, detail=error.message, others=0)]
        # Report the branch the value most nearly matches, at its own path, and how many others failed.
        inner = [d for e in chosen for d in _to_diagnostics(e, spec)]
        branches = {e.relative_schema_path[0] for e in alternatives if e.relative_schema_path}
        others = max(len(branches) - 1, 0)
        note = f" ({others} other form{'s' if others != 1 else ''} did not match either)" if others else ""
        # A nested oneOf (a mix entry inside the train list) has said how many forms it tried already.
        return [
            d
            if d.code == "FT0107"
            else make("FT0107", d.location, detail=d.message + note, hint=d.hint or "")
            for d in inner
        ]
    if kw in ("minProperties", "maxProperties") and error.schema.get("description"):
        return [make("FT0110", loc, field=field, detail=error.schema["description"])]
    if kw in ("minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties", "propertyNames"):
        return [make("FT0110", loc, field=field, detail=error.message)]
    return [make("FT0109", loc, field=field, detail=error.message)]


def _scalar_text(spec: LoadedSpec, loc) -> str | None:
    """The plain scalar as written at `loc` (`3.10`, not the float 3.1), or None."""
    line = spec.source_line(loc.line)
    if line is None or not loc.column:
        return None
    text = line[loc.column - 1 :].split(" #", 1)[0].strip().rstrip(",}]").strip()
    return text or None


def _closest_branch(alternatives: list, path) -> list:
    """The errors of the oneOf/anyOf branch the value nearly matches.

    A branch that failed only below the value, or on its value rather than its type, is the form the
    author meant (a list with one bad item means the list form, not the string form).
    """
    from jsonschema.exceptions import best_match

    by_branch: dict[object, list] = {}
    for e in alternatives:
        by_branch.setdefault(e.relative_schema_path[0] if e.relative_schema_path else None, []).append(e)
    depth = len(path)

    def score(errors: list) -> tuple:
        top = [e for e in errors if len(e.absolute_path) == depth]
        if not top:
            rank = 0  # the right shape, wrong inside
        elif any(e.validator == "type" for e in top):
            rank = 3  # the wrong kind of value altogether
        elif any(e.validator in ("const", "enum") for e in top):
            rank = 2
        else:
            rank = 1
        return (rank, len(errors))

    if not by_branch:
        return []
    best_key = min(by_branch, key=lambda k: score(by_branch[k]))
    errors = by_branch[best_key]
    if score(errors)[0] == 3:
        one = best_match(alternatives)
        return [one] if one is not None else []
    return errors
