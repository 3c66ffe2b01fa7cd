"""peft-format adapters both ways, checked against peft itself: our adapters load in peft and
peft's in ours with the same logits; adapters we cannot represent are refused in one line.

Adapters get random non-zero B (``lora_helpers.ours_with_lora``): with B = 0 a LoRA model equals
its base model and these tests would pass whatever the code did.
"""

from __future__ import annotations

import json

import pytest
import torch
from checkpoints import make_hf_model
from lora_helpers import VOCAB, hf_base, logits, ours_with_lora

from gpt2tune.core.lora import (
    LoRAConfig,
    count_parameters,
    lora_modules,
    merge_and_unload,
)
from gpt2tune.errors import UserError
from gpt2tune.formats.hf import load_model, save_model
from gpt2tune.formats.peft import load_adapter, save_adapter

peft = pytest.importorskip("peft")


# ----------------------------------------------------------------------------- peft interop


@pytest.mark.parametrize(
    "cfg",
    [
        LoRAConfig(r=4, alpha=8, targets=["c_attn"]),
        LoRAConfig(r=3, alpha=5, targets=["c_proj", "mlp.c_fc"], layers=[0], use_rslora=True),
    ],
    ids=["c_attn", "c_proj+c_fc-layer0-rslora"],
)
def test_our_adapter_loads_in_peft_with_same_logits(tiny, tmp_path, tokens, cfg):
    path, _ = tiny
    ours = ours_with_lora(path, cfg)
    save_adapter(ours, tmp_path / "adapter", cfg, str(path))
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    pm = peft.PeftModel.from_pretrained(hf_base(path), tmp_path / "adapter").eval()
    expected = logits(pm, tokens)
    assert (expected - logits(hf_base(path), tokens)).abs().max() > 1e-3  # peft applied them
    torch.testing.assert_close(logits(ours, tokens), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "peft_kwargs",
    [
        dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"]),
        # peft saves "all-linear" as the list of full module names it expanded to.
        dict(r=2, lora_alpha=16, target_modules="all-linear", use_rslora=True),
        dict(r=3, lora_alpha=6, target_modules=["c_fc"], layers_to_transform=[1]),
    ],
    ids=["c_attn+c_proj", "all-linear-rslora", "c_fc-layer1"],
)
def test_peft_adapter_loads_in_ours_with_same_logits(tiny, tmp_path, tokens, peft_kwargs):
    path, _ = tiny
    torch.manual_seed(0)
    # init_lora_weights=False makes B random, so the adapter changes the output.
    pm = peft.get_peft_model(
        hf_base(path),
        peft.LoraConfig(
            task_type="CAUSAL_LM", fan_in_fan_out=True, init_lora_weights=False, **peft_kwargs
        ),
    ).eval()
    pm.save_pretrained(tmp_path / "adapter")
    ours = load_model(path)
    cfg = load_adapter(ours, tmp_path / "adapter")
    assert cfg.r == peft_kwargs["r"] and cfg.alpha == peft_kwargs["lora_alpha"]
    assert count_parameters(ours) == pm.get_nb_trainable_parameters()
    torch.testing.assert_close(logits(ours, tokens), logits(pm, tokens), atol=1e-5, rtol=0)


def test_merge_and_unload_saves_a_plain_model_transformers_reads(tiny, tmp_path, tokens):
    from transformers import GPT2LMHeadModel

    path, _ = tiny
    ours = ours_with_lora(path, LoRAConfig(r=4, targets=["all-linear"]))
    expected = logits(ours, tokens)
    plain = merge_and_unload(ours)
    assert next(lora_modules(plain), None) is None
    assert type(plain.transformer.h[0].attn.c_attn) is torch.nn.Linear
    save_model(plain, tmp_path / "merged")
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(back, tokens), expected, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- bad adapters


