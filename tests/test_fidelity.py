"""docs/fidelity.md, row by row: where tina's defaults differ from Tina's released code, and the key that gives
Tina's behaviour.  Values are worked out by hand; each test fails if either side of a row changes.

"Tina" here is shangshang-wang/Tina at c6274cd (trainer and rewards unchanged since v1, 077329b).
"""

from __future__ import annotations

import math

import pytest
import torch

from released_recipes import TINA_DRGRPO_C6274CD
from tina import cli
from tina.config import RECIPES_DIR, load_config
from tina.errors import ConfigError
from tina.rewards import (
    RewardBatch,
    RewardSpec,
    accuracy,
    check_params,
    cosine,
    format_reward,
    grade_batch,
    length_l1_exact,
    length_l1_max,
    reasoning_steps,
    score,
    tag_count,
    target_tokens,
)
from tina.rewards.text import STEP_PATTERN_TINA
from tina.rl.advantages import group_advantages
from tina.rl.losses import LOSSES, Norm
from tina.rl.schedule import lr_multiplier, warmup_steps_for


class V:
    """A hand-made verdict: the rewards only read `.correct`."""

    def __init__(self, correct):
        self.correct = correct
        self.extracted, self.reason, self.source = None, "hand-made", None


def graded(completions, correct, *, prompts=None, lengths=None, group_size=1):
    n = len(completions)
    return RewardBatch(
        list(completions),
        ["4"] * n,
        prompts or ["p"] * n,
        lengths or [len(c) for c in completions],
        group_size,
        [V(c) for c in correct],
    )


# ------------------------------------------------------------------------------------ 1. log-probs at temperature
def _tiny():
    from tina.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(
        "builtin:tiny-random", dtype="float32", attn_implementation="eager", device="cpu"
    )
    return model.eval()


def test_logprobs_at_temperature_vs_raw_logits_like_tina():
    """tina scores the sampled tokens under the distribution it sampled (logits / T); Tina's trainer (TRL 0.15's
    `_get_per_token_logps`) used the raw logits, i.e. T = 1, while sampling at T = 0.7."""
    from tina.rl.logprobs import token_logprobs

    model = _tiny()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, 300, (2, 5), generator=g)
    pmask = torch.ones(2, 5, dtype=torch.long)
    completion = torch.randint(3, 300, (2, 4), generator=g)
    cmask = torch.ones(2, 4)
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt, completion], 1)).logits[:, 4:-1]  # predict completion tokens
        at_t = token_logprobs(model, prompt, pmask, completion, cmask, temperature=0.7)
        raw = token_logprobs(model, prompt, pmask, completion, cmask, temperature=1.0)
    picked = completion.unsqueeze(-1)
    expected_t = torch.log_softmax(logits / 0.7, -1).gather(-1, picked).squeeze(-1)
    expected_raw = torch.log_softmax(logits, -1).gather(-1, picked).squeeze(-1)  # Tina
    assert torch.allclose(at_t, expected_t, atol=1e-5) and torch.allclose(raw, expected_raw, atol=1e-5)
    assert (at_t - raw).abs().max() > 1e-2  # really different numbers


@pytest.mark.parametrize("at_temperature, expected", [(True, 0.7), (False, 1.0)])
def test_logprobs_temperature_follows_the_config_key(monkeypatch, at_temperature, expected):
    """`algorithm.logprobs_at_temperature: false` (Tina) makes the loss pass score tokens at T = 1."""
    import tina.train as train_mod
    from tina.ledger import Ledger

    seen = []

    class Seen(Exception):
        pass

    def spy(*args, temperature, **kwargs):
        seen.append(temperature)
        raise Seen

    monkeypatch.setattr(train_mod, "token_logprobs", spy)
    cfg = load_config(
        {
            "model": {"name_or_path": "builtin:tiny-random", "dtype": "float32"},
            "data": {"source": "builtin:arith", "template": "tokenizer"},
            "rollout": {"num_generations": 2, "max_new_tokens": 4, "temperature": 0.7},
            "algorithm": {"logprobs_at_temperature": at_temperature},
            "rewards": {"accuracy": {"weight": 1.0}},
            "train": {"max_steps": 1, "batch_size": 2, "device": "cpu", "probe_prompt": ""},
        }
    )
    ones = torch.ones(2, 3, dtype=torch.long)
    mb = train_mod.MicroBatch(ones, ones, ones, ones.float(), torch.tensor([1.0, -1.0]), None, None)
    layer = torch.nn.Linear(1, 1)
    with pytest.raises(Seen):
        train_mod.update(layer, [mb], cfg, torch.optim.SGD(layer.parameters(), lr=0.1), Ledger())
    assert seen == [expected]


