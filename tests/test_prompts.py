"""System prompts, chat templates, L1 sentences and eval prompts render exactly as Tina's sources did."""

from __future__ import annotations

import pytest

from tina.errors import ConfigError
from tina.prompts import (
    CHAT_TEMPLATES,
    GPQA_PROMPT,
    L1_PROMPTS,
    MATH_EVAL_PROMPT,
    SYSTEM_PROMPTS,
    TEMPLATE_NAMES,
    build_messages,
    format_gpqa,
    format_math_eval,
    render_chat,
    render_prompt,
)

BOS = "<｜begin▁of▁sentence｜>"


def tiny_tokenizer(chat_template: str | None):
    """A word-level tokenizer built in memory (no downloads), optionally with a chat template."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "what": 3, "is": 4, "1+1?": 5}
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=model, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tok.chat_template = chat_template
    return tok


# ---------------------------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------------------------


def test_system_prompts():
    openr1, open_rs = SYSTEM_PROMPTS["openr1"], SYSTEM_PROMPTS["open-rs"]
    assert openr1.startswith("\nYou are a helpful AI Assistant that provides well-reasoned and detailed responses.\n")
    assert openr1.endswith("Respond in the following format: <think>\n...\n</think>\n<answer>\n...\n</answer>\n")
    assert open_rs.startswith("\nA conversation between User and Assistant.")
    assert "put your final answer within \\boxed{{}} .\n" in open_rs  # Tina's doubled braces, kept
    assert "<think> </think> and <answer> </answer> tags, respectively, \ni.e., " in open_rs
    assert open_rs.endswith("Note that respond by English, NOT use other languages.\n")


def test_l1_prompts():
    assert L1_PROMPTS == {"exact": "Think for {n} tokens.", "max": "Think for maximum {n} tokens."}


def test_math_eval_prompt():
    text = format_math_eval("What is $1+1$?")
    assert text == MATH_EVAL_PROMPT.format(problem="What is $1+1$?")
    assert text == (
        "Solve the following math problem efficiently and clearly.  The last line of your response should be of the "
        "following format: 'Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is correct' (without "
        "quotes) where ANSWER is just the final number or expression that solves the problem. Think step by step "
        "before answering.\n\nWhat is $1+1$?"
    )
    # Braces in the problem are not touched by .format.
    assert format_math_eval("Find $\\{x\\}$ in {1,2}.").endswith("\n\nFind $\\{x\\}$ in {1,2}.")


def test_gpqa_prompt():
    text = format_gpqa("Which?", ["w", "x", "y", "z"])
    assert text == GPQA_PROMPT.format(question="Which?", A="w", B="x", C="y", D="z")
    assert text == (
        "Answer the following multiple choice question. The last line of your response should be of the following "
        "format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step before "
        "answering.\n\nWhich?\n\nA) w\nB) x\nC) y\nD) z"
    )
    with pytest.raises(ValueError):
        format_gpqa("Which?", ["a", "b"])


# ---------------------------------------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------------------------------------


def test_r1_distill_exact_string():
    text = render_prompt(None, "What is 1+1?", system_prompt="You are terse.", template="r1-distill")
    assert text == f"{BOS}You are terse.<｜User｜>What is 1+1?<｜Assistant｜><think>\n"
    assert text.endswith("<｜Assistant｜><think>\n")


def test_r1_distill_with_tina_system_prompt():
    text = render_prompt(None, "What is 1+1?", system_prompt="openr1", template="r1-distill")
    assert text == f"{BOS}{SYSTEM_PROMPTS['openr1']}<｜User｜>What is 1+1?<｜Assistant｜><think>\n"


def test_r1_distill_tina_variant_stops_at_assistant():
    text = render_prompt(None, "Q", system_prompt="open-rs", template="r1-distill-tina")
    assert text == f"{BOS}{SYSTEM_PROMPTS['open-rs']}<｜User｜>Q<｜Assistant｜>"


def test_r1_distill_history_drops_reasoning():
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "<think>long</think>A1"},
        {"role": "user", "content": "U2"},
    ]
    assert render_chat(CHAT_TEMPLATES["r1-distill"], msgs, bos_token="<s>") == (
        "<s>S<｜User｜>U1<｜Assistant｜>A1<｜end▁of▁sentence｜><｜User｜>U2<｜Assistant｜><think>\n"
    )


def test_chatml():
    text = render_prompt(None, "Q", system_prompt="Be brief.", template="chatml")
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt(None, "Q", template="chatml") == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"


def test_plain():
    assert render_prompt(None, "Q?", template="plain") == "Q?"
    assert render_prompt(None, "Q?", system_prompt="Be brief.", template="plain") == "Be brief.\n\nQ?"
    text = render_prompt(None, "Q?", system_prompt="openr1", template="plain")
    assert text == SYSTEM_PROMPTS["openr1"].strip() + "\n\nQ?"


@pytest.mark.parametrize(
    ("mode", "sentence"), [("exact", "Think for 512 tokens."), ("max", "Think for maximum 512 tokens.")]
)
def test_l1_sentence_is_appended_to_the_problem(mode, sentence):
    assert render_prompt(None, "Find x.", template="plain", l1_mode=mode, l1_target=512) == f"Find x. {sentence}"
    text = render_prompt(None, "Find x.", system_prompt="S", template="r1-distill", l1_mode=mode, l1_target=512)
    assert text == f"{BOS}S<｜User｜>Find x. {sentence}<｜Assistant｜><think>\n"


def test_l1_misconfigurations():
    with pytest.raises(ConfigError, match="did you mean 'exact'"):
        render_prompt(None, "Q", template="plain", l1_mode="exakt", l1_target=5)
    with pytest.raises(ConfigError, match="needs a positive integer target"):
        render_prompt(None, "Q", template="plain", l1_mode="max")
    with pytest.raises(ConfigError, match="needs an L1 mode"):
        render_prompt(None, "Q", template="plain", l1_target=5)


def test_unknown_template_suggests():
    with pytest.raises(ConfigError) as exc:
        render_prompt(None, "Q", template="r1_distill")
    assert "unknown prompt template 'r1_distill' (did you mean 'r1-distill'?)" in str(exc.value)
    with pytest.raises(ConfigError, match="choose one of: tokenizer, r1-distill"):
        render_prompt(None, "Q", template="zzz")


def test_system_prompt_key_typo_is_an_error_not_literal_text():
    with pytest.raises(ConfigError, match="unknown system prompt 'open_rs' \\(did you mean 'open-rs'\\?\\)"):
        render_prompt(None, "Q", system_prompt="open_rs", template="plain")
    with pytest.raises(ConfigError, match="unknown system prompt 'deepseek-r1'"):
        render_prompt(None, "Q", system_prompt="deepseek-r1", template="plain")
    assert build_messages("Q", system_prompt="") == [{"role": "user", "content": "Q"}]
    assert build_messages("Q", system_prompt="Terse.")[0] == {"role": "system", "content": "Terse."}


# ---------------------------------------------------------------------------------------------------------------------
# template="tokenizer"
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
def test_tokenizer_template_matches_named_template(name):
    tok = tiny_tokenizer(CHAT_TEMPLATES[name])
    kwargs = dict(system_prompt="open-rs", l1_mode="exact", l1_target=64)
    via_tokenizer = render_prompt(tok, "what is 1+1?", template="tokenizer", **kwargs)
    assert via_tokenizer == render_prompt(tok, "what is 1+1?", template=name, **kwargs)
    assert via_tokenizer == tok.apply_chat_template(
        build_messages("what is 1+1?", **kwargs), tokenize=False, add_generation_prompt=True
    )


def test_tokenizer_bos_is_used_by_named_templates():
    tok = tiny_tokenizer(None)
    assert render_prompt(tok, "Q", template="r1-distill") == "<s><｜User｜>Q<｜Assistant｜><think>\n"


def test_tokenizer_without_chat_template():
    tok = tiny_tokenizer(None)
    with pytest.raises(ConfigError) as exc:
        render_prompt(tok, "Q")
    assert "has no chat template" in str(exc.value) and "'chatml' or 'plain'" in str(exc.value)
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        render_prompt(None, "Q", template="tokenizer")


def test_template_names():
    assert TEMPLATE_NAMES == ("tokenizer", "r1-distill", "r1-distill-tina", "chatml", "plain")