def test_adapter_for_another_width_is_rejected_and_model_untouched(tiny, tmp_path):
    make_hf_model(tmp_path / "narrow", n_embd=24, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
    cfg = LoRAConfig(r=4)
    save_adapter(ours_with_lora(tmp_path / "narrow", cfg), tmp_path / "adapter", cfg, "narrow")
    model = load_model(tiny[0])
    with pytest.raises(UserError, match=r"shape \(4, 24\).*\(4, 48\)"):
        load_adapter(model, tmp_path / "adapter")
    assert next(lora_modules(model), None) is None


def test_adapter_for_other_layers_is_rejected(tiny, tmp_path):
    make_hf_model(tmp_path / "deep", n_layer=4, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
    cfg = LoRAConfig(r=4)
    save_adapter(ours_with_lora(tmp_path / "deep", cfg), tmp_path / "adapter", cfg, "deep")
    with pytest.raises(UserError, match="transformer.h.2.attn.c_attn.lora_A.weight"):
        load_adapter(load_model(tiny[0]), tmp_path / "adapter")


def test_missing_files_and_unsupported_configs(tiny, tmp_path):
    path, _ = tiny
    cfg = LoRAConfig(r=2)
    adapter = tmp_path / "adapter"
    save_adapter(ours_with_lora(path, cfg), adapter, cfg, str(path))
    config_file = adapter / "adapter_config.json"
    good = json.loads(config_file.read_text())

    with pytest.raises(UserError, match="does not exist"):
        load_adapter(load_model(path), tmp_path / "nowhere")
    for change, message in [
        (dict(peft_type="IA3"), "peft_type is 'IA3'"),
        (dict(use_qalora=True), "use_qalora=True is not supported"),
        # DoRA is read, so a DoRA config needs its magnitudes
        (dict(use_dora=True), "no weight for .*lora_magnitude_vector"),
        (dict(bias="all"), "bias='all' is not supported"),
        (dict(target_modules=["q_proj"]), "match no GPT-2 projection"),
    ]:
        config_file.write_text(json.dumps({**good, **change}))
        with pytest.raises(UserError, match=message):
            load_adapter(load_model(path), adapter)
    config_file.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_adapter(load_model(path), adapter)
    config_file.unlink()
    with pytest.raises(UserError, match="no adapter_config.json"):
        load_adapter(load_model(path), adapter)
    config_file.write_text(json.dumps(good))
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError, match="no adapter_model.safetensors"):
        load_adapter(load_model(path), adapter)


def test_a_real_peft_ia3_adapter_is_rejected(tiny, tmp_path):
    path, _ = tiny
    peft.get_peft_model(
        hf_base(path),
        peft.IA3Config(
            task_type="CAUSAL_LM",
            target_modules=["c_attn"],
            feedforward_modules=[],
            fan_in_fan_out=True,
        ),
    ).save_pretrained(tmp_path / "ia3")
    with pytest.raises(UserError, match="LoRA adapters only"):
        load_adapter(load_model(path), tmp_path / "ia3")


@pytest.mark.parametrize(
    "cfg, peft_kwargs",
    [
        (
            LoRAConfig(r=4, alpha=8, dropout=0.1, targets=["c_attn", "mlp.c_fc"]),
            dict(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["c_attn", "c_fc"]),
        ),
        (
            LoRAConfig(
                r=2, alpha=4, targets=["c_proj"], layers=[0], use_rslora=True, use_dora=True
            ),
            dict(
                r=2,
                lora_alpha=4,
                target_modules=["c_proj"],
                layers_to_transform=[0],
                use_rslora=True,
                use_dora=True,
            ),
        ),
    ],
    ids=["lora", "rslora-dora-layer0"],
)
def test_the_adapter_config_we_write_spells_every_key_as_peft_does(
    tiny, tmp_path, cfg, peft_kwargs
):
    """Each key of our adapter_config.json has the name and value peft writes for the same
    adapter; only the targets are spelled more precisely (attn.c_proj, not c_proj) and the
    layers' pattern is named."""
    path, _ = tiny
    save_adapter(ours_with_lora(path, cfg), tmp_path / "ours", cfg, str(path))
    reference = peft.LoraConfig(task_type="CAUSAL_LM", fan_in_fan_out=True, **peft_kwargs)
    peft.get_peft_model(hf_base(path), reference).save_pretrained(tmp_path / "peft")
    ours = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    theirs = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    for key in ("target_modules", "layers_pattern"):
        ours.pop(key)
    assert {k: v for k, v in ours.items() if k not in theirs} == {}
    assert {k: (v, theirs[k]) for k, v in ours.items() if theirs[k] != v} == {}


def test_a_minimal_adapter_config_gets_peft_defaults():
    """An adapter_config.json with only what peft requires: alpha, dropout, rsLoRA and DoRA as
    peft reads them; a first-layer-only adapter is a valid one."""
    from gpt2tune.formats.peft import lora_config_from_peft

    minimal = {
        "peft_type": "LORA",
        "r": 4,
        "target_modules": ["c_attn"],
        "fan_in_fan_out": True,
        "layers_to_transform": [0],
    }
    ours = lora_config_from_peft(dict(minimal), n_layer=2)
    ref = peft.LoraConfig(**{k: v for k, v in minimal.items() if k != "peft_type"})
    assert (ours.r, ours.alpha, ours.dropout, ours.use_rslora, ours.use_dora, ours.layers) == (
        ref.r,
        ref.lora_alpha,
        ref.lora_dropout,
        ref.use_rslora,
        ref.use_dora,
        ref.layers_to_transform,
    )
