"""The tables ``tina recipes import`` reads: Tina's dataset and model names, rows per dataset, TRL 0.15's defaults,
every original key it drops (and why) or maps onto a tina key, and the small value maps."""

from __future__ import annotations

from tina.errors import did_you_mean

# Tina's RL_POST_TRAIN_CONFIG_MAP (tina/utils/constant.py); v1 recipes prefix the names with "curated_".
TINA_DATASETS: dict[str, str] = {
    "deepscaler": "agentica-org/DeepScaleR-Preview-Dataset",
    "2thought": "Intelligent-Internet/II-Thought-RL-v0-Math-50K",
    "l1_exact": "agentica-org/DeepScaleR-Preview-Dataset",
    "l1_max": "agentica-org/DeepScaleR-Preview-Dataset",
    "fastcurl": "Nickyang/FastCuRL",
    "still": "RUC-AIBOX/STILL-3-Preview-RL-Data",
    "open_rs3": "knoveleng/open-rs",
    "open_rs2": "knoveleng/open-rs",
    "open_rs1": "knoveleng/open-s1",
    "limr": "GAIR/LIMR",
    "open_r1": "open-r1/OpenR1-Math-220k",
    "thoughts": "bethgelab/CuratedThoughts",
    "limr_large_lr_ablation": "GAIR/LIMR",
    "limr_small_lr_ablation": "GAIR/LIMR",
    "limr_large_rank_ablation": "GAIR/LIMR",
    "limr_medium_rank_ablation": "GAIR/LIMR",
    "limr_small_rank_ablation": "GAIR/LIMR",
    "limr_tiny_rank_ablation": "GAIR/LIMR",
    "open_rs3_drgrpo_ablation": "knoveleng/open-rs",
    "open_rs3_format_ablation": "knoveleng/open-rs",
    "open_rs3_long_completion_ablation": "knoveleng/open-rs",
}
# Tina's launch scripts added `--cosine_max_len 3584` for exactly these dataset names (default 1000):
# scripts/train/post_train_model_grpo.sh for the first four, post_train_model_grpo_long_completion.sh (always) for
# the long-completion ablation.
TINA_COSINE_3584 = {"thoughts", "open_r1", "open_rs3", "open_rs3_drgrpo_ablation", "open_rs3_long_completion_ablation"}
# Tina's short model names (its scripts resolve them to a local copy of the hub model).
TINA_MODELS = {
    "DeepSeek-R1-Distill-Qwen-1.5B": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "Qwen2.5-1.5B": "Qwen/Qwen2.5-1.5B",
    "Qwen2.5-Math-1.5B": "Qwen/Qwen2.5-Math-1.5B",
}
# Training rows, to turn num_train_epochs into steps when max_steps is absent.  Rounded figures from Tina's
# constant.py comments (exact for OpenR1-Math default); the note in the written recipe says so.
DATASET_ROWS = {
    "agentica-org/DeepScaleR-Preview-Dataset": 40_300,
    "Intelligent-Internet/II-Thought-RL-v0-Math-50K": 53_300,
    "Nickyang/FastCuRL": 80_600,
    "RUC-AIBOX/STILL-3-Preview-RL-Data": 33_000,
    "knoveleng/open-rs": 7_000,
    "knoveleng/open-s1": 18_600,
    "GAIR/LIMR": 1_390,
    "open-r1/OpenR1-Math-220k": 93_733,
    "bethgelab/CuratedThoughts": 66_100,
}

# TRL 0.15 GRPOConfig / transformers TrainingArguments defaults for keys an original leaves out.
TRL_DEFAULTS = {
    "beta": 0.04,
    "temperature": 0.9,
    "num_generations": 8,
    "max_completion_length": 256,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "learning_rate": 1e-6,
    "lr_scheduler_type": "linear",
    "epsilon": 0.2,
    "num_iterations": 1,
    "seed": 42,
    "save_steps": 500,
}

