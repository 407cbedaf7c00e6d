"""Render recorded spec values as YAML in the schema's field order, each with an end-of-line comment
saying where it came from (shared by `ftspec import` and `ftspec init`)."""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

COMMENT_COLUMN = 44


@cache
def _order() -> dict[str, int]:
    """JSON pointer of every schema property -> its position in the schema (sections, then fields)."""
    from ftspec.compiler.core.schema import _deref, load_schema

    root = load_schema()
    order: dict[str, int] = {}

    def walk(schema: dict, pointer: str, depth: int) -> None:
        schema = _deref(schema, root)
        if depth > 4:
            return
        for name, sub in schema.get("properties", {}).items():
            child = f"{pointer}/{name}"
            order.setdefault(child, len(order))
            walk(sub, child, depth + 1)

    walk(root, "", 0)
    return order


def _sort_key(pointer: str) -> tuple:
    order = _order()
    parts = pointer.strip("/").split("/")
    key = []
    for i in range(1, len(parts) + 1):
        prefix = "/" + "/".join(parts[:i])
        key.append(order.get(prefix, 10_000))
    return tuple(key)


def build(values: dict[str, tuple[object, str]]):
    """(plain data, ruamel CommentedMap) from pointer -> (value, comment)."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    data: dict = {}
    root = CommentedMap()
    for pointer in sorted(values, key=_sort_key):
        value, comment = values[pointer]
        parts = pointer.strip("/").split("/")
        node, plain = root, data
        for part in parts[:-1]:
            if part not in node:
                node[part] = CommentedMap()
                plain[part] = {}
            node, plain = node[part], plain[part]
        leaf = parts[-1]
        plain[leaf] = value
        if isinstance(value, list):
            seq = CommentedSeq(value)
            if all(isinstance(v, (str, int, float)) for v in value):
                seq.fa.set_flow_style()
            node[leaf] = seq
        elif isinstance(value, dict):
            node[leaf] = CommentedMap(value)
        else:
            node[leaf] = value
        if comment:
            node.yaml_add_eol_comment(comment, leaf, column=COMMENT_COLUMN)
    return data, root


def _represent_float(representer, value: float):
    """Floats with a dot before the exponent (1.0e-05): YAML 1.1 readers (PyYAML) take `1e-05` as a string."""
    text = repr(value)
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def dump(root, header: list[str]) -> str:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.representer.add_representer(float, _represent_float)
    if header:
        root.yaml_set_start_comment("\n".join(header))
    buf = io.StringIO()
    yaml.dump(root, buf)
    return buf.getvalue()


def render(translation) -> tuple[dict, str]:
    """The spec of an importer's Translation, as data and as commented YAML."""
    data, root = build(translation.values)
    header = [
        f"Imported from the {translation.label} config {Path(translation.source.path).name} by `ftspec import`.",
        "Each value's comment says where it came from; `ftspec import` reported every key it",
        "dropped or changed. Review them, then run `ftspec check` and `ftspec compile`.",
    ]
    return data, dump(root, header)
