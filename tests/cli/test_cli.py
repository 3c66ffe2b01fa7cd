"""End-to-end CLI tests: `gpt2tune generate / eval / info` through cli.main(argv)."""

import json
import subprocess
import sys

import pytest
import torch

from gpt2tune.cli.main import main
from gpt2tune.core.tokenizer import Tokenizer


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_json_greedy_matches_transformers(capsys, tiny_hf):
    path, hf = tiny_hf
    code, out, _ = run(
        capsys,
        "generate",
        "--model",
        str(path),
        "--prompt",
        "Hello there",
        "--greedy",
        "--max-new-tokens",
        "12",
        "--json",
        "--num-samples",
        "2",
        "--precision",
        "fp32",
    )  # transformers' reference runs in fp32
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 2 and all({"text", "token_ids"} <= r.keys() for r in rows)
    prompt = Tokenizer().encode("Hello there")
    ref = hf.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        max_new_tokens=12,
        pad_token_id=50256,
    )[0, len(prompt) :].tolist()
    if 50256 in ref:
        ref = ref[: ref.index(50256)]
    assert rows[0]["token_ids"] == ref
    assert rows[0]["text"] == Tokenizer().decode(ref)


def test_generate_with_prime_file_and_seed_is_reproducible(capsys, tiny_hf, tmp_path):
    """Same seed, same samples; and the prime really conditions them: the prime file gives the
    tokens of the prime text placed before the prompt (joined with a newline), not those of the
    prompt alone."""
    prime = tmp_path / "prime.txt"
    prime.write_text("FALSTAFF: A plague of all cowards, I say.")
    base = [
        "generate",
        "--model",
        str(tiny_hf[0]),
        "--prompt",
        "FALSTAFF:",
        "--max-new-tokens",
        "8",
        "--json",
        "--precision",
        "fp32",
    ]
    sampled = [
        *base,
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--temperature",
        "0.8",
        "--repetition-penalty",
        "1.2",
        "--seed",
        "5",
        "--prime-file",
        str(prime),
    ]
    results = [run(capsys, *sampled) for _ in range(2)]
    assert [code for code, _, _ in results] == [0, 0]
    assert results[0][1] == results[1][1] and json.loads(results[0][1])["token_ids"]
    primed = run(capsys, *base, "--greedy", "--prime-file", str(prime))
    alone = run(capsys, *base, "--greedy")
    assert primed[0] == alone[0] == 0
    ids = json.loads(primed[1])["token_ids"]
    assert ids != json.loads(alone[1])["token_ids"]
    # the reference: transformers' greedy continuation of prime + "\n" + prompt
    path, hf = tiny_hf
    context = Tokenizer().encode("FALSTAFF: A plague of all cowards, I say.\nFALSTAFF:")
    ref = hf.generate(
        torch.tensor([context]),
        attention_mask=torch.ones(1, len(context), dtype=torch.long),
        do_sample=False,
        max_new_tokens=8,
        pad_token_id=50256,
    )[0, len(context) :].tolist()
    if 50256 in ref:
        ref = ref[: ref.index(50256)]
    assert ids == ref


def test_eval_json_equals_transformers_loss(capsys, tiny_hf, tmp_path):
    path, hf = tiny_hf
    data = tmp_path / "docs.txt"
    texts = ["First document here.", "Second one,\nwith two lines."]
    data.write_text("\n\n".join(texts) + "\n")
    code, out, _ = run(capsys, "eval", "--model", str(path), "--data", str(data), "--json")
    assert code == 0
    res = json.loads(out)
    tok = Tokenizer()
    total, count = 0.0, 0
    for t in texts:
        ids = torch.tensor([tok.encode(t) + [50256]])
        with torch.no_grad():
            total += hf(ids, labels=ids).loss.item() * (ids.size(1) - 1)
        count += ids.size(1) - 1
    assert res["tokens"] == count
    assert res["loss"] == pytest.approx(total / count, abs=1e-5)
    assert res["perplexity"] == pytest.approx(torch.tensor(total / count).exp().item(), rel=1e-5)


