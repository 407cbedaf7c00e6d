from ftspec.compiler.core.loader import load_text


def codes(spec):
    return [(d.code, d.line, d.column) for d in spec.diagnostics]


def test_positions_of_keys_and_values():
    spec = load_text("version: 1\nmodel:\n  id: x\n  revision: abc\nlist:\n  - a\n  - b\n", "s.yaml")
    assert spec.data == {"version": 1, "model": {"id": "x", "revision": "abc"}, "list": ["a", "b"]}
    assert spec.value_pos["/model/id"] == (3, 7)
    assert spec.key_pos["/model/revision"] == (4, 3)
    assert spec.value_pos["/list/1"] == (7, 5)
    # a missing child is located at its nearest existing parent's key
    assert spec.locate("/model/nope/deeper").line == 2


def test_duplicate_key_is_located():
    spec = load_text("a: 1\nb: 2\na: 3\n", "s.yaml")
    assert codes(spec) == [("FT0004", 3, 1)]


def test_alias_bomb_stops():
    rows = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefg", "bcdefgh", strict=True):
        rows.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 10) + "]")
    spec = load_text("\n".join(rows) + "\n", "bomb.yaml")
    assert [d.code for d in spec.diagnostics] == ["FT0008"]
