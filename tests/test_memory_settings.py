"""Model and memory settings on CPU: dtype, attention kernel, gradient checkpointing, accumulation, clipping, LoRA
targets.  Each either works (two real training steps on builtin:tiny-random) or fails with one clear line.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tina import cli
from tina.batch import MicroBatch
from tina.build import build_model
from tina.config import load_config
from tina.errors import ConfigError
from tina.ledger import Ledger
from tina.models import load_model_and_tokenizer
from tina.rl.logprobs import token_logprobs
from tina.rl.losses import LOSSES
from tina.rl.masks import mask_from_lengths
from tina.train import train, update

BASE = {
    "model": {"name_or_path": "builtin:tiny-random", "dtype": "float32", "attn_implementation": "sdpa"},
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    "data": {"source": "builtin:arith", "template": "tokenizer"},
    "rollout": {"num_generations": 2, "max_new_tokens": 8, "temperature": 1.0},
    "rewards": {"accuracy": {"weight": 1.0}, "format": {"weight": 1.0}},
    "train": {
        "max_steps": 2,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "lr_scheduler": "constant",
        "save_steps": 100,
        "device": "cpu",
        "probe_prompt": "",
    },
}


def recipe(**sections) -> dict:
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


def two_steps(tmp_path, **sections):
    cfg = load_config(recipe(**sections))
    result = train(cfg, tmp_path / "run", progress=False, keep_model=True)
    assert result.steps == 2
    for m in result.metrics:
        assert m["loss"] is not None and torch.isfinite(torch.tensor(m["loss"])), m
        assert not m.get("skipped"), m
    return result


# ----------------------------------------------------------------------------------------------------------- dtype
def test_bf16_on_cpu_trains(tmp_path):
    result = two_steps(tmp_path, model={"dtype": "bfloat16"})
    dtypes = {n: p.dtype for n, p in result.model.named_parameters()}
    assert dtypes["base_model.model.model.embed_tokens.weight"] == torch.bfloat16  # the frozen base is bf16
    assert result.base_digest_before == result.base_digest_after


def test_float16_on_cpu_is_a_clear_config_error(tmp_path):
    with pytest.raises(ConfigError, match="float16 is not supported on CPU"):
        load_config(recipe(model={"dtype": "float16"}))  # train.device=cpu: caught when the recipe is validated
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: float16 on device auto is legitimate here")
    cfg = load_config(recipe(model={"dtype": "float16"}, train={"device": "auto"}))  # auto -> cpu on this machine
    with pytest.raises(ConfigError, match="float16 is not supported on CPU; use float32 or bfloat16"):
        train(cfg, tmp_path / "run", progress=False)


def test_float16_through_the_cli_exits_2(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    import yaml

    path.write_text(yaml.safe_dump(recipe()))
    assert (
        cli.main(["train", str(path), "-o", str(tmp_path / "run"), "--no-progress", "--set", "model.dtype=float16"])
        == 2
    )
    err = capsys.readouterr().err
    assert "model.dtype: float16 is not supported on CPU" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------------- attention
def _batch(tokenizer, n=4, width=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = ["1+2-3=", "12+7-4= and more", "9-9+0=", "5+5-1="][:n]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    completion = torch.randint(5, tokenizer.vocab_size - 1, (n, width), generator=g)
    lengths = torch.tensor([6, 3, 1, 5][:n])
    return enc["input_ids"], enc["attention_mask"], completion, mask_from_lengths(lengths, width)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_eager_and_sdpa_give_the_same_log_probs(dtype):
    models = {}
    for attn in ("eager", "sdpa"):
        models[attn], tok = load_model_and_tokenizer(
            "builtin:tiny-random", dtype=dtype, attn_implementation=attn, device="cpu"
        )
    p, pm, c, cm = _batch(tok)
    with torch.no_grad():
        eager = token_logprobs(models["eager"], p, pm, c, cm)
        sdpa = token_logprobs(models["sdpa"], p, pm, c, cm)
    tol = 1e-5 if dtype == "float32" else 5e-2
    assert torch.allclose(eager * cm, sdpa * cm, atol=tol)


def test_two_steps_with_eager_attention(tmp_path):
    two_steps(tmp_path, model={"attn_implementation": "eager"})


# ----------------------------------------------------------------------------------------- gradient checkpointing
def _grads(model, batch, objective="grpo") -> dict[str, torch.Tensor]:
    p, pm, c, cm = batch
    model.zero_grad(set_to_none=True)
    logp = token_logprobs(model, p, pm, c, cm)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    LOSSES[objective](logp, logp.detach(), adv, cm).loss.backward()
    return {n: q.grad.detach().clone() for n, q in model.named_parameters() if q.requires_grad}


def _build(seed=0, **sections):
    torch.manual_seed(seed)
    model, tok, _ = build_model(load_config(recipe(**sections)))
    with torch.no_grad():  # LoRA B starts at zero, which would leave every lora_A gradient at zero
        g = torch.Generator().manual_seed(seed + 1)
        for name, q in model.named_parameters():
            if "lora_B" in name:
                q.copy_(torch.randn(q.shape, generator=g) * 0.05)
    return model, tok


def _checkpointing(model) -> bool:
    flag = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.2x name
    return bool(flag if flag is not None else model.is_gradient_checkpointing)


def test_gradient_checkpointing_gives_the_same_gradients():
    plain, tok = _build()
    ckpt, _ = _build(train={"gradient_checkpointing": True})
    assert _checkpointing(ckpt) and not _checkpointing(plain)
    batch = _batch(tok)
    a, b = _grads(plain, batch), _grads(ckpt, batch)
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    assert any(g.abs().sum() > 0 for n, g in a.items() if "lora_A" in n)


def test_two_steps_with_gradient_checkpointing(tmp_path):
    two_steps(tmp_path, train={"gradient_checkpointing": True})


# ---------------------------------------------------------------------------------------- gradient accumulation
def _micro_batches(model, tok, rows, adv, *, beta: float):
    p, pm, c, cm = _batch(tok)
    ref = None
    if beta > 0:
        with torch.no_grad(), model.disable_adapter():
            ref = token_logprobs(model, p, pm, c, cm)
    return [MicroBatch(p[r], pm[r], c[r], cm[r], adv[r], None, None if ref is None else ref[r]) for r in rows]


def _sgd_delta(model, micro_batches, cfg) -> dict[str, torch.Tensor]:
    """Parameter change of one update() with plain SGD at lr 1 (= minus the accumulated, clipped gradient)."""
    params = {n: q for n, q in model.named_parameters() if q.requires_grad}
    before = {n: q.detach().clone() for n, q in params.items()}
    out = update(model, micro_batches, cfg, torch.optim.SGD(list(params.values()), lr=1.0), Ledger())
    assert not out.get("skipped")
    delta = {n: params[n].detach() - before[n] for n in params}
    with torch.no_grad():
        for n, q in params.items():
            q.copy_(before[n])
    return delta


@pytest.mark.parametrize("objective", ["dapo", "grpo", "dr_grpo", "gspo"])
def test_gradient_accumulation_2_equals_one_double_batch(objective):
    """update() over 2 micro-batches (uneven token counts: 9 and 6) == update() over the whole batch of 4."""
    model, tok = _build()
    cfg = load_config(
        recipe(
            algorithm={"objective": objective, "beta": 0.04},
            train={"max_grad_norm": 0.0, "batch_size": 2, "gradient_accumulation_steps": 2},
        )
    )
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    whole = _sgd_delta(model, _micro_batches(model, tok, [slice(0, 4)], adv, beta=0.04), cfg)
    split = _sgd_delta(model, _micro_batches(model, tok, [slice(0, 2), slice(2, 4)], adv, beta=0.04), cfg)
    assert whole.keys() == split.keys()
    total = sum(d.abs().sum() for d in whole.values())
    assert total > 0
    for name in whole:
        assert torch.allclose(whole[name], split[name], atol=1e-7, rtol=1e-4), name


def test_two_steps_with_gradient_accumulation(tmp_path):
    result = two_steps(tmp_path, train={"batch_size": 2, "gradient_accumulation_steps": 2})
    assert all(m["tokens"] > 0 for m in result.metrics)


# --------------------------------------------------------------------------------------------------- clipping
def test_gradient_clipping_caps_the_update_norm():
    model, tok = _build()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    free = load_config(recipe(train={"max_grad_norm": 0.0}))  # 0 = no clipping
    capped = load_config(recipe(train={"max_grad_norm": 1e-3}))
    d_free = _sgd_delta(model, _micro_batches(model, tok, [slice(0, 4)], adv, beta=0.0), free)
    d_capped = _sgd_delta(model, _micro_batches(model, tok, [slice(0, 4)], adv, beta=0.0), capped)

    def norm(d):
        return torch.sqrt(sum((x.double() ** 2).sum() for x in d.values())).item()

    assert norm(d_free) > 1e-3
    assert norm(d_capped) == pytest.approx(1e-3, rel=1e-3)


# ----------------------------------------------------------------------------------------------------- LoRA targets
def test_lora_target_subset_and_all_linear():
    q_v, _ = _build(lora={"target_modules": ["q_proj", "v_proj"]})
    everything, _ = _build(lora={"target_modules": ["all-linear"]})
    q_v_names = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in q_v.named_parameters() if p.requires_grad}
    assert q_v_names == {"q_proj", "v_proj"}
    all_names = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in everything.named_parameters() if p.requires_grad}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= all_names


def test_unknown_lora_target_names_the_real_ones():
    with pytest.raises(
        ConfigError,
        match=r"lora.target_modules: c_attn not found in the model; its linear layers "
        r"are: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj",
    ):
        _build(lora={"target_modules": ["q_proj", "c_attn"]})


# ------------------------------------------------------------------------------------------------ flash-attention
@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed here")
def test_flash_attention_2_without_the_package_exits_2(tmp_path, capsys):
    import yaml

    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump(recipe(model={"attn_implementation": "flash_attention_2"}, train={"device": "auto"}))
    )
    assert cli.main(["check", str(path)]) == 0  # validates anywhere: the package is checked when the model loads
    capsys.readouterr()
    assert cli.main(["train", str(path), "-o", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "flash_attention_2 needs the flash-attn package" in err and "use sdpa or eager" in err
    assert "Traceback" not in err and err.strip().count("\n") == 0


def test_flash_attention_2_with_device_cpu_is_rejected_by_validation(capsys):
    with pytest.raises(ConfigError, match="flash_attention_2 needs a CUDA GPU but train.device is cpu"):
        load_config(recipe(model={"attn_implementation": "flash_attention_2"}))
    assert cli.main(["check", "tina-open-rs2", "--set", "train.device=cpu"]) == 2
    assert "flash_attention_2 needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("objective", ["dapo", "grpo", "bnpo", "gspo"])
def test_loss_passes_in_pieces_give_the_same_update(objective):
    """train.max_tokens_per_pass splits a micro-batch into row pieces for memory: the update does not change."""
    model, tok = _build()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    deltas = []
    for budget in (None, 1):  # 1 token: one prompt group (here one row, num_generations=2 but distinct prompts) a pass
        cfg = load_config(
            recipe(algorithm={"objective": objective}, train={"max_grad_norm": 0.0, "max_tokens_per_pass": budget})
        )
        deltas.append(_sgd_delta(model, _micro_batches(model, tok, [slice(0, 4)], adv, beta=0.0), cfg))
    whole, pieces = deltas
    assert sum(d.abs().sum() for d in whole.values()) > 0
    for name in whole:
        assert torch.allclose(whole[name], pieces[name], atol=1e-7, rtol=1e-4), name


def _update(model, mbs, cfg, optimizer, *, skip: bool, monkeypatch) -> dict:
    """update() with groups without signal left out of the loss pass (tina's default) or not (the recipe says so)."""
    cfg.train.skip_zero_advantage = skip
    return update(model, mbs, cfg, optimizer, Ledger())


@pytest.mark.parametrize("objective", ["grpo", "dr_grpo", "dapo", "bnpo", "gspo"])
def test_groups_without_signal_leave_the_loss_pass_and_the_update_is_the_same(objective, monkeypatch):
    """Without a KL term a completion with advantage 0 adds exactly 0 to the loss and its gradient: leaving its group
    out of the loss pass changes neither the update (every objective's normaliser counts it) nor the entropy."""
    model, tok = _build()
    cfg = load_config(recipe(algorithm={"objective": objective}, train={"max_grad_norm": 0.0}))
    adv = torch.tensor([1.0, -1.0, 0.0, 0.0])  # groups of 2: the second carries no signal
    p, pm, c, cm = _batch(tok)
    with torch.no_grad():
        engine = token_logprobs(model, p, pm, c, cm)  # an engine that serves the trainer's policy
    params = {n: q for n, q in model.named_parameters() if q.requires_grad}
    before = {n: q.detach().clone() for n, q in params.items()}
    results, calls = [], []
    real = MicroBatch.pieces

    def spy(self, *args):
        calls[-1].append(self.loss_mask.shape[0])
        return real(self, *args)

    monkeypatch.setattr(MicroBatch, "pieces", spy)
    for skip in (False, True):
        calls.append([])
        mbs = [MicroBatch(p, pm, c, cm, adv, None, None, engine_logp=engine, completion_mask=cm)]
        sgd = torch.optim.SGD(list(params.values()), lr=1.0)
        out = _update(model, mbs, cfg, sgd, skip=skip, monkeypatch=monkeypatch)
        results.append((out, {n: params[n].detach() - before[n] for n in params}, calls[-1]))
        with torch.no_grad():
            for n, q in params.items():
                q.copy_(before[n])
    (full, full_delta, full_rows), (lean, lean_delta, lean_rows) = results
    assert full_rows == [4] and lean_rows == [2]  # the loss pass saw half the rows
    assert full["loss/rows_left_out"] == 0 and lean["loss/rows_left_out"] == 0.5
    assert sum(d.abs().sum() for d in full_delta.values()) > 0
    for name in full_delta:
        assert torch.allclose(full_delta[name], lean_delta[name], atol=1e-7, rtol=1e-5), name
    assert lean["loss"] == pytest.approx(full["loss"], rel=1e-5, abs=1e-7)
    assert lean["entropy"] == pytest.approx(full["entropy"], rel=1e-5)  # the left-out rows: the engine's log-probs


def test_a_step_without_any_signal_still_steps_the_optimizer_as_before(monkeypatch):
    """Every advantage 0: no loss pass at all, yet AdamW steps on zero gradients (its momentum moves the adapter)
    exactly as after a pass that computed them; with a KL term nothing is left out."""
    cfg = load_config(recipe(train={"max_grad_norm": 0.0}))
    finals = []
    for skip in (False, True):
        model, tok = _build()
        p, pm, c, cm = _batch(tok)
        params = [q for q in model.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-2)
        for adv in (torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.zeros(4)):
            opt.zero_grad(set_to_none=True)
            out = _update(
                model, [MicroBatch(p, pm, c, cm, adv, None, None)], cfg, opt, skip=skip, monkeypatch=monkeypatch
            )
        assert out["loss/rows_left_out"] == (1.0 if skip else 0.0) and out["loss"] == 0.0 and not out["skipped"]
        finals.append([q.detach().clone() for q in params])
    for a, b in zip(*finals, strict=True):
        assert torch.equal(a, b)
    model, tok = _build()
    kl = load_config(recipe(algorithm={"beta": 0.04}))
    mbs = _micro_batches(model, tok, [slice(0, 4)], torch.zeros(4), beta=0.04)
    out = update(model, mbs, kl, torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=1.0), Ledger())
    assert out["loss/rows_left_out"] == 0.0
