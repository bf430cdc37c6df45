"""Rollout engines: anything with ``load_adapter`` and ``generate(prompt_ids, sampling) -> Rollout`` (a Protocol)."""

from tina.rollout.base import AdapterVersion, Engine, Rollout, Sampling
from tina.rollout.hf import HFEngine

__all__ = ["AdapterVersion", "Engine", "HFEngine", "Rollout", "Sampling"]
