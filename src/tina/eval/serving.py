"""Serving the models of an evaluation: the base loaded ONCE, every checkpoint's adapter applied without a lossy merge.

``hf``: the transformers model, adapters swapped in place (PEFT ``load_adapter`` / ``set_adapter`` / ``delete_adapter``)
and decoded by :class:`tina.rollout.HFEngine`.  ``--merge-adapters`` folds each adapter into the weights instead
(plain-model speed), only in float32 and only after checking, on a probe batch, that the merged model's logits equal
the unmerged ones: with Tina's learning rate a LoRA update is at or below bfloat16's spacing for typical weights, so a
bf16 merge would evaluate rounding noise instead of the checkpoint.

``vllm``: one vLLM engine; the base is served without an adapter and every checkpoint as its own ``LoRARequest``
(a fresh name and id each; its folder checked against the digest of its tensors).

Before anything is loaded, every adapter is checked against the base's architecture (module names and tensor
shapes), so a checkpoint of another model is a one-line error, not a crash halfway through.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from tina.errors import TinaError, did_you_mean


def check_adapters_fit(model_path: str, adapters: list, *, trust_remote_code: bool = False) -> None:
    """Every adapter's LoRA tensors must fit a module of the base (shapes from config.json; nothing is loaded)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    if not adapters:
        return
    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return  # the model load reports it in one line
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    modules = dict(skeleton.named_modules())
    for cand in adapters:
        weights = Path(cand.adapter) / "adapter_model.safetensors"
        if not weights.is_file():
            continue  # adapter_candidates already requires a weights file; .bin adapters are checked by PEFT
        try:
            with safe_open(str(weights), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
            raise TinaError(
                f"cannot load adapter {cand.adapter}: {str(exc).splitlines()[0][:200]} (a damaged or "
                "incomplete adapter file)"
            ) from None
        for key, shape in shapes.items():
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            name = key.removeprefix("base_model.model.").split(".lora_")[0]
            module = modules.get(name)
            if module is None or not hasattr(module, "in_features"):
                raise TinaError(
                    f"adapter {cand.adapter} does not fit {model_path}: it adapts '{name}', which this "
                    "model does not have (trained on another base model?); pass the right --model"
                )
            expected = module.in_features if ".lora_A." in key else module.out_features
            got = shape[1] if ".lora_A." in key else shape[0]
            if got != expected:
                raise TinaError(
                    f"adapter {cand.adapter} does not fit {model_path}: '{name}' has "
                    f"{'in' if '.lora_A.' in key else 'out'} size {expected} here but {got} in the adapter "
                    "(trained on another base model?); pass the right --model"
                )


def check_adapters_base(adapters: list, model_name: str, dtype: str | None, digest: str | None, *, warn) -> None:
    """A checkpoint records its base (name, dtype, weights digest; tina_base.json): evaluating it on another base of
    the same shapes is a one-line error when the digests can be compared (same dtype), else a warning if the names
    differ."""
    for cand in adapters:
        path = Path(cand.adapter) / "tina_base.json"
        if not path.is_file():
            continue
        try:
            recorded = json.loads(path.read_text())
        except ValueError:
            continue
        same_dtype = digest is not None and recorded.get("dtype") == dtype
        if same_dtype and recorded.get("base_weights_sha256") not in (None, digest):
            raise TinaError(
                f"adapter {cand.adapter} was trained on {recorded.get('model')} (weights sha256 "
                f"{recorded['base_weights_sha256'][:12]}), but --model {model_name} has other weights "
                f"({digest[:12]}); pass --model {recorded.get('model')}"
            )
        if not same_dtype and recorded.get("model") not in (None, model_name):
            warn(
                f"warning: adapter {cand.adapter} was trained on {recorded.get('model')}, evaluated on {model_name} "
                "(its weights could not be compared: another dtype or engine)"
            )


def adapter_rank(adapters: list) -> int:
    ranks = [1]
    for cand in adapters:
        try:
            ranks.append(int(json.loads((Path(cand.adapter) / "adapter_config.json").read_text()).get("r", 1)))
        except (OSError, ValueError):
            pass
    return max(ranks)


def open_server(opts, model_name: str, adapters: list):
    """The server of ``opts.backend``: the base model once, and ``serve(cand)`` for each candidate."""
    from tina.models import resolve_model_path

    path = resolve_model_path(model_name)
    check_adapters_fit(path, adapters)
    return server_class(opts.backend)(opts, model_name, path, adapters)


def server_class(backend: str) -> type:
    """The server class of ``--backend`` (one line naming the choices when there is none)."""
    if backend not in SERVERS:
        hint = did_you_mean(backend, list(SERVERS))
        raise TinaError(f"--backend: unknown engine '{backend}'{hint}; choose {' or '.join(SERVERS)}")
    return SERVERS[backend]


class HFServer:
    """The live transformers model: adapters swapped on it (PEFT, or merged in place and restored exactly)."""

    backend = "hf"
    streams = (  # where each completion's randomness comes from (the evaluation protocol records it)
        "batch-invariant: completion j of problem i under seed s draws from row_seed(0, "
        "row_seed(benchmark_seed(s, benchmark), i), j) (tina.rollout.sampling, "
        "tina.eval.protocol.stream_key), the same for every model, batch size and process count, and after "
        "a resume"
    )
    context_tokens = None  # prompt + completion tokens served: no hard limit

    @staticmethod
    def check_options(opts) -> None:
        """The options this server cannot run, before anything is read or written: every option runs here."""

    def __init__(self, opts, model_name: str, path, adapters: list):
        from tina.eval.swap import AdapterSwitcher
        from tina.models import load_model_and_tokenizer

        self.opts, self.path = opts, path
        model, self.tokenizer = load_model_and_tokenizer(
            model_name, dtype=opts.dtype, device=opts.device, attn_implementation=opts.attn_implementation
        )
        if opts.merge_adapters and next(model.parameters()).dtype != torch.float32:
            raise TinaError(
                f"--merge-adapters merges into {str(next(model.parameters()).dtype)[6:]} weights, "
                "which loses a low-learning-rate LoRA update to rounding; evaluate unmerged (the "
                "default) or pass --dtype float32"
            )
        self.model = model
        self.switcher = AdapterSwitcher(model, merge=opts.merge_adapters)
        self.engine_version = None

    @property
    def eos_ids(self) -> list[int]:
        """The ids that end a completion: the only thing taken from the model folder's generation_config."""
        from tina.rollout.base import eos_token_ids

        return eos_token_ids(self.model, self.tokenizer)

    @property
    def engine_name(self) -> str:
        import transformers

        return f"hf (transformers {transformers.__version__}, tina decode loop)"

    @contextmanager
    def serve(self, cand):
        """Within the block, an engine that generates with exactly ``cand`` (the base, or base + its adapter)."""
        from tina.rollout import HFEngine

        with self.switcher.use(cand.adapter) as model:
            # unmerged, as every checkpoint is evaluated (--merge-adapters merges, checked, before this)
            yield HFEngine(model, self.tokenizer, max_batch_rows=self.opts.batch_size, merge=False)


class VLLMServer:
    """One vLLM engine: the base loaded once, every checkpoint a LoRA request (a new version per folder)."""

    backend = "vllm"
    streams = (
        "vLLM's own sampler, one request per completion: completion j of problem i under seed s is seeded "
        "with row_seed(0, row_seed(benchmark_seed(s, benchmark), i), j) & 0x7FFFFFFF (tina.rollout.vllm, "
        "tina.eval.protocol.stream_key), the same for every model, batch size (max_num_seqs) and process "
        "count, and after a resume; not the hf engine's streams"
    )
    model = None  # the weights live in the engine

    @staticmethod
    def check_options(opts) -> None:
        """vLLM installed; --merge-adapters is the hf engine's (vLLM serves every checkpoint as a LoRA request)."""
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            from tina.rollout.engines import VLLM_INSTALL

            raise TinaError(f"--backend vllm needs vLLM, which is not installed: {VLLM_INSTALL}; or use --backend hf")
        if opts.merge_adapters:
            raise TinaError("--merge-adapters is for --backend hf; vLLM serves every checkpoint as a LoRA request")

    def __init__(self, opts, model_name: str, path, adapters: list):
        from tina.models import load_tokenizer
        from tina.rollout.engines import check_backend
        from tina.rollout.vllm import VLLMEngine

        check_backend("vllm", lora_rank=adapter_rank(adapters), model_path=path)
        self.opts, self.path = opts, path
        self.tokenizer = load_tokenizer(path)
        self.engine = VLLMEngine(
            path,
            self.tokenizer,
            dtype=opts.dtype,
            lora_rank=adapter_rank(adapters),
            max_model_len=opts.max_model_len,
            gpu_memory_utilization=opts.gpu_memory_utilization,
            sleep=False,
            seed=0,
            max_num_seqs=opts.batch_size,
        )
        self._versions: dict[str, object] = {}

    @property
    def context_tokens(self) -> int | None:
        """Prompt + completion tokens the engine serves (vLLM's max_model_len)."""
        config = getattr(self.engine.llm, "model_config", None)
        return getattr(config, "max_model_len", None)

    @property
    def eos_ids(self) -> list[int]:
        return list(self.engine.eos_ids)

    @property
    def engine_name(self) -> str:
        return f"vllm ({self.engine.version})"

    @contextmanager
    def serve(self, cand):
        """Within the block, the engine serving exactly ``cand`` (the base, or base + its adapter)."""
        from tina.rollout import AdapterVersion
        from tina.rollout.adapters import folder_digest

        if cand.adapter is None:
            self.engine.load_adapter(None)
        else:
            key = str(cand.adapter)
            if key not in self._versions:
                self._versions[key] = AdapterVersion(
                    len(self._versions) + 1, folder_digest(cand.adapter), str(cand.adapter)
                )
            self.engine.load_adapter(self._versions[key])
        yield self.engine


SERVERS = {"hf": HFServer, "vllm": VLLMServer}
