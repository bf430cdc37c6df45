"""Tina's released recipe files that the tests import (text only, no test here)."""

# The Open-RS3 Dr.GRPO ablation as Tina v1 released it (recipes/DeepSeek-R1-Distill-Qwen-1.5B/grpo/
# model_curated_open_rs3_drgrpo_ablation.yaml), typo included: `scale_reward` is not a GRPOConfig field, and
# TRL 0.15's parser silently dropped it, so this recipe ran plain GRPO.
TINA_DRGRPO = """\
# check ./tina/utils/constant.py
model_post_train_dataset_name: curated_open_rs3_drgrpo_ablation
model_post_train_type: grpo
rl_post_train_reward_funcs:
- format
- cosine
rl_post_train_reward_weights:
- 1.0
- 2.0


# Model configs from trl
model_name_or_path: DeepSeek-R1-Distill-Qwen-1.5B
attn_implementation: flash_attention_2
use_peft: true
lora_r: 32
lora_alpha: 128
lora_dropout: 0.05
lora_target_modules:
- q_proj
- k_proj
- v_proj
- o_proj
- down_proj
- up_proj
- gate_proj


# GRPO trainer configs from trl
scale_reward: false # use Dr. GRPO's normalization
bf16: true
use_vllm: true
vllm_device: cuda:0
vllm_gpu_memory_utilization: 0.4
vllm_max_model_len: 4608
gradient_accumulation_steps: 4
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: false
push_to_hub: false
hub_strategy: every_save
hub_private_repo: true
hub_model_id: TODO
log_level: info
logging_first_step: true
logging_steps: 1
logging_strategy: steps
learning_rate: 1.0e-06
lr_scheduler_type: cosine_with_min_lr
lr_scheduler_kwargs:
  min_lr_rate: 0.1
max_prompt_length: 512
max_completion_length: 3584
max_steps: 1500 # use 1500 for lr scheduler but stop at 850 steps
num_generations: 6
num_train_epochs: 1
overwrite_output_dir: true
per_device_train_batch_size: 6
report_to:
- wandb

save_strategy: steps
save_steps: 50
save_total_limit: 100

seed: 42
temperature: 0.7
warmup_ratio: 0.1
"""

# The same ablation as a later commit of Tina's repository has it (recipes/DeepSeek-R1-Distill-Qwen-1.5B/grpo/
# train_model_open_rs3_drgrpo_ablation.yaml at c6274cd): only the comment, the dataset name and one trailing comment
# differ; the `scale_reward` typo is still there.
TINA_DRGRPO_C6274CD = (
    TINA_DRGRPO.replace("# check ./tina/utils/constant.py", "# check ./tina/config.py")
    .replace("curated_open_rs3_drgrpo_ablation", "open_rs3_drgrpo_ablation")
    .replace("push_to_hub: false\n", "push_to_hub: false # set as false on purpose\n")
)
