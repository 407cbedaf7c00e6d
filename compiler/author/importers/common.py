"""What every importer shares: reading the peer's config, recording each spec value with where it
came from, reporting every key that is dropped or changed at its line in the SOURCE config, and
rendering the spec as commented YAML.

An importer reads keys through `Translation.take()`, which marks them as handled; at the end every
top-level key that was neither taken nor empty becomes a diagnostic, so nothing is dropped silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, cast

from ftspec.compiler.core.diagnostics import Diagnostic, Location, make
from ftspec.compiler.core.loader import LoadedSpec, join_pointer, load_spec

_MISSING = object()


@cache
def load_table(name: str) -> dict:
    """A data file of compiler/data (import_<tool>.json, import_common.json), without its "$comment"
    keys (at any depth), so a lookup by a config's value can never find a comment."""
    text = resources.files("ftspec.compiler.data").joinpath(name).read_text(encoding="utf-8")
    return json.loads(text, object_hook=lambda obj: {k: v for k, v in obj.items() if not k.startswith("$")})


@dataclass
class ImportOptions:
    """What the command line adds to the peer's config."""

    output: Path  # where the spec will be written: relative paths in it are relative to its folder
    gpu: str | None = None
    gpus: int | None = None
    name: str | None = None


@dataclass
class ImportResult:
    text: str  # the spec, as YAML with comments
    data: dict  # the same spec as plain data
    diagnostics: list[Diagnostic]
    source: LoadedSpec
    extra_sources: list[LoadedSpec] = field(default_factory=list)  # DeepSpeed JSON and the like


def is_empty(value: object) -> bool:
    """`wandb_project:` (null), an empty string or an empty collection mean "unset"."""
    return value is None or (isinstance(value, (str, list, dict)) and len(value) == 0)


