"""``--pack-attention``: packed plain-text rows keep each document to itself (``document``), or
let a token see every earlier token of its row (``causal``); both against transformers'
GPT2LMHeadModel as the reference."""

from __future__ import annotations

import json
from functools import partial

import first_step
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.rows import IGNORE, make_rows, pack_rows
from gpt2tune.formats.hf import load_model

EOT = 50256
LENGTHS = [9, 13, 4, 20, 8, 2, 7]  # tokens of each document, its <|endoftext|> included


def _docs(seed: int = 3) -> list[np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    return [
        np.array(torch.randint(0, EOT, (n - 1,), generator=g).tolist() + [EOT]) for n in LENGTHS
    ]


def _pieces(docs: list[np.ndarray], block: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each document cut where the rows of ``block`` tokens cut the stream: (inputs, targets)
    of every piece, a target being the document's next token (none after its last)."""
    pieces, offset = [], 0
    for doc in docs:
        bounds = [offset, *range((offset // block + 1) * block, offset + len(doc), block)]
        for a, b in zip(bounds, [*bounds[1:], offset + len(doc)], strict=True):
            ids = doc[a - offset : b - offset]
            nxt = doc[a - offset + 1 : b - offset + 1]
            missing = np.full(len(ids) - len(nxt), IGNORE)
            pieces.append((ids, np.concatenate([nxt, missing]).astype(np.int64)))
        offset += len(doc)
    return pieces


def _reference_loss(hf, pieces: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """transformers' loss per scored token over the pieces, each run alone."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, targets in pieces:
            logits = hf(torch.from_numpy(ids).unsqueeze(0)).logits[0]
            t = torch.from_numpy(targets)
            total += F.cross_entropy(logits, t, ignore_index=IGNORE, reduction="sum").item()
            count += int((t != IGNORE).sum())
    return total / count


@pytest.mark.parametrize("block", [64, 16])
def test_document_rows_compute_each_document_alone(tiny_hf, block):
    """With ``document``, the loss of the packed rows is transformers' loss over the documents run
    one by one (block 64: every document whole in one row; block 16: documents cut across rows,
    each piece then alone). Without the segments the documents see each other and it differs."""
    path, hf = tiny_hf
    ours = load_model(path).eval()
    docs = _docs()
    rows = make_rows(docs, block, EOT, attention="document")
    assert rows.segments is not None
    with torch.no_grad():
        got = ours.loss(rows.inputs, rows.targets, segment_ids=rows.segments).item()
        mixed = ours.loss(rows.inputs, rows.targets).item()
    if block == 64:
        total = 0.0
        with torch.no_grad():
            for d in docs:
                ids = torch.from_numpy(d).unsqueeze(0)
                total += hf(ids, labels=ids).loss.item() * (len(d) - 1)
        assert got == pytest.approx(total / sum(n - 1 for n in LENGTHS), abs=1e-5)
    assert got == pytest.approx(_reference_loss(hf, _pieces(docs, block)), abs=1e-5)
    assert mixed != pytest.approx(got, abs=1e-4)  # ten times the tolerance above


def test_document_rows_score_each_token_of_a_document_but_its_first():
    docs = _docs()
    rows = make_rows(docs, 24, EOT, attention="document")
    assert rows.num_targets == sum(n - 1 for n in LENGTHS)
    # the inputs are the packed stream's, and a row's segment ids are its tokens' documents
    inputs, targets = pack_rows(docs, 24, EOT)
    assert torch.equal(rows.inputs, inputs)
    doc_of = np.repeat(np.arange(len(docs)), LENGTHS)[:-1]
    flat = rows.segments.reshape(-1)
    assert flat[: len(doc_of)].tolist() == doc_of.tolist()
    assert (flat[len(doc_of) :] == -1).all() and (
        rows.targets.reshape(-1)[len(doc_of) :] == IGNORE
    ).all()
    # only the targets across a document boundary are dropped
    dropped = (targets != IGNORE) & (rows.targets == IGNORE)
    assert dropped.sum() == len(docs) - 1
    assert torch.equal(rows.targets[~dropped], targets[~dropped])


def test_causal_rows_are_the_packed_stream_as_transformers_reads_it(tiny_hf):
    """``causal`` is packing as it was: the rows of ``pack_rows``, no segments, and the loss of
    transformers run on each row of the stream."""
    path, hf = tiny_hf
    ours = load_model(path).eval()
    docs = _docs()
    rows = make_rows(docs, 24, EOT, attention="causal")
    inputs, targets = pack_rows(docs, 24, EOT)
    assert rows.segments is None
    assert torch.equal(rows.inputs, inputs) and torch.equal(rows.targets, targets)
    with torch.no_grad():
        logits = hf(rows.inputs).logits
        ref = F.cross_entropy(logits.flatten(0, 1), rows.targets.flatten(), ignore_index=IGNORE)
        assert ours.loss(rows.inputs, rows.targets).item() == pytest.approx(ref.item(), abs=1e-5)


# ----------------------------------------------------------------------------- through the CLI

TEXTS = [
    "The cat sat on the mat.",
    "Markets fell sharply on Monday after the news.",
    "Short one",
    "A fourth document, somewhat longer than the others, with commas.",
]


# one 64-token row holds all four documents
train = partial(first_step.train, block_size=64)
first_loss = partial(first_step.first_loss, block_size=64)


def test_train_first_step_loss_per_pack_attention(capsys, nodrop, tmp_path):
    """The first step's loss (before any update, no dropout, the one 64-token row in one batch):
    with --pack-attention document (the default), transformers' loss over the documents each
    run alone, as with --no-pack; with causal, transformers' loss over the packed stream."""
    base, hf = nodrop
    data = tmp_path / "docs.txt"
    data.write_text("\n\n".join(TEXTS) + "\n")
    docs = [Tokenizer().encode(t) + [EOT] for t in TEXTS]
    stream = torch.tensor([sum(docs, [])])
    assert stream.size(1) - 1 <= 64  # one row
    alone, count = 0.0, 0
    with torch.no_grad():
        for d in docs:
            ids = torch.tensor([d])
            alone += hf(ids, labels=ids).loss.item() * (len(d) - 1)
            count += len(d) - 1
        packed = hf(stream, labels=stream).loss.item()
    alone /= count
    document = first_loss(capsys, base, data, tmp_path / "document")
    explicit = first_loss(capsys, base, data, tmp_path / "explicit", "--pack-attention", "document")
    causal = first_loss(capsys, base, data, tmp_path / "causal", "--pack-attention", "causal")
    no_pack = first_loss(capsys, base, data, tmp_path / "no-pack", "--no-pack")
    assert document == explicit == pytest.approx(alone, abs=1e-4)
    assert no_pack == pytest.approx(alone, abs=1e-4)
    assert causal == pytest.approx(packed, abs=1e-4)
    assert causal != pytest.approx(document, abs=1e-3)


def test_resume_must_keep_pack_attention_and_older_runs_resume_as_causal(capsys, tiny_hf, tmp_path):
    data = tmp_path / "docs.txt"
    data.write_text("\n\n".join(TEXTS * 3) + "\n")
    out = tmp_path / "run"
    assert train(tiny_hf[0], data, out, "--max-steps", "2", "--block-size", "16") == 0
    capsys.readouterr()
    again = ["--max-steps", "2", "--block-size", "16", "--resume"]
    assert train(tiny_hf[0], data, out, *again, "--pack-attention", "causal") == 2
    assert "--pack-attention differs from the run" in capsys.readouterr().err
    # a run.json written before pack_attention existed: its packed plain text ran causal
    run_json = out / "run.json"
    record = json.loads(run_json.read_text())
    del record["identity"]["pack_attention"]
    run_json.write_text(json.dumps(record))
    assert train(tiny_hf[0], data, out, *again) == 2
    err = capsys.readouterr().err
    assert "--pack-attention differs from the run" in err and "('causal' vs 'document')" in err
    assert train(tiny_hf[0], data, out, *again, "--pack-attention", "causal") == 0


def test_no_pack_rows_ignore_pack_attention(capsys, tiny_hf, tmp_path):
    """--no-pack rows hold one document each: the option changes nothing, and a resume may name
    either value."""
    data = tmp_path / "docs.txt"
    data.write_text("\n\n".join(TEXTS) + "\n")
    out = tmp_path / "run"
    args = ["--max-steps", "2", "--no-pack", "--pack-attention", "causal"]
    assert train(tiny_hf[0], data, out, *args) == 0
    assert train(tiny_hf[0], data, out, "--max-steps", "2", "--resume", "--no-pack") == 0


def test_causal_on_dialogue_data_is_refused_naming_the_option(capsys, tiny_hf, tmp_path):
    data = tmp_path / "pc.jsonl"
    data.write_text(json.dumps({"prompt": "Hi?", "completion": " Hello."}) + "\n")
    code = train(tiny_hf[0], data, tmp_path / "run", "--pack-attention", "causal")
    err = capsys.readouterr().err
    assert code == 2 and "--pack-attention causal is for plain text" in err
    assert len(err.strip().splitlines()) == 1