# ------------------------------------------------------------------------------------- 2. ungradable gold
def test_ungradable_gold_excluded_here_zero_in_tina():
    """A group of 4 (format + 2 x accuracy, as Tina-Open-RS2); completion 3's gold could not be graded.

    tina: its total is None -> left out of the group statistics and the loss (counted as ungradable).
    Tina: accuracy None -> NaN -> 0 in the trainer's nansum over rewards: total = format only, kept in the group.
    """
    texts = ["a\n</think>\n\\boxed{4}", "b\n</think>\n\\boxed{5}", "c\n</think>\n\\boxed{4}", "no tag"]
    batch = graded(texts, [True, False, None, True], group_size=4)

    def specs(**acc):
        return [RewardSpec("format", 1.0), RewardSpec("accuracy", 2.0, acc)]

    ours, _ = score(batch, specs())
    tinas, _ = score(batch, specs(ungradable="zero"))
    assert ours == [3.0, 1.0, None, 2.0]
    assert tinas == [3.0, 1.0, 1.0, 2.0]

    adv, stats = group_advantages(torch.tensor([math.nan if r is None else r for r in ours]), 4)
    # valid rewards 3, 1, 2: mean 2, std 1 -> (1, -1, 0); the ungradable one gets 0 and is masked out of the loss
    assert [round(a, 3) for a in adv.tolist()] == [1.0, -1.0, 0.0, 0.0] and stats.n_ungradable == 1
    adv, stats = group_advantages(torch.tensor(tinas), 4)
    # 3, 1, 1, 2: mean 1.75, std 0.9574 -> the ungradable completion is trained on, as a wrong answer
    assert [round(a, 3) for a in adv.tolist()] == [1.305, -0.783, -0.783, 0.261] and stats.n_ungradable == 0


def test_ungradable_policy_is_a_checked_parameter():
    with pytest.raises(
        ConfigError,
        match=r"ungradable must be one of exclude, zero, got 'zeros' \(did you mean "
        r"'zero'\?\)",
    ):
        check_params("accuracy", {"ungradable": "zeros"})
    with pytest.raises(ConfigError, match="did you mean 'one'"):
        check_params("cosine", {"ungradable": "on"})
    with pytest.raises(ConfigError, match="did you mean 'correct'"):
        check_params("length", {"ungradable": "corect"})
    # what Tina's other rewards did with an unparseable gold: cosine paid 1.0, length / L1 called it correct
    batch = graded(["x" * 40], [None], prompts=["Think for 100 tokens."], lengths=[100])
    assert cosine(batch, max_len=10) == [None] and cosine(batch, max_len=10, ungradable="one") == [1.0]
    assert length_l1_exact(batch) == [None] and length_l1_exact(batch, ungradable="correct") == [1.0]


# --------------------------------------------------------------------------------------- 3. cosine past max_len
@pytest.mark.parametrize(
    "n_chars, correct, clipped, tina",
    [
        (15, True, 0.5, 0.75),  # progress 1.5: cos(1.5 pi) = 0 -> half way back up
        (20, True, 0.5, 1.0),  # progress 2: cos(2 pi) = 1 -> as good as an empty answer
        (30, True, 0.5, 0.5),  # progress 3: down again
        (20, False, -0.5, 0.0),  # a wrong answer of 2 x max_len is not penalised at all
    ],
)
def test_cosine_unclipped_like_tina(n_chars, correct, clipped, tina):
    batch = graded(["x" * n_chars], [correct])
    assert cosine(batch, max_len=10) == [pytest.approx(clipped)]
    assert cosine(batch, max_len=10, clip=False) == [pytest.approx(tina)]


