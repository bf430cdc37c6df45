"""A strict fake of the part of vLLM's API that tina calls, for CPU tests of what the CPU build cannot show (sleep mode,
GPU placement).  Signatures mirror vLLM 0.32.0 (``test_vllm_states.py::test_the_fake_matches_the_real_vllm_api``
checks them against the real package wherever vLLM is installed).

Strict means: every call is recorded (``llm.calls``), and a call that touches device memory -- ``add_lora``,
``remove_lora``, ``reset_prefix_cache``, ``generate``, ``add_request``, ``step``, ``abort_request`` -- RAISES
:class:`IllegalWhileAsleep` while the engine sleeps, as would an access to vLLM's unmapped memory pools on a GPU after
``sleep(level=1)``.  So do ``sleep`` while asleep, ``wake_up`` while awake, ``sleep`` without ``enable_sleep_mode``,
unknown engine arguments and unknown sampling parameters.

Completions are deterministic functions of the prompt and the adapter served (``lora_int_id``), so a test can tell
which adapter produced a rollout::

    fake = install(monkeypatch)          # sys.modules["vllm"] and its submodules, for the test's duration
    llm = fake.LLM(model="m", enable_sleep_mode=True)
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

__version__ = "0.32.0+fake"
VOCAB = 50

# Engine arguments tina passes (every one is a real vllm.engine.arg_utils.EngineArgs field; checked by the test)
ENGINE_ARGS = {
    "model",
    "tokenizer",
    "dtype",
    "seed",
    "revision",
    "trust_remote_code",
    "gpu_memory_utilization",
    "enable_lora",
    "max_lora_rank",
    "max_loras",
    "enable_prefix_caching",
    "generation_config",
    "logprobs_mode",
    "max_model_len",
    "max_num_seqs",
    "enable_sleep_mode",
    "distributed_executor_backend",
}
SAMPLING_FIELDS = {
    "n",
    "seed",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "logprobs",
    "prompt_logprobs",
    "stop_token_ids",
    "detokenize",
    "skip_special_tokens",
    "output_kind",
}
DEVICE_CALLS = {"add_lora", "remove_lora", "reset_prefix_cache", "generate", "add_request", "step", "abort_request"}


class IllegalWhileAsleep(Exception):
    """A device-memory call on a sleeping engine (on a GPU: an illegal memory access, or a silently stale adapter).
    Deliberately not a RuntimeError/ValueError: no handler in tina may turn it into something else."""


class RequestOutputKind(Enum):  # vllm.sampling_params.RequestOutputKind
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


class SamplingParams:  # vllm.SamplingParams (a msgspec struct: keyword fields, mutable)
    def __init__(self, **kwargs):
        unknown = set(kwargs) - SAMPLING_FIELDS
        if unknown:
            raise TypeError(f"SamplingParams got unexpected fields {sorted(unknown)}")
        self.n, self.seed, self.temperature, self.top_p, self.top_k = 1, None, 1.0, 1.0, 0
        self.max_tokens, self.logprobs, self.prompt_logprobs, self.stop_token_ids = 16, None, None, None
        self.detokenize, self.skip_special_tokens, self.output_kind = True, True, RequestOutputKind.CUMULATIVE
        for key, value in kwargs.items():
            setattr(self, key, value)


def TokensPrompt(**kwargs) -> dict:  # vllm.inputs.TokensPrompt is a TypedDict
    if set(kwargs) - {"prompt_token_ids", "token_type_ids", "multi_modal_data", "mm_processor_kwargs", "cache_salt"}:
        raise TypeError(f"TokensPrompt got unexpected keys {sorted(kwargs)}")
    return dict(kwargs)


@dataclass
class LoRARequest:  # vllm.lora.request.LoRARequest
    lora_name: str
    lora_int_id: int
    lora_path: str = ""

    def __post_init__(self):
        if self.lora_int_id < 1:
            raise ValueError(f"id must be > 0, got {self.lora_int_id}")
        assert self.lora_path, "lora_path cannot be empty"


@dataclass
class Logprob:  # vllm.logprobs.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:  # vllm.outputs.CompletionOutput
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None


@dataclass
class RequestOutput:  # vllm.outputs.RequestOutput
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    lora_request: LoRARequest | None = None


class ModelRegistry:
    @staticmethod
    def get_supported_archs() -> list[str]:
        return ["Qwen2ForCausalLM", "LlamaForCausalLM"]


def _complete(prompt: list[int], params: SamplingParams, lora: LoRARequest | None, rid: str) -> RequestOutput:
    """A deterministic completion: tokens from the prompt, the adapter id and the seed; a stop id ends it."""
    salt = (lora.lora_int_id if lora else 0) * 7 + (params.seed or 0)
    ids, logprobs = [], []
    for t in range(params.max_tokens):
        token = (sum(prompt) + salt + 3 * t) % VOCAB
        ids.append(token)
        logprobs.append({token: Logprob(-0.5 - 0.01 * t, rank=1)})
        if params.stop_token_ids and token in params.stop_token_ids:
            break
    stopped = bool(params.stop_token_ids) and ids[-1] in params.stop_token_ids
    prompt_logprobs = None
    if params.prompt_logprobs is not None:
        value = -1.0 - 0.1 * (lora.lora_int_id if lora else 0)
        prompt_logprobs = [None] + [{tok: Logprob(value)} for tok in prompt[1:]]
    return RequestOutput(
        rid,
        list(prompt),
        [
            CompletionOutput(
                0, "", ids, None, logprobs if params.logprobs is not None else None, "stop" if stopped else "length"
            )
        ],
        True,
        prompt_logprobs,
        lora,
    )


class LLMEngine:  # vllm.v1.engine.llm_engine.LLMEngine (the methods tina calls)
    def __init__(self, llm: LLM):
        self._llm = llm
        self._queue: list[tuple[str, list[int], SamplingParams, LoRARequest | None]] = []

    def add_lora(self, lora_request: LoRARequest) -> bool:
        self._llm._device("add_lora", lora_request.lora_name)
        self._llm.loras[lora_request.lora_int_id] = lora_request
        return True

    def remove_lora(self, lora_id: int) -> bool:
        self._llm._device("remove_lora", lora_id)
        return self._llm.loras.pop(lora_id, None) is not None

    def add_request(
        self,
        request_id: str,
        prompt,
        params,
        arrival_time=None,
        lora_request=None,
        tokenization_kwargs=None,
        trace_headers=None,
        priority: int = 0,
        session_id=None,
        prompt_text=None,
        kv_hints=None,
    ) -> str:
        self._llm._device("add_request", request_id)
        self._llm._check_served(lora_request)
        self._queue.append((request_id, list(prompt["prompt_token_ids"]), params, lora_request))
        return request_id

    def has_unfinished_requests(self) -> bool:
        return bool(self._queue)

    def step(self) -> list[RequestOutput]:
        self._llm._device("step", len(self._queue))
        rid, prompt, params, lora = self._queue.pop(0)  # one request finishes per step
        self._llm.served.append(lora.lora_name if lora else None)
        return [_complete(prompt, params, lora, rid)]

    def abort_request(self, request_ids: list[str], internal: bool = False) -> None:
        self._llm._device("abort_request", list(request_ids))
        self._queue = [q for q in self._queue if q[0] not in set(request_ids)]

    def is_sleeping(self) -> bool:
        return self._llm.sleeping


@dataclass
class _ModelConfig:
    max_model_len: int = 256


class LLM:  # vllm.LLM
    created: ClassVar[list[LLM]] = []  # every engine built while the fake is installed (install() resets it)

    def __init__(self, model: str, **kwargs):
        unknown = set(kwargs) - ENGINE_ARGS
        if unknown:
            raise TypeError(f"LLM got unexpected engine arguments {sorted(unknown)}")
        self.kwargs = {"model": model, **kwargs}
        self.calls: list[tuple[str, object]] = []
        self.sleeping = False
        self.loras: dict[int, LoRARequest] = {}
        self.served: list[str | None] = []  # the adapter name each completed request was served with
        self.llm_engine = LLMEngine(self)
        self.model_config = _ModelConfig(kwargs.get("max_model_len") or 256)
        LLM.created.append(self)

    # -- the fake's bookkeeping
    def _device(self, name: str, arg=None) -> None:
        self.calls.append((name, arg))
        if self.sleeping:
            raise IllegalWhileAsleep(f"{name} on a sleeping engine (level-1 sleep unmapped its device memory)")

    def _check_served(self, lora_request) -> None:
        if lora_request is not None and lora_request.lora_int_id not in self.loras:
            raise AssertionError(f"adapter {lora_request.lora_name} was never loaded with add_lora")

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    # -- the API
    def sleep(self, level: int = 1, mode: str = "abort") -> None:
        self.calls.append(("sleep", level))
        if not self.kwargs.get("enable_sleep_mode"):
            raise IllegalWhileAsleep("sleep without enable_sleep_mode=True")
        if self.sleeping:
            raise IllegalWhileAsleep("sleep on a sleeping engine")
        self.sleeping = True

    def wake_up(self, tags: list[str] | None = None) -> bool:
        self.calls.append(("wake_up", tags))
        if not self.sleeping:
            raise IllegalWhileAsleep("wake_up on an awake engine")
        self.sleeping = False
        return True

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        self._device("reset_prefix_cache")
        return True

    def generate(
        self,
        prompts,
        sampling_params=None,
        *,
        use_tqdm=True,
        lora_request=None,
        priority=None,
        tokenization_kwargs=None,
        mm_processor_kwargs=None,
    ) -> list[RequestOutput]:
        self._device("generate", len(prompts))
        self._check_served(lora_request)
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        self.served += [lora_request.lora_name if lora_request else None] * len(prompts)
        return [
            _complete(p["prompt_token_ids"], s, lora_request, str(k))
            for k, (p, s) in enumerate(zip(prompts, params, strict=True))
        ]


@dataclass
class Fake:
    """What install() returns: the fake's classes and the engines built since."""

    LLM: type = LLM
    IllegalWhileAsleep: type = IllegalWhileAsleep
    modules: dict = field(default_factory=dict)

    @property
    def engines(self) -> list[LLM]:
        return LLM.created


def install(monkeypatch) -> Fake:
    """Put the fake in sys.modules as ``vllm`` (and the submodules tina imports) for one test."""
    LLM.created = []
    vllm = types.ModuleType("vllm")
    vllm.__version__ = __version__
    vllm.LLM, vllm.SamplingParams, vllm.ModelRegistry = LLM, SamplingParams, ModelRegistry
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.SamplingParams, sampling.RequestOutputKind = SamplingParams, RequestOutputKind
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = TokensPrompt
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    lora.request = request
    vllm.sampling_params, vllm.inputs, vllm.lora = sampling, inputs, lora
    modules = {
        "vllm": vllm,
        "vllm.sampling_params": sampling,
        "vllm.inputs": inputs,
        "vllm.lora": lora,
        "vllm.lora.request": request,
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return Fake(modules=modules)
