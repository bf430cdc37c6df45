"""System prompts, chat templates and evaluation prompts, in one place.

Training prompt = [system prompt] + user problem [+ L1 length sentence], rendered with a chat template:

>>> render_prompt(None, "What is 1+1?", system_prompt="Be brief.", template="r1-distill")
'<｜begin▁of▁sentence｜>Be brief.<｜User｜>What is 1+1?<｜Assistant｜><think>\\n'
>>> render_prompt(None, "What is 1+1?", template="plain", l1_mode="exact", l1_target=100)
'What is 1+1? Think for 100 tokens.'

Texts are copied from the sources Tina used (cited per constant), quirks included, so a run sees the same tokens.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from tina.errors import ConfigError, did_you_mean

# ----------------------------------------------------------------------------------------------------------------------
# System prompts
# ----------------------------------------------------------------------------------------------------------------------

# Verbatim from Tina (shangshang-wang/Tina, tina/utils/prompt.py, OPEN_R1_SYSTEM_PROMPT, "borrowed from open-r1's
# recipes/DeepSeek-R1-Distill-Qwen-1.5B/grpo/config_demo.yaml").  It starts and ends with a newline (Tina wrote it as
# a triple-quoted string); the "\n" in the format line are real newlines.  Tina used it for every dataset except
# knoveleng/open-rs (open-s1 included).
OPEN_R1_SYSTEM_PROMPT = (
    "\n"
    "You are a helpful AI Assistant that provides well-reasoned and detailed responses.\n"
    "You first think about the reasoning process as an internal monologue and then provide the user with the answer.\n"
    "Respond in the following format: <think>\n...\n</think>\n<answer>\n...\n</answer>\n"
)

# Verbatim from Tina (tina/utils/prompt.py, OPEN_RS_SYSTEM_PROMPT, "borrowed from knoveleng/open-rs
# recipes/grpo.yaml"), used for knoveleng/open-rs.  Quirks kept on purpose, because they are what Tina's model saw:
# "\boxed{{}}" with DOUBLED braces (Tina's source escaped braces in a string that is never .format()ed), a space
# before the full stop after it, a trailing space after "respectively,", and a newline at both ends.
# Uncertainty: Open-RS's own YAML most likely had "\boxed{}"; we follow Tina, not Open-RS.
OPEN_RS_SYSTEM_PROMPT = (
    "\n"
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it.\n"
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the answer, "
    "and put your final answer within \\boxed{{}} .\n"
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, \n"
    "i.e., <think> reasoning process here </think> <answer> answer here </answer>.\n"
    "Note that respond by English, NOT use other languages.\n"
)

SYSTEM_PROMPTS: dict[str, str] = {
    "openr1": OPEN_R1_SYSTEM_PROMPT,
    "open-rs": OPEN_RS_SYSTEM_PROMPT,
}

# ----------------------------------------------------------------------------------------------------------------------
# Chat templates (jinja, rendered like transformers does: trim_blocks, lstrip_blocks, sandboxed)
# ----------------------------------------------------------------------------------------------------------------------

_R1_HEAD = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{% set content = message['content'] %}"
)
_R1_ASSISTANT = "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor -%}"

CHAT_TEMPLATES: dict[str, str] = {
    # DeepSeek-R1-Distill-Qwen's template (tokenizer_config.json after DeepSeek's Feb-2025 update), without the
    # tool-call branches: BOS, the last system message verbatim, "<｜User｜>…", earlier assistant turns with their
    # reasoning cut at "</think>", and a generation prompt that opens the thinking block: "<｜Assistant｜><think>\n".
    "r1-distill": _R1_HEAD
    + "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    + _R1_ASSISTANT
    + "{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}",
    # The older R1-distill template that Tina v1 actually set (tina/utils/chat_template.py REASON_CHAT_TEMPLATE):
    # the generation prompt ends at "<｜Assistant｜>", so the model writes "<think>\n" itself, which Tina's
    # tag_count reward checks for.  Use this one to reproduce Tina's runs token for token.
    "r1-distill-tina": _R1_HEAD + _R1_ASSISTANT + "{% if add_generation_prompt %}{{'<｜Assistant｜>'}}{% endif %}",
    # ChatML (Qwen2.5 / OpenAI style), no default system prompt.
    "chatml": (
        "{%- for message in messages %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}{%- endif %}"
    ),
}

# Special tokens a template uses when no tokenizer is given.
_DEFAULT_SPECIAL = {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"}

#: Every value `render_prompt(template=...)` accepts.
TEMPLATE_NAMES: tuple[str, ...] = ("tokenizer", *CHAT_TEMPLATES, "plain")

# ----------------------------------------------------------------------------------------------------------------------
# L1 length control (Aggarwal & Welleck 2025, cmu-l3/l1): appended to the user problem after one space, as L1's
# data script does ("{problem} ... Think for N tokens.").
# Mode "tina" is Tina's code instead (tina/post_train_hf/preprocess.py make_conv_for_grpo_l1): "\nThink for N tokens."
# appended to the *system* prompt, the L1-Exact sentence for its L1-Exact and L1-Max runs alike.
# ----------------------------------------------------------------------------------------------------------------------

L1_PROMPTS: dict[str, str] = {
    "exact": "Think for {n} tokens.",
    "max": "Think for maximum {n} tokens.",
}
#: Every L1 mode: L1's two, and "tina" (the "exact" sentence, at the end of the system prompt after a newline).
L1_MODES: tuple[str, ...] = (*L1_PROMPTS, "tina")

# ----------------------------------------------------------------------------------------------------------------------
# Evaluation prompts (Tina's lighteval custom tasks, scripts/eval/run_eval_custom_tasks.py, from open-r1 /
# simple-evals).  Used as the whole user message, with no system prompt.  Fill them with str.format:
#   MATH_EVAL_PROMPT.format(problem=...)    GPQA_PROMPT.format(question=..., A=..., B=..., C=..., D=...)
# so "\boxed{ANSWER}" is written with doubled braces here.  Note the TWO spaces after "clearly." - that is the
# text Tina evaluated with; we keep it.  (Tina's placeholders were {Question}; ours are {problem} / {question}.)
# ----------------------------------------------------------------------------------------------------------------------

MATH_EVAL_PROMPT = (
    "Solve the following math problem efficiently and clearly.  The last line of your response should be of the "
    "following format: 'Therefore, the final answer is: $\\boxed{{ANSWER}}$. I hope it is correct' (without quotes) "
    "where ANSWER is just the final number or expression that solves the problem. Think step by step before "
    "answering.\n\n{problem}"
)

GPQA_PROMPT = (
    "Answer the following multiple choice question. The last line of your response should be of the following "
    "format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step before answering.\n\n"
    "{question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}"
)


def format_math_eval(problem: str) -> str:
    r"""The evaluation prompt for one math problem.

    >>> format_math_eval("What is $1+1$?").endswith("$\\boxed{ANSWER}$. I hope it is correct' (without quotes) "
    ...     "where ANSWER is just the final number or expression that solves the problem. Think step by step before "
    ...     "answering.\n\nWhat is $1+1$?")
    True
    """
    return MATH_EVAL_PROMPT.format(problem=problem)


def format_gpqa(question: str, choices: list[str] | tuple[str, ...]) -> str:
    """The evaluation prompt for one GPQA question with its four choices in display order (A, B, C, D)."""
    if len(choices) != 4:
        raise ValueError(f"GPQA needs exactly 4 choices, got {len(choices)}")
    a, b, c, d = choices
    return GPQA_PROMPT.format(question=question, A=a, B=b, C=c, D=d)


# ----------------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------------


def resolve_system_prompt(system_prompt: str | None) -> str | None:
    """A key of SYSTEM_PROMPTS -> its text; other text is used as given; None or "" -> no system prompt.

    A single word close to a key ("open_rs") or shaped like one ("deepseek-r1") is almost certainly a wrong key, so
    it is a ConfigError rather than being sent to the model as the system prompt.
    """
    if system_prompt is None or system_prompt == "":
        return None
    if system_prompt in SYSTEM_PROMPTS:
        return SYSTEM_PROMPTS[system_prompt]
    if not any(ch.isspace() for ch in system_prompt) and (
        did_you_mean(system_prompt, SYSTEM_PROMPTS) or re.fullmatch(r"[a-z0-9]+(?:[-_][a-z0-9]+)+", system_prompt)
    ):
        raise ConfigError(
            f"unknown system prompt '{system_prompt}'{did_you_mean(system_prompt, SYSTEM_PROMPTS)}; give one of: "
            f"{', '.join(SYSTEM_PROMPTS)}, or the full prompt text, or null for none"
        )
    return system_prompt


def l1_instruction(l1_mode: str | None, l1_target: int | None) -> str | None:
    """The L1 sentence for this mode and target ("Think for 512 tokens."), or None when L1 is off."""
    if l1_mode is None and l1_target is None:
        return None
    if l1_mode is None:
        raise ConfigError(f"an L1 target ({l1_target}) needs an L1 mode; set l1_mode to one of: {', '.join(L1_MODES)}")
    if l1_mode not in L1_MODES:
        raise ConfigError(
            f"unknown L1 mode '{l1_mode}'{did_you_mean(l1_mode, L1_MODES)}; choose one of: {', '.join(L1_MODES)}"
        )
    if isinstance(l1_target, bool) or not isinstance(l1_target, int) or l1_target < 1:
        raise ConfigError(f"L1 mode '{l1_mode}' needs a positive integer target length; got {l1_target!r}")
    return L1_PROMPTS.get(l1_mode, L1_PROMPTS["exact"]).format(n=l1_target)


def build_messages(
    problem: str, *, system_prompt: str | None = None, l1_mode: str | None = None, l1_target: int | None = None
) -> list[dict[str, str]]:
    r"""The chat messages for one problem: [system,] user (with the L1 sentence appended after one space; for
    l1_mode "tina", appended to the system prompt after a newline, as Tina's code did).

    >>> build_messages("Find x.", system_prompt="Be brief.", l1_mode="tina", l1_target=7)
    [{'role': 'system', 'content': 'Be brief.\nThink for 7 tokens.'}, {'role': 'user', 'content': 'Find x.'}]
    """
    user = problem
    suffix = l1_instruction(l1_mode, l1_target)
    system = resolve_system_prompt(system_prompt)
    if suffix and l1_mode == "tina":
        system = f"{system or ''}\n{suffix}"
    elif suffix:
        user = f"{problem} {suffix}"
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": user})
    return messages


@functools.lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    return env.from_string(template)


def render_chat(
    template: str, messages: list[dict[str, str]], *, add_generation_prompt: bool = True, **special_tokens: Any
) -> str:
    """Render a jinja chat template the way `tokenizer.apply_chat_template(tokenize=False)` does."""
    return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **special_tokens)


def _special_tokens(tokenizer: Any) -> dict[str, str]:
    if tokenizer is None:
        return dict(_DEFAULT_SPECIAL)
    return {key: getattr(tokenizer, key, None) or "" for key in _DEFAULT_SPECIAL}


def render_prompt(
    tokenizer: Any,
    problem: str,
    *,
    system_prompt: str | None = None,
    template: str = "tokenizer",
    l1_mode: str | None = None,
    l1_target: int | None = None,
) -> str:
    """The full prompt text for one problem, ready to tokenize (with `add_special_tokens=False`: BOS is included).

    tokenizer: used for template "tokenizer" (its own chat template) and for the BOS/EOS strings of the named
        templates; may be None for the named templates and "plain" (the DeepSeek BOS/EOS strings are used then).
    system_prompt: a key of SYSTEM_PROMPTS ("openr1", "open-rs"), literal text, or None.
    template: "tokenizer", one of CHAT_TEMPLATES ("r1-distill", "r1-distill-tina", "chatml"), or "plain" (system
        prompt, stripped, then a blank line, then the problem).
    l1_mode / l1_target: append L1_PROMPTS[l1_mode] with n=l1_target to the problem ("tina": the "exact" sentence
        to the system prompt).

    Raises ConfigError for an unknown template (with a suggestion), or a tokenizer without a chat template.
    """
    if template not in TEMPLATE_NAMES:
        raise ConfigError(
            f"unknown prompt template '{template}'{did_you_mean(template, TEMPLATE_NAMES)}; choose one of: "
            f"{', '.join(TEMPLATE_NAMES)}"
        )
    messages = build_messages(problem, system_prompt=system_prompt, l1_mode=l1_mode, l1_target=l1_target)

    if template == "plain":
        if messages[0]["role"] == "system":
            return f"{messages[0]['content'].strip()}\n\n{messages[1]['content']}"
        return messages[0]["content"]

    if template == "tokenizer":
        if tokenizer is None:
            raise ConfigError(
                "prompt template 'tokenizer' needs a tokenizer; set the prompt template to one of: "
                f"{', '.join(t for t in TEMPLATE_NAMES if t != 'tokenizer')}"
            )
        if not getattr(tokenizer, "chat_template", None):
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise ConfigError(
                f"tokenizer '{name}' has no chat template, so prompt template 'tokenizer' cannot be used; set the "
                f"prompt template to 'chatml' or 'plain' (or 'r1-distill' for DeepSeek-R1-Distill models)"
            )
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not isinstance(text, str):  # some versions return a list when given a batch
            text = text[0]
        return text

    return render_chat(CHAT_TEMPLATES[template], messages, add_generation_prompt=True, **_special_tokens(tokenizer))
