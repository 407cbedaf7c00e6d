"""Streaming dataset validation for `ftspec check --only data`.

One pass over each data file (eval first, so its n-grams are ready when train streams by): every
record is parsed, checked against the declared format, hashed for duplicates, scanned for eval
overlap, and measured in tokens. Only hashes, sketches and a length histogram are kept, so memory
does not grow with the text. Record findings point at the data file and the record's line; summary
findings point at the spec field that governs them.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path

from ftspec.compiler.check.data import fast as data_fast
from ftspec.compiler.check.data.dedup import DIGEST, Contamination, ExactDedup, NearDedup, dedup_key, words_of
from ftspec.compiler.check.data.lengths import (
    CHARS_PER_TOKEN,
    ESTIMATE_MARGIN,
    Estimator,
    LengthStats,
    token_segments,
)
from ftspec.compiler.check.data.pairs import PairLengths
from ftspec.compiler.check.data.report import Sample, render_text
from ftspec.compiler.core.artifacts import file_sha256
from ftspec.compiler.core.diagnostics import Diagnostic, Location, catalog, make, sort_diagnostics
from ftspec.compiler.core.loader import LoadedSpec
from ftspec.compiler.core.schema import schema_default
from ftspec.compiler.dataset import assistant_spans as spans_of
from ftspec.compiler.dataset import chat_templates as ct
from ftspec.compiler.dataset.formats import (
    LeakScanner,
    Messages,
    Problem,
    chat_messages,
    chat_tools,
    check_pair,
    check_record,
    text_view,
)
from ftspec.compiler.dataset.readers import TableReader, open_records
from ftspec.compiler.dataset.records import DataFileError, RecordReader, parse_line
from ftspec.compiler.dataset.sources import mix, split_counts, train_entries

MAX_LISTED = 50  # record findings listed per code and file; every one is counted in the summary
MIN_EVAL_EXAMPLES = 20  # below this an eval loss is mostly noise
TOKEN_BATCH = 256


@dataclass
class Source:
    split: str  # train | eval
    written: str  # the path as the spec writes it
    pointer: str  # JSON pointer of that path in the spec
    path: Path
    display: str  # what diagnostics print (the spec's folder joined to the written path)
    fraction: float | None = None
    records: int = 0
    usable: int = 0
    layout: str = "jsonl"
    sha256: str | None = None
    readable: bool = True
    columns: dict[str, int] = field(default_factory=dict)  # CSV: header -> 1-based column, for findings

    def to_json(self) -> dict:
        out = {
            "split": self.split,
            "path": self.written,
            "file": self.display,
            "layout": self.layout,
            "records": self.records,
            "usable": self.usable,
            "sha256": self.sha256,
        }
        if self.fraction is not None:
            out["fraction"] = self.fraction
        return out


@dataclass
class DataReport:
    diagnostics: list[Diagnostic]
    summary: dict
    samples: list[Sample] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(d.severity == "error" for d in self.diagnostics)

    def text(self) -> str:
        return render_text(self.summary, self.samples)


def check_data(spec: LoadedSpec, resolved: dict) -> DataReport:
    """Validate the spec's train and eval files; `resolved` is the spec with defaults filled in."""
    return _Check(spec, resolved).run()


def _display(spec: LoadedSpec, written: str) -> str:
    if os.path.isabs(written):
        return written
    return os.path.normpath(os.path.join(os.path.dirname(spec.path), written))


def _sources(spec: LoadedSpec, dataset: dict) -> list[Source]:
    base = spec.base_dir
    out: list[Source] = []
    for entry in train_entries(dataset):
        out.append(
            Source(
                "train",
                entry.path,
                entry.pointer,
                base / entry.path,
                _display(spec, entry.path),
                entry.fraction,
            )
        )
    if isinstance(dataset.get("eval"), str):
        written = dataset["eval"]
        out.append(Source("eval", written, "/dataset/eval", base / written, _display(spec, written)))
    return out


