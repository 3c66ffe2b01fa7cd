"""LoRA, checked against peft (the reference implementation) on tiny random GPT-2s.

Adapters get random non-zero B in every numerical test: with B = 0 (the default init) a LoRA model
equals its base model and merge/interop tests would pass whatever the code did.
"""

from __future__ import annotations

import pytest
import torch
from lora_helpers import hf_base, logits, ours_with_lora

from gpt2tune.core.lora import (
    LoRAConfig,
    LoRALinear,
    adapter_state_dict,
    apply_lora,
    count_parameters,
    disable_adapters,
    format_parameter_report,
    load_adapter_state_dict,
    lora_modules,
    lora_parameter_count,
    lora_parameters,
    merge_lora,
    unmerge_lora,
)
from gpt2tune.core.model import GPT2Config
from gpt2tune.errors import UserError
from gpt2tune.formats.hf import load_model

peft = pytest.importorskip("peft")


# ----------------------------------------------------------------------------- parameter counts

PEFT_EQUIVALENTS = [  # (our config, the same adapters as peft LoraConfig kwargs)
    (LoRAConfig(r=1, targets=["c_attn"]), dict(r=1, target_modules=["c_attn"])),
    (LoRAConfig(r=4, targets=["c_attn"]), dict(r=4, target_modules=["c_attn"])),
    (LoRAConfig(r=8, targets=["all-linear"]), dict(r=8, target_modules="all-linear")),
    (LoRAConfig(r=4, targets=["mlp.c_fc"]), dict(r=4, target_modules=["mlp.c_fc"])),
    (
        LoRAConfig(r=2, targets=["c_proj"], layers=[1]),
        dict(r=2, target_modules=["c_proj"], layers_to_transform=[1]),
    ),
]


@pytest.mark.parametrize(
    "cfg, peft_kwargs",
    PEFT_EQUIVALENTS,
    ids=["c_attn-r1", "c_attn-r4", "all-linear-r8", "mlp.c_fc", "c_proj-layer1"],
)
def test_trainable_parameters_match_peft(tiny, cfg, peft_kwargs, capsys):
    path, _ = tiny
    pm = peft.get_peft_model(
        hf_base(path), peft.LoraConfig(task_type="CAUSAL_LM", fan_in_fan_out=True, **peft_kwargs)
    )
    expected = pm.get_nb_trainable_parameters()
    ours = apply_lora(load_model(path), cfg)

    assert count_parameters(ours) == expected
    assert {p for p in ours.parameters() if p.requires_grad} == set(lora_parameters(ours))
    assert {name for name, _ in lora_modules(ours)} == set(pm.base_model.targeted_module_names)
    config = ours.config
    assert lora_parameter_count(config, cfg) == expected[0]
    assert config.num_params() + lora_parameter_count(config, cfg) == expected[1]
    pm.print_trainable_parameters()
    assert format_parameter_report(*expected) == capsys.readouterr().out.strip()


def test_gpt2_124m_r4_c_attn_count_without_allocating():
    # peft prints this for GPT2LMHeadModel.from_pretrained("gpt2") with r=4 on c_attn.
    config, cfg = GPT2Config.from_preset("gpt2"), LoRAConfig(r=4, targets=["c_attn"])
    trainable = lora_parameter_count(config, cfg)
    total = config.num_params() + trainable
    assert (trainable, total) == (147_456, 124_587_264)
    assert format_parameter_report(trainable, total) == (
        "trainable params: 147,456 || all params: 124,587,264 || trainable%: 0.1184"
    )


def test_config_rejects_unknown_target_and_missing_layer(tiny):
    with pytest.raises(UserError, match="unknown LoRA target 'q_proj'.*c_attn"):
        LoRAConfig(targets=["q_proj"])
    with pytest.raises(UserError, match="layer 5 does not exist"):
        apply_lora(load_model(tiny[0]), LoRAConfig(layers=[5]))


# ----------------------------------------------------------------------------- the layer itself


def test_lora_linear_init_and_structure(tiny):
    model = apply_lora(load_model(tiny[0]), LoRAConfig(r=4, alpha=8, dropout=0.1))
    layer = model.transformer.h[0].attn.c_attn
    assert isinstance(layer, LoRALinear) and isinstance(layer.base, torch.nn.Linear)
    assert torch.count_nonzero(layer.lora_B.weight) == 0 and layer.lora_A.weight.abs().sum() > 0
    # nn.Linear's default init: kaiming_uniform(a=sqrt(5)) gives U(-1/sqrt(in), 1/sqrt(in)).
    assert layer.lora_A.weight.abs().max() <= 1 / 48**0.5
    assert layer.scaling == 2.0 and isinstance(layer.dropout, torch.nn.Dropout)
    assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad
    rs = apply_lora(load_model(tiny[0]), LoRAConfig(r=4, alpha=8, use_rslora=True))
    assert rs.transformer.h[0].attn.c_attn.scaling == 4.0
    with pytest.raises(UserError, match="already has LoRA"):
        apply_lora(model, LoRAConfig())


