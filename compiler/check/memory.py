"""Per-GPU training memory, component by component, with the peak taken over the phases of a step.

The model follows what the training stack actually keeps alive (read from transformers, PEFT,
bitsandbytes, DeepSpeed and torch sources, checked against published measurements in
data/memory-calibration.csv; see benchmarks/memory_accuracy.py):

* weights: frozen base in 16-bit, or NF4/FP4 at 4.5 bits per parameter (4.127 with double
  quantization: 8-bit absmax per 64 weights plus an fp32 constant per 256 blocks), embeddings and
  output layer kept in 16-bit; full fine-tuning keeps trainable weights in their dtype;
* adapters: LoRA A/B from rank x (in + out) of each targeted module, DoRA magnitude vectors; PEFT
  keeps adapter weights in fp32 (`autocast_adapter_dtype`), so gradients and Adam states are fp32;
* gradients: present through forward/backward only when accumulated over micro batches;
* optimizer states by optimizer and precision (master weights under mixed precision / DeepSpeed);
  paged bitsandbytes states live in CUDA unified memory, outside the caching allocator;
* activations saved per decoder layer (norms keep an fp32 copy, SDPA with repeated KV heads, SwiGLU
  keeps gate, up, silu and product), or only layer inputs plus one recomputed layer under
  gradient checkpointing; LoRA dropout and the adapter input casts add per-module copies;
* logits and loss: bf16 logits, fp32 upcast, log-softmax output and its gradient (~14 bytes per
  token per vocabulary entry at the start of backward);
* sharding (DDP buckets, ZeRO 1-3, FSDP full shard with gathered units and, in backward, unsharded
  gradients of two units), CPU offload;
* optimizer temporaries: torch's foreach AdamW (the default without `fused`) materialises sqrt(v);
* device overhead: CUDA context and the caching allocator's reserve. The allocator reuses a block
  only on the stream that allocated it, so under FSDP the all-gather and reduce-scatter streams'
  pools (gathered units, sharded gradients) stay reserved next to the default stream's peak.

Peak = max(forward/backward, optimizer step) for allocated; reserved adds fragmentation and the
FSDP stream pools; device adds the CUDA context (and NCCL).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ftspec.compiler.catalog.arch_shapes import ALL_LINEAR, MODULE_ALIASES, Shapes
from ftspec.compiler.core.resolve import resolve_strategy, world_size
from ftspec.compiler.core.schema import schema_default

GIB = 1024**3
CUDA_CONTEXT_GIB = 0.5  # CUDA context + cuBLAS workspace as nvidia-smi shows it (torch 2.x, lazy loading)
NCCL_GIB = 0.5  # NCCL communicator buffers per process when more than one GPU is used
ALLOCATOR_FRACTION = 0.06  # caching allocator: reserved over allocated (fragmentation, rounding)
ALLOCATOR_FLOOR_GIB = 0.15
# Unpacked data (variable batch lengths): the caching allocator returns a cached block only when a
# cudaMalloc fails, and a freed block serves a later request only if it is at least as large. Each
# batch longer than every earlier one (a record) needs new segments for its largest tensors while
# the earlier, smaller ones stay cached. Over N steps of i.i.d. batch lengths the expected number of
# records above the median length is H(N/2) (~6.8 for N = 1,000), at a mean of 3/4 of the longest:
# ~5 copies of the step's shape-dependent memory, one of which the estimate already counts. The
# reserve can only grow into free memory (on a failing cudaMalloc the allocator releases its cache
# and retries), so it bounds what a reserved / nvidia-smi reading of an unpacked run shows, not
# what must fit: it is the estimate's high end, and the verdict is "tight" when only it overflows.
SHAPE_RECORD_COPIES = 4
# A configuration only partly known (target modules not in the architecture) is uncertain by this
# share of the estimate.
PARTLY_KNOWN_SPREAD = 0.10

# Optimizer state bytes per trainable parameter, for fp32 parameters (bnb 8-bit: 2 states of 1 byte
# plus an fp32 absmax per 256-value block).
OPTIMIZER_STATE_BYTES = {
    "adamw_torch": 8.0,
    "adamw_8bit": 2.0 + 2 * 4 / 256,
    "paged_adamw_8bit": 2.0 + 2 * 4 / 256,
    "paged_adamw_32bit": 8.0,
    "sgd": 0.0,
}
PAGED = {"paged_adamw_8bit", "paged_adamw_32bit"}


@dataclass(frozen=True)
class TrainSetup:
    """Everything the estimate depends on, normalised from a resolved spec (or a calibration row)."""

    method: str = "lora"  # lora | qlora | full
    r: int = 16
    target_modules: tuple[str, ...] | str = "all-linear"
    dora: bool = False
    lora_dropout: float = 0.05
    quant_bits: int = 4
    double_quant: bool = True
    precision: str = "bf16"  # bf16 | bf16-mixed | fp16 | fp32
    optimizer: str = "adamw_torch"
    micro_batch: int = 1
    seq_len: int = 2048
    grad_ckpt: bool = True
    grad_accum: int = 1
    world: int = 1  # processes in all (gpus_per_node x nodes)
    nodes: int = 1
    strategy: str = "single"  # single | ddp | fsdp | deepspeed
    zero_stage: int | None = None
    offload: str = "none"  # none | optimizer | optimizer_and_params
    # How the training stack behaves; the defaults are ftspec's runtime (transformers Trainer + PEFT).
    attention: str = "sdpa"  # sdpa (KV heads repeated for GQA) | flash | eager (scores materialised)
    compiled: bool = False  # torch.compile of the layers fuses norms and SwiGLU
    loss: str = "full"  # full (fp32 upcast of all logits) | chunked | chunked_compiled
    adapter_bytes: int = 4  # PEFT upcasts adapter weights to fp32; torchtune keeps them in bf16
    cast_adapter_input: bool = True  # PEFT casts each adapted module's input to the adapter dtype
    optimizer_in_backward: bool = False  # step fused into backward (torchtune): no full gradient buffer
    fused_optimizer: bool = False  # fused AdamW kernel; the foreach default materialises sqrt(v) temporaries
    fsdp_root_gathered: bool = True  # FSDP root unit (embeddings, output layer) stays gathered fwd -> bwd
    activation_offload: bool = False
    grads_persist: bool | None = None  # None: when accumulating (grad_accum > 1)
    # The model's logits still referenced while the layers run backward (a training loop that keeps
    # the model output alive); Trainer, torchtune and ftspec's loop drop them before backward.
    logits_kept: bool = False
    loss_chunk_tokens: int = 1024  # loss="trained_chunks": positions per lm_head + cross-entropy chunk
    # Unpacked data: every step has its own batch length, so the caching allocator keeps blocks sized
    # for earlier batches next to the current one's (the reserve can grow; see SHAPE_RECORD_COPIES).
    variable_shapes: bool = False


@dataclass
class MemoryEstimate:
    """Bytes per GPU by component at the peak phase, and the headline numbers in GiB."""

    components: dict[str, float]
    phases: dict[str, float]
    peak_phase: str
    allocated: float
    reserved: float
    device: float
    paged: float = 0.0
    host: float = 0.0
    trainable_params: float = 0.0
    notes: list[str] = field(default_factory=list)
    gpu_memory_gib: float | None = None
    headroom: float = 0.1
    applicable: bool = True  # False on CPU processes: no device memory to check
    # The estimate's high end above `device` (unpacked data's shape cache, a partly known config):
    # a run whose `device` fits but whose high end does not is "tight", never "does not fit".
    uncertainty: float = 0.0
    shape_cache: float = 0.0  # part of `uncertainty`: blocks cached for earlier batch lengths

    overhead: float = 0.0  # CUDA context (and NCCL): device memory outside the caching allocator

    @property
    def reserved_high(self) -> float:
        """The reserved reading's high end: reserved plus the shape cache, within the card (paged
        optimizer states, in unified memory, give way to it)."""
        high = self.reserved + self.shape_cache
        if self.gpu_memory_gib is not None and self.applicable:
            high = min(high, max(self.reserved, self.gpu_memory_gib * GIB - self.overhead))
        return high

    @property
    def device_high(self) -> float:
        high = self.device + self.uncertainty
        if self.gpu_memory_gib is not None and self.applicable:
            high = min(high, max(self.device, self.gpu_memory_gib * GIB))
        return high

    @property
    def allocated_gib(self) -> float:
        return self.allocated / GIB

    @property
    def reserved_gib(self) -> float:
        return self.reserved / GIB

    @property
    def device_gib(self) -> float:
        return self.device / GIB

    @property
    def usable_gib(self) -> float | None:
        if self.gpu_memory_gib is None:
            return None
        return self.gpu_memory_gib * (1.0 - self.headroom)

    @property
    def fits(self) -> bool | None:
        usable = self.usable_gib  # None without the GPU's memory
        if not self.applicable or usable is None:
            return None
        return self.device_gib <= usable

    @property
    def verdict(self) -> str | None:
        """fits | tight (fits, but the estimate's high end does not) | does_not_fit; None: no check.
        `fits` stays the boolean: tight is a fit with a warning, never a substitute for False."""
        fits, usable = self.fits, self.usable_gib
        if fits is None or usable is None:  # usable is known when fits is
            return None
        if not fits:
            return "does_not_fit"
        return "tight" if (self.device + self.uncertainty) / GIB > usable else "fits"

    def components_gib(self) -> dict[str, float]:
        return {k: round(v / GIB, 3) for k, v in self.components.items() if v > 0}

    def to_json(self) -> dict:
        return {
            "per_gpu": {
                "allocated_gib": round(self.allocated_gib, 2),
                "reserved_gib": round(self.reserved_gib, 2),
                "device_gib": round(self.device_gib, 2),
            },
            "components_gib": self.components_gib(),
            "phases_gib": {k: round(v / GIB, 2) for k, v in self.phases.items()},
            "peak_phase": self.peak_phase,
            "paged_optimizer_gib": round(self.paged / GIB, 2),
            "host_offload_gib": round(self.host / GIB, 2),
            "trainable_params": int(self.trainable_params),
            "gpu_memory_gib": None if self.gpu_memory_gib is None else round(self.gpu_memory_gib, 2),
            "usable_gib": None if self.usable_gib is None else round(self.usable_gib, 2),
            "headroom": self.headroom,
            "fits": self.fits,
            "verdict": self.verdict,
            "device_high_gib": round(self.device_high / GIB, 2),
            "notes": list(self.notes),
        }


def lora_targets(setup: TrainSetup, shapes: Shapes) -> tuple[list[tuple[str, int, int, int]], list[str]]:
    """(name, in, out, copies per layer) for each adapted module, plus names we could not map."""
    mods = shapes.modules()
    if setup.target_modules == "all-linear":
        names = list(ALL_LINEAR) if shapes.gated_mlp else ["q", "k", "v", "o", "fc1", "fc2"]
        return [(n, *mods[n]) for n in names], []
    out, unknown = [], []
    for raw in setup.target_modules:
        canon = MODULE_ALIASES.get(raw.split(".")[-1].lower())
        if canon == "lm_head":
            out.append(("lm_head", shapes.hidden, shapes.vocab, 0))  # 0: not per layer
        elif canon in mods:
            out.append((canon, *mods[canon]))
        else:
            unknown.append(raw)
            # unknown names: count them as a hidden x hidden projection so the estimate stays honest
            out.append((raw, shapes.hidden, shapes.hidden, 1))
    return out, unknown


def _world_shards(setup: TrainSetup) -> tuple[int, int, int]:
    """Divisors for (weights, gradients, optimizer states) under the sharding strategy."""
    n = max(setup.world, 1)
    if setup.strategy == "fsdp":
        return n, n, n
    if setup.strategy == "deepspeed":
        stage = setup.zero_stage or 0
        return (n if stage >= 3 else 1), (n if stage >= 2 else 1), (n if stage >= 1 else 1)
    return 1, 1, 1


def estimate_setup(
    setup: TrainSetup,
    shapes: Shapes,
    *,
    gpu_memory_gib: float | None = None,
    headroom: float = 0.1,
    on_cpu: bool = False,
) -> MemoryEstimate:
    notes: list[str] = []
    a = 4 if setup.precision == "fp32" else 2  # activation / compute dtype bytes
    tokens = setup.micro_batch * setup.seq_len
    h, L, V = shapes.hidden, shapes.layers, shapes.vocab
    k_exp = shapes.experts_per_token if shapes.experts > 1 else 1
    w_shard, g_shard, o_shard = _world_shards(setup)
    deepspeed = setup.strategy == "deepspeed"
    offload_opt = setup.offload != "none" and setup.strategy in ("deepspeed", "fsdp")
    offload_params = (
        setup.strategy == "fsdp"
        and setup.offload != "none"
        or (deepspeed and setup.offload == "optimizer_and_params" and (setup.zero_stage or 0) >= 3)
    )
    mixed = setup.precision in ("bf16-mixed", "fp16")

    # --- weights -----------------------------------------------------------------------------------
    embed_head = shapes.embed_params + shapes.head_params
    if setup.method == "qlora":
        bits = 8.0 + 32.0 / shapes.hidden if setup.quant_bits == 8 else (4.127 if setup.double_quant else 4.5)
        base = shapes.body_params * bits / 8 + embed_head * 2
        layer_unit = shapes.layer_params * bits / 8
    else:
        wbytes = (
            4 if (setup.precision == "fp32" or (setup.method == "full" and mixed and not deepspeed)) else 2
        )
        base = shapes.total_params * wbytes
        layer_unit = shapes.layer_params * wbytes
    root_unit = embed_head * 2
    host = 0.0
    weights = base / w_shard
    gathered = 0.0
    if w_shard > 1:
        # FSDP/ZeRO-3 gather one unit at a time and prefetch the next; the root unit (embeddings,
        # output layer) stays gathered from forward into backward.
        # With embeddings and output layer sharded as their own units, one of them is gathered at a
        # time next to a layer (the output layer while the loss is computed).
        root_piece = (
            root_unit if setup.fsdp_root_gathered else root_unit / (1 if shapes.tie_embeddings else 2)
        )
        gathered = layer_unit + max(layer_unit, root_piece)
    if offload_params:
        host += weights
        weights = 0.0

    # --- trainable parameters ----------------------------------------------------------------------
    adapter_params = 0.0
    adapted: list[tuple[str, int, int, int]] = []
    unknown_modules = False
    if setup.method == "full":
        trainable = shapes.total_params
        pbytes = 2 if (setup.precision in ("bf16",) or deepspeed) and setup.precision != "fp32" else 4
        if setup.precision == "fp16" and deepspeed:
            pbytes = 2
    else:
        adapted, unknown = lora_targets(setup, shapes)
        unknown_modules = bool(unknown)
        if unknown:
            notes.append(
                "target modules not in this architecture, counted as hidden x hidden: " + ", ".join(unknown)
            )
        for _name, fin, fout, copies in adapted:
            per = setup.r * (fin + fout) + (fout if setup.dora else 0)
            adapter_params += per * (copies * L if copies else 1)
        trainable = adapter_params
        pbytes = setup.adapter_bytes if setup.precision != "fp32" else 4
    adapter_w = 0.0 if setup.method == "full" else adapter_params * pbytes / w_shard

    grad_bytes = pbytes
    grads_full = trainable * grad_bytes / g_shard
    if setup.method == "full" and mixed and deepspeed:
        master = 4.0
    elif deepspeed and setup.precision != "fp32" and pbytes == 2:
        master = 4.0  # DeepSpeed keeps fp32 master weights for 16-bit parameters
    else:
        master = 0.0
    state_scale = 1.0 if (pbytes == 4 or master) else 0.5  # states follow the parameter dtype
    state_bytes = OPTIMIZER_STATE_BYTES.get(setup.optimizer, 8.0)
    if setup.optimizer == "adamw_torch":
        # torch AdamW states are zeros_like(param); bitsandbytes' 32-bit optimizers allocate fp32
        # states whatever the parameter dtype (Optimizer2State.init_state, optim_bits 32).
        state_bytes *= state_scale
    opt_states = trainable * (state_bytes + master) / o_shard
    paged = 0.0
    if setup.optimizer in PAGED and not offload_opt:
        paged, opt_states = opt_states, 0.0
    if offload_opt:
        host += opt_states + grads_full * (0 if deepspeed else 1)
        opt_states = 0.0
        if not deepspeed:
            grads_full = 0.0
    # Gradients alive during forward/backward: accumulated ones, or (step fused into backward) only
    # the largest single parameter's.
    persist = setup.grads_persist if setup.grads_persist is not None else setup.grad_accum > 1
    if setup.optimizer_in_backward:
        grads_fwd = max(shapes.embed_params, shapes.largest_module_params * shapes.experts) * grad_bytes
        grads_step = grads_fwd
        if setup.method == "full":
            grads_step = grads_fwd
    else:
        grads_fwd = grads_full if persist else 0.0
        grads_step = grads_full
    # FSDP (FlatParameter FSDP1 and per-parameter FSDP2 alike) differentiates one unit at a time
    # into unsharded gradients on the default stream and reduce-scatters them on its own stream.
    # In flight during a layer's backward: the unit being differentiated and the previous one,
    # which the reduce-scatter still reads (FSDP1 keeps it alive with record_stream; FSDP2 copies it
    # into a buffer allocated in the reduce-scatter stream).
    fsdp_sharded = setup.strategy == "fsdp" and w_shard > 1
    unit_trainable = shapes.layer_params if setup.method == "full" else adapter_params / max(L, 1)
    unit_grad = unit_trainable * grad_bytes if fsdp_sharded else 0.0
    # The sharded gradients are the reduce-scatter outputs, allocated in the reduce-scatter stream
    # (torch FSDP1 _reduce_grad, FSDP2 foreach_reduce); with CPU offload they are copied out per unit.
    rs_pool = (
        ((grads_step if setup.optimizer_in_backward else grads_full) + unit_grad) if fsdp_sharded else 0.0
    )
    # DDP keeps a bucket copy of every gradient (gradient_as_bucket_view is off by default).
    comm = 0.0
    if setup.strategy == "ddp" and setup.world > 1:
        comm += trainable * grad_bytes
    if deepspeed:
        comm += 2 * min(trainable, h * h) * 2  # reduce / prefetch buckets sized from hidden^2 ("auto")

    # --- activations (bytes per token per layer) ----------------------------------------------------
    qd, kvd, inter = shapes.q_dim, shapes.kv_dim, shapes.intermediate
    repeat_kv = setup.attention != "flash" and shapes.kv_heads != shapes.heads
    kv_saved = 2 * a * qd if repeat_kv else 2 * a * kvd  # SDPA gets k, v repeated to all heads
    if setup.compiled:
        # What AOTAutograd's min-cut partitioner saves for a compiled decoder layer, read with
        # saved_tensors_hooks (benchmarks/saved_activations.py, torch 2.13): each norm keeps its
        # 16-bit input and its output (the matmuls' input: reductions are not recomputed, so neither
        # is the normalised tensor), attention keeps q, k, v, its output and the o_proj input, and
        # SwiGLU keeps gate, up and their product (down_proj's input); only silu is recomputed.
        norm = 2 * a * h
        attn = norm + a * qd + kv_saved + 2 * a * qd
        mlp_inner = (3 if shapes.gated_mlp else 2) * a * inter
    else:
        norm = (4 + a) * h  # fp32 copy of the input (pow, mul) + normalised 16-bit output
        attn = norm + a * qd + kv_saved + 2 * a * qd  # q after RoPE, k, v, output and its contiguous copy
        mlp_inner = (4 if shapes.gated_mlp else 2) * a * inter  # gate, up, silu(gate), product
    if setup.attention == "eager":
        attn += (2 * a + 4) * shapes.heads * setup.seq_len  # scores, fp32 softmax, probabilities
    mlp = norm + k_exp * mlp_inner + ((k_exp * 2 * a * h + 4 * shapes.experts) if shapes.experts > 1 else 0)
    lora_extra = 0.0
    for _name, fin, fout, copies in adapted:
        if not copies:
            continue
        # Expert modules exist `copies` times per layer, but each token passes through only k of them:
        # the per-token saved inputs scale with k, not with the number of experts.
        n = k_exp if copies > 1 else copies
        saved = a * fin if setup.cast_adapter_input else 0.0
        if setup.lora_dropout > 0:
            saved += (a + 1) * fin  # dropout output + mask, one per adapted module
        if setup.dora:
            saved += 2 * a * fout  # DoRA re-runs the base matmul and keeps both branches
        lora_extra += n * saved
    per_layer = attn + mlp + lora_extra
    work = tokens * (2 * a * h + 3 * a * inter * k_exp)  # gradients in flight inside one layer's backward
    if setup.activation_offload:
        saved_layers = 0.0
    elif setup.grad_ckpt:
        saved_layers = L * tokens * a * h
    else:
        saved_layers = L * tokens * per_layer
    recompute = tokens * per_layer if setup.grad_ckpt or setup.activation_offload else 0.0
    final_norm = tokens * norm

    # --- logits and loss --------------------------------------------------------------------------
    # full: 16-bit logits + fp32 upcast + log-softmax output + its gradient at the start of backward;
    # chunked: fp32 log-softmax of every chunk kept, one chunk's upcast in flight; compiled chunks keep
    # only the 16-bit logits and one chunk's fp32 working set.
    # trained_chunks (ftspec's loop): lm_head and the cross-entropy run on the trained positions only,
    # a chunk at a time, each chunk recomputed in backward; one chunk's 16-bit logits, fp32 upcast,
    # log-softmax and gradient exist at once, never the whole batch's.
    if setup.loss == "trained_chunks":
        logits = min(tokens, max(setup.loss_chunk_tokens, 1)) * V * (a + 12)
    else:
        logit_bytes = {"full": a + 12, "chunked": a + 5, "chunked_compiled": a + 0.5}[setup.loss]
        logits = tokens * V * logit_bytes
    kept_logits = tokens * V * a if setup.logits_kept else 0.0
    head_grad = 0.0
    held_head_grad = 0.0
    if setup.method == "full" and not setup.optimizer_in_backward:
        head_grad = (shapes.head_params or shapes.embed_params) * grad_bytes / g_shard
        if fsdp_sharded:
            # Autograd computes the output layer's gradient unsharded. In a root unit that also holds
            # the embeddings (FSDP1's flat parameter; FSDP2's root group) it waits for the embedding
            # gradient, the last of the unit's, before the unit is reduce-scattered: held through
            # backward. Sharded as its own unit, it is reduce-scattered right after the loss.
            head_grad = (shapes.head_params or shapes.embed_params) * grad_bytes
            held_head_grad = head_grad if setup.fsdp_root_gathered else 0.0

    # --- transient buffers -------------------------------------------------------------------------
    temps = 0.0
    if setup.method == "qlora":
        temps += shapes.largest_module_params * a  # one dequantized weight at a time
    if setup.dora and adapted:
        biggest = max(fin * fout for _n, fin, fout, _c in adapted)
        temps += biggest * (a + 8)  # weight (dequantized) + fp32 B@A + its norm input
    if setup.method == "full" and mixed and not deepspeed:
        temps += trainable * 2 / w_shard  # autocast keeps 16-bit copies of fp32 weights until backward
    opt_temps = 0.0
    if (
        setup.optimizer == "adamw_torch"
        and not setup.fused_optimizer
        and not offload_opt
        and not setup.optimizer_in_backward
    ):
        # foreach AdamW materialises sqrt(v) for every parameter at once
        opt_temps = trainable * (4 if pbytes == 4 or master else 2) / o_shard

    # --- phases ------------------------------------------------------------------------------------
    resident = weights + adapter_w + opt_states + comm
    at_loss = saved_layers + final_norm + logits + head_grad
    # The loss's buffers are freed once its backward has run (the recipe drops the model output
    # before backward), so the layers' backward sees no logits unless the loop keeps them.
    in_layer = saved_layers + recompute + work + kept_logits
    layer_grads = 2 * unit_grad + held_head_grad  # unsharded FSDP gradients during a layer's backward
    fwd_bwd = resident + gathered + grads_fwd + temps + max(at_loss, in_layer + layer_grads)
    step = resident + grads_step + opt_temps
    phases = {"forward_backward": fwd_bwd, "optimizer_step": step}
    peak_phase = max(phases, key=phases.__getitem__)
    if peak_phase == "forward_backward":
        loss_point = at_loss >= in_layer + layer_grads
        act_total = at_loss if loss_point else in_layer
        logits_part = logits + head_grad if loss_point else kept_logits
        components = {
            "weights": weights,
            "gathered_weights": gathered,
            "adapter": adapter_w,
            "gradients": grads_fwd + (0.0 if loss_point else layer_grads),
            "optimizer_states": opt_states,
            "activations": act_total - logits_part,
            "logits_and_loss": logits_part,
            "temporaries": temps,
            "comm_buffers": comm,
        }
    else:
        components = {
            "weights": weights,
            "adapter": adapter_w,
            "gradients": grads_step,
            "optimizer_states": opt_states,
            "temporaries": opt_temps,
            "comm_buffers": comm,
        }
    allocated = phases[peak_phase]
    # The caching allocator reuses a freed block only on the stream that allocated it. Under FSDP the
    # all-gathered units (all-gather stream) and the sharded gradients (reduce-scatter stream) stay
    # cached in their streams' pools while the default stream's pool serves activations and the
    # optimizer step, so reserved memory is the sum of the pools' peaks, not the peak of their sum.
    pooled = allocated
    if fsdp_sharded:
        default_fwd = resident + temps + max(at_loss, in_layer + unit_grad + held_head_grad)
        default_pool = max(default_fwd, step - grads_step)
        pooled = max(allocated, default_pool + gathered + rs_pool)
    # Fragmentation comes from tensors that come and go every step; weights and optimizer states are
    # allocated once in large blocks and cost the caching allocator next to nothing.
    static = weights + adapter_w + opt_states
    overhead = 0.0
    if on_cpu:
        # CPU processes: no CUDA context or caching allocator; the number is host RAM per process.
        reserved = device = allocated
    else:
        frag = ALLOCATOR_FRACTION * max(allocated - static, 0.0) + ALLOCATOR_FLOOR_GIB * GIB
        reserved = pooled + frag
        overhead = CUDA_CONTEXT_GIB * GIB + (NCCL_GIB * GIB if setup.world > 1 else 0.0)
        device = reserved + overhead
        if pooled > allocated:
            components["stream_pools"] = pooled - allocated
        components["allocator_reserve"] = frag
        components["cuda_context"] = overhead
    if paged:
        # Paged states sit in unified memory: on the device while there is room, spilled to host after.
        room = max((gpu_memory_gib or 0) * GIB - device, 0.0) if gpu_memory_gib else paged
        on_device = min(paged, room)
        device += on_device
        components["optimizer_states_paged"] = on_device
        if paged > on_device:
            notes.append(
                f"paged optimizer states: {(paged - on_device) / GIB:.1f} GiB spill to host RAM (slower steps)"
            )
    shape_cache = 0.0
    uncertainty = 0.0
    if not on_cpu:
        if setup.variable_shapes:
            # the step's shape-dependent memory: what scales with the batch's tokens at its peak
            per_step = max(at_loss - head_grad, in_layer)
            shape_cache = SHAPE_RECORD_COPIES * per_step * (1 + ALLOCATOR_FRACTION)
        uncertainty = shape_cache + (PARTLY_KNOWN_SPREAD * device if unknown_modules else 0.0)
    if host:
        notes.append(f"CPU offload keeps {host / GIB:.1f} GiB per process in host RAM")
    return MemoryEstimate(
        components=components,
        phases=phases,
        peak_phase=peak_phase,
        allocated=allocated,
        reserved=reserved,
        device=device,
        paged=paged,
        host=host,
        trainable_params=trainable,
        notes=notes,
        gpu_memory_gib=None if on_cpu else gpu_memory_gib,
        headroom=headroom,
        applicable=not on_cpu,
        uncertainty=uncertainty,
        shape_cache=shape_cache,
        overhead=0.0 if on_cpu else overhead,
    )


def setup_from_resolved(resolved: dict, *, seq_len: int | None = None) -> TrainSetup:
    """The estimate's inputs from a resolved spec. `seq_len` replaces a `p95` sequence length."""
    adapter = resolved.get("adapter", {}) or {}
    training = resolved.get("training", {}) or {}
    hardware = resolved.get("hardware", {}) or {}
    method = adapter.get("method", "lora")
    quant = adapter.get("quantization") or {}
    world = world_size(hardware)
    strategy = resolve_strategy(hardware, world)
    raw_seq = training.get("sequence_len", schema_default("/training/sequence_len"))
    seq = seq_len if seq_len is not None else (raw_seq if isinstance(raw_seq, int) else 2048)
    targets = adapter.get("target_modules", "all-linear")
    return TrainSetup(
        method=method,
        r=int(adapter.get("r", 16) or 16),
        target_modules=targets if targets == "all-linear" else tuple(targets),
        dora=bool(adapter.get("dora", False)) and method != "full",
        lora_dropout=float(adapter.get("dropout", 0.0) or 0.0),
        quant_bits=int(quant.get("bits", 4) or 4),
        double_quant=bool(quant.get("double_quant", True)),
        precision=training.get("precision", "bf16"),
        optimizer=training.get("optimizer", "adamw_torch"),
        # dpo/orpo: each example is two sequences (prompt + chosen, prompt + rejected) in one forward
        micro_batch=int(training.get("micro_batch_size", schema_default("/training/micro_batch_size")) or 1)
        * (2 if str(training.get("objective") or "sft") in ("dpo", "orpo") else 1),
        seq_len=int(seq),
        grad_ckpt=bool(training.get("gradient_checkpointing", True)),
        grad_accum=int(
            training.get(
                "gradient_accumulation_steps", schema_default("/training/gradient_accumulation_steps")
            )
            or 1
        ),
        world=world,
        nodes=max(int(hardware.get("nodes", 1) or 1), 1),
        strategy=strategy,
        zero_stage=hardware.get("zero_stage") if strategy == "deepspeed" else None,
        offload=hardware.get("offload", "none") or "none",
        # ftspec's loop (runtime/train.py) computes the supervised loss on trained positions in
        # chunks; preference objectives score every position of both answers in one piece.
        loss="full" if str(training.get("objective") or "sft") != "sft" else "trained_chunks",
        variable_shapes=not bool(training.get("packing", schema_default("/training/packing"))),
    )


def estimate_memory(
    resolved: dict,
    arch: dict,
    *,
    gpu_memory_gib: float | None = None,
    seq_len: int | None = None,
    on_cpu: bool = False,
) -> MemoryEstimate:
    """Estimate per-GPU memory for a resolved spec and an architecture dict (pure; used by `init`)."""
    setup = setup_from_resolved(resolved, seq_len=seq_len)
    headroom = float((resolved.get("hardware") or {}).get("headroom", 0.1))
    return estimate_setup(
        setup, Shapes.from_arch(arch), gpu_memory_gib=gpu_memory_gib, headroom=headroom, on_cpu=on_cpu
    )


def with_changes(setup: TrainSetup, **changes: Any) -> TrainSetup:
    return replace(setup, **changes)
