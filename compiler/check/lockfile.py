"""lock.json: what exactly a build was compiled against, and drift detection against it.

The lock records the spec's hash, every data file's SHA-256, the model and its revision, the chat
template's hash (a built-in template, or the local tokenizer's own), the spec's package pins with the
versions installed where the build was compiled (importlib.metadata, never an import), and ftspec's
version. `check_lock` compares a lock with the spec and environment as they are now.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

from ftspec.compiler import __version__
from ftspec.compiler.core.artifacts import spec_sha256
from ftspec.compiler.core.diagnostics import Diagnostic, Location, make
from ftspec.compiler.core.loader import LoadedSpec, get_pointer
from ftspec.compiler.dataset.readers import source_sha256
from ftspec.compiler.dataset.sources import train_entries
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

LOCK_SCHEMA_VERSION = 1
LOCK_KIND = "ftspec-lock"

# Packages the runtime imports; their versions are locked even when the spec pins none of them.
RUNTIME_PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets")


def _sha256_file(path: Path) -> str | None:
    try:
        return source_sha256(path)  # a file's bytes, or a save_to_disk folder's Arrow shards
    except OSError:
        return None


def data_files(resolved: dict) -> list[tuple[str, str, str]]:
    """(role, JSON pointer, path as written) of every file the run reads besides the model."""
    out: list[tuple[str, str, str]] = []
    dataset = resolved.get("dataset", {})
    for entry in train_entries(dataset):
        out.append(("train", entry.pointer, entry.path))
    if isinstance(dataset.get("eval"), str):
        out.append(("eval", "/dataset/eval", dataset["eval"]))
    evaluation = resolved.get("evaluation", {}) or {}
    regression = evaluation.get("regression") or {}
    if isinstance(regression.get("prompts"), str):
        out.append(("regression", "/evaluation/regression/prompts", regression["prompts"]))
    task = evaluation.get("task") or {}
    if isinstance(task.get("json_schema"), str):
        out.append(("json_schema", "/evaluation/task/json_schema", task["json_schema"]))
    return out


def chat_template_lock(spec: LoadedSpec, resolved: dict) -> dict:
    """{name, sha256}: a built-in template's hash, or the local tokenizer's own template's hash;
    sha256 is null for a hub model's own template (not on this machine)."""
    from ftspec.compiler.dataset.chat_templates import (
        TemplateError,
        local_model_dir,
        model_template,
        template_source,
    )

    model = resolved.get("model", {})
    name = model.get("chat_template", "model")
    source: str | None = None
    if name != "model":
        try:  # a .jinja file (relative to the spec) is hashed like a built-in template
            source = template_source(name, spec.base_dir)
        except TemplateError:  # unreadable: lint and check report why
            source = None
    else:
        folder = local_model_dir(str(model.get("id", "")), spec.base_dir)
        info = model_template(folder) if folder is not None else None
        source = info.source if info is not None else None
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest() if source is not None else None
    return {"name": name, "sha256": digest}


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def locked_packages(resolved: dict, plan: dict | None = None) -> dict[str, dict]:
    pins = dict((resolved.get("environment") or {}).get("packages") or {})
    names = set(pins) | set(RUNTIME_PACKAGES)
    adapter = resolved.get("adapter", {})
    training = resolved.get("training", {})
    strategy = (plan or {}).get("derived", {}).get("strategy") or resolved.get("hardware", {}).get("strategy")
    if strategy == "deepspeed":
        names.add("deepspeed")
    if adapter.get("method") == "qlora" or "8bit" in str(training.get("optimizer", "")):
        names.add("bitsandbytes")
    return {
        name: {"pin": pins.get(name), "installed": installed_version(name)}
        for name in sorted(names, key=str.lower)
    }


def build_lock(spec: LoadedSpec, resolved: dict, plan: dict) -> dict:
    files = []
    for role, _pointer, written in data_files(resolved):
        files.append({"role": role, "path": written, "sha256": _sha256_file(spec.base_dir / written)})
    model = resolved.get("model", {})
    model_id = str(model.get("id", ""))
    return {
        "metadata": {
            "schema_version": LOCK_SCHEMA_VERSION,
            "kind": LOCK_KIND,
            "ftspec_version": __version__,
            "spec_sha256": plan["metadata"]["spec_sha256"],
            "spec_file": plan["metadata"]["spec_file"],
            # spec_sha256 hashes the file; values given with --set are not in it, so they are kept here.
            "overrides": {
                pointer.removeprefix("/spec"): get_pointer(resolved, pointer.removeprefix("/spec"))
                for pointer, source in sorted((plan.get("sources") or {}).items())
                if source == "cli" and pointer.startswith("/spec/")
            },
        },
        "spec_sha256": plan["metadata"]["spec_sha256"],
        "data": files,
        "model": {
            "id": model_id,
            "revision": model.get("revision"),
            "builtin": model_id.startswith("builtin:"),
            "chat_template": chat_template_lock(spec, resolved),
        },
        "python": {
            "pin": (resolved.get("environment") or {}).get("python"),
            "version": platform.python_version(),
        },
        "packages": locked_packages(resolved, plan),
    }


