"""Perplexity against transformers' loss on the same documents."""

import math

import pytest
import torch

from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.formats.hf import load_model
from gpt2tune.inference.evaluate import evaluate, windows

EOT = 50256


def _hf_doc_loss_sum(hf, ids: list[int]) -> tuple[float, int]:
    with torch.no_grad():
        out = hf(torch.tensor([ids]), labels=torch.tensor([ids]))
    n = len(ids) - 1
    return out.loss.item() * n, n


def test_perplexity_equals_transformers_per_document(tiny_hf):
    path, hf = tiny_hf
    tok = Tokenizer()
    texts = [
        "The cat sat on the mat.",
        "A longer document, with punctuation; and more words.",
        "Short",
    ]
    docs = [tok.encode(t) + [EOT] for t in texts]
    total, count = 0.0, 0
    for d in docs:  # each document alone: no context from the others
        s, n = _hf_doc_loss_sum(hf, d)
        total, count = total + s, count + n
    res = evaluate(load_model(path), docs, batch_size=2)
    assert res.tokens == count
    assert res.loss == pytest.approx(total / count, abs=1e-5)
    assert res.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)


@pytest.mark.parametrize("stride", [1, 16, 40, 64])
def test_sliding_window_scores_every_token_once(stride):
    doc = list(range(1000, 1200))
    seen = []
    for inp, tgt in windows(doc, 64, stride):
        assert len(inp) <= 64
        for i, t in enumerate(tgt):
            if t != -100:
                assert inp[i] == t - 1  # position i predicts the next token
                if t - 1000 > 64:  # once the doc is longer than the window, context >= 64 - stride
                    assert i >= min(64 - stride, 63) - 1
                seen.append(t)
    assert seen == doc[1:]


def test_long_document_with_stride_matches_transformers_windows(tiny_hf):
    path, hf = tiny_hf
    torch.manual_seed(0)
    doc = torch.randint(0, 50257, (150,)).tolist()
    # reference: HF on each window, summing the loss of the newly scored tokens
    total, count = 0.0, 0
    for inp, tgt in windows(doc, 64, 32):
        with torch.no_grad():
            logits = hf(torch.tensor([inp])).logits[0]
        t = torch.tensor(tgt)
        total += torch.nn.functional.cross_entropy(
            logits, t, ignore_index=-100, reduction="sum"
        ).item()
        count += int((t != -100).sum())
    res = evaluate(load_model(path), [doc], stride=32, batch_size=3)
    assert count == 149 and res.tokens == 149
    assert res.loss == pytest.approx(total / count, abs=1e-5)
