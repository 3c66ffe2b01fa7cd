"""Question-answering adapters in peft's QUESTION_ANS layout (the qa_outputs head saved with the
adapter), both ways, against peft's PeftModel over GPT2ForQuestionAnswering."""

import json

import peft
import pytest
import torch
from checkpoints import make_hf_qa_model, qa_batch
from safetensors.torch import load_file

from gpt2tune.core.lora import LoRAConfig, apply_lora, lora_modules
from gpt2tune.core.qa import GPT2QuestionAnswering
from gpt2tune.errors import UserError
from gpt2tune.formats.hf import load_classifier, load_model, load_qa_model
from gpt2tune.formats.peft import load_adapter, load_qa_model_with_adapter, save_adapter


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("qa-base")
    make_hf_qa_model(path)
    return path


def hf_base(path):
    from transformers import GPT2ForQuestionAnswering

    return GPT2ForQuestionAnswering.from_pretrained(path).eval()


def peft_qa_adapter(base, out):
    """peft's own QUESTION_ANS adapter with non-zero LoRA weights and a trained head."""
    torch.manual_seed(1)
    pm = peft.get_peft_model(
        hf_base(base),
        peft.LoraConfig(
            task_type="QUESTION_ANS",
            r=4,
            lora_alpha=8,
            target_modules=["c_attn"],
            fan_in_fan_out=True,
            init_lora_weights=False,
        ),
    ).eval()
    head = pm.base_model.model.qa_outputs.modules_to_save["default"]
    with torch.no_grad():  # a trained head, different from the base checkpoint's
        head.weight.normal_(0, 0.5)
        head.bias.copy_(torch.tensor([-0.7, 0.4]))
    pm.save_pretrained(out)
    return pm


def assert_same_spans(ours: GPT2QuestionAnswering, pm) -> None:
    ids, mask = qa_batch()
    with torch.no_grad():
        ref = pm(input_ids=ids, attention_mask=mask)
        start, end = ours.span_logits(ids, attention_mask=mask)
    torch.testing.assert_close(start, ref.start_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(end, ref.end_logits, atol=1e-5, rtol=0)


def test_peft_question_answering_adapter_loads_here_with_its_head(base, tmp_path):
    pm = peft_qa_adapter(base, tmp_path)
    ours = load_qa_model(base)
    load_adapter(ours, tmp_path)
    assert_same_spans(ours, pm)
    ids, mask = qa_batch()
    with torch.no_grad():
        plain = hf_base(base)(input_ids=ids, attention_mask=mask).start_logits
        assert (pm(input_ids=ids, attention_mask=mask).start_logits - plain).abs().max() > 1e-2
    assert ours.qa_outputs.weight.requires_grad and ours.qa_outputs.bias.requires_grad
    # the same adapter on a plain GPT-2 base: the head comes from the adapter
    plain_base = tmp_path.parent / "plain"
    hf_base(base).transformer.save_pretrained(plain_base)  # a GPT2Model directory
    assert_same_spans(load_qa_model_with_adapter(plain_base, tmp_path), pm)


def test_our_question_answering_adapter_loads_in_peft(base, tmp_path):
    ours = load_qa_model(base)
    cfg = LoRAConfig(r=2, alpha=4, targets=["c_attn", "mlp.c_fc"])
    apply_lora(ours, cfg)
    torch.manual_seed(2)
    with torch.no_grad():
        for _, m in lora_modules(ours):
            m.lora_B.weight.normal_(0, 0.1)
        ours.qa_outputs.weight.normal_(0, 0.5)
        ours.qa_outputs.bias.copy_(torch.tensor([0.9, -0.1]))
    save_adapter(ours, tmp_path / "ours", cfg, str(base))
    saved = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert saved["task_type"] == "QUESTION_ANS" and saved["modules_to_save"] == ["qa_outputs"]
    pm = peft.PeftModel.from_pretrained(hf_base(base), tmp_path / "ours").eval()
    assert_same_spans(ours, pm)
    # the head under the key names peft itself writes
    peft_qa_adapter(base, tmp_path / "peft")
    head_keys = {k for k in load_file(tmp_path / "peft" / "adapter_model.safetensors") if "qa" in k}
    ours_keys = load_file(tmp_path / "ours" / "adapter_model.safetensors").keys()
    assert head_keys == {k for k in ours_keys if "qa" in k} and len(head_keys) == 2


def _one_line(info) -> str:
    assert "\n" not in str(info.value)
    return str(info.value)


def test_adapters_of_other_tasks_are_one_line_errors(base, tmp_path, tiny_hf):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    peft_qa_adapter(base, tmp_path / "qa")
    with pytest.raises(UserError, match="question-answering adapter") as info:
        load_adapter(load_model(base), tmp_path / "qa")
    _one_line(info)
    cfg = GPT2Config(n_layer=2, n_head=3, n_embd=48, n_positions=64, pad_token_id=50256)
    GPT2ForSequenceClassification(cfg).save_pretrained(tmp_path / "clf")
    clf = load_classifier(tmp_path / "clf")
    with pytest.raises(UserError, match="question-answering adapter") as info:
        load_adapter(clf, tmp_path / "qa")
    _one_line(info)
    # the reverse: a language-model adapter and a classification adapter on a QA model
    lm = load_model(base)
    lora = LoRAConfig(r=2, alpha=4)
    apply_lora(lm, lora)
    save_adapter(lm, tmp_path / "lm", lora, str(base))
    apply_lora(clf, lora)
    save_adapter(clf, tmp_path / "clf-adapter", lora, str(tmp_path / "clf"))
    for adapter, message in [("lm", "not a question-answering"), ("clf-adapter", "classification")]:
        qa = load_qa_model(base)
        with pytest.raises(UserError, match=message) as info:
            load_adapter(qa, tmp_path / adapter)
        _one_line(info)
        assert not list(lora_modules(qa))  # left unchanged
