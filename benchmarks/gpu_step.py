"""Time one GRPO step of `tina train` at the tina-open-rs2 setting, on Tina's model shape, for each rollout engine.

What is measured is tina as users run it: ``tina.train.train`` on a recipe derived from ``tina-open-rs2`` (LoRA r=32,
alpha 128, dropout 0.05, all seven linear targets; G=6 completions x 8 prompts = 48 per step in 4 micro-batches of 12;
up to 3584 new tokens, temperature 0.7; beta 0.04, so a reference log-prob pass; bf16; gradient checkpointing; the
start-up engine check on) -- changed only where this machine forces it:

* the model is DeepSeek-R1-Distill-Qwen-1.5B's exact shape (Qwen2, hidden 1536, 28 layers, 12/2 heads, intermediate
  8960, vocab 151936, untied embeddings, rope_theta 10000) with RANDOM weights (:mod:`tina.synthetic`; the hub is not
  reachable here), and tina's tiny byte-level tokenizer;
* the data is a synthetic JSONL of problems whose rendered prompts are exactly ``--prompt-tokens`` tokens (default 200)
  with the tokenizer's ChatML template and no system prompt (the recipe's Open-RS system prompt and R1 template are
  text; what costs time is the prompt length, set here directly);
* the attention is flash_attention_2 where flash-attn is installed, else sdpa; no probe completion; ``max_steps`` =
  ``--steps``; vLLM gets ``max_model_len`` = prompt + new tokens (its ``gpu_memory_utilization`` is tina's default 0.3
  unless ``--gpu-memory-utilization`` says otherwise).

A random model's next-token distribution is nearly uniform over the 151936 ids, so it samples its EOS about once in
10^5 to 10^6 tokens (a step samples 48 x 3584 = 172,032): practically every completion runs to ``--max-new-tokens``.
That is the WORST case for generation and for the loss passes (a trained model ends many completions earlier, at its
EOS).  The table's "completion tokens" column says what was actually generated.  The rewards are all 0 (random text is
never right), so every advantage is 0 and the loss is ~0 -- but the log-prob passes and the backward run at full cost,
which is all that matters for timing.  The reward phase is not representative (the tiny tokenizer decodes the sampled
ids to little text) and is reported in the JSON only.

Every engine runs in its own subprocess (clean memory numbers).  The numbers come from the run's own files:
seconds per step from metrics.jsonl (``step_seconds``), the split into generation / log-prob (the reference pass) /
backward (the loss forward + backward + optimizer step) from the ledger's phases, tokens/s from the ledger's token
counters (generated tokens / generation seconds; trained completion tokens / (log-prob + backward) seconds), peak
memory from ``torch.cuda.max_memory_allocated`` (GPU) or the process's max RSS (CPU); on a GPU the table adds the
largest device use a 0.2 s poller saw (``total - free``: every process on the device, CUDA context included), which
is the number to read for vllm -- it reserves ``gpu_memory_utilization`` of the device up front, in pools that torch's
counter may not see.  The ledger is read after every
step, so the first step (CUDA/kernel warm-up) is left out of the table whenever more than one step ran; the JSON holds
every step and the run's full ledger.json.  The engine's start-up and its canary check (``rollout.check_engine``) are
timed separately.  An engine that cannot run here is listed as "unmeasured" with the reason -- never estimated.

    python benchmarks/gpu_step.py                        # a CUDA GPU: qwen2-1.5b shape, every installed engine
    python benchmarks/gpu_step.py --engines vllm --steps 3 --json gpu_step.json
    python benchmarks/gpu_step.py --dry                  # CPU plumbing check: tiny shape, 32-token prompts, 16 tokens
    python benchmarks/gpu_step.py --dry --device cuda    # the same on the GPU (bf16): a quick smoke test

Without a CUDA GPU (and without --dry or --device cpu) every engine is listed as unmeasured.  The 1.5B model folder
(3.55 GB) is built once under $TINA_CACHE_DIR/synthetic (about a minute).  The hf engine decodes the 48 x 3584 tokens
one forward per token, so its step takes minutes; --max-new-tokens and --steps bound the run, --timeout each engine.
The exit code is 1 when an engine that should have run failed or timed out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ENGINES = ("hf", "vllm")
RECIPE = "tina-open-rs2"
PHASES = ("generation", "reward", "logprob", "backward")
DRY = dict(shape="tiny", prompt_tokens=32, max_new_tokens=16, steps=2)


# ------------------------------------------------------------------------------------------------------ the setting
def setting(a) -> dict:
    """The recipe (tina-open-rs2, as a raw dict) with this benchmark's changes; see the module docstring."""
    import yaml

    from tina.config import resolve_recipe_path

    raw = yaml.safe_load(resolve_recipe_path(RECIPE).read_text())
    cuda = a.device == "cuda"
    raw["model"].update(
        name_or_path=str(a.model_folder), dtype="bfloat16" if cuda else "float32", attn_implementation=attention(a)
    )
    raw["data"] = dict(source=str(a.data), adapter="auto", system_prompt=None, template="tokenizer")
    raw["rollout"].update(
        backend=a.engine,
        max_new_tokens=a.max_new_tokens,
        check_engine=True,
        max_model_len=a.prompt_tokens + a.max_new_tokens,
    )
    if a.gpu_memory_utilization is not None:
        raw["rollout"]["gpu_memory_utilization"] = a.gpu_memory_utilization
    raw["train"].update(
        max_steps=a.steps, stop_step=None, save_steps=a.steps, probe_prompt="", device=a.device, report_to=[]
    )
    raw["cost"] = dict(
        device_name=device_name(a.device), num_devices=1, usd_per_device_hour=a.usd_per_device_hour or 0.0
    )
    return raw


