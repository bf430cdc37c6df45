"""tina: tiny reasoning models via LoRA-GRPO."""

__version__ = "0.1.0"
