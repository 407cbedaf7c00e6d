"""A small real GGUF file for the tests: the built-in tiny model written with gguf's GGUFWriter.

The tensors go in as f32 under llama.cpp's names, with the q_proj/k_proj rows permuted the way
llama.cpp stores them for its RoPE layout (transformers' GGUF loader reverses exactly that, see
../shared/cpu-notes.md "GGUF out"); the tokenizer as model `gpt2` with the byte-level BPE tokens,
token types and merges, its EOS/padding ids and the chat template.
"""

from __future__ import annotations

import json
from pathlib import Path


def _permute(weight, heads: int):
    """llama.cpp's convert_hf_to_gguf LlamaModel.permute."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_gguf_from_folder(folder: Path, target: Path, *, hub_repo: str | None = None) -> Path:
    """`target` (.gguf) holding the Llama model and tokenizer saved in `folder`."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    config = json.loads((folder / "config.json").read_text())
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    template_file = folder / "chat_template.jinja"
    template = template_file.read_text() if template_file.is_file() else tok_cfg["chat_template"]
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)

    writer = gguf.GGUFWriter(str(target), "llama")
    writer.add_name("ftspec tiny llama (test)")
    if hub_repo:
        writer.add_string("general.source.huggingface.repository", hub_repo)
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
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = tok["model"]["vocab"]
    added = {t["content"]: t["id"] for t in tok["added_tokens"]}
    size = max([*vocab.values(), *added.values()]) + 1
    tokens = [""] * size
    for text, index in {**vocab, **added}.items():
        tokens[index] = text
    types = [gguf.TokenType.CONTROL if text in added else gguf.TokenType.NORMAL for text in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(added[tok_cfg["eos_token"]])
    if tok_cfg.get("pad_token") in added:
        writer.add_pad_token_id(added[tok_cfg["pad_token"]])
    writer.add_add_bos_token(False)
    writer.add_chat_template(template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    for name, value in load_file(str(folder / "model.safetensors")).items():
        value = value.astype(np.float32)
        if name.endswith("q_proj.weight"):
            value = _permute(value, heads)
        elif name.endswith("k_proj.weight"):
            value = _permute(value, kv_heads)
        gguf_name = names.get_name(name.removesuffix(".weight"))
        writer.add_tensor(f"{gguf_name}.weight", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
