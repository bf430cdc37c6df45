"""Rollout workers: engines in processes of their own, generating while the trainer learns (``rollout.devices``).

Each worker is a spawned process on one device that loads its own copy of the base model and runs the recipe's engine
(``hf``: tina's decode loop over a private PEFT model; ``vllm``: a vLLM engine).  It never receives weights through a
pipe: the trainer publishes every adapter version as a PEFT folder (:class:`tina.rollout.adapters.AdapterHandover`,
a few MB of LoRA tensors), and each request names the version to serve with its digest -- the worker loads the folder,
re-computes the digest and refuses a folder that holds anything else.  Every completion reports the version that
generated it, and the worker scores the content probe under that version before it generates, so the trainer's
checks (:func:`tina.rollout.agreement.check_served`, :mod:`tina.rollout.content`) hold as they do for an engine in the
training process.

:class:`Workers` is an engine (the :class:`~tina.rollout.base.Engine` protocol: start-up canary, probe completions and
evaluation go through it unchanged) and, besides, a queue: ``submit`` returns at once with a ticket and ``collect``
waits for that ticket's rollout.  A step's prompts are split between the workers in contiguous shares; sampling is
keyed per prompt (:mod:`tina.rollout.sampling`), so the completions do not depend on how many workers there are.

A worker ignores SIGINT (the trainer stops gracefully and then closes it), exits when the trainer's process is gone,
and a worker that dies or fails stops the run in one line naming the worker, its device and what it was doing.
"""

from __future__ import annotations

import os
import queue
import signal
import time
from dataclasses import dataclass, field, replace

import torch

from tina.errors import TinaError
from tina.rollout.base import AdapterVersion, Rollout, Sampling

START_TIMEOUT_S = 1800.0  # a worker loads a model (and a vLLM engine compiles): generous, but not forever


@dataclass(frozen=True)
class Request:
    """One piece of work for one worker; the adapter travels as a version handle (folder + digest), never tensors."""

    ticket: int
    kind: str  # "generate" | "score" | "stop"
    adapter: AdapterVersion | None = None
    prompts: list[list[int]] = field(default_factory=list)
    keys: list[int] | None = None
    sampling: Sampling | None = None
    probe: tuple[list[int], list[int]] | None = None  # generate: scored under ``adapter`` first (the content check)
    completions: list[list[int]] | None = None  # score


@dataclass
class Reply:
    ticket: int  # -1: the start-up report
    worker: int
    rollout: Rollout | None = None
    scores: torch.Tensor | None = None  # [N, T] score's result, or the probe's log-probs [1, T] of a generate
    seconds: float = 0.0  # the worker's busy time for this request
    error: str | None = None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to build its engine: the recipe, its device and threads, the trainer's weight dtype."""

    cfg: object  # tina.config.Config
    device: str
    index: int
    threads: int | None = None
    dtype: str = "auto"  # the trainer's parameter dtype (so both sides compute in the same format)


def physical_device(device: str, visible: str | None = None) -> str | None:
    """The CUDA_VISIBLE_DEVICES entry a worker on ``device`` sees as its only GPU (None: a CPU worker); ``visible``:
    the trainer's CUDA_VISIBLE_DEVICES (default: this process's environment).

    >>> physical_device("cuda:1", ""), physical_device("cuda", ""), physical_device("cpu", ""), physical_device(
    ...     "cuda:1", "4,6")
    ('1', '0', None, '6')
    """
    if not device.startswith("cuda"):
        return None
    index = int(device.partition(":")[2] or 0)
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    visible = [v for v in visible.split(",") if v.strip()]
    if visible:
        if index >= len(visible):
            raise TinaError(f"rollout.devices: {device} is not one of the {len(visible)} visible GPUs")
        return visible[index].strip()
    return str(index)


