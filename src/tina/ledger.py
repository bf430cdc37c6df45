"""Cost ledger: wall seconds per phase, tokens, device-hours and dollars, written as RUN/ledger.json.

Phases are timed with ``with ledger.phase("generation"): ...``.  Whatever is not inside a named phase is booked as
``other`` when the ledger is written, so the phases always add up to the wall time.  Dollars are
``device_hours * usd_per_device_hour`` where ``device_hours = num_devices * wall_hours``.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

PHASES = ("setup", "generation", "reward", "logprob", "backward", "checkpoint", "evaluation")


class Ledger:
    def __init__(self, *, num_devices: int = 1, usd_per_device_hour: float = 0.0, device_name: str = "cpu",
                 prior: dict | None = None):
        self.num_devices = num_devices
        self.usd_per_device_hour = usd_per_device_hour
        self.device_name = device_name
        prior = prior or {}
        self.seconds = {p: float(prior.get("phases", {}).get(p, 0.0)) for p in PHASES}
        self.tokens_generated = int(prior.get("tokens_generated", 0))
        self.tokens_trained = int(prior.get("tokens_trained", 0))
        self._prior_wall = float(prior.get("wall_seconds", 0.0))
        self._prior_other = float(prior.get("phases", {}).get("other", 0.0))
        self._start = time.perf_counter()
        self._prior_named = sum(self.seconds.values())

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    @property
    def wall_seconds(self) -> float:
        return self._prior_wall + time.perf_counter() - self._start

    @property
    def device_hours(self) -> float:
        return self.num_devices * self.wall_seconds / 3600

    @property
    def usd(self) -> float:
        return self.device_hours * self.usd_per_device_hour

    def to_dict(self) -> dict:
        wall = self.wall_seconds
        named_now = sum(self.seconds.values())
        session_other = (time.perf_counter() - self._start) - (named_now - self._prior_named)
        phases = {k: round(v, 4) for k, v in self.seconds.items()}
        phases["other"] = round(self._prior_other + max(0.0, session_other), 4)
        gen = self.seconds["generation"]
        trained = self.seconds["logprob"] + self.seconds["backward"]
        return {
            "wall_seconds": round(wall, 4),
            "phases": phases,
            "tokens_generated": self.tokens_generated,
            "tokens_trained": self.tokens_trained,
            "generation_tokens_per_second": round(self.tokens_generated / gen, 2) if gen else None,
            "train_tokens_per_second": round(self.tokens_trained / trained, 2) if trained else None,
            "device_name": self.device_name,
            "num_devices": self.num_devices,
            "device_hours": round(self.device_hours, 6),
            "usd_per_device_hour": self.usd_per_device_hour,
            "usd": round(self.usd, 6),
        }

    def write(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
