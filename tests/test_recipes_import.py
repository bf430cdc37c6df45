"""`tina recipes import`: original Tina / open-r1 / TRL recipes become tina recipes; unknown keys are errors."""

from __future__ import annotations

import pytest
import yaml

from released_recipes import TINA_DRGRPO
from tina import cli
from tina.config import load_config, to_dict
from tina.importer import convert


def tina_original(
    dataset: str,
    rewards: dict,
    *,
    g: int,
    max_steps: str | None,
    save_steps: int,
    lr: str = "1e-06",
    r: int = 32,
    extra: str = "",
    vllm_util: float = 0.4,
    max_model_len: int | None = 4608,
) -> str:
    """A Tina v1 recipe with the given knobs (the rest is the same in every v1 recipe)."""
    names = "".join(f"- {n}\n" for n in rewards)
    weights = "".join(f"- {w}\n" for w in rewards.values())
    steps = f"max_steps: {max_steps}\n" if max_steps else ""
    return (
        f"model_post_train_dataset_name: {dataset}\nmodel_post_train_type: grpo\n"
        f"rl_post_train_reward_funcs:\n{names}rl_post_train_reward_weights:\n{weights}"
        f"model_name_or_path: DeepSeek-R1-Distill-Qwen-1.5B\nattn_implementation: flash_attention_2\n"
        f"use_peft: true\nlora_r: {r}\nlora_alpha: {4 * r}\nlora_dropout: 0.05\n"
        "lora_target_modules:\n- q_proj\n- k_proj\n- v_proj\n- o_proj\n- down_proj\n- up_proj\n- gate_proj\n"
        f"bf16: true\nuse_vllm: true\nvllm_device: cuda:0\nvllm_gpu_memory_utilization: {vllm_util}\n"
        + (f"vllm_max_model_len: {max_model_len}\n" if max_model_len else "")
        + "gradient_accumulation_steps: 4\ngradient_checkpointing: true\ngradient_checkpointing_kwargs:\n"
        "  use_reentrant: false\nlog_level: info\nlogging_first_step: true\nlogging_steps: 1\n"
        f"learning_rate: {lr}\nlr_scheduler_type: cosine_with_min_lr\nlr_scheduler_kwargs:\n  min_lr_rate: 0.1\n"
        f"max_prompt_length: 512\nmax_completion_length: 3584\n{steps}num_generations: {g}\n"
        f"num_train_epochs: 1\noverwrite_output_dir: true\nper_device_train_batch_size: {g}\nreport_to:\n- wandb\n"
        f"save_strategy: steps\nsave_steps: {save_steps}\nsave_total_limit: 100\nseed: 42\ntemperature: 0.7\n"
        f"warmup_ratio: 0.1\n{extra}"
    )


