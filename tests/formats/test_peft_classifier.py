"""Classification adapters in peft's SEQ_CLS layout (the score head saved with the adapter),
both ways, against peft's PeftModel over GPT2ForSequenceClassification."""

import json

import peft
import pytest
import torch

from gpt2tune.core.lora import LoRAConfig, apply_lora, lora_modules
from gpt2tune.errors import UserError
from gpt2tune.formats.hf import load_classifier, load_model
from gpt2tune.formats.peft import load_adapter, save_adapter

PAD = 50256


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    path = tmp_path_factory.mktemp("clf-base")
    torch.manual_seed(0)
    labels = {0: "news", 1: "play", 2: "poem"}
    GPT2ForSequenceClassification(
        GPT2Config(
            n_layer=2,
            n_head=3,
            n_embd=48,
            n_positions=64,
            pad_token_id=PAD,
            id2label=labels,
            label2id={v: k for k, v in labels.items()},
        )
    ).save_pretrained(path)
    return path


def hf_base(path):
    from transformers import GPT2ForSequenceClassification

    return GPT2ForSequenceClassification.from_pretrained(path).eval()


IDS = torch.tensor([[464, 2068, 7586, 21831, PAD, PAD], [40, 1101, 257, 1332, 318, 2]])
MASK = (IDS != PAD).long()


def test_peft_seq_cls_adapter_loads_here_with_its_head(base, tmp_path):
    torch.manual_seed(1)
    pm = peft.get_peft_model(
        hf_base(base),
        peft.LoraConfig(
            task_type="SEQ_CLS",
            r=4,
            lora_alpha=8,
            target_modules=["c_attn"],
            fan_in_fan_out=True,
            init_lora_weights=False,
        ),
    ).eval()
    with torch.no_grad():  # a trained head, different from the base checkpoint's
        pm.base_model.model.score.modules_to_save["default"].weight.normal_(0, 0.5)
    pm.save_pretrained(tmp_path)
    ours = load_classifier(base)
    load_adapter(ours, tmp_path)
    with torch.no_grad():
        ref = pm(input_ids=IDS, attention_mask=MASK).logits
        got = ours.classify(IDS, attention_mask=MASK)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    with torch.no_grad():
        plain = hf_base(base)(input_ids=IDS, attention_mask=MASK).logits
    assert (ref - plain).abs().max() > 1e-2  # adapter and head change the answer
    assert ours.score.weight.requires_grad  # the head trains with the adapter


def test_our_classification_adapter_loads_in_peft(base, tmp_path):
    ours = load_classifier(base)
    cfg = LoRAConfig(r=2, alpha=4, targets=["c_attn", "mlp.c_fc"])
    apply_lora(ours, cfg)
    torch.manual_seed(2)
    with torch.no_grad():
        for _, m in lora_modules(ours):
            m.lora_B.weight.normal_(0, 0.1)
        ours.score.weight.normal_(0, 0.5)
    save_adapter(ours, tmp_path, cfg, str(base))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_CLS" and saved["modules_to_save"] == ["score"]
    pm = peft.PeftModel.from_pretrained(hf_base(base), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            pm(input_ids=IDS, attention_mask=MASK).logits,
            ours.classify(IDS, attention_mask=MASK),
            atol=1e-5,
            rtol=0,
        )


def test_a_classification_adapter_is_refused_on_a_language_model(base, tmp_path):
    ours = load_classifier(base)
    cfg = LoRAConfig(r=2, alpha=4)
    apply_lora(ours, cfg)
    save_adapter(ours, tmp_path, cfg, str(base))
    with pytest.raises(UserError, match="classification adapter"):
        load_adapter(load_model(base), tmp_path)
