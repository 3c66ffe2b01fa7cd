"""Several adapters over one base, chosen per row, against peft with each adapter alone."""

import peft
import pytest
import torch
from lora_helpers import hf_base, logits

from gpt2tune.core.model import cast_for_inference
from gpt2tune.core.multilora import (
    AdapterBank,
    MultiLoRALinear,
    adapter_bank,
    add_adapter,
    install_adapters,
    remove_adapter,
)
from gpt2tune.errors import UserError
from gpt2tune.formats.hf import load_model
from gpt2tune.formats.peft import load_adapter, read_adapter

ADAPTERS = {
    "attn": dict(r=4, lora_alpha=8, target_modules=["c_attn"]),
    "mlp": dict(r=2, lora_alpha=16, target_modules=["c_fc", "mlp.c_proj"], use_rslora=True),
}


@pytest.fixture(scope="module")
def peft_adapters(tiny, tmp_path_factory):
    """name -> (adapter dir, the peft model with that adapter alone); B random (init=False)."""
    path, _ = tiny
    out = {}
    for i, (name, kwargs) in enumerate(ADAPTERS.items()):
        torch.manual_seed(10 + i)
        pm = peft.get_peft_model(
            hf_base(path),
            peft.LoraConfig(
                task_type="CAUSAL_LM", fan_in_fan_out=True, init_lora_weights=False, **kwargs
            ),
        ).eval()
        d = tmp_path_factory.mktemp(f"adapter-{name}")
        pm.save_pretrained(d)
        out[name] = (d, pm)
    return out


def test_each_row_gets_its_own_adapter_as_peft_computes_it(tiny, peft_adapters, tokens):
    path, hf = tiny
    model = load_model(path).eval()
    adapters = {n: read_adapter(d, model) for n, (d, _) in peft_adapters.items()}
    bank = install_adapters(model, adapters)
    assert adapter_bank(model) is bank and bank.names == ["attn", "mlp"]
    x = torch.cat([tokens, tokens[:1]])  # three rows: attn, base, mlp
    rows = ["attn", None, "mlp"]
    with bank.select(rows, x.device):
        mixed = logits(model, x)
    refs = [
        logits(peft_adapters["attn"][1], x[:1]),
        logits(hf, x[1:2]),
        logits(peft_adapters["mlp"][1], x[2:]),
    ]
    for i, ref in enumerate(refs):
        torch.testing.assert_close(mixed[i : i + 1], ref, atol=1e-5, rtol=0)
    # the adapters really differ from the base and from each other
    assert (refs[0] - logits(hf, x[:1])).abs().max() > 1e-3
    assert (refs[2] - logits(hf, x[2:])).abs().max() > 1e-3
    # outside select every row is the base
    torch.testing.assert_close(logits(model, x[1:2]), refs[1], atol=1e-5, rtol=0)


def test_a_row_alone_equals_the_unmerged_single_adapter_model(tiny, peft_adapters, tokens):
    path, _ = tiny
    d = peft_adapters["mlp"][0]
    single = load_model(path).eval()
    load_adapter(single, d)
    multi = load_model(path).eval()
    bank = install_adapters(multi, {"mlp": read_adapter(d, multi)})
    with bank.select(["mlp"] * len(tokens), tokens.device):
        got = logits(multi, tokens)
    assert torch.equal(got, logits(single, tokens))


def test_unknown_adapter_and_model_with_applied_lora_are_refused(tiny, peft_adapters):
    path, _ = tiny
    model = load_model(path)
    d = peft_adapters["attn"][0]
    bank = install_adapters(model, {"attn": read_adapter(d, model)})
    with pytest.raises(KeyError), bank.select(["nope"], torch.device("cpu")):
        pass
    applied = load_model(path)
    load_adapter(applied, d)
    with pytest.raises(UserError, match="already has a LoRA adapter"):
        install_adapters(applied, {"attn": read_adapter(d, applied)})


def test_mixed_rows_equal_each_adapter_alone(tiny, peft_adapters, tokens):
    """Rows of two adapters of different ranks and targets and a base row, decoded together
    (the batched gather), give each row what its adapter gives in a batch of its own."""
    path, _ = tiny
    model = load_model(path).eval()
    adapters = {n: read_adapter(d, model) for n, (d, _) in peft_adapters.items()}
    bank = install_adapters(model, adapters)
    x = torch.cat([tokens, tokens, tokens[:1]])  # five rows
    rows = ["mlp", "attn", None, "attn", "mlp"]
    with bank.select(rows, x.device):
        assert bank.slots is not None  # the batched path
        mixed = logits(model, x)
    for i, name in enumerate(rows):
        with bank.select([name], x.device):
            alone = logits(model, x[i : i + 1])
        torch.testing.assert_close(mixed[i : i + 1], alone, atol=1e-6, rtol=0)


def test_adapters_added_and_removed_at_run_time_equal_installed_ones(tiny, peft_adapters, tokens):
    """A server adds and removes adapters between forward passes: an adapter added to a model
    that serves in bf16 (cast before the add) gives exactly what the same adapter installed at
    load time (then cast) gives, as `gpt2tune generate --adapter` runs it; removing one leaves the
    other's rows as they were, and removing the last leaves the plain base model."""
    path, _ = tiny
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    reference = load_model(path).eval()
    ref_bank = install_adapters(
        reference, {n: read_adapter(d, reference) for n, (d, _) in peft_adapters.items()}
    )
    cast_for_inference(reference, torch.bfloat16)
    x = torch.cat([tokens, tokens[:1]])
    rows = ["mlp", None, "attn"]
    with ref_bank.select(rows, x.device), bf16:
        want = logits(reference, x)
    model = cast_for_inference(load_model(path).eval(), torch.bfloat16)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    bank = AdapterBank()
    with bank.select([None] * len(x), x.device), bf16:  # decoding the base before the first add
        assert torch.equal(logits(model, x)[1], want[1])
    for name, (d, _) in peft_adapters.items():
        add_adapter(model, bank, name, *read_adapter(d, model))
    with bank.select(rows, x.device), bf16:
        assert torch.equal(logits(model, x), want)
    with pytest.raises(UserError, match="installed already"):
        add_adapter(model, bank, "mlp", *read_adapter(peft_adapters["mlp"][0], model))
    remove_adapter(model, bank, "attn")  # index 0: the "mlp" rows now gather another slot
    assert bank.names == ["mlp"]
    with bank.select(["mlp", None, "mlp"], x.device), bf16:
        got = logits(model, x)
    assert torch.equal(got[:2], want[:2])
    with pytest.raises(KeyError), bank.select(["attn"], x.device):
        pass
    with pytest.raises(KeyError):
        remove_adapter(model, bank, "attn")
    remove_adapter(model, bank, "mlp")
    assert bank.names == [] and adapter_bank(model) is None
    assert not any(isinstance(m, MultiLoRALinear) for m in model.modules())
    after = model.state_dict()
    assert after.keys() == base.keys() and all(torch.equal(after[k], base[k]) for k in base)