# Known keys with no effect in tina -> why.  Prefixes end with "*".
DROPPED: dict[str, str] = {
    "vllm_device": "the vllm engine runs on each training process's own device",
    "vllm_*": "no such vLLM setting in tina",
    "ds3_gather_for_generation": "no DeepSpeed",
    "deepspeed": "no DeepSpeed",
    "fsdp*": "single process",
    "ddp_*": "single process",
    "dataloader_*": "no dataloader",
    "output_dir": "pass --output-dir to tina train",
    "overwrite_output_dir": "tina refuses to overwrite a run; --resume continues one",
    "run_name": "output only",
    "resume_from_checkpoint": "use tina train --resume",
    "push_to_hub": "no hub upload",
    "hub_*": "no hub upload",
    "log_level": "logging",
    "log_level_replica": "logging",
    "logging_first_step": "logging (every step is logged)",
    "logging_strategy": "logging (every step is logged)",
    "logging_dir": "logging",
    "log_completions": "logging",
    "num_completions_to_print": "logging",
    "wandb_*": "logging (train.report_to chooses trackers)",
    "save_strategy": "checkpoints every train.save_steps",
    "save_only_model": "tina checkpoints hold the adapter plus trainer state",
    "do_eval": "no in-training eval here; use tina eval",
    "do_train": "implied",
    "eval_*": "no in-training eval here; use tina eval",
    "per_device_eval_batch_size": "no in-training eval here",
    "benchmarks": "use tina eval",
    "callbacks": "no callbacks",
    "dataset_test_split": "no in-training eval here",
    "dataset_num_proc": "preprocessing is in-process",
    "gradient_checkpointing_kwargs": "tina always uses non-reentrant checkpointing",
    "lora_task_type": "always CAUSAL_LM",
    "use_peft": "tina always trains a LoRA adapter",
    "bf16": "read as model.dtype",
    "fp16": "read as model.dtype",
    "tf32": "a CUDA matmul setting",
    "torch_compile": "not used",
    "use_liger_kernel": "not used",
    "use_liger_loss": "not used",
    "remove_unused_columns": "no dataloader",
    "data_seed": "train.seed drives sampling",
    "model_post_train_type": "checked: grpo only",
    "code_language": "no code rewards",
    "max_prompt_length": "tina does not truncate prompts (TRL cut them from the left)",
    "chat_template": "a literal jinja template cannot be imported; data.template names one",
    "optim": "checked: torch AdamW only",
    "num_train_epochs": "read as train.max_steps when max_steps is absent",
}

# Known keys that map onto tina keys (checked below; listed here for suggestions).
MAPPED = {
    "model_name_or_path",
    "model_revision",
    "torch_dtype",
    "attn_implementation",
    "trust_remote_code",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "lora_modules_to_save",
    "use_rslora",
    "use_dora",
    "load_in_4bit",
    "load_in_8bit",
    "dataset_name",
    "dataset_config",
    "dataset_train_split",
    "dataset_prompt_column",
    "dataset_mixture",
    "model_post_train_dataset_name",
    "model_post_train_dataset_config",
    "model_post_train_dataset_path",
    "system_prompt",
    "num_generations",
    "max_completion_length",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "use_vllm",
    "vllm_gpu_memory_utilization",
    "vllm_max_model_len",
    "repetition_penalty",
    "generation_batch_size",
    "steps_per_generation",
    "beta",
    "epsilon",
    "epsilon_high",
    "num_iterations",
    "scale_rewards",
    "loss_type",
    "mask_truncated_completions",
    "importance_sampling_level",
    "sync_ref_model",
    "top_entropy_quantile",
    "delta",
    "reward_funcs",
    "reward_weights",
    "rl_post_train_reward_funcs",
    "rl_post_train_reward_weights",
    "cosine_min_value_wrong",
    "cosine_max_value_wrong",
    "cosine_min_value_correct",
    "cosine_max_value_correct",
    "cosine_max_len",
    "repetition_n_grams",
    "repetition_max_penalty",
    "learning_rate",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_ratio",
    "warmup_steps",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "gradient_checkpointing",
    "max_grad_norm",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "seed",
    "save_steps",
    "save_total_limit",
    "logging_steps",
    "report_to",
}

REWARD_PARAMS = {  # original key -> (reward, parameter)
    "cosine_min_value_wrong": ("cosine", "min_value_wrong"),
    "cosine_max_value_wrong": ("cosine", "max_value_wrong"),
    "cosine_min_value_correct": ("cosine", "min_value_correct"),
    "cosine_max_value_correct": ("cosine", "max_value_correct"),
    "cosine_max_len": ("cosine", "max_len"),
    "repetition_n_grams": ("repetition_penalty", "ngram_size"),
    "repetition_max_penalty": ("repetition_penalty", "max_penalty"),
}
OBJECTIVES = {"grpo": "grpo", "dr_grpo": "dr_grpo", "dapo": "dapo", "bnpo": "bnpo"}
SCHEDULERS = {
    "constant": "constant",
    "constant_with_warmup": "constant",
    "linear": "linear",
    "cosine": "cosine",
    "cosine_with_min_lr": "cosine_with_min_lr",
}
DTYPES = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "auto": "auto",
}


def dropped_reason(key: str) -> str | None:
    if key in DROPPED:
        return DROPPED[key]
    for pattern, reason in DROPPED.items():
        if pattern.endswith("*") and key.startswith(pattern[:-1]):
            return reason
    return None


def suggest(key: str) -> str:
    names = sorted(MAPPED | {k for k in DROPPED if not k.endswith("*")})
    return did_you_mean(key, names)