def test_info(capsys, tiny_hf):
    code, out, _ = run(capsys, "info", "--model", str(tiny_hf[0]), "--json")
    info = json.loads(out)
    assert code == 0
    assert info["parameters"] == sum(p.numel() for p in tiny_hf[1].parameters())
    assert info["config"]["n_head"] == 3 and info["dtype"] == "float32"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--model", "/no/such/dir", "--prompt", "x"], "does not exist"),
        (["eval", "--model", "MODEL", "--data", "/no/such/file.txt"], "does not exist"),
        (["eval", "--model", "MODEL", "--data", "x.txt", "--batch-size", "0"], "--batch-size"),
        (
            ["eval", "--model", "MODEL", "--data", "builtin:news", "--block-size", "65"],
            "--block-size",
        ),
        (["generate", "--model", "MODEL"], "nothing to condition on"),
        (["generate", "--model", "MODEL", "--prompt", "x", "--top-p", "1.5"], "--top-p"),
        (["generate", "--model", "MODEL", "--prompt", "x", "--max-new-tokens", "64"], "context"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, tiny_hf, argv, message):
    argv = [str(tiny_hf[0]) if a == "MODEL" else a for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv, flag",
    [
        # LoRAConfig's r and dropout are --lora-r and --lora-dropout in train (a prefixed group)
        (["train", "--lora-r", "0"], "--lora-r"),
        (["train", "--lora-dropout", "1.5"], "--lora-dropout"),
        (["train", "--val-split", "1.5"], "--val-split"),
        (["train", "--val-split", "0.2", "--val-data", "DATA"], "--val-data"),
        (["compare", "--val-split", "0.2", "--val-data", "DATA", "--plan"], "--val-data"),
        (["compare", "--methods", "nope", "--plan"], "--methods"),
    ],
)
def test_library_errors_name_this_commands_flags(capsys, tiny_hf, tmp_path, argv, flag):
    """The library names the field (`r`); each command spells it as its own flag."""
    data = tmp_path / "d.txt"
    data.write_text("one document\n\nanother one\n\na third")
    base = [
        "--model" if argv[0] == "train" else "--base",
        str(tiny_hf[0]),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "out"),
    ]
    code, _, err = run(capsys, argv[0], *base, *[str(data) if a == "DATA" else a for a in argv[1:]])
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert flag in err and "`" not in err, err


