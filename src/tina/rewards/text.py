"""Rewards that look only at the completion text: format, boxed_number, tag_count, reasoning_steps,
repetition_penalty, overlong (DAPO's length shaping).

They need no grading, so they never return None. None of them credits an unfinished completion (project rule: a
reward is never given to an answer that never finishes): format, tag_count and reasoning_steps give 0.0 to a
completion that hit the token limit (`RewardBatch.truncated`) or left its think block open. repetition_penalty is a
penalty (<= 0), so it keeps scoring truncated text: lifting it would reward the truncation.
"""

from __future__ import annotations

import re

from tina.errors import ConfigError
from tina.rewards.batch import RewardBatch
from tina.rewards.graded import param_choices

THINK_OPEN = "<think>\n"
THINK_CLOSE = "\n</think>\n"


def _unfinished(batch: RewardBatch, i: int) -> bool:
    """Completion `i` hit the token limit, or left a think block open (one it opened, or one its prompt opened: the
    grader's rule, `tina.grading.extract.final_part`)."""
    from tina.grading.extract import final_part, opens_think  # pure string functions

    if batch.is_truncated(i):
        return True
    return final_part(batch.completions[i], think_open=opens_think(batch.prompts[i])) is None


def format_reward(batch: RewardBatch) -> list[float]:
    r"""1.0 if the completion contains the closing tag ``"\n</think>\n"`` exactly once, else 0.0 (Tina's rule), and 0.0
    for an unfinished completion (truncated, or a think block opened again after the closing tag).

    The R1-distill chat template pre-fills ``"<think>\n"`` at the end of the prompt, so only the closing tag is
    checked. The rule is a plain substring count over the whole text, so multi-line reasoning is handled with no regex
    flags to forget (open-r1's early ``^<think>.*?</think>`` regex lacked DOTALL and scored 0 on any multi-line text).
    A closing tag at the very end of the text (no newline after it) does not count.

    >>> b = RewardBatch(["a\nb\n</think>\n\\boxed{1}", "x\n</think>\ny\n</think>\n", "a\n</think>\n\\boxed{"],
    ...                 ["1"] * 3, ["p"] * 3, [1, 1, 1], 1, truncated=[False, False, True])
    >>> format_reward(b)
    [1.0, 0.0, 0.0]
    """
    return [
        1.0 if text.count(THINK_CLOSE) == 1 and not _unfinished(batch, i) else 0.0
        for i, text in enumerate(batch.completions)
    ]


def boxed_number(batch: RewardBatch) -> list[float]:
    r"""1.0 if the completion finished and its final answer part holds exactly one ``\boxed{...}`` with a plain number
    in it (`tina.grading.numeric.parse_number`: ``12``, ``-3.5``, ``\frac{1}{2}``; any number: correctness is the
    accuracy reward's business), else 0.0 -- a format reward for models that do not think in tags (the real-model
    demo's SmolLM2).  An empty box, a placeholder word (``\boxed{answer}``) or the question's arithmetic copied into
    the box (``\boxed{7 + 5}``) is not a boxed number.

    >>> b = RewardBatch(["7 + 5 = \\boxed{12}", "The answer is \\boxed{}.", "\\boxed{1} or \\boxed{2}",
    ...                  "\\boxed{answer}", "\\boxed{3}", "\\boxed{7 + 5}"],
    ...                 ["12"] * 6, ["p"] * 6, [1] * 6, 1, truncated=[False, False, False, False, True, False])
    >>> boxed_number(b)
    [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    """
    from tina.grading.extract import extract_boxed, final_part, opens_think
    from tina.grading.numeric import parse_number

    out = []
    for i, text in enumerate(batch.completions):
        final = None if batch.is_truncated(i) else final_part(text, think_open=opens_think(batch.prompts[i]))
        boxed = extract_boxed(final) if final is not None else None
        ok = boxed is not None and parse_number(boxed) is not None and final.count("\\boxed") == 1
        out.append(1.0 if ok else 0.0)
    return out


def overlong(batch: RewardBatch, *, cache: int = 4096, max_len: int | None = None) -> list[float]:
    r"""DAPO's soft overlong punishment, on tokens (EOS included): 0 up to ``max_len - cache`` tokens, then a linear
    ramp to -1 at ``max_len`` (and -1 beyond).  ``max_len`` defaults to the rollout's token budget
    (``rollout.max_new_tokens``); with DAPO's own numbers, ``max_len=20480, cache=4096``.

    >>> b = RewardBatch(["a"] * 4, ["1"] * 4, ["p"] * 4, [10, 60, 80, 100], 1, max_new_tokens=100)
    >>> overlong(b, cache=40)
    [0.0, 0.0, -0.5, -1.0]
    """
    limit = max_len if max_len is not None else batch.max_new_tokens
    if limit is None:
        raise ConfigError("reward 'overlong' needs max_len (the completion budget): set rewards.overlong.max_len")
    if not 0 < cache <= limit:
        raise ConfigError(f"reward 'overlong': cache must be in 1..max_len ({limit}), got {cache}")
    start = limit - cache
    return [0.0 if n <= start else max(-1.0, (start - n) / cache) for n in batch.completion_lengths]


