"""What autograd keeps for backward in one decoder layer, eager and torch.compile'd (CPU, no GPU needed).

Runs a transformers LlamaDecoderLayer (bf16, SDPA, grouped-query attention) forward under
torch.autograd.graph.saved_tensors_hooks and lists every saved tensor that is not a parameter or the
layer's input, with its bytes per token in units of hidden-size bytes. This is where the estimator's
per-layer activation terms come from (compiler/check/memory.py, `compiled` and eager branches):
AOTAutograd's partitioner decides what a compiled layer saves on any device, so the CPU reading holds
for CUDA too (attention kernels differ only in their small log-sum-exp buffers).

    .venv/bin/python benchmarks/saved_activations.py [--compiled] [--tokens 2048]
"""

from __future__ import annotations

import argparse
import json


def measure(compiled: bool, tokens: int, hidden=256, inter=704, heads=8, kv_heads=2) -> dict:
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        num_hidden_layers=1,
        attn_implementation="sdpa",
    )
    layer = LlamaDecoderLayer(cfg, 0).to(torch.bfloat16)
    b, s = 2, max(tokens // 2, 8)
    x = torch.randn(b, s, hidden, dtype=torch.bfloat16, requires_grad=True)
    pos = torch.arange(s)[None].expand(b, s)
    cos, sin = LlamaRotaryEmbedding(cfg)(x, pos)
    fn = torch.compile(layer) if compiled else layer
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()} | {x.untyped_storage().data_ptr()}
    seen: dict[int, tuple] = {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in params and key not in seen:
            seen[key] = (tuple(t.shape), str(t.dtype), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x, attention_mask=None, position_embeddings=(cos, sin), position_ids=pos)
    unit = b * s * hidden  # bytes per token per hidden unit
    listed = [
        {"shape": sh, "dtype": dt, "h_bytes_per_token": round(n / unit, 3)} for sh, dt, n in seen.values()
    ]
    return {
        "compiled": compiled,
        "shapes": dict(hidden=hidden, intermediate=inter, heads=heads, kv_heads=kv_heads, tokens=b * s),
        "saved": listed,
        "bytes_per_token": sum(n for _s, _d, n in seen.values()) / (b * s),
        "h_bytes_per_token": round(sum(n for _s, _d, n in seen.values()) / unit, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compiled", action="store_true")
    parser.add_argument("--tokens", type=int, default=2048)
    args = parser.parse_args()
    result = measure(args.compiled, args.tokens)
    for t in result["saved"]:
        print(f"  {str(t['shape']):22} {t['dtype']:15} {t['h_bytes_per_token']:7.3f} x hidden bytes / token")
    print(json.dumps({k: v for k, v in result.items() if k != "saved"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
