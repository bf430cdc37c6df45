"""Run ``tina`` under accelerate's FSDP2 or DeepSpeed path on CPU processes (gloo), for the tests.

accelerate turns FSDP and DeepSpeed on only for accelerator devices (CUDA, XPU, ...), while torch's FSDP2
(``fully_shard``) and DeepSpeed's CPU accelerator (``DS_ACCELERATOR=cpu``) both run on CPU with gloo.  This launcher
lets the same accelerate code path -- the plugin built from the shipped config, ``accelerator.prepare`` sharding the
model or building the DeepSpeed engine -- run on a CPU-only machine, by marking the CPU process group as FSDP or
DeepSpeed once accelerate has built it.  Nothing in ``tina`` is patched.

    python -m accelerate.commands.launch --config_file src/tina/accelerate_configs/fsdp.yaml --num_processes 2 \
        --mixed_precision no tests/accelerate_on_cpu.py train demo -o RUN ...
"""

import os
import sys

from accelerate import state
from accelerate.utils import DistributedType

_accelerator_state_init = state.AcceleratorState.__init__


def _mark(self, kind: DistributedType) -> None:
    self.distributed_type = kind
    state.PartialState._shared_state["distributed_type"] = kind  # copied back into this state on every init


def _init(self, *args, fsdp_plugin=None, deepspeed_plugin=None, **kwargs):
    _accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, deepspeed_plugin=deepspeed_plugin, **kwargs)
    if self.distributed_type != DistributedType.MULTI_CPU:
        return
    if fsdp_plugin is not None:
        _mark(self, DistributedType.FSDP)
        self.fsdp_plugin = fsdp_plugin
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
    elif deepspeed_plugin is not None:  # what AcceleratorState does for DeepSpeed on a GPU
        _mark(self, DistributedType.DEEPSPEED)
        deepspeed_plugin.set_mixed_precision(self._mixed_precision)
        deepspeed_plugin.select(_from_accelerator_state=True)
        self.deepspeed_plugins = deepspeed_plugin
        self._mixed_precision = "no"  # DeepSpeed handles precision itself


state.AcceleratorState.__init__ = _init


def _inject_nan(spec: str) -> None:
    """TINA_TEST_NAN_AT="STEP:MICRO" (1-based): the loss of that micro-batch of that optimizer step is NaN (for the
    skipped-step tests; counts loss calls, so use it without train.max_tokens_per_pass)."""
    import tina.train

    step, micro = (int(x) for x in spec.split(":"))
    calls = {"n": 0}

    def wrap(fn):
        def loss(*args, **kwargs):
            out = fn(*args, **kwargs)
            ga = int(os.environ["TINA_TEST_GA"])
            n = calls["n"]
            calls["n"] += 1
            if n // ga + 1 == step and n % ga + 1 == micro:
                out.loss = out.loss * float("nan")
            return out

        return loss

    for name, fn in list(tina.train.LOSSES.items()):
        tina.train.LOSSES[name] = wrap(fn)


if os.environ.get("TINA_TEST_NAN_AT"):
    _inject_nan(os.environ["TINA_TEST_NAN_AT"])

if __name__ == "__main__":
    from tina.cli import main

    sys.exit(main(sys.argv[1:]))
