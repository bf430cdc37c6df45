"""Token log-probs: left padding, the lean head, shared prompts, attention from lengths, and the sampled (top-k / top-p)
distribution."""

import math

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
    model, tok = load_model_and_tokenizer(
        "builtin:tiny-random", dtype="float32", attn_implementation="eager", device="cpu"
    )
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
        alone = token_logprobs(
            model, torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long), completion[:1], cmask[:1]
        )
    assert torch.allclose(batched[0], alone[0], atol=1e-5)


# ------------------------------------------------------------------------------------------ the lean output head
def _lora_model():
    from tina.models import attach_lora

    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer(
        "builtin:tiny-random", dtype="float32", attn_implementation="eager", device="cpu"
    )
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
def _plain_and_shared(model, prompt_ids, prompt_mask, completions, mask, group):
    """[(masked log-probs, LoRA gradients)] of the plain pass (group 1) and the shared-prompt pass (``group``), both
    at T=0.8 and backpropagated from the same fixed upstream weights."""
    upstream = torch.linspace(-1, 1, mask.numel()).view_as(mask)
    results = []
    for g in (1, group):
        model.zero_grad(set_to_none=True)
        logp = token_logprobs(model, prompt_ids, prompt_mask, completions, mask, temperature=0.8, group_size=g)
        (logp * mask * upstream).sum().backward()
        results.append((logp * mask, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    return results


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
    results = _plain_and_shared(model, prompt_ids, prompt_mask, completions, mask, G)
    (full, full_grads), (shared, shared_grads) = results
    assert (full - shared).abs().max() < 1e-5
    for name in full_grads:
        assert torch.allclose(shared_grads[name], full_grads[name], atol=1e-5, rtol=1e-4), name


def test_shared_prompt_pass_in_length_buckets_equals_the_full_computation(monkeypatch):
    """Completions of very different lengths run in two passes, each cut to its longest (the prompts' cache picked
    per row): the same values and gradients as one pass over the whole width, with fewer positions computed."""
    import tina.rl.logprobs as lp

    model = _lora_model()
    g = torch.Generator().manual_seed(7)
    G, width = 3, 12
    prompts = torch.randint(3, 300, (3, 7), generator=g)
    pmask = torch.ones(3, 7, dtype=torch.long)
    pmask[2, :4] = 0
    prompt_ids, prompt_mask = prompts.repeat_interleave(G, 0), pmask.repeat_interleave(G, 0)
    completions = torch.randint(3, 300, (3 * G, width), generator=g)
    lengths = torch.tensor([12, 2, 3, 1, 11, 2, 2, 3, 12])  # three long rows, in three different groups
    mask = (torch.arange(width)[None] < lengths[:, None]).float()
    buckets = lp.length_buckets(lengths)
    assert [(sorted(r.tolist()), w) for r, w in buckets] == [([0, 4, 8], 12), ([1, 2, 3, 5, 6, 7], 3)]
    widths = []
    real = lp._completion_pass

    def spy(model, head, cache, prefix, rows, width, *args):
        widths.append(width)
        return real(model, head, cache, prefix, rows, width, *args)

    monkeypatch.setattr(lp, "_completion_pass", spy)
    results = _plain_and_shared(model, prompt_ids, prompt_mask, completions, mask, G)
    assert widths == [12, 3]  # the shared path ran in two buckets
    (full, full_grads), (shared, shared_grads) = results
    assert (full - shared).abs().max() < 1e-5 and full.abs().sum() > 0
    for name in full_grads:
        assert torch.allclose(shared_grads[name], full_grads[name], atol=1e-5, rtol=1e-4), name
    assert len(lp.length_buckets(torch.tensor([12, 11, 12, 10]))) == 1  # too little padding to pay for a pass


# ------------------------------------------------------------------------------- attention from lengths, loss mask
def _grouped_batch():
    g = torch.Generator().manual_seed(5)
    prompts = torch.randint(3, 300, (2, 7), generator=g)
    pmask = torch.ones(2, 7, dtype=torch.long)
    pmask[1, :3] = 0
    completions = torch.randint(3, 300, (4, 6), generator=g)
    cmask = torch.ones(4, 6)
    cmask[1, 4:] = 0
    cmask[3, 2:] = 0
    return prompts.repeat_interleave(2, 0), pmask.repeat_interleave(2, 0), completions, cmask


@pytest.mark.parametrize("path", ["plain", "lean", "shared"])
def test_a_loss_mask_with_holes_leaves_the_other_tokens_log_probs_unchanged(path):
    """The attention comes from the completion mask (lengths): dropping tokens from the loss mask (holes, a zero row)
    must not change any other token's log-prob -- the later tokens still see the dropped ones."""
    model = _lora_model()
    p, pm, c, cmask = _grouped_batch()
    holes = cmask.clone()
    holes[0, 1] = holes[2, 0] = 0  # tokens a masking rollout correction dropped
    holes[1] = 0  # an ungradable completion
    kw = dict(temperature=0.8, lean=path != "plain", group_size=2 if path == "shared" else 1)
    with torch.no_grad():
        full = token_logprobs(model, p, pm, c, cmask, **kw)
        holey = token_logprobs(model, p, pm, c, cmask, loss_mask=holes, **kw)
    assert ((holey - full).abs() * holes).max() < 1e-6
    if path != "plain":
        assert torch.all(holey[holes == 0] == 0)  # the lean head computes the loss positions only


def test_a_completion_mask_with_holes_is_refused():
    model = _lora_model()
    p, pm, c, cmask = _grouped_batch()
    holes = cmask.clone()
    holes[0, 1] = 0
    with pytest.raises(ValueError, match="must come from the completions' lengths"):
        token_logprobs(model, p, pm, c, holes)


# ----------------------------------------------------------------------------- the sampled distribution: top-k/p
def _nucleus_by_hand(row: list[float], top_k: int, top_p: float) -> set[int]:
    """Top-k (ties with the k-th kept), then the smallest set of the largest probabilities whose mass reaches top_p."""
    order = sorted(range(len(row)), key=lambda v: -row[v])
    if top_k:
        kth = row[order[top_k - 1]]
        order = [v for v in order if row[v] >= kth]
    z = sum(math.exp(row[v]) for v in order)
    kept, mass = set(), 0.0
    for v in order:
        if mass >= top_p:
            break
        kept.add(v)
        mass += math.exp(row[v]) / z
    return kept


@pytest.mark.parametrize("top_k, top_p", [(0, 0.9), (5, 1.0), (5, 0.9)])
def test_truncated_log_probs_are_renormalised_over_the_nucleus_by_hand(top_k, top_p):
    model = _lora_model()
    p, pm, c, cmask = _grouped_batch()
    with torch.no_grad():
        logits = model(
            input_ids=torch.cat([p, c], 1),
            attention_mask=torch.cat([pm, cmask.long()], 1),
            position_ids=position_ids_from_mask(torch.cat([pm, cmask.long()], 1)),
        ).logits
        got = {
            lean: token_logprobs(model, p, pm, c, cmask, temperature=0.3, top_k=top_k, top_p=top_p, lean=lean)
            for lean in (True, False)
        }
    scaled = (logits[:, p.shape[1] - 1 : -1].float() / 0.3).double()  # [4, 6, V]: position t predicts token t
    checked = 0
    for i in range(4):
        for t in range(int(cmask[i].sum())):
            row = scaled[i, t].tolist()
            kept = _nucleus_by_hand(row, top_k, top_p) | {int(c[i, t])}  # the sampled token is always in support
            expected = row[int(c[i, t])] - math.log(sum(math.exp(row[v]) for v in kept))
            assert got[True][i, t].item() == pytest.approx(expected, abs=2e-5)
            assert got[False][i, t].item() == pytest.approx(expected, abs=2e-5)
            checked += len(kept) < len(row)
    assert checked > 10  # the truncation really removed tokens
    untruncated = token_logprobs(model, p, pm, c, cmask, temperature=0.3).detach()
    assert ((got[True] - untruncated).abs() * cmask).max() > 1e-3


@pytest.mark.parametrize("chunk_bytes", [300 * 4 * 10 * 5, 2**30])  # 5 rows per chunk, or all at once
def test_lean_equals_plain_in_value_and_gradient_with_top_k_and_top_p(chunk_bytes):
    model = _lora_model()
    p, pm, c, m = _batch()
    upstream = torch.linspace(-1, 1, m.numel()).view_as(m)
    results = {}
    for lean in (False, True):
        model.zero_grad(set_to_none=True)
        logp = token_logprobs(
            model, p, pm, c, m, temperature=0.5, top_k=20, top_p=0.8, lean=lean, max_chunk_bytes=chunk_bytes
        )
        (logp * m * upstream).sum().backward()
        results[lean] = (logp.detach() * m, {n: q.grad.clone() for n, q in model.named_parameters() if q.requires_grad})
    (plain, plain_grads), (lean, lean_grads) = results[False], results[True]
    assert (lean - plain).abs().max() < 1e-5
    for name in plain_grads:
        assert torch.allclose(lean_grads[name], plain_grads[name], atol=1e-5, rtol=1e-4), name
    model.zero_grad(set_to_none=True)
    untruncated = token_logprobs(model, p, pm, c, m, temperature=0.5)
    (untruncated * m * upstream).sum().backward()
    assert any(
        not torch.allclose(q.grad, lean_grads[n], atol=1e-4) for n, q in model.named_parameters() if q.requires_grad
    )  # the truncation changes the gradient (the softmax over the support only)


def test_shared_prompt_pass_equals_the_full_computation_with_top_p():
    model = _lora_model()
    p, pm, c, m = _grouped_batch()
    upstream = torch.linspace(-1, 1, m.numel()).view_as(m)
    results = []
    for group in (1, 2):
        model.zero_grad(set_to_none=True)
        logp = token_logprobs(model, p, pm, c, m, temperature=0.5, top_p=0.8, top_k=30, group_size=group)
        (logp * m * upstream).sum().backward()
        results.append((logp.detach() * m, {n: q.grad.clone() for n, q in model.named_parameters() if q.requires_grad}))
    (full, full_grads), (shared, shared_grads) = results
    assert (full - shared).abs().max() < 1e-5
    for name in full_grads:
        assert torch.allclose(shared_grads[name], full_grads[name], atol=1e-5, rtol=1e-4), name


def test_top_p_one_and_top_k_zero_change_nothing_bit_for_bit():
    model = _lora_model()
    p, pm, c, m = _batch()
    with torch.no_grad():
        for lean in (True, False):
            assert torch.equal(
                token_logprobs(model, p, pm, c, m, temperature=0.7, lean=lean),
                token_logprobs(model, p, pm, c, m, temperature=0.7, top_k=0, top_p=1.0, lean=lean),
            )