# ------------------------------------------------------------------------------------------------ the worker side
class FolderHFEngine:
    """The ``hf`` engine over a private base model + LoRA: each adapter version is read from its folder (digest
    checked) into the LoRA parameters; otherwise exactly :class:`tina.rollout.hf.HFEngine`."""

    def __init__(self, spec: WorkerSpec):
        from tina.build import build_model
        from tina.rollout.hf import HFEngine

        cfg = spec.cfg
        if spec.dtype != "auto":  # the trainer's format, whatever "auto" would pick on this device
            cfg = replace(cfg, model=replace(cfg.model, dtype=spec.dtype))
        self.model, self.tokenizer, self.base_digest = build_model(cfg, device=spec.device)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.inner = HFEngine(
            self.model,
            self.tokenizer,
            max_batch_rows=cfg.rollout.generation_batch_size,
            merge=cfg.rollout.merge_adapter,
        )
        self.name = self.inner.name
        self.loaded: AdapterVersion | None = None

    def load_adapter(self, adapter: AdapterVersion | None) -> None:
        if adapter is not None and adapter != self.loaded:
            load_folder(self.model, adapter)
            self.loaded = adapter
        self.inner.load_adapter(adapter)

    def generate(self, prompts, sampling, keys=None) -> Rollout:
        return self.inner.generate(prompts, sampling, keys=keys)

    def score(self, prompts, completions) -> torch.Tensor:
        return self.inner.score(prompts, completions)

    def info(self) -> dict:
        return {"engine": self.inner.version, "base_weights_sha256": self.base_digest}


def load_folder(model, adapter: AdapterVersion) -> None:
    """Write the adapter folder's tensors into ``model``'s LoRA parameters, after checking they are the version's."""
    from pathlib import Path

    from safetensors.torch import load_file

    from tina.rollout.adapters import adapter_digest, replace_adapter

    if adapter.path is None:
        raise TinaError(f"adapter v{adapter.version} has no folder; a rollout worker reads adapters from disk")
    file = Path(adapter.path) / "adapter_model.safetensors"
    if not file.is_file():
        raise TinaError(f"adapter v{adapter.version}: {file} does not exist (deleted before the worker read it?)")
    state = load_file(str(file))
    found = adapter_digest(state)
    if found != adapter.digest:
        raise TinaError(
            f"adapter v{adapter.version}: the folder {adapter.path} holds other tensors (digest {found[:12]}, "
            f"expected {adapter.digest[:12]}): a stale or half-written folder is never served"
        )
    replace_adapter(model, state)


def open_worker_engine(spec: WorkerSpec):
    """The worker's engine, on its device (a GPU worker sees only its own GPU, as cuda:0)."""
    cfg = spec.cfg
    if cfg.rollout.backend == "hf":
        return FolderHFEngine(spec)
    from tina.models import load_tokenizer, resolve_model_path
    from tina.rollout.vllm import VLLMEngine

    path = resolve_model_path(cfg.model.name_or_path)
    tokenizer = load_tokenizer(path, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code)
    return VLLMEngine(
        path,
        tokenizer,
        dtype=spec.dtype,
        lora_rank=cfg.lora.r,
        max_model_len=cfg.rollout.max_model_len,
        gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
        sleep=False,  # a worker's device is its own
        seed=cfg.train.seed,
        revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code,
    )


def worker_main(spec: WorkerSpec, requests, replies) -> None:
    """A worker process: build the engine, report, then serve requests in order until told to stop."""
    import multiprocessing

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's: it stops gracefully, then closes us
    visible = physical_device(spec.device)
    device = spec.device
    if visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
        device = "cuda:0"
    if spec.threads:
        torch.set_num_threads(spec.threads)
    try:
        from tina.console import quiet_transformers

        quiet_transformers()
        engine = open_worker_engine(WorkerSpec(spec.cfg, device, spec.index, spec.threads, spec.dtype))
        info = engine.info() if hasattr(engine, "info") else {}
        replies.put(Reply(-1, spec.index, info={**info, "device": spec.device, "pid": os.getpid()}))
    except BaseException as exc:  # noqa: BLE001 -- reported to the trainer, which stops in one line
        replies.put(Reply(-1, spec.index, error=one_line(exc)))
        return
    parent = multiprocessing.parent_process()
    while True:
        try:
            req = requests.get(timeout=1.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return  # the trainer is gone (killed): nothing will collect our work
            continue
        if req.kind == "stop":
            return
        start = time.perf_counter()
        try:
            engine.load_adapter(req.adapter)
            reply = Reply(req.ticket, spec.index)
            if req.kind == "score":
                reply.scores = engine.score(req.prompts, req.completions).float()
            else:
                if req.probe is not None:
                    reply.scores = engine.score([req.probe[0]], [req.probe[1]]).float()
                reply.rollout = engine.generate(req.prompts, req.sampling, keys=req.keys) if req.prompts else None
        except Exception as exc:  # noqa: BLE001 -- reported with the ticket; the trainer stops in one line
            reply = Reply(req.ticket, spec.index, error=one_line(exc))
        reply.seconds = time.perf_counter() - start
        replies.put(reply)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}" if not isinstance(exc, TinaError) else text[0]


