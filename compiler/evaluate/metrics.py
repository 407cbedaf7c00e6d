"""Pure answer-scoring functions: one prediction and one reference in, a score in [0, 1] out.

The evaluation subprocess (runtime/evaluate.py) calls these on every generated answer; they live in
the compiler so they are testable without torch and so the gate's meaning is defined in one place.

Normalisation follows the SQuAD evaluation script (lower case, punctuation and English articles
removed, whitespace collapsed), the field's usual choice for exact match and token F1, with one
change: when the reference is a JSON object or array, exact match compares parsed JSON values, because
stripping punctuation from JSON would accept answers that are not JSON at all.
"""

from __future__ import annotations

import json
import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache

TASK_METRICS = ("exact_match", "f1", "rouge_l", "accuracy", "contains", "json_schema", "regex")
# Acceptance metrics where a smaller value is better; every other metric is a share or score where
# larger is better.
LOWER_IS_BETTER = frozenset({"eval_loss", "perplexity"})

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation (after Unicode NFKC): lower case, no punctuation, no articles, single spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT and unicodedata.category(ch)[0] != "P")
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def parse_json(text: str) -> tuple[bool, object]:
    """(True, value) when `text` (surrounding whitespace aside) is one JSON document."""
    try:
        return True, json.loads(text.strip())
    except (ValueError, RecursionError):
        return False, None


def _json_container(text: str) -> tuple[bool, object]:
    ok, value = parse_json(text)
    return (ok and isinstance(value, (dict, list))), value


def exact_match(prediction: str, reference: str) -> float:
    is_json, ref_value = _json_container(reference)
    if is_json:
        ok, pred_value = parse_json(prediction)
        return float(ok and _json_equal(pred_value, ref_value))
    return float(normalize_answer(prediction) == normalize_answer(reference))


def _json_equal(a: object, b: object) -> bool:
    # 1 == 1.0 in Python, and True == 1: keep booleans distinct from numbers, as JSON does.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 over normalised words; two empty answers agree (1.0)."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def accuracy(prediction: str, reference: str) -> float:
    """Classification accuracy: the answer's first words are the reference label (normalised), so
    "Positive." and "positive - the customer liked it" both count for the label "positive", while
    "positively" does not."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not ref:
        return float(not pred)
    return float(pred[: len(ref)] == ref)


def _fold(text: str) -> str:
    """NFKC, case folded, whitespace runs collapsed to one space, ends stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def contains(prediction: str, reference: str) -> float:
    """The reference appears in the answer, case and whitespace folded: a chatty but right answer
    ("The capital of France is Paris.") counts for "paris". Punctuation is kept, so a reference can
    be as strict as it needs. An empty reference matches only an empty answer."""
    ref = _fold(reference)
    if not ref:
        return float(not _fold(prediction))
    return float(ref in _fold(prediction))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure from Google's rouge-score package (imported here: it is optional)."""
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def json_valid(prediction: str) -> float:
    return float(parse_json(prediction)[0])


def json_schema_valid(prediction: str, schema: dict) -> float:
    """1.0 when the answer parses as JSON and conforms to `schema` (its own $schema draft, else 2020-12)."""
    ok, value = parse_json(prediction)
    if not ok:
        return 0.0
    return float(_validator(json.dumps(schema, sort_keys=True)).is_valid(value))


@lru_cache(maxsize=8)
def _validator(schema_text: str):
    from jsonschema.validators import validator_for

    schema = json.loads(schema_text)
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def check_schema(schema: object) -> str | None:
    """None when `schema` is a valid JSON Schema, else the reason (for a diagnostic before generating)."""
    if not isinstance(schema, dict):
        return "a JSON Schema must be an object"
    from jsonschema.exceptions import SchemaError

    try:
        _validator(json.dumps(schema, sort_keys=True))
    except SchemaError as exc:
        return exc.message
    return None


def regex_full_match(prediction: str, pattern: str) -> float:
    """The whole answer (surrounding whitespace aside) matches `pattern`."""
    return float(_compiled(pattern).fullmatch(prediction.strip()) is not None)


@lru_cache(maxsize=32)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def scorer(
    metric: str, *, json_schema: dict | None = None, regex: str | None = None
) -> Callable[[str, str], float]:
    """(prediction, reference) -> score for a task or regression metric of the spec."""
    if metric == "exact_match":
        return exact_match
    if metric == "f1":
        return token_f1
    if metric == "rouge_l":
        return rouge_l
    if metric == "accuracy":
        return accuracy
    if metric == "contains":
        return contains
    if metric == "json_schema":
        if json_schema is None:
            raise ValueError("metric json_schema needs evaluation.task.json_schema")
        return lambda prediction, _reference: json_schema_valid(prediction, json_schema)
    if metric == "regex":
        if not regex:
            raise ValueError("metric regex needs evaluation.task.regex")
        return lambda prediction, _reference: regex_full_match(prediction, regex)
    raise ValueError(f"unknown metric {metric!r}")


def format_checker(
    *, want_json: bool, json_schema: dict | None, regex: str | None
) -> Callable[[str], float] | None:
    """The `evaluation.format` check of one answer, or None when the spec asks for no format check."""
    if not want_json and not regex:
        return None

    def check(prediction: str) -> float:
        if want_json:
            ok = (
                json_schema_valid(prediction, json_schema)
                if json_schema is not None
                else json_valid(prediction)
            )
            if not ok:
                return 0.0
        if regex and not regex_full_match(prediction, regex):
            return 0.0
        return 1.0

    return check


def mean(values: Sequence[float]) -> float | None:
    """Arithmetic mean, None for no values (a metric with nothing to measure is missing, not zero)."""
    return math.fsum(values) / len(values) if values else None


def perplexity(mean_loss: float | None) -> float | None:
    """exp(mean token cross-entropy in nats); inf when the loss is too large to exponentiate."""
    if mean_loss is None or math.isnan(mean_loss):
        return None
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf
