"""What a recipe will cost before it runs: *estimates*, printed by ``tina recipes`` and ``tina check``.

Two of them: the cost of the run (below), and the trainer's device memory (:func:`trainer_memory`, from the model's
shape and the recipe), which decides whether a vLLM engine sharing the trainer's GPU must sleep between rollout and
update (:func:`tina.rollout.vllm_plan.sleep_plan`).

The estimate is plain arithmetic on the recipe's ``cost`` section::

    hours = steps_run * cost.seconds_per_step / 3600               # wall-clock
    usd   = hours * cost.num_devices * cost.usd_per_device_hour

``steps_run`` is ``train.stop_step`` when set (Tina stops at about half of the schedule), else ``train.max_steps``.
``cost.seconds_per_step`` is a guess the recipe writes down (with ``cost.estimate_note`` saying where it comes from);
the bundled Tina recipes use 30 s per step on 2x L40S, derived from the paper's Table 1 (the five main runs cost
$213 of training for 13,350 steps at $1 per GPU-hour on 2 GPUs: 213 / 2 * 3600 / 13350 = 28.7 s per step; the paper
also says "a single RL step usually completes within one minute").  When the paper published the cost of the run
itself (``cost.reference_usd``), that figure is shown next to the estimate.  A run's ledger measures the real cost.

>>> from tina.config import load_config
>>> cfg = load_config({"train": {"max_steps": 1500, "stop_step": 850, "batch_size": 8},
...                    "rollout": {"num_generations": 4},
...                    "cost": {"num_devices": 2, "usd_per_device_hour": 1.0, "seconds_per_step": 30}})
>>> est = estimate_cost(cfg)
>>> round(est.hours, 2), round(est.usd, 2)
(7.08, 14.17)
>>> cost_cell(est)
'~$14'
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CostEstimate:
    steps: int  # optimizer steps the run will take (stop_step, else max_steps)
    num_devices: int
    device_name: str
    usd_per_device_hour: float
    seconds_per_step: float | None
    hours: float | None  # wall-clock hours (None without seconds_per_step)
    usd: float | None  # estimated training cost (None without seconds_per_step)
    reference_usd: float | None  # published training cost of this run
    note: str | None
    source: str = "guess"  # where seconds_per_step comes from: paper | guess | measured


def estimate_cost(cfg) -> CostEstimate:
    """The estimate for a loaded :class:`tina.config.Config` (pure arithmetic, no I/O)."""
    c = cfg.cost
    steps = cfg.last_step
    hours = usd = None
    if c.seconds_per_step is not None:
        hours = steps * c.seconds_per_step / 3600
        usd = hours * c.num_devices * c.usd_per_device_hour
    return CostEstimate(
        steps,
        c.num_devices,
        c.device_name,
        c.usd_per_device_hour,
        c.seconds_per_step,
        hours,
        usd,
        c.reference_usd,
        c.estimate_note,
        c.seconds_per_step_source,
    )


def _usd(x: float) -> str:
    """'$14', '$3.50', '$4', '$0.02'."""
    if x >= 10:
        return f"${x:,.0f}"
    if float(x).is_integer():
        return f"${x:.0f}"
    return f"${x:.2f}"


def cost_cell(est: CostEstimate) -> str:
    """Short form for a table column: '~$14' (estimate; '~$14*' when its s/step is the paper's, not measured), '-'
    when the recipe gives no seconds_per_step."""
    if est.usd is None:
        return "-"
    return f"~{_usd(est.usd)}" + ("*" if est.source == "paper" else "")


def paper_cell(est: CostEstimate) -> str:
    return _usd(est.reference_usd) if est.reference_usd is not None else ""


def describe(est: CostEstimate) -> str:
    """One line for `tina check`: the estimate, its arithmetic, and the published figure if any."""
    if est.usd is None:
        text = (
            f"cost: no estimate (set cost.seconds_per_step); {est.steps} steps on {est.num_devices}x "
            f"{est.device_name} at ${est.usd_per_device_hour:g}/device-hour"
        )
    else:
        origin = {
            "paper": "the paper's figure for its own setup, NOT measured with tina: measure it with "
            "`python benchmarks/gpu_step.py` and set cost.seconds_per_step_source=measured",
            "guess": "a guess, not a measurement",
            "measured": "s/step measured with tina on this hardware",
        }[est.source]
        text = (
            f"cost estimate: ~{_usd(est.usd)} = {est.steps} steps x {est.seconds_per_step:g} s/step "
            f"({est.hours:.1f} h) x {est.num_devices} {est.device_name} x ${est.usd_per_device_hour:g}/h"
            f" ({origin})"
        )
    if est.reference_usd is not None:
        text += f"; published: {_usd(est.reference_usd)}"
    if est.note:
        text += f" [{est.note}]"
    return text


# ------------------------------------------------------------------------------------------------ memory (vLLM sleep)
# What the trainer will hold on its device, estimated from the model's shape and the recipe, so that a vLLM engine
# sharing the device sleeps only when the two do not fit together (tina.rollout.vllm_plan.sleep_plan).  An ESTIMATE (the
# autograd graph is counted tensor by tensor for a Qwen2/Llama-style decoder, not measured): `tina doctor` measures the
# real peak on the machine of the run.

GIB = 2**30
CUDA_OVERHEAD = 1 * GIB  # CUDA context, cuBLAS workspace, NCCL buffers: outside torch's allocator, per process
PROMPT_TOKENS = 512  # assumed prompt length when rollout.max_model_len does not bound prompt + completion
ADAM_BYTES = 4 + 4 + 8  # per trainable (LoRA) parameter: float32 weight, gradient, two Adam moments
# memory of GPUs the recipes name in cost.device_name, as nvidia-smi reports it (MiB / 1024), for `tina check` on
# another machine; a run reads the real total from its device.  Specific names first (A100-40 before A100).
NOMINAL_GPU_GIB = {
    "H200": 140.4,
    "H100": 79.6,
    "A100-40": 40.0,
    "A100 40": 40.0,
    "A100": 80.0,
    "L40S": 45.0,
    "L40": 45.0,
    "A6000": 48.0,
    "A10G": 22.5,
    "A10": 22.5,
    "L4": 22.5,
    "4090": 24.0,
    "3090": 24.0,
    "T4": 15.0,
}


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a decoder-only transformer (Qwen2 / Llama style: GQA attention, SwiGLU MLP).

    >>> s = ModelShape.from_config({"hidden_size": 1536, "num_hidden_layers": 28, "intermediate_size": 8960,
    ...                             "vocab_size": 151936, "num_attention_heads": 12, "num_key_value_heads": 2,
    ...                             "tie_word_embeddings": False})
    >>> s.params  # Qwen2-1.5B untied: 2 x 151936 x 1536 embeddings + 28 x 46,795,776 per layer + the final norm
    1777030656
    """

    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict) -> ModelShape | None:
        """From a transformers ``config.json`` (a dict); None when it is not a decoder of this kind."""
        config = config.get("text_config", config)
        try:
            h, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            return cls(
                int(config["num_hidden_layers"]),
                h,
                int(config["intermediate_size"]),
                int(config["vocab_size"]),
                heads,
                int(config.get("num_key_value_heads") or heads),
                int(config.get("head_dim") or h // heads),
                bool(config.get("tie_word_embeddings", False)),
            )
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) of every linear layer of one decoder layer, by its usual module name."""
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def params(self) -> int:
        """Weights (biases ignored: a few thousand per layer)."""
        per_layer = sum(a * b for a, b in self.linear_dims().values()) + 2 * self.hidden  # + the two RMSNorms
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.layers * per_layer + self.hidden

    def lora_params(self, r: int, targets: list[str]) -> int:
        """LoRA parameters at rank ``r`` on ``targets`` (an unknown module name counts as hidden -> hidden)."""
        dims = self.linear_dims()
        return self.layers * sum(r * sum(dims.get(t, (self.hidden, self.hidden))) for t in targets)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training process holds on its device (an estimate)."""

    weights: float  # the base model's weights on this process (FSDP: its shard; all of them while gathered)
    adapter: float  # LoRA weights, gradients and Adam moments
    activations: float  # saved for the backward of one forward/backward pass, plus one layer's gradients
    logits: float  # the log-prob head's float32 chunks
    overhead: float  # CUDA context and libraries
    resident: float  # held between steps, while the engine generates: full weights + adapter + overhead

    @property
    def peak(self) -> float:
        """The update's peak."""
        return self.weights + self.adapter + self.activations + self.logits + self.overhead