def describe(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def spec_name(text: str) -> str:
    """A run name that matches the schema's pattern ([a-z0-9][a-z0-9._-]*)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return (name or "imported")[:100]


class Translation:
    """The spec being built from one peer config, plus the diagnostics about the translation."""

    def __init__(self, tool: str, label: str, source: LoadedSpec, options: ImportOptions):
        self.tool = tool  # key of the data tables: axolotl | llamafactory | torchtune
        self.label = label  # how messages name the tool: Axolotl | LLaMA-Factory | torchtune
        self.source = source
        self.options = options
        self.config: dict = source.data if isinstance(source.data, dict) else {}
        self.values: dict[str, tuple[object, str]] = {}  # spec pointer -> (value, comment)
        self.diagnostics: list[Diagnostic] = []
        self.taken: set[str] = set()  # top-level source keys that were read
        self.defaults_written: list[str] = []
        self.extra_sources: list[LoadedSpec] = []
        self.hub_reported: dict[str, str] = {}  # Hub dataset -> local path, reported once
        self.noted: set[str] = set()  # notes given once per config

    # --- reading the source ------------------------------------------------------------------
    def take(self, key: str, default: object = None) -> object:
        """The value of a top-level key (default when absent or empty); marks it as handled."""
        self.taken.add(key)
        value = self.config.get(key, _MISSING)
        return default if value is _MISSING or is_empty(value) else value

    def has(self, key: str) -> bool:
        return key in self.config and not is_empty(self.config[key])

    def line(self, pointer: str) -> int | None:
        return self.source.locate(pointer, key=True).line

    def at(self, pointer: str, source: LoadedSpec | None = None) -> Location:
        """Where a source key is: its line and column in the peer's config."""
        return (source or self.source).locate(pointer, key=True)

    def origin(self, pointer: str) -> str:
        """The comment that says where a value came from: `axolotl lora_r, line 20`."""
        line = self.line(pointer)
        name = pointer.strip("/").replace("/", ".")
        return f"{self.tool} {name}" + (f", line {line}" if line else "")

    # --- writing the spec --------------------------------------------------------------------
    def set(self, pointer: str, value: object, comment: str) -> None:
        self.values[pointer] = (value, comment)

    def setdefault(self, pointer: str, value: object, comment: str) -> None:
        if pointer not in self.values:
            self.values[pointer] = (value, comment)

    def get(self, pointer: str, default: object = None) -> object:
        return self.values[pointer][0] if pointer in self.values else default

    def unset(self, pointer: str) -> None:
        self.values.pop(pointer, None)

    def put(self, key: str, target: str, value: object) -> None:
        """A value taken from source key `key` (a JSON pointer in the source), written at `target`."""
        self.set(target, value, self.origin(key))

    # --- reporting -----------------------------------------------------------------------------
    def report(self, code: str, pointer: str, source: LoadedSpec | None = None, **fields: object) -> None:
        from ftspec.compiler.core.diagnostics import catalog

        fields.setdefault("tool", self.label)
        if catalog()[code].hint == "{hint}":
            fields.setdefault("hint", "")
        self.diagnostics.append(make(code, self.at(pointer, source), **fields))

    def drop(
        self,
        pointer: str,
        reason: str,
        *,
        severity: str | None = None,
        hint: str = "",
        source: LoadedSpec | None = None,
    ) -> None:
        """FT0901: the key at `pointer` is not carried into the spec."""
        key = pointer.strip("/").replace("/", ".")
        self.diagnostics.append(
            make("FT0901", self.at(pointer, source), key=key, reason=reason, hint=hint, severity=severity)
        )

    def changed(
        self,
        pointer: str,
        value: object,
        target: str,
        new: object,
        reason: str,
        *,
        hint: str = "",
        severity: str | None = None,
    ) -> None:
        """FT0902: the value at `pointer` is written as `target: new` because it cannot be kept."""
        key = pointer.strip("/").replace("/", ".")
        self.diagnostics.append(
            make(
                "FT0902",
                self.at(pointer),
                key=key,
                value=describe(value),
                field=target.strip("/").replace("/", "."),
                new=describe(new),
                reason=reason,
                hint=hint,
                severity=severity,
            )
        )

    def note(self, pointer: str, detail: str, hint: str = "", *, once: bool = False) -> None:
        if once:
            if detail in self.noted:
                return
            self.noted.add(detail)
        self.report("FT0905", pointer, detail=detail, hint=hint)

    def unsupported(self, pointer: str, detail: str, hint: str = "") -> None:
        self.report("FT0906", pointer, detail=detail, hint=hint)

    # --- shared translations -----------------------------------------------------------------
    def typed(self, key: str, value: object, kind: str) -> object:
        """`value` as the JSON type the spec field wants; _MISSING when it cannot be converted."""
        try:
            if kind == "bool":
                if isinstance(value, bool):
                    return value
                if isinstance(value, str) and value.lower() in ("true", "false"):
                    return value.lower() == "true"
                return _MISSING
            if kind == "int":
                if isinstance(value, bool):
                    return _MISSING
                number = float(cast(Any, value))  # anything: float() raises TypeError, caught below
                return int(number) if number.is_integer() else _MISSING
            if kind == "number":
                if isinstance(value, bool):
                    return _MISSING
                # "2e-4" strings: the peers accept them and convert the same way
                number = float(cast(Any, value))
                return int(number) if isinstance(value, int) else number
            if kind == "str":
                return str(value)
        except (TypeError, ValueError):
            return _MISSING
        return _MISSING

    def put_typed(self, pointer: str, field: str, value: object, kind: str) -> None:
        """Set `field` from the peer's value at `pointer` as a `kind`, or drop it with an error."""
        converted = self.typed(pointer, value, kind)
        if converted is _MISSING:
            self.drop(
                pointer,
                f"the value {describe(value)} is not {kind}-valued, as "
                f"{field.strip('/').replace('/', '.')} needs",
                severity="error",
            )
        else:
            self.set(field, converted, self.origin(pointer))

    def direct(self, table: dict) -> None:
        """One key, one field, same meaning: copy it (converting '2e-4' strings and the like)."""
        for key, entry in table.items():
            if not self.has(key):
                self.taken.add(key)
                continue
            raw = self.take(key)
            value = self.typed(key, raw, entry["type"])
            if value is _MISSING:
                self.drop(
                    f"/{key}",
                    f"the value {describe(raw)} is not {entry['type']}-valued, as "
                    f"{entry['field'].strip('/').replace('/', '.')} needs",
                    severity="error",
                )
                continue
            self.put(f"/{key}", entry["field"], value)

    def defaults(self, entries: list[dict], *, adapter: bool, max_steps: bool) -> None:
        """Write the peer's defaults for unset keys where they differ from ftspec's own."""
        for entry in entries:
            when = entry.get("when")
            if (when == "adapter" and not adapter) or (when == "no_max_steps" and max_steps):
                continue
            if entry["field"] in self.values:
                continue
            if entry["key"] == "warmup":
                if "/training/warmup_ratio" in self.values or "/training/warmup_steps" in self.values:
                    continue
            elif self.has(entry["key"]):
                continue
            self.peer_default(entry["field"], entry["value"], f"{self.tool} default for unset {entry['key']}")

    def peer_default(self, field: str, value: object, comment: str, why: str = "") -> bool:
        """The peer's default for a setting its config leaves unset: written (and listed in the FT0903
        report) when it differs from ftspec's own default, so the spec trains the same way."""
        if schema_default(field) == value:
            return False
        self.set(field, value, comment)
        shown = field.strip("/").replace("/", ".")
        self.defaults_written.append(f"{shown}: {describe(value)}" + (f" ({why})" if why else ""))
        return True

    def optimizer(self, pointer: str, name: object, extra: dict | None = None) -> None:
        table = dict(load_table("import_common.json")["hf_optimizers"]["map"])
        table.update(extra or {})
        entry = table.get(str(name).lower())
        if entry is None or entry["to"] is None:
            fallback = "adamw_torch"
            why = (
                "ftspec has no such optimizer" if entry is None else "ftspec does not support this optimizer"
            )
            self.changed(
                pointer,
                name,
                "/training/optimizer",
                fallback,
                why,
                hint="choose one of adamw_torch, adamw_8bit, paged_adamw_8bit, paged_adamw_32bit, sgd",
                severity="warning",
            )
            self.set("/training/optimizer", fallback, f"replaces {self.tool} {name} (not supported)")
            return
        self.set("/training/optimizer", entry["to"], self.origin(pointer))
        if entry["to"] != str(name).lower():
            self.note(
                pointer,
                f"optimizer {name} is written as {entry['to']}: "
                + entry.get("note", "the same optimizer under ftspec's name"),
            )

    def scheduler(self, pointer: str, name: object) -> None:
        entry = load_table("import_common.json")["hf_schedulers"]["map"].get(str(name).lower())
        if entry is None or entry["to"] is None:
            self.changed(
                pointer,
                name,
                "/training/scheduler",
                "cosine",
                "ftspec's schedules are cosine, linear, constant and constant_with_warmup",
                hint="pick the closest of those four and check the learning-rate curve",
            )
            self.set("/training/scheduler", "cosine", f"replaces {self.tool} {name} (not supported)")
            return
        self.set("/training/scheduler", entry["to"], self.origin(pointer))

    def chat_template(self, pointer: str, name: object) -> None:
        table = load_table("import_common.json")["chat_templates"]
        ours = table["map"].get(str(name))
        if ours is None:
            self.changed(
                pointer,
                name,
                "/model/chat_template",
                "model",
                "ftspec's built-in templates are chatml, llama3 and alpaca",
                hint="`model` uses the tokenizer's own template; check that it renders your data as before",
            )
            self.set("/model/chat_template", "model", f"replaces {self.tool} template {name}")
            return
        self.set("/model/chat_template", ours, self.origin(pointer))
        if str(name) in table.get("notes", {}):
            self.note(pointer, f"template {name} is written as {ours}: {table['notes'][str(name)]}")

    def eval_split(self, pointer: str, value: object, train_files: list[Path]) -> None:
        """A validation size (fraction or absolute count) as dataset.eval_split (0 < x < 0.5)."""
        typed = self.typed(pointer, value, "number")
        number = cast(float, typed)  # an int or a float when not _MISSING
        if typed is _MISSING or number < 0:
            self.drop(pointer, f"{describe(value)} is not a size", severity="error")
            return
        if number == 0:
            return  # no evaluation split, as in the source
        fraction = float(number)
        if number >= 1:  # an absolute number of examples: convert when the data is here to count
            total = sum(_count_records(p) for p in train_files) if train_files else 0
            if not total or any(not p.is_file() for p in train_files):
                self.drop(
                    pointer,
                    f"{number} is a number of examples; ftspec's eval_split is a fraction "
                    "and the training data is not here to convert it",
                    severity="warning",
                    hint="set dataset.eval_split (0 < x < 0.5) or dataset.eval (a held-out file)",
                )
                return
            fraction = round(number / total, 6)
            self.note(pointer, f"{number} examples of {total} is written as eval_split: {fraction}")
        if not 0 < fraction < 0.5:
            self.drop(
                pointer,
                f"an evaluation split of {fraction:g} leaves too little training data; "
                "ftspec's eval_split must be below 0.5",
                severity="warning",
                hint="hold out a separate file as dataset.eval",
            )
            return
        self.set("/dataset/eval_split", fraction, self.origin(pointer))

    def output_dir(self, pointer: str, value: object) -> None:
        text = str(value).replace("\\", "/")
        if text.startswith("/") or re.match(r"^[A-Za-z]:/", text) or "${" in text or ".." in Path(text).parts:
            self.changed(
                pointer,
                value,
                "/output/dir",
                f"runs/{self.get('/name')}",
                "output.dir must be a relative path inside the repository",
            )
            return
        rel = str(Path(text)).replace("\\", "/")
        self.set("/output/dir", rel, self.origin(pointer))
        self.note(
            pointer,
            f"output_dir {value} is written as output.dir: {rel}, which is relative to the "
            "spec's folder rather than to the folder the training was launched from",
        )

    def hardware(self) -> None:
        table = load_table("import_common.json")["default_hardware"]
        gpu = self.options.gpu or table["gpu"]
        sharded = self.get("/hardware/strategy") in ("fsdp", "deepspeed")
        gpus = (
            self.options.gpus
            or self.get("/hardware/gpus_per_node")
            or table["gpus_per_node_sharded" if sharded else "gpus_per_node"]
        )
        comment = "from --gpu" if self.options.gpu else "assumed: not in the config"
        self.set("/hardware/gpu", gpu, comment)
        self.set(
            "/hardware/gpus_per_node",
            gpus,
            "from --gpus"
            if self.options.gpus
            else self.values.get("/hardware/gpus_per_node", (None, comment))[1],
        )
        if not self.options.gpu:
            self.diagnostics.append(
                make("FT0908", Location(self.source.path, 1, 1, ""), tool=self.label, gpu=gpu, gpus=gpus)
            )

    def deepspeed(self, pointer: str, value: object) -> None:
        """Read the DeepSpeed JSON the config points at: ZeRO stage and offload."""
        if isinstance(value, dict):
            self._deepspeed_config(pointer, value, None)
            return
        found, looked = self.find_file(str(value))
        if found is None:
            stage = _stage_from_name(str(value))
            consequence = "the ZeRO stage " + (
                f"{stage} is taken from the file name"
                if stage is not None
                else "is unknown, so hardware.strategy is left to auto"
            )
            self.report(
                "FT0907", pointer, key=pointer.strip("/"), path=value, looked=looked, consequence=consequence
            )
            if stage is not None:
                self.set("/hardware/strategy", "deepspeed", f"{self.tool} deepspeed (file not found)")
                self.set("/hardware/zero_stage", stage, f"from the file name {Path(str(value)).name}")
                if "offload" in Path(str(value)).name.lower():
                    self.set(
                        "/hardware/offload",
                        "optimizer_and_params",
                        f"from the file name {Path(str(value)).name}",
                    )
            return
        loaded = load_spec(found)
        if not isinstance(loaded.data, dict):
            self.report(
                "FT0907",
                pointer,
                key=pointer.strip("/"),
                path=value,
                looked=f"{found} is not a JSON object",
                consequence="hardware.strategy is left to auto",
            )
            return
        self.extra_sources.append(loaded)
        self._deepspeed_config(pointer, loaded.data, loaded)

    def _deepspeed_config(self, pointer: str, ds: dict, loaded: LoadedSpec | None) -> None:
        zero = ds.get("zero_optimization") or {}
        stage = zero.get("stage", 0)
        where = f"{Path(loaded.path).name}" if loaded else f"{self.tool} {pointer.strip('/')}"
        self.set("/hardware/strategy", "deepspeed", self.origin(pointer))
        self.set(
            "/hardware/zero_stage",
            int(stage) if str(stage).isdigit() else 0,
            f"{where} zero_optimization.stage",
        )
        opt_dev = (zero.get("offload_optimizer") or {}).get("device", "none")
        par_dev = (zero.get("offload_param") or {}).get("device", "none")
        offload = "none"
        if par_dev in ("cpu", "nvme"):
            offload = "optimizer_and_params"
        elif opt_dev in ("cpu", "nvme"):
            offload = "optimizer"
        if offload != "none":
            self.set("/hardware/offload", offload, f"{where} offload_*.device")
        if "nvme" in (opt_dev, par_dev):
            self.report(
                "FT0902",
                "/zero_optimization",
                loaded,
                key="offload device",
                value="nvme",
                field="hardware.offload",
                new=offload,
                reason="ftspec offloads to CPU memory only",
            )
        tuning = [k for k in zero if k not in ("stage", "offload_optimizer", "offload_param")]
        tuning += [
            k
            for k in ds
            if k
            not in (
                "zero_optimization",
                "bf16",
                "fp16",
                "train_batch_size",
                "train_micro_batch_size_per_gpu",
                "gradient_accumulation_steps",
                "gradient_clipping",
            )
        ]
        if loaded is not None and tuning:
            first = min(
                tuning,
                key=lambda k: (
                    loaded.locate(
                        join_pointer("/zero_optimization", k) if k in zero else f"/{k}", key=True
                    ).line
                    or 0
                ),
            )
            ptr = join_pointer("/zero_optimization", first) if first in zero else f"/{first}"
            self.diagnostics.append(
                make(
                    "FT0901",
                    loaded.locate(ptr, key=True),
                    key=", ".join(tuning),
                    reason="ftspec's compile writes its own DeepSpeed config from the spec; these tuning "
                    "settings change speed and memory, not the result",
                    severity="info",
                )
            )
        for key in (
            "train_batch_size",
            "train_micro_batch_size_per_gpu",
            "gradient_accumulation_steps",
            "gradient_clipping",
        ):
            if key in ds and ds[key] != "auto" and loaded is not None:
                self.diagnostics.append(
                    make(
                        "FT0901",
                        loaded.locate(f"/{key}", key=True),
                        key=key,
                        reason="batch sizes and clipping come from the training section",
                        severity="warning",
                        hint="check that training.micro_batch_size, gradient_accumulation_steps and "
                        "max_grad_norm say the same",
                    )
                )

    def launch_roots(self) -> list[Path]:
        """Where the peer tool resolves a relative path: the folder it is launched from (the working
        directory, normally the repository root: `deepspeed: examples/deepspeed/...`, LLaMA-Factory's
        `dataset_dir: data`), then the repository holding the config, then the config's own folder."""
        from ftspec.compiler.core.paths import find_repo_root

        base = Path(self.source.path).resolve().parent
        return list(dict.fromkeys([Path.cwd().resolve(), find_repo_root(base), base]))

    def find_file(self, name: str) -> tuple[Path | None, str]:
        """A file the config names: as given (relative to where the peer tool would be launched, see
        launch_roots), else beside the config."""
        base = Path(self.source.path).resolve().parent
        given = Path(name)
        candidates = [given] if given.is_absolute() else [root / given for root in self.launch_roots()]
        candidates.append(base / given.name)
        for c in candidates:
            if c.is_file():
                return c, ""
        return None, "looked for " + " and ".join(str(c) for c in dict.fromkeys(candidates))

    def spec_path(self, path: Path) -> str:
        """`path` relative to the folder the spec is written to, in POSIX form."""
        import os

        out_dir = Path(self.options.output).resolve().parent
        return Path(os.path.relpath(path.resolve(), out_dir)).as_posix()

    def hub_dataset(self, pointer: str, dataset: str, split: str = "train", name: str | None = None) -> str:
        """The local file a Hub dataset must be exported to; reported with the command that does it."""
        if dataset in self.hub_reported:
            return self.hub_reported[dataset]
        safe = re.sub(r"[^A-Za-z0-9._-]+", "__", dataset).strip("_")
        suffix = f"-{name}" if name else ""
        suffix += "" if split == "train" else "-" + re.sub(r"[^A-Za-z0-9]+", "_", split).strip("_")
        rel = f"data/{safe}{suffix}.jsonl"
        out_dir = Path(self.options.output).resolve().parent
        if not (out_dir / rel).is_file():
            self.report(
                "FT0904",
                pointer,
                dataset=dataset,
                path=rel,
                command=hub_export_command(dataset, name, split, rel),
            )
        self.hub_reported[dataset] = rel
        return rel

    def finish(self, ignored: dict, handled: Collection[str]) -> None:
        """Report every top-level key that was neither handled nor empty. A key that switches on
        another objective, modality or method refuses the import (FT0906); one that switches a
        feature off is only noted (info): nothing is lost, and 196 of 490 real configs drowned their
        real warnings in "not carried over" for `...: false`."""
        refused = load_table("import_common.json")["refused_keys"]
        for key, value in self.config.items():
            if key in self.taken or is_empty(value):
                continue
            if key in refused and value not in (False, 0, "none", "None"):
                self.report(
                    "FT0906",
                    f"/{key}",
                    detail=f"{key} makes the {self.label} config train {refused[key]}, which ftspec does not do",
                    hint="ftspec trains text-only SFT and preference objectives; this config stays with its own tool",
                )
                continue
            entry = ignored.get(key)
            if value is False:
                reason = entry["reason"] if entry else f"ftspec has no setting for this {self.label} key"
                self.drop(
                    f"/{key}",
                    f"turned off in the config, and ftspec does not do it either ({reason})",
                    severity="info",
                )
                continue
            if entry:
                self.drop(f"/{key}", entry["reason"], severity=entry["severity"])
            elif key in handled:
                continue
            else:
                self.drop(
                    f"/{key}",
                    f"ftspec has no setting for this {self.label} key",
                    hint="check whether it changes training; if it does, the imported spec trains differently",
                )
        if self.defaults_written:
            self.diagnostics.append(
                make(
                    "FT0903",
                    Location(self.source.path, 1, 1, ""),
                    tool=self.label,
                    detail=", ".join(self.defaults_written),
                )
            )

    def result(self) -> ImportResult:
        from ftspec.compiler.author.importers.render import render

        data, text = render(self)
        return ImportResult(
            text=text,
            data=data,
            diagnostics=self.diagnostics,
            source=self.source,
            extra_sources=self.extra_sources,
        )


def _stage_from_name(name: str) -> int | None:
    match = re.search(r"(?:z|zero|stage)[_-]?([0-3])(?![0-9])", Path(name).name.lower())
    return int(match.group(1)) if match else None


def _count_records(path: Path) -> int:
    """Records in a JSON Lines file (non-blank lines) or a JSON array."""
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            return len(data) if isinstance(data, list) else 0
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except (OSError, ValueError):
        return 0


@cache
def _schema_defaults() -> dict[str, object]:
    from ftspec.compiler.core.schema import _deref, load_schema

    root = load_schema()
    out: dict[str, object] = {}

    def walk(schema: dict, pointer: str, depth: int) -> None:
        schema = _deref(schema, root)
        if "default" in schema and pointer:
            out[pointer] = schema["default"]
        if depth > 4:
            return
        for name, sub in schema.get("properties", {}).items():
            walk(sub, f"{pointer}/{name}", depth + 1)

    walk(root, "", 0)
    return out


def schema_default(pointer: str) -> object:
    """The schema's default for a spec field (None when it has none)."""
    return _schema_defaults().get(pointer)


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def hub_export_command(dataset: str, name: str | None, split: str, path: str) -> str:
    """The shell command a user pastes to export a Hub dataset. The config is untrusted: each value
    is a Python literal (repr), the whole program one shell word (shlex.quote), so `$(...)` or a `')`
    in a dataset name stays text. A name that is no Hub id gets no command to paste at all."""
    import shlex

    if not HUB_ID.match(dataset) or (name is not None and not HUB_ID.match(name)):
        return f"{dataset!r} is not a Hugging Face Hub dataset id (org/name); export it by hand"
    code = load_table("import_common.json")["hub_export"].format(
        dataset=repr(dataset), name=f", {name!r}" if name else "", split=repr(split), path=repr(path)
    )
    return f"python -c {shlex.quote(code)}"
