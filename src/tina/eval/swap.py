"""Serving one base model as itself and as each adapter in turn: `AdapterSwitcher` (merged in place with the base
restored exactly after, or PEFT's set_adapter), checked against the unmerged model."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path

from tina.errors import TinaError
from tina.eval.candidates import adapter_errors

MERGE_TOLERANCE = 1e-4  # merged vs unmerged: max |logit difference| / max |logit| on a probe batch
MERGE_SIGNAL_FRACTION = 0.5  # ... and at most half the adapter's own effect (adapter vs base) on them: a merge
#                              that lost the update (rounding) must not pass because the update itself is small


class AdapterSwitcher:
    """One base model in memory; adapters come and go in place -- the base is never reloaded.

    ``with switcher.use(path_or_None) as model:`` gives the model with exactly that adapter applied (None: the base).
    Two ways, the same results up to floating-point rounding:

    * ``merge=False``: PEFT ``load_adapter`` / ``set_adapter`` / ``delete_adapter`` (the previous adapter is deleted
      only once the new one is active); the base through PEFT's ``disable_adapter``.  The forward pass is the one
      training used, LoRA matmuls included.
    * ``merge=True``: the adapter is folded into the weights (PEFT ``merge_and_unload``), as Tina evaluated merged
      checkpoints; before the next adapter (or the base) the weights are restored bit for bit from a CPU copy taken
      at the first merge.  Generation runs at plain-model speed, for one CPU copy of the parameters.
    """

    def __init__(self, base, *, merge: bool = False):
        self.base = base
        self.merge = merge
        self.model = base  # unmerged: becomes a PeftModel with the first adapter
        self.active: str | None = None
        self.loaded_from: Path | None = None
        self._count = 0
        self._pristine: dict | None = None  # merged: name -> CPU copy of every base parameter

    @contextmanager
    def use(self, adapter: Path | None):
        adapter = Path(adapter) if adapter is not None else None
        if self.merge:
            if adapter != self.loaded_from:
                self._merge_in(adapter)
            yield self.base
            return
        if adapter is None:
            context = self.model.disable_adapter() if self.model is not self.base else nullcontext()
            with context:
                yield self.model
            return
        if self.loaded_from != adapter:
            self._swap(adapter)
        yield self.model

    def _swap(self, adapter: Path) -> None:
        name = f"adapter{self._count}"
        self._count += 1
        with adapter_errors(adapter):
            if self.model is self.base:
                from peft import PeftModel

                self.model = PeftModel.from_pretrained(
                    self.base, str(adapter), adapter_name=name, low_cpu_mem_usage=True
                )
            else:
                self.model.load_adapter(str(adapter), adapter_name=name, low_cpu_mem_usage=True)
        if self.active is not None:
            self.model.set_adapter(name)
            self.model.delete_adapter(self.active)
        self.model.eval()
        self.active, self.loaded_from = name, adapter

    def _merge_in(self, adapter: Path | None) -> None:
        import torch
        from peft import PeftModel

        if self._pristine is None:
            self._pristine = {n: p.detach().to("cpu", copy=True) for n, p in self.base.named_parameters()}
        elif self.loaded_from is not None:
            with torch.no_grad():
                for n, p in self.base.named_parameters():
                    p.copy_(self._pristine[n])
        self.loaded_from = None
        if adapter is not None:
            probe = torch.tensor([[5, 17, 42, 99, 7, 3, 11, 64]], device=next(self.base.parameters()).device)
            probe = probe.clamp(max=self.base.config.vocab_size - 1)
            with adapter_errors(adapter):
                wrapped = PeftModel.from_pretrained(self.base, str(adapter), low_cpu_mem_usage=True).eval()
                with torch.no_grad():
                    reference = wrapped(input_ids=probe).logits.float()  # base + adapter, unmerged
                    with wrapped.disable_adapter():
                        plain = wrapped(input_ids=probe).logits.float()  # the base alone
                merged = wrapped.merge_and_unload()
            if merged is not self.base:  # PEFT returns the wrapped model itself; anything else would be a copy
                raise RuntimeError(
                    "PEFT merge_and_unload returned a new model; merged adapter switching needs it "
                    "in place (use merge=False)"
                )
            self.base.eval()
            self.loaded_from = adapter
            with torch.no_grad():
                scale = reference.abs().max().clamp(min=1e-6)
                error = float((self.base(input_ids=probe).logits.float() - reference).abs().max() / scale)
                effect = float((reference - plain).abs().max() / scale)
            if error > MERGE_TOLERANCE:
                raise TinaError(
                    f"merging {adapter} changes the model's logits by {error:.2e} (relative, on a probe "
                    f"batch), above {MERGE_TOLERANCE:g}; evaluate it unmerged (drop --merge-adapters)"
                )
            # an update smaller than the merge's rounding would pass the check above even if the merge dropped it
            if error > MERGE_SIGNAL_FRACTION * effect:
                raise TinaError(
                    f"merging {adapter} changes the model's logits by {error:.2e} (relative, on a probe "
                    f"batch), more than {MERGE_SIGNAL_FRACTION:g} x the adapter's own effect on them "
                    f"({effect:.2e}): the update is too small to survive merging; evaluate it unmerged "
                    "(drop --merge-adapters)"
                )