def attention(a) -> str:
    """The recipe's flash_attention_2 where flash-attn and a GPU are there, else sdpa (or what --attn says)."""
    if a.attn != "auto":
        return a.attn
    flash = a.device == "cuda" and importlib.util.find_spec("flash_attn") is not None
    return "flash_attention_2" if flash else "sdpa"


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


# -------------------------------------------------------------------------------------------------- one engine (child)
class MemoryPoller:
    """Largest device memory in use (total - free, every process on the device), sampled every ``every`` seconds."""

    def __init__(self, every: float = 0.2):
        import torch

        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._torch = torch
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            free, total = self._torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free)
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def measure(a) -> dict:
    """Run `tina train` for one engine and read its timings back; runs in a subprocess of its own."""
    started = time.perf_counter()
    import torch

    import tina.rollout.engines as engines
    import tina.run as runmod
    from tina.config import load_config
    from tina.train import train

    cuda = a.device == "cuda"
    if cuda:
        torch.cuda.init()
    timed: dict[str, float] = {}

    def timing(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timed[name] = timed.get(name, 0.0) + time.perf_counter() - t

        return wrapper

    # open_engine imports these two at call time: wrapping them times the engine start and its canary, nothing else
    engines.make_engine = timing("engine_start", engines.make_engine)
    engines.start_up_check = timing("canary", engines.start_up_check)
    snapshots: list[dict] = []

    def snap(run, step):
        led = run.ledger
        snapshots.append(
            {
                "step": step,
                "phases": dict(led.seconds),
                "tokens_generated": led.tokens_generated,
                "tokens_trained": led.tokens_trained,
            }
        )

    enter, end_step = runmod.Run.__enter__, runmod.Run.end_step

    def enter_(self):
        snap(self, 0)  # after setup (model, engine, canary): the baseline of step 1
        return enter(self)

    def end_step_(self, step, *args, **kwargs):
        end_step(self, step, *args, **kwargs)
        snap(self, step + 1)

    runmod.Run.__enter__, runmod.Run.end_step = enter_, end_step_
    cfg = load_config(setting(a))
    run_dir = Path(a.run_dir)
    poller = MemoryPoller() if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        if poller:
            poller.__enter__()
        result = train(cfg, run_dir, progress=False, started_at=started)
    finally:
        if poller:
            poller.__exit__()
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    ledger = json.loads((run_dir / "ledger.json").read_text())
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated() / 1e9, "torch.cuda.max_memory_allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, "max RSS (ru_maxrss)"
    steps = []
    for before, after, m in zip(snapshots, snapshots[1:], metrics, strict=False):
        phases = {p: after["phases"][p] - before["phases"][p] for p in PHASES}
        steps.append(
            {
                "step": m["step"],
                "seconds": m["step_seconds"],
                **{p: round(v, 4) for p, v in phases.items()},
                "other": round(m["step_seconds"] - sum(phases.values()), 4),
                "tokens_generated": after["tokens_generated"] - before["tokens_generated"],
                "tokens_trained": after["tokens_trained"] - before["tokens_trained"],
                "completion_length": m.get("completion_length"),
                "truncated_ratio": m.get("truncated_ratio"),
                "loss": m.get("loss"),
                "rollout/logp_diff_mean": m.get("rollout/logp_diff_mean"),
            }
        )
    import transformers

    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    if a.engine == "vllm":
        import vllm

        versions["vllm"] = vllm.__version__
    return {
        "engine": a.engine,
        "status": "measured",
        "steps": steps,
        "peak_memory_gb": round(peak, 3),
        "peak_memory_kind": kind,
        "device_used_peak_gb": round(poller.peak / 1e9, 3) if poller else None,
        "engine_start_seconds": timed.get("engine_start"),
        "canary_seconds": timed.get("canary"),
        "setup_seconds": snapshots[0]["phases"]["setup"] if snapshots else None,
        "ledger": ledger,
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "versions": versions,
        "device": device_name(a.device),
        "config": {k: cfg_section(cfg, k) for k in ("model", "lora", "rollout", "algorithm", "train")},
    }


def cfg_section(cfg, name: str) -> dict:
    import dataclasses

    return dataclasses.asdict(getattr(cfg, name))


def summarise(res: dict) -> dict:
    """The table's numbers: means over the steps after the first (the first is warm-up), when there are any."""
    steps = res["steps"]
    steady = steps[1:] or steps
    n = len(steady)
    gen = sum(s["generation"] for s in steady)
    trained = sum(s["logprob"] + s["backward"] for s in steady)
    lengths = [s["completion_length"] for s in steady if s["completion_length"] is not None]
    out = {
        "steady_steps": [s["step"] for s in steady],
        "warmup_included": len(steps) == 1,
        "seconds_per_step": sum(s["seconds"] for s in steady) / n,
        **{f"{p}_seconds": sum(s[p] for s in steady) / n for p in (*PHASES, "other")},
        "generation_tokens_per_second": sum(s["tokens_generated"] for s in steady) / gen if gen else None,
        "train_tokens_per_second": sum(s["tokens_trained"] for s in steady) / trained if trained else None,
        "completion_tokens_mean": statistics.mean(lengths) if lengths else None,
        "truncated_ratio": statistics.mean(s["truncated_ratio"] for s in steady if s["truncated_ratio"] is not None)
        if lengths
        else None,
        "first_step_seconds": steps[0]["seconds"],
    }
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


# ------------------------------------------------------------------------------------------------- driver (parent)
def unmeasured(engine: str, reason: str) -> dict:
    return {"engine": engine, "status": f"unmeasured: {reason}"}


def run_engine(a, engine: str, work: Path) -> dict:
    """One engine in a subprocess; its result, or 'unmeasured: failed ...' with the error's last line."""
    out, run_dir, log = work / f"{engine}.json", work / engine / "run", work / f"{engine}.log"
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        engine,
        "--model-folder",
        str(a.model_folder),
        "--data",
        str(a.data),
        "--run-dir",
        str(run_dir),
        "--result",
        str(out),
        "--device",
        a.device,
        "--steps",
        str(a.steps),
        "--max-new-tokens",
        str(a.max_new_tokens),
        "--prompt-tokens",
        str(a.prompt_tokens),
        "--attn",
        a.attn,
    ]
    if a.gpu_memory_utilization is not None:
        cmd += ["--gpu-memory-utilization", str(a.gpu_memory_utilization)]
    if a.usd_per_device_hour:
        cmd += ["--usd-per-device-hour", str(a.usd_per_device_hour)]
    where = f"log: {log}" if a.keep else "--keep DIR keeps its log"
    start = time.perf_counter()
    with open(log, "w") as fh:
        try:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=a.timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            return unmeasured(engine, f"timed out after {a.timeout:.0f} s ({where})")
    res = json.loads(out.read_text()) if out.is_file() else None
    if not rc and res is not None and res.get("status") == "measured" and not res.get("steps"):
        res = {"status": "failed", "error": "the run completed no step"}
    if rc or res is None or res.get("status") != "measured":
        tail = [x for x in log.read_text(errors="replace").splitlines() if x.strip()] if log.is_file() else []
        print(f"{engine} failed; the last lines of its log:\n" + "\n".join(tail[-30:]), file=sys.stderr)
        why = (res or {}).get("error") or (tail[-1] if tail else f"exit code {rc}")
        return unmeasured(engine, f"failed: {why[:300]} ({where})")
    res["wall_seconds"] = round(time.perf_counter() - start, 2)
    res["summary"] = summarise(res)
    return res


