"""``tina recipes import``: turn an original Tina / open-r1 / TRL GRPO recipe (one flat YAML) into a tina recipe.

Every key of the original is accounted for, in one of three ways:

* **mapped** onto a tina key (``lora_r`` -> ``lora.r``, ``max_completion_length`` -> ``rollout.max_new_tokens``, ...);
* **dropped** because it has no effect in tina (vLLM, hub, logging, output paths, DeepSpeed); the written recipe
  lists them in a ``# Dropped`` comment;
* anything else is an **error** naming the key and, for typos, the closest known key - exit code 2.  That is the
  point: TRL 0.15's parser silently ignored ``scale_reward: false`` in Tina's Dr.GRPO recipe, which therefore ran
  plain GRPO; here the same file stops with "did you mean 'scale_rewards'?".  Keys tina knows but cannot honour
  (``use_dora: true``, ``load_in_4bit: true``, a ``linear``-only optimiser other than AdamW, ...) are errors too.

Keys the original leaves out take the defaults of TRL 0.15 (the version Tina and early open-r1 ran), not tina's:
``beta`` 0.04, ``temperature`` 0.9, ``num_generations`` 8, ``max_completion_length`` 256, per-device batch 8,
``learning_rate`` 1e-6, ``lr_scheduler_type`` linear, ``loss_type`` grpo (per-sequence mean), ``scale_rewards`` true.

Tina's own recipes (keys ``model_post_train_*`` / ``rl_post_train_*``) also get what Tina's code did outside the
YAML: its dataset table (``curated_open_rs3`` -> ``knoveleng/open-rs``), its system-prompt rule (the Open-RS prompt
for ``knoveleng/open-rs``, the OpenR1 prompt otherwise), its chat template (``r1-distill-tina``), bf16 weights, the
``--cosine_max_len 3584`` its launch scripts passed for five runs, L1 targets drawn from 100..4000, and the stop step
written in the ``max_steps`` comment ("use 1500 for lr scheduler but stop at 850 steps").  ``scale_rewards: false`` in
a Tina recipe is what Tina's trainer (tina/post_train_hf/grpo_trainer.py) did with it: no std scaling and the token
mean of each process's micro-batch (one prompt group in Tina's recipes), i.e. tina's ``bnpo`` -- not the Dr.GRPO
paper's constant normaliser (``dr_grpo``).  See docs/fidelity.md.

Batch sizes: TRL counts ``per_device_train_batch_size`` completions per GPU; tina's ``train.batch_size`` counts the
completions of one micro-batch in one process, so it is ``per_device_train_batch_size x num_processes`` (2 for Tina,
``--num-processes`` otherwise), and ``gradient_accumulation_steps`` carries over: an optimizer step sees the same
prompts and completions as the original.  Except for ``bnpo``, which normalises each micro-batch by its own tokens:
there each process's micro-batch stays one tina micro-batch (``train.batch_size = per_device_train_batch_size``,
``gradient_accumulation_steps x num_processes``), the same optimizer step with the same normalisers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tina.config import parse_yaml
from tina.errors import ConfigError, did_you_mean
from tina.importer.output import Imported
from tina.importer.tables import (
    DATASET_ROWS,
    DTYPES,
    MAPPED,
    OBJECTIVES,
    REWARD_PARAMS,
    SCHEDULERS,
    TINA_COSINE_3584,
    TINA_DATASETS,
    TINA_MODELS,
    TRL_DEFAULTS,
    dropped_reason,
    suggest,
)
from tina.importer.values import as_bool, as_float, as_int, as_list, copy_present, system_prompt_key


def read_original(path: str | Path) -> tuple[dict, str]:
    """(parsed mapping, raw text) of an original recipe; a clear ConfigError for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"original recipe not found: {path}")
    text = p.read_text()
    raw = parse_yaml(text, str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an original recipe is a flat mapping of TRL/open-r1 keys")
    return raw, text


@dataclass
class _Original:
    """The original recipe being converted, and the notes the conversion collects."""

    raw: dict
    text: str
    source: str
    notes: list[str]
    tina_style: bool

    def unsupported(self, key: str, why: str) -> None:
        raise ConfigError(f"{self.source}: {key}: {self.raw[key]!r} is not supported by tina ({why})")


def convert(raw: dict, text: str = "", *, source: str = "ORIGINAL.yaml", num_processes: int | None = None) -> Imported:
    """Convert a parsed original recipe (``text`` is its raw text, read for the stop-step comment)."""
    unknown = [k for k in raw if k not in MAPPED and dropped_reason(k) is None]
    if unknown:
        key = unknown[0]
        raise ConfigError(
            f"{source}: unknown key '{key}'{suggest(key)}; tina refuses to guess (TRL would have ignored it silently)"
        )
    notes: list[str] = []
    dropped = [k for k in raw if k not in MAPPED and not dropped_reason(k).startswith(("read as", "checked"))]
    tina_style = any(k.startswith(("model_post_train_", "rl_post_train_")) for k in raw)

    o = _Original(raw, text, source, notes, tina_style)

    model, lora = _model(o), _lora(o)
    data, tina_name = _data(o)
    rollout, algorithm = _rollout(o), _algorithm(o)
    rewards = _rewards(raw, source, tina_style, tina_name, notes, dropped)
    train, nproc, missing_max_steps = _train(o, data, rollout, algorithm, num_processes)
    cost: dict[str, Any] = {"num_devices": nproc}
    if tina_style:
        cost.update(
            device_name="NVIDIA L40S",
            usd_per_device_hour=1.0,
            seconds_per_step=30.0,
            estimate_note="Tina's hardware and price; 30 s/step from the paper's Table 1 (an estimate)",
        )
    recipe = {
        "model": model,
        "lora": lora,
        "data": data,
        "rollout": rollout,
        "algorithm": algorithm,
        "rewards": rewards,
        "train": train,
        "cost": cost,
    }
    recipe = {k: v for k, v in recipe.items() if v}
    return Imported(recipe, notes, dropped, source, missing_max_steps)


def _model(o: _Original) -> dict[str, Any]:
    """model: the name (Tina's short names expanded), revision, dtype, attention."""
    get, source, notes, tina_style = o.raw.get, o.source, o.notes, o.tina_style
    model: dict[str, Any] = {}
    name = get("model_name_or_path")
    if name is None:
        raise ConfigError(f"{source}: model_name_or_path is missing")
    name = str(name)
    if name in TINA_MODELS:
        notes.append(f"model '{name}' is Tina's short name for {TINA_MODELS[name]}")
        name = TINA_MODELS[name]
    model["name_or_path"] = name
    if get("model_revision") not in (None, "main"):
        model["revision"] = str(get("model_revision"))
    dtype = get("torch_dtype")
    if dtype is not None:
        if str(dtype) not in DTYPES:
            raise ConfigError(f"{source}: torch_dtype '{dtype}' is not one of {', '.join(DTYPES)}")
        model["dtype"] = DTYPES[str(dtype)]
    elif tina_style:
        model["dtype"] = "bfloat16"  # grpo.py loads with torch_dtype=torch.bfloat16 whatever the recipe says
    elif get("bf16"):
        model["dtype"] = "bfloat16"
    elif get("fp16"):
        model["dtype"] = "float16"
    if get("attn_implementation") is not None:
        model["attn_implementation"] = str(get("attn_implementation"))
    if get("trust_remote_code") is not None:
        model["trust_remote_code"] = as_bool("trust_remote_code", get("trust_remote_code"))
    return model


def _lora(o: _Original) -> dict[str, Any]:
    """lora: rank, alpha, dropout, targets; what tina cannot train is refused."""
    raw, get, notes, unsupported = o.raw, o.raw.get, o.notes, o.unsupported
    if get("use_peft") is False:
        unsupported("use_peft", "it trains LoRA adapters only, not all weights")
    if get("use_peft") is None:
        notes.append("the original sets no use_peft (full fine-tuning in TRL); tina trains a LoRA adapter instead")
    for key, why in (
        ("use_dora", "no DoRA"),
        ("use_rslora", "no rsLoRA"),
        ("load_in_4bit", "no quantised base"),
        ("load_in_8bit", "no quantised base"),
    ):
        if get(key):
            unsupported(key, why)
    if get("lora_modules_to_save"):
        unsupported("lora_modules_to_save", "only LoRA weights are trained")
    lora: dict[str, Any] = {}
    copy_present(raw, lora, as_int, {"lora_r": "r", "lora_alpha": "alpha"})
    copy_present(raw, lora, as_float, {"lora_dropout": "dropout"})
    if get("lora_target_modules") is not None:
        targets = get("lora_target_modules")
        lora["target_modules"] = (
            ["all-linear"] if targets == "all-linear" else [str(t) for t in as_list("lora_target_modules", targets)]
        )
    return lora


def _data(o: _Original) -> tuple[dict[str, Any], str | None]:
    """data: the dataset (Tina's table or a hub id), its schema, prompt and template; and Tina's dataset name."""
    get, source, notes, tina_style, unsupported = o.raw.get, o.source, o.notes, o.tina_style, o.unsupported
    data: dict[str, Any] = {}
    tina_name = None
    if get("dataset_mixture") is not None:
        unsupported("dataset_mixture", "one dataset per recipe")
    if get("model_post_train_type") not in (None, "grpo"):
        unsupported("model_post_train_type", "tina runs GRPO-family RL only")
    if get("model_post_train_dataset_path") is not None:
        data["source"] = str(get("model_post_train_dataset_path"))
    elif get("model_post_train_dataset_name") is not None:
        tina_name = str(get("model_post_train_dataset_name")).removeprefix("curated_")
        if tina_name not in TINA_DATASETS:
            raise ConfigError(
                f"{source}: model_post_train_dataset_name '{get('model_post_train_dataset_name')}' is "
                f"not in Tina's dataset table{did_you_mean(tina_name, TINA_DATASETS)}"
            )
        data["source"] = TINA_DATASETS[tina_name]
        notes.append(f"dataset '{get('model_post_train_dataset_name')}' is {data['source']} in Tina's dataset table")
        if get("model_post_train_dataset_config") is not None:
            data["subset"] = str(get("model_post_train_dataset_config"))
    elif get("dataset_name") is not None:
        data["source"] = str(get("dataset_name"))
        if get("dataset_config") is not None:
            data["subset"] = str(get("dataset_config"))
    else:
        raise ConfigError(f"{source}: no dataset (dataset_name, or Tina's model_post_train_dataset_name)")
    if data["source"] == "open-r1/OpenR1-Math-220k" and "subset" not in data:
        data["subset"] = "default"
    data["schema"] = _schema_for(data["source"])
    if get("dataset_train_split") is not None:
        data["split"] = str(get("dataset_train_split"))
    if get("dataset_prompt_column") not in (None, "prompt", "problem"):
        data["problem_field"] = str(get("dataset_prompt_column"))
    if get("system_prompt") is not None:
        data["system_prompt"] = system_prompt_key(str(get("system_prompt")))
    elif tina_style:
        data["system_prompt"] = "open-rs" if "open-rs" in data["source"] else "openr1"
        notes.append(f"system prompt '{data['system_prompt']}' by Tina's rule (Open-RS prompt for knoveleng/open-rs)")
    if tina_style:
        data["template"] = "r1-distill-tina"
    if tina_name and tina_name.startswith("l1_"):
        data["l1_mode"] = tina_name.removeprefix("l1_")
        data["l1_target_range"] = [100, 4000]
        notes.append("L1 targets drawn uniformly from 100..4000 per problem, as Tina's grpo.py did")
    return data, tina_name


def _rollout(o: _Original) -> dict[str, Any]:
    """rollout: group size, token budget, sampling, the engine (vLLM when the original used it)."""
    raw, get, unsupported = o.raw, o.raw.get, o.unsupported
    for key, why in (
        ("generation_batch_size", "TRL >= 0.18 generation batching"),
        ("steps_per_generation", "TRL >= 0.18 generation batching"),
    ):
        if get(key) is not None:
            unsupported(key, why)
    if get("min_p") not in (None, 0, 0.0):
        unsupported("min_p", "no min-p sampling")
    if get("repetition_penalty") not in (None, 1, 1.0):
        unsupported("repetition_penalty", "no sampling repetition penalty; the repetition_penalty *reward* exists")
    rollout: dict[str, Any] = {
        "num_generations": as_int("num_generations", get("num_generations", TRL_DEFAULTS["num_generations"])),
        "max_new_tokens": as_int(
            "max_completion_length", get("max_completion_length", TRL_DEFAULTS["max_completion_length"])
        ),
        "temperature": as_float("temperature", get("temperature", TRL_DEFAULTS["temperature"])),
    }
    copy_present(raw, rollout, as_float, {"top_p": "top_p"})
    copy_present(raw, rollout, as_int, {"top_k": "top_k"})
    if get("use_vllm"):  # the original generated with vLLM: so does the imported recipe
        rollout["backend"] = "vllm"
        copy_present(raw, rollout, as_float, {"vllm_gpu_memory_utilization": "gpu_memory_utilization"})
        copy_present(raw, rollout, as_int, {"vllm_max_model_len": "max_model_len"})
    return rollout


def _algorithm(o: _Original) -> dict[str, Any]:
    """algorithm: the objective (TRL's loss_type / GSPO level / Tina's bnpo rule), KL, clipping, scaling."""
    raw, get, source, notes, tina_style, unsupported = o.raw, o.raw.get, o.source, o.notes, o.tina_style, o.unsupported
    if get("sync_ref_model"):
        unsupported("sync_ref_model", "the reference is always the base model")
    if get("delta") is not None:
        unsupported("delta", "no two-sided clipping")
    if get("top_entropy_quantile") not in (None, 1, 1.0):
        unsupported("top_entropy_quantile", "no entropy masking")
    algorithm: dict[str, Any] = {"objective": "grpo", "beta": as_float("beta", get("beta", TRL_DEFAULTS["beta"]))}
    loss_type = get("loss_type")
    if loss_type is not None:
        if str(loss_type) not in OBJECTIVES:
            raise ConfigError(
                f"{source}: loss_type '{loss_type}' is not supported; tina has "
                f"{', '.join(OBJECTIVES)} (and gspo via importance_sampling_level: sequence)"
                f"{did_you_mean(str(loss_type), OBJECTIVES)}"
            )
        algorithm["objective"] = OBJECTIVES[str(loss_type)]
    level = get("importance_sampling_level")
    if level not in (None, "token", "sequence"):
        raise ConfigError(f"{source}: importance_sampling_level '{level}' is not token or sequence")
    if level == "sequence":
        algorithm["objective"] = "gspo"
    scale = get("scale_rewards")
    if scale is not None:
        if isinstance(scale, bool):
            algorithm["scale_rewards"] = "group" if scale else "none"
        elif str(scale) in ("group", "batch", "none"):
            algorithm["scale_rewards"] = str(scale)
        else:
            raise ConfigError(f"{source}: scale_rewards '{scale}' is not true, false, group, batch or none")
        if tina_style and scale is False and loss_type is None:
            algorithm["objective"] = "bnpo"
            notes.append(
                "scale_rewards: false in a Tina recipe: Tina's trainer then divided each process's "
                "micro-batch loss by its own token count (objective bnpo, one micro-batch per process); "
                "--set algorithm.objective=dr_grpo for the Dr.GRPO paper's constant normaliser"
            )
    copy_present(raw, algorithm, as_float, {"epsilon": "epsilon", "epsilon_high": "epsilon_high"})
    copy_present(raw, algorithm, as_int, {"num_iterations": "num_iterations"})
    copy_present(raw, algorithm, as_bool, {"mask_truncated_completions": "mask_truncated_completions"})
    return algorithm


def _train(
    o: _Original, data: dict, rollout: dict, algorithm: dict, num_processes: int | None
) -> tuple[dict[str, Any], int, str | None]:
    """train: batch over processes, accumulation, steps (or epochs x rows), schedule, optimiser, saving."""
    raw, get, source, notes, tina_style, unsupported = o.raw, o.raw.get, o.source, o.notes, o.tina_style, o.unsupported
    train: dict[str, Any] = {}
    nproc = num_processes if num_processes is not None else (2 if tina_style else 1)
    if num_processes is None:
        notes.append(
            f"{nproc} process(es) assumed ({'Tina ran 2 GPUs' if tina_style else 'pass --num-processes N'}"
            "): train.batch_size = per_device_train_batch_size x processes"
        )
    per_device = as_int(
        "per_device_train_batch_size", get("per_device_train_batch_size", TRL_DEFAULTS["per_device_train_batch_size"])
    )
    train["batch_size"] = per_device * nproc
    if train["batch_size"] % rollout["num_generations"]:
        raise ConfigError(
            f"{source}: per_device_train_batch_size {per_device} x {nproc} process(es) = "
            f"{train['batch_size']} completions is not divisible by num_generations "
            f"{rollout['num_generations']}; pass the original's GPU count with --num-processes"
        )
    train["gradient_accumulation_steps"] = as_int(
        "gradient_accumulation_steps", get("gradient_accumulation_steps", TRL_DEFAULTS["gradient_accumulation_steps"])
    )
    if algorithm["objective"] == "bnpo" and nproc > 1:
        if per_device % rollout["num_generations"] == 0:  # keep each process's micro-batch (and its token count)
            train["batch_size"] = per_device
            train["gradient_accumulation_steps"] *= nproc
            notes.append(
                f"bnpo normalises per micro-batch: each process's {per_device} completions stay one "
                f"micro-batch (batch_size {per_device}, gradient_accumulation_steps "
                f"{train['gradient_accumulation_steps']} = {train['gradient_accumulation_steps'] // nproc} x "
                f"{nproc} processes): the same optimizer step"
            )
        else:
            notes.append(
                f"bnpo: per_device_train_batch_size {per_device} splits prompt groups across processes, "
                "which tina's micro-batches cannot; the per-micro-batch token normaliser differs slightly"
            )
    prompts_per_step = train["batch_size"] // rollout["num_generations"] * train["gradient_accumulation_steps"]
    missing_max_steps = None
    max_steps = get("max_steps")
    if max_steps is not None and as_int("max_steps", max_steps) > 0:
        train["max_steps"] = as_int("max_steps", max_steps)
        stop = _stop_from_comment(o.text)
        if stop is not None and 0 < stop < train["max_steps"]:
            train["stop_step"] = stop
            notes.append(f"stop_step {stop} from the max_steps comment (the schedule runs over {train['max_steps']})")
    else:
        epochs = as_float("num_train_epochs", get("num_train_epochs", 3.0))
        rows = DATASET_ROWS.get(data["source"])
        if rows is None:
            missing_max_steps = (
                f"{source} sets no max_steps and tina does not know the size of {data['source']}; "
                f"add --set train.max_steps=N (N = epochs x rows / {prompts_per_step} prompts per "
                "step)"
            )
        else:
            train["max_steps"] = math.ceil(epochs * rows / prompts_per_step)
            notes.append(
                f"max_steps {train['max_steps']} = {epochs:g} epoch(s) x ~{rows:,} rows / "
                f"{prompts_per_step} prompts per step (dataset size approximate)"
            )
    train["learning_rate"] = as_float("learning_rate", get("learning_rate", TRL_DEFAULTS["learning_rate"]))
    sched = str(get("lr_scheduler_type", TRL_DEFAULTS["lr_scheduler_type"]))
    if sched not in SCHEDULERS:
        raise ConfigError(
            f"{source}: lr_scheduler_type '{sched}' is not supported; tina has "
            f"{', '.join(SCHEDULERS)}{did_you_mean(sched, SCHEDULERS)}"
        )
    train["lr_scheduler"] = SCHEDULERS[sched]
    kwargs = get("lr_scheduler_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{source}: lr_scheduler_kwargs must be a mapping, got {kwargs!r}")
    for key, value in kwargs.items():
        if key == "min_lr_rate":
            train["min_lr_ratio"] = as_float("lr_scheduler_kwargs.min_lr_rate", value)
        elif key == "min_lr":
            train["min_lr_ratio"] = as_float("lr_scheduler_kwargs.min_lr", value) / train["learning_rate"]
        else:
            raise ConfigError(
                f"{source}: lr_scheduler_kwargs.{key} is not supported (only min_lr_rate, min_lr)"
                f"{did_you_mean(key, ['min_lr_rate', 'min_lr'])}"
            )
    copy_present(raw, train, as_float, {"warmup_ratio": "warmup_ratio"})
    if get("warmup_steps") not in (None, 0):
        warmup = as_int("warmup_steps", get("warmup_steps"))
        if "max_steps" not in train:
            raise ConfigError(f"{source}: warmup_steps needs max_steps (tina stores warmup as a ratio)")
        ratio = warmup / train["max_steps"]
        if math.ceil(train["max_steps"] * ratio) != warmup:
            ratio = (warmup - 0.5) / train["max_steps"]
        train["warmup_ratio"] = ratio
    optim = get("optim")
    if optim is not None and str(optim) not in ("adamw_torch", "adamw_hf", "adamw_torch_fused"):
        unsupported("optim", "the optimiser is torch AdamW")
    copy_present(
        raw,
        train,
        as_float,
        {k: k for k in ("weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm")},
    )
    if get("save_strategy") not in (None, "steps"):
        notes.append(f"save_strategy '{get('save_strategy')}': tina saves every train.save_steps steps instead")
    train["seed"] = as_int("seed", get("seed", TRL_DEFAULTS["seed"]))
    train["save_steps"] = as_int("save_steps", get("save_steps", TRL_DEFAULTS["save_steps"]))
    copy_present(raw, train, as_int, {"save_total_limit": "save_total_limit", "logging_steps": "logging_steps"})
    copy_present(raw, train, as_bool, {"gradient_checkpointing": "gradient_checkpointing"})
    if get("report_to") is not None:
        trackers = get("report_to")
        trackers = [trackers] if isinstance(trackers, str) else as_list("report_to", trackers)
        train["report_to"] = [t for t in trackers if t in ("tensorboard", "wandb")]
    return train, nproc, missing_max_steps


def _schema_for(source: str) -> str:
    from tina.data.schemas import HUB_IDS, split_hub_id

    matches = [name for name, hub in HUB_IDS.items() if split_hub_id(hub)[0] == source and name != "l1"]
    return matches[0] if matches else "auto"


def _stop_from_comment(text: str) -> int | None:
    """Tina wrote the stop step only in a comment: ``max_steps: 1500 # use 1500 for lr scheduler but stop at 850``."""
    m = re.search(r"^max_steps:[^\n#]*#[^\n]*?stop at (\d+)", text, flags=re.MULTILINE)
    return int(m.group(1)) if m else None


def _rewards(
    raw: dict, source: str, tina_style: bool, tina_name: str | None, notes: list[str], dropped: list[str]
) -> dict:
    if raw.get("rl_post_train_reward_funcs") is not None or raw.get("rl_post_train_reward_weights") is not None:
        names_key, weights_key = "rl_post_train_reward_funcs", "rl_post_train_reward_weights"
    else:
        names_key, weights_key = "reward_funcs", "reward_weights"
    names = raw.get(names_key)
    weights = raw.get(weights_key)
    if names is None:
        if tina_style:
            names, default_weights = ["accuracy", "format"], [2.0, 1.0]  # Tina's ModelPTConfig defaults
        else:
            names, default_weights = ["accuracy", "format", "tag_count"], [1.0, 1.0, 1.0]  # open-r1's defaults
        notes.append(f"no reward list: the original's defaults {names}")
        weights = default_weights if weights is None else weights
    names = [str(n) for n in as_list(names_key, names)]
    weights = (
        [1.0] * len(names) if weights is None else [as_float(weights_key, w) for w in as_list(weights_key, weights)]
    )
    if len(weights) != len(names):
        raise ConfigError(f"{source}: {len(names)} rewards ({names_key}) but {len(weights)} weights ({weights_key})")
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: {names_key} lists a reward twice: {names}")
    rewards: dict[str, dict] = {n: {"weight": w} for n, w in zip(names, weights, strict=True)}
    for key, (reward, param) in REWARD_PARAMS.items():
        if raw.get(key) is None:
            continue
        if reward in rewards:
            value = raw[key]
            rewards[reward][param] = as_int(key, value) if param in ("max_len", "ngram_size") else as_float(key, value)
        else:
            dropped.append(key)
    if "cosine" in rewards and "max_len" not in rewards["cosine"]:
        if tina_style and tina_name in TINA_COSINE_3584:
            rewards["cosine"]["max_len"] = 3584
            notes.append("cosine max_len 3584: Tina's train script passed --cosine_max_len 3584 for this run")
        else:
            rewards["cosine"]["max_len"] = 1000
    return rewards