def trainer_memory(
    shape: ModelShape,
    *,
    weight_bytes: int,
    lora_params: int,
    tokens: int,
    seq: int,
    checkpointing: bool,
    lora_dropout: bool = False,
    lora_targets: tuple[str, ...] = (),
    eager_attention: bool = False,
    shards: int = 1,
    chunk_bytes: int = 256 * 2**20,
    on_gpu: bool = True,
) -> MemoryEstimate:
    """The trainer's memory for one pass of ``tokens`` prompt + completion tokens (``seq`` per row).

    Saved per token and layer (elements of ``weight_bytes``): the layer input and the two norms' in/outputs (4h); q
    before and after rope and the attention output (3 q_dim); k before and after rope, v and its copy in the
    attention kernel (4 kv_dim); the MLP's gate, up, activation and product (4i).  Eager attention adds its score and
    probability matrices (2 heads x seq); LoRA dropout a copy of each target's input.  Gradient checkpointing keeps
    only the layer inputs (h) and recomputes one layer at a time.  The backward holds about one more layer's worth of
    gradients.

    >>> s = ModelShape(layers=2, hidden=4, intermediate=8, vocab=10, heads=2, kv_heads=1, head_dim=2, tied=True)
    >>> m = trainer_memory(s, weight_bytes=2, lora_params=100, tokens=10, seq=5, checkpointing=False,
    ...                    chunk_bytes=1000, on_gpu=False)
    >>> m.weights, m.adapter, m.logits  # 348 weights x 2 bytes; 100 x (4 + 4 + 8); 3 chunks
    (696.0, 1600.0, 3000.0)
    >>> m.activations  # 10 tokens x ((2 layers + 1 in the backward) x 68 elements x 2 bytes + 2 x 4 x 2 + 4 x 4)
    4400.0
    """
    h = shape.hidden
    per_layer = 4 * h + 3 * shape.q_dim + 4 * shape.kv_dim + 4 * shape.intermediate  # elements per token
    if eager_attention:
        per_layer += 2 * shape.heads * seq
    if lora_dropout:
        dims = shape.linear_dims()
        per_layer += sum(dims.get(t, (h, h))[0] for t in lora_targets)
    saved_layers = shape.layers * h + per_layer if checkpointing else shape.layers * per_layer
    head = 2 * h * weight_bytes + 4 * h  # final hidden, its norm, the float32 gradient w.r.t. it (lean head)
    activations = tokens * ((saved_layers + per_layer) * weight_bytes + head)
    weights = shape.params * weight_bytes
    adapter = lora_params * ADAM_BYTES
    overhead = CUDA_OVERHEAD if on_gpu else 0
    return MemoryEstimate(
        weights / shards,
        float(adapter),
        float(activations),
        3.0 * chunk_bytes,
        float(overhead),
        float(weights + adapter + overhead),
    )


