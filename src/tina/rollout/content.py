"""The content check: *what* an engine with its own weights serves, scored on one fixed probe every step.

The version numbers that :func:`tina.rollout.agreement.check_served` compares are set by the engine wrapper itself,
and a one-step-stale adapter is far inside ``rollout.max_logp_diff``, so this looks at the served weights: the engine
and the trainer score one probe (a training prompt and the first tokens of a completion the policy sampled,
:func:`~tina.rollout.agreement.choose_probe`), and the engine's log-probs must be clearly closer to the trainer's under
the adapter version it was handed than to those under the previous version judged, or under the base model, whenever
those differ by more than the numerical noise (:func:`~tina.rollout.agreement.probe_verdict`); else the run stops in
one line on every process.

The probe is chosen once, from the main process's first rollout, and kept in checkpoints with the last version's
log-probs, so a resumed run checks and logs as an uninterrupted one.  Cost per check: one forward of ~100 tokens on
each side, in eval mode without gradients (no random number is drawn; training is unchanged).  On for engines that
hold their own weights (adapters handed over through a folder: vllm, rollout workers) when ``rollout.check_engine``.
"""

from __future__ import annotations

import torch

from tina.errors import TinaError


class ContentCheck:
    """The probe, the trainer's log-probs of it (base, last version judged) and the step's metrics; one per run."""

    def __init__(self, model, ledger, dist, *, tolerance: float | None = None):
        self.model, self.ledger, self.dist, self.tolerance = model, ledger, dist, tolerance
        self.on = False  # set when the engine is attached
        self.engine = None
        self.probe: tuple[list[int], list[int]] | None = None  # (prompt, completion) token ids
        self.base: torch.Tensor | None = None  # [1, T] the trainer's probe log-probs under the base (scored once)
        self.previous: tuple[int, torch.Tensor] | None = None  # (version, [1, T]) the last version judged
        self.metrics: dict = {}

    def choose(self, rollout) -> None:
        """The probe, from this rollout, when none is chosen yet (the main process's: every process uses the same)."""
        from tina.rollout.agreement import choose_probe

        if self.probe is None:
            self.probe = self.dist.all_gather_object(choose_probe(rollout))[0]

    def check(self, version: int, rollout) -> None:
        """The synchronous check, right after the engine generated ``rollout`` with adapter v``version`` (inside the
        rollout's gathered block: FSDP needs the full weights)."""
        if not self.on:
            return
        self.choose(rollout)
        current = self.trainer()  # [1, T]
        with self.ledger.phase("logprob"):
            served = self.engine.score([self.probe[0]], [self.probe[1]]).float()  # [1, T]
        self.judge(version, served, current)

    def trainer(self) -> torch.Tensor:
        """[1, T] the trainer's log-probs of the probe under the adapter as it is now."""
        from tina.rollout.agreement import score_with_model

        prompts, completions = [self.probe[0]], [self.probe[1]]
        with self.ledger.phase("logprob"):
            if self.base is None:  # the base never changes: scored once
                self.base = score_with_model(self.model, prompts, completions, base=True)  # [1, T]
            return score_with_model(self.model, prompts, completions)  # [1, T]

    def judge(self, version: int, served: torch.Tensor, current: torch.Tensor) -> None:
        """The verdict for adapter v``version``: the engine's probe log-probs (``served``) against the trainer's under
        that version (``current``), the previous version judged and the base.  Versions are judged in increasing
        order (a worker's rollouts generated ahead are judged when they are trained on)."""
        from tina.rollout.agreement import probe_noise, probe_verdict

        previous = self.previous if self.previous is not None and self.previous[0] != version else None
        noise = self.tolerance or probe_noise(next(self.model.parameters()).dtype)
        metrics, problem = probe_verdict(
            served,
            current,
            torch.ones_like(current),
            noise=noise,
            version=version,
            previous=None if previous is None else previous[1],
            previous_version=None if previous is None else previous[0],
            base=self.base,
            engine=self.engine.name,
        )
        if self.dist.broadcast_flag(problem is not None):  # every process stops at once
            raise TinaError(
                problem
                or f"adapter v{version}: another process's {self.engine.name} engine does not "
                "serve the trainer's adapter (see its error); the run stops here"
            )
        self.previous, self.metrics = (version, current), metrics

    def pop_metrics(self) -> dict:
        """This step's metrics (none at steps without a check), averaged over the processes."""
        metrics, self.metrics = self.metrics, {}
        keys = sorted(metrics)
        flat = self.dist.sum([x for k in keys for x in ((metrics[k] or 0.0), float(metrics[k] is not None))])
        return {k: flat[2 * i] / flat[2 * i + 1] if flat[2 * i + 1] else None for i, k in enumerate(keys)}

    def state(self) -> dict | None:
        """For a checkpoint: the probe and the last version judged (None before the probe is chosen)."""
        if self.probe is None:
            return None
        previous = None if self.previous is None else list(self.previous)
        return {"prompt": self.probe[0], "completion": self.probe[1], "previous": previous}

    def load_state(self, state: dict | None) -> None:
        if not state:
            return
        self.probe = (list(state["prompt"]), list(state["completion"]))
        previous = state["previous"]
        self.previous = None if previous is None else (int(previous[0]), previous[1])
