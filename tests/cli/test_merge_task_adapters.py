"""``gpt2tune merge`` of a classification or question-answering adapter: the merged directory is
the task's transformers model, with the logits of peft's model of the base and the adapter."""

import pytest
import torch
from checkpoints import make_hf_model

from gpt2tune.cli.main import main
from gpt2tune.core.classifier import GPT2Classifier
from gpt2tune.core.lora import LoRAConfig, apply_lora, lora_modules
from gpt2tune.core.qa import GPT2QuestionAnswering
from gpt2tune.formats.hf import load_model
from gpt2tune.formats.peft import save_adapter


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("merge-base")
    make_hf_model(path)
    return path


def adapter_of(model, out):
    """A LoRA adapter of ``model`` with random (non-zero) B and a random head, saved to ``out``."""
    torch.manual_seed(1)
    cfg = LoRAConfig(r=4, alpha=8, targets=["c_attn", "mlp.c_fc"])
    apply_lora(model, cfg)
    with torch.no_grad():
        for _, layer in lora_modules(model):
            layer.lora_B.weight.normal_(0, 0.2)
        for p in (
            model.score if isinstance(model, GPT2Classifier) else model.qa_outputs
        ).parameters():
            p.normal_(0, 0.2)
    save_adapter(model, out, cfg, "base")
    return out


@pytest.mark.parametrize("task", ["classify", "qa"])
def test_a_task_adapter_merges_into_its_task_model(base, tmp_path, task):
    from peft import PeftModel
    from transformers import GPT2ForQuestionAnswering, GPT2ForSequenceClassification

    lm = load_model(base)
    if task == "classify":
        model, ref_class = (
            GPT2Classifier.from_language_model(lm, ["a", "b", "c"]),
            GPT2ForSequenceClassification,
        )
    else:
        model, ref_class = GPT2QuestionAnswering.from_language_model(lm), GPT2ForQuestionAnswering
    adapter = adapter_of(model, tmp_path / "adapter")
    out = tmp_path / "merged"
    assert main(["merge", "--model", str(base), "--adapter", str(adapter), "--out", str(out)]) == 0

    kwargs = {"num_labels": 3, "pad_token_id": 50256} if task == "classify" else {}
    ref = PeftModel.from_pretrained(ref_class.from_pretrained(base, **kwargs), adapter).eval()
    merged = ref_class.from_pretrained(out).eval()
    assert merged.config.architectures == [ref_class.__name__]
    ids = torch.randint(0, 50257, (2, 12))
    with torch.no_grad():
        want, got = ref(input_ids=ids), merged(input_ids=ids)
    names = ["logits"] if task == "classify" else ["start_logits", "end_logits"]
    for name in names:
        torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=1e-5, rtol=0)
    with torch.no_grad():  # the adapter changes the answer: the comparison is not vacuous
        plain = ref_class.from_pretrained(base, **kwargs).eval()
        for name in names:
            plain_out = getattr(plain(input_ids=ids), name)
            assert (plain_out - getattr(want, name)).abs().max() > 1e-2
