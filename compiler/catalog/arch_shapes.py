"""Model shapes for the estimators: parameter counts by kind and the linear modules LoRA can target.

Pure arithmetic on the `model.architecture` fields (see the schema); no framework imports.
"""

from __future__ import annotations

from dataclasses import dataclass

# LoRA target names as the common implementations spell them, mapped to the canonical projection.
MODULE_ALIASES: dict[str, str] = {
    "q_proj": "q",
    "query": "q",
    "q": "q",
    "wq": "q",
    "k_proj": "k",
    "key": "k",
    "k": "k",
    "wk": "k",
    "v_proj": "v",
    "value": "v",
    "v": "v",
    "wv": "v",
    "o_proj": "o",
    "out_proj": "o",
    "output_proj": "o",
    "dense": "o",
    "o": "o",
    "wo": "o",
    "gate_proj": "gate",
    "w1": "gate",
    "gate": "gate",
    "up_proj": "up",
    "w3": "up",
    "up": "up",
    "down_proj": "down",
    "w2": "down",
    "down": "down",
    "qkv_proj": "qkv",
    "query_key_value": "qkv",
    "wqkv": "qkv",
    "c_attn": "qkv",
    "gate_up_proj": "gate_up",
    "fc1": "fc1",
    "fc_in": "fc1",
    "c_fc": "fc1",
    "dense_h_to_4h": "fc1",
    "fc2": "fc2",
    "fc_out": "fc2",
    "c_proj": "fc2",
    "dense_4h_to_h": "fc2",
    "lm_head": "lm_head",
    "output": "lm_head",
}
ALL_LINEAR = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class Shapes:
    """One model's shape with derived counts. `gated_mlp` is False for GPT-2/BLOOM-style MLPs (fc1/fc2)."""

    params_b: float
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    experts: int = 1
    experts_per_token: int = 1
    tie_embeddings: bool = False
    gated_mlp: bool = True

    @classmethod
    def from_arch(cls, arch: dict) -> Shapes:
        hidden = int(arch["hidden"])
        heads = int(arch.get("heads") or max(1, hidden // 128))
        experts = int(arch.get("experts") or 1)
        intermediate = int(arch.get("intermediate") or 4 * hidden)
        layers = int(arch["layers"])
        vocab = int(arch.get("vocab") or 32000)
        shapes = cls(
            params_b=float(arch.get("params_b") or 0.0),
            layers=layers,
            hidden=hidden,
            intermediate=intermediate,
            heads=heads,
            kv_heads=int(arch.get("kv_heads") or heads),
            head_dim=int(arch.get("head_dim") or hidden // heads),
            vocab=vocab,
            experts=experts,
            experts_per_token=int(arch.get("experts_per_token") or (2 if experts > 1 else 1)),
            tie_embeddings=bool(arch.get("tie_embeddings", False)),
            gated_mlp=bool(arch.get("gated_mlp", True)),
        )
        if not shapes.params_b:  # no published count: use the one the shape implies
            object.__setattr__(shapes, "params_b", shapes.computed_params / 1e9)
        return shapes

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def modules(self) -> dict[str, tuple[int, int, int]]:
        """Canonical linear module -> (in_features, out_features, copies per layer)."""
        h, i, e = self.hidden, self.intermediate, self.experts
        mods = {
            "q": (h, self.q_dim, 1),
            "k": (h, self.kv_dim, 1),
            "v": (h, self.kv_dim, 1),
            "o": (self.q_dim, h, 1),
            "qkv": (h, self.q_dim + 2 * self.kv_dim, 1),
        }
        if self.gated_mlp:
            mods.update({"gate": (h, i, e), "up": (h, i, e), "down": (i, h, e), "gate_up": (h, 2 * i, e)})
        else:
            mods.update({"fc1": (h, i, e), "fc2": (i, h, e)})
        return mods

    @property
    def attn_params_per_layer(self) -> int:
        return 2 * self.hidden * self.q_dim + 2 * self.hidden * self.kv_dim

    @property
    def mlp_params_per_layer(self) -> int:
        per_expert = (3 if self.gated_mlp else 2) * self.hidden * self.intermediate
        router = self.hidden * self.experts if self.experts > 1 else 0
        return per_expert * self.experts + router

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        return 0 if self.tie_embeddings else self.vocab * self.hidden

    @property
    def computed_params(self) -> int:
        per_layer = self.attn_params_per_layer + self.mlp_params_per_layer + 2 * self.hidden
        return self.layers * per_layer + self.embed_params + self.head_params + self.hidden

    @property
    def total_params(self) -> float:
        return self.params_b * 1e9

    @property
    def body_params(self) -> float:
        """Parameters in the decoder layers (what 4-bit quantization applies to): the published total
        minus embeddings and output layer, so biases and odd extras are counted without modelling them."""
        return max(self.total_params - self.embed_params - self.head_params, 0.0)

    @property
    def layer_params(self) -> float:
        return self.body_params / self.layers

    @property
    def active_params(self) -> float:
        """Parameters one token passes through: all of them for a dense model, k of E experts for MoE."""
        if self.experts <= 1:
            return self.total_params
        inactive = (
            (self.experts - self.experts_per_token)
            * (3 if self.gated_mlp else 2)
            * self.hidden
            * self.intermediate
        )
        return self.total_params - self.layers * inactive

    @property
    def largest_module_params(self) -> int:
        """Largest single linear weight (the unfused projections; fused qkv/gate_up are alternatives)."""
        return max(i * o for n, (i, o, _) in self.modules().items() if n not in ("qkv", "gate_up"))
