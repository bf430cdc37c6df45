"""Data parallelism through accelerate on CPU (gloo): 2 processes == 1 process, one writer, no hang on a dead peer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from tina import cli
from tina.distributed import Dist, config_path
from tina.errors import TinaError

pytestmark = pytest.mark.slow

COMMON = [
    "--set",
    "train.batch_size=32",
    "--set",
    "rollout.num_generations=8",
    "--set",
    "train.max_steps=3",
    "--set",
    "train.save_steps=3",
    "--set",
    "rollout.max_new_tokens=24",
    "--no-progress",
]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("WORLD_SIZE", None)
    return env


def _tina(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tina", *args], env=_env(), capture_output=True, text=True, timeout=600, **kw
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tina.tiny import resolve_builtin

    resolve_builtin("builtin:tiny-arith", progress=False)  # build once, outside the timed subprocesses
    out = tmp_path_factory.mktemp("dist")
    one = _tina("train", "demo", "-o", str(out / "one"), *COMMON)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _tina("train", "demo", "-o", str(out / "two"), *COMMON, "--num-processes", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    return out / "one", out / "two"


def test_two_processes_match_one_process_with_the_same_global_batch(runs):
    one, two = runs
    a = load_file(str(one / "checkpoint-3" / "adapter_model.safetensors"))
    b = load_file(str(two / "checkpoint-3" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:  # only the all-reduce's summation order differs
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=2e-5), (key, (a[key] - b[key]).abs().max())
    m1 = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(m1, m2, strict=True):  # the same completions were sampled: keyed, batch-invariant sampling
        assert x["tokens"] == y["tokens"] and x["completion_length"] == y["completion_length"]
        assert x["reward"] == pytest.approx(y["reward"], abs=1e-9)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)


def test_only_the_main_process_writes(runs):
    _, two = runs
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 3  # not 3 per process
    assert len((two / "probes.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in two.iterdir()) == [
        "checkpoint-3",
        "config.yaml",
        "ledger.json",
        "metrics.jsonl",
        "probes.jsonl",
    ]
    ledger = json.loads((two / "ledger.json").read_text())
    assert ledger["num_devices"] == 2  # device-hours count every process
    assert ledger["device_hours"] == pytest.approx(2 * ledger["wall_seconds"] / 3600, rel=1e-3)


def test_a_dead_process_makes_the_run_exit_nonzero_without_hanging(tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "tina",
        "train",
        "demo",
        "-o",
        str(run),
        "--num-processes",
        "2",
        *COMMON[:-1],
        "--set",
        "train.max_steps=500",
        "--set",
        "train.save_steps=500",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        deadline = time.time() + 240
        while (
            time.time() < deadline
            and not (run / "metrics.jsonl").is_file()
            or not (run / "metrics.jsonl").read_text().strip()
        ):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.time() < deadline, "the 2-process run never logged a step"
            time.sleep(0.5)
        workers = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "tina" in " ".join(p.cmdline()) and "accelerate" not in " ".join(p.cmdline())
        ]
        assert len(workers) == 2, [p.cmdline() for p in workers]
        killed_at = time.time()
        workers[-1].send_signal(signal.SIGKILL)
        code = proc.wait(timeout=180)
        assert code != 0
        assert time.time() - killed_at < 180
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_shipped_accelerate_configs_exist_and_unknown_names_are_clear():
    for name in ("ddp", "zero2", "fsdp"):
        assert config_path(name).is_file()
    with pytest.raises(TinaError, match="did you mean 'zero2'"):
        config_path("zero3x")


def test_single_process_world_shares_everything():
    d = Dist()
    assert d.share(8) == slice(0, 8) and d.sum([1.0, 2.0]) == [1.0, 2.0] and d.gather([3.0]) == [3.0]
    assert Dist(rank=1, world_size=2).share(8) == slice(4, 8)


def test_a_batch_that_does_not_split_over_the_processes_is_refused_before_launch(tmp_path, capsys):
    code = cli.main(
        [
            "train",
            "demo",
            "-o",
            str(tmp_path / "r"),
            "--num-processes",
            "3",
            "--set",
            "train.batch_size=32",
            "--set",
            "rollout.num_generations=8",
        ]
    )
    assert code == 2
    assert "4 prompts per micro-batch do not split over 3 processes" in capsys.readouterr().err


def test_a_two_process_run_resumes_bit_exact(runs, tmp_path):
    """Stop a 2-process run at step 2 (the schedule still spans 4 steps), resume it with 2 processes: the adapter
    equals an uninterrupted 2-process run's, bit for bit."""
    _, reference = runs  # 2 processes, 3 steps, checkpoint at 3
    part = tmp_path / "part"
    args = ["train", "demo", "-o", str(part), *COMMON, "--num-processes", "2"]
    first = _tina(*args, "--set", "train.stop_step=2", "--set", "train.save_steps=1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (part / "checkpoint-2").is_dir() and not (part / "checkpoint-3").exists()
    second = _tina(
        "train",
        str(part / "config.yaml"),
        "-o",
        str(part),
        "--resume",
        "--num-processes",
        "2",
        "--set",
        "train.stop_step=3",
        "--no-progress",
    )
    assert second.returncode == 0, second.stderr[-3000:]
    _assert_same_run(reference, part, 3, ("reward",))


def test_a_two_process_run_resumes_between_two_updates_of_one_rollout(tmp_path):
    """num_iterations=2: steps 3 and 4 train on step 3's rollouts, and a checkpoint at step 3 must hold EVERY
    process's micro-batches and rollout metrics (each process trains on its own share): the resumed 2-process run
    equals the uninterrupted one bit for bit."""
    reuse = [*COMMON, "--set", "algorithm.num_iterations=2", "--set", "train.max_steps=4", "--num-processes", "2"]
    full, part = tmp_path / "full", tmp_path / "part"
    whole = _tina("train", "demo", "-o", str(full), *reuse, "--set", "train.save_steps=4")
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = _tina("train", "demo", "-o", str(part), *reuse, "--set", "train.stop_step=3")
    assert first.returncode == 0, first.stderr[-3000:]
    again = ["--set", "train.stop_step=4", "--set", "train.save_steps=4", *reuse[-2:], "--no-progress"]
    second = _tina("train", str(part / "config.yaml"), "-o", str(part), "--resume", *again)
    assert second.returncode == 0, second.stderr[-3000:]
    _assert_same_run(full, part, 4, ("reward", "tokens", "completion_length", "loss"))


def _assert_same_run(reference: Path, run: Path, step: int, keys: tuple[str, ...]) -> None:
    """checkpoint-<step>'s adapter bit for bit, and these metrics of every step, equal the reference run's."""
    a = load_file(str(reference / f"checkpoint-{step}" / "adapter_model.safetensors"))
    b = load_file(str(run / f"checkpoint-{step}" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    m_ref = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    m_run = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for key in keys:
        assert [m[key] for m in m_run] == [m[key] for m in m_ref], key


# ------------------------------------------------------------------------------------ FSDP2 and DeepSpeed ZeRO-2
# accelerate enables these only on accelerator devices; tests/accelerate_on_cpu.py runs the same accelerate code
# (plugin from the shipped config, accelerator.prepare) on CPU processes with gloo.  fp32 here, so that two processes
# can be compared with one; the shipped configs' bf16 is for GPUs.
ON_CPU = Path(__file__).with_name("accelerate_on_cpu.py")


def _launch_engine(engine: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_path(engine)),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        str(ON_CPU),
        *args,
    ]
    return subprocess.run(cmd, env=dict(_env(), DS_ACCELERATOR="cpu"), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module", params=["fsdp", "zero2"])
def engine_runs(request, runs, tmp_path_factory):
    engine = request.param
    if engine == "zero2":
        pytest.importorskip("deepspeed", reason="DeepSpeed is installed by .ci/run (pip install deepspeed)")
    out = tmp_path_factory.mktemp(engine)
    full = _launch_engine(engine, "train", "demo", "-o", str(out / "full"), *COMMON)
    assert full.returncode == 0, full.stderr[-4000:]
    part = out / "part"
    first = _launch_engine(
        engine, "train", "demo", "-o", str(part), *COMMON, "--set", "train.stop_step=2", "--set", "train.save_steps=1"
    )
    assert first.returncode == 0, first.stderr[-4000:]
    second = _launch_engine(
        engine,
        "train",
        str(part / "config.yaml"),
        "-o",
        str(part),
        "--resume",
        "--set",
        "train.stop_step=3",
        "--no-progress",
    )
    assert second.returncode == 0, second.stderr[-4000:]
    return engine, runs[0], out / "full", part, full.stdout


def test_fsdp_and_zero2_match_one_process_and_only_the_main_process_writes(engine_runs):
    engine, one, full, _, stdout = engine_runs
    a = load_file(str(one / "checkpoint-3" / "adapter_model.safetensors"))
    b = load_file(str(full / "checkpoint-3" / "adapter_model.safetensors"))  # FSDP: gathered from the shards
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=2e-5), (engine, key, (a[key] - b[key]).abs().max())
    m1 = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(m1, m2, strict=True):
        assert x["tokens"] == y["tokens"] and x["reward"] == pytest.approx(y["reward"], abs=1e-9)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)  # DeepSpeed's own clipping norm
    probe_one = json.loads((one / "probes.jsonl").read_text())
    probe_two = json.loads((full / "probes.jsonl").read_text())  # FSDP: main alone generated from gathered weights
    assert probe_two["completion"] == probe_one["completion"]
    assert json.loads((full / "ledger.json").read_text())["num_devices"] == 2
    assert stdout.count("done:") == 1


def test_fsdp_and_zero2_runs_resume_bit_exact(engine_runs):
    """The optimizer state is sharded (FSDP) or partitioned (ZeRO) over the processes: the checkpoint gathers all of
    it, so a stopped and resumed run equals the uninterrupted one bit for bit."""
    engine, _, full, part, _ = engine_runs
    a = load_file(str(full / "checkpoint-3" / "adapter_model.safetensors"))
    b = load_file(str(part / "checkpoint-3" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), engine
    state = torch.load(part / "checkpoint-3" / "trainer_state.pt", weights_only=False)
    assert state["optimizer_format"] == {"fsdp": "by-name", "zero2": "deepspeed-by-rank"}[engine]
    if engine == "zero2":  # one partition of the fp32 master weights per process, 155,648 LoRA values in all
        assert sum(s["single_partition_of_fp32_groups"][0].numel() for s in state["optimizer"]) == 155_648


def test_a_checkpoint_from_another_engine_is_refused_in_one_line(engine_runs, capsys):
    engine, _, _, part, _ = engine_runs
    code = cli.main(["train", str(part / "config.yaml"), "-o", str(part), "--resume", "--no-progress"])
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    written_by = {"fsdp": "an FSDP", "zero2": "a DeepSpeed"}[engine]
    assert errors == [
        f"tina train: error: checkpoint-3 was written by {written_by} run and cannot be resumed by a "
        "single-process or DDP run; resume with the run's own --accelerate-config"
    ]


# ------------------------------------------------------------------- FSDP: the engine's adapter folder, the canary
HANDOVER = [
    "--set",
    "train.batch_size=16",
    "--set",
    "rollout.num_generations=4",
    "--set",
    "train.max_steps=2",
    "--set",
    "train.save_steps=2",
    "--set",
    "rollout.max_new_tokens=32",
    "--no-progress",
]
WALL_TIME = ("seconds", "step_seconds", "device_hours", "usd")


@pytest.fixture(scope="module")
def fsdp_handover(tmp_path_factory):
    """Two 2-step FSDP runs on 2 CPU processes (hf engine, its adapter handed over through a folder as the vllm
    engine's is: tests/fsdp_handover_worker.py), with the start-up canary on and off."""
    from tina.tiny import resolve_builtin

    resolve_builtin("builtin:tiny-arith", progress=False)
    out = tmp_path_factory.mktemp("fsdp-handover")
    worker = str(Path(__file__).with_name("fsdp_handover_worker.py"))
    done = {}
    for canary in ("on", "off"):
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(config_path("fsdp")),
            "--num_processes",
            "2",
            "--mixed_precision",
            "no",
            worker,
            "train",
            "demo",
            "-o",
            str(out / canary),
            *HANDOVER,
            "--set",
            f"rollout.check_engine={'true' if canary == 'on' else 'false'}",
        ]
        done[canary] = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
        assert done[canary].returncode == 0, done[canary].stderr[-4000:]
    return out, done


def test_the_canary_runs_under_fsdp_and_leaves_the_run_bit_identical(fsdp_handover):
    """The random canary adapters are written into the FSDP shards and gathered; the trained adapter comes back bit
    for bit: the run equals one without the canary."""
    out, done = fsdp_handover
    checked = [line for line in done["on"].stderr.splitlines() if line.startswith("engine check (hf)")]
    assert len(checked) == 1 and "log-probs match the trainer's" in checked[0]  # main process reports, both ran it
    assert "engine check" not in done["off"].stderr
    a = load_file(str(out / "on" / "checkpoint-2" / "adapter_model.safetensors"))
    b = load_file(str(out / "off" / "checkpoint-2" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    m_on = [json.loads(line) for line in (out / "on" / "metrics.jsonl").read_text().splitlines()]
    m_off = [json.loads(line) for line in (out / "off" / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(m_on, m_off, strict=True):  # the same training (rollout.check_engine also adds its own metrics)
        assert {k: v for k, v in y.items() if k not in WALL_TIME} == {k: x[k] for k in y if k not in WALL_TIME}
        assert x["grad_norm"] > 0


def test_the_adapter_fsdp_hands_the_engine_has_peft_names_and_loads_with_peft(fsdp_handover):
    """The folder the engine reads is written from the gathered FSDP shards: PEFT's saved names (not
    '….lora_A.default.weight', which vLLM and PEFT refuse), the trained tensors, and PeftModel.from_pretrained gives
    the logits of an unsharded model holding the same adapter."""
    from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict

    from tina.build import build_model
    from tina.config import load_config
    from tina.models import load_model_and_tokenizer

    out, _ = fsdp_handover
    served = out / "on" / ".engine" / "rank0" / "v2"  # published for the probe after step 2
    folder = load_file(str(served / "adapter_model.safetensors"))
    trained = load_file(str(out / "on" / "checkpoint-2" / "adapter_model.safetensors"))
    unsharded, _, _ = build_model(load_config(out / "on" / "config.yaml"))
    assert sorted(folder) == sorted(get_peft_model_state_dict(unsharded))
    assert all(torch.equal(folder[k], trained[k]) for k in trained)
    other_rank = load_file(str(out / "on" / ".engine" / "rank1" / "v2" / "adapter_model.safetensors"))
    assert all(torch.equal(folder[k], other_rank[k]) for k in folder)
    set_peft_model_state_dict(unsharded, trained)
    unsharded.eval()
    base, _ = load_model_and_tokenizer("builtin:tiny-arith", dtype="float32", attn_implementation="eager", device="cpu")
    loaded = PeftModel.from_pretrained(base, str(served)).eval()
    ids = torch.tensor([[5, 17, 42, 8, 99, 3, 64]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, unsharded(ids).logits)
        with unsharded.disable_adapter():
            assert not torch.equal(loaded(ids).logits, unsharded(ids).logits)  # the trained adapter is applied


def test_a_deepspeed_config_without_deepspeed_installed_fails_before_launch(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    code = cli.main(
        ["train", "demo", "-o", str(tmp_path / "r"), "--num-processes", "2", "--accelerate-config", "zero2"]
    )
    assert code == 2
    assert "uses DeepSpeed, which is not installed: pip install deepspeed" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------ skipped steps
def _state(ckpt: Path) -> tuple[dict, list]:
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    return load_file(str(ckpt / "adapter_model.safetensors")), state["optimizer"]


def _same_optimizer(a, b) -> bool:
    """ZeRO partitions (one per process): fp32 master weights and Adam moments, bit for bit."""
    for pa, pb in zip(a, b, strict=True):
        if not all(
            torch.equal(x, y)
            for x, y in zip(pa["single_partition_of_fp32_groups"], pb["single_partition_of_fp32_groups"], strict=True)
        ):
            return False
        for sa, sb in zip(
            pa["base_optimizer_state"]["state"].values(), pb["base_optimizer_state"]["state"].values(), strict=True
        ):
            if not all(torch.equal(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq")) or sa["step"] != sb["step"]:
                return False
    return True


def test_a_skipped_step_under_zero2_changes_nothing(tmp_path):
    """DeepSpeed steps inside the last micro-batch's backward and ignores zero_grad(): a NaN loss at micro-batch 2
    must still leave adapter and optimizer bit-identical, and micro-batch 1's gradients must not leak into the next
    step (the run equals one whose NaN came at micro-batch 1, before anything was accumulated)."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is installed by .ci/run (pip install deepspeed)")
    args = [
        "train",
        "demo",
        *COMMON,
        "--set",
        "train.batch_size=16",
        "--set",
        "train.gradient_accumulation_steps=2",
        "--set",
        "train.save_steps=1",
    ]
    runs = {}
    for micro in (2, 1):
        out = tmp_path / f"nan-at-{micro}"
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(config_path("zero2")),
            "--num_processes",
            "2",
            "--mixed_precision",
            "no",
            str(ON_CPU),
            args[0],
            args[1],
            "-o",
            str(out),
            *args[2:],
        ]
        env = dict(_env(), DS_ACCELERATOR="cpu", TINA_TEST_NAN_AT=f"2:{micro}", TINA_TEST_GA="2")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "step 2: non-finite loss or gradient; update skipped" in proc.stderr
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [m["skipped"] for m in metrics] == [False, True, False]
        runs[micro] = out
    (a1, o1), (a2, o2) = _state(runs[2] / "checkpoint-1"), _state(runs[2] / "checkpoint-2")
    assert all(torch.equal(a1[k], a2[k]) for k in a1)  # the skipped step left the adapter ...
    assert _same_optimizer(o1, o2)  # ... and every optimizer partition bit-identical
    (a3, _), (b3, _) = _state(runs[2] / "checkpoint-3"), _state(runs[1] / "checkpoint-3")
    assert all(torch.equal(a3[k], b3[k]) for k in a3)  # nothing of step 2's first micro-batch reached step 3
    assert not all(torch.equal(a2[k], a3[k]) for k in a3)  # and step 3 did update
