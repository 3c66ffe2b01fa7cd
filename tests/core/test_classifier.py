"""The classifier against transformers' GPT2ForSequenceClassification: logits, loss, checkpoints."""

import pytest
import torch

from gpt2tune.core.classifier import GPT2Classifier
from gpt2tune.errors import UserError
from gpt2tune.formats.hf import load_classifier, load_model, save_model

PAD = 50256


def hf_classifier(path, num_labels: int, seed: int = 0):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(seed)
    labels = {i: f"class{i}" for i in range(num_labels)}
    cfg = GPT2Config(
        n_layer=2,
        n_head=3,
        n_embd=48,
        n_positions=64,
        vocab_size=50257,
        pad_token_id=PAD,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    model = GPT2ForSequenceClassification(cfg).eval()
    model.save_pretrained(path)
    return model


def batch(left: bool):
    """Three rows of different lengths padded with <|endoftext|>, and their attention mask."""
    rows = [[464, 2068, 7586, 21831, 18045, 625], [40, 1101, 257], [1639, 389, 257, 1332]]
    width = max(map(len, rows))
    ids = torch.full((3, width), PAD)
    mask = torch.zeros((3, width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r)
        mask[i, span] = 1
    return ids, mask


@pytest.mark.parametrize("num_labels", [1, 3])
@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_logits_and_loss_equal_transformers(tmp_path, num_labels, left):
    hf = hf_classifier(tmp_path, num_labels)
    ours = load_classifier(tmp_path)
    assert isinstance(ours, GPT2Classifier)
    assert ours.labels == [f"class{i}" for i in range(num_labels)]
    ids, mask = batch(left)
    # transformers counts positions from the first column; padded rows need them given
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    labels = torch.tensor([0.5, -1.0, 2.0]) if num_labels == 1 else torch.tensor([2, 0, 1])
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=positions, labels=labels)
        got = ours.classify(ids, attention_mask=mask)
        loss = ours.classification_loss(ids, labels, attention_mask=mask)
    torch.testing.assert_close(got, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, ref.loss, atol=1e-5, rtol=0)
    assert ref.logits.abs().max() > 1e-3  # the head is not zero: the comparison means something


def test_saved_classifier_loads_in_transformers_and_back(tmp_path):
    from transformers import GPT2ForSequenceClassification

    hf_classifier(tmp_path / "hf", 3)
    ours = load_classifier(tmp_path / "hf")
    with torch.no_grad():
        ours.score.weight.add_(0.1)  # a trained head: not the one that was loaded
    save_model(ours, tmp_path / "ours")
    theirs = GPT2ForSequenceClassification.from_pretrained(tmp_path / "ours").eval()
    assert theirs.config.id2label == {0: "class0", 1: "class1", 2: "class2"}
    ids, mask = batch(False)
    with torch.no_grad():
        torch.testing.assert_close(
            theirs(input_ids=ids, attention_mask=mask).logits,
            ours.classify(ids, attention_mask=mask),
            atol=1e-5,
            rtol=0,
        )
        again = load_classifier(tmp_path / "ours")
        assert torch.equal(again.score.weight, ours.score.weight)
    # the body still loads as a language model
    assert load_model(tmp_path / "ours").num_params() == ours.num_params() - 3 * 48


def test_a_plain_gpt2_gets_a_fresh_head_and_labels_are_checked(tiny_hf, tmp_path):
    path, _ = tiny_hf
    with pytest.raises(UserError, match="give the labels"):
        load_classifier(path)
    clf = load_classifier(path, ["news", "play"])
    assert clf.labels == ["news", "play"] and clf.score.weight.std() > 0
    assert clf.lm_head.weight is clf.transformer.wte.weight
    lm = load_model(path)
    ids = torch.tensor([[464, 2068, 7586]])
    with torch.no_grad():
        torch.testing.assert_close(clf.hidden_states(ids), lm.hidden_states(ids))
    hf_classifier(tmp_path, 3)
    with pytest.raises(UserError, match="classifies"):
        load_classifier(tmp_path, ["a", "b", "c"])
