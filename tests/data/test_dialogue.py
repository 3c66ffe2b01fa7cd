"""Dialogue data (prompt/completion and chat messages): read from the fields, rendered by the one
chat template, trained with the loss on the reply only; bad rows are one line naming the row."""

from __future__ import annotations

import json

import pytest
import torch
from first_step import first_loss

from gpt2tune.cli.main import main
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.serve.protocol import ChatMessage, chat_prompt

EOT = 50256
PAIRS = [
    ("What news on the Rialto?", "Why, nothing, my lord."),
    ("Where is the captain?", "Gone to the harbour, sir, with the rope and lantern."),
    ("Will you dine with us?", "Aye."),
    ("Tell me a tale.", "There was a gull that told the storm about the anchor."),
]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _reference(hf, examples, mask_prompt=True):
    """transformers' loss over the examples, each scored alone, the prompt's tokens masked
    (labels -100): a mean over every scored token of every example."""
    tok = Tokenizer()
    total, count = 0.0, 0
    for prompt, reply in examples:
        p, r = tok.encode(prompt), tok.encode(reply) + [EOT]
        ids = torch.tensor([p + r])
        labels = ids.clone()
        if mask_prompt:
            labels[0, : len(p)] = -100
        n = int((labels[0, 1:] != -100).sum())
        with torch.no_grad():
            total += hf(ids, labels=labels).loss.item() * n
        count += n
    return total / count


def test_prompt_completion_loss_covers_the_reply_only(capsys, nodrop, tmp_path):
    """The first step's loss (before any update, every example in one batch) is transformers'
    loss with the prompts masked, example by example; with --loss-on all, over every token."""
    base, hf = nodrop
    data = _jsonl(tmp_path / "pc.jsonl", [{"prompt": p, "completion": " " + c} for p, c in PAIRS])
    examples = [(p, " " + c) for p, c in PAIRS]
    masked = first_loss(capsys, base, data, tmp_path / "masked")
    assert masked == pytest.approx(_reference(hf, examples), abs=1e-4)
    # packed (the default) or one example per row: the same loss, no example seeing another
    alone = first_loss(capsys, base, data, tmp_path / "alone", "--no-pack")
    assert alone == pytest.approx(masked, abs=1e-5)
    everything = first_loss(capsys, base, data, tmp_path / "all", "--loss-on", "all")
    assert everything == pytest.approx(_reference(hf, examples, mask_prompt=False), abs=1e-4)
    assert masked != pytest.approx(everything, abs=1e-3)


def test_chat_messages_render_as_the_server_renders_them(capsys, nodrop, tmp_path):
    """A conversation's prompt is the template the server uses (written out here by hand), and
    its target is " " + the last reply, then <|endoftext|>."""
    base, hf = nodrop
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Speak as Falstaff."},
                {"role": "user", "content": p},
                {"role": "assistant", "content": c},
            ]
        }
        for p, c in PAIRS
    ]
    data = _jsonl(tmp_path / "chat.jsonl", rows)
    by_hand = [(f"Speak as Falstaff.\n\nUser: {p}\nAssistant:", " " + c) for p, c in PAIRS]
    served = chat_prompt(
        [
            ChatMessage(role="system", content="Speak as Falstaff."),
            ChatMessage(role="user", content=PAIRS[0][0]),
        ],
        Tokenizer(),
    )
    assert served == Tokenizer().encode(by_hand[0][0])
    loss = first_loss(capsys, base, data, tmp_path / "chat")
    assert loss == pytest.approx(_reference(hf, by_hand), abs=1e-4)


def test_every_assistant_turn_of_a_conversation_is_a_target(capsys, nodrop, tmp_path):
    """Several turns: every reply (" " + its text, then the <|endoftext|> token) is scored, the
    rest is context, and the next turn starts on a new line after that token. The reference is
    transformers on each conversation written out here by hand, labels -100 outside the replies;
    scoring the last reply only would give another loss."""
    base, hf = nodrop
    tok = Tokenizer()
    conversations = [PAIRS[:2], PAIRS[2:]]
    rows = [
        {
            "messages": [
                m
                for p, c in conv
                for m in ({"role": "user", "content": p}, {"role": "assistant", "content": c})
            ]
        }
        for conv in conversations
    ]
    data = _jsonl(tmp_path / "turns.jsonl", rows)

    def reference(last_only: bool) -> float:
        total, count = 0.0, 0
        for conv in conversations:
            ids: list[int] = []
            labels: list[int] = []
            for i, (p, c) in enumerate(conv):
                context = tok.encode(("\n" if i else "") + f"User: {p}\nAssistant:")
                reply = tok.encode(" " + c) + [EOT]
                scored = not last_only or i == len(conv) - 1
                ids += context + reply
                labels += [-100] * len(context) + (reply if scored else [-100] * len(reply))
            n = sum(t != -100 for t in labels[1:])
            with torch.no_grad():
                total += hf(torch.tensor([ids]), labels=torch.tensor([labels])).loss.item() * n
            count += n
        return total / count

    loss = first_loss(capsys, base, data, tmp_path / "turns")
    assert loss == pytest.approx(reference(last_only=False), abs=1e-4)
    assert loss != pytest.approx(reference(last_only=True), abs=1e-3)


