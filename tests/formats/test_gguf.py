"""`gpt2tune export`: GGUF files loaded by llama.cpp itself (llama-cpp-python), against
transformers and peft: the model's logits at every position, a LoRA adapter with random B applied
by llama.cpp, the merged model; the Ollama template rendered by Go's own text/template; and every
refusal, with nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import make_hf_model

from gpt2tune.cli.main import main

llama_cpp = pytest.importorskip("llama_cpp")

PROMPT = "The captain told the sailor about the storm, and the harbour"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny GPT-2 64 wide (whole q8_0 blocks) and peft adapters on three kinds of projection
    with random B (``init_lora_weights=False``: a transposed or missing matrix shows)."""
    import peft
    from transformers import GPT2LMHeadModel

    root = tmp_path_factory.mktemp("gguf")
    hf = make_hf_model(root / "base", n_embd=64, n_head=2)
    targets = ["c_attn", "attn.c_proj", "mlp.c_fc"]
    adapters = {}
    kinds = {"lora": {}, "rslora": {"use_rslora": True}, "dora": {"use_dora": True}}
    for name, extra in kinds.items():
        torch.manual_seed(7)
        pm = peft.get_peft_model(
            GPT2LMHeadModel.from_pretrained(root / "base"),
            peft.LoraConfig(
                task_type="CAUSAL_LM",
                fan_in_fan_out=True,
                init_lora_weights=False,
                r=4,
                lora_alpha=8,
                target_modules=targets,
                **extra,
            ),
        ).eval()
        pm.save_pretrained(root / name)
        adapters[name] = (root / name, pm)
    return root, hf, adapters


def _ids(text: str) -> list[int]:
    from gpt2tune.core.tokenizer import Tokenizer

    return Tokenizer().encode(text)


def _llama_logits(path: Path, ids: list[int], lora: Path | None = None) -> np.ndarray:
    kw = {"lora_path": str(lora)} if lora else {}
    llm = llama_cpp.Llama(
        str(path), n_ctx=64, n_batch=64, logits_all=True, verbose=False, n_threads=1, **kw
    )
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float64)
    llm.close()
    return out


