"""The QA model against transformers' GPT2ForQuestionAnswering: span logits and loss."""

import pytest
import torch
from checkpoints import make_hf_qa_model, qa_batch

from gpt2tune.core.model import GPT2, GPT2Config
from gpt2tune.core.qa import GPT2QuestionAnswering

SIZES = dict(n_layer=2, n_head=3, n_embd=48, n_positions=64, vocab_size=50257)


def ours_from(hf) -> GPT2QuestionAnswering:
    """Our model with ``hf``'s weights (Conv1D weights transposed; the mask buffers dropped)."""
    ours = GPT2QuestionAnswering(GPT2Config(**SIZES), init_weights=False).eval()
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    state = {
        k: v.t() if k.endswith(conv1d) else v
        for k, v in hf.state_dict().items()
        if not k.endswith((".attn.bias", ".attn.masked_bias"))
    }
    state["lm_head.weight"] = state["transformer.wte.weight"]
    ours.load_state_dict(state, strict=True)
    return ours


def test_span_logits_equal_transformers_at_every_position():
    hf = make_hf_qa_model()
    ours = ours_from(hf)
    ids, mask = qa_batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask)
        start, end = ours.span_logits(ids, attention_mask=mask)
    assert start.shape == end.shape == ids.shape
    # padding positions too: the loss's softmax runs over them
    torch.testing.assert_close(start, ref.start_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(end, ref.end_logits, atol=1e-5, rtol=0)
    assert ref.start_logits.std() > 1e-3 and not torch.equal(start, end)  # a meaningful check


@pytest.mark.parametrize(
    "starts, ends",
    [
        ([1, 0, 2], [3, 2, 3]),  # answers inside every row
        ([1, 7, 40], [3, 9, 2]),  # a start at T, beyond T (ignored) and an end beyond T
        ([-5, 0, 2], [-1, 2, 3]),  # negative positions clamp to 0
    ],
)
def test_loss_equals_transformers_including_positions_out_of_range(starts, ends):
    hf = make_hf_qa_model()
    ours = ours_from(hf)
    ids, mask = qa_batch()
    start_positions, end_positions = torch.tensor(starts), torch.tensor(ends)
    with torch.no_grad():
        ref = hf(
            input_ids=ids,
            attention_mask=mask,
            start_positions=start_positions,
            end_positions=end_positions,
        )
        got = ours.span_loss(ids, start_positions, end_positions, attention_mask=mask)
        # the trainer's rows carry the mask as segment ids: 0 real, -1 padding (data.qa.qa_rows)
        trainer = ours.loss(
            ids, torch.stack([start_positions, end_positions], -1), segment_ids=mask - 1
        )
    torch.testing.assert_close(got, ref.loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(trainer, ref.loss, atol=1e-5, rtol=0)


def test_loss_averages_start_and_end():
    """A planted bug (sum instead of mean, or one term only) is caught independently of HF."""
    ours = ours_from(make_hf_qa_model())
    ids, mask = qa_batch()
    s, e = torch.tensor([1, 0, 2]), torch.tensor([3, 2, 3])
    with torch.no_grad():
        start, end = ours.span_logits(ids, attention_mask=mask)
        want = (
            torch.nn.functional.cross_entropy(start, s) + torch.nn.functional.cross_entropy(end, e)
        ) / 2
        torch.testing.assert_close(ours.span_loss(ids, s, e, attention_mask=mask), want)


def test_from_language_model_shares_the_body_and_draws_a_head():
    torch.manual_seed(0)
    lm = GPT2(GPT2Config(**SIZES)).eval()
    qa = GPT2QuestionAnswering.from_language_model(lm)
    assert qa.transformer is lm.transformer
    assert qa.lm_head.weight is qa.transformer.wte.weight
    assert qa.qa_outputs.weight.std() > 0 and torch.equal(qa.qa_outputs.bias, torch.zeros(2))
    assert not qa.training
    assert qa.num_params() == lm.num_params() + 2 * 48 + 2
    with pytest.raises(ValueError, match="not packed"):
        qa.loss(
            torch.zeros(1, 3, dtype=torch.long),
            torch.zeros(1, 2, dtype=torch.long),
            segment_ids=torch.tensor([[0, 1, 1]]),
        )


def test_gradient_checkpointing_changes_no_gradient():
    ids, mask = qa_batch()
    targets = torch.tensor([[1, 3], [0, 2], [2, 3]])
    grads = []
    for ckpt in (False, True):
        ours = ours_from(make_hf_qa_model()).train()
        ours.gradient_checkpointing = ckpt
        ours.loss(ids, targets, attention_mask=mask).backward()
        grads.append([p.grad.clone() for p in ours.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
