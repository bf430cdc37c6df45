"""Rollout backends: anything with ``generate(prompts, sampling) -> Rollout`` (a Protocol, not a base class)."""

from tina.rollout.base import Backend, Rollout, Sampling
from tina.rollout.hf import HFBackend

__all__ = ["Backend", "HFBackend", "Rollout", "Sampling"]
