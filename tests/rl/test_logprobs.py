"""Token log-probs under left padding equal those of the unpadded sequence (positions skip the padding)."""

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
