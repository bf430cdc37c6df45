"""Recipes: YAML files with sections, loaded into typed, strict config objects.

A recipe has the sections ``model``, ``lora``, ``data``, ``rollout``, ``algorithm``, ``rewards``, ``train``, ``cost``
(and ``eval``).  Every section but ``rewards`` is a dataclass below; ``rewards`` maps a reward name (or an import path
``package.module:function``) to its ``weight`` and parameters::

    rewards:
      accuracy: {weight: 2.0}
      cosine: {weight: 1.0, max_len: 3584}

Loading is strict: an unknown section, key or reward parameter, a value of the wrong type, or an impossible
combination (batch not divisible by the group size, ...) raises :class:`tina.errors.ConfigError` with a one-line
message naming the key and, for typos, the closest valid key.  ``--set section.key=value`` overrides any key; the
value is parsed as YAML (``20`` is an int, ``true`` a bool, ``[a, b]`` a list).

The resolved config (:func:`to_dict`) is itself a valid recipe: ``tina train RUN/config.yaml`` reproduces a run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tina.errors import ConfigError, did_you_mean
from tina.recipe_checks import validate

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class ModelConfig:
    """The base model. ``name_or_path`` is a hub id, a local folder, or ``builtin:tiny-arith`` (the demo model)."""

    name_or_path: str = "builtin:tiny-arith"
    revision: str | None = None
    dtype: str = "auto"  # auto = bfloat16 on a GPU that supports it, float32 on CPU
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    bias: str = "none"
    init_adapter: str | None = None  # continue from an existing adapter folder


@dataclass
class DataConfig:
    """Training problems. ``source`` is a hub id, a local .jsonl/.json/.parquet file, or a builtin task
    (``builtin:arith``: the tiny demo's a+b-c; ``builtin:addition``: the real-model demo's)."""

    source: str = "builtin:arith"
    schema: str = "auto"  # which columns hold the problem and answer (tina.data.schemas); auto: from the columns
    subset: str | None = None
    split: str = "train"
    problem_field: str | None = None
    answer_field: str | None = None
    limit: int | None = None
    system_prompt: str | None = None  # a name in tina.prompts.SYSTEM_PROMPTS, or literal text
    template: str = "tokenizer"
    l1_mode: str | None = None  # "exact" | "max": append L1's "think for N tokens" to each prompt; "tina": Tina's
    # variant ("\nThink for N tokens." appended to the system prompt, docs/fidelity.md)
    l1_target: int | None = None  # fixed N; rows with their own target (meta) use theirs
    # [low, high]: rows without a target get one drawn uniformly from this range, seeded by train.seed (Tina's L1
    # runs and L1 itself drew from [100, 4000]).  Exclusive with l1_target.
    l1_target_range: list[int] | None = None
    holdout: int = 0  # problems held out of training (first after a seeded shuffle) for validation
    shuffle: bool = True


@dataclass
class RolloutConfig:
    """How completions are sampled, and by which engine (``hf``: the trainer's own model, everywhere; ``vllm``: a vLLM
    engine in the training process serving the live LoRA adapter, ``pip install 'tina[vllm]'``)."""

    backend: str = "hf"
    num_generations: int = 8  # G completions per prompt
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    generation_batch_size: int | None = None  # hf: rows decoded at once (None = the whole step)
    # hf: decode with the adapter merged into a copy of its float32 weights, rebuilt every call (tina.rollout.merge:
    # no LoRA products per token; never for bfloat16/float16 weights, where merging rounds small updates away)
    merge_adapter: bool = True
    gpu_memory_utilization: float = 0.3  # vllm: share of the GPU for weights + KV cache, the rest is for training
    max_model_len: int | None = None  # vllm: prompt + completion tokens per sequence (None: the model's maximum)
    # vllm on a GPU shared with the trainer: sleep (level 1) between rollout and update when engine and trainer do not
    # fit together (tina.rollout.vllm_plan.sleep_plan; `tina check` says which); false: never sleep
    vllm_sleep: bool = True
    # the engine checks: at start-up the canary (the engine must reproduce the trainer's log-probs, base + 2
    # adapters); every step, for an engine with its own weights (vllm), the content probe (what it serves must be
    # the current adapter, not the previous one: rollout/probe_diff*)
    check_engine: bool = True
    # mean |d log p| per token two correct implementations may differ by: the canary's limit (None: 1e-3 fp32, 0.1
    # bf16/fp16) and the content probe's noise bound (None: 1e-4 fp32, 0.125 bf16, 0.016 fp16)
    canary_tolerance: float | None = None
    # stop when engine and trainer log-probs of the sampled tokens differ more than this per token (mean over a
    # micro-batch; typical: ~1e-6 in float32, ~0.02 in bfloat16); None: only log rollout/logp_diff_*
    max_logp_diff: float | None = 0.25
    # Rollout workers (tina.rollout.worker): [] = the engine lives in the training process (the synchronous loop);
    # one device per worker process, e.g. [cuda:1] or [cpu]: each loads its own base model and engine (the backend
    # above) and reads the trainer's adapter versions from disk; a step's prompts are split between them; with N
    # training processes each gets devices[rank::N]
    devices: list[str] = field(default_factory=list)
    # Rollouts may come from an adapter this many updates older than the one being trained (0: the synchronous loop;
    # 1: one-step-off -- step s+1 is generated with v(s) while the trainer computes v(s+1)); needs rollout.devices.
    # The engine's log-probs of the version that generated each completion feed the rollout correction
    max_staleness: int = 0
    worker_threads: int | None = None  # CPU threads of each worker process (None: torch's default)
    # Remote rollout workers: vLLM OpenAI-compatible servers (tina.rollout.remote), e.g. [http://node-b:8000]; they
    # load each adapter version by name from the run directory, which they must read at the same path
    servers: list[str] = field(default_factory=list)


@dataclass
class AlgorithmConfig:
    objective: str = "grpo"  # grpo | dr_grpo | dapo | bnpo | gspo
    beta: float = 0.0  # KL penalty to the base model (adapter disabled)
    # Ratio clip, low and high side.  Unset: the objective's own defaults (tina.rl.losses.DEFAULT_CLIP: 0.2 / 0.2;
    # dapo 0.2 / 0.28, "clip-higher"; gspo 3e-4 / 4e-4, its sequence-level ratio), resolved when the recipe loads.
    epsilon: float | None = None
    epsilon_high: float | None = None
    num_iterations: int = 1  # optimizer updates per generated batch (>1 uses stored old log-probs + clipping)
    scale_rewards: str = "group"  # group | batch (std of the whole step) | none (Dr.GRPO uses none)
    mask_truncated_completions: bool = False
    # Importance weights for the engine/trainer mismatch (tina.rollout.agreement.rollout_correction):
    # auto = token_truncate for vllm, none for hf | none | token_truncate | token_mask | sequence_truncate | ...mask
    rollout_correction: str = "auto"
    rollout_correction_cap: float = 2.0
    # DAPO's dynamic sampling: groups whose rewards are all equal (no learning signal) are dropped and refilled from
    # new prompts, up to dynamic_sampling_rounds extra generation rounds per step
    dynamic_sampling: bool = False
    dynamic_sampling_rounds: int = 3
    # Log-probs of temperature-scaled logits (the distribution that was sampled).  false: raw logits, as Tina / TRL
    # 0.15 computed them (see docs/fidelity.md).
    logprobs_at_temperature: bool = True


# The probe prompt Tina watched during training: the first AIME 2024 problem (public competition text).
AIME24_PROBE = (
    "Every morning Aya goes for a $9$-kilometer-long walk and stops at a coffee shop afterwards. When she walks at a "
    "constant speed of $s$ kilometers per hour, the walk takes her 4 hours, including $t$ minutes spent in the coffee "
    "shop. When she walks $s+2$ kilometers per hour, the walk takes her 2 hours and 24 minutes, including $t$ minutes "
    "spent in the coffee shop. Suppose Aya walks at $s+\\frac{1}{2}$ kilometers per hour. Find the number of minutes "
    "the walk takes her, including the $t$ minutes spent in the coffee shop."
)


@dataclass
class TrainConfig:
    max_steps: int = 100  # length of the learning-rate schedule
    stop_step: int | None = None  # stop early (Tina: schedule over 2x the steps actually run)
    batch_size: int = 64  # completions per micro-batch; must be divisible by rollout.num_generations
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.0
    warmup_from_zero: bool = False  # transformers' warmup, as Tina ran: lr 0 on step 0, peak on step W (fidelity.md)
    min_lr_ratio: float = 0.0  # for cosine_with_min_lr
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    seed: int = 42
    save_steps: int = 50
    save_total_limit: int | None = None
    logging_steps: int = 1
    gradient_checkpointing: bool = False
    device: str = "auto"
    grader_timeout: float = 5.0
    collective_timeout: float = 1800.0  # seconds a multi-process collective may wait before failing (no hangs)
    report_to: list[str] = field(default_factory=list)
    max_bad_steps: int = 5  # abort (after checkpointing the last good state) after this many non-finite steps in a row
    probe_prompt: str = AIME24_PROBE  # greedy completion logged to RUN/probes.jsonl at each checkpoint; "" = none
    probe_max_new_tokens: int = 512  # never more than rollout.max_new_tokens
    logprob_memory_mb: int = 256  # memory budget for one chunk of float32 logits in the log-prob pass
    # prompt + completion tokens per forward/backward of the loss (whole prompt groups, at least one; null: a whole
    # micro-batch).  Bounds activation memory without changing the update (unlike batch_size / accumulation).
    # "auto": resolved once at start-up from the model's shape and the device (tina.estimates.auto_pass_tokens).
    max_tokens_per_pass: int | str | None = "auto"
    # Leave prompt groups whose advantages are all 0 out of the loss pass when there is no KL term (beta 0) and one
    # process trains: their completions add exactly 0 to the loss and its gradient, so the update is the same.
    # Logged as loss/rows_left_out; ratio_mean / clip_ratio then average over the rows in the pass.
    skip_zero_advantage: bool = True


@dataclass
class CostConfig:
    """What the hardware costs, so every run's ledger can say what it cost — and, before a run, what it will cost.

    The ledger measures the real figure.  The three optional keys only feed the *estimate* that ``tina recipes`` and
    ``tina check`` print (see :mod:`tina.estimates`): ``steps x seconds_per_step x num_devices x usd_per_device_hour``,
    next to a published figure for the same run when there is one.
    """

    device_name: str = "cpu"
    num_devices: int = 1
    usd_per_device_hour: float = 0.0
    seconds_per_step: float | None = None  # estimated wall-clock seconds per optimizer step on this hardware
    # where seconds_per_step comes from: paper (a published figure of another setup), guess, or measured (with tina on
    # this hardware, e.g. by benchmarks/gpu_step.py or a run's ledger.json)
    seconds_per_step_source: str = "guess"
    reference_usd: float | None = None  # a published training cost of this very run (e.g. Tina's Table 1)
    estimate_note: str | None = None  # where seconds_per_step / reference_usd come from (one line)


@dataclass
class EvalConfig:
    """Held-out evaluation inside `tina demo` (and defaults for `tina eval`)."""

    num_problems: int = 256
    samples: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 32
    batch_size: int = 256


@dataclass
class RewardConfig:
    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    rewards: list[RewardConfig] = field(
        default_factory=lambda: [RewardConfig("accuracy", 1.0), RewardConfig("format", 0.1)]
    )
    train: TrainConfig = field(default_factory=TrainConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def prompts_per_step(self) -> int:
        return self.train.batch_size // self.rollout.num_generations * self.train.gradient_accumulation_steps

    @property
    def last_step(self) -> int:
        return self.train.stop_step if self.train.stop_step is not None else self.train.max_steps


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "lora": LoraConfig,
    "data": DataConfig,
    "rollout": RolloutConfig,
    "algorithm": AlgorithmConfig,
    "train": TrainConfig,
    "cost": CostConfig,
    "eval": EvalConfig,
}
ALL_SECTIONS = [*SECTIONS, "rewards"]


# ----------------------------------------------------------------------------------------------------------- loading
def resolve_recipe_path(recipe: str | Path) -> Path:
    """A recipe argument is a path to a YAML file or the name of a bundled recipe (``tina recipes`` lists them)."""
    path = Path(recipe)
    if path.is_file():
        return path
    bundled = RECIPES_DIR / f"{recipe}.yaml"
    if bundled.is_file():
        return bundled
    if path.suffix in (".yaml", ".yml") or "/" in str(recipe):
        raise ConfigError(f"recipe file not found: {recipe}")
    raise ConfigError(
        f"no recipe file or bundled recipe named '{recipe}'{did_you_mean(str(recipe), bundled_recipes())};"
        " run `tina recipes` to list them"
    )


def bundled_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_config(recipe: str | Path | dict | None = None, overrides: list[str] | None = None) -> Config:
    """Load a recipe (path, bundled name, or dict), apply ``section.key=value`` overrides, validate."""
    if recipe is None:
        raw: dict = {}
    elif isinstance(recipe, dict):
        raw = _deepcopy(recipe)
    else:
        path = resolve_recipe_path(recipe)
        raw = parse_yaml(path.read_text(), f"recipe {path}")
        if not isinstance(raw, dict):
            raise ConfigError(f"recipe {path} must be a mapping of sections ({', '.join(ALL_SECTIONS)})")
    for item in overrides or []:
        apply_override(raw, item)
    cfg = from_dict(raw)
    resolve_defaults(cfg)
    validate(cfg)
    return cfg


def resolve_defaults(cfg: Config) -> None:
    """Fill the keys whose default depends on others (the clip range depends on the objective), so the resolved
    config -- what ``tina check`` prints and RUN/config.yaml holds -- says what will run."""
    from tina.rl.losses import DEFAULT_CLIP

    a = cfg.algorithm
    low, high = DEFAULT_CLIP.get(a.objective, (0.2, 0.2))
    if a.epsilon is None:
        a.epsilon = low
    if a.epsilon_high is None:
        a.epsilon_high = a.epsilon if a.objective not in ("dapo", "gspo") else high


def parse_yaml(text: str, what: str):
    """YAML text -> data; a syntax error is a ConfigError naming ``what`` and the line."""
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        raise ConfigError(f"{what}{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None


def apply_override(raw: dict, item: str) -> None:
    """Apply one ``section.key=value`` override to a raw recipe dict (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value (e.g. train.max_steps=20)")
    dotted, value_text = item.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override '{item}' must name section.key (e.g. train.max_steps=20)")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError:
        value = value_text
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override '{item}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def from_dict(raw: dict) -> Config:
    unknown = [k for k in raw if k not in ALL_SECTIONS]
    for key in unknown:
        raise ConfigError(f"unknown recipe section '{key}'{did_you_mean(key, ALL_SECTIONS)}")
    kwargs: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        section = raw.get(name)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ConfigError(f"recipe section '{name}' must be a mapping of keys, got {type(section).__name__}")
        kwargs[name] = _build_section(name, cls, section)
    if "rewards" in raw:
        kwargs["rewards"] = _build_rewards(raw["rewards"])
    return Config(**kwargs)


# Keys that were renamed: a recipe (or a run's config.yaml) with the old name keeps working.
RENAMED_KEYS = {"data.adapter": "data.schema"}  # "adapter" now names LoRA adapters only


def _build_section(section: str, cls: type, values: dict) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in values.items():
        new = RENAMED_KEYS.get(f"{section}.{key}")
        if new is not None:  # the old name of a key
            old, key = f"{section}.{key}", new.split(".", 1)[1]
            if key in values:
                raise ConfigError(f"{new} is given twice, also under its old name {old}; keep {new} only")
        if key not in fields:
            raise ConfigError(
                f"unknown key '{section}.{key}'{did_you_mean(f'{section}.{key}', [f'{section}.{f}' for f in fields])}"
            )
        out[key] = _coerce(f"{section}.{key}", value, hints[key])
    return cls(**out)


def _build_rewards(raw: Any) -> list[RewardConfig]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            "recipe section 'rewards' must map reward names to settings, e.g. rewards: {accuracy: {weight: 2.0}}"
        )
    out = []
    for name, settings in raw.items():
        settings = {} if settings is None else settings
        if isinstance(settings, (int, float)) and not isinstance(settings, bool):
            settings = {"weight": settings}
        if not isinstance(settings, dict):
            raise ConfigError(f"rewards.{name} must be a mapping like {{weight: 1.0, ...params}}")
        settings = dict(settings)
        weight = _coerce(f"rewards.{name}.weight", settings.pop("weight", 1.0), float)
        out.append(RewardConfig(str(name), weight, settings))
    return out


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check/convert a YAML value to the declared type; wrong types are errors, never guesses."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for member in inner[:-1]:  # the first member type that takes the value (int | str: 1024 or "auto")
            try:
                return _coerce(key, value, member)
            except ConfigError:
                pass
        return _coerce(key, value, inner[-1])
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-6" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if hint is Any:
        return value
    raise TypeError(f"unsupported config type {hint} for {key}")  # a bug in this module, not user input


# ----------------------------------------------------------------------------------------------------------- dumping
def to_dict(cfg: Config) -> dict:
    """The resolved config as a plain dict in recipe form (a valid recipe)."""
    out: dict[str, Any] = {}
    for name in SECTIONS:
        out[name] = dataclasses.asdict(getattr(cfg, name))
    out["rewards"] = {r.name: {"weight": r.weight, **r.params} for r in cfg.rewards}
    order = ["model", "lora", "data", "rollout", "algorithm", "rewards", "train", "cost", "eval"]
    return {k: out[k] for k in order}


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None, width=120)


def _deepcopy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _deepcopy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deepcopy(v) for v in obj]
    return obj
