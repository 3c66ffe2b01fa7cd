"""`gpt2tune answer` and `gpt2tune eval --task qa`, end to end, against inference.qa called
directly on the same model; their errors are one line that names the option."""

import json

import pytest
from checkpoints import make_hf_qa_model
from qa_task import qa_examples, write_qa

from gpt2tune.cli.main import main
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.qa import QAExample
from gpt2tune.formats.peft import load_qa_model_with_adapter
from gpt2tune.inference.qa import answer_questions

# n_positions 64: BLOCK-token windows overlapping by STRIDE give a long context several windows
BLOCK, STRIDE = 24, 8
LONG = (
    "On Monday, Anna went to the market and bought twelve apples and three books. It was "
    "raining, so she waited at the station for an hour. Paul met her there with forty chairs."
)
SHORT = "Tom bought seven pens at the shop on Friday."


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qa-cli")
    make_hf_qa_model(path)
    return path


def run(capsys, *argv):
    capsys.readouterr()  # what fixtures printed is not the command's
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def direct(qa_dir, examples, **opts) -> list[dict]:
    """What `answer --json` should print: inference.qa's answers, called directly."""
    model = load_qa_model_with_adapter(qa_dir)
    answers = answer_questions(model, Tokenizer(model.source_dir), examples, **opts)
    return [{"question": e.question} | a.to_dict() for e, a in zip(examples, answers)]


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


WINDOWS = ["--block-size", BLOCK, "--doc-stride", STRIDE, "--device", "cpu", "--json"]


def test_one_context_for_several_questions(capsys, qa_dir):
    questions = ["Who bought apples?", "How many chairs?", "Where did she wait?"]
    argv = [f for q in questions for f in ("--question", q)]
    code, out, err = run(capsys, "answer", "--model", qa_dir, *argv, "--context", LONG, *WINDOWS)
    assert (code, err) == (0, "")
    got = lines(out)
    examples = [QAExample(q, LONG, [], str(i)) for i, q in enumerate(questions)]
    assert got == direct(qa_dir, examples, block_size=BLOCK, doc_stride=STRIDE)
    for row in got:
        assert LONG[row["start"] : row["end"]] == row["answer"]
        assert list(row) == ["question", "answer", "start", "end", "score"]


def test_a_context_per_question_and_max_answer_tokens(capsys, qa_dir, hf_tokenizers):
    pairs = [("Who bought apples?", LONG), ("Who bought pens?", SHORT)]
    argv = [f for q, c in pairs for f in ("--question", q, "--context", c)]
    code, out, err = run(
        capsys, "answer", "--model", qa_dir, *argv, "--max-answer-tokens", 2, *WINDOWS
    )
    assert (code, err) == (0, "")
    examples = [QAExample(q, c, [], str(i)) for i, (q, c) in enumerate(pairs)]
    want = direct(qa_dir, examples, block_size=BLOCK, doc_stride=STRIDE, max_answer_tokens=2)
    assert lines(out) == want
    assert [row["question"] for row in want] == [q for q, _ in pairs]
    for (_, context), row in zip(pairs, want):  # tokens of the context the answer covers
        offsets = hf_tokenizers[1](context, return_offsets_mapping=True)["offset_mapping"]
        assert 1 <= sum(s < row["end"] and e > row["start"] for s, e in offsets) <= 2


def test_file_without_answers(capsys, qa_dir, tmp_path):
    rows = [
        {"id": r["id"], "ask": r["question"], "context": r["context"]}
        for r in qa_examples(4, seed=5)
    ]
    rows[0]["context"] = LONG  # several windows for one of them
    data = write_qa(tmp_path / "questions.jsonl", rows)
    code, out, err = run(
        capsys, "answer", "--model", qa_dir, "--file", data, "--question-field", "ask", *WINDOWS
    )
    assert (code, err) == (0, "")
    examples = [QAExample(r["ask"], r["context"], [], r["id"]) for r in rows]
    assert lines(out) == direct(qa_dir, examples, block_size=BLOCK, doc_stride=STRIDE)
    # the plain output: a line per question, the answer first
    plain = ["--file", data, "--question-field", "ask", *WINDOWS[:-1]]
    code, out, _ = run(capsys, "answer", "--model", qa_dir, *plain)
    assert code == 0
    assert [line.split("\t")[0] for line in out.splitlines()] == [
        row["answer"] for row in direct(qa_dir, examples, block_size=BLOCK, doc_stride=STRIDE)
    ]


@pytest.fixture(scope="module")
def lm_adapter(tiny_hf, tmp_path_factory):
    """(plain GPT-2 directory, a language-model LoRA adapter on it): no qa_outputs head."""
    from gpt2tune.core.lora import LoRAConfig, apply_lora
    from gpt2tune.formats.hf import load_model
    from gpt2tune.formats.peft import save_adapter

    out = tmp_path_factory.mktemp("lm-adapter")
    lm = load_model(tiny_hf[0])
    lora = LoRAConfig(r=2, alpha=4)
    apply_lora(lm, lora)
    save_adapter(lm, out, lora, str(tiny_hf[0]))
    return tiny_hf[0], out


