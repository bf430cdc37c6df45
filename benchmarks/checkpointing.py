"""Gradient checkpointing or the shared-prompt pass, at the Qwen2-1.5B shape: which one a tina-* recipe should use.

The two do not combine: the shared-prompt pass (tina.rl.logprobs) runs each prompt once and hands its KV cache, with
gradients, to the G completions' forward, and gradient checkpointing recomputes each layer's forward in the backward,
where the cache would be written twice.  So a run has one or the other:

* checkpointing: every token's forward runs twice (once more in the backward), and only each layer's input is kept
  for the backward;
* shared prompt: (G-1)/G of the prompt tokens are not computed at all, but every layer keeps all its activations.

This script measures both on the exact Qwen2-1.5B layer shape (hidden 1536, intermediate 8960, 12/2 heads, vocab
151936) in float32 on the CPU, one LoRA loss pass (forward + backward through tina's own token_logprobs) of one prompt
group, each mode in its own process with 1 and 2 decoder layers: the difference between the two is one layer's
activation memory and time, which is then scaled to the model's 28 layers and to one loss pass of Tina's on one GPU
(its per-device batch: one group of G=6 at up to 3,584 completion tokens after a ~200-token prompt; bf16 = half of
fp32's bytes).  A linear extrapolation: attention's own buffers grow faster than the token count, so it is a floor.
Memory is what autograd keeps for the backward (the bytes of every distinct storage saved, through
``saved_tensors_hooks``; checkpointing recomputes one layer at a time on top of that).

    python benchmarks/checkpointing.py                     # P=128, T=256, G=6 (about two minutes on 2 cores)
    python benchmarks/checkpointing.py --prompt 256 --completion 512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

LAYERS_REAL = 28


def worker(mode: str, layers: int, prompt: int, completion: int, group: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tina.rl.logprobs import can_share_prompts, token_logprobs
    from tina.synthetic import SHAPES

    torch.manual_seed(0)
    shape = {k: v for k, v in SHAPES["qwen2-1.5b"].items() if k not in ("architectures", "model_type", "dtype")}
    config = Qwen2Config(**{**shape, "num_hidden_layers": layers, "max_window_layers": layers})
    model = Qwen2ForCausalLM(config)
    model = get_peft_model(
        model,
        LoraConfig(
            r=32,
            lora_alpha=128,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    if mode == "checkpointing":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    prompt_ids = torch.randint(0, 151000, (1, prompt)).repeat(group, 1)  # [G, P] one prompt, G completions
    prompt_mask = torch.ones_like(prompt_ids)
    completion_ids = torch.randint(0, 151000, (group, completion))  # [G, T]
    completion_mask = torch.ones_like(completion_ids)
    shared = can_share_prompts(model, prompt_ids, group)
    storages: dict[int, int] = {}

    def pack(t):  # every tensor autograd keeps for the backward (checkpointing keeps only each layer's input)
        if isinstance(t, torch.Tensor) and t.device.type == "cpu":
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logp = token_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, group_size=group)
    logp.sum().backward()
    seconds = time.perf_counter() - start
    return {
        "mode": mode,
        "layers": layers,
        "shared_prompt": shared,
        "seconds": seconds,
        "activation_mb": sum(storages.values()) / 2**20,
    }


def run(mode: str, layers: int, a) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        mode,
        "--layers",
        str(layers),
        "--prompt",
        str(a.prompt),
        "--completion",
        str(a.completion),
        "--group",
        str(a.group),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--completion", type=int, default=256)
    parser.add_argument("--group", type=int, default=6)
    parser.add_argument("--worker", choices=["checkpointing", "shared"], help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, default=1, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.layers, a.prompt, a.completion, a.group)))
        return 0
    rows = {}
    for mode in ("checkpointing", "shared"):
        one, two = run(mode, 1, a), run(mode, 2, a)
        rows[mode] = {
            "shared": two["shared_prompt"],
            "layer_s": two["seconds"] - one["seconds"],
            "layer_mb": two["activation_mb"] - one["activation_mb"],
            "rest_s": 2 * one["seconds"] - two["seconds"],
        }
    tokens = a.group * (a.prompt + a.completion)
    tina_tokens = 6 * (200 + 3584)  # one loss pass of Tina's on one GPU: its per-device batch, G=6 x (~200 + 3,584)
    print(
        f"one loss pass of one prompt group: G={a.group}, prompt {a.prompt}, completion {a.completion} tokens "
        f"({tokens} tokens), Qwen2-1.5B layer shape, float32, CPU\n"
    )
    print(
        "| mode | shared-prompt pass | s per layer | activation MB per layer | per token (KB/layer) | 28 layers, "
        "one pass of Tina's (6 x 3,784 tokens), bf16 (GB) |"
    )
    print("|---|---|---|---|---|---|")
    for mode, r in rows.items():
        per_token_kb = r["layer_mb"] * 1024 / tokens
        tina_gb = per_token_kb * 1024 * LAYERS_REAL * tina_tokens / 2 / 2**30  # bf16: half of the fp32 bytes
        print(
            f"| {mode} | {'yes' if r['shared'] else 'no'} | {r['layer_s']:.2f} | {r['layer_mb']:.0f} | "
            f"{per_token_kb:.1f} | {tina_gb:.1f} |"
        )
    c, s = rows["checkpointing"], rows["shared"]
    print(
        f"\nshared / checkpointing: time per layer {s['layer_s'] / c['layer_s']:.2f}x, activation memory per layer "
        f"{s['layer_mb'] / max(c['layer_mb'], 1e-9):.1f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