def read_lock(path: Path) -> dict:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    meta = data.get("metadata") if isinstance(data, dict) else None
    if not isinstance(meta, dict) or meta.get("kind") != LOCK_KIND:
        raise ValueError("not an ftspec lock file")
    if meta.get("schema_version") != LOCK_SCHEMA_VERSION:
        raise ValueError(
            f"lock schema_version {meta.get('schema_version')!r} is not one this ftspec reads "
            f"({LOCK_SCHEMA_VERSION})"
        )
    return data


def _short(digest: str | None) -> str:
    return (digest or "none")[:12]


def check_lock(lock_path: Path, spec: LoadedSpec, resolved: dict) -> list[Diagnostic]:
    """Drift between a lock and the spec, data, model and installed packages as they are now."""
    lock_path = Path(lock_path)
    try:
        lock = read_lock(lock_path)
    except (OSError, ValueError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return [make("FT0610", Location(str(lock_path), None, None, ""), path=str(lock_path), detail=detail)]
    diags: list[Diagnostic] = []
    current = spec_sha256(spec)
    if lock.get("spec_sha256") != current:
        diags.append(
            make("FT0611", spec.locate(""), locked=_short(lock.get("spec_sha256")), current=_short(current))
        )
    locked_files = {(f.get("role"), f.get("path")): f.get("sha256") for f in lock.get("data", [])}
    for role, pointer, written in data_files(resolved):
        now = _sha256_file(spec.base_dir / written)
        before = locked_files.get((role, written))
        if (role, written) not in locked_files or before != now:
            diags.append(
                make(
                    "FT0612",
                    spec.locate(pointer),
                    path=written,
                    locked=_short(before) if (role, written) in locked_files else "not locked",
                    current=_short(now),
                )
            )
    model = resolved.get("model", {})
    locked_model = lock.get("model", {})
    was = f"{locked_model.get('id')}@{locked_model.get('revision') or 'unpinned'}"
    now_model = f"{model.get('id')}@{model.get('revision') or 'unpinned'}"
    if was != now_model:
        pointer = "/model/revision" if locked_model.get("id") == model.get("id") else "/model/id"
        diags.append(make("FT0613", spec.locate(pointer), locked=was, current=now_model))
    else:
        template = chat_template_lock(spec, resolved)
        if template != locked_model.get("chat_template"):
            diags.append(make("FT0616", spec.locate("/model/chat_template"), model=model.get("id")))
    pins_now = (resolved.get("environment") or {}).get("packages") or {}
    for name, entry in sorted((lock.get("packages") or {}).items()):
        pin_then, pin_now = entry.get("pin"), pins_now.get(name)
        if pin_then != pin_now:
            diags.append(
                make(
                    "FT0617",
                    spec.locate(f"/environment/packages/{name}" if pin_now else "/environment"),
                    package=name,
                    locked=pin_then or "none",
                    current=pin_now or "none",
                )
            )
        installed = installed_version(name)
        locked_version = entry.get("installed")
        if installed != locked_version and locked_version is not None:
            diags.append(
                make(
                    "FT0614",
                    Location(str(lock_path), None, None, f"/packages/{name}"),
                    package=name,
                    current=installed or "not installed",
                    locked=locked_version,
                )
            )
        if pin_now and installed:
            try:
                ok = Version(installed) in SpecifierSet(pin_now)
            except (InvalidSpecifier, InvalidVersion):
                ok = True  # the pins stage reports malformed pins
            if not ok:
                diags.append(
                    make(
                        "FT0615",
                        spec.locate(f"/environment/packages/{name}"),
                        package=name,
                        current=installed,
                        pin=pin_now,
                    )
                )
    for name in sorted(set(pins_now) - set(lock.get("packages") or {})):
        diags.append(
            make(
                "FT0617",
                spec.locate(f"/environment/packages/{name}"),
                package=name,
                locked="none",
                current=pins_now[name],
            )
        )
    return diags
