"""What an experiment measures its methods on (``experiments.material``): the priming text is
context only, so primed and unprimed losses score the same tokens; for dialogue data only the
replies are scored, primed with training exchanges rendered by the chat template, and samples
reply to cues rendered as training renders them. References are written here by hand or come
from transformers."""

from __future__ import annotations

import json

import pytest
import torch

from gpt2tune.core.model import GPT2, GPT2Config
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.options import DataOptions
from gpt2tune.experiments.material import held_out, material
from gpt2tune.experiments.spec import Experiment, Method
from gpt2tune.inference.evaluate import evaluate, score_windows

EOT = 50256


def _spec(data: DataOptions, prompts=("Hello",), k=2) -> Experiment:
    return Experiment(
        "x",
        data,
        (Method("base", "base", "base"), Method("priming", "priming", "priming", prime=True)),
        batch_size=2,
        epochs=1,
        max_steps=None,
        eval_every=0,
        prompts=prompts,
        samples_per_prompt=1,
        max_new_tokens=8,
        temperature=1.0,
        top_k=5,
        prime_speeches=k,
    )


def _tiny(n_positions: int = 64) -> GPT2:
    torch.manual_seed(0)
    return GPT2(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=n_positions)).eval()


def _scored(windows) -> list[int]:
    return sorted(t for _, tgt in windows for t in tgt if t != -100)


def test_plain_text_primed_scores_the_same_tokens_as_evaluate(tmp_path):
    """Unprimed windows are evaluate's (the same loss); primed ones score the same tokens with
    the prime as context, which changes the loss."""
    docs = [" ".join(f"word{i}{j}" for j in range(n)) for i, n in enumerate((3, 40, 90, 12, 25))]
    f = tmp_path / "t.txt"
    f.write_text("\n\n".join(docs))
    spec = _spec(DataOptions(data=str(f), val_split=0.4))
    tok, model = Tokenizer(), _tiny()
    got = material(spec, tok, 64, seed=0, primes=True)
    heldout = [tok.encode(d) + [EOT] for d in got.heldout_texts]
    assert got.heldout_texts and set(got.heldout_texts) <= set(docs)
    plain = evaluate(model, heldout)
    mine = score_windows(model, got.windows)
    assert (mine.tokens, mine.loss) == (plain.tokens, pytest.approx(plain.loss, abs=1e-6))
    assert got.primed_windows is not None and got.prime_text
    assert _scored(got.primed_windows) == _scored(got.windows)  # the prime is never scored
    primed = score_windows(model, got.primed_windows)
    assert primed.loss != pytest.approx(plain.loss, abs=1e-6)
    # samples continue the prompt after the prime, joined as generate --prime joins them
    assert got.primed_prompts == [got.prime_text + "Hello"]  # the prime ends in a blank line


def test_dialogue_scores_replies_primed_with_training_exchanges(tmp_path):
    """Chat data: the windows score exactly the held-out replies and their <|endoftext|>; the
    primed ones put training exchanges before each (rendered by the template, each reply
    closed by the token) and score the same tokens; a cue renders as a user's turn."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Question number {i}?"},
                {"role": "assistant", "content": f"Answer {i}, my lord, and no more than that."},
            ]
        }
        for i in range(12)
    ]
    f = tmp_path / "chat.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = _spec(DataOptions(data=str(f), val_split=0.25), prompts=("Who goes there?",))
    tok = Tokenizer()
    got = material(spec, tok, 128, seed=0, primes=True)
    assert got.unit == "examples" and len(got.heldout_texts) == 3
    replies = [tok.encode(" " + r) + [EOT] for r in got.heldout_texts]
    assert _scored(got.windows) == sorted(t for r in replies for t in r)
    assert got.primed_windows is not None
    assert _scored(got.primed_windows) == _scored(got.windows)
    # the prime: two training exchanges as one conversation, then the held-out turn
    train = [r for r in rows if r["messages"][1]["content"] not in got.heldout_texts]
    assert got.prime_text is not None and got.prime_text.count("<|endoftext|>") == 2
    # "User: ...\nAssistant: ..." then "\nUser: ...\nAssistant: ..."
    first, second = got.prime_text.split("<|endoftext|>")[:2]
    assert first.startswith("User: ") and second.startswith("\nUser: ")
    assert any(
        first == f"User: {r['messages'][0]['content']}\nAssistant: {r['messages'][1]['content']}"
        for r in train
    )
    inputs, _ = got.primed_windows[0]
    assert inputs.count(EOT) == 2  # the prime's two replies end with the token itself
    cue = tok.encode("User: Who goes there?\nAssistant:")
    assert got.prompts == [cue]
    assert (
        got.primed_prompts is not None
        and got.primed_prompts[0][-len(cue) - 1 :]
        == (tok.encode("\nUser: Who goes there?\nAssistant:")[-len(cue) - 1 :])
    )
    assert got.stops == ("\nUser:",)
    assert held_out(spec, 0).cues and set(held_out(spec, 0).cues) <= {
        r["messages"][0]["content"] for r in rows
    }