def _reference(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def _export(*args: str) -> None:
    assert main(["export", *args]) == 0


@pytest.mark.parametrize(
    # measured: f32 1.5e-4, f16 3.6e-4, bf16 2.8e-3, q8_0 1.3e-2 (logits' spread: 0.16)
    "dtype, tol",
    [("f32", 1e-3), ("f16", 2e-3), ("bf16", 1e-2), ("q8_0", 5e-2)],
)
def test_model_logits_equal_transformers(files, tmp_path, dtype, tol):
    """Every position's logits as transformers computes them: within 1e-3 in f32, within the
    rounding of the stored weights otherwise."""
    root, hf, _ = files
    out = tmp_path / f"m-{dtype}.gguf"
    _export("--model", str(root / "base"), "--out", str(out), "--dtype", dtype)
    ids = _ids(PROMPT)
    got, want = _llama_logits(out, ids), _reference(hf, ids)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < tol
    if dtype in ("f32", "f16"):  # the same greedy choice at every position
        assert (got.argmax(-1) == want.argmax(-1)).all()


def test_llama_cpp_tokenizes_as_gpt2(files, tmp_path):
    """The vocabulary and merges in the file give llama.cpp GPT-2's own tokens."""
    root, _, _ = files
    out = tmp_path / "m.gguf"
    _export("--model", str(root / "base"), "--out", str(out), "--dtype", "f32")
    llm = llama_cpp.Llama(str(out), n_ctx=64, verbose=False, vocab_only=True)
    text = "Hello, world! It's 2026: don't panic.\n  Naïve café"
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == _ids(text)
    assert llm.token_eos() == 50256


@pytest.mark.parametrize("kind", ["lora", "rslora"])
def test_lora_adapter_applied_by_llama_cpp_equals_peft(files, tmp_path, kind):
    """The adapter llama.cpp applies to the exported base gives peft's logits; merged into
    the model, the same."""
    root, _, adapters = files
    adapter_dir, pm = adapters[kind]
    base, adapter, merged = tmp_path / "b.gguf", tmp_path / "a.gguf", tmp_path / "m.gguf"
    _export("--model", str(root / "base"), "--out", str(base), "--dtype", "f32")
    _export("--model", str(root / "base"), "--adapter", str(adapter_dir), "--out", str(adapter))
    ids = _ids(PROMPT)
    want = _reference(pm, ids)
    plain = _llama_logits(base, ids)
    assert np.abs(plain - want).max() > 1e-2  # the adapter's effect is visible at this tolerance
    assert np.abs(_llama_logits(base, ids, lora=adapter) - want).max() < 1e-3
    _export(
        "--model", str(root / "base"), "--adapter", str(adapter_dir), "--merge",
        "--out", str(merged), "--dtype", "f32",
    )  # fmt: skip
    assert np.abs(_llama_logits(merged, ids) - want).max() < 1e-3


def test_dora_merged_equals_peft(files, tmp_path):
    root, _, adapters = files
    adapter_dir, pm = adapters["dora"]
    merged = tmp_path / "m.gguf"
    _export(
        "--model", str(root / "base"), "--adapter", str(adapter_dir), "--merge",
        "--out", str(merged), "--dtype", "f32",
    )  # fmt: skip
    ids = _ids(PROMPT)
    assert np.abs(_llama_logits(merged, ids) - _reference(pm, ids)).max() < 1e-3


def _go_render(template: str, messages: list[dict], tmp_path: Path) -> str:
    """``template`` executed by Go's text/template (Ollama's template language) over
    Ollama's ``.Messages``."""
    program = tmp_path / "render.go"
    program.write_text(
        "package main\n"
        'import ("encoding/json"; "os"; "text/template")\n'
        "type Message struct { Role string; Content string }\n"
        "type Data struct { Messages []Message }\n"
        "func main() {\n"
        "  var in struct { Template string; Messages []Message }\n"
        "  if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil { panic(err) }\n"
        '  t := template.Must(template.New("t").Parse(in.Template))\n'
        "  if err := t.Execute(os.Stdout, Data{in.Messages}); err != nil { panic(err) }\n"
        "}\n"
    )
    env = dict(os.environ, GOCACHE=str(tmp_path / "gocache"), GOPATH=str(tmp_path / "gopath"))
    payload = json.dumps(
        {
            "Template": template,
            "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages],
        }
    )
    done = subprocess.run(
        ["go", "run", str(program)], input=payload, capture_output=True, text=True, env=env,
        timeout=120, check=True,
    )  # fmt: skip
    return done.stdout


@pytest.mark.skipif(shutil.which("go") is None, reason="Go renders Ollama's template")
def test_ollama_folder_and_its_template_render_the_chat_template(files, tmp_path):
    """The Modelfile's TEMPLATE, executed by Go's text/template, writes every conversation
    exactly as gpt2tune's chat template renders it for the model to continue."""
    from gpt2tune.data.chat import Message, render_prompt

    root, _, adapters = files
    out = tmp_path / "ollama"
    _export("--model", str(root / "base"), "--adapter", str(adapters["lora"][0]),
            "--format", "ollama", "--out", str(out))  # fmt: skip
    assert {p.name for p in out.iterdir()} == {"model.gguf", "adapter.gguf", "Modelfile"}
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./model.gguf" in modelfile and "ADAPTER ./adapter.gguf" in modelfile
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    conversations = [
        [{"role": "user", "content": "What news?"}],
        [
            {"role": "system", "content": "Speak as Falstaff."},
            {"role": "user", "content": "What is honour?"},
            {"role": "assistant", "content": "A word."},
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "And in that word?"},
        ],
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "assistant", "content": "c"},
            {"role": "user", "content": "d"},
        ],
    ]
    for messages in conversations:
        ours = render_prompt([Message(m["role"], m["content"]) for m in messages])
        assert _go_render(template, messages, tmp_path) == ours


@pytest.mark.parametrize(
    "args, words",
    [
        (["--adapter", "{dora}"], "DoRA adapter, which llama.cpp cannot apply unmerged"),
        (["--merge"], "give --adapter"),
        (["--model", "{classifier}"], "is a classifier"),
        (["--out", "{existing}"], "exists; give --overwrite"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(files, tmp_path, capsys, args, words):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    root, _, adapters = files
    classifier = tmp_path / "clf"
    GPT2ForSequenceClassification(
        GPT2Config(n_layer=1, n_head=2, n_embd=64, n_positions=64, num_labels=2, pad_token_id=0)
    ).save_pretrained(classifier)
    existing = tmp_path / "there.gguf"
    existing.write_bytes(b"keep me")
    names = {"dora": adapters["dora"][0], "classifier": classifier, "existing": existing}
    args = [a.format(**names) for a in args]
    out = tmp_path / "new.gguf"
    cmd = ["export", "--model", str(root / "base"), "--out", str(out), *args]
    capsys.readouterr()  # (transformers' saving above writes a progress bar)
    assert main(cmd) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not out.exists() and existing.read_bytes() == b"keep me"


def test_ollama_overwrite_replaces_the_folder_whole(files, tmp_path):
    """--overwrite swaps a newly built folder in: nothing of the old one stays beside it."""
    root, _, _ = files
    out = tmp_path / "ollama"
    out.mkdir()
    (out / "old.txt").write_text("from before")
    _export("--model", str(root / "base"), "--format", "ollama", "--out", str(out),
            "--dtype", "f32", "--overwrite")  # fmt: skip
    assert {p.name for p in out.iterdir()} == {"model.gguf", "Modelfile"}
    assert not any(p.name != "ollama" for p in tmp_path.iterdir() if p.name.startswith("ollama"))