def write(tmp_path, text: str, name: str = "original.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def import_to(tmp_path, text: str, *args: str):
    src = write(tmp_path, text)
    out = tmp_path / "imported.yaml"
    code = cli.main(["recipes", "import", str(src), "--output", str(out), "--force", *args])
    return code, out


# Sections of a bundled recipe that an import of the same original must reproduce (cost and comments aside).
def comparable(cfg) -> dict:
    d = to_dict(cfg)
    d["lora"]["target_modules"] = sorted(d["lora"]["target_modules"])
    d["train"] = {
        k: d["train"][k]
        for k in (
            "max_steps",
            "stop_step",
            "batch_size",
            "gradient_accumulation_steps",
            "learning_rate",
            "lr_scheduler",
            "min_lr_ratio",
            "warmup_ratio",
            "seed",
            "save_steps",
            "gradient_checkpointing",
            "max_grad_norm",
            "weight_decay",
        )
    }
    return {k: d[k] for k in ("model", "lora", "data", "rollout", "algorithm", "rewards", "train")}


def test_the_released_dr_grpo_recipe_stops_on_its_typo(tmp_path, capsys):
    src = write(tmp_path, TINA_DRGRPO)
    assert cli.main(["recipes", "import", str(src)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'scale_reward' (did you mean 'scale_rewards'?)" in err
    assert "Traceback" not in err and err.strip().count("\n") == 0


def test_the_fixed_dr_grpo_recipe_imports_to_the_bundled_one(tmp_path, capsys):
    code, out = import_to(tmp_path, TINA_DRGRPO.replace("scale_reward: false", "scale_rewards: false"))
    assert code == 0
    text = out.read_text()
    assert text.splitlines()[0] == f"# tina train {out} --output-dir runs/imported"
    dropped = text.split("# Dropped (no effect in tina):")[1].split("\nmodel:")[0]
    for key in (
        "vllm_device",
        "hub_model_id",
        "push_to_hub",
        "logging_first_step",
        "overwrite_output_dir",
        "max_prompt_length",
    ):
        assert key in dropped
    for key in ("use_vllm", "vllm_gpu_memory_utilization", "vllm_max_model_len"):  # mapped onto rollout.*
        assert key not in dropped
    cfg = load_config(out)
    assert comparable(cfg) == comparable(load_config("tina-open-rs3-dr-grpo"))
    assert (cfg.algorithm.objective, cfg.algorithm.scale_rewards) == ("bnpo", "none")
    assert {r.name: r.params for r in cfg.rewards}["cosine"] == {"max_len": 3584}  # Tina's launch script flag
    assert (cfg.train.max_steps, cfg.train.stop_step) == (1500, 850)  # the stop step lives in a comment
    assert cli.main(["check", str(out)]) == 0


@pytest.mark.parametrize(
    "bundled, original",
    [
        (
            "tina-open-rs2",
            tina_original(
                "curated_open_rs2",
                {"format": 1.0, "accuracy": 2.0},
                g=6,
                max_steps="1500 # use 1500 for lr scheduler but stop at 850 steps",
                save_steps=50,
            ),
        ),
        (
            "tina-open-rs3",
            tina_original(
                "curated_open_rs3",
                {"format": 1.0, "cosine": 2.0},
                g=6,
                max_steps="1500 # use 1500 for lr scheduler but stop at 850 steps",
                save_steps=50,
            ),
        ),
        (
            "tina-limr-lr-5e-6",
            tina_original(
                "curated_limr_large_lr_ablation",
                {"format": 1.0, "accuracy": 2.0},
                g=4,
                max_steps="360 # use 360 for lr scheduler but stop at 180 steps",
                save_steps=10,
                lr="5e-06",
            ),
        ),
        (
            "tina-limr-rank-128",
            tina_original(
                "curated_limr_large_rank_ablation",
                {"format": 1.0, "accuracy": 2.0},
                g=4,
                max_steps="360 # use 360 for lr scheduler but stop at 180 steps",
                save_steps=50,
                r=128,
            ),
        ),
        (
            "tina-openr1",
            tina_original(
                "curated_open_r1",
                {
                    r: 1.0
                    for r in (
                        "accuracy",
                        "format",
                        "tag_count",
                        "length",
                        "reasoning_steps",
                        "cosine",
                        "repetition_penalty",
                    )
                },
                g=8,
                max_steps=None,
                save_steps=100,
                max_model_len=None,
            ),
        ),
        (
            "tina-curated-thoughts",
            tina_original(
                "curated_thoughts",
                {
                    r: 1.0
                    for r in (
                        "accuracy",
                        "format",
                        "tag_count",
                        "length",
                        "reasoning_steps",
                        "cosine",
                        "repetition_penalty",
                    )
                },
                g=8,
                max_steps=None,
                save_steps=100,
                vllm_util=0.6,
                max_model_len=None,
                extra="model_post_train_dataset_config: OpenThoughts-114k-math-default\n",
            ),
        ),
        (
            "tina-l1-max",
            tina_original(
                "l1_max",
                {"length_l1_max": 1.0},
                g=4,
                max_steps="11000 # use 11000 for lr scheduler but stop at 5500 steps",
                save_steps=100,
            ),
        ),
    ],
)
def test_tina_originals_import_to_the_bundled_recipes(tmp_path, bundled, original):
    code, out = import_to(tmp_path, original)
    assert code == 0
    assert comparable(load_config(out)) == comparable(load_config(bundled))


def test_open_r1_style_recipe_with_gpu_count(tmp_path, capsys):
    original = """\
model_name_or_path: deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
model_revision: main
torch_dtype: bfloat16
attn_implementation: flash_attention_2
dataset_name: open-r1/OpenR1-Math-220k
dataset_prompt_column: problem
system_prompt: "You are a helpful AI Assistant.\\nThink first."
bf16: true
use_vllm: true
do_eval: false
gradient_accumulation_steps: 4
gradient_checkpointing: true
hub_model_id: me/model
learning_rate: 3.0e-06
log_completions: true
lr_scheduler_type: cosine
max_prompt_length: 512
max_completion_length: 2048
max_steps: 500
num_generations: 16
output_dir: data/run
per_device_train_batch_size: 16
push_to_hub: true
report_to: none
reward_funcs: [accuracy, format, tag_count]
reward_weights: [1.0, 1.0, 0.5]
loss_type: dr_grpo
scale_rewards: false
epsilon_high: 0.28
num_iterations: 2
mask_truncated_completions: true
save_strategy: steps
save_steps: 100
seed: 7
temperature: 0.7
warmup_steps: 50
"""
    code, out = import_to(tmp_path, original, "--num-processes", "7")
    assert code == 0
    cfg = load_config(out)
    assert cfg.train.batch_size == 16 * 7 and cfg.train.gradient_accumulation_steps == 4
    assert cfg.cost.num_devices == 7
    assert (
        cfg.algorithm.objective,
        cfg.algorithm.scale_rewards,
        cfg.algorithm.epsilon_high,
        cfg.algorithm.num_iterations,
        cfg.algorithm.mask_truncated_completions,
    ) == ("dr_grpo", "none", 0.28, 2, True)
    assert cfg.algorithm.beta == 0.04  # TRL 0.15's default for a key the original leaves out
    assert {r.name: r.weight for r in cfg.rewards} == {"accuracy": 1.0, "format": 1.0, "tag_count": 0.5}
    assert cfg.data.system_prompt == "You are a helpful AI Assistant.\nThink first."
    assert (cfg.data.source, cfg.data.subset, cfg.data.schema) == (
        "open-r1/OpenR1-Math-220k",
        "default",
        "openr1-math",
    )
    assert cfg.data.template == "tokenizer"  # not a Tina recipe: the model's own chat template
    assert cfg.train.lr_scheduler == "cosine" and cfg.train.seed == 7 and cfg.train.report_to == []
    from tina.rl.schedule import warmup_steps_for

    assert warmup_steps_for(cfg.train.max_steps, cfg.train.warmup_ratio) == 50
    # without the GPU count, 16 completions per process are fine too (16 % 16 == 0) but a note says what was assumed
    assert "1 process(es) assumed" in (import_to(tmp_path, original)[1]).read_text()


def test_batch_not_divisible_suggests_the_gpu_count(tmp_path, capsys):
    text = TINA_DRGRPO.replace("scale_reward: false", "scale_rewards: false")
    code, _ = import_to(tmp_path, text, "--num-processes", "1")  # 6 x 1 is fine for G=6 ...
    assert code == 0
    code, _ = import_to(
        tmp_path,
        text.replace("per_device_train_batch_size: 6", "per_device_train_batch_size: 3"),
        "--num-processes",
        "1",
    )  # ... 3 x 1 is not
    assert code == 2
    assert "--num-processes" in capsys.readouterr().err


@pytest.mark.parametrize(
    "line, message",
    [
        ("use_peft: false", "tina (it trains LoRA adapters only"),
        ("use_dora: true", "not supported by tina (no DoRA)"),
        ("loss_type: cispo", "loss_type 'cispo' is not supported"),
        ("lr_scheduler_type: polynomial", "lr_scheduler_type 'polynomial' is not supported"),
        ("optim: sgd", "not supported by tina (the optimiser is torch AdamW)"),
        ("learning_rat: 1e-6", "unknown key 'learning_rat' (did you mean 'learning_rate'?)"),
        ("num_generation: 4", "did you mean 'num_generations'?"),
        ("reward_func: [accuracy]", "did you mean 'reward_funcs'?"),
    ],
)
def test_unsupported_and_unknown_keys_exit_2(tmp_path, capsys, line, message):
    base = TINA_DRGRPO.replace("scale_reward: false", "scale_rewards: false")
    key = line.split(":")[0]
    lines = [x for x in base.splitlines() if not x.startswith(key + ":")]
    code, _ = import_to(tmp_path, "\n".join(lines) + "\n" + line + "\n")
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_reward_name_is_an_error(tmp_path, capsys):
    text = TINA_DRGRPO.replace("scale_reward: false", "scale_rewards: false").replace("- cosine\n", "- cosin\n")
    code, _ = import_to(tmp_path, text)
    assert code == 2
    assert "did you mean 'cosine'?" in capsys.readouterr().err


def test_missing_max_steps_for_an_unknown_dataset_asks_for_it(tmp_path, capsys):
    original = (
        "model_name_or_path: Qwen/Qwen2.5-0.5B\ndataset_name: someone/own-math\nuse_peft: true\n"
        "num_train_epochs: 1\nnum_generations: 4\nper_device_train_batch_size: 8\n"
        "lr_scheduler_type: constant\n"
    )
    code, _ = import_to(tmp_path, original)
    assert code == 2
    assert "--set train.max_steps=N" in capsys.readouterr().err
    code, out = import_to(tmp_path, original, "--set", "train.max_steps=200")
    assert code == 0
    cfg = load_config(out)
    assert cfg.train.max_steps == 200 and cfg.train.batch_size == 8 and cfg.data.schema == "auto"
    assert cfg.rollout.temperature == 0.9 and cfg.rollout.max_new_tokens == 256  # TRL 0.15 defaults


def test_output_is_not_overwritten_without_force(tmp_path, capsys):
    src = write(tmp_path, TINA_DRGRPO.replace("scale_reward: false", "scale_rewards: false"))
    out = tmp_path / "taken.yaml"
    out.write_text("keep me\n")
    assert cli.main(["recipes", "import", str(src), "--output", str(out)]) == 2
    assert out.read_text() == "keep me\n"


def test_import_to_stdout_is_a_valid_recipe(tmp_path, capsys):
    src = write(tmp_path, TINA_DRGRPO.replace("scale_reward: false", "scale_rewards: false"))
    assert cli.main(["recipes", "import", str(src)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# tina train THIS_FILE.yaml --output-dir runs/original\n")
    load_config(yaml.safe_load(text))


def test_convert_is_usable_as_a_function():
    raw = yaml.safe_load(TINA_DRGRPO.replace("scale_reward: false", "scale_rewards: false"))
    imported = convert(raw, TINA_DRGRPO, source="x.yaml")
    assert imported.recipe["train"]["stop_step"] == 850
    assert "vllm_device" in imported.dropped and imported.notes
