"""QA model directories: ours <-> transformers' GPT2ForQuestionAnswering, with equal logits."""

import pytest
import torch
from checkpoints import make_hf_qa_model, qa_batch

from gpt2tune.core.qa import GPT2QuestionAnswering
from gpt2tune.errors import UserError
from gpt2tune.formats.hf import load_classifier, load_model, load_qa_model, save_model


def assert_same_spans(ours: GPT2QuestionAnswering, theirs) -> None:
    ids, mask = qa_batch()
    with torch.no_grad():
        ref = theirs(input_ids=ids, attention_mask=mask)
        start, end = ours.span_logits(ids, attention_mask=mask)
    torch.testing.assert_close(start, ref.start_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(end, ref.end_logits, atol=1e-5, rtol=0)


def test_transformers_save_loads_here_with_equal_logits(tmp_path):
    theirs = make_hf_qa_model(tmp_path)
    ours = load_qa_model(tmp_path)
    assert isinstance(ours, GPT2QuestionAnswering) and not ours.training
    assert torch.equal(ours.qa_outputs.bias, torch.tensor([0.3, -0.2]))
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert_same_spans(ours, theirs)


def test_our_save_loads_in_transformers_and_back(tmp_path):
    from transformers import GPT2ForQuestionAnswering

    make_hf_qa_model(tmp_path / "hf")
    ours = load_qa_model(tmp_path / "hf")
    with torch.no_grad():
        ours.qa_outputs.weight.add_(0.1)  # a trained head: not the one that was loaded
        ours.qa_outputs.bias.add_(0.5)
    save_model(ours, tmp_path / "ours")
    config = (tmp_path / "ours" / "config.json").read_text()
    assert '"GPT2ForQuestionAnswering"' in config
    theirs = GPT2ForQuestionAnswering.from_pretrained(tmp_path / "ours").eval()
    assert_same_spans(ours, theirs)
    again = load_qa_model(tmp_path / "ours")
    assert torch.equal(again.qa_outputs.weight, ours.qa_outputs.weight)
    assert torch.equal(again.qa_outputs.bias, ours.qa_outputs.bias)
    # the body still loads as a language model
    assert load_model(tmp_path / "ours").num_params() == ours.num_params() - (2 * 48 + 2)


def test_a_plain_gpt2_gets_a_fresh_head(tiny_hf):
    path, _ = tiny_hf
    qa = load_qa_model(path)
    lm = load_model(path)
    assert qa.qa_outputs.weight.std() > 0
    ids = torch.tensor([[464, 2068, 7586]])
    with torch.no_grad():
        torch.testing.assert_close(qa.hidden_states(ids), lm.hidden_states(ids))


def test_a_classifier_is_not_a_qa_model_nor_the_reverse(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    cfg = GPT2Config(n_layer=1, n_head=3, n_embd=48, n_positions=64, pad_token_id=50256)
    GPT2ForSequenceClassification(cfg).save_pretrained(tmp_path / "clf")
    with pytest.raises(UserError, match="is a classifier") as info:
        load_qa_model(tmp_path / "clf")
    assert "\n" not in str(info.value)
    make_hf_qa_model(tmp_path / "qa")
    with pytest.raises(UserError, match="question-answering model") as info:
        load_classifier(tmp_path / "qa", ["a", "b"])
    assert "\n" not in str(info.value)
