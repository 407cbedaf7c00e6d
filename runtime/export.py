"""Deployment exports of a trained run (`output.export`), written when training ends, gate or not.

gguf: `<run>/export/<name>.gguf`, the merged model written with the `gguf` package's GGUFWriter
(architecture metadata, tensors named by gguf.get_tensor_name_map, the tokenizer as a byte-level BPE
`gpt2` vocabulary with merges and token types, the special token ids and the chat template), and an
Ollama `Modelfile` beside it: FROM the file, a Go TEMPLATE translated from the chat template by
rendering it around sentinel contents, and a `PARAMETER stop` for each end-of-turn token.

Weights are f32 for `precision: fp32`, else f16 (norms stay f32, as llama.cpp writes them). q_proj
and k_proj rows are permuted into llama.cpp's RoPE layout, which transformers' GGUF loader reverses
(../shared/cpu-notes.md "GGUF out"): without it a loaded file gives other logits.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ftspec.compiler.dataset import chat_templates as ct

EXPORT_DIR = "export"
SUPPORTED_MODEL_TYPES = ("llama",)  # the tensor maps and permutation below are Llama's (SmolLM2 is one)
_SENTINEL = "\ue010{}\ue011"  # private-use characters around a role name: no template touches them


class ExportError(Exception):
    """The model or tokenizer cannot be written as asked (reported as FT0730, the run still completes)."""


def _permute(weight, heads: int):
    """llama.cpp's convert_hf_to_gguf LlamaModel.permute: rows into its rotary layout."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {path.name}: {exc}") from None


def gguf_dtype(spec: dict) -> str:
    """f32 for a run trained in fp32, else f16."""
    return "f32" if (spec.get("training") or {}).get("precision") == "fp32" else "f16"


def write_gguf(merged: Path, target: Path, *, dtype: str = "f16", name: str = "ftspec model") -> Path:
    """`target` (.gguf) holding the Llama model and tokenizer saved in the folder `merged`."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    config = _read_json(merged / "config.json")
    if config.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise ExportError(
            f"model_type {config.get('model_type')!r} is not exported to GGUF yet (supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}); convert merged/ with llama.cpp's convert_hf_to_gguf.py"
        )
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    writer = gguf.GGUFWriter(str(target), "llama")
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    rope = config.get("rope_parameters") or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    _add_tokenizer(writer, merged, gguf)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    weights = {}
    for file in sorted(merged.glob("*.safetensors")):
        weights.update(load_file(str(file)))
    if not weights:
        raise ExportError(f"{merged} holds no safetensors weights")
    for hf_name, tensor in weights.items():
        value = tensor.float().numpy()
        if hf_name.endswith("q_proj.weight"):
            value = _permute(value, heads)
        elif hf_name.endswith("k_proj.weight"):
            value = _permute(value, kv_heads)
        base = names.get_name(hf_name.removesuffix(".weight"))
        if base is None:
            raise ExportError(f"no GGUF name for the tensor {hf_name}")
        if dtype == "f16" and value.ndim > 1:
            value = value.astype(np.float16)
        writer.add_tensor(f"{base}.weight", np.ascontiguousarray(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def _add_tokenizer(writer, folder: Path, gguf) -> None:
    """The byte-level BPE tokenizer of tokenizer.json as llama.cpp's `gpt2` model, its special ids
    and the chat template (chat_template.jinja, else tokenizer_config.json's)."""
    tok = _read_json(folder / "tokenizer.json")
    cfg = _read_json(folder / "tokenizer_config.json")
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(
            f"the tokenizer is {model.get('type')!r}, not a byte-level BPE: not exported to GGUF yet"
        )
    vocab = model["vocab"]
    added = {t["content"]: t["id"] for t in tok.get("added_tokens") or []}
    special = {t["content"] for t in tok.get("added_tokens") or [] if t.get("special")}
    size = max([*vocab.values(), *added.values()]) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    for text, index in {**vocab, **added}.items():
        tokens[index] = text
    types = [
        gguf.TokenType.CONTROL
        if text in special
        else gguf.TokenType.USER_DEFINED
        if text in added
        else gguf.TokenType.NORMAL
        for text in tokens
    ]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []])
    ids = {**vocab, **added}
    for key, add in (
        ("bos_token", writer.add_bos_token_id),
        ("eos_token", writer.add_eos_token_id),
        ("pad_token", writer.add_pad_token_id),
        ("unk_token", writer.add_unk_token_id),
    ):
        token = cfg.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        if isinstance(token, str) and token in ids:
            add(ids[token])
    writer.add_add_bos_token(False)  # the chat template writes whatever the model starts with
    template = chat_template_of(folder)
    if template:
        writer.add_chat_template(template)


def chat_template_of(folder: Path) -> str | None:
    path = folder / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    value = _read_json(folder / "tokenizer_config.json").get("chat_template")
    return value if isinstance(value, str) else None


# --- the Ollama Modelfile ---------------------------------------------------------------------------


def _render(template: str, messages: list[dict], special: dict, prompt: bool = False) -> str:
    return ct.render(template, messages, add_generation_prompt=prompt, special_tokens=special).text


_NOT_PLAIN = "the chat template is not a plain prefix-content-suffix per role: write TEMPLATE by hand"


