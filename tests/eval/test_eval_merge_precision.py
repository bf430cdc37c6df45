"""The bf16 merge problem is gone: a LoRA update far below bfloat16's spacing is evaluated as the checkpoint it is.

The adapter: builtin:tiny-arith with a LoRA update whose size is 1e-5 of each adapted weight matrix (Frobenius norms),
as a low learning rate gives -- bfloat16 spaces numbers 2^-8 (about 4e-3) apart, so such an update is rounding noise
to a bf16 weight.

(a) the default `tina eval` (unmerged) serves exactly the unmerged PEFT model: its logits agree with a PeftModel built
    directly to LOGIT_TOLERANCE (relative), which is 10x smaller than the adapter's own effect on the logits (so the
    check tells "adapter applied" from "adapter dropped"), and its completions and verdicts are those of the direct
    model: greedy against transformers' own ``generate``, sampled against tina's keyed sampler on the direct model;
(b) ``--merge-adapters --dtype bfloat16`` is refused in one line (exit 2);
(c) ``--merge-adapters --dtype float32`` passes its check and gives the same verdicts as unmerged;
(d) why: merged into bf16 weights the update is lost (the weights that change at all change by a whole bf16 step,
    the rest not at all) and the logits move by far more than MERGE_TOLERANCE -- and by ~1000x more than the
    adapter's own effect -- while a float32 merge stays within both bounds.

(b) refuses by dtype rather than trusting the merge check's probe: in bf16 the unmerged reference rounds most of such
an update away too (its LoRA output is added into bf16 activations), so merged and unmerged bf16 logits can agree
while both have lost it.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from eval_util import LORA_TARGETS

from tina.cli import main
from tina.eval.swap import MERGE_SIGNAL_FRACTION, MERGE_TOLERANCE

UPDATE = 1e-5  # ||B A * alpha/r|| / ||W|| for every adapted matrix
LOGIT_TOLERANCE = 1e-6  # max |logit difference| / max |logit|, unmerged eval vs the direct PEFT model
N_PROBLEMS = 16
FLAGS = [
    "--model",
    "builtin:tiny-arith",
    "--benchmarks",
    "arith",
    "--limit",
    str(N_PROBLEMS),
    "--samples",
    "2",
    "--max-new-tokens",
    "32",
    "--no-progress",
]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def tiny_update(tmp_path_factory):
    """(adapter folder, fp32 base, tokenizer, rendered arith prompts as token ids)."""
    from peft import LoraConfig, get_peft_model

    from tina.eval.benchmarks import load_benchmark
    from tina.models import load_model_and_tokenizer
    from tina.prompts import render_prompt

    base, tokenizer = load_model_and_tokenizer("builtin:tiny-arith", dtype="float32", device="cpu")
    base.eval()
    model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    )
    gen = torch.Generator().manual_seed(0)
    ratios = []
    with torch.no_grad():
        for module in model.modules():
            if not (hasattr(module, "lora_B") and "default" in module.lora_B):
                continue
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            a.copy_(torch.randn(a.shape, generator=gen) / a.shape[1] ** 0.5)  # seeded: the same adapter every run
            b.copy_(torch.randn(b.shape, generator=gen))
            delta = module.get_delta_weight("default")
            b.mul_(UPDATE * module.base_layer.weight.norm() / delta.norm())
            ratios.append(float(module.get_delta_weight("default").norm() / module.base_layer.weight.norm()))
    assert len(ratios) == 4 * 7 and all(r == pytest.approx(UPDATE, rel=1e-3) for r in ratios)
    folder = tmp_path_factory.mktemp("tiny_update") / "checkpoint-1"
    model.save_pretrained(folder)
    rows = load_benchmark("arith", limit=N_PROBLEMS).rows
    prompts = [
        tokenizer(
            render_prompt(tokenizer, r["problem"], system_prompt=None, template="tokenizer"), add_special_tokens=False
        )["input_ids"]
        for r in rows
    ]
    return folder, base, tokenizer, prompts


def direct_peft(base, folder):
    from peft import PeftModel

    return PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).eval()


def probe_batch(tokenizer, prompts):
    """Prompts plus a worked answer (teacher forcing over a whole completion), left-padded: [B, T]."""
    from tina.rollout.base import left_pad

    answer = tokenizer("<think>\n3+4=7\n7-2=5\n</think>\n\\boxed{5}", add_special_tokens=False)["input_ids"]
    ids, mask = left_pad([p + answer for p in prompts[:8]], tokenizer.pad_token_id)
    return ids, mask


def logits_of(model, ids, mask) -> torch.Tensor:
    from tina.rl.logprobs import position_ids_from_mask

    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits.float()
    return out[mask.bool()]  # [real tokens, V]: padding positions left out


def records(out):
    lines = (out / "samples.jsonl").read_text().splitlines()
    return {(r["problem_id"], r["sample"]): r for r in map(json.loads, lines)}


@pytest.fixture(scope="module")
def unmerged(tiny_update, tmp_path_factory):
    """The default `tina eval` of the adapter, sampled (T=0.6, seeded) and greedy."""
    folder = tiny_update[0]
    outs = {}
    for name, temperature in (("sampled", "0.6"), ("greedy", "0")):
        out = tmp_path_factory.mktemp(f"unmerged_{name}")
        assert (
            main(
                [
                    "eval",
                    "--adapter",
                    str(folder),
                    "--temperature",
                    temperature,
                    "--dtype",
                    "float32",
                    "--output-dir",
                    str(out),
                    *FLAGS,
                ]
            )
            == 0
        )
        outs[name] = out
    return outs


def test_a_unmerged_eval_serves_exactly_the_peft_model(tiny_update):
    """The very model object `tina eval` generates with (its Server, after serving the base first) vs PeftModel."""
    from tina.eval.candidates import BASE, Candidate
    from tina.eval.options import EvalOptions
    from tina.eval.serving import open_server

    folder, base, tokenizer, prompts = tiny_update
    ids, mask = probe_batch(tokenizer, prompts)
    reference = logits_of(direct_peft(base, folder), ids, mask)
    plain = logits_of(base, ids, mask)
    effect = relative(plain, reference)  # what the adapter does to the logits
    assert effect > 10 * LOGIT_TOLERANCE, effect  # so the tolerance can tell the adapter from no adapter

    opts = EvalOptions(model="builtin:tiny-arith", dtype="float32", device="cpu", benchmarks=["arith"])
    server = open_server(opts, "builtin:tiny-arith", [Candidate("checkpoint-1", folder, 1)])
    with server.serve(BASE) as engine:
        assert relative(logits_of(engine.model, ids, mask), plain) <= LOGIT_TOLERANCE  # the base, adapter off
    with server.serve(Candidate("checkpoint-1", folder, 1)) as engine:
        served = logits_of(engine.model, ids, mask)
    assert relative(served, reference) <= LOGIT_TOLERANCE
    assert next(engine.model.parameters()).dtype == torch.float32
    with server.serve(BASE) as engine:  # and back: the base weights were never touched
        assert relative(logits_of(engine.model, ids, mask), plain) <= LOGIT_TOLERANCE


def test_a_unmerged_eval_verdicts_are_the_direct_models(tiny_update, unmerged):
    from tina.eval.benchmarks import load_benchmark
    from tina.eval.options import EvalOptions
    from tina.eval.protocol import eval_sampling, stream_key
    from tina.grading import grade_many
    from tina.rollout import HFEngine

    folder, base, tokenizer, prompts = tiny_update
    rows = load_benchmark("arith", limit=N_PROBLEMS).rows
    golds = [r["answer"] for r in rows]
    model = direct_peft(base, folder)

    # greedy: transformers' own generate on the directly built PEFT model, one prompt at a time (no padding)
    got = records(unmerged["greedy"])
    texts = []
    for p in prompts:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([p]),
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                do_sample=False,
                max_new_tokens=32,
                eos_token_id=2,
                pad_token_id=0,
            )
        texts.append(tokenizer.decode(out[0, len(p) :], skip_special_tokens=True))
    verdicts = grade_many(texts, golds, task="math")
    for i, row in enumerate(rows):
        for j in range(2):
            rec = got[(row["id"], j)]
            assert rec["completion"] == texts[i], (row["id"], rec["completion"], texts[i])
            assert rec["correct"] == verdicts[i].correct
    # real answers, not degenerate text: every completion is the warm-start's worked form with a boxed answer, and
    # a fair share is right (the tiny model gets about half of arith right; 7/16 here)
    assert all("</think>" in t and "\\boxed{" in t for t in texts), texts
    assert sum(v.correct for v in verdicts) >= N_PROBLEMS // 4

    # sampled: tina's keyed sampler (the streams the protocol names) on the directly built model
    got = records(unmerged["sampled"])
    sampling = eval_sampling(EvalOptions(samples=2, temperature=0.6, max_new_tokens=32))
    rollout = HFEngine(model, tokenizer).generate(
        prompts, sampling, keys=[stream_key(0, "arith", i) for i in range(len(prompts))]
    )
    verdicts = grade_many(
        rollout.texts, [g for g in golds for _ in range(2)], task="math", finished=(~rollout.truncated).tolist()
    )
    for i, row in enumerate(rows):
        for j in range(2):
            rec = got[(row["id"], j)]
            assert rec["completion"] == rollout.texts[2 * i + j]
            assert rec["correct"] == verdicts[2 * i + j].correct


def test_b_merging_into_bfloat16_is_refused(tiny_update, tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--adapter",
                str(tiny_update[0]),
                "--merge-adapters",
                "--dtype",
                "bfloat16",
                "--output-dir",
                str(out),
                *FLAGS,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("tina eval: error: --merge-adapters merges into bfloat16")
    assert "--dtype float32" in err and not (out / "samples.jsonl").exists()


def test_c_merging_into_float32_passes_its_check_and_changes_no_verdict(tiny_update, unmerged, tmp_path):
    out = tmp_path / "merged"
    assert (
        main(
            [
                "eval",
                "--adapter",
                str(tiny_update[0]),
                "--merge-adapters",
                "--dtype",
                "float32",
                "--temperature",
                "0.6",
                "--output-dir",
                str(out),
                *FLAGS,
            ]
        )
        == 0
    )
    merged, reference = records(out), records(unmerged["sampled"])
    assert merged.keys() == reference.keys() and len(merged) == 2 * N_PROBLEMS
    assert {k: r["correct"] for k, r in merged.items()} == {k: r["correct"] for k, r in reference.items()}
    assert {k: r["completion"] for k, r in merged.items()} == {k: r["completion"] for k, r in reference.items()}
    protocol = json.loads((out / "results.json").read_text())["results"]["checkpoint-1"]["arith"]["protocol"]
    assert protocol["adapters"].startswith("merged into float32 weights, checked") and protocol["dtype"] == "float32"


def test_d_why_a_bfloat16_merge_evaluates_rounding_noise(tiny_update):
    from peft import PeftModel

    folder, base, tokenizer, prompts = tiny_update
    ids, mask = probe_batch(tokenizer, prompts)
    unmerged_model = direct_peft(base, folder)
    reference = logits_of(unmerged_model, ids, mask)  # the checkpoint as trained (float32, unmerged)
    effect = relative(logits_of(base, ids, mask), reference)  # the adapter's own effect on the logits

    merged32 = PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).merge_and_unload().eval()
    error32 = relative(logits_of(merged32, ids, mask), reference)
    base16 = copy.deepcopy(base).to(torch.bfloat16)
    merged16 = PeftModel.from_pretrained(copy.deepcopy(base16), str(folder)).merge_and_unload().eval()
    error16 = relative(logits_of(merged16, ids, mask), reference)
    print(
        f"adapter effect {effect:.2e}; merge error float32 {error32:.2e}, bfloat16 {error16:.2e} "
        f"(MERGE_TOLERANCE {MERGE_TOLERANCE:g}, LOGIT_TOLERANCE {LOGIT_TOLERANCE:g})"
    )
    assert error32 <= MERGE_TOLERANCE and error32 <= MERGE_SIGNAL_FRACTION * effect  # float32: the check passes
    assert error16 > MERGE_TOLERANCE and error16 > 100 * LOGIT_TOLERANCE  # bfloat16: far outside both bounds
    assert error16 > 100 * effect  # the merge's rounding swamps what the checkpoint changed

    # in the weights: the bf16 merge either drops the update or rounds it to a whole bf16 step
    params16 = dict(merged16.named_parameters())
    base16_params = dict(base16.named_parameters())
    changed = total = 0
    for name, module in unmerged_model.named_modules():
        if not (hasattr(module, "lora_B") and "default" in module.lora_B):
            continue
        key = name.removeprefix("base_model.model.") + ".weight"
        with torch.no_grad():
            applied = params16[key].float() - base16_params[key].float()  # what the merge added, in bf16
            wanted = module.get_delta_weight("default")
        changed += int((applied != 0).sum())
        total += applied.numel()
        assert float((applied - wanted).norm() / wanted.norm()) > 0.5  # most of the update is lost or distorted
    assert changed / total < 0.05  # ~99.7% of the weights do not move at all