def test_not_a_gpt2_directory(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    code, _, err = run(capsys, "info", "--model", str(tmp_path))
    assert code == 2 and "not 'gpt2'" in err


def test_non_utf8_data_is_a_clear_error(capsys, tiny_hf, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    code, _, err = run(capsys, "eval", "--model", str(tiny_hf[0]), "--data", str(bad))
    assert code == 2 and "not UTF-8" in err


def test_python_dash_m_entry_point(tiny_hf):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpt2tune",
            "generate",
            "--model",
            str(tiny_hf[0]),
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "3",
            "--greedy",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Hi")


def _adapter(tiny_hf, out):
    from gpt2tune.core.lora import LoRAConfig, apply_lora
    from gpt2tune.formats.hf import load_model
    from gpt2tune.formats.peft import save_adapter

    model = load_model(tiny_hf[0])
    cfg = LoRAConfig(r=2)
    apply_lora(model, cfg)
    save_adapter(model, out, cfg, str(tiny_hf[0]))
    return out


def test_merge_replaces_a_non_empty_out_only_with_overwrite(capsys, tiny_hf, tmp_path):
    adapter = _adapter(tiny_hf, tmp_path / "adapter")
    out = tmp_path / "merged"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["merge", "--model", str(tiny_hf[0]), "--adapter", str(adapter), "--out", str(out)]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    # a bad adapter fails before --overwrite empties --out
    code, _, err = run(
        capsys, *argv[:4], "--adapter", str(tmp_path / "none"), "--out", str(out), "--overwrite"
    )
    assert code == 2 and (out / "notes.txt").exists()
    assert run(capsys, *argv, "--overwrite")[0] == 0
    assert (out / "config.json").exists() and not (out / "notes.txt").exists()


def test_data_show_takes_a_config_file(tmp_path):
    from gpt2tune.cli.main import build_parser

    cfg = tmp_path / "show.toml"
    cfg.write_text("json = true\n")

    def parse(*argv):
        args = vars(build_parser()[0].parse_args(list(argv)))
        args.pop("config")
        return args

    from_file = parse("data", "show", "builtin:news", "--config", str(cfg))
    assert (
        from_file
        == parse("data", "show", "builtin:news", "--json")
        != parse("data", "show", "builtin:news")
    )


def test_eval_reads_the_text_field_and_a_builtin_test_split(capsys, tiny_hf, tmp_path):
    from gpt2tune.data.builtin import load_builtin

    tok = Tokenizer()
    data = tmp_path / "docs.jsonl"
    data.write_text('{"body": "First document here."}\n{"body": "Second one."}\n')
    code, out, _ = run(
        capsys,
        "eval",
        "--model",
        str(tiny_hf[0]),
        "--data",
        str(data),
        "--text-field",
        "body",
        "--json",
    )
    assert code == 0
    # every token after the first of "text + <|endoftext|>" is scored
    assert json.loads(out)["tokens"] == sum(
        len(tok.encode(t)) for t in ["First document here.", "Second one."]
    )
    # builtin names are scored on their held-out split, as the help and the demo's commands say
    code, out, _ = run(
        capsys, "eval", "--model", str(tiny_hf[0]), "--data", "builtin:news", "--json"
    )
    assert code == 0
    test_docs = load_builtin("builtin:news", "test")
    assert json.loads(out)["tokens"] == sum(len(ids) for ids in tok.encode_batch(test_docs))


def test_generate_defaults_to_bf16_exactly_where_the_machine_has_it(capsys, tiny_hf):
    """--precision auto (the default): the tokens of --precision bf16 on a CPU with native bf16,
    of fp32 elsewhere. Sampled with a seed from the tiny model's nearly flat distribution, where
    bf16's rounding of the logits moves the sampled tokens."""
    from gpt2tune.runtime import cpu_has_bf16

    args = (
        "generate",
        "--model",
        str(tiny_hf[0]),
        "--prompt",
        "Hello there",
        "--seed",
        "1",
        "--max-new-tokens",
        "24",
        "--json",
        "--device",
        "cpu",
    )
    default = run(capsys, *args)[1]
    bf16, fp32 = (run(capsys, *args, "--precision", p)[1] for p in ("bf16", "fp32"))
    assert bf16 != fp32
    assert default == (bf16 if cpu_has_bf16() else fp32)


def test_every_command_gets_the_process_settings(monkeypatch, capsys, tiny_hf):
    """keep_freed_memory (glibc keeps freed blocks: 1.8x faster steps for small models) is set
    for whatever command runs, not only for some (train ran without it)."""
    import gpt2tune.cli.main as cli_main

    calls = []
    monkeypatch.setattr(cli_main, "keep_freed_memory", lambda: calls.append(1) or True)
    for argv in (["info", "--model", str(tiny_hf[0])], ["data", "list"]):
        assert main(argv) == 0
    assert len(calls) == 2


def test_end_of_text_always_ends_a_sample(capsys, tmp_path):
    """A model made to predict <|endoftext|> after a few tokens: the sample stops there (no
    --stop needed), as transformers' greedy generation with GPT-2's eos stops."""
    from checkpoints import make_hf_model

    hf = make_hf_model(tmp_path / "m", seed=2)
    # the final LayerNorm outputs a fixed vector along <|endoftext|>'s embedding from position 3 on:
    # position embeddings of positions >= 3 push the residual stream there
    with torch.no_grad():
        eot = hf.transformer.wte.weight[50256]
        hf.transformer.wte.weight[50256] = eot / eot.norm() * 3.0
        hf.transformer.wpe.weight[3:] = hf.transformer.wte.weight[50256] * 50.0
    hf.save_pretrained(tmp_path / "m")
    prompt = Tokenizer().encode("Hi")
    ref = hf.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        max_new_tokens=20,
        pad_token_id=50256,
    )[0, len(prompt) :].tolist()
    assert 50256 in ref and 0 < ref.index(50256) < 19, ref  # stops early, not at once
    code, out, _ = run(
        capsys,
        "generate",
        "--model",
        str(tmp_path / "m"),
        "--prompt",
        "Hi",
        "--greedy",
        "--max-new-tokens",
        "20",
        "--json",
        "--precision",
        "fp32",
    )
    assert code == 0
    assert json.loads(out)["token_ids"] == ref[: ref.index(50256)]


def test_eval_default_stride_is_half_the_context(capsys, tiny_hf, tmp_path):
    """A document longer than the context (64) is scored in windows that, by default, move on by
    32 tokens: the reference is transformers on windows cut by hand by the documented rule."""
    path, hf = tiny_hf
    text = " ".join(f"word{i}" for i in range(70))
    ids = Tokenizer().encode(text) + [50256]
    assert len(ids) > 130
    data = tmp_path / "long.txt"
    data.write_text(text + "\n")
    # the first window scores tokens 1..63; each later one the next 32 (fewer at the end), with
    # as much earlier context as fits in 64 positions
    ends = [64] + list(range(96, len(ids), 32)) + [len(ids)]
    total, scored = 0.0, 1
    for end in ends:
        begin = max(0, end - 64)
        with torch.no_grad():
            logp = hf(torch.tensor([ids[begin:end]])).logits[0].log_softmax(-1)
        total -= sum(float(logp[j - 1 - begin, ids[j]]) for j in range(scored, end))
        scored = end
    assert scored == len(ids)
    code, out, err = run(capsys, "eval", "--model", str(path), "--data", str(data), "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["tokens"] == len(ids) - 1
    assert res["loss"] == pytest.approx(total / (len(ids) - 1), abs=1e-5)
    code, out, _ = run(
        capsys, "eval", "--model", str(path), "--data", str(data), "--json", "--stride", "64"
    )
    assert code == 0 and json.loads(out)["loss"] != pytest.approx(res["loss"], abs=1e-5)


def test_no_pack_trains_on_each_document_alone(capsys, tmp_path):
    """With --no-pack each row is one document, padding out of the loss: the first step's loss
    (before any update, no dropout, every row in one batch) is transformers' loss over the
    documents each scored alone; packed with --pack-attention causal, the documents see each
    other and the loss differs."""
    from checkpoints import make_hf_model

    hf = make_hf_model(tmp_path / "base", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    texts = [
        "The cat sat on the mat.",
        "Markets fell sharply on Monday after the news.",
        "Short one",
        "A fourth document, somewhat longer than the others, with commas.",
    ]
    data = tmp_path / "docs.txt"
    data.write_text("\n\n".join(texts) + "\n")
    total, count = 0.0, 0
    for t in texts:
        ids = torch.tensor([Tokenizer().encode(t) + [50256]])
        with torch.no_grad():
            total += hf(ids, labels=ids).loss.item() * (ids.size(1) - 1)
        count += ids.size(1) - 1
    losses = {}
    for pack in (["--pack-attention", "causal"], ["--no-pack"]):
        out = tmp_path / f"run{len(pack)}"
        code, _, err = run(
            capsys,
            "train",
            "--model",
            str(tmp_path / "base"),
            "--data",
            str(data),
            "--method",
            "full",
            "--max-steps",
            "1",
            "--batch-size",
            "8",
            "--block-size",
            "32",
            "--precision",
            "fp32",
            "--out",
            str(out),
            "--no-progress",
            *pack,
        )
        assert code == 0, err
        first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        losses["--no-pack" in pack] = first["loss"]
    assert losses[True] == pytest.approx(total / count, abs=1e-4)
    assert losses[False] != pytest.approx(total / count, abs=1e-3)
