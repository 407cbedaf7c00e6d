"""Cross-field rules on `model`: remote code, revision pinning, local folders, architecture shape."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ftspec.compiler.core import model_files
from ftspec.compiler.core.diagnostics import Diagnostic
from ftspec.compiler.lint.rules.context import RuleContext

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Names that move with every push: pinning to them pins nothing.
_MOVING_REVISIONS = {"main", "master", "head", "latest", "dev", "develop"}


def model_kind(model_id: str, base_dir: Path) -> str:
    """builtin | gguf | local | hub. Hub ids are `name` or `org/name`; a name ending in .gguf is a GGUF
    file (relative to the spec or absolute); anything else path-like is a local folder."""
    if model_id.startswith("builtin:"):
        return "builtin"
    if model_files.is_gguf(model_id):
        return "gguf"
    if model_id.startswith((".", "/", "~")) or model_id.count("/") >= 2 or "\\" in model_id:
        return "local"
    try:
        if (base_dir / model_id).is_dir():
            return "local"
    except (OSError, ValueError):
        pass
    return "hub"


def _local_folder(model_id: str, base_dir: Path) -> Path:
    path = Path(model_id).expanduser()
    return path if path.is_absolute() else base_dir / path


def trust_remote_code(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0231: trust_remote_code: true runs the model repository's Python code."""
    if ctx.get("/model/trust_remote_code", "bool") is True and not getattr(
        ctx.options, "allow_remote_code", False
    ):
        yield ctx.diag("FT0231", "/model/trust_remote_code")


def revision(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0232 hub model without revision; FT0233 revision that moves; FT0252 revision on a local model."""
    model_id = ctx.get("/model/id", "str")
    if not model_id:
        return
    kind = model_kind(model_id, ctx.base_dir)
    rev = ctx.get("/model/revision", "str")
    if kind == "hub":
        if not ctx.given("/model/revision"):
            yield ctx.diag("FT0232", "/model/id", model=model_id)
        elif rev is not None and rev.strip().lower() in _MOVING_REVISIONS:
            yield ctx.diag("FT0233", "/model/revision", revision=rev)
    elif rev is not None:
        yield ctx.diag("FT0252", "/model/revision", model=model_id, kind=kind)


def local_model(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0234: a local model folder that does not exist or holds no config.json."""
    model_id = ctx.get("/model/id", "str")
    if not model_id or not ctx.check_files or model_kind(model_id, ctx.base_dir) != "local":
        return
    folder = _local_folder(model_id, ctx.base_dir)
    try:
        if not folder.is_dir():
            yield ctx.diag("FT0234", "/model/id", model=model_id, detail="no such folder")
        elif not (folder / "config.json").is_file():
            yield ctx.diag("FT0234", "/model/id", model=model_id, detail="the folder holds no config.json")
    except (OSError, ValueError) as exc:
        yield ctx.diag("FT0234", "/model/id", model=model_id, detail=str(exc))


_GGUF_MAGIC = b"GGUF"


def gguf_model(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0262: a .gguf model.id that does not exist or does not start with the GGUF magic bytes."""
    model_id = ctx.get("/model/id", "str")
    if not model_id or not ctx.check_files or model_kind(model_id, ctx.base_dir) != "gguf":
        return
    path = model_files.gguf_file(model_id, ctx.base_dir)
    try:
        if not path.exists():
            yield ctx.diag("FT0262", "/model/id", model=model_id, detail="no such file")
        elif not path.is_file():
            yield ctx.diag("FT0262", "/model/id", model=model_id, detail="it is not a file")
        else:
            with open(path, "rb") as fh:
                if fh.read(4) != _GGUF_MAGIC:
                    yield ctx.diag(
                        "FT0262", "/model/id", model=model_id, detail="the file does not start with 'GGUF'"
                    )
    except OSError as exc:
        yield ctx.diag("FT0262", "/model/id", model=model_id, detail=str(exc))


def architecture(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0247: an architecture block whose numbers cannot describe one model."""
    base = "/model/architecture"
    if not isinstance(ctx.raw(base), dict):
        return
    heads = ctx.get(f"{base}/heads", "int") if ctx.given(f"{base}/heads") else None
    kv_heads = ctx.get(f"{base}/kv_heads", "int") if ctx.given(f"{base}/kv_heads") else None
    hidden = ctx.get(f"{base}/hidden", "int") if ctx.given(f"{base}/hidden") else None
    if heads and kv_heads:
        if kv_heads > heads:
            yield ctx.diag(
                "FT0247", f"{base}/kv_heads", detail=f"kv_heads ({kv_heads}) exceeds heads ({heads})"
            )
        elif heads % kv_heads:
            yield ctx.diag(
                "FT0247",
                f"{base}/kv_heads",
                detail=f"heads ({heads}) is not a multiple of kv_heads ({kv_heads})",
            )
    if heads and hidden and hidden % heads and not ctx.given(f"{base}/head_dim"):
        yield ctx.diag(
            "FT0247",
            f"{base}/heads",
            detail=f"hidden ({hidden}) is not a multiple of heads ({heads}) and head_dim is not given",
        )
    experts = ctx.get(f"{base}/experts", "int")
    per_token = (
        ctx.get(f"{base}/experts_per_token", "int") if ctx.given(f"{base}/experts_per_token") else None
    )
    if (
        experts is not None
        and experts > 1
        and per_token is None
        and not ctx.reported(f"{base}/experts_per_token")
    ):
        yield ctx.diag(
            "FT0247", f"{base}/experts", detail=f"a mixture of {experts} experts needs experts_per_token"
        )
    if experts is not None and per_token is not None and per_token > experts:
        yield ctx.diag(
            "FT0247",
            f"{base}/experts_per_token",
            detail=f"experts_per_token ({per_token}) exceeds experts ({experts})",
        )


def builtin_model(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0275: a `builtin:` id that names no built-in model (the runtime's FT0702, at launch)."""
    from difflib import get_close_matches

    from ftspec.compiler.core.model_files import builtin_names

    model_id = ctx.get("/model/id", "str")
    if not model_id or not model_id.startswith("builtin:"):
        return
    known = builtin_names()
    if model_id in known:
        return
    close = get_close_matches(model_id, known, n=1)
    fix = f"did you mean `{close[0]}`?" if close else f"use one of {', '.join(known)}"
    yield ctx.diag("FT0275", "/model/id", model=model_id, known=", ".join(known), fix=fix)


RULES = [trust_remote_code, revision, local_model, gguf_model, architecture, builtin_model]
