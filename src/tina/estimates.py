"""What a recipe will cost before it runs: an *estimate*, printed by ``tina recipes`` and ``tina check``.

The estimate is plain arithmetic on the recipe's ``cost`` section::

    hours = steps_run * cost.seconds_per_step / 3600               # wall-clock
    usd   = hours * cost.num_devices * cost.usd_per_device_hour

``steps_run`` is ``train.stop_step`` when set (Tina stops at about half of the schedule), else ``train.max_steps``.
``cost.seconds_per_step`` is a guess the recipe writes down (with ``cost.estimate_note`` saying where it comes from);
the bundled Tina recipes use 30 s per step on 2x L40S, derived from the paper's Table 1 (the five main runs cost
$213 of training for 13,350 steps at $1 per GPU-hour on 2 GPUs: 213 / 2 * 3600 / 13350 = 28.7 s per step; the paper
also says "a single RL step usually completes within one minute").  When the paper published the cost of the run
itself (``cost.reference_usd``), that figure is shown next to the estimate.  A run's ledger measures the real cost.

>>> from tina.config import load_config
>>> cfg = load_config({"train": {"max_steps": 1500, "stop_step": 850, "batch_size": 8},
...                    "rollout": {"num_generations": 4},
...                    "cost": {"num_devices": 2, "usd_per_device_hour": 1.0, "seconds_per_step": 30}})
>>> est = estimate_cost(cfg)
>>> round(est.hours, 2), round(est.usd, 2)
(7.08, 14.17)
>>> cost_cell(est)
'~$14'
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CostEstimate:
    steps: int  # optimizer steps the run will take (stop_step, else max_steps)
    num_devices: int
    device_name: str
    usd_per_device_hour: float
    seconds_per_step: float | None
    hours: float | None  # wall-clock hours (None without seconds_per_step)
    usd: float | None  # estimated training cost (None without seconds_per_step)
    reference_usd: float | None  # published training cost of this run
    note: str | None
    source: str = "guess"  # where seconds_per_step comes from: paper | guess | measured


def estimate_cost(cfg) -> CostEstimate:
    """The estimate for a loaded :class:`tina.config.Config` (pure arithmetic, no I/O)."""
    c = cfg.cost
    steps = cfg.last_step
    hours = usd = None
    if c.seconds_per_step is not None:
        hours = steps * c.seconds_per_step / 3600
        usd = hours * c.num_devices * c.usd_per_device_hour
    return CostEstimate(steps, c.num_devices, c.device_name, c.usd_per_device_hour, c.seconds_per_step, hours, usd,
                        c.reference_usd, c.estimate_note, c.seconds_per_step_source)


def _usd(x: float) -> str:
    """'$14', '$3.50', '$4', '$0.02'."""
    if x >= 10:
        return f"${x:,.0f}"
    if float(x).is_integer():
        return f"${x:.0f}"
    return f"${x:.2f}"


def cost_cell(est: CostEstimate) -> str:
    """Short form for a table column: '~$14' (estimate; '~$14*' when its s/step is the paper's, not measured), '-'
    when the recipe gives no seconds_per_step."""
    if est.usd is None:
        return "-"
    return f"~{_usd(est.usd)}" + ("*" if est.source == "paper" else "")


def paper_cell(est: CostEstimate) -> str:
    return _usd(est.reference_usd) if est.reference_usd is not None else ""


def describe(est: CostEstimate) -> str:
    """One line for `tina check`: the estimate, its arithmetic, and the published figure if any."""
    if est.usd is None:
        text = (f"cost: no estimate (set cost.seconds_per_step); {est.steps} steps on {est.num_devices}x "
                f"{est.device_name} at ${est.usd_per_device_hour:g}/device-hour")
    else:
        origin = {"paper": "the paper's figure for its own setup, NOT measured with tina: measure it with "
                           "`python benchmarks/gpu_step.py` and set cost.seconds_per_step_source=measured",
                  "guess": "a guess, not a measurement",
                  "measured": "s/step measured with tina on this hardware"}[est.source]
        text = (f"cost estimate: ~{_usd(est.usd)} = {est.steps} steps x {est.seconds_per_step:g} s/step "
                f"({est.hours:.1f} h) x {est.num_devices} {est.device_name} x ${est.usd_per_device_hour:g}/h"
                f" ({origin})")
    if est.reference_usd is not None:
        text += f"; published: {_usd(est.reference_usd)}"
    if est.note:
        text += f" [{est.note}]"
    return text