# ----------------------------------------------------------------------------------------------- the trainer side
@dataclass
class Result:
    """A collected ticket: the rollout, the probe's log-probs under the generating version, the workers' time."""

    rollout: Rollout | None
    scores: torch.Tensor | None
    seconds: float  # the longest of the workers' busy times for this ticket
    waited: float = 0.0  # how long ``collect`` blocked the trainer


class Workers:
    """Rollout worker processes behind the engine protocol, plus ``submit`` / ``collect`` for rollouts ahead."""

    def __init__(self, cfg, devices: list[str], *, dtype: str = "auto", threads: int | None = None):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # CUDA and vLLM need a fresh interpreter, not a fork
        self.devices = list(devices)
        self.replies = ctx.Queue()
        self.requests = [ctx.Queue() for _ in self.devices]
        daemon = cfg.rollout.backend == "hf"  # a vLLM worker starts processes of its own; daemons may not
        self.procs = [
            ctx.Process(
                target=worker_main,
                args=(WorkerSpec(cfg, d, i, threads, dtype), self.requests[i], self.replies),
                name=f"tina-rollout-worker-{i}",
                daemon=daemon,
            )
            for i, d in enumerate(self.devices)
        ]
        self.adapter: AdapterVersion | None = None
        self.name = cfg.rollout.backend
        self.infos: list[dict] = []
        self._next = 0
        self._done: dict[int, dict[int, Reply]] = {}
        self._parts: dict[int, list[int]] = {}  # ticket -> the workers that got a share
        self._what: dict[int, str] = {}
        self.closed = False
        for p in self.procs:
            p.start()
        try:
            self._wait_started()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------------------- lifecycle
    def _wait_started(self) -> None:
        started: dict[int, Reply] = {}
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(started) < len(self.procs):
            reply = self._next_reply(deadline, "starting")
            if reply.ticket != -1:
                continue
            if reply.error:
                raise TinaError(
                    f"rollout worker {reply.worker} on {self.devices[reply.worker]} failed to start: {reply.error}"
                )
            started[reply.worker] = reply
        self.infos = [started[i].info for i in range(len(self.procs))]

    def close(self) -> None:
        """Stop every worker (they finish the request at hand); kill the ones that do not exit in time."""
        if self.closed:
            return
        self.closed = True
        for q, p in zip(self.requests, self.procs, strict=True):
            if p.is_alive():
                try:
                    q.put(Request(-1, "stop"))
                except (OSError, ValueError):
                    pass
        deadline = time.monotonic() + 30
        while any(p.is_alive() for p in self.procs) and time.monotonic() < deadline:
            try:  # replies nobody will collect (a run that stopped on an error): a worker exits only once its
                self.replies.get(timeout=0.1)  # queue's pipe is flushed
            except (queue.Empty, OSError, ValueError, EOFError):
                pass
        for p in self.procs:
            if p.is_alive():
                p.kill()
            p.join(timeout=5)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass

    def info(self) -> dict:
        first = self.infos[0] if self.infos else {}
        return {
            "engine": first.get("engine", self.name),
            "memory": f"{len(self.procs)} rollout worker process(es) on {', '.join(self.devices)}, own base weights",
            "workers": self.infos,
        }

    def base_digests(self) -> set[str]:
        return {i["base_weights_sha256"] for i in self.infos if "base_weights_sha256" in i}

    # --------------------------------------------------------------------------------------------- the queue
    def submit(
        self,
        prompts: list[list[int]],
        sampling: Sampling,
        keys: list[int] | None = None,
        *,
        adapter: AdapterVersion | None = None,
        probe: tuple[list[int], list[int]] | None = None,
        what: str = "generating",
    ) -> int:
        """Queue ``sampling.n`` completions of every prompt with ``adapter`` (default: the one last loaded); returns
        a ticket at once.  Contiguous shares of the prompts go to the workers; the first also scores ``probe``."""
        adapter = self.adapter if adapter is None else adapter
        keys = list(range(len(prompts))) if keys is None else list(keys)
        ticket, self._next = self._next, self._next + 1
        n = len(self.procs)
        bounds = [len(prompts) * i // n for i in range(n + 1)]
        parts = []
        for i in range(n):
            lo, hi = bounds[i], bounds[i + 1]
            if lo == hi and not (i == 0 and probe is not None):
                continue
            self.requests[i].put(
                Request(ticket, "generate", adapter, prompts[lo:hi], keys[lo:hi], sampling, probe if i == 0 else None)
            )
            parts.append(i)
        self._parts[ticket], self._what[ticket] = parts, what
        return ticket

    def collect(self, ticket: int) -> Result:
        """The ticket's rollout (the workers' shares in prompt order), waiting for it; a failed or dead worker stops
        the run in one line."""
        start = time.perf_counter()
        parts = self._parts[ticket]
        while len(self._done.get(ticket, {})) < len(parts):
            reply = self._next_reply(None, self._what[ticket])
            if reply.ticket == -1:
                continue
            if reply.error:
                raise TinaError(
                    f"rollout worker {reply.worker} on {self.devices[reply.worker]} failed while "
                    f"{self._what.get(reply.ticket, 'working')}: {reply.error}"
                )
            self._done.setdefault(reply.ticket, {})[reply.worker] = reply
        replies = self._done.pop(ticket)
        del self._parts[ticket], self._what[ticket]
        rollouts = [replies[i].rollout for i in parts if replies[i].rollout is not None]
        rollout = None if not rollouts else rollouts[0] if len(rollouts) == 1 else Rollout.concat(rollouts)
        return Result(
            rollout, replies[parts[0]].scores, max(r.seconds for r in replies.values()), time.perf_counter() - start
        )

    def pending(self) -> list[int]:
        return sorted(self._parts)

    def _next_reply(self, deadline: float | None, what: str) -> Reply:
        """The next reply from any worker; a worker that has exited stops the run in one line."""
        while True:
            try:
                return self.replies.get(timeout=0.5)
            except queue.Empty:
                pass
            for i, p in enumerate(self.procs):
                if not p.is_alive():
                    try:  # its last words may still be in the pipe
                        return self.replies.get(timeout=0.5)
                    except queue.Empty:
                        pass
                    code = p.exitcode
                    how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited ({code})"
                    raise TinaError(
                        f"rollout worker {i} on {self.devices[i]} {how} while {what}; the run stops here "
                        "(the last checkpoint is intact: resume with --resume)"
                    )
            if deadline is not None and time.monotonic() > deadline:
                raise TinaError(f"rollout workers did not finish {what} within {START_TIMEOUT_S:.0f} s")

    # ----------------------------------------------------------------------------------- the engine protocol
    def load_adapter(self, adapter: AdapterVersion | None) -> None:
        """Serve ``adapter`` from the next request on (it travels with each request: a handle, no tensors)."""
        if adapter is not None and adapter.path is None:
            raise TinaError("a rollout worker reads adapters from disk: publish them to a folder")
        self.adapter = adapter

    def generate(self, prompts: list[list[int]], sampling: Sampling, keys: list[int] | None = None) -> Rollout:
        return self.collect(self.submit(prompts, sampling, keys)).rollout

    def generate_each(self, prompts: list[list[int]], sampling: Sampling, keys: list[int] | None = None):
        rollout = self.generate(prompts, sampling, keys)
        for i in range(len(prompts)):
            yield i, rollout.rows(i * sampling.n, (i + 1) * sampling.n)

    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> torch.Tensor:
        ticket, self._next = self._next, self._next + 1
        self.requests[0].put(Request(ticket, "score", self.adapter, prompts, completions=completions))
        self._parts[ticket], self._what[ticket] = [0], "scoring"
        return self.collect(ticket).scores

    def awake(self):
        from contextlib import nullcontext

        return nullcontext()
