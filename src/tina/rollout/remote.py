"""Remote rollout workers: vLLM's own OpenAI-compatible servers (``rollout.servers``), on this node or others.

Start one per rollout node (the command ``tina`` prints in its errors)::

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True python -m vllm.entrypoints.openai.api_server --model MODEL \\
        --enable-lora --max-lora-rank R --generation-config vllm --logprobs-mode processed_logprobs \\
        --host 0.0.0.0 --port 8000

and name them in the recipe (``rollout.servers: [http://node-b:8000]``).  Only adapters travel: the trainer publishes
every version as a PEFT folder under its run directory, which the servers must read at the same path (a shared
filesystem across nodes), checks the folder's digest, and loads it by name through ``/v1/load_lora_adapter``
(``tina-v<version>-<digest>``: a name is never reused for other tensors; versions older than the staleness bound are
unloaded).  Completions come back as token ids with the log-probs of the sampled tokens under the distribution that
was sampled (``processed_logprobs``); every setting that shapes sampling is sent with each request (temperature, top-p,
top-k, no penalties, no minimum length), so a server's generation_config defaults cannot leak in.  Completion j of
the prompt with key k uses the seed ``row_seed(seed, k, j)``, as tina's in-process vLLM engine does.

:class:`RemoteWorkers` has the interface of :class:`tina.rollout.worker.Workers` (the engine protocol plus
``submit`` / ``collect``), so the start-up canary, the content probe and the rollouts generated ahead
(:mod:`tina.ahead`) work unchanged.  Requests run on a thread pool (the servers batch them continuously); a step's
prompts are split between the servers in contiguous shares.  An unreachable server, one without LoRA, a rank above
its maximum or a folder it cannot read is one line naming the server and the fix.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from tina.errors import TinaError
from tina.rollout.base import AdapterVersion, Rollout, Sampling
from tina.rollout.sampling import row_seed
from tina.rollout.worker import Result

REQUEST_TIMEOUT_S = 3600.0


def server_command(model: str, rank: int) -> str:
    """How to start a server tina can use (shown in the errors); a builtin model's folder is tina's to resolve."""
    if model.startswith("builtin:"):
        model = f'"$(python -c \'from tina.models import resolve_model_path as r; print(r("{model}"))\')"'
    return (
        f"VLLM_ALLOW_RUNTIME_LORA_UPDATING=True python -m vllm.entrypoints.openai.api_server --model {model} "
        f"--enable-lora --max-lora-rank {rank} --generation-config vllm --logprobs-mode processed_logprobs"
    )


def call(url: str, path: str, body: dict | None, *, timeout: float = REQUEST_TIMEOUT_S) -> dict:
    """POST ``body`` as JSON (GET without one) to a server; its JSON answer, or one line saying what went wrong."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("error", {}).get("message", detail)
        except (ValueError, AttributeError):
            pass
        raise TinaError(f"{url}{path} answered {exc.code}: {' '.join(str(detail).split())[:300]}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TinaError(f"cannot reach {url} ({reason})") from None
    try:
        return json.loads(text)
    except ValueError:
        return {"text": text}


def check_servers(servers: list[str], *, model: str, lora_rank: int) -> None:
    """Every server answers (one line naming the first that does not, and how to start one), before any loading."""
    for url in servers:
        try:
            call(url.rstrip("/"), "/v1/models", None, timeout=30)
        except TinaError as exc:
            raise TinaError(
                f"rollout.servers: {exc}; start the server first: {server_command(model, lora_rank)}"
            ) from None


class RemoteWorkers:
    """vLLM servers behind the engine protocol, plus ``submit`` / ``collect``; see the module docstring."""

    name = "vllm"

    def __init__(
        self, servers: list[str], tokenizer, eos_ids: list[int], *, model: str, lora_rank: int, keep: int, rank: int = 0
    ):
        self.urls = [u.rstrip("/") for u in servers]
        self.tokenizer, self.eos_ids = tokenizer, list(eos_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.model, self.lora_rank, self.keep, self.rank = model, lora_rank, keep, rank
        self.adapter: AdapterVersion | None = None
        self.base_names: list[str] = []
        self.versions: list[str] = []
        self.infos: list[dict] = []
        self._loaded: list[list[str]] = [[] for _ in self.urls]  # adapter names loaded on each server, oldest first
        self._lock = threading.Lock()
        self._requests = ThreadPoolExecutor(max_workers=32 * len(self.urls), thread_name_prefix="tina-remote")
        # tickets in order, one at a time (as a local worker): a ticket's probe never shares a batch with another's
        # sampling (see _generate)
        self._tickets = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tina-remote-ticket")
        self._pending: dict[int, tuple[Future, str]] = {}  # ticket -> (its work, what it is doing)
        self._next = 0
        for url in self.urls:
            self._connect(url)

    # ------------------------------------------------------------------------------------------- lifecycle
    def _connect(self, url: str) -> None:
        """The server answers and serves a model; its name is the base model's (no adapter)."""
        try:
            models = call(url, "/v1/models", None, timeout=30)
            version = call(url, "/version", None, timeout=30).get("version", "?")
        except TinaError as exc:
            raise TinaError(
                f"rollout.servers: {exc}; start the server first: {server_command(self.model, self.lora_rank)}"
            ) from None
        data = models.get("data") or []
        if not data:
            raise TinaError(f"rollout.servers: {url} serves no model")
        base = next((m for m in data if m.get("parent") is None), data[0])
        self.base_names.append(base["id"])
        self.versions.append(version)
        self.infos.append({"server": url, "model": base["id"], "engine": f"vllm {version}"})

    def close(self) -> None:
        for url, names in zip(self.urls, self._loaded, strict=True):
            for name in names:
                try:
                    call(url, "/v1/unload_lora_adapter", {"lora_name": name}, timeout=10)
                except TinaError:
                    pass
            names.clear()
        self._tickets.shutdown(wait=False, cancel_futures=True)
        self._requests.shutdown(wait=False, cancel_futures=True)

    def info(self) -> dict:
        return {
            "engine": f"vllm {self.versions[0]} (remote)" if self.versions else "vllm (remote)",
            "memory": f"{len(self.urls)} vLLM server(s): {', '.join(self.urls)}",
            "workers": self.infos,
        }

    def base_digests(self) -> set[str]:
        return set()  # a server does not say which weights it holds: the start-up canary compares them by content

    # ------------------------------------------------------------------------------------------- adapters
    def _name(self, server: int, adapter: AdapterVersion | None) -> str:
        """The model name that serves ``adapter`` on a server (loading it there first)."""
        if adapter is None:
            return self.base_names[server]
        name = f"tina-r{self.rank}-v{adapter.version}-{adapter.digest[:12]}"  # each training process its own
        with self._lock:
            loaded = self._loaded[server]
            if name in loaded:
                return name
            url = self.urls[server]
            try:
                call(url, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": adapter.path}, timeout=600)
            except TinaError as exc:
                raise TinaError(
                    f"rollout.servers: {url} cannot load adapter v{adapter.version} from {adapter.path}: {exc} "
                    f"(the server needs --enable-lora --max-lora-rank >= {self.lora_rank}, "
                    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and the run directory at the same path)"
                ) from None
            loaded.append(name)
            while len(loaded) > self.keep:
                old = loaded.pop(0)
                try:
                    call(url, "/v1/unload_lora_adapter", {"lora_name": old}, timeout=60)
                except TinaError:
                    pass
        return name

    def load_adapter(self, adapter: AdapterVersion | None) -> None:
        """Serve ``adapter`` from the next request on; its folder must hold the version's tensors."""
        if adapter is not None:
            from tina.rollout.adapters import folder_digest

            if adapter.path is None:
                raise TinaError("remote rollout servers read adapters from disk: publish them to a folder")
            found = folder_digest(adapter.path)
            if found != adapter.digest:
                raise TinaError(
                    f"the adapter folder {adapter.path} does not hold adapter v{adapter.version} (digest "
                    f"{found[:12]} != {adapter.digest[:12]}): a stale or foreign adapter would be served"
                )
        self.adapter = adapter

    # ---------------------------------------------------------------------------------------------- work
    def _complete(self, server: int, name: str, prompt: list[int], sampling: Sampling, seed: int | None) -> dict:
        greedy = sampling.greedy
        body = {
            "model": name,
            "prompt": list(prompt),
            "max_tokens": sampling.max_new_tokens,
            "n": 1,
            "temperature": 0.0 if greedy else sampling.temperature,
            "top_p": 1.0 if greedy else sampling.top_p,
            "top_k": 0 if greedy else sampling.top_k,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "frequency_penalty": 0.0,
            "presence_penalty": 0.0,
            "min_tokens": 0,
            "logprobs": 0,
            "stop_token_ids": self.eos_ids,
            "skip_special_tokens": True,
            "return_tokens_as_token_ids": True,
        }
        if seed is not None:
            body["seed"] = seed & 0x7FFFFFFF
        return call(self.urls[server], "/v1/completions", body)["choices"][0]

    def _generate(self, prompts, sampling: Sampling, keys, adapter, probe):
        """(the rollout, the probe's scores): one request per completion, spread over the servers."""
        n, shares = sampling.n, len(self.urls)
        bounds = [len(prompts) * i // shares for i in range(shares + 1)]
        # the probe first, alone: vLLM 0.32's CPU LoRA kernels fail on a batch that mixes prompt log-probs with
        # sampling (punica_cpu.add_lora_logits: "einsum(): subscript b has size 28 ... size 94")
        scores = self._score(0, adapter, [probe[0]], [probe[1]]) if probe is not None else None
        jobs = []
        for s in range(shares):
            name = self._name(s, adapter) if bounds[s] < bounds[s + 1] else None
            for i in range(bounds[s], bounds[s + 1]):
                for j in range(n):
                    seed = None if sampling.greedy or sampling.seed is None else row_seed(sampling.seed, keys[i], j)
                    jobs.append(self._requests.submit(self._complete, s, name, prompts[i], sampling, seed))
        choices = [job.result() for job in jobs]
        return (self._rollout(prompts, choices, n, adapter) if prompts else None), scores

    def _rollout(self, prompts, choices: list[dict], n: int, adapter) -> Rollout:
        return Rollout.from_rows(
            prompts,
            [[int(t.removeprefix("token_id:")) for t in c["logprobs"]["tokens"]] for c in choices],
            [c["logprobs"]["token_logprobs"] for c in choices],
            [c.get("finish_reason") == "length" for c in choices],
            n,
            tokenizer=self.tokenizer,
            pad_id=self.pad_id,
            adapter=adapter,
            engine=self.name,
        )

    def _score(self, server: int, adapter, prompts, completions) -> torch.Tensor:
        """[N, T] temperature-1 log-probs of the completions (the server's prompt log-probs, raw logits)."""
        if any(not p for p in prompts):
            raise ValueError("score needs a non-empty prompt for every row (the first token has no log-prob)")
        name = self._name(server, adapter)

        def one(prompt, completion):
            body = {"model": name, "prompt": list(prompt) + list(completion), "max_tokens": 1, "temperature": 0.0}
            body["prompt_logprobs"] = 0
            steps = call(self.urls[server], "/v1/completions", body)["choices"][0]["prompt_logprobs"]
            return [float(steps[len(prompt) + i][str(t)]["logprob"]) for i, t in enumerate(completion)]

        rows = list(self._requests.map(one, prompts, completions))
        out = torch.zeros((len(rows), max((len(c) for c in completions), default=0)))  # [N, T]
        for r, row in enumerate(rows):
            out[r, : len(row)] = torch.tensor(row)
        return out

    # --------------------------------------------------------------------------------------------- queue
    def submit(self, prompts, sampling: Sampling, keys=None, *, adapter=None, probe=None, what="generating") -> int:
        adapter = self.adapter if adapter is None else adapter
        keys = list(range(len(prompts))) if keys is None else list(keys)
        ticket, self._next = self._next, self._next + 1

        def work():
            start = time.perf_counter()
            rollout, scores = self._generate(prompts, sampling, keys, adapter, probe)
            return rollout, scores, time.perf_counter() - start

        self._pending[ticket] = (self._tickets.submit(work), what)
        return ticket

    def collect(self, ticket: int) -> Result:
        start = time.perf_counter()
        future, what = self._pending.pop(ticket)
        try:
            rollout, scores, seconds = future.result()
        except TinaError as exc:  # a server's own error names it already; a lost connection gets what was going on
            text = str(exc)
            raise TinaError(text if text.startswith("rollout.servers:") else f"{text} while {what}") from None
        return Result(rollout, scores, seconds, time.perf_counter() - start)

    def pending(self) -> list[int]:
        return sorted(self._pending)

    # ----------------------------------------------------------------------------------- the engine protocol
    def generate(self, prompts, sampling: Sampling, keys=None) -> Rollout:
        return self.collect(self.submit(prompts, sampling, keys)).rollout

    def generate_each(self, prompts, sampling: Sampling, keys=None):
        rollout = self.generate(prompts, sampling, keys)
        for i in range(len(prompts)):
            yield i, rollout.rows(i * sampling.n, (i + 1) * sampling.n)

    def score(self, prompts, completions) -> torch.Tensor:
        return self._score(0, self.adapter, prompts, completions)

    def awake(self):
        from contextlib import nullcontext

        return nullcontext()