class _Check:
    def __init__(self, spec: LoadedSpec, resolved: dict):
        self.spec = spec
        self.dataset = resolved.get("dataset") or {}
        self.checks = self.dataset.get("checks") or {}
        self.training = resolved.get("training") or {}
        self.model = resolved.get("model") or {}
        self.fmt = self.dataset.get("format", schema_default("/dataset/format"))
        self.sources = _sources(spec, self.dataset)
        self.diagnostics: list[Diagnostic] = []
        # finding name -> count of record findings, listed or not, by the severity they were given
        self.errors: dict[str, int] = {}
        self.warnings: dict[str, int] = {}
        self._listed: dict[tuple[str, int], int] = {}
        self._hidden: dict[tuple[str, int], int] = {}
        self._severity = {code: rule.severity for code, rule in catalog().items()}
        self._names = {code: rule.name for code, rule in catalog().items()}
        self.loss_on = self.training.get("loss_on", schema_default("/training/loss_on"))
        self.policy = self.dataset.get("system_prompt", "consistent")
        self.system_with = 0
        self.system_without = 0
        self.system_lines: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
        self.dedup_mode = self.checks.get("dedup", "exact")
        # Near duplicates skip records that are exact ones, so they need each answer at once; else
        # duplicates are found in bulk after the pass (data_dedup.ExactDedup, deferred mode).
        self.exact = (
            ExactDedup(deferred=self.dedup_mode == "exact" and data_fast.np is not None)
            if self.dedup_mode in ("exact", "near")
            else None
        )
        self.near = (
            NearDedup(float(self.checks.get("near_dup_threshold", 0.9)))
            if self.dedup_mode == "near"
            else None
        )
        self.dup_pairs: list[tuple[tuple[int, int], tuple[int, int], str]] = []
        has_eval = any(s.split == "eval" for s in self.sources)
        self.contamination = (
            Contamination(
                int(
                    self.checks.get(
                        "contamination_ngram", schema_default("/dataset/checks/contamination_ngram")
                    )
                )
            )
            if has_eval
            else None
        )
        self.render_samples = int(self.checks.get("render_samples", 5))
        self.sample_msgs: list[tuple[tuple[int, int], Messages]] = []
        seq = self.training.get("sequence_len", schema_default("/training/sequence_len"))
        self.seq_p95 = seq == "p95"
        self.lengths = LengthStats(
            None if self.seq_p95 else int(seq), self.dataset.get("truncation", "truncate")
        )
        self._pending: list[tuple[tuple[int, int], str, list[tuple[int, int]]]] = []
        self.parallel_workers = 0  # > 0: a large file was checked by worker processes
        self.pinned = self._pinned_sources()  # files whose SHA-256 a pin needs (no one else reads it)
        self._setup_template()
        # preference pairs: each record is checked as a pair; its chosen conversation stands for it
        self.pairs = PairLengths(self) if self.fmt == "preference" else None

    # --- findings -------------------------------------------------------------------------------

    def _record(
        self, code: str, src_index: int, line: int, fields: dict, severity: str | None = None
    ) -> None:
        """A finding about one record; listed up to MAX_LISTED per code and file, always counted."""
        name = self._names[code]
        counts = self.errors if (severity or self._severity[code]) == "error" else self.warnings
        counts[name] = counts.get(name, 0) + 1
        key = (code, src_index)
        listed = self._listed.get(key, 0)
        if listed >= MAX_LISTED:
            self._hidden[key] = self._hidden.get(key, 0) + 1
            return
        self._listed[key] = listed + 1
        src = self.sources[src_index]
        column = src.columns.get(str(fields.get("index")), 1) if src.columns else 1  # a CSV field's column
        self.diagnostics.append(
            make(code, Location(src.display, line, column, ""), severity=severity, **fields)
        )

    def _spec_finding(self, code: str, pointer: str, severity: str | None = None, **fields) -> None:
        self.diagnostics.append(make(code, self.spec.locate(pointer), severity=severity, **fields))

    def _where(self, where: tuple[int, int], relative_to: int | None = None) -> str:
        src_index, line = where
        if relative_to is not None and src_index == relative_to:
            return f"line {line}"
        return f"{self.sources[src_index].display}:{line}"

    # --- template and tokenizer -----------------------------------------------------------------

    def _setup_template(self) -> None:
        model_id = str(self.model.get("id", ""))
        name = self.model.get("chat_template", "model")
        model_dir = ct.local_model_dir(model_id, self.spec.base_dir)
        self.tokenizer = ct.load_tokenizer(model_dir) if model_dir is not None else None
        self.tokenizer_path = str(model_dir / "tokenizer.json") if self.tokenizer is not None else None
        model_special = ct.read_special_tokens(model_dir) if model_dir is not None else {}
        info: ct.TemplateInfo | None = None
        self.template_note = ""
        extra_markers: list[str] = []
        file_error: ct.TemplateError | None = None
        if name in ct.BUILTIN:
            info = ct.builtin_template(name)
        elif ct.is_template_file(name):
            try:
                info = ct.file_template(name, self.spec.base_dir)
            except ct.TemplateError as exc:
                file_error = exc
        elif model_dir is not None:
            info = ct.model_template(model_dir)
            if info is None:
                self._spec_finding(
                    "FT0551",
                    "/model/chat_template",
                    severity="error",
                    detail=f"{model_dir} has no chat_template.jinja and no chat_template in "
                    "tokenizer_config.json",
                    fallback="chatml",
                )
            else:
                extra_markers = [
                    t for t in (model_special.get("bos_token"), model_special.get("eos_token")) if t
                ]
        elif model_id.startswith("builtin:"):
            self.template_note = f"{model_id} uses the ChatML template"
        else:
            self._spec_finding(
                "FT0551",
                "/model/chat_template",
                detail=f"model.id {model_id!r} is not a local folder (no hub access during check)",
                fallback="chatml",
            )
        if info is None:
            info = ct.builtin_template("chatml")
        self.info = info
        self.special = {**info.special_tokens, **model_special}
        own = info.name in ("model", "file")  # a template ftspec did not write
        terminator = info.terminator_text(self.special)
        self.terminators = (
            (terminator,)
            if terminator and not own
            else tuple(
                dict.fromkeys(
                    [t for t in (self.special.get("eos_token"),) if t] + list(spans_of.end_of_turn_tokens())
                )
            )
        )
        # Texts that may end an assistant turn where the template has no {% generation %} blocks.
        self.markers = (
            tuple(dict.fromkeys(spans_of.marker_tokens(self.tokenizer) + self.terminators))
            if self.tokenizer is not None
            else spans_of.default_markers(self.special)
        )
        self.template_origin = info.origin if own else info.name
        self.leaks = LeakScanner(list(ct.all_markers()) + extra_markers)
        self.template_ok = True
        try:
            if file_error is not None:
                raise file_error
            ct.compile_template(info.source)
        except ct.TemplateError as exc:
            self.template_ok = False
            self._spec_finding(
                "FT0550",
                "/model/chat_template",
                origin=self.template_origin or str(name),
                detail=exc.message + (f" (template line {exc.line})" if exc.line else ""),
            )
        self.generation = ct.has_generation_blocks(info.source)
        # With {% generation %} blocks the spans are the template's: check that they hold each answer
        # and its terminator. Without them the spans are located (assistant_spans), and what cannot be
        # located is reported per record (FT0556).
        self.check_labels = self.template_ok and self.loss_on == "assistant" and self.generation
        # Render every record when token counts need the template (a tokenizer is present) or the
        # template is untrusted (the model's own, or a file). The built-in templates train each
        # assistant turn and its terminator by construction (tests prove it against transformers), so
        # for them the samples are rendered and checked, and lengths are estimated per message.
        self.render_all = self.template_ok and (self.tokenizer is not None or own)
        self.estimator = Estimator()
        if self.template_ok:
            probe = [("system", ""), ("user", ""), ("assistant", "")]
            try:
                text = ct.render(
                    info.source, [{"role": r, "content": c} for r, c in probe], special_tokens=self.special
                ).text
                self.estimator = Estimator(text, list(info.markers) + list(self.terminators), len(probe))
            except ct.TemplateError:
                pass

    # --- the pass -------------------------------------------------------------------------------

    def run(self) -> DataReport:
        order = [i for i, s in enumerate(self.sources) if s.split == "eval"]
        order += [i for i, s in enumerate(self.sources) if s.split == "train"]
        for index in order:
            self._scan(index)
        if self.exact is not None and self.exact.deferred:
            for where, first in self.exact.resolve():  # in read order, as the immediate mode reports them
                self._duplicate(where, first, "exact")
        self._flush_tokens()
        return self._finish()

    def _scan(self, src_index: int) -> None:
        src = self.sources[src_index]
        train = src.split == "train"
        fmt, leaks = self.fmt, self.leaks
        severity = self._severity
        record = self._record
        exact, near = (self.exact, self.near) if train else (None, None)
        contamination = self.contamination
        scan_train = contamination is not None and train
        add_eval = contamination is not None and not train
        lengths_on = train
        estimate = self.estimator.measure
        render_all = self.render_all and train
        loss_all = self.loss_on == "all"
        policy = self.policy
        pairs = self.pairs
        problems: list[Problem] = []
        records = usable = 0
        unreadable = "FT0502"  # invalid JSON; a CSV row that is no record says so (FT0517)

        def one(line: int, value: object, error: str | None) -> None:
            """The per-record path: every check, every finding."""
            nonlocal records, usable
            records += 1
            if error is not None:
                record(unreadable, src_index, line, {"detail": error})
                return
            if pairs is not None:
                pair = check_pair(value, leaks, problems)
                messages = None if pair is None else pair.side("chosen")
            else:
                pair, messages = None, check_record(value, fmt, leaks, problems)
            bad = False
            if problems:
                for code, fields in problems:
                    record(code, src_index, line, fields)
                    if severity[code] == "error":
                        bad = True
                problems.clear()
            if messages is None:
                return
            where = (src_index, line)
            has_system = messages[0][0] == "system"
            if policy == "consistent":
                if has_system:
                    self.system_with += 1
                else:
                    self.system_without += 1
                lines = self.system_lines[has_system]
                if len(lines) < 5:
                    lines.append(where)
            elif policy == "required" and not has_system:
                record("FT0521", src_index, line, {})
                bad = True
            elif policy == "forbidden" and has_system:
                record("FT0522", src_index, line, {})
                bad = True
            if not bad:
                usable += 1
            if exact is not None:
                # duplicates and contamination are judged over whole pairs
                first = exact.add(
                    dedup_key(text_view(messages) if pair is None else pair.key_messages()), where
                )
                if first is not None:
                    self._duplicate(where, first, "exact")
                    near_words = None
                else:
                    near_words = True
            else:
                near_words = None
            if scan_train or add_eval or (near is not None and near_words):
                turns = messages if pair is None else pair.key_messages()
                words = words_of("\n".join(c for r, c in turns if r != "system"))
                if contamination is not None and scan_train:
                    contamination.scan_train(words, where)
                elif contamination is not None and add_eval:
                    contamination.add_eval(words, line)
                if near is not None and near_words:
                    hit = near.add(words, where)
                    if hit is not None:
                        self._duplicate(where, hit[0], "near", hit[1])
            if train and len(self.sample_msgs) < self.render_samples and not bad:
                self.sample_msgs.append((where, messages))
            if not lengths_on or bad:  # lengths describe what trains: usable records only
                return
            if pair is not None and pairs is not None:  # a pair is only made when pairs is set
                pairs.add(where, pair)
            if render_all:
                self._render_record(where, messages)
            elif loss_all:
                length, _ = estimate(text_view(messages))
                self.lengths.add(where, length, [(0, length)])
            else:
                length, segments = estimate(text_view(messages))
                self.lengths.add(where, length, segments)

        try:
            reader = open_records(src.path, sha256=src_index in self.pinned)
            src.columns = getattr(reader, "columns", {})  # a CSV's, filled as its header is read
            table = isinstance(reader, TableReader)
            if table:
                unreadable = "FT0517" if reader.layout == "csv" else unreadable
                clean = self._scan_table(src_index, reader, one)
                records += clean
                usable += clean
            fast = None if table else self._fast_config(src_index)
            if fast is not None:
                clean = self._scan_fast(src_index, reader, fast, one)
                records += clean
                usable += clean
            if not table and (fast is None or reader.layout == "json-array"):
                records = usable = 0
                for line, value, error in reader:
                    one(line, value, error)
        except DataFileError as exc:
            src.readable = False
            self._spec_finding("FT0501", src.pointer, path=src.display, detail=str(exc))
            return
        src.records, src.usable = records, usable
        src.layout, src.sha256 = reader.layout, reader.sha256
        if records == 0:
            self._spec_finding("FT0515", src.pointer, path=src.display)

    def _scan_table(self, src_index: int, reader: TableReader, one) -> int:
        """A Parquet file, save_to_disk folder or CSV file. ChatML Arrow batches go through the fast
        path's column scan (data_fast.scan_arrow_batch); the rows it is not sure of, and every CSV or
        other format, go through `one`. Returns the number of clean records (usable, all)."""
        fast = self._fast_config(src_index) if reader.layout != "csv" else None
        if fast is None:
            for line, value, error in reader:
                one(line, value, error)
            return 0
        return self._take_blocks(
            src_index, (data_fast.scan_arrow_batch(b, fast) for b in reader.batches()), one
        )

    # --- the fast path (data_fast): clean ChatML records in bulk --------------------------------

    def _fast_config(self, src_index: int) -> data_fast.FastConfig | None:
        """The fast path covers what is checked on every record of a ChatML training file when no
        per-record text work is needed (near duplicates, contamination, rendering each record)."""
        if (
            not data_fast.AVAILABLE
            or self.fmt != "chatml"
            or self.sources[src_index].split != "train"
            or self.near is not None
            or self.contamination is not None
            or self.render_all
            or os.environ.get("FTSPEC_DATA_FAST") == "0"
        ):
            return None
        return data_fast.FastConfig(
            markers=self.leaks.markers,
            estimator=self.estimator,
            limit=self.lengths.limit,
            loss_all=self.loss_on == "all",
            policy=self.policy,
            samples=self.render_samples,
            dedup=self.exact is not None,
        )

    def _scan_fast(self, src_index: int, reader: RecordReader, cfg: data_fast.FastConfig, one) -> int:
        """Scan a JSON Lines file in blocks; lines the fast path is not sure of go through `one`, in
        line order with the clean records. Returns the number of clean records (usable, all)."""
        workers = data_fast.worker_count()
        layout, start, size = reader.sniff()
        if layout != "jsonl":
            return 0  # a JSON array: the caller reads it record by record
        if workers > 1 and size - start >= data_fast.PARALLEL_MIN_BYTES:
            import threading

            digest: dict[str, str] = {}
            # The SHA-256 cannot be split across workers: hash the file on the side while they work.
            hasher = (
                threading.Thread(target=lambda: digest.setdefault("sha256", file_sha256(reader.path)))
                if reader.digest
                else None
            )
            with data_fast.start_pool(workers) as pool:  # before the thread: fork copies only this one
                if hasher is not None:
                    hasher.start()
                try:
                    blocks = data_fast.parallel_blocks(pool, reader.path, start, size, cfg, workers)
                    clean = self._take_blocks(src_index, blocks, one)
                finally:
                    if hasher is not None:
                        hasher.join()
            reader.sha256 = digest.get("sha256")
            self.parallel_workers = max(self.parallel_workers, workers)
            return clean
        try:
            blocks = (
                block
                for data, end in reader.line_blocks(data_fast.BLOCK_BYTES)
                for block in data_fast.scan_blocks(data, cfg, end)
            )
            return self._take_blocks(src_index, blocks, one)
        finally:
            data_fast.release_scratch()

    def _take_blocks(self, src_index: int, blocks, one) -> int:
        clean = 0
        base = 1  # line number of the block's first line
        lengths = self.lengths
        for block in blocks:
            n = len(block.lines)
            clean += n
            if self.policy == "consistent":
                self.system_with += block.with_system
                self.system_without += n - block.with_system
            lengths.hist.update(block.hist)  # records above the limit are added one by one below
            lengths.count += n - len(block.over)
            lengths.trained_tokens += block.trained
            done = 0
            for i, raw in block.slow:  # rare: merge them in line order with the clean records
                cut = bisect_left(block.lines, i)
                self._take_clean(src_index, block, base, done, cut)
                done = cut
                # a raw JSON line, or a record a column scan was not sure of (its row)
                items = parse_line(raw, base + i) if isinstance(raw, bytes) else [(base + i, raw, None)]
                for line, value, error in items:
                    one(line, value, error)
            self._take_clean(src_index, block, base, done, n)
            base += block.nlines
        return clean

    def _take_clean(self, src_index: int, block: data_fast.Block, base: int, a: int, b: int) -> None:
        """Clean records a..b-1 of a block, for what depends on line order."""
        if a >= b:
            return
        lines = block.lines
        if self.exact is not None:  # deferred mode (the fast path runs without near duplicates)
            part, np = lines[a:b], data_fast.np
            places = (
                np.arange(base + part.start, base + part.stop)
                if isinstance(part, range)
                else np.asarray(part, np.int64) + base
            )
            self.exact.add_block(block.hashes[a * DIGEST : b * DIGEST], src_index, places)
        if self.policy == "consistent":
            for flag in (True, False):
                kept = self.system_lines[flag]
                for k in block.system_first[flag]:
                    if len(kept) < 5 and a <= k < b:
                        kept.append((src_index, base + lines[k]))
        for k in range(a, min(b, len(block.samples))):
            if len(self.sample_msgs) < self.render_samples:
                self.sample_msgs.append(((src_index, base + lines[k]), block.samples[k]))
        if block.over:
            for k in sorted(block.over):
                if a <= k < b:
                    length, segments = block.over[k]
                    self.lengths.add((src_index, base + lines[k]), length, segments)

    def _duplicate(self, where, first, kind: str, similarity: float | None = None) -> None:
        if len(self.dup_pairs) < 20:
            self.dup_pairs.append((where, first, kind))
        shown = self._where(first, relative_to=where[0])
        if kind == "exact":
            self._record("FT0523", where[0], where[1], {"where": shown})
        else:
            self._record("FT0525", where[0], where[1], {"where": shown, "similarity": f"{similarity:.2f}"})

    # --- rendering, labels and token counts -------------------------------------------------------

    def _trained(
        self, where: tuple[int, int], messages: Messages, report: bool = True
    ) -> spans_of.TrainedText | None:
        """The record rendered with the template and its trained spans (what training tokenizes:
        runtime/data.py calls the same function), or None on a template error. The record's template
        and masking findings are reported here unless `report` is false."""
        record = self._record if report else lambda *args, **kwargs: None
        conversation = chat_messages(messages)  # with tool calls and results where the record has them
        tools = chat_tools(messages)
        try:
            if getattr(messages, "plain", None):  # completion / text: no chat template
                eos = self.special.get("eos_token") or ""
                return spans_of.trained_plain(conversation, eos=eos, loss_on=self.loss_on)
            if self.loss_on == "all":
                text = ct.render(
                    self.info.source, conversation, special_tokens=self.special, tools=tools
                ).text
                return spans_of.TrainedText(text, [(0, len(text))], method="all")
            trained = spans_of.trained_text(
                self.info.source, conversation, special_tokens=self.special, markers=self.markers, tools=tools
            )
        except ct.TemplateError as exc:
            record("FT0550", where[0], where[1], {"origin": self.template_origin, "detail": exc.message})
            return None
        if self.check_labels:
            rendered = ct.Rendered(trained.text, trained.spans)
            for code, fields in self.label_problems(messages, rendered):
                record(code, where[0], where[1], fields)
        for problem in trained.problems:
            record(
                "FT0556",
                where[0],
                where[1],
                {"index": problem.turn, "origin": self.template_origin, "detail": problem.detail},
            )
        if not trained.spans and not trained.problems and trained.method != "generation":
            record("FT0553", where[0], where[1], {"origin": self.template_origin})
        return trained

    def _render_record(self, where: tuple[int, int], messages: Messages) -> None:
        trained = self._trained(where, messages)
        if trained is None:
            return
        if self.tokenizer is None:
            length, segments = self.estimator.measure(text_view(messages))
            if self.loss_on == "all":
                segments = [(0, length)]
            self.lengths.add(where, length, segments)
            return
        self._pending.append((where, trained.text, trained.spans))
        if len(self._pending) >= TOKEN_BATCH:
            self._flush_tokens()

    def _flush_tokens(self) -> None:
        if not self._pending:
            return
        assert self.tokenizer is not None  # tokens are queued only when a tokenizer was loaded
        encodings = self.tokenizer.encode_batch(
            [text for _, text, _ in self._pending], add_special_tokens=False
        )
        for (where, _text, spans), encoding in zip(self._pending, encodings, strict=True):
            self.lengths.add(where, len(encoding.ids), token_segments(encoding, spans))
        self._pending.clear()

    def label_problems(self, messages: Messages, rendered: ct.Rendered) -> list[Problem]:
        """Nothing trained, or an assistant turn whose terminator is outside the generation spans.

        Each assistant turn is looked up inside the spans (in order), not in the whole text: a short
        answer such as "a" also occurs inside "assistant".
        """
        out: list[Problem] = []
        spans = sorted(s for s in rendered.spans if s[1] > s[0])
        if not spans:
            return [("FT0553", {"origin": self.template_origin})]
        text = rendered.text
        next_span = 0
        extras = getattr(messages, "extras", None) or {}
        for index, (role, content) in enumerate(messages):
            if role != "assistant" or "tool_calls" in extras.get(index, {}):
                continue  # a turn of tool calls ends after them: its span is the template's block
            needle = content.strip()
            found = None
            for j in range(next_span, len(spans)):
                start, finish = spans[j]
                pos = text.find(needle, start, finish)
                if pos >= 0:
                    found = (j, pos + len(needle))
                    break
            if found is None:
                continue  # this turn is not trained at all (some templates train only the last turn)
            j, after = found
            next_span = j + 1
            terminator = None
            while after < len(text):
                terminator = next((t for t in self.terminators if text.startswith(t, after)), None)
                if terminator is not None or text[after] not in " \t\r\n":
                    break
                after += 1
            if terminator is None:
                if self.info.name != "model":  # a built-in template always writes its terminator
                    out.append(("FT0554", {"index": index, "terminator": self.terminators[0]}))
                continue
            stop = after + len(terminator)
            if not any(start <= after and stop <= finish for start, finish in spans):
                out.append(("FT0554", {"index": index, "terminator": terminator}))
        return out

    def _samples(self) -> list[Sample]:
        samples: list[Sample] = []
        if not self.template_ok:
            return samples
        for where, messages in self.sample_msgs:
            # with render_all the pass has rendered, checked and reported this record already
            rendered = self._trained(where, messages, report=not self.render_all)
            if rendered is None:
                continue
            spans = rendered.spans
            src = self.sources[where[0]]
            if self.tokenizer is not None:
                mask = ct.token_mask(self.tokenizer, rendered.text, spans)
                pieces = _pieces_from_tokens(rendered.text, mask)
                tokens, trained = len(mask), sum(mask.trained)
            else:
                pieces = _pieces_from_spans(rendered.text, spans)
                tokens, segments = self.estimator.measure(text_view(messages))
                trained = sum(e - s for s, e in segments) if self.loss_on == "assistant" else tokens
            samples.append(
                Sample(
                    src.display,
                    where[1],
                    pieces,
                    tokens,
                    trained,
                    "tokenizer" if self.tokenizer is not None else "estimate",
                )
            )
        return samples

    # --- summary ---------------------------------------------------------------------------------

    def _finish(self) -> DataReport:
        train_sources = [s for s in self.sources if s.split == "train"]
        eval_sources = [s for s in self.sources if s.split == "eval"]
        samples = self._samples()
        train_examples = self._mix(train_sources)
        eval_examples = sum(s.usable for s in eval_sources)
        split = self.dataset.get("eval_split")
        if split and not eval_sources:
            train_examples, eval_examples = split_counts(train_examples, split)
            if eval_examples < MIN_EVAL_EXAMPLES and train_examples + eval_examples > 0:
                self._spec_finding(
                    "FT0531",
                    "/dataset/eval_split",
                    split=split,
                    records=train_examples + eval_examples,
                    count=eval_examples,
                    minimum=MIN_EVAL_EXAMPLES,
                )
        minimum = int(self.dataset.get("min_examples", 500))
        readable = all(s.readable for s in train_sources)
        if readable and train_examples < minimum:
            self._spec_finding(
                "FT0528",
                "/dataset/min_examples",
                count=train_examples,
                records=sum(s.records for s in train_sources),
                minimum=minimum,
            )
        self._system_policy()
        self._pins()
        contamination = self._contamination(eval_sources)
        duplicates = self._duplicates_summary()
        lengths = self._lengths_summary()
        for (code, src_index), hidden in sorted(self._hidden.items()):
            src = self.sources[src_index]
            self.diagnostics.append(
                make(
                    "FT0555",
                    Location(src.display, None, None, src.pointer),
                    count=hidden,
                    finding=code,
                    path=src.display,
                )
            )
        errors = dict(sorted(self.errors.items()))
        warnings = dict(sorted(self.warnings.items()))
        summary: dict = {
            "format": self.fmt,
            "files": [s.to_json() for s in self.sources],
            "records": {
                "train": sum(s.records for s in train_sources),
                "eval": sum(s.records for s in eval_sources),
            },
            "usable": {
                "train": sum(s.usable for s in train_sources),
                "eval": sum(s.usable for s in eval_sources),
            },
            "train_examples": train_examples,
            "eval_examples": eval_examples,
            "eval_split": split,
            "min_examples": minimum,
            "errors": errors,
            "warnings": warnings,
            "system_prompt": {
                "policy": self.policy,
                "with": self.system_with,
                "without": self.system_without,
            },
            "duplicates": duplicates,
            "contamination": contamination,
            "lengths": lengths,
            **({"pairs": self.pairs.stats.to_json()} if self.pairs is not None else {}),
            "template": {
                "name": self.info.name,
                "origin": self.template_origin or self.info.origin,
                "generation_blocks": self.generation,
                "terminators": list(self.terminators),
                "rendered": "every record" if self.render_all else "samples",
                "note": self.template_note or None,
            },
            "samples": [s.to_json() for s in samples],
        }
        if self.seq_p95:
            summary["sequence_len_p95"] = lengths["sequence_len"]
        diagnostics = sort_diagnostics(self.diagnostics)
        summary["status"] = "fail" if any(d.severity == "error" for d in diagnostics) else "pass"
        return DataReport(diagnostics, summary, samples)

    def _mix(self, train_sources: list[Source]) -> int:
        plan = mix([(s.usable, s.fraction) for s in train_sources])
        if plan.over:
            self._spec_finding("FT0533", "/dataset/train", total=round(plan.fraction_total, 4))
            return plan.total
        for s, needed in zip(train_sources, plan.wanted, strict=True):
            if s.fraction is not None and s.readable and needed > s.usable:
                self._spec_finding(
                    "FT0532",
                    s.pointer.rsplit("/", 1)[0] + "/fraction",
                    path=s.display,
                    available=s.usable,
                    fraction=s.fraction,
                    needed=needed,
                )
        return plan.total

    def _system_policy(self) -> None:
        if self.policy != "consistent" or not (self.system_with and self.system_without):
            return
        minority = self.system_with <= self.system_without  # the side to show is the smaller one
        lines = ", ".join(self._where(w) for w in self.system_lines[minority])
        self._spec_finding(
            "FT0520",
            "/dataset/system_prompt",
            with_system=self.system_with,
            records=self.system_with + self.system_without,
            without_system=self.system_without,
            lines=lines,
        )

    def _pin_targets(self, key: object) -> list[Source]:
        """The sources a dataset.sha256 key names: the files of its split (train, eval) or its path."""
        if key in ("train", "eval"):
            return [s for s in self.sources if s.split == key]
        return [s for s in self.sources if os.path.normpath(s.written) == os.path.normpath(str(key))]

    def _pinned_sources(self) -> set[int]:
        """Indexes of the sources a dataset.sha256 key names."""
        pins = self.dataset.get("sha256") or {}
        if not isinstance(pins, dict):
            return set()
        named = {id(src) for key in pins for src in self._pin_targets(key)}
        return {i for i, src in enumerate(self.sources) if id(src) in named}

    def _pins(self) -> None:
        pins = self.dataset.get("sha256") or {}
        if not isinstance(pins, dict):
            return
        for key, expected in pins.items():
            pointer = f"/dataset/sha256/{key}"
            targets = self._pin_targets(key)
            if key == "train" and len(targets) != 1:
                self._spec_finding(
                    "FT0530",
                    pointer,
                    key=key,
                    detail=f"train has {len(targets)} files: pin each one by its path",
                )
                continue
            if not targets:
                detail = (
                    "the spec has no dataset.eval file"
                    if key == "eval"
                    else "data files: " + ", ".join(s.written for s in self.sources)
                )
                self._spec_finding("FT0530", pointer, key=key, detail=detail)
                continue
            target = targets[0]
            if target.sha256 is None or not isinstance(expected, str):
                continue  # unreadable: reported already
            if target.sha256 != expected.lower():
                self._spec_finding(
                    "FT0529", pointer, path=target.display, actual=target.sha256, expected=expected, key=key
                )

    def _contamination(self, eval_sources: list[Source]) -> dict:
        n = int(self.checks.get("contamination_ngram", schema_default("/dataset/checks/contamination_ngram")))
        allowed = int(self.checks.get("max_contaminated", 0))
        pairs: list[dict] = []
        out: dict[str, object] = {
            "ngram": n,
            "max_contaminated": allowed,
            "count": 0,
            "eval_records": 0,
            "pairs": pairs,
        }
        if self.contamination is None or not eval_sources:
            out["checked"] = False
            return out
        out["checked"] = True
        eval_index = self.sources.index(eval_sources[0])
        hits = self.contamination.hits
        count = len(hits)
        out["count"] = count
        out["eval_records"] = len(self.contamination.eval_lines)
        over = count > allowed
        for index in sorted(hits):
            line = self.contamination.eval_lines[index]
            where = hits[index]
            self._record(
                "FT0526",
                eval_index,
                line,
                {"n": n, "where": self._where(where)},
                severity="error" if over else "warning",
            )
            if len(pairs) < 50:
                pairs.append(
                    {"eval_line": line, "train_file": self.sources[where[0]].display, "train_line": where[1]}
                )
        if over:
            self._spec_finding(
                "FT0527",
                "/dataset/checks/max_contaminated",
                count=count,
                eval_records=out["eval_records"],
                n=n,
                allowed=allowed,
            )
        return out

    def _duplicates_summary(self) -> dict:
        exact = self.exact.count if self.exact else 0
        near = self.near.count if self.near else 0
        pairs = [
            {
                "line": w[1],
                "file": self.sources[w[0]].display,
                "duplicate_of": f[1],
                "duplicate_of_file": self.sources[f[0]].display,
                "kind": kind,
            }
            for w, f, kind in self.dup_pairs
        ]
        for kind, count in (("exact", exact), ("near", near)):
            if count:
                shown = ", ".join(
                    f"{self._where(w)} repeats {self._where(f, w[0])}"
                    for w, f, k in self.dup_pairs[:5]
                    if k == kind
                )
                self._spec_finding("FT0524", "/dataset/checks/dedup", count=count, kind=kind, pairs=shown)
        out = {"method": self.dedup_mode, "exact": exact, "near": near, "pairs": pairs}
        if self.near is not None:
            out["near_dup_threshold"] = self.near.threshold
        return out

    def _lengths_summary(self) -> dict:
        stats = self.lengths
        method = "tokenizer" if self.tokenizer is not None else "estimate"
        limit = stats.finish()
        pct = stats.percentiles()
        if method == "estimate" and stats.count:
            reason = (
                "model.id is not a local folder"
                if self.tokenizer_path is None
                and ct.local_model_dir(str(self.model.get("id", "")), self.spec.base_dir) is None
                else "the model folder has no usable tokenizer.json"
            )
            self._spec_finding("FT0540", "/model/id", chars_per_token=CHARS_PER_TOKEN, reason=reason)
        lines = ", ".join(self._where(w) for w in stats.truncated_at[:5])
        if stats.truncated:
            self._spec_finding(
                "FT0541",
                "/training/sequence_len",
                count=stats.truncated,
                records=stats.count,
                limit=limit,
                lost=stats.lost_tokens,
                lines=lines,
                p95=pct["p95"],
            )
        if stats.dropped:
            self._spec_finding(
                "FT0543", "/training/sequence_len", count=stats.dropped, records=stats.count, limit=limit
            )
        for where, length, first in stats.wiped:
            fields = {"tokens": length, "first": first, "limit": limit}
            if method == "estimate" and first < ESTIMATE_MARGIN * limit:
                # estimated lengths can be off by about a quarter: an error only when clearly beyond
                self._record("FT0542", where[0], where[1], fields, severity="warning")
            else:
                self._record("FT0542", where[0], where[1], fields)
        hidden = stats.wiped_count - len(stats.wiped)
        if hidden > 0:
            counts = self.warnings if method == "estimate" else self.errors
            counts["answer-truncated-away"] = counts.get("answer-truncated-away", 0) + hidden
        return {
            "method": method,
            "tokenizer": self.tokenizer_path,
            "chars_per_token": CHARS_PER_TOKEN if method == "estimate" else None,
            "examples": stats.count,
            **pct,
            "histogram": stats.histogram(),
            "trained_tokens": stats.trained_tokens,
            "sequence_len": limit,
            "sequence_len_setting": "p95" if self.seq_p95 else limit,
            "truncation": stats.mode,
            "truncated": stats.truncated,
            "dropped": stats.dropped,
            "assistant_tokens_lost": stats.lost_tokens,
            "answers_lost": stats.wiped_count,
        }