def test_cosine_oscillates_at_tinas_max_len():
    """Tina-Open-RS3: max_len 3584 characters against completions of up to 3584 *tokens* (~12k characters)."""
    batch = graded(["x" * 7168, "x" * 3584], [True, True])
    assert cosine(batch, max_len=3584, clip=False) == [pytest.approx(1.0), pytest.approx(0.5)]
    assert cosine(batch, max_len=3584) == [pytest.approx(0.5), pytest.approx(0.5)]
    with pytest.raises(ConfigError, match="clip must be one of true, false"):
        check_params("cosine", {"clip": "no"})


# ------------------------------------------------------------------------------------------------ 4. see tests/data
# tests/data/test_fidelity_gold.py::test_training_gold_answer_column_vs_tinas_solution_parse


# ---------------------------------------------------------------------------------------------------- 5. L1
def test_l1_rewards_count_characters_like_tina():
    """Target 1000 tokens; a correct completion of 600 tokens and 3000 characters."""
    text = "y" * 3000
    for prompt in ("Think for 1000 tokens.", "Think for maximum 1000 tokens."):
        batch = graded([text], [True], prompts=[prompt], lengths=[600])
        assert target_tokens(prompt) == 1000
        # exact: 1 - 0.0003 * |1000 - 600| = 0.88 (tokens); 1 - 0.0003 * 2000 = 0.4 (Tina: characters)
        assert length_l1_exact(batch) == [pytest.approx(0.88)]
        assert length_l1_exact(batch, unit="chars") == [pytest.approx(0.4)]
        # max: clip(0.0003 * (1000 - 600) + 0.5) = 0.62; with characters 0.0003 * -2000 + 0.5 < 0 -> 0
        assert length_l1_max(batch) == [pytest.approx(0.62)]
        assert length_l1_max(batch, unit="chars") == [0.0]
    with pytest.raises(ConfigError, match="did you mean 'chars'"):
        check_params("length_l1_exact", {"unit": "characters"})


def test_l1_prompt_in_the_system_message_like_tina():
    """L1's sentence after the problem ("exact" / "max") vs Tina's "\\nThink for N tokens." at the end of the system
    prompt, the same words for its L1-Exact and L1-Max runs (l1_mode "tina")."""
    from tina.prompts import OPEN_R1_SYSTEM_PROMPT, render_prompt

    def render(mode):
        return render_prompt(
            None, "Find x.", system_prompt="openr1", template="r1-distill-tina", l1_mode=mode, l1_target=1234
        )

    bos, user = "<｜begin▁of▁sentence｜>", "<｜User｜>"
    assert render("exact") == f"{bos}{OPEN_R1_SYSTEM_PROMPT}{user}Find x. Think for 1234 tokens.<｜Assistant｜>"
    assert render("max") == f"{bos}{OPEN_R1_SYSTEM_PROMPT}{user}Find x. Think for maximum 1234 tokens.<｜Assistant｜>"
    assert render("tina") == f"{bos}{OPEN_R1_SYSTEM_PROMPT}\nThink for 1234 tokens.{user}Find x.<｜Assistant｜>"
    assert target_tokens(render("tina")) == 1234  # the L1 rewards read the target wherever it is


