"""HF-format checkpoints in and out, checked against transformers."""

import json

import pytest
import torch
from checkpoints import make_hf_model

from gpt2tune.errors import UserError
from gpt2tune.formats.hf import load_model, save_model


def test_our_save_loads_in_transformers_with_identical_logits(tiny_hf, tmp_path):
    from transformers import GPT2LMHeadModel

    path, hf = tiny_hf
    ours = load_model(path)
    with torch.no_grad():  # make the weights differ from the source so the round trip is real
        w = ours.transformer.h[0].attn.c_attn.weight
        w.add_(0.01 * torch.randn_like(w))
    save_model(ours, tmp_path / "out")
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    assert back.lm_head.weight.data_ptr() == back.transformer.wte.weight.data_ptr()
    x = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        assert (back(x).logits - ours(x)).abs().max().item() <= 1e-5
    for name in ("vocab.json", "merges.txt", "config.json", "model.safetensors"):
        assert (tmp_path / "out" / name).is_file()


def test_transformers_tokenizer_loads_saved_dir(tiny_hf, tmp_path):
    from transformers import AutoTokenizer

    save_model(load_model(tiny_hf[0]), tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok("Hello world")["input_ids"] == [15496, 995]


def test_pytorch_model_bin_and_old_key_names(tmp_path):
    """OpenAI's original upload: no 'transformer.' prefix, mask buffers, a .bin file."""
    hf = make_hf_model(tmp_path / "src", vocab_size=300)
    sd = {
        k.removeprefix("transformer."): v
        for k, v in hf.state_dict().items()
        if k != "lm_head.weight"
    }
    for i in range(hf.config.n_layer):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    d = tmp_path / "bin"
    d.mkdir()
    torch.save(sd, d / "pytorch_model.bin")
    (d / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    ours = load_model(d)
    x = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() <= 1e-5


class _RunsCode:
    """An object whose unpickling runs code (it creates a file): what a malicious .bin holds."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_pytorch_model_bin_that_runs_code_is_refused(tmp_path, capsys):
    """pytorch_model.bin is read weights-only: a pickle that would run code is one clear line,
    and the code never runs (the marker file is not created)."""
    from gpt2tune.cli.main import main

    hf = make_hf_model(tmp_path / "src", vocab_size=300)
    d = tmp_path / "bin"
    d.mkdir()
    marker = tmp_path / "ran"
    sd = dict(hf.state_dict())
    sd["payload"] = _RunsCode(marker)
    torch.save(sd, d / "pytorch_model.bin")
    (d / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    with pytest.raises(UserError, match="weights-only"):
        load_model(d)
    capsys.readouterr()
    assert main(["generate", "--model", str(d), "--prompt", "x", "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert "weights-only" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()
    # the same file unpickled without weights_only does run the code (the test's own check)
    torch.load(d / "pytorch_model.bin", weights_only=False)
    assert marker.exists()


def test_sharded_safetensors(tmp_path):
    hf = make_hf_model(tmp_path / "src", vocab_size=300)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    ours = load_model(tmp_path / "sharded")
    x = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() <= 1e-5


def test_not_gpt2_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserError, match="not 'gpt2'"):
        load_model(tmp_path)


def test_missing_weights_and_missing_dir(tmp_path, tiny_hf):
    (tmp_path / "config.json").write_text((tiny_hf[0] / "config.json").read_text())
    with pytest.raises(UserError, match="no model weights"):
        load_model(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nope" / "deeper" / "dir")


def test_weights_of_another_config_are_rejected(tmp_path, tiny_hf):
    make_hf_model(tmp_path, n_embd=24, n_head=2)
    (tmp_path / "config.json").write_text((tiny_hf[0] / "config.json").read_text())
    with pytest.raises(UserError, match="do not belong to this config"):
        load_model(tmp_path)


def test_offline_hub_id_says_how_to_point_at_a_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="pass model /path/to/dir"):
        load_model("nobody-has-this/gpt2-not-cached")


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_key_set_must_match_exactly(tmp_path, tiny_hf, change):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "m"
    path.mkdir()
    (path / "config.json").write_text((tiny_hf[0] / "config.json").read_text())
    sd = load_file(str(tiny_hf[0] / "model.safetensors"))
    if change == "extra":
        sd["transformer.h.0.attn.c_attn.lora_A.weight"] = torch.zeros(4, 48)
    else:
        del sd["transformer.h.1.mlp.c_fc.bias"]
    save_file(sd, str(path / "model.safetensors"))
    with pytest.raises(UserError, match="unexpected|missing") as e:
        load_model(path)
    key = "lora_A" if change == "extra" else "h.1.mlp.c_fc.bias"
    assert key in str(e.value)


def test_the_model_knows_where_it_was_loaded_from(tiny_hf, tmp_path):
    from gpt2tune.core.model import GPT2, GPT2Config

    assert GPT2(GPT2Config.from_preset("gpt2-nano")).source_dir is None
    model = load_model(tiny_hf[0])
    assert model.source_dir == tiny_hf[0]
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied after loading
    save_model(model, tmp_path / "copy")
    assert load_model(tmp_path / "copy").source_dir == tmp_path / "copy"


def test_the_config_we_write_spells_every_key_as_transformers_does(tiny_hf, tmp_path):
    """Each key of our config.json has the name and value transformers writes for the same
    model (n_ctx, for older readers, is n_positions)."""
    path, _ = tiny_hf
    save_model(load_model(path), tmp_path / "ours")
    ours = json.loads((tmp_path / "ours" / "config.json").read_text())
    theirs = json.loads((path / "config.json").read_text())  # written by transformers
    assert ours.pop("n_ctx") == ours["n_positions"]
    assert {k: v for k, v in ours.items() if k not in theirs} == {}
    assert {k: (v, theirs[k]) for k, v in ours.items() if theirs[k] != v} == {}


def test_a_minimal_config_gets_transformers_defaults(tmp_path):
    """A config.json with only the architecture: every other setting as transformers reads it."""
    from transformers import GPT2Config as HFConfig

    from gpt2tune.formats.hf import config_from_hf

    minimal = {
        "model_type": "gpt2",
        "n_layer": 2,
        "n_head": 3,
        "n_embd": 48,
        "n_positions": 64,
        "vocab_size": 1000,
    }
    ours, ref = config_from_hf(dict(minimal)), HFConfig(**minimal)
    for field in (
        "n_layer",
        "n_head",
        "n_embd",
        "n_positions",
        "vocab_size",
        "n_inner",
        "embd_pdrop",
        "attn_pdrop",
        "resid_pdrop",
        "layer_norm_epsilon",
    ):
        assert getattr(ours, field) == getattr(ref, field), field
    assert ref.activation_function == "gelu_new"  # the one GPT-2 activation gpt2tune runs
    with pytest.raises(UserError, match="activation"):
        config_from_hf({**minimal, "activation_function": "relu"})