ASK = ["--question", "Who?", "--context", SHORT]


@pytest.mark.parametrize(
    "argv, names",
    [
        ([], ["--question", "--context", "--file"]),
        (["--question", "Who?"], ["--question", "--context"]),
        ([*("--question", "a?") * 2, *("--context", "x") * 3], ["--question", "--context"]),
        ([*ASK, "--max-answer-tokens", 0], ["--max-answer-tokens"]),
        ([*ASK, "--block-size", 65], ["--block-size"]),  # the model's context is 64
        ([*ASK, "--block-size", 0], ["--block-size"]),
        ([*ASK, "--doc-stride", -1], ["--doc-stride"]),
        (["--question", "Who?", "--context", "", "--doc-stride", 8], ["--context"]),
        (ASK, ["--doc-stride"]),  # the default 128 leaves no room in a 64-token window
    ],
)
def test_answer_errors_are_one_line_naming_the_option(capsys, qa_dir, argv, names):
    code, out, err = run(capsys, "answer", "--model", qa_dir, "--device", "cpu", *argv)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith("gpt2tune: error: ")
    for name in names:
        assert name in err


def test_a_language_model_adapter_is_no_question_answering_adapter(capsys, lm_adapter):
    base, adapter = lm_adapter
    argv = ["--model", base, "--adapter", adapter, *ASK, "--doc-stride", 8, "--device", "cpu"]
    code, out, err = run(capsys, "answer", *argv)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert str(adapter) in err and "not a question-answering adapter" in err
    assert "--adapter" in err and "--task qa" in err


# ----------------------------------------------------------------------------- eval --task qa

EVAL = ["--task", "qa", "--json", "--device", "cpu"]


def test_eval_scores_are_the_means_of_its_predictions(capsys, qa_dir, tmp_path):
    rows = qa_examples(6, seed=11)
    rows[0]["context"] = LONG
    rows[0]["answers"] = {"text": ["Anna"], "answer_start": [LONG.index("Anna")]}
    # the model's own answers first (`answer --json`, a context per question)
    argv = [f for r in rows for f in ("--question", r["question"], "--context", r["context"])]
    stride = ["--doc-stride", 16]  # eval's window is the model's 64 tokens; so is answer's
    code, out, _ = run(capsys, "answer", "--model", qa_dir, *argv, *stride, "--json")
    assert code == 0
    answered = lines(out)
    # gold answers: the model's own for questions 0-2 (exact), a second gold answer beside a
    # wrong one for 3, the task's (most likely wrong) for 4, none for 5 (gold is then [""])
    for i, a in enumerate(answered[:4]):
        gold = rows[i]["answers"] if i == 3 else {"text": [], "answer_start": []}
        gold["text"].append(a["answer"])
        gold["answer_start"].append(a["start"])
        rows[i]["answers"] = gold
    rows[5]["answers"] = {"text": [], "answer_start": []}
    data = write_qa(tmp_path / "test.jsonl", rows)
    out_dir = tmp_path / "eval"
    argv = ["--model", qa_dir, "--data", data, *stride, "--out", out_dir, *EVAL]
    code, out, err = run(capsys, "eval", *argv)
    assert (code, err) == (0, "")
    scores = json.loads(out)
    predictions = lines((out_dir / "predictions.jsonl").read_text())
    assert scores["questions"] == len(predictions) == len(rows)
    for name in ["exact_match", "f1"]:
        assert 0 <= scores[name] <= 1
        assert scores[name] == pytest.approx(sum(p[name] for p in predictions) / len(rows))
    for p, a, r in zip(predictions, answered, rows):
        assert {k: p[k] for k in a} == a  # the same answer as `answer` gives
        assert (p["id"], p["answers"]) == (r["id"], r["answers"]["text"])
    assert [p["exact_match"] for p in predictions[:4]] == [1.0] * 4
    assert [p["f1"] for p in predictions[:4]] == [1.0] * 4
    assert predictions[5]["answers"] == [] and predictions[5]["f1"] in (0.0, 1.0)
    assert scores["exact_match"] >= 4 / 6


def test_eval_data_with_a_misplaced_answer_is_one_line(capsys, qa_dir, tmp_path):
    rows = qa_examples(3, seed=2)
    rows[1]["answers"]["answer_start"] = [rows[1]["answers"]["answer_start"][0] + 1]
    data = write_qa(tmp_path / "bad.jsonl", rows)
    code, out, err = run(capsys, "eval", "--model", qa_dir, "--data", data, *EVAL)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert f"{data}: line 2" in err and "answer_start" in err