def table(rows: list[dict], price: float | None) -> str:
    """The markdown table: one row per engine, '-' and the reason for an unmeasured one."""
    device_col = any(r.get("device_used_peak_gb") is not None for r in rows)  # measured on a GPU
    head = [
        "engine",
        "s/step",
        "generation s",
        "log-prob s",
        "backward s",
        "gen tokens/s",
        "train tokens/s",
        "peak memory (GB)",
    ]
    head += ["device in use, peak (GB)"] if device_col else []
    head += ["completion tokens (mean)", "engine start s", "canary s"]
    head += [f"USD/step at ${price:g}/h"] if price else []
    head.append("status")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v, digits=2):
        return "-" if v is None else f"{v:,.{digits}f}"

    for r in rows:
        s = r.get("summary")
        if s is None:
            lines.append("| " + " | ".join([r["engine"], *["-"] * (len(head) - 2), r["status"]]) + " |")
            continue
        status = "measured" + (
            " (1 step: includes warm-up)"
            if s["warmup_included"]
            else f" (steps {','.join(map(str, s['steady_steps']))}; step 1 = warm-up, excluded)"
        )
        cells = [
            r["engine"],
            f(s["seconds_per_step"]),
            f(s["generation_seconds"]),
            f(s["logprob_seconds"]),
            f(s["backward_seconds"]),
            f(s["generation_tokens_per_second"], 0),
            f(s["train_tokens_per_second"], 0),
            f(r["peak_memory_gb"]),
        ]
        cells += [f(r.get("device_used_peak_gb"))] if device_col else []
        cells += [f(s["completion_tokens_mean"], 0), f(r["engine_start_seconds"]), f(r["canary_seconds"])]
        cells += [f(s["seconds_per_step"] * price / 3600, 4)] if price else []
        cells.append(status)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--shape",
        choices=["qwen2-1.5b", "tiny"],
        default=None,
        help="model shape (default qwen2-1.5b; tiny with --dry)",
    )
    parser.add_argument("--engines", default="hf,vllm", help="comma-separated: hf, vllm (default both)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="GRPO steps per engine (default 2: the first is warm-up, the table shows the rest)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="completion budget (default 3584, 16 --dry)")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="prompt length (default 200, 32 --dry)")
    parser.add_argument(
        "--device", choices=["auto", "cuda", "cpu"], default=None, help="default: cuda where available (cpu with --dry)"
    )
    parser.add_argument("--dry", action="store_true", help="CPU plumbing check: tiny shape, short prompts, few tokens")
    parser.add_argument(
        "--attn",
        choices=["auto", "sdpa", "eager", "flash_attention_2"],
        default="auto",
        help="attention (default: the recipe's flash_attention_2 where flash-attn is installed on a GPU, else sdpa)",
    )
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=None,
        help="vllm's share of the GPU (default: tina's rollout.gpu_memory_utilization, 0.3)",
    )
    parser.add_argument(
        "--usd-per-device-hour",
        type=float,
        default=None,
        help="a price, to add measured seconds x price per step to the table",
    )
    parser.add_argument("--json", default=None, help="write every result (all steps, ledgers, settings) here")
    parser.add_argument("--keep", default=None, help="keep the runs and logs in this folder (default: a temp folder)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per engine before it is given up")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)  # internal: one engine, in a subprocess
    parser.add_argument("--model-folder", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    a = parser.parse_args(argv)

    if a.worker:
        a.engine = a.worker
        try:
            res = measure(a)
        except BaseException as exc:  # written for the parent, then re-raised (full traceback in the log)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            Path(a.result).write_text(
                json.dumps({"engine": a.engine, "status": "failed", "error": f"{type(exc).__name__}: {first}"})
            )
            raise
        Path(a.result).write_text(json.dumps(res))
        return 0

    import torch

    cuda = torch.cuda.is_available()
    a.device = a.device or ("cpu" if a.dry else "auto")
    if a.device == "auto":
        a.device = "cuda" if cuda else "none"
    a.shape = a.shape or (DRY["shape"] if a.dry else "qwen2-1.5b")
    a.steps = a.steps or (DRY["steps"] if a.dry else 2)
    a.max_new_tokens = a.max_new_tokens or (DRY["max_new_tokens"] if a.dry else 3584)
    a.prompt_tokens = a.prompt_tokens or (DRY["prompt_tokens"] if a.dry else 200)
    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        parser.error(f"--engines: unknown {', '.join(bad)} (choose from {', '.join(ENGINES)})")
    if a.device == "cuda" and not cuda:
        parser.error("--device cuda: no CUDA GPU is visible")

    rows: list[dict] = []
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="gpu_step-"))
    work.mkdir(parents=True, exist_ok=True)
    header = ""
    try:
        if a.device == "none":
            rows = [
                unmeasured(e, "no CUDA GPU (--dry runs the CPU plumbing check; --device cpu forces the CPU)")
                for e in engines
            ]
        else:
            from transformers import AutoTokenizer

            from tina.synthetic import model_folder, write_problems

            t = time.perf_counter()
            a.model_folder = model_folder(a.shape)
            built = time.perf_counter() - t
            tok = AutoTokenizer.from_pretrained(a.model_folder)
            a.data = write_problems(work / "problems.jsonl", tok, n=64, prompt_tokens=a.prompt_tokens)
            info = json.loads((a.model_folder / "tina_synthetic.json").read_text())
            a.engine = "hf"
            r = load_config_dict(setting(a))  # what every engine runs (but the backend)
            prompts = r.train.batch_size // r.rollout.num_generations * r.train.gradient_accumulation_steps
            where = "a CUDA GPU (named in --json)" if a.device == "cuda" else device_name(a.device)  # no CUDA here
            header = (
                f"One GRPO step of `tina train` at the {RECIPE} setting on a random-weight {a.shape} model "
                f"({millions(info['parameters'])} parameters; folder ready in {built:.1f} s): {prompts} prompts "
                f"x {r.rollout.num_generations} completions, {a.prompt_tokens} prompt tokens, up to "
                f"{a.max_new_tokens} new tokens, LoRA r={r.lora.r}, beta {r.algorithm.beta:g}, gradient "
                f"checkpointing {'on' if r.train.gradient_checkpointing else 'off'}, {r.model.dtype}, "
                f"{r.model.attn_implementation} attention, on {where}; {a.steps} step(s) per engine"
            )
            print(header, flush=True)
            for engine in engines:
                if engine == "vllm" and importlib.util.find_spec("vllm") is None:
                    rows.append(unmeasured(engine, "vLLM not installed"))
                    continue
                print(f"... {engine}", flush=True)
                rows.append(run_engine(a, engine, work))
                if a.json:  # after every engine, so a later crash or timeout keeps what was measured
                    write_json(a, header, rows)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(rows, a.usd_per_device_hour))
    if any(r.get("summary") for r in rows):
        print(
            "\nWorst case: a random-weight model almost never samples EOS, so completions run to the token budget; "
            "rewards are 0 (the loss is ~0) but every pass runs at full cost.  Step 1 (warm-up) is excluded when "
            "more than one step ran; every step is in --json."
        )
    for r in rows:
        if r.get("summary") and not a.dry:
            print(
                f"{r['engine']}: {r['device']}; to price a run on this hardware, e.g. `tina check {RECIPE} --set "
                f"cost.seconds_per_step={r['summary']['seconds_per_step']:.0f} --set cost.num_devices=1` (one "
                "device, full-length completions: an upper bound for this model size and token budget)"
            )
    if a.json:
        write_json(a, header, rows)
    return (
        1
        if any(
            r["status"].startswith("unmeasured: failed") or r["status"].startswith("unmeasured: timed out")
            for r in rows
        )
        else 0
    )


def load_config_dict(raw: dict):
    from tina.config import load_config

    return load_config(raw)


def millions(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def write_json(a, header: str, rows: list[dict]) -> None:
    settings = {
        k: getattr(a, k)
        for k in (
            "shape",
            "device",
            "steps",
            "max_new_tokens",
            "prompt_tokens",
            "attn",
            "gpu_memory_utilization",
            "usd_per_device_hour",
            "dry",
        )
    }
    Path(a.json).write_text(
        json.dumps({"recipe": RECIPE, "settings": settings, "header": header, "results": rows}, indent=2, default=str)
    )


if __name__ == "__main__":
    sys.exit(main())
