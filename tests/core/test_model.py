"""Our GPT-2 against transformers' GPT2LMHeadModel on tiny random configs."""

import pytest
import torch
from checkpoints import make_hf_model

from gpt2tune.core.model import GPT2, GPT2Config, KVCache
from gpt2tune.formats.hf import load_model

CONFIGS = [
    dict(n_layer=2, n_head=3, n_embd=48),  # odd head count
    dict(n_layer=3, n_head=5, n_embd=80, n_inner=200),  # width not a power of two, custom MLP
    dict(n_layer=1, n_head=4, n_embd=64, layer_norm_epsilon=1e-6),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_logits_match_transformers(tmp_path, cfg):
    hf = make_hf_model(tmp_path, vocab_size=500, **cfg)
    ours = load_model(tmp_path)
    x = torch.randint(0, 500, (3, 40))
    with torch.no_grad():
        diff = (ours(x) - hf(x).logits).abs().max().item()
    assert diff <= 1e-5


def test_left_padded_batch_matches_transformers(tiny_hf):
    path, hf = tiny_hf
    ours = load_model(path)
    torch.manual_seed(1)
    lengths = [20, 13, 7]
    T = max(lengths)
    ids = torch.randint(0, 50257, (3, T))
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, T - n :] = 1
    ids = ids.masked_fill(mask == 0, 50256)
    with torch.no_grad():
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        ref = hf(ids, attention_mask=mask, position_ids=pos).logits
        got = ours(ids, attention_mask=mask)
        real = mask.bool()
        assert (got[real] - ref[real]).abs().max().item() <= 1e-5
        # and each padded row equals that sequence run alone, unpadded
        for i, n in enumerate(lengths):
            alone = ours(ids[i : i + 1, T - n :])
            assert (got[i, T - n :] - alone[0]).abs().max().item() <= 1e-5


def test_packed_examples_each_compute_as_transformers_computes_them_alone(tiny_hf):
    """Rows packed with several examples (segment ids): every token's logits equal transformers'
    for its example run alone (attention kept inside the example, positions restarting); the
    loss of the packed rows is the loss over the examples' tokens."""
    path, hf = tiny_hf
    ours = load_model(path)
    torch.manual_seed(2)
    lengths = [[9, 14, 5], [20, 3]]
    T = 30
    ids = torch.full((2, T), 50256)
    seg = torch.full((2, T), -1)
    examples = []
    for r, row in enumerate(lengths):
        at = 0
        for s_, n in enumerate(row):
            ex = torch.randint(0, 50257, (n,))
            ids[r, at : at + n], seg[r, at : at + n] = ex, s_
            examples.append((r, at, ex))
            at += n
    targets = torch.full((2, T), -100)
    total, count = 0.0, 0
    with torch.no_grad():
        h = ours.hidden_states(ids, segment_ids=seg)
        got = ours.lm_head(h)
        for r, at, ex in examples:
            ref = hf(ex.unsqueeze(0)).logits[0]
            assert (got[r, at : at + len(ex)] - ref).abs().max().item() <= 1e-5
            targets[r, at : at + len(ex) - 1] = ex[1:]
            total += hf(ex.unsqueeze(0), labels=ex.unsqueeze(0)).loss.item() * (len(ex) - 1)
            count += len(ex) - 1
        packed = ours.loss(ids, targets, segment_ids=seg).item()
        assert packed == pytest.approx(total / count, abs=1e-5)
        # without the segments the examples see each other, and the loss differs
        assert ours.loss(ids, targets).item() != pytest.approx(total / count, abs=1e-3)


def test_loss_matches_transformers(tiny_hf):
    path, hf = tiny_hf
    ours = load_model(path)
    x = torch.randint(0, 50257, (2, 30))
    targets = torch.cat([x[:, 1:], torch.full((2, 1), -100)], dim=1)
    with torch.no_grad():
        ref = hf(x, labels=x).loss
        assert abs(ours.loss(x, targets).item() - ref.item()) <= 1e-5
        # chunked LM head + loss is the same number
        assert abs(ours.loss(x, targets, chunk_size=7).item() - ref.item()) <= 1e-5


def test_chunked_loss_gradients_equal_plain(tiny_hf):
    path, _ = tiny_hf
    x = torch.randint(0, 50257, (2, 24))
    targets = torch.cat([x[:, 1:], torch.full((2, 1), -100)], dim=1)
    grads = []
    for chunk in (0, 10):
        m = load_model(path)
        m.loss(x, targets, chunk_size=chunk).backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_kv_cache_incremental_equals_full_forward(tiny_hf):
    path, _ = tiny_hf
    m = load_model(path)
    x = torch.randint(0, 50257, (2, 25))
    with torch.no_grad():
        full = m(x)
        cache = KVCache(m.config, 2, 25)
        parts = [m(x[:, :10], cache=cache)]
        for t in range(10, 25):
            parts.append(m(x[:, t : t + 1], cache=cache))
        inc = torch.cat(parts, dim=1)
    assert (full - inc).abs().max().item() <= 1e-5


def test_lm_head_is_tied_to_token_embedding():
    m = GPT2(GPT2Config.from_preset("gpt2-nano"))
    assert m.lm_head.weight is m.transformer.wte.weight


def test_presets_parameter_counts():
    # the published sizes of GPT-2 (tied head counted once)
    assert GPT2Config.from_preset("gpt2").num_params() == 124_439_808
    assert GPT2Config.from_preset("gpt2-medium").num_params() == 354_823_168
    small = GPT2Config.from_preset("gpt2-micro")
    assert small.num_params() == GPT2(small).num_params()


