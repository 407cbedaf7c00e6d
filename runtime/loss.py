"""The supervised loss on trained positions only, a chunk at a time (issue 14).

A causal LM's forward computes `lm_head` over every position and the loss upcasts the whole batch's
logits to fp32: batch x length x vocabulary x (2 + 4 + 4 + 4) bytes at the start of backward, most of
it for prompt and padding positions that carry no label. Here the output layer runs only where a
label is trained (labels[:, 1:] != -100, the same pairing as the unchunked loss), CHUNK positions
at a time, and each chunk is recomputed in backward (torch.utils.checkpoint), so one chunk's logits,
fp32 upcast, log-softmax and gradient exist at once, never the batch's. The estimator models it as
loss="trained_chunks" (compiler/check/memory.py).

How it is wired: the output layer's forward is swapped on the instance (its parameters, state-dict
keys, tying and any PEFT/FSDP/DeepSpeed hooks around it stay as they are). While `loss_sum(model,
head, inputs, labels)` runs, the head receives the final hidden states inside the model's own forward
(so DDP, FSDP and ZeRO-3 see a normal forward), computes the summed cross-entropy and hands it back
as the output's `logits` (a 0-d tensor). Any other call (generation, preference objectives, eval
metrics that read logits) gets ordinary logits. Models that post-process logits (Gemma's
soft-capping, Cohere's logit_scale) keep the unchunked loss.
"""

from __future__ import annotations

import os
import types

CHUNK = 1024  # trained positions per lm_head + cross-entropy chunk
_POSTPROCESSED = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling")


def supported(model) -> bool:
    """The chunked loss applies: the model's logits are lm_head's output, unchanged."""
    if os.environ.get("FTSPEC_UNCHUNKED_LOSS") == "1":
        return False
    config = getattr(model, "config", None)
    if config is None or getattr(model, "get_output_embeddings", None) is None:
        return False
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _POSTPROCESSED):
        return False
    return model.get_output_embeddings() is not None


def install(model):
    """Swap the output layer's forward for the chunked one; returns the head (None: unchunked)."""
    if not supported(model):
        return None
    head = model.get_output_embeddings()
    if getattr(head, "_ftspec_labels", False) is not False:
        return head  # already installed
    original = head.forward
    head._ftspec_labels = None
    head._ftspec_original = original

    def forward(self, hidden, *args, **kwargs):
        labels = self._ftspec_labels
        if labels is None:
            return original(hidden, *args, **kwargs)
        self._ftspec_labels = None  # one forward per loss_sum call
        return _chunked_sum(original, hidden, labels)

    head.forward = types.MethodType(forward, head)
    return head


def _chunked_sum(project, hidden, labels):
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    trained = labels[:, 1:] != -100
    targets = labels[:, 1:][trained]
    # hidden at position t predicts label t + 1 (the unchunked loss's logits[:, :-1] vs labels[:, 1:])
    picked = hidden[:, :-1][trained]
    if picked.shape[0] == 0:
        return hidden.sum() * 0.0  # keeps the graph (and every rank's collectives) connected

    def piece(h, y):
        return F.cross_entropy(project(h).float(), y, reduction="sum")

    total = None
    for start in range(0, picked.shape[0], CHUNK):
        h, y = picked[start : start + CHUNK], targets[start : start + CHUNK]
        if torch.is_grad_enabled():
            part = checkpoint(piece, h, y, use_reentrant=False)
        else:
            part = piece(h, y)
        total = part if total is None else total + part
    return total


def loss_sum(model, head, inputs: dict, labels):
    """Summed cross-entropy over trained tokens (fp32), chunked when `head` is installed."""
    import torch.nn.functional as F

    if head is None:
        logits = model(**inputs, use_cache=False).logits
        return F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
    head._ftspec_labels = labels
    try:
        out = model(**inputs, use_cache=False).logits
    finally:
        head._ftspec_labels = None
    return out.float().reshape(())
