"""Answer-scoring functions of compiler/metrics.py."""

import math

import pytest
from ftspec.compiler.evaluate import metrics as M


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("Paris", "paris", 1.0),
        ("  The Eiffel   Tower. ", "eiffel tower", 1.0),  # articles, punctuation, case, spaces
        ("Paris, France", "Paris", 0.0),
        ("", "", 1.0),
        ('{"age": 31, "name": "Ann"}', '{"name": "Ann", "age": 31}', 1.0),  # JSON: key order is irrelevant
        ('{"name": "Ann", "age": 31.0}', '{"name": "Ann", "age": 31}', 1.0),
        ('{"name": "Ann", "age": "31"}', '{"name": "Ann", "age": 31}', 0.0),  # a string is not a number
        ("name Ann age 31", '{"name": "Ann", "age": 31}', 0.0),  # punctuation matters for JSON references
        ('{"ok": true}', '{"ok": 1}', 0.0),
        ('{"name": "Ann"', '{"name": "Ann"}', 0.0),
    ],
)
def test_exact_match(prediction, reference, expected):
    assert M.exact_match(prediction, reference) == expected


def test_token_f1_partial_overlap():
    # pred tokens: big red dog; ref tokens: red dog barks -> 2 common, P=2/3, R=2/3
    assert M.token_f1("the big red dog", "a red dog barks") == pytest.approx(2 / 3)
    assert M.token_f1("cat", "dog") == 0.0
    assert M.token_f1("", "dog") == 0.0
    assert M.token_f1("red red", "red") == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_accuracy_is_label_prefix():
    assert M.accuracy("Positive.", "positive") == 1.0
    assert M.accuracy("positive - liked it", "positive") == 1.0
    assert M.accuracy("positively", "positive") == 0.0
    assert M.accuracy("negative", "positive") == 0.0


def test_rouge_l_uses_rouge_score():
    assert M.rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    # LCS "cat on mat" (3) of 5 and 6 tokens: P=3/5, R=3/6
    value = M.rouge_l("a cat on a mat", "the cat sat on the mat")
    p, r = 3 / 5, 3 / 6
    assert value == pytest.approx(2 * p * r / (p + r))


def test_json_validity_and_schema():
    schema = {
        "type": "object",
        "required": ["name", "age"],
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    }
    assert M.json_valid(' {"a": 1} ') == 1.0
    assert M.json_valid("{'a': 1}") == 0.0
    assert M.json_schema_valid('{"name": "Ann", "age": 3}', schema) == 1.0
    assert M.json_schema_valid('{"name": "Ann", "age": "3"}', schema) == 0.0
    assert M.json_schema_valid("not json", schema) == 0.0
    assert M.check_schema(schema) is None
    assert M.check_schema({"type": "no-such-type"}) is not None
    assert M.check_schema([1]) is not None


def test_regex_is_a_full_match():
    assert M.regex_full_match(" ABC-123 ", r"[A-Z]+-\d+") == 1.0
    assert M.regex_full_match("ABC-123 extra", r"[A-Z]+-\d+") == 0.0


def test_scorer_and_format_checker():
    schema = {"type": "object", "required": ["x"]}
    assert M.scorer("json_schema", json_schema=schema)('{"x": 1}', "ignored") == 1.0
    assert M.scorer("regex", regex=r"\d+")("42", "ignored") == 1.0
    with pytest.raises(ValueError):
        M.scorer("json_schema")
    with pytest.raises(ValueError):
        M.scorer("bleu")
    assert M.format_checker(want_json=False, json_schema=None, regex=None) is None
    check = M.format_checker(want_json=True, json_schema=schema, regex=r"\{.*\}")
    assert check('{"x": 1}') == 1.0
    assert check('{"y": 1}') == 0.0  # parses, but misses the schema's required key
    assert check("[1]") == 0.0


def test_mean_and_perplexity():
    assert M.mean([]) is None
    assert M.mean([1.0, 0.0, 0.5]) == pytest.approx(0.5)
    assert M.perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert M.perplexity(None) is None
    assert M.perplexity(1e6) == math.inf


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("The capital of France is Paris.", "Paris", 1.0),  # a chatty but right answer counts
        ("the capital of france is PARIS", "paris", 1.0),  # case folded
        ("Water boils at 100\n  degrees Celsius.", "100 degrees", 1.0),  # whitespace folded
        ("Ｐａｒｉｓ", "paris", 1.0),  # NFKC
        ("Bonneau is the capital of France.", "Paris", 0.0),
        ("Paris", "Paris, France", 0.0),  # the whole reference must appear
        ("H2O", "H2O.", 0.0),  # punctuation is kept
        ("", "", 1.0),
        ("anything", "  ", 0.0),  # an empty reference matches only an empty answer
    ],
)
def test_contains(prediction, reference, expected):
    assert M.contains(prediction, reference) == expected
    assert M.scorer("contains")(prediction, reference) == expected


def test_contains_is_a_spec_metric_for_task_and_regression(tmp_path):
    """The schema and lint accept `contains` on the task and the regression set (no FT0222: it needs
    neither a schema nor a pattern); an unknown metric stays a schema error."""
    from ftspec.compiler.core.loader import load_text
    from ftspec.compiler.lint.lint import LintOptions, lint_loaded

    assert "contains" in M.TASK_METRICS

    def lint_codes(metric: str) -> list[str]:
        text = (
            "version: 1\nname: unit\nmodel: {id: builtin:tiny-llama}\n"
            "dataset: {train: train.jsonl, eval: eval.jsonl}\nhardware: {gpu: cpu}\n"
            f"evaluation:\n  task: {{metric: {metric}}}\n"
            f"  regression: {{prompts: regression.jsonl, metric: {metric}}}\n"
        )
        spec = load_text(text, str(tmp_path / "spec.yaml"))
        result = lint_loaded(spec, LintOptions(check_files=False))
        return [d.code for d in result.diagnostics if d.severity == "error"]

    assert lint_codes("contains") == []
    assert lint_codes("containz") != []
