"""Token log-probs under left padding equal those of the unpadded sequence (positions skip the padding)."""

import pytest
import torch

from tina.models import load_model_and_tokenizer
from tina.rl.logprobs import position_ids_from_mask, selective_log_softmax, token_logprobs


def test_selective_log_softmax_matches_full_log_softmax():
    logits = torch.randn(2, 3, 5)
    index = torch.tensor([[0, 4, 2], [1, 1, 3]])
    expected = torch.log_softmax(logits, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(selective_log_softmax(logits, index), expected, atol=1e-6)


def test_position_ids_skip_left_padding():
    assert position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1]])).tolist() == [[0, 0, 0, 1, 2]]


def test_left_padded_logprobs_equal_unpadded():
    model, tok = load_model_and_tokenizer("builtin:tiny-random", dtype="float32", attn_implementation="eager",
                                          device="cpu")
    model.eval()
    short = tok("3+4-2", add_special_tokens=False)["input_ids"]
    long = tok("3+4-2 and more", add_special_tokens=False)["input_ids"]
    completion = torch.tensor([[5, 6, 7], [5, 6, 7]])
    pad = tok.pad_token_id
    width = len(long)
    prompt_ids = torch.tensor([[pad] * (width - len(short)) + short, long])
    prompt_mask = torch.tensor([[0] * (width - len(short)) + [1] * len(short), [1] * width])
    cmask = torch.ones(2, 3)
    with torch.no_grad():
        batched = token_logprobs(model, prompt_ids, prompt_mask, completion, cmask)
        alone = token_logprobs(model, torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long),
                               completion[:1], cmask[:1])
    assert torch.allclose(batched[0], alone[0], atol=1e-5)


# ------------------------------------------------------------------------------------------ the lean output head
def _lora_model():
    from tina.models import attach_lora

    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer("builtin:tiny-random", dtype="float32", attn_implementation="eager",
                                          device="cpu")
    model = attach_lora(model, r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def _batch():
    g = torch.Generator().manual_seed(3)
    prompt_ids = torch.randint(3, 300, (4, 6), generator=g)
    prompt_mask = torch.ones(4, 6, dtype=torch.long)
    prompt_mask[0, :2] = 0
    completion_ids = torch.randint(3, 300, (4, 9), generator=g)
    mask = torch.ones(4, 9)
    mask[1, 5:] = 0
    mask[2, 1:] = 0
    return prompt_ids, prompt_mask, completion_ids, mask


def _value_and_grads(model, lean: bool, chunk_bytes: int):
    model.zero_grad(set_to_none=True)
    p, pm, c, m = _batch()
    logp = token_logprobs(model, p, pm, c, m, temperature=0.7, lean=lean, max_chunk_bytes=chunk_bytes)
    weights = torch.linspace(-1, 1, logp.numel()).view_as(logp)  # any upstream gradient
    (logp * m * weights).sum().backward()
    grads = {n: q.grad.clone() for n, q in model.named_parameters() if q.requires_grad}
    return logp * m, grads


@pytest.mark.parametrize("chunk_bytes", [300 * 4 * 3 * 5, 2**30])  # 5 rows per chunk, or all at once
def test_lean_log_probs_equal_the_full_computation_in_value_and_gradient(chunk_bytes):
    model = _lora_model()
    full, full_grads = _value_and_grads(model, lean=False, chunk_bytes=chunk_bytes)
    lean, lean_grads = _value_and_grads(model, lean=True, chunk_bytes=chunk_bytes)
    assert (lean - full).abs().max() < 1e-5
    assert full_grads.keys() == lean_grads.keys() and full_grads
    for name in full_grads:
        assert torch.allclose(lean_grads[name], full_grads[name], atol=1e-5, rtol=1e-4), name


def test_lean_head_is_swapped_back_and_skipped_when_the_head_trains():
    from tina.rl.logprobs import _transformers_model, selected_logprob_head

    model = _lora_model()
    head = _transformers_model(model).get_output_embeddings()
    p, pm, c, m = _batch()
    with torch.no_grad():
        token_logprobs(model, p, pm, c, m)
    assert _transformers_model(model).get_output_embeddings() is head  # restored after the forward
    head.weight.requires_grad_(True)  # a trained output head: the shortcut would drop its gradient
    with selected_logprob_head(model, c, m, 1.0, 2**20) as swapped:
        assert not swapped
    head.weight.requires_grad_(False)


def test_lean_path_never_builds_full_vocabulary_logits(monkeypatch):
    """The largest float tensor created in the lean pass is a chunk of logits, not [B, T, V]."""
    model = _lora_model()
    p, pm, c, m = _batch()
    vocab = _lora_model().config.vocab_size
    sizes = []
    real_linear = torch.nn.functional.linear

    def spy(x, w, b=None):
        out = real_linear(x, w, b)
        if out.shape[-1] == vocab:
            sizes.append(out.numel())
        return out

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    token_logprobs(model, p, pm, c, m, max_chunk_bytes=vocab * 4 * 3 * 4)  # 4 rows per chunk
    assert sizes and max(sizes) <= 4 * vocab  # never [B, T+1, V] = 4 * 10 * V


# ------------------------------------------------------------------------------------------------ shared prompts
def test_shared_prompt_pass_equals_the_full_computation_in_value_and_gradient():
    """Rows in groups of G completions of one prompt: the prompt runs once, its cache serves the G completions."""
    from tina.rl.logprobs import can_share_prompts

    model = _lora_model()
    g = torch.Generator().manual_seed(5)
    prompts = torch.randint(3, 300, (3, 7), generator=g)
    pmask = torch.ones(3, 7, dtype=torch.long)
    pmask[1, :3] = 0  # a left-padded prompt
    G = 4
    prompt_ids, prompt_mask = prompts.repeat_interleave(G, 0), pmask.repeat_interleave(G, 0)
    completions = torch.randint(3, 300, (3 * G, 6), generator=g)
    mask = torch.ones(3 * G, 6)
    mask[2, 3:] = 0
    mask[7, 1:] = 0
    assert can_share_prompts(model, prompt_ids, G) and not can_share_prompts(model, prompt_ids, 5)
    upstream = torch.linspace(-1, 1, mask.numel()).view_as(mask)
    results = []
    for group in (1, G):
        model.zero_grad(set_to_none=True)
        logp = token_logprobs(model, prompt_ids, prompt_mask, completions, mask, temperature=0.8, group_size=group)
        (logp * mask * upstream).sum().backward()
        results.append((logp * mask, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (full, full_grads), (shared, shared_grads) = results
    assert (full - shared).abs().max() < 1e-5
    for name in full_grads:
        assert torch.allclose(shared_grads[name], full_grads[name], atol=1e-5, rtol=1e-4), name
