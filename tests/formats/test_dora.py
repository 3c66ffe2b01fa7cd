"""DoRA adapters in peft's format, both ways, and merged, against peft and transformers."""

import json

import peft
import pytest
import torch
from lora_helpers import hf_base, logits

from gpt2tune.core.lora import LoRAConfig, apply_lora, lora_modules, merge_and_unload
from gpt2tune.formats.hf import load_model, save_model
from gpt2tune.formats.peft import load_adapter, save_adapter


@pytest.mark.parametrize("targets", [["c_attn"], "all-linear"], ids=["c_attn", "all-linear"])
def test_peft_dora_adapter_gives_the_same_logits_here(tiny, tmp_path, tokens, targets):
    path, hf = tiny
    torch.manual_seed(0)
    # init_lora_weights=False: B is random, so the magnitude differs from the rows' norms too
    pm = peft.get_peft_model(
        hf_base(path),
        peft.LoraConfig(
            task_type="CAUSAL_LM",
            r=4,
            lora_alpha=8,
            target_modules=targets,
            fan_in_fan_out=True,
            init_lora_weights=False,
            use_dora=True,
        ),
    ).eval()
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1.0 + 0.1 * torch.randn_like(p))  # a trained magnitude
    pm.save_pretrained(tmp_path)
    ours = load_model(path)
    cfg = load_adapter(ours, tmp_path)
    assert cfg.use_dora
    ref = logits(pm, tokens)
    torch.testing.assert_close(logits(ours, tokens), ref, atol=1e-5, rtol=0)
    assert (ref - logits(hf, tokens)).abs().max() > 1e-3


def test_our_dora_adapter_loads_in_peft_and_merges_as_peft_does(tiny, tmp_path, tokens):
    path, _ = tiny
    ours = load_model(path)
    cfg = LoRAConfig(r=4, alpha=8, targets=["c_attn", "mlp.c_fc"], use_dora=True)
    apply_lora(ours, cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for _, m in lora_modules(ours):
            m.lora_B.weight.normal_(0, 0.05)
            m.lora_magnitude_vector.mul_(1.0 + 0.1 * torch.randn_like(m.lora_magnitude_vector))
    ours.eval()
    save_adapter(ours, tmp_path / "adapter", cfg, str(path))
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["use_dora"]
    pm = peft.PeftModel.from_pretrained(hf_base(path), tmp_path / "adapter").eval()
    expected = logits(ours, tokens)
    torch.testing.assert_close(logits(pm, tokens), expected, atol=1e-5, rtol=0)
    # merged here and saved: transformers reads the same logits, as peft's own merge gives
    save_model(merge_and_unload(ours), tmp_path / "merged")
    from transformers import GPT2LMHeadModel

    merged = GPT2LMHeadModel.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(merged, tokens), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(pm.merge_and_unload(), tokens), expected, atol=1e-5, rtol=0)


def test_generate_with_a_dora_adapter_equals_peft_greedy(tiny_hf, tmp_path, capsys):
    from gpt2tune.cli.main import main
    from gpt2tune.core.tokenizer import Tokenizer

    path, _ = tiny_hf
    torch.manual_seed(3)
    pm = peft.get_peft_model(
        hf_base(path),
        peft.LoraConfig(
            task_type="CAUSAL_LM",
            r=4,
            lora_alpha=16,
            target_modules=["c_attn"],
            fan_in_fan_out=True,
            init_lora_weights=False,
            use_dora=True,
        ),
    ).eval()
    pm.save_pretrained(tmp_path)
    ids = Tokenizer().encode("Hello there")
    ref = pm.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=8,
        min_new_tokens=8,
        pad_token_id=50256,
    )[0, len(ids) :].tolist()
    capsys.readouterr()
    assert (
        main(
            [
                "generate",
                "--model",
                str(path),
                "--adapter",
                str(tmp_path),
                "--prompt",
                "Hello there",
                "--greedy",
                "--max-new-tokens",
                "8",
                "--json",
                "--precision",
                "fp32",
            ]
        )
        == 0
    )  # peft's reference runs in fp32
    assert json.loads(capsys.readouterr().out)["token_ids"] == ref


def test_dora_gradients_equal_peft(tiny, tmp_path, tokens):
    """DoRA's row norm is a constant in backward (peft detaches it): the gradients of A, B and the
    magnitude equal peft's on the same adapter and loss. With the norm differentiated, A's and
    B's gradients would differ."""
    path, _ = tiny
    torch.manual_seed(2)
    pm = peft.get_peft_model(
        hf_base(path),
        peft.LoraConfig(
            task_type="CAUSAL_LM",
            r=4,
            lora_alpha=8,
            target_modules=["c_attn", "mlp.c_proj"],
            fan_in_fan_out=True,
            init_lora_weights=False,
            use_dora=True,
        ),
    ).eval()
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1.0 + 0.1 * torch.randn_like(p))
    pm.save_pretrained(tmp_path)
    ours = load_model(path)
    load_adapter(ours, tmp_path)
    ours.eval()  # no dropout on either side; gradients flow all the same

    def grads(model, names):
        out = model(tokens[:, :-1])
        out = getattr(out, "logits", out)
        torch.nn.functional.cross_entropy(out.flatten(0, 1), tokens[:, 1:].flatten()).backward()
        return {n: p.grad for n, p in names}

    # "...h.0.attn.c_attn.lora_A.default.weight": "h.0.attn.c_attn.lora_A"
    def key(name: str) -> str:
        name = name.replace(".default", "").replace(".weight", "")
        return name[name.index("h.") :]

    ref = grads(pm, [(key(n), p) for n, p in pm.named_parameters() if p.requires_grad])
    got = grads(ours, [(key(n), p) for n, p in ours.named_parameters() if p.requires_grad])
    assert sorted(got) == sorted(ref) and any("magnitude" in k for k in ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-6, rtol=1e-4, msg=k)