def test_lora_dropout_drops_inputs_of_the_adapter_branch_only():
    """``base(x) + s * B(A(dropout(x)))``: with A and B the identity, the adapter's part of the
    output is s * dropout(x), each element either 0 or s * x / (1 - p), some of each, while the
    base part is untouched; in eval mode nothing is dropped."""
    torch.manual_seed(0)
    p, d = 0.5, 16
    layer = LoRALinear(torch.nn.Linear(d, d), r=d, alpha=2 * d, dropout=p)  # scaling 2
    with torch.no_grad():
        layer.lora_A.weight.copy_(torch.eye(d))
        layer.lora_B.weight.copy_(torch.eye(d))
    x = torch.randn(64, d) + 3.0  # no element near 0
    base = layer.base(x)
    layer.train()
    adapter_part = (layer(x) - base) / 2
    kept = (adapter_part - x / (1 - p)).abs() < 1e-4
    dropped = adapter_part.abs() < 1e-4
    assert bool((kept | dropped).all())
    assert 0.3 < kept.float().mean().item() < 0.7
    layer.eval()
    torch.testing.assert_close(layer(x), base + 2 * x, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs, ok",
    [
        (dict(r=1), True),
        (dict(r=0), False),
        (dict(dropout=0.0), True),
        (dict(dropout=0.99), True),
        (dict(dropout=1.0), False),
        (dict(dropout=-0.1), False),
        (dict(targets=[]), False),
        (dict(targets=["attn.c_proj", "mlp.c_fc"]), True),
        (dict(targets=["wte"]), False),
    ],
)
def test_config_accepts_exactly_the_documented_ranges(kwargs, ok):
    """r >= 1, dropout in [0, 1), targets from the documented list; a refusal names the option
    it refuses (by its field: the CLI spells it as a flag)."""
    if ok:
        LoRAConfig(**kwargs)
    else:
        with pytest.raises(UserError) as e:
            LoRAConfig(**kwargs)
        [field] = kwargs
        assert e.value.field == field and f"`{field}`" in e.value.template


@pytest.mark.parametrize(
    "layers, expected",
    [
        (None, [0, 1, 2]),
        ([0], [0]),
        ([2, 0, 2], [0, 2]),
        ([3], "LoRA layer 3 does not exist; this model has blocks 0..2"),
        ([-1], "LoRA layer -1"),
    ],
)
def test_lora_layers_are_block_indices_from_zero(layers, expected):
    cfg = LoRAConfig(layers=layers)
    if isinstance(expected, list):
        assert cfg.layer_indices(3) == expected
    else:
        with pytest.raises(UserError, match=expected) as e:
            cfg.layer_indices(3)
        assert e.value.field == "layers"


def test_merge_unmerge_disable(tiny, tokens):
    path, hf = tiny
    base_logits = logits(hf, tokens)
    model = ours_with_lora(path, LoRAConfig(r=4, targets=["all-linear"]))
    before = {n: m.base.weight.clone() for n, m in lora_modules(model)}
    unmerged = logits(model, tokens)
    assert (unmerged - base_logits).abs().max() > 1e-3  # the adapters do something

    merge_lora(model)
    merged_once = {n: m.base.weight.clone() for n, m in lora_modules(model)}
    torch.testing.assert_close(logits(model, tokens), unmerged, atol=1e-5, rtol=0)
    merge_lora(model)  # a second merge must not add the update again
    for n, m in lora_modules(model):
        assert torch.equal(m.base.weight, merged_once[n])
    with disable_adapters(model):
        torch.testing.assert_close(logits(model, tokens), base_logits, atol=1e-5, rtol=0)
    assert all(m.merged for _, m in lora_modules(model))  # merged again on exit

    unmerge_lora(model)
    for n, m in lora_modules(model):
        torch.testing.assert_close(m.base.weight, before[n], atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(model, tokens), unmerged, atol=1e-5, rtol=0)
    with disable_adapters(model):
        torch.testing.assert_close(logits(model, tokens), base_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(model, tokens), unmerged, atol=1e-6, rtol=0)


def test_one_step_trains_only_adapters(tiny, tokens):
    model = ours_with_lora(tiny[0], LoRAConfig(r=4, targets=["c_attn", "mlp.c_fc"], dropout=0.1))
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" not in n}
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" in n}
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    model.loss(tokens[:, :-1], tokens[:, 1:]).backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None and torch.equal(p, frozen[n]), n
        else:
            assert not torch.equal(p, adapters[n]), n


def test_adapter_state_dict_round_trip_and_errors(tiny):
    cfg = LoRAConfig(r=2, targets=["c_proj"])
    src = ours_with_lora(tiny[0], cfg, seed=3)
    sd = {k: v.clone() for k, v in adapter_state_dict(src).items()}
    assert "transformer.h.1.mlp.c_proj.lora_B.weight" in sd and len(sd) == 2 * 2 * 2
    dst = apply_lora(load_model(tiny[0]), cfg)
    load_adapter_state_dict(dst, sd)
    for k, v in adapter_state_dict(dst).items():
        assert torch.equal(v, sd[k])
    with pytest.raises(UserError, match="no weight for transformer.h.0.attn.c_proj.lora_A"):
        load_adapter_state_dict(dst, {k: v for k, v in sd.items() if "h.0.attn" not in k})
    with pytest.raises(UserError, match="shape"):
        load_adapter_state_dict(
            dst, {**sd, "transformer.h.0.attn.c_proj.lora_A.weight": torch.zeros(3, 48)}
        )
    extra = "transformer.h.0.attn.c_attn.lora_A.weight"
    with pytest.raises(UserError, match=f"adapter has a weight for {extra}.*1 unexpected"):
        load_adapter_state_dict(dst, {**sd, extra: torch.zeros(2, 48)})