def _pieces_from_spans(text: str, spans: list[tuple[int, int]]) -> list[tuple[str, bool]]:
    pieces: list[tuple[str, bool]] = []
    cursor = 0
    for start, end in sorted(spans):
        if start > cursor:
            pieces.append((text[cursor:start], False))
        if end > max(start, cursor):
            pieces.append((text[max(start, cursor) : end], True))
        cursor = max(cursor, end)
    if cursor < len(text):
        pieces.append((text[cursor:], False))
    return pieces


def _pieces_from_tokens(text: str, mask: ct.TokenMask) -> list[tuple[str, bool]]:
    """Group consecutive tokens with the same trained flag into text pieces (by their offsets)."""
    pieces: list[tuple[str, bool]] = []
    cursor = 0
    for (start, end), trained in zip(mask.offsets, mask.trained, strict=True):
        start = max(start, cursor)
        if end <= start:
            continue
        if start > cursor:  # characters no token covers belong with what came before
            _append(pieces, text[cursor:start], pieces[-1][1] if pieces else False)
        _append(pieces, text[start:end], trained)
        cursor = end
    if cursor < len(text):
        _append(pieces, text[cursor:], False)
    return pieces


def _append(pieces: list[tuple[str, bool]], text: str, trained: bool) -> None:
    if pieces and pieces[-1][1] == trained:
        pieces[-1] = (pieces[-1][0] + text, trained)
    else:
        pieces.append((text, trained))