def test_typed_end_of_text_stays_characters():
    """A user who types "<|endoftext|>" gets those characters: the token closes replies only."""
    from gpt2tune.data.chat import Message, prompt_ids

    tok = Tokenizer()
    text = "say <|endoftext|> twice"
    ids = prompt_ids(
        [Message("user", text), Message("assistant", "ok"), Message("user", text)], tok
    )
    assert ids.count(EOT) == 1  # the one after the assistant's "ok"
    assert tok.decode(ids).count("<|endoftext|>") == 3


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "a"}, "'completion' must be a string, got missing"),
        ({"prompt": 3, "completion": "b"}, "'prompt' must be a string, got a int"),
        ({"prompt": "a", "completion": "  "}, "a completion (a reply) is empty"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "bard", "content": "b"}]},
            "unknown role 'bard'",
        ),
        (
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]},
            "the last message must be the assistant's reply",
        ),
    ],
)
def test_a_bad_row_is_one_line_naming_the_row(capsys, tiny_hf, tmp_path, row, message):
    first = (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
        if "messages" in row
        else {"prompt": "hi", "completion": " yo"}
    )
    data = _jsonl(tmp_path / "d.jsonl", [first, first, row])
    out = tmp_path / "out"
    code = main(
        [
            "train",
            "--model",
            str(tiny_hf[0]),
            "--data",
            str(data),
            "--out",
            str(out),
            "--max-steps",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{data}: line 3" in err and message in err, err
    assert not out.exists()  # nothing written


def test_an_example_longer_than_the_block_is_an_error_not_dropped(capsys, tiny_hf, tmp_path):
    long = {"prompt": "word " * 60, "completion": " reply"}
    data = _jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": " b"}, long, long])
    code = main(
        [
            "train",
            "--model",
            str(tiny_hf[0]),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "o"),
            "--block-size",
            "32",
            "--max-steps",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "2 of 3 examples are longer than --block-size 32" in err, err
    assert "example 2" in err


def test_held_out_examples_are_scored_on_their_replies(capsys, nodrop, tmp_path):
    """--val-split holds out whole examples; their validation loss covers the replies only
    (transformers, prompts masked, on the held-out examples of the same seeded split)."""
    from gpt2tune.data.split import split_train_val

    base, hf = nodrop
    rows = [{"prompt": p, "completion": " " + c} for p, c in PAIRS * 2]
    data = _jsonl(tmp_path / "pc.jsonl", rows)
    out = tmp_path / "val"
    first_loss(capsys, base, data, out, "--lr", "1e-12", "--val-split", "0.25")
    _, held = split_train_val([(r["prompt"], r["completion"]) for r in rows], 0.25, 0)
    val = json.loads((out / "summary.json").read_text())["val_loss"]
    # lr 1e-12: the weights after one step are the base's to far below the tolerance
    assert val == pytest.approx(_reference(hf, held), abs=1e-4)


def test_resume_must_keep_loss_on_and_older_runs_resume_with_its_default(capsys, tiny_hf, tmp_path):
    data = _jsonl(tmp_path / "pc.jsonl", [{"prompt": p, "completion": " " + c} for p, c in PAIRS])
    out = tmp_path / "run"
    args = [
        "train",
        "--model",
        str(tiny_hf[0]),
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--block-size",
        "48",
        "--no-progress",
    ]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--resume", "--loss-on", "all"]) == 2
    assert "--loss-on differs from the run" in capsys.readouterr().err
    # a run.json written before loss_on existed: it ran with the default, and resumes with it
    run_json = out / "run.json"
    record = json.loads(run_json.read_text())
    del record["identity"]["loss_on"]
    run_json.write_text(json.dumps(record))
    assert main([*args, "--resume"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("loss_on", ["completion", "all"])
def test_eval_scores_the_replies(capsys, nodrop, tmp_path, loss_on):
    """`eval --json` on prompt/completion data: transformers' loss with the prompts masked (or
    not, with --loss-on all), and the count of scored tokens."""
    base, hf = nodrop
    data = _jsonl(tmp_path / "pc.jsonl", [{"prompt": p, "completion": " " + c} for p, c in PAIRS])
    code = main(["eval", "--model", str(base), "--data", str(data), "--json", "--loss-on", loss_on])
    out, err = capsys.readouterr()
    assert code == 0, err
    got = json.loads(out)
    examples = [(p, " " + c) for p, c in PAIRS]
    tok = Tokenizer()
    masked = loss_on == "completion"
    scored = sum(
        len(tok.encode(c)) + 1 + (0 if masked else len(tok.encode(p)) - 1) for p, c in examples
    )
    assert got["tokens"] == scored and got["examples"] == len(PAIRS)
    assert got["loss"] == pytest.approx(_reference(hf, examples, mask_prompt=masked), abs=1e-4)


def test_generate_chat_replies_as_transformers_continues_the_template(capsys, tiny_hf, tmp_path):
    """`generate --chat --greedy`: the conversation rendered as written here by hand (the
    training and server template, each earlier reply closed by <|endoftext|>), continued
    greedily as transformers does, cut where the next user turn would start, and only the
    reply printed; --messages gives the same reply."""
    base, hf = tiny_hf
    tok = Tokenizer()
    # the earlier reply closed by the <|endoftext|> token, as every reply is trained
    ids = (
        tok.encode("Be brief.\n\nUser: hi there\nAssistant:")
        + tok.encode(" hello")
        + [EOT]
        + tok.encode("\nUser: what news?\nAssistant:")
    )
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=12,
            pad_token_id=EOT,
        )[0, len(ids) :].tolist()
    if EOT in out:
        out = out[: out.index(EOT)]
    expected = Tokenizer().decode(out).split("\nUser:")[0].strip()
    args = [
        "generate",
        "--model",
        str(base),
        "--chat",
        "--greedy",
        "--max-new-tokens",
        "12",
        "--precision",
        "fp32",
        "--no-stream",
    ]
    code = main(
        [
            *args,
            "--system",
            "Be brief.",
            "--user",
            "hi there",
            "--assistant",
            "hello",
            "--user",
            "what news?",
        ]
    )
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert expected and printed.strip() == expected  # a random model still says something
    messages = tmp_path / "m.json"
    messages.write_text(
        json.dumps(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi there"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "what news?"},
            ]
        )
    )
    assert main([*args, "--messages", str(messages)]) == 0
    assert capsys.readouterr().out.strip() == expected
    assert main([*args, "--user", "a", "--assistant", "b"]) == 2
    assert "ending with --user" in capsys.readouterr().err


def test_builtin_dialogue_pairs_each_reply_with_the_speech_before_it(capsys, tmp_path):
    """builtin:dialogue:NAME: every reply is one of the character's speeches, its cue the speech
    before it in the play (someone else's); train and test are disjoint exchanges; every
    exchange fits a 256-token context; it is listed, and trains with the reply scored."""
    from checkpoints import make_hf_model

    from gpt2tune.data.builtin import load_builtin, shakespeare_other_speeches
    from gpt2tune.data.dialogue import encode_examples, read_examples

    speeches = load_builtin("builtin:shakespeare:FALSTAFF", split="all")
    others = set(shakespeare_other_speeches("FALSTAFF"))
    train = read_examples("builtin:dialogue:FALSTAFF", split="train")
    test = read_examples("builtin:dialogue:falstaff", split="test")
    assert len(train) > 300 and len(test) > 30
    assert not {(e.prompt, e.completion) for e in train} & {(e.prompt, e.completion) for e in test}
    for e in train + test:
        assert e.prompt.startswith("User: ") and e.prompt.endswith("\nAssistant:")
        assert e.completion.startswith(" ") and e.completion[1:] in speeches
        assert e.prompt[len("User: ") : -len("\nAssistant:")] in others  # someone else's
    tok = Tokenizer()
    assert max(len(ids) for ids, _ in encode_examples(train + test, tok, "completion")) <= 256
    assert main(["data", "list"]) == 0
    assert "builtin:dialogue" in capsys.readouterr().out
    make_hf_model(tmp_path / "base", n_positions=256)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            str(tmp_path / "base"),
            "--data",
            "builtin:dialogue:FALSTAFF",
            "--val-data",
            "builtin:dialogue:FALSTAFF",
            "--out",
            str(out),
            "--max-steps",
            "1",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"{len(train)} examples -> " in err  # packed: fewer rows than examples
    assert f"validation: {len(test)} examples" in err


def test_a_reply_sent_back_as_served_renders_as_trained():
    """The server returns what the model wrote after "Assistant:" (a leading space); a client
    that sends it back unchanged gets the conversation training rendered, not a double space."""
    from gpt2tune.data.chat import Message, prompt_ids

    tok = Tokenizer()

    def turns(reply: str) -> list[Message]:
        return [Message("user", "hi"), Message("assistant", reply), Message("user", "and?")]

    by_hand = (
        tok.encode("User: hi\nAssistant:")
        + tok.encode(" well met")
        + [EOT]
        + tok.encode("\nUser: and?\nAssistant:")
    )
    assert prompt_ids(turns(" well met"), tok) == by_hand
    assert prompt_ids(turns("well met"), tok) == by_hand
