"""What the trainer trains on: problems with their gold answers and rendered, tokenised prompts, and the seeded
sampler that decides which prompts each step sees (its position is checkpointed, so a resumed run sees the same)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tina.config import Config
from tina.errors import ConfigError, TinaError


@dataclass
class Problem:
    id: str
    problem: str
    answer: str
    prompt: str  # rendered prompt text
    prompt_ids: list[int] = field(default_factory=list)  # the prompt tokenised once (no special tokens added)


def _arith():
    from tina.tasks import arith

    return arith


def _addition():
    from tina.tasks import addition

    return addition


# Synthetic tasks built in: training never sees their held-out split (the demo and `tina eval` evaluate on it).
BUILTIN_TASKS = {"builtin:arith": _arith, "builtin:addition": _addition}


def load_problems(cfg: Config) -> tuple[list[dict], list[dict]]:
    """(train rows, holdout rows) as dicts with id/problem/answer/meta; a builtin task never yields its eval split."""
    d = cfg.data
    if d.source in BUILTIN_TASKS:
        rows, _heldout = BUILTIN_TASKS[d.source]().split(n_eval=cfg.eval.num_problems, seed=0)
        rows = [dict(r, meta={}) for r in rows]
    else:
        from tina.data import load_examples, with_l1_targets

        examples = load_examples(
            d.source,
            schema=d.schema,
            split=d.split,
            subset=d.subset,
            problem_field=d.problem_field,
            answer_field=d.answer_field,
        )
        if d.l1_mode and d.l1_target_range:  # rows without their own target get one drawn from the range (seeded)
            low, high = d.l1_target_range
            examples = with_l1_targets(examples, mode=d.l1_mode, low=low, high=high, seed=cfg.train.seed)
        rows = [{"id": e.id, "problem": e.problem, "answer": e.answer, "meta": dict(e.meta)} for e in examples]
    if d.shuffle:
        random.Random(cfg.train.seed).shuffle(rows)
    holdout, rows = rows[: d.holdout], rows[d.holdout :]
    if d.limit is not None:
        rows = rows[: d.limit]
    if not rows:
        raise TinaError(
            f"data.source '{d.source}' has no training problems left (holdout={d.holdout}, limit={d.limit})"
        )
    return rows, holdout


def render_prompts(rows: list[dict], tokenizer, cfg: Config) -> list[Problem]:
    """Render every prompt (system prompt, chat template, L1 suffix) and tokenise it once."""
    from tina.prompts import render_prompt

    d = cfg.data
    out = []
    for row in rows:
        meta = row.get("meta", {})
        mode = meta.get("l1_mode", d.l1_mode)  # L1 data carries its own mode and target per row
        target = meta.get("l1_target", d.l1_target) if mode else None
        if mode and target is None:
            raise ConfigError(
                f"data.l1_mode is '{mode}' but row {row['id']} has no target length; set "
                "data.l1_target or data.l1_target_range"
            )
        text = render_prompt(
            tokenizer,
            row["problem"],
            system_prompt=d.system_prompt,
            template=d.template,
            l1_mode=mode,
            l1_target=target,
        )
        out.append(Problem(row["id"], row["problem"], row["answer"], text))
    if out and tokenizer is not None:  # without a tokenizer (tina check) the prompts stay text
        ids = tokenizer([p.prompt for p in out], add_special_tokens=False)["input_ids"]
        for problem, prompt_ids in zip(out, ids, strict=True):
            problem.prompt_ids = list(prompt_ids)
    return out


class PromptSampler:
    """Epochs of seeded permutations; its position is part of the checkpoint, so a resumed run sees the same prompts."""

    def __init__(self, n: int, seed: int, epoch: int = 0, index: int = 0):
        self.n, self.seed, self.epoch, self.index = n, seed, epoch, index
        self._order = self._permutation(epoch)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.index >= self.n:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            out.append(self._order[self.index])
            self.index += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation(self.epoch)


@dataclass
class StepPrompts:
    """The prompts each step trains on, for this process: the sampler's next global prompts, micro-batch after
    micro-batch, and this process's contiguous share of each, every prompt with the key that names its random stream.

    Every process draws the same global prompts and keeps its share; the key (the prompt's position in the run's
    global order) names its random stream, so completions do not depend on the process count or on how the step is
    split into micro-batches.

    >>> alone = StepPrompts(PromptSampler(10, seed=0), per_micro=4, micro_batches=1, share=slice(0, 4))
    >>> first, second = (StepPrompts(PromptSampler(10, seed=0), 4, 1, s) for s in (slice(0, 2), slice(2, 4)))
    >>> alone.draw(0), first.draw(0), second.draw(0)  # two processes: the same prompts, the same keys
    ([(7, 0), (8, 1), (1, 2), (5, 3)], [(7, 0), (8, 1)], [(1, 2), (5, 3)])
    """

    sampler: PromptSampler
    per_micro: int  # prompts per micro-batch, over every process
    micro_batches: int  # train.gradient_accumulation_steps
    share: slice  # this process's rows of each micro-batch's prompts

    def draw(self, step: int) -> list[tuple[int, int]]:
        """This process's prompts for 0-based ``step``: (problem index, key) pairs."""
        out = []
        for micro in range(self.micro_batches):
            chosen = self.sampler.take(self.per_micro)[self.share]
            first = (step * self.micro_batches + micro) * self.per_micro + self.share.start
            out += [(i, first + j) for j, i in enumerate(chosen)]
        return out

    def draw_more(self, step: int, round_: int) -> list[tuple[int, int]]:
        """More prompts for ``step`` (dynamic sampling's refill round ``round_`` >= 1): one step's worth, this
        process's share, with keys that no regular draw uses."""
        from tina.rollout.sampling import row_seed

        out = []
        for micro in range(self.micro_batches):
            chosen = self.sampler.take(self.per_micro)[self.share]
            base = micro * self.per_micro + self.share.start
            out += [(i, row_seed(-1, step, round_, base + j)) for j, i in enumerate(chosen)]
        return out
