"""Rollout workers (rollout.devices) and rollouts generated ahead (rollout.max_staleness): real worker processes on the
CPU, the real tiny model, the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tina.config import load_config
from tina.errors import ConfigError, TinaError

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "lifecycle"))

from lifecycle_util import (  # noqa: E402
    SIGKILL,
    assert_adapters_identical,
    metrics,
    reproducible,
    run,
    signal_at,
    start,
)

TINY = [
    "model.name_or_path=builtin:tiny-random",
    "train.batch_size=16",
    "rollout.num_generations=4",
    "rollout.max_new_tokens=8",
    "train.max_steps=10",
    "train.save_steps=2",
    "train.seed=7",
    "rewards.length.weight=1.0",
]
WORKER = ["rollout.devices=[cpu]"]
AHEAD = [*WORKER, "rollout.max_staleness=1"]


def tiny_cfg(*extra: str):
    return load_config("demo", [*TINY, *extra])


# ------------------------------------------------------------------------------------------------ the recipe keys
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["rollout.max_staleness=1"], "needs rollout workers"),
        (["rollout.devices=[gpu0]"], "'gpu0' is not a device"),
        (["rollout.max_staleness=-1"], "rollout.max_staleness: must be >= 0"),
        ([*AHEAD, "algorithm.num_iterations=2"], "below algorithm.num_iterations"),
        ([*WORKER, "rollout.worker_threads=0"], "rollout.worker_threads: must be > 0"),
    ],
)
def test_impossible_worker_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_cfg(*overrides)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without the named GPU")
def test_a_gpu_worker_without_the_gpu_fails_before_the_first_step(tmp_path):
    done = run(tmp_path / "run", overrides=["rollout.devices=[cuda:1]", "rollout.max_staleness=1"], timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr
    assert lines[-1].startswith("tina train: error: rollout.devices: cuda:1 does not exist here (0 CUDA GPU(s))")
    assert len(lines) == 1, lines  # before anything is loaded: nothing else was said
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------------------- adapters from folders
def test_a_worker_never_serves_a_folder_that_holds_other_tensors(tmp_path):
    from tina.build import build_model
    from tina.rollout.adapters import AdapterHandover, adapter_state, write_adapter
    from tina.rollout.worker import load_folder

    model, _, _ = build_model(tiny_cfg())
    handover = AdapterHandover(tmp_path / "engine")
    v1 = handover.publish(model, 1)
    other = {k: v + 1.0 for k, v in adapter_state(model).items()}
    write_adapter(model, other, Path(v1.path))  # the folder now holds other tensors under v1's name
    with pytest.raises(TinaError, match="holds other tensors"):
        load_folder(model, v1)


def test_worker_rollouts_equal_the_trainers_own_engine_and_do_not_depend_on_the_split(tmp_path):
    """One worker and the hf engine on the trainer's model: the same completions and log-probs, bit for bit (a worker
    reads the adapter from its folder); two workers, each with half the prompts: the same completions (sampling is
    keyed per prompt), log-probs equal up to float32 rounding; the probe is scored under the handed version."""
    from tina.build import build_model
    from tina.rollout.adapters import AdapterHandover
    from tina.rollout.base import Sampling
    from tina.rollout.hf import HFEngine
    from tina.rollout.worker import Workers

    torch.set_num_threads(1)
    cfg = tiny_cfg()
    model, tokenizer, _ = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # an adapter that changes the samples
    adapter = AdapterHandover(tmp_path / "engine").publish(model, 3)
    prompts = [tokenizer(t)["input_ids"] for t in ("1 + 2 =", "what is 7 * 6?", "3", "a b c d e")]
    sampling = Sampling(n=3, max_new_tokens=6, temperature=1.0, seed=11)
    mine = HFEngine(model, tokenizer)
    mine.load_adapter(adapter)
    expected = mine.generate(prompts, sampling, keys=[5, 6, 7, 8])
    probe = (prompts[1], expected.completion_ids[3, :4].tolist())
    for devices in (["cpu"], ["cpu", "cpu"]):
        workers = Workers(cfg, devices, dtype="float32", threads=1)
        try:
            ticket = workers.submit(prompts, sampling, [5, 6, 7, 8], adapter=adapter, probe=probe)
            got = workers.collect(ticket)
        finally:
            workers.close()
        assert got.rollout.adapter == adapter
        assert torch.equal(got.rollout.completion_ids, expected.completion_ids), devices
        assert torch.equal(got.rollout.lengths, expected.lengths)
        if len(devices) == 1:  # the same batch: the same arithmetic
            assert torch.equal(got.rollout.logprobs, expected.logprobs)
        else:  # each worker pads its own share: the sums differ in the last bits, the samples do not
            assert torch.allclose(got.rollout.logprobs, expected.logprobs, atol=1e-5)
        assert got.rollout.texts == expected.texts
        assert torch.allclose(got.scores, mine.score([probe[0]], [probe[1]]), atol=1e-6)
    assert not any(p.is_alive() for p in workers.procs)


def test_a_dead_worker_stops_the_run_in_one_line():
    from tina.rollout.base import Sampling
    from tina.rollout.worker import Workers

    workers = Workers(tiny_cfg(), ["cpu"], dtype="float32", threads=1)
    try:
        os.kill(workers.procs[0].pid, signal.SIGKILL)
        workers.procs[0].join(timeout=10)
        ticket = workers.submit([[1, 2, 3]], Sampling(n=2, max_new_tokens=4, seed=0), what="generating step 4")
        with pytest.raises(TinaError) as err:
            workers.collect(ticket)
    finally:
        workers.close()
    assert str(err.value).startswith("rollout worker 0 on cpu was killed by signal 9 while generating step 4;")
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------ training with workers
def test_workers_at_staleness_0_reproduce_the_synchronous_loop_bit_for_bit(tmp_path):
    """The engine in a worker process, reading each version from disk, changes nothing: the same metrics and the same
    adapter as the engine in the trainer (the rollout correction off: with it on, the weights pi_trainer / pi_engine
    of two decode paths are 1 +- 1e-7, not exactly 1)."""
    sync, workers = tmp_path / "sync", tmp_path / "workers"
    steps = ["train.max_steps=4", "train.save_steps=4"]
    a = run(sync, overrides=steps)
    b = run(workers, overrides=[*steps, *WORKER, "algorithm.rollout_correction=none"])
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    ma, mb = reproducible(metrics(sync)), reproducible(metrics(workers))
    assert [{k: v for k, v in r.items() if k in ma[0]} for r in mb] == ma
    assert [r["rollout/staleness"] for r in mb] == [0.0] * 4
    assert all(r["rollout/probe_decided"] is not None for r in mb[1:])  # the content probe ran, and agreed
    assert_adapters_identical(sync / "checkpoint-4", workers / "checkpoint-4")


@pytest.mark.slow
def test_one_step_off_resumes_bit_exact_after_a_sigkill_with_rollouts_in_flight(tmp_path):
    """SIGKILL of the trainer while the worker generates the next step: the resumed run trains on the rollouts the
    checkpoint holds and ends with the same metrics and adapter as an uninterrupted run; the worker exits with its
    trainer."""
    import psutil

    reference = tmp_path / "reference"
    done = run(reference, overrides=AHEAD)
    assert done.returncode == 0, done.stderr
    ref = metrics(reference)
    assert [r["rollout/staleness"] for r in ref] == [0.0] + [1.0] * 9
    assert all(r["rollout/probe_decided"] == 1.0 for r in ref[2:])  # scored under the generating version: agreed
    assert all(0.5 < r["rollout/is_weight_mean"] < 2.0 for r in ref)

    killed = tmp_path / "killed"
    proc = start(killed, overrides=AHEAD)
    signal_at(proc, killed, 5, SIGKILL)  # after step 5 (checkpoint-4 holds step 5's rollouts)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.wait(timeout=60)
    psutil.wait_procs(children, timeout=15)  # the worker notices its trainer is gone
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    resumed = run(killed, resume=True, overrides=AHEAD)
    assert resumed.returncode == 0, resumed.stderr
    assert reproducible(metrics(killed)) == reproducible(ref)
    assert_adapters_identical(reference / "checkpoint-10", killed / "checkpoint-10")


# --------------------------------------------------------------------------------- a worker serving stale content
class StaleContentWorkers:
    """A strict in-process stand-in for :class:`tina.rollout.worker.Workers` whose worker reports the version it was
    handed and generates with it, but scores the content probe with the adapter it served before (``stale=True``):
    a version number that lies.  ``stale=False``: a correct worker (the control)."""

    stale = True

    def __init__(self, cfg, devices, *, dtype="auto", threads=None):
        from tina.rollout.worker import FolderHFEngine, WorkerSpec

        self.engine = FolderHFEngine(WorkerSpec(cfg, "cpu", 0, threads, dtype))
        self.name, self.adapter, self.queue, self.previous = "hf", None, {}, None
        self.infos = [self.engine.info()]

    def base_digests(self):
        return {self.engine.base_digest}

    def load_adapter(self, adapter):
        self.adapter = adapter

    def submit(self, prompts, sampling, keys=None, *, adapter=None, probe=None, what=""):
        ticket = self.tickets = getattr(self, "tickets", -1) + 1
        self.queue[ticket] = (prompts, sampling, keys, adapter or self.adapter, probe)
        return ticket

    def collect(self, ticket):
        from tina.rollout.worker import Result

        prompts, sampling, keys, adapter, probe = self.queue.pop(ticket)
        scores = None
        if probe is not None:
            self.engine.load_adapter(self.previous if self.stale and self.previous else adapter)
            scores = self.engine.score([probe[0]], [probe[1]])
        self.engine.load_adapter(adapter)
        self.previous = adapter
        return Result(self.engine.generate(prompts, sampling, keys), scores, 0.0)

    def generate(self, prompts, sampling, keys=None):
        return self.collect(self.submit(prompts, sampling, keys)).rollout

    def score(self, prompts, completions):
        self.engine.load_adapter(self.adapter)
        return self.engine.score(prompts, completions)

    def awake(self):
        from contextlib import nullcontext

        return nullcontext()

    def close(self):
        pass


@pytest.mark.parametrize("stale", [False, True])
def test_a_worker_serving_another_version_than_it_reports_is_caught_by_the_content_probe(tmp_path, monkeypatch, stale):
    import tina.rollout.worker
    from tina.train import train

    fake = type("Fake", (StaleContentWorkers,), {"stale": stale})
    monkeypatch.setattr(tina.rollout.worker, "Workers", fake)
    cfg = tiny_cfg(*AHEAD, "train.max_steps=6", "train.save_steps=6", "train.learning_rate=5e-3")
    if not stale:
        result = train(cfg, tmp_path / "run", progress=False)
        assert [m.get("rollout/probe_decided") for m in result.metrics][2:] == [1.0] * 4, result.metrics
        return
    with pytest.raises(TinaError, match=r"does not serve the trainer's adapter v\d+: on the content probe"):
        train(cfg, tmp_path / "run", progress=False)


@pytest.mark.slow
def test_two_training_processes_each_with_its_own_worker_match_one(tmp_path):
    """`--num-processes 2` (DDP on CPU processes) with rollout.devices=[cpu, cpu]: each training process gets one
    worker and generates its share one step ahead; the run matches one process with one worker (the same rewards
    -- keyed sampling --, gradients equal up to float32 reduction order); a checkpoint holds every process's
    rollouts ahead."""
    import json

    from safetensors.torch import load_file

    def train_cli(out, *extra):
        args = [sys.executable, "-m", "tina", "train", "demo", "-o", str(out), "--no-progress", *extra]
        for o in [*TINY, "train.max_steps=3", "train.save_steps=3", "rollout.max_staleness=1"]:
            args += ["--set", o]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("WORLD_SIZE", None)
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)

    one = train_cli(tmp_path / "one", "--set", "rollout.devices=[cpu]")
    two = train_cli(tmp_path / "two", "--set", "rollout.devices=[cpu,cpu]", "--num-processes", "2")
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    m1, m2 = (
        [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        for d in (tmp_path / "one", tmp_path / "two")
    )
    assert [m["rollout/staleness"] for m in m2] == [0.0, 1.0, 1.0]
    for x, y in zip(m1, m2, strict=True):
        assert x["reward"] == pytest.approx(y["reward"], abs=1e-9)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)
    a, b = (
        load_file(str(d / "checkpoint-3" / "adapter_model.safetensors")) for d in (tmp_path / "one", tmp_path / "two")
    )
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=2e-5) for k in a)
    bad = train_cli(tmp_path / "bad", "--set", "rollout.devices=[cpu,cpu,cpu]", "--num-processes", "2")
    assert bad.returncode == 2 and "3 device(s) do not split over 2 training processes" in bad.stderr, bad.stderr
