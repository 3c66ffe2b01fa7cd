"""Training a question-answering head (``train --task qa``) through the CLI: the task learned from
chance, the first step's loss equal to transformers' on windows built here, the saved model and
adapter loaded by transformers and peft, resume equal to an uninterrupted run."""

import contextlib
import io
import json

import pytest
import torch
from checkpoints import Interrupt, make_hf_model
from qa_task import qa_examples, write_qa

from gpt2tune.cli.main import main
from gpt2tune.core.lora import LoRAConfig
from gpt2tune.errors import UserError
from gpt2tune.finetune.config import TrainConfig
from gpt2tune.finetune.recipe import DataOptions, ModelOptions, RunOptions, fine_tune
from gpt2tune.formats.hf import load_qa_model
from gpt2tune.formats.peft import load_qa_model_with_adapter

WINDOW = ["--block-size", "48", "--doc-stride", "16"]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    d = tmp_path_factory.mktemp("qa-task")
    make_hf_model(d / "base")
    write_qa(d / "train.jsonl", qa_examples(400, seed=0))
    write_qa(d / "test.jsonl", qa_examples(100, seed=1))
    return d


def exact_match(*model_args: str, data) -> float:
    """``eval --task qa --json``'s exact match of a model on ``data``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["eval", "--task", "qa", *model_args, "--data", str(data), "--json", *WINDOW])
    assert code == 0
    scores = json.loads(out.getvalue())
    assert 0 <= scores["f1"] <= 1 and scores["questions"] == 100
    return scores["exact_match"]


@pytest.mark.parametrize(
    "method, flags",
    [
        ("full", ["--lr", "3e-3", "--max-steps", "300"]),
        ("lora", ["--lr", "1e-2", "--max-steps", "400", "--lora-r", "8"]),
    ],
)
def test_the_task_is_learned_from_chance(task, tmp_path, method, flags):
    """Who bought, or how many: a fresh head answers almost nothing; trained, the model copies
    the right name or number out of held-out sentences."""
    from transformers import GPT2ForQuestionAnswering

    test = task / "test.jsonl"
    assert exact_match("--model", str(task / "base"), data=test) <= 0.2  # a fresh head
    out = tmp_path / method
    args = ["train", "--task", "qa", "--model", str(task / "base"), "--method", method]
    args += ["--data", str(task / "train.jsonl"), "--out", str(out), "--batch-size", "16"]
    assert main([*args, *WINDOW, *flags, "--no-progress"]) == 0
    loaded = ["--model", str(out)]
    if method == "lora":
        loaded = ["--model", str(task / "base"), "--adapter", str(out)]
    assert exact_match(*loaded, data=test) >= 0.85

    # what was saved is transformers' and peft's to load, with our logits
    ids = torch.randint(0, 50257, (2, 20))
    if method == "full":
        ref = GPT2ForQuestionAnswering.from_pretrained(out).eval()
        ours = load_qa_model(out).eval()
    else:
        from peft import PeftModel

        ref = PeftModel.from_pretrained(
            GPT2ForQuestionAnswering.from_pretrained(task / "base"), out
        ).eval()
        ours = load_qa_model_with_adapter(task / "base", out)
    with torch.no_grad():
        want = ref(input_ids=ids)
        start, end = ours.span_logits(ids)
    torch.testing.assert_close(start, want.start_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(end, want.end_logits, atol=1e-5, rtol=0)


def reference_windows(tokenizer, rows, block: int, stride: int):
    """run_qa's windows, built here from transformers' tokenizer and its character offsets:
    (input_ids, attention_mask, start, end) with start = end = 0 where the answer is not wholly
    inside the window."""
    ids, masks, starts, ends = [], [], [], []
    for row in rows:
        q = tokenizer(row["question"])["input_ids"]
        enc = tokenizer(row["context"], return_offsets_mapping=True)
        c, offsets = enc["input_ids"], enc["offset_mapping"]
        answer, a0 = row["answers"]["text"][0], row["answers"]["answer_start"][0]
        a1 = a0 + len(answer)
        room, first = block - len(q), 0
        while True:
            last = min(first + room, len(c))  # the window is c[first:last]
            s = e = 0
            if offsets[first][0] <= a0 and offsets[last - 1][1] >= a1:
                inside = [
                    i for i in range(first, last) if offsets[i][1] > a0 and offsets[i][0] < a1
                ]
                s, e = len(q) + inside[0] - first, len(q) + inside[-1] - first
            n = len(q) + last - first
            ids.append(q + c[first:last] + [50256] * (block - n))
            masks.append([1] * n + [0] * (block - n))
            starts.append(s)
            ends.append(e)
            if last >= len(c):
                break
            first += room - stride
    return (torch.tensor(x) for x in (ids, masks, starts, ends))


def test_first_step_loss_equals_transformers_on_run_qas_windows(hf_tokenizers, tmp_path):
    """One step over every window at once: the loss the run records is transformers' loss of
    ``GPT2ForQuestionAnswering`` on windows built independently (a long context split, its answer
    in one window and "no answer" in the others), padding scored as transformers scores it."""
    from transformers import GPT2Config, GPT2ForQuestionAnswering

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=3, n_embd=48, n_positions=64, vocab_size=50257)
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0
    hf = GPT2ForQuestionAnswering(cfg).eval()
    with torch.no_grad():
        hf.qa_outputs.bias.copy_(torch.tensor([0.3, -0.2]))
    hf.save_pretrained(tmp_path / "qa")
    rows = qa_examples(6, seed=5)
    long = rows[0]
    filler = " ".join(["The market was full of people that week."] * 8)
    long["context"] = f"{filler} {long['context']}"
    long["answers"]["answer_start"][0] += len(filler) + 1
    write_qa(tmp_path / "d.jsonl", rows)
    ids, mask, starts, ends = reference_windows(hf_tokenizers[1], rows, 48, 16)
    assert len(ids) > len(rows) and (starts == 0).any()  # windows with "no answer" among them
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, start_positions=starts, end_positions=ends)
    args = ["train", "--task", "qa", "--model", str(tmp_path / "qa"), "--method", "full"]
    args += ["--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "out"), *WINDOW]
    args += ["--batch-size", str(len(ids)), "--max-steps", "1", "--precision", "fp32"]
    assert main([*args, "--no-progress"]) == 0
    first = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(want.loss.item(), abs=1e-5)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_qa_resume_equals_an_uninterrupted_run(task, tmp_path, method):
    """Interrupted at step 3 and resumed == never interrupted, the head included."""
    from safetensors.torch import load_file

    data = write_qa(tmp_path / "d.jsonl", qa_examples(40, seed=2))

    def opts(out):
        return RunOptions(
            out=str(out),
            model=ModelOptions(model=str(task / "base"), device="cpu"),
            data=DataOptions(
                data=str(data), task="qa", val_split=0.25, block_size=48, doc_stride=16
            ),
            lora=LoRAConfig(r=2, alpha=4, dropout=0.1),
            train=TrainConfig(
                method=method,
                max_steps=7,
                batch_size=4,
                lr=5e-3,
                grad_accum=2,
                eval_every=3,
                precision="fp32",
                seed=1,
                warmup_steps=1,
                progress=False,
            ),
        )

    whole = fine_tune(opts(tmp_path / "a"))
    first = fine_tune(opts(tmp_path / "b"), on_step=Interrupt(3))
    assert first.interrupted and first.steps == 3
    again = opts(tmp_path / "b")
    again.resume = True
    second = fine_tune(again)
    assert second.steps == 7
    name = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
    assert a.keys() == b.keys() and any("qa_outputs" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert second.val_loss == pytest.approx(whole.val_loss, abs=1e-6)

    changed = opts(tmp_path / "b")
    changed.resume, changed.data.doc_stride = True, 8
    with pytest.raises(UserError, match="doc_stride differs"):  # another run's windows
        fine_tune(changed)


def test_bad_question_answering_data_is_one_line_and_writes_nothing(task, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    row = qa_examples(1, seed=0)[0]
    row["answers"]["answer_start"] = [row["answers"]["answer_start"][0] + 1]
    write_qa(bad, [row])
    base = ["train", "--task", "qa", "--model", str(task / "base"), "--no-progress"]
    cases = [
        (["--data", str(bad)], "line 1", "answer_start"),
        (["--data", str(task / "train.jsonl"), "--block-size", "48"], "--doc-stride", "48"),
    ]
    for n, (extra, *words) in enumerate(cases):
        out = tmp_path / f"out{n}"
        assert main([*base, *extra, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(w in err for w in words), err
        assert not (out / "model.safetensors").exists() and not (out / "checkpoints").exists()