# train.max_tokens_per_pass: auto -- the activation memory one loss pass may hold.  On a CPU the pass size hardly
# matters for speed past ~1k tokens (benchmarks/grpo_step.py), while every GiB is the user's RAM; on a GPU a quarter
# of the device (the rest: weights, optimizer, logits chunks, a colocated engine, the allocator's slack).
CPU_PASS_BUDGET = 1 * GIB
GPU_PASS_FRACTION = 0.25


def activation_bytes_per_token(cfg, shape: ModelShape, *, weight_bytes: int) -> float:
    """Saved-for-backward bytes per prompt + completion token of one loss pass (:func:`trainer_memory`)."""
    seq = cfg.rollout.max_model_len or (cfg.rollout.max_new_tokens + PROMPT_TOKENS)
    targets = tuple(cfg.lora.target_modules)
    one = trainer_memory(
        shape,
        weight_bytes=weight_bytes,
        lora_params=0,
        tokens=1,
        seq=seq,
        checkpointing=cfg.train.gradient_checkpointing,
        lora_dropout=cfg.lora.dropout > 0,
        lora_targets=targets,
        eager_attention=cfg.model.attn_implementation == "eager",
        on_gpu=False,
    )
    return one.activations


def auto_pass_tokens(cfg, shape: ModelShape | None, *, weight_bytes: int, device_bytes: float | None) -> int | None:
    """``train.max_tokens_per_pass: auto`` resolved: the tokens whose activations fit the pass budget
    (:data:`CPU_PASS_BUDGET` on a CPU, ``device_bytes`` x :data:`GPU_PASS_FRACTION` on a GPU); None (one pass per
    micro-batch) when the model's shape is unknown.

    >>> s = ModelShape(layers=30, hidden=576, intermediate=1536, vocab=49152, heads=9, kv_heads=3, head_dim=64,
    ...                tied=True)  # SmolLM2-135M
    >>> from tina.config import load_config
    >>> cfg = load_config("demo-smollm2", ["train.max_tokens_per_pass=auto", "train.gradient_checkpointing=false"])
    >>> auto_pass_tokens(cfg, s, weight_bytes=4, device_bytes=None)  # float32 on a CPU: 1 GiB / ~1.36 MB per token
    787
    >>> auto_pass_tokens(cfg, s, weight_bytes=2, device_bytes=80 * GIB)  # bf16, an 80 GB GPU: 20 GiB
    31435
    """
    if shape is None:
        return None
    budget = CPU_PASS_BUDGET if device_bytes is None else GPU_PASS_FRACTION * device_bytes
    return max(1, int(budget // activation_bytes_per_token(cfg, shape, weight_bytes=weight_bytes)))


def model_pass_tokens(cfg, model) -> int | None:
    """``train.max_tokens_per_pass`` for ``model`` as a number (or None: whole micro-batches), ``auto`` resolved
    from the model's config, its weights' dtype and its device (a GPU's total memory; a CPU's fixed budget)."""
    limit = cfg.train.max_tokens_per_pass
    if limit != "auto":
        return limit
    inner = getattr(model, "module", model)  # DDP
    config = getattr(inner, "config", None)
    shape = ModelShape.from_config(config.to_dict()) if hasattr(config, "to_dict") else None
    frozen = next((p for p in inner.parameters() if not p.requires_grad), None)
    if shape is None or frozen is None:
        return None
    device = frozen.device
    total = None
    if device.type == "cuda":
        import torch

        total = float(torch.cuda.get_device_properties(device).total_memory)
    return auto_pass_tokens(cfg, shape, weight_bytes=frozen.element_size(), device_bytes=total)


def pass_tokens(
    cfg,
    *,
    world_size: int = 1,
    shape: ModelShape | None = None,
    weight_bytes: int = 2,
    device_bytes: float | None = None,
) -> tuple[int, int]:
    """(tokens in one forward/backward pass on one process, tokens per row): the process's share of a micro-batch,
    rows of ``rollout.max_model_len`` tokens (else ``max_new_tokens`` + PROMPT_TOKENS), cut to
    ``train.max_tokens_per_pass`` (whole prompt groups, at least one; ``auto`` as :func:`auto_pass_tokens`)."""
    r, t = cfg.rollout, cfg.train
    seq = r.max_model_len or (r.max_new_tokens + PROMPT_TOKENS)
    rows = max(1, t.batch_size // world_size)
    tokens = rows * seq
    limit = t.max_tokens_per_pass
    if limit == "auto":
        limit = auto_pass_tokens(cfg, shape, weight_bytes=weight_bytes, device_bytes=device_bytes)
    if limit is not None:
        group = r.num_generations * seq
        tokens = min(tokens, max(group, limit // group * group))
    return tokens, seq


def estimate_trainer_memory(
    cfg,
    shape: ModelShape,
    *,
    weight_bytes: int,
    world_size: int = 1,
    fsdp: bool = False,
    on_gpu: bool = True,
    device_bytes: float | None = None,
) -> MemoryEstimate:
    """:func:`trainer_memory` for a recipe (one process of ``world_size``); ``device_bytes``: the GPU's memory
    (default: the nominal memory of ``cost.device_name``) for ``max_tokens_per_pass: auto``."""
    if on_gpu and device_bytes is None:
        device_bytes = nominal_gpu_bytes(cfg.cost.device_name)
    tokens, seq = pass_tokens(
        cfg,
        world_size=world_size,
        shape=shape,
        weight_bytes=weight_bytes,
        device_bytes=device_bytes if on_gpu else None,
    )
    targets = tuple(cfg.lora.target_modules)
    return trainer_memory(
        shape,
        weight_bytes=weight_bytes,
        lora_params=shape.lora_params(cfg.lora.r, list(targets)),
        tokens=tokens,
        seq=seq,
        checkpointing=cfg.train.gradient_checkpointing,
        lora_dropout=cfg.lora.dropout > 0,
        lora_targets=targets,
        eager_attention=cfg.model.attn_implementation == "eager",
        shards=world_size if fsdp else 1,
        chunk_bytes=cfg.train.logprob_memory_mb * 2**20,
        on_gpu=on_gpu,
    )


def dtype_bytes(dtype: str) -> int:
    """Bytes per weight of a recipe's ``model.dtype`` (``auto``: bfloat16, what a GPU run loads)."""
    return 4 if dtype in ("float32", "fp32") else 2


def nominal_gpu_bytes(device_name: str) -> float | None:
    """The memory of a GPU named like ``NVIDIA L40S`` / ``H100`` (None: not a GPU known here).

    >>> nominal_gpu_bytes("NVIDIA L40S") / GIB, nominal_gpu_bytes("A100 40GB") / GIB, nominal_gpu_bytes("cpu")
    (45.0, 40.0, None)
    """
    name = device_name.upper()
    for key, size in NOMINAL_GPU_GIB.items():
        if key in name:
            return size * GIB
    return None


def gib(x: float) -> str:
    return f"{x / GIB:.1f} GiB"
