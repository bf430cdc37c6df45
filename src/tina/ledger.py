"""Cost ledger: wall seconds per phase, tokens, device-hours and dollars, written as RUN/ledger.json.

Phases are timed with ``with ledger.phase("generation"): ...``.  Whatever is not inside a named phase is booked as
``other`` when the ledger is written, so the phases always add up to the wall time.  Dollars are
``device_hours * usd_per_device_hour`` where ``device_hours = num_devices * wall_hours``.

Training and evaluation are booked separately and summed:

* the training process owns the ``training`` part; a resumed run starts from the previous ``RUN/ledger.json`` (the
  money already spent, including any work a crash threw away) and keeps adding to it;
* ``tina eval --run RUN`` calls :func:`add_eval_cost`, which appends one line to ``RUN/eval_costs.jsonl``.  Every
  ledger write (by the trainer each step, or by ``add_eval_cost``) folds those lines into ``phases.evaluation`` and
  the totals, so a concurrent evaluation and training never overwrite each other's cost.

Worked example: 2 devices at $1.50/device-hour, 30 min of training and 6 min of evaluation on 1 device::

    device_hours = 2 * 0.5 + 1 * 0.1 = 1.1;   usd = 1.1 * 1.50 = 1.65

RUN/ledger.json (times in seconds)::

    {"wall_seconds": 2160.0,
     "phases": {"setup": .., "generation": .., "reward": .., "logprob": .., "backward": .., "checkpoint": ..,
                "evaluation": 360.0, "other": ..},                        # sums to wall_seconds
     "training": {"wall_seconds": 1800.0, "num_devices": 2, "device_hours": 1.0, "usd": 1.5, "sessions": 1},
     "evaluation": {"seconds": 360.0, "device_hours": 0.1, "usd": 0.15, "runs": 1},
     "tokens_generated": .., "tokens_trained": .., "generation_tokens_per_second": .., "train_tokens_per_second": ..,
     "device_name": "L40S", "num_devices": 2, "usd_per_device_hour": 1.5, "device_hours": 1.1, "usd": 1.65}
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from tina.errors import TinaError
from tina.files import atomic_write_text, read_jsonl

PHASES = ("setup", "generation", "reward", "logprob", "backward", "checkpoint", "evaluation")
LEDGER_FILE = "ledger.json"
EVAL_COSTS_FILE = "eval_costs.jsonl"


class Ledger:
    """The training side of the ledger: one per training session, continuing a previous session's totals.

    ``prior`` is a previous ``ledger.json`` (its training part is continued; evaluation lines are re-read from
    ``eval_costs.jsonl`` on every write).  ``started_at`` is a ``time.perf_counter()`` value taken when the process
    started working (before imports and model loading); the time until the ledger exists is booked as ``setup``.
    """

    def __init__(
        self,
        *,
        num_devices: int = 1,
        usd_per_device_hour: float = 0.0,
        device_name: str = "cpu",
        prior: dict | None = None,
        started_at: float | None = None,
    ):
        self.num_devices = num_devices
        self.usd_per_device_hour = usd_per_device_hour
        self.device_name = device_name
        prior = prior or {}
        train_prior = prior.get("training", {})
        phases = prior.get("phases", {})
        external_eval = float(prior.get("evaluation", {}).get("seconds", 0.0))
        self.seconds = {p: float(phases.get(p, 0.0)) for p in PHASES}
        self.seconds["evaluation"] = max(0.0, self.seconds["evaluation"] - external_eval)  # only in-training eval
        self.tokens_generated = int(prior.get("tokens_generated", 0))
        self.tokens_trained = int(prior.get("tokens_trained", 0))
        self.sessions = int(train_prior.get("sessions", 0)) + 1
        self._prior_wall = float(train_prior.get("wall_seconds", prior.get("wall_seconds", 0.0)))
        self._prior_device_hours = float(train_prior.get("device_hours", self._prior_wall * num_devices / 3600))
        self._prior_usd = float(train_prior.get("usd", self._prior_device_hours * usd_per_device_hour))
        self._prior_other = float(phases.get("other", 0.0))
        now = time.perf_counter()
        self._start = now if started_at is None else min(started_at, now)
        self.seconds["setup"] += now - self._start  # imports, config and run-folder checks before the ledger existed
        self._prior_named = sum(self.seconds.values()) - (now - self._start)

    @contextmanager
    def phase(self, name: str):
        if name not in self.seconds:
            raise ValueError(f"unknown ledger phase {name!r}; phases: {', '.join(PHASES)}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    @property
    def session_seconds(self) -> float:
        return time.perf_counter() - self._start

    @property
    def wall_seconds(self) -> float:
        """Training wall time over all sessions of this run."""
        return self._prior_wall + self.session_seconds

    @property
    def device_hours(self) -> float:
        return self._prior_device_hours + self.num_devices * self.session_seconds / 3600

    @property
    def usd(self) -> float:
        """Training dollars so far (what the progress bar and each metrics record show)."""
        return self._prior_usd + self.num_devices * self.session_seconds / 3600 * self.usd_per_device_hour

    def to_dict(self, eval_entries: list[dict] | None = None) -> dict:
        session = self.session_seconds
        named_now = sum(self.seconds.values())
        session_other = session - (named_now - self._prior_named)
        phases = dict(self.seconds)
        phases["other"] = self._prior_other + max(0.0, session_other)
        wall = self._prior_wall + session
        training = {
            "wall_seconds": round(wall, 4),
            "num_devices": self.num_devices,
            "device_hours": round(self.device_hours, 9),
            "usd": round(self.usd, 9),
            "sessions": self.sessions,
        }
        gen = self.seconds["generation"]
        trained = self.seconds["logprob"] + self.seconds["backward"]
        out = {
            "phases": {k: round(v, 4) for k, v in phases.items()},
            "training": training,
            "tokens_generated": self.tokens_generated,
            "tokens_trained": self.tokens_trained,
            "generation_tokens_per_second": round(self.tokens_generated / gen, 2) if gen else None,
            "train_tokens_per_second": round(self.tokens_trained / trained, 2) if trained else None,
            "device_name": self.device_name,
            "num_devices": self.num_devices,
            "usd_per_device_hour": self.usd_per_device_hour,
        }
        return _with_totals(out, eval_entries or [])

    def write(self, run_dir: Path) -> dict:
        """Write RUN/ledger.json (training totals plus every evaluation booked so far); return what was written."""
        data = self.to_dict(read_eval_costs(run_dir))
        atomic_write_text(Path(run_dir) / LEDGER_FILE, json.dumps(data, indent=2))
        return data


def _with_totals(ledger: dict, eval_entries: list[dict]) -> dict:
    """Fold evaluation entries into ``phases.evaluation`` and the totals; key order: totals first."""
    training = ledger.get("training") or _training_part(ledger)
    ev_seconds = sum(float(e["seconds"]) for e in eval_entries)
    ev_hours = sum(float(e["device_hours"]) for e in eval_entries)
    ev_usd = sum(float(e["usd"]) for e in eval_entries)
    phases = {p: float(ledger.get("phases", {}).get(p, 0.0)) for p in (*PHASES, "other")}
    phases["evaluation"] = round(phases["evaluation"] + ev_seconds, 4)
    return {
        "wall_seconds": round(float(training["wall_seconds"]) + ev_seconds, 4),
        "phases": phases,
        "training": training,
        "evaluation": {
            "seconds": round(ev_seconds, 4),
            "device_hours": round(ev_hours, 9),
            "usd": round(ev_usd, 9),
            "runs": len(eval_entries),
        },
        **{
            k: v
            for k, v in ledger.items()
            if k not in ("wall_seconds", "phases", "training", "evaluation", "device_hours", "usd")
        },
        "device_hours": round(float(training["device_hours"]) + ev_hours, 9),
        "usd": round(float(training["usd"]) + ev_usd, 9),
    }


def _training_part(ledger: dict) -> dict:
    """The training totals of a ledger written without a ``training`` section (older format): totals minus eval."""
    ev = ledger.get("evaluation") or {}
    return {
        "wall_seconds": round(float(ledger.get("wall_seconds", 0.0)) - float(ev.get("seconds", 0.0)), 4),
        "num_devices": int(ledger.get("num_devices") or 1),
        "device_hours": round(float(ledger.get("device_hours", 0.0)) - float(ev.get("device_hours", 0.0)), 9),
        "usd": round(float(ledger.get("usd", 0.0)) - float(ev.get("usd", 0.0)), 9),
        "sessions": 1 if ledger.get("wall_seconds") else 0,
    }


# ------------------------------------------------------------------------------------------------------ evaluation
def add_eval_cost(
    run_dir: str | Path,
    seconds: float,
    num_devices: int | None = None,
    *,
    usd_per_device_hour: float | None = None,
    label: str | None = None,
    extra: dict | None = None,
) -> dict | None:
    """Book ``seconds`` of evaluation into a run's ledger; return the updated ledger (None if RUN has no ledger).

    ``num_devices`` defaults to the ledger's own, the price to the ledger's ``usd_per_device_hour``.  The entry is
    appended to ``RUN/eval_costs.jsonl`` and ``RUN/ledger.json`` is rewritten with every entry folded in:
    ``phases.evaluation`` and ``wall_seconds`` grow by ``seconds``, ``device_hours`` by
    ``num_devices * seconds / 3600``, ``usd`` by that times the price, and ``evaluation`` =
    ``{"seconds", "device_hours", "usd", "runs"}``.  A training
    process that is still running folds the entry in too on its next write, so neither overwrites the other.
    ``label`` says what was evaluated (e.g. ``"checkpoint-450: aime24, math_500"``); ``extra`` is recorded in the
    entry as it is (``tina eval`` books one entry per model and benchmark with its tokens, tokens/s and engine).

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> _ = (d / "ledger.json").write_text(json.dumps({"wall_seconds": 3600, "phases": {"evaluation": 0},
    ...     "num_devices": 2, "device_hours": 2.0, "usd_per_device_hour": 1.5, "usd": 3.0}))
    >>> add_eval_cost(d, 1800)["usd"]      # 2 devices x 0.5 h more at $1.5
    4.5
    """
    run_dir = Path(run_dir)
    if seconds < 0 or (num_devices is not None and num_devices < 1):
        raise ValueError(f"add_eval_cost: seconds must be >= 0 and num_devices >= 1, got {seconds}, {num_devices}")
    path = run_dir / LEDGER_FILE
    if not path.is_file():
        return None
    current = _read_json(path)
    if current is None:
        raise TinaError(f"cannot read the cost ledger {path}; it is not valid JSON")
    devices = num_devices if num_devices is not None else int(current.get("num_devices") or 1)
    price = usd_per_device_hour if usd_per_device_hour is not None else current.get("usd_per_device_hour")
    price = float(price if price is not None else _config_price(run_dir))
    device_hours = devices * seconds / 3600
    entry = {
        "seconds": round(float(seconds), 4),
        "num_devices": devices,
        "usd_per_device_hour": price,
        "device_hours": round(device_hours, 9),
        "usd": round(device_hours * price, 9),
        "label": label,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(extra or {}),
    }
    try:
        with open(run_dir / EVAL_COSTS_FILE, "a") as fh:  # one short line per append: safe beside a trainer
            fh.write(json.dumps(entry) + "\n")
        data = _with_totals(current, read_eval_costs(run_dir))
        data.setdefault("usd_per_device_hour", price)
        atomic_write_text(path, json.dumps(data, indent=2))
    except OSError as exc:
        raise TinaError(f"cannot write the cost ledger in {run_dir}: {exc.strerror or exc}") from None
    return data


def adopt_untracked_eval(run_dir: str | Path, ledger: dict | None) -> None:
    """If ``ledger`` books more evaluation than ``eval_costs.jsonl`` holds (a tool that edited ledger.json directly),
    append the difference as one entry, so the next rewrite of ledger.json keeps it."""
    ev = (ledger or {}).get("evaluation") or {}
    entries = read_eval_costs(run_dir)
    missing = float(ev.get("seconds", 0.0)) - sum(float(e["seconds"]) for e in entries)
    if missing <= 1e-3:
        return
    hours = float(ev.get("device_hours", 0.0)) - sum(float(e["device_hours"]) for e in entries)
    usd = float(ev.get("usd", 0.0)) - sum(float(e["usd"]) for e in entries)
    entry = {
        "seconds": round(missing, 4),
        "num_devices": None,
        "usd_per_device_hour": None,
        "device_hours": round(max(0.0, hours), 9),
        "usd": round(max(0.0, usd), 9),
        "label": "booked in ledger.json without an eval_costs.jsonl entry",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with open(Path(run_dir) / EVAL_COSTS_FILE, "a") as fh:
        fh.write(json.dumps(entry) + "\n")


def read_eval_costs(run_dir: str | Path) -> list[dict]:
    """The evaluation entries of a run (a half-written last line, from a crash, is skipped)."""
    entries = read_jsonl(Path(run_dir) / EVAL_COSTS_FILE)
    return [e for e in entries if isinstance(e, dict) and {"seconds", "device_hours", "usd"} <= e.keys()]


def read_ledger(run_dir: str | Path) -> dict | None:
    return _read_json(Path(run_dir) / LEDGER_FILE)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _config_price(run_dir: Path) -> float:
    try:
        import yaml

        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        return float(cfg.get("cost", {}).get("usd_per_device_hour", 0.0))
    except (OSError, ValueError, AttributeError, TypeError):
        return 0.0