def tag_count(batch: RewardBatch) -> list[float]:
    r"""Tina's tag count: +0.5 if ``"<think>\n"`` occurs exactly once, +0.5 if ``"\n</think>\n"`` occurs exactly once;
    0.0 for an unfinished completion (truncated, or its think block left open: ``"<think>\nhm"`` earns nothing).

    This is the Tina variant (two tags, 0.5 each), not open-r1's four-tag version (0.25 each for ``<think>\n``,
    ``\n</think>\n``, ``\n<answer>\n`` and ``\n</answer>``): the R1-distill prompt asks for no ``<answer>`` tags.
    Because the R1-distill template pre-fills ``<think>\n`` in the prompt, a typical well-formed completion contains
    only the closing tag and scores 0.5.

    >>> b = RewardBatch(["<think>\nhm\n</think>\n42", "hm\n</think>\n42", "42", "<think>\nhm"], ["1"] * 4,
    ...                 ["p"] * 4, [1] * 4, 1)
    >>> tag_count(b)
    [1.0, 0.5, 0.0, 0.0]
    """
    out = []
    for i, text in enumerate(batch.completions):
        value = 0.0
        if not _unfinished(batch, i):
            if text.count(THINK_OPEN) == 1:
                value += 0.5
            if text.count(THINK_CLOSE) == 1:
                value += 0.5
        out.append(value)
    return out


# open-r1's step-marker alternatives: "Step N:", a numbered-list item "N." at the start of a line, a line starting with
# "-" or "*", and the transition words "First," "Second," "Next," "Finally,". open-r1 (and Tina, which copied it)
# searches without re.MULTILINE, so its "^\d+\." only ever matches at the very start of the completion even though
# its docstring says "at start of line"; we use re.MULTILINE so numbered lists count as documented.
_STEP_MARKERS = r"(Step \d+:|^\d+\.|\n-|\n\*|First,|Second,|Next,|Finally,)"
STEP_PATTERN = re.compile(_STEP_MARKERS, re.MULTILINE)
#: The same markers without re.MULTILINE: open-r1's / Tina's regex (``reasoning_steps: {multiline: false}``).
STEP_PATTERN_TINA = re.compile(_STEP_MARKERS)


@param_choices(multiline=(True, False))
def reasoning_steps(batch: RewardBatch, *, multiline: bool = True) -> list[float]:
    r"""min(1, #step markers / 3): full reward from three markers on (open-r1's "magic number 3"); 0.0 for an
    unfinished completion (truncated or think block left open), which would otherwise be paid for rambling on.

    Markers are non-overlapping matches of `STEP_PATTERN`. Note ``"\n-"`` also matches a line that starts with a minus
    sign or ``---``; that is open-r1's behaviour and kept. ``multiline=False`` uses open-r1's / Tina's regex, in which
    a numbered item "N." counts only at the very start of the completion.

    >>> b = RewardBatch(["Step 1: a\nStep 2: b", "First, x\n1. y\n- z\n* w", "First, x\n1. y\n- z\n* w"],
    ...                 ["1"] * 3, ["p"] * 3, [1] * 3, 1, truncated=[False, False, True])
    >>> [round(v, 4) for v in reasoning_steps(b)]
    [0.6667, 1.0, 0.0]
    >>> lists = RewardBatch(["Plan:\n1. a\n2. b\n3. c"], ["1"], ["p"], [1], 1)
    >>> reasoning_steps(lists), reasoning_steps(lists, multiline=False)
    ([1.0], [0.0])
    """
    if not isinstance(multiline, bool):
        raise ConfigError(f"reasoning_steps: multiline must be one of true, false, got {multiline!r}")
    pattern = STEP_PATTERN if multiline else STEP_PATTERN_TINA
    return [
        0.0 if _unfinished(batch, i) else min(1.0, len(pattern.findall(text)) / 3)
        for i, text in enumerate(batch.completions)
    ]


def repetition_penalty(batch: RewardBatch, *, ngram_size: int = 3, max_penalty: float = -1.0) -> list[float]:
    """N-gram repetition penalty (Yeo et al. 2025, App. C.2; open-r1 semantics): ``(1 - unique/total) * max_penalty``.

    Words are ``text.lower().split()``; n-grams are consecutive word windows. A text with fewer than `ngram_size` words
    has no n-grams and scores 0.0. With no repeats the value is 0.0; the more repeats, the closer to `max_penalty`.

    >>> b = RewardBatch(["a b c a b c", "a b"], ["1"] * 2, ["p"] * 2, [1, 1], 1)
    >>> repetition_penalty(b)  # 4 trigrams, 3 unique -> (1 - 3/4) * -1
    [-0.25, 0.0]
    """
    if max_penalty > 0:
        raise ConfigError(f"repetition_penalty: max_penalty must be <= 0 (it is a penalty), got {max_penalty}")
    if not isinstance(ngram_size, int) or ngram_size < 1:
        raise ConfigError(f"repetition_penalty: ngram_size must be a positive integer, got {ngram_size!r}")
    out = []
    for text in batch.completions:
        words = text.lower().split()
        if len(words) < ngram_size:
            out.append(0.0)
            continue
        ngrams = [tuple(words[i : i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
        out.append((1.0 - len(set(ngrams)) / len(ngrams)) * max_penalty + 0.0)  # + 0.0 turns -0.0 into 0.0
    return out
