"""The rules' view of a spec: `RuleContext.get` returns None for a value of the wrong type (or one the
schema already reported) instead of raising, plus schema defaults, locations and options."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import cast

from ftspec.compiler.core.diagnostics import Diagnostic, Location, make
from ftspec.compiler.core.loader import LoadedSpec, get_pointer, split_pointer
from ftspec.compiler.core.schema import MISSING, schema_default

_INVALID = object()

# What `get` accepts for each kind; bool is excluded from the numbers on purpose (True is an int).
_KINDS: dict[str, Callable[[object], bool]] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "num": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "list": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
}

Rule = Callable[["RuleContext"], Iterable[Diagnostic]]


class RuleContext:
    """The spec as the rules see it: raw values, schema defaults, locations, options."""

    def __init__(self, spec: LoadedSpec, options, schema_diags: list[Diagnostic]):
        self.spec = spec
        self.data = spec.data if isinstance(spec.data, dict) else {}
        self.options = options
        # Pointers the schema already found wrong: rules stay quiet about them instead of piling on.
        self._bad = {d.pointer for d in schema_diags if d.severity == "error" and d.code != "FT0103"}
        self._cache: dict[str, object] = {}

    # ---- reading values -------------------------------------------------------------------------
    def raw(self, pointer: str) -> object:
        """The value exactly as written; MISSING when absent (or a parent is not a mapping/list)."""
        return get_pointer(self.data, pointer, MISSING)

    def given(self, pointer: str) -> bool:
        return self.raw(pointer) is not MISSING

    def reported(self, pointer: str) -> bool:
        """Whether the schema check already reported this field or something inside it."""
        prefix = pointer + "/"
        return pointer in self._bad or any(p.startswith(prefix) for p in self._bad)

    def _lookup(self, pointer: str) -> object:
        node: object = self.data
        for token in split_pointer(pointer):
            if isinstance(node, dict):
                if token not in node:
                    return schema_default(pointer)
                node = node[token]
            elif isinstance(node, list) and token.isdigit():
                if int(token) >= len(node):
                    return MISSING
                node = node[int(token)]
            else:
                return _INVALID  # a parent of the wrong type: the schema check reports it
        return node

    def get(self, pointer: str, kind: str | tuple, default: object = None) -> object:
        """The value at `pointer` (the schema default when absent) if it has the expected kind, else
        `default`. `kind` is one of int, num, bool, str, list, dict, or a tuple of allowed values."""
        if self.reported(pointer):
            return default
        value = self._lookup(pointer)
        if value is MISSING or value is _INVALID:
            return default
        if isinstance(kind, tuple):
            ok = any(value == k and type(value) is type(k) for k in kind)
        else:
            ok = _KINDS[kind](value)
        return value if ok else default

    # ---- locations and findings -----------------------------------------------------------------
    def at(self, pointer: str, *, key: bool = False) -> Location:
        return self.spec.locate(pointer, key=key)

    def diag(self, code: str, pointer: str, *, key: bool = False, **fields: object) -> Diagnostic:
        return make(code, self.at(pointer, key=key), **fields)

    def diag_at_first(self, code: str, pointers: tuple[str, ...], **fields: object) -> Diagnostic:
        """A finding about the first of `pointers` (a field that may be left at its default): shown at
        that field when it is written, else at the first written field that makes it matter."""
        for pointer in pointers:
            if self.given(pointer):
                loc = self.at(pointer)
                break
        else:
            loc = self.at(pointers[0], key=True)
        return make(code, Location(loc.file, loc.line, loc.column, pointers[0]), **fields)

    # ---- shared facts the rules need ------------------------------------------------------------
    @property
    def base_dir(self) -> Path:
        return self.spec.base_dir

    @property
    def repo_root(self) -> Path:
        """options.repo_root, else the nearest folder above the spec holding .git, else its folder."""
        if "repo_root" not in self._cache:
            given = getattr(self.options, "repo_root", None)
            if given:
                root = Path(given).resolve()
            else:
                root = self.base_dir
                for folder in (self.base_dir, *self.base_dir.parents):
                    if (folder / ".git").exists():
                        root = folder
                        break
            self._cache["repo_root"] = root
        return self._cache["repo_root"]  # type: ignore[return-value]

    @property
    def check_files(self) -> bool:
        return bool(getattr(self.options, "check_files", True))

    def method(self) -> str | None:
        return cast("str | None", self.get("/adapter/method", ("lora", "qlora", "full")))

    def has_eval_data(self) -> bool | None:
        """True/False when known; None when the dataset section is too broken to tell."""
        if not isinstance(self.raw("/dataset"), dict):
            return None
        return self.given("/dataset/eval") or self.given("/dataset/eval_split")

    def memo(self, key: str, compute: Callable[[], object]) -> object:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]