def test_context_overflow_is_a_clear_error(tiny_hf):
    path, _ = tiny_hf
    m = load_model(path)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        m(torch.zeros(1, 65, dtype=torch.long))


def _gradients(path, x, targets, *, checkpointing: bool, dropout: bool, seed: int = 5):
    """Every parameter's gradient of one loss, with or without checkpointing and dropout."""
    m = load_model(path)
    m.train()
    if not dropout:
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
        for blk in m.transformer.h:
            blk.attn.attn_pdrop = 0.0
    m.gradient_checkpointing = checkpointing
    torch.manual_seed(seed)
    m.loss(x, targets).backward()
    return {n: p.grad.clone() for n, p in m.named_parameters()}


def test_gradient_checkpointing_gives_the_same_gradients(tiny_hf):
    x = torch.randint(0, 50257, (2, 24))
    targets = torch.cat([x[:, 1:], torch.full((2, 1), -100)], dim=1)
    grads = [
        _gradients(tiny_hf[0], x, targets, checkpointing=c, dropout=False) for c in (False, True)
    ]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_cast_for_inference_keeps_the_tie_and_autocasts_numbers(tiny_hf):
    """Weights stored in bf16 once give what autocast gives with float32 weights (the matmuls
    see the same bf16 values; only the token embeddings enter the residual stream rounded)."""
    from gpt2tune.core.model import cast_for_inference

    path, _ = tiny_hf
    ref, cast = load_model(path).eval(), load_model(path).eval()
    cast_for_inference(cast, torch.bfloat16)
    assert cast.lm_head.weight is cast.transformer.wte.weight
    assert cast.transformer.wte.weight.dtype == torch.bfloat16
    assert cast.transformer.h[0].attn.c_attn.weight.dtype == torch.bfloat16
    assert cast.transformer.wpe.weight.dtype == torch.float32  # and the LayerNorms
    assert cast.transformer.ln_f.weight.dtype == torch.float32
    x = torch.randint(0, 50257, (2, 20), generator=torch.Generator().manual_seed(0))
    # the reference for "only the token embeddings enter rounded": float32 weights under
    # autocast, with the token embedding (the tied head) rounded to bf16 values beforehand
    rounded = load_model(path).eval()
    with torch.no_grad():
        rounded.transformer.wte.weight.copy_(rounded.transformer.wte.weight.bfloat16().float())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b, r = ref(x).float(), cast(x).float(), rounded(x).float()
    with torch.no_grad():
        full = ref(x)
    assert torch.equal(b, r)  # the same bf16 operands in every matmul: the same bits
    assert not torch.equal(a, r)  # the rounded embeddings do show: the check above can fail
    # bf16 against float32: the tolerance bf16 itself needs (8 bits of mantissa)
    assert (b - full).abs().max() <= 0.05 * full.abs().max()


def test_gradient_checkpointing_with_dropout_recomputes_the_same_masks(tiny_hf):
    """With dropout on: the recomputed blocks draw the same masks (the fused kernels take their
    seed from torch's generator, whose state checkpointing restores), so the gradients match."""
    x = torch.randint(0, 50257, (2, 24))
    targets = torch.cat([x[:, 1:], torch.full((2, 1), -100)], dim=1)
    grads = [
        _gradients(tiny_hf[0], x, targets, checkpointing=c, dropout=True) for c in (False, True)
    ]
    other = _gradients(tiny_hf[0], x, targets, checkpointing=False, dropout=True, seed=6)
    key = "transformer.h.0.attn.c_attn.weight"  # other masks: the comparison below can fail
    assert not torch.allclose(other[key], grads[0][key], atol=1e-6)
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_fresh_weights_are_drawn_as_transformers_draws_them():
    """From scratch (pretraining, a classifier's head): every tensor has the mean and spread of
    transformers' own initialisation of the same architecture: N(0, 0.02), the residual
    projections N(0, 0.02 / sqrt(2 * n_layer)), LayerNorms 1 and 0, biases 0."""
    from transformers import GPT2Config as HFConfig, GPT2ForSequenceClassification

    from gpt2tune.core.classifier import GPT2Classifier

    arch = dict(n_layer=6, n_head=4, n_embd=128, n_positions=128, vocab_size=2000)
    torch.manual_seed(0)
    ours = dict(GPT2Classifier(GPT2Config(**arch), ["a", "b", "c"]).named_parameters())
    ref = dict(GPT2ForSequenceClassification(HFConfig(**arch, num_labels=3)).named_parameters())
    assert ours.keys() == ref.keys()
    for name, p in ours.items():
        r = ref[name].detach()
        if r.std() == 0:  # a constant: LayerNorm 1 or 0, a bias 0
            assert torch.equal(p.detach(), torch.full_like(p, r.flatten()[0].item())), name
        else:
            # two samples' spreads differ by about sqrt(1 / numel) (relative): 5 of those
            rel = 5 * p.numel() ** -0.5
            assert p.std().item() == pytest.approx(r.std().item(), rel=max(rel, 0.02)), name
            assert abs(p.mean().item()) < rel * r.std().item(), name
    residual, embedding = ours["transformer.h.0.attn.c_proj.weight"], ours["transformer.wte.weight"]
    assert residual.std() < 0.5 * embedding.std()