# ---------------------------------------------------------------------------------------- 6. warmup's first step
def test_warmup_first_step_like_transformers():
    """Tina (transformers' get_cosine_with_min_lr_schedule_with_warmup): lr 0 on step 0, peak on step 150 of 1500.
    tina: one step earlier during warmup, the same curve after it."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_cosine_with_min_lr_schedule_with_warmup(
        opt, num_warmup_steps=150, num_training_steps=1500, min_lr_rate=0.1
    ).lr_lambdas[0]
    warm = warmup_steps_for(1500, 0.1)
    kw = dict(total_steps=1500, kind="cosine_with_min_lr", warmup_steps=warm, min_ratio=0.1)
    assert warm == 150
    assert [hf(s) for s in (0, 1, 149, 150)] == [0.0, 1 / 150, 149 / 150, 1.0]
    assert [lr_multiplier(s, **kw) for s in (0, 1, 149, 150)] == [1 / 150, 2 / 150, 1.0, 1.0]
    for step in range(0, 1501):
        assert lr_multiplier(step, **kw, warmup_from_zero=True) == pytest.approx(hf(step), abs=1e-12), step
        if step >= 150:
            assert lr_multiplier(step, **kw) == pytest.approx(hf(step), abs=1e-12), step


# ------------------------------------------------------------------------------------- 7. reasoning-steps regex
def test_reasoning_steps_regex_without_multiline_like_tina():
    text = "Let me plan.\n1. Square both sides.\n2. Solve.\n3. Check."
    batch = RewardBatch([text, "1. a\n2. b"], ["1"] * 2, ["p"] * 2, [1] * 2, 1)
    # MULTILINE: three list items -> 3/3; Tina: "^\d+\." only at the very start -> 0 for the first, 1/3 for the second
    assert reasoning_steps(batch) == [1.0, pytest.approx(2 / 3)]
    assert reasoning_steps(batch, multiline=False) == [0.0, pytest.approx(1 / 3)]


# ------------------------------------------------------------------------------------ 8. long-completion cap
def test_long_completion_recipe_caps_like_tina():
    cfg = load_config("tina-open-rs3-long-completion")
    assert (cfg.rollout.max_new_tokens, cfg.rollout.max_model_len) == (8960, 4608)
    assert {r.name: r.params for r in cfg.rewards}["cosine"] == {"max_len": 3584}
    header = (RECIPES_DIR / "tina-open-rs3-long-completion.yaml").read_text().split("\nmodel:")[0]
    assert "post_train_model_grpo_long_completion.sh" in header and "OUR INFERENCE" not in header


# -------------------------------------------------------------------------------------- 9. Dr.GRPO = bnpo per group
# Tina's train_model_open_rs3_drgrpo_ablation.yaml at c6274cd: tests/released_recipes.py.


def test_dr_grpo_import_is_bnpo_at_group_size(tmp_path, capsys):
    src = tmp_path / "train_model_open_rs3_drgrpo_ablation.yaml"
    src.write_text(TINA_DRGRPO_C6274CD)
    assert cli.main(["recipes", "import", str(src)]) == 2  # as released: the typo TRL 0.15 ignored silently
    assert "did you mean 'scale_rewards'?" in capsys.readouterr().err
    src.write_text(TINA_DRGRPO_C6274CD.replace("scale_reward:", "scale_rewards:"))
    out = tmp_path / "imported.yaml"
    assert cli.main(["recipes", "import", str(src), "--output", str(out)]) == 0
    imported, bundled = load_config(out), load_config("tina-open-rs3-dr-grpo")
    for cfg in (imported, bundled):
        a, t = cfg.algorithm, cfg.train
        assert (a.objective, a.scale_rewards) == ("bnpo", "none")
        # one micro-batch = one GPU's 6 completions = one prompt group; 4 accumulation steps x 2 GPUs
        assert (t.batch_size, t.gradient_accumulation_steps, cfg.prompts_per_step) == (6, 8, 8)


def test_bnpo_per_group_is_tinas_dr_grpo_loss():
    """Two micro-batches of one group each, on-policy, beta 0: token loss = -A.

    group 1: A = (1, -1), lengths (2, 1): token losses -1, -1, +1 -> mean -1/3
    group 2: A = (0.5, -0.5), lengths (1, 3): -0.5, +0.5 x 3 -> mean 1/4
    Tina (mean of the micro-batches' token means) = (-1/3 + 1/4) / 2 = -1/24; a global token mean (dapo) = 0/7 = 0.
    """
    groups = [
        (torch.tensor([1.0, -1.0]), torch.tensor([[1.0, 1, 0], [1, 0, 0]])),
        (torch.tensor([0.5, -0.5]), torch.tensor([[1.0, 0, 0], [1, 1, 1]])),
    ]
    norm = Norm(n_seqs=4, n_tokens=7, n_micro=2, max_len=3)

    def total(objective):
        out = 0.0
        for adv, mask in groups:
            logp = torch.zeros_like(mask)
            out += float(LOSSES[objective](logp, logp, adv, mask, norm=norm).loss)
        return out

    assert total("bnpo") == pytest.approx(-1 / 24)
    assert total("dapo") == pytest.approx(0.0)


# --------------------------------------------------------------------------- 10. which text the reward grades
# Tina's accuracy reward (tina/post_train_hf/rewards.py): math-verify on the WHOLE completion, the rightmost \boxed{}
# first ("final answer is ... I hope" ties with it), then "answer ...: $x$" phrases; no check that it finished.
R1_TINA_PROMPT = (
    "<｜begin▁of▁sentence｜>sys<｜User｜>What is 2+2?<｜Assistant｜>"  # r1-distill-tina: no <think> prefill
)
READS = [
    # completion, truncated, Tina's reward, tina boxed (default), tina lenient
    ("<think>\n2+2 = \\boxed{4}. Let me double-check that", True, 1.0, 0.0, 0.0),  # cut off while thinking
    ("<think>\nSo \\boxed{4}.\n</think>\nThe answer is 5.", False, 1.0, 0.0, 0.0),  # the box is in the thought
    ("<think>\n2+2=4\n</think>\nThe final answer is $4$. I hope it is correct.", False, 1.0, 0.0, 1.0),  # no box
    ("<think>\nok\n</think>\n\\boxed{4}", False, 1.0, 1.0, 1.0),
]


def tina_released_accuracy(completion: str, gold: str) -> float | None:
    """Tina's accuracy reward, through math-verify with the settings its rewards.py passes."""
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse, verify

    gold_parsed = parse(gold, extraction_mode="first_match")
    if not gold_parsed:
        return None
    normalization = NormalizationConfig(
        nits=False, malformed_operators=False, basic_latex=True, boxed="all", units=True
    )
    answer = parse(
        completion,
        extraction_mode="first_match",
        extraction_config=[
            LatexExtractionConfig(
                normalization_config=normalization, boxed_match_priority=0, try_extract_without_anchor=False
            )
        ],
    )
    return float(verify(gold_parsed, answer))


def test_accuracy_reads_the_final_box_here_the_whole_completion_in_tina():
    batch = RewardBatch(
        [r[0] for r in READS],
        ["4"] * len(READS),
        [R1_TINA_PROMPT] * len(READS),
        [10] * len(READS),
        1,
        truncated=[r[1] for r in READS],
    )
    batch = grade_batch(batch)
    assert [tina_released_accuracy(r[0], "$4$") for r in READS] == [r[2] for r in READS]
    assert accuracy(batch) == [r[3] for r in READS]
    assert accuracy(batch, extraction="lenient") == [r[4] for r in READS]


def test_text_rewards_pay_a_truncated_completion_in_tina_not_here():
    """Cut off at the token limit after the think block closed: Tina's format / tag_count / reasoning_steps are plain
    counts over the text and pay it; tina's pay nothing for an unfinished completion (no key brings Tina's back)."""
    text = "<think>\nFirst, 2+2.\nNext, 4.\nFinally, done.\n</think>\nThe answer is \\boxed{"
    batch = RewardBatch([text], ["4"], [R1_TINA_PROMPT], [3584], 1, truncated=[True])
    tina_format = 1.0 if text.count("\n</think>\n") == 1 else 0.0
    tina_tags = 0.5 * (text.count("<think>\n") == 1) + 0.5 * (text.count("\n</think>\n") == 1)
    tina_steps = min(1.0, len(STEP_PATTERN_TINA.findall(text)) / 3)  # First, Next, Finally
    assert (tina_format, tina_tags, tina_steps) == (1.0, 1.0, 1.0)
    assert format_reward(batch) == [0.0] and tag_count(batch) == [0.0] and reasoning_steps(batch) == [0.0]


# ------------------------------------------------------------------------------------------ rollout engine settings
def test_vllm_rollouts_are_corrected_here_not_in_tina():
    """Tina sampled with vLLM (bf16, LoRA merged into the weights) and trained on the samples as they were; tina's
    vllm engine weighs each token by the trainer/engine ratio unless algorithm.rollout_correction is none."""
    from tina.settings import rollout_correction_mode

    cfg = load_config("tina-open-rs3", ["rollout.backend=vllm"])
    assert rollout_correction_mode(cfg) == "token_truncate"
    exact = load_config("tina-open-rs3", ["rollout.backend=vllm", "algorithm.rollout_correction=none"])
    assert rollout_correction_mode(exact) == "none"
    on_hf = load_config("tina-open-rs3", ["rollout.backend=hf"])
    assert rollout_correction_mode(on_hf) == "none"  # the hf engine is the trainer's own model
    # ... unless it runs in rollout workers: their own weights, and with max_staleness an older adapter
    workers = load_config("tina-open-rs3", ["rollout.backend=hf", "rollout.devices=[cpu]", "rollout.max_staleness=1"])
    assert rollout_correction_mode(workers) == "token_truncate"