def ollama_template(template: str, special: dict[str, str]) -> str:
    """The chat template as an Ollama (Go) TEMPLATE: each role's text around its content, found by
    rendering the Jinja template around sentinel contents, and the generation prompt after the last
    message when it is not the assistant's. Raises ExportError when the template is not of that
    prefix-content-suffix kind (the GGUF still holds the Jinja template for llama.cpp)."""
    s = {role: _SENTINEL.format(role) for role in ("system", "user", "assistant", "user2")}
    try:
        user = _render(template, [{"role": "user", "content": s["user"]}], special)
        prompt = _render(template, [{"role": "user", "content": s["user"]}], special, prompt=True)
        pair = _render(
            template,
            [{"role": "user", "content": s["user"]}, {"role": "assistant", "content": s["assistant"]}],
            special,
        )
        three = _render(
            template,
            [
                {"role": "user", "content": s["user"]},
                {"role": "assistant", "content": s["assistant"]},
                {"role": "user", "content": s["user2"]},
            ],
            special,
        )
        system = _render(
            template,
            [{"role": "system", "content": s["system"]}, {"role": "user", "content": s["user"]}],
            special,
        )
    except ct.TemplateError as exc:
        raise ExportError(f"the chat template cannot be rendered for the Modelfile: {exc.message}") from None
    try:
        u_head, u_tail = user.split(s["user"])
        generation = prompt[len(user) :] if prompt.startswith(user) else ""
        between, a_suffix = pair.split(s["user"])[1].split(s["assistant"])
        u_suffix = u_tail
        a_prefix = between[len(u_suffix) :] if between.startswith(u_suffix) else None
        later_user = three.split(s["assistant"])[1].split(s["user2"])[0]
        u_prefix = later_user[len(a_suffix) :] if later_user.startswith(a_suffix) else None
        bos = (
            u_head[: len(u_head) - len(u_prefix)]
            if u_prefix is not None and u_head.endswith(u_prefix)
            else None
        )
        sys_head, sys_rest = system.split(s["system"])
        sys_tail = sys_rest.split(s["user"])[0]
        sys_suffix = (
            sys_tail[: len(sys_tail) - len(u_prefix)] if u_prefix and sys_tail.endswith(u_prefix) else None
        )
        sys_prefix = sys_head[len(bos) :] if bos is not None and sys_head.startswith(bos) else None
    except ValueError:  # a sentinel missing or repeated (a template that drops system messages)
        raise ExportError(_NOT_PLAIN) from None
    if a_prefix is None or u_prefix is None or bos is None or sys_prefix is None or sys_suffix is None:
        raise ExportError(_NOT_PLAIN)
    parts = {
        k: _go(v)
        for k, v in dict(
            bos=bos,
            sp=sys_prefix,
            ss=sys_suffix,
            up=u_prefix,
            us=u_suffix,
            ap=a_prefix,
            as_=a_suffix,
            gen=generation,
        ).items()
    }
    return (
        parts["bos"]
        + "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        + '{{ if eq .Role "system" }}'
        + parts["sp"]
        + "{{ .Content }}"
        + parts["ss"]
        + '{{ else if eq .Role "user" }}'
        + parts["up"]
        + "{{ .Content }}"
        + parts["us"]
        + '{{ else if eq .Role "assistant" }}'
        + parts["ap"]
        + "{{ .Content }}{{ if not $last }}"
        + parts["as_"]
        + "{{ end }}{{ end }}"
        + '{{ if and $last (ne .Role "assistant") }}'
        + parts["gen"]
        + "{{ end }}{{ end }}"
    )


def _go(text: str) -> str:
    """Literal text inside a Go template (a `{{` in it would open an action)."""
    return text.replace("{{", '{{ "{{" }}')


def modelfile(gguf_name: str, template: str | None, special: dict[str, str], stops: list[str]) -> str:
    """An Ollama Modelfile for the GGUF beside it."""
    lines = [f"FROM ./{gguf_name}"]
    if template:
        go = ollama_template(template, special)
        if '"""' in go:
            raise ExportError('the translated template holds """, which a Modelfile cannot quote')
        lines.append(f'TEMPLATE """{go}"""')
    for stop in dict.fromkeys(s for s in stops if s):
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    return "\n".join(lines) + "\n"


def _special_tokens(folder: Path) -> dict[str, str]:
    cfg = _read_json(folder / "tokenizer_config.json")
    out = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = cfg.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            out[key] = value
    return out


def file_stem(spec: dict) -> str:
    """The export's file name: the spec's name, made safe for a file system."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(spec.get("name") or "model")).strip("-.") or "model"


def export_gguf(merged: Path, out_dir: Path, spec: dict, stops: list[str]) -> list[str]:
    """export/<name>.gguf and export/Modelfile from the merged model folder; the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = file_stem(spec)
    target = write_gguf(
        merged, out_dir / f"{stem}.gguf", dtype=gguf_dtype(spec), name=str(spec.get("name") or stem)
    )
    special = _special_tokens(merged)
    text = modelfile(target.name, chat_template_of(merged), special, [*stops, special.get("eos_token", "")])
    (out_dir / "Modelfile").write_text(text, encoding="utf-8")
    return [target.name, "Modelfile"]
