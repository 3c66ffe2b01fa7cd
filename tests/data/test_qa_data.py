"""Question-answering data: SQuAD-format files read and checked (one-line errors naming the row),
windows with a doc stride as run_qa prepares them, and ``builtin:qa-speakers``."""

from __future__ import annotations

import json

import pytest

from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.builtin import list_builtins, load_builtin
from gpt2tune.data.qa import NO_ANSWER, QAExample, context_offsets, qa_features, read_qa
from gpt2tune.errors import UserError

CONTEXT = "Falstaff drinks sack at the Boar's Head in Eastcheap."
QUESTION = "Where does Falstaff drink?"
ROW = {
    "id": "q1",
    "question": QUESTION,
    "context": CONTEXT,
    "answers": {"text": ["the Boar's Head"], "answer_start": [CONTEXT.index("the Boar")]},
}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_reads_jsonl_json_and_squad_nested(tmp_path):
    want = QAExample(QUESTION, CONTEXT, [("the Boar's Head", 24)], "q1")
    assert read_qa(_jsonl(tmp_path / "a.jsonl", [ROW])) == [want]
    (tmp_path / "b.json").write_text(json.dumps([ROW]))
    assert read_qa(tmp_path / "b.json") == [want]
    nested = {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": CONTEXT,
                        "qas": [
                            {
                                "id": "q1",
                                "question": QUESTION,
                                "answers": [{"text": "the Boar's Head", "answer_start": 24}],
                            }
                        ],
                    }
                ]
            }
        ]
    }
    (tmp_path / "c.json").write_text(json.dumps(nested))
    assert read_qa(tmp_path / "c.json") == [want]


def test_other_field_names(tmp_path):
    row = {"q": QUESTION, "passage": CONTEXT, "spans": ROW["answers"]}
    (ex,) = read_qa(_jsonl(tmp_path / "a.jsonl", [row]), "train", "q", "passage", "spans")
    assert ex.answers == [("the Boar's Head", 24)] and ex.id == "1"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"question": None}, "line 2: 'question' must be a string, got missing"),
        ({"context": 3}, "line 2: 'context' must be a string, got a int"),
        ({"context": "  "}, "line 2: 'context' is empty"),
        ({"answers": {"text": ["sack"], "answer_start": [0]}}, "line 2: answer 'sack' is not at"),
        ({"answers": {"text": ["sack"]}}, "line 2: 'answers' needs 'text' and 'answer_start'"),
        ({"answers": None}, "line 2: 'answers' must be"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, change, message):
    bad = {k: v for k, v in {**ROW, **change}.items() if v is not None}
    path = _jsonl(tmp_path / "a.jsonl", [ROW, bad])
    with pytest.raises(UserError) as e:
        read_qa(path)
    assert str(e.value).startswith(f"{path}: {message}")
    assert "\n" not in str(e.value)


def test_windows_match_a_hand_computation():
    tok = Tokenizer()
    context = "a b c d e f g h i j"
    assert len(tok.encode(context)) == 10 and len(tok.encode("Q")) == 1
    example = QAExample("Q", context, [("e", context.index("e"))], "x")
    # room = 5 - 1 = 4 context tokens per window, each starting 4 - 2 = 2 tokens after the last
    features = qa_features([example], tok, max_length=5, doc_stride=2)
    context_ids = tok.encode(context)
    windows = [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert [f.input_ids[1:] for f in features] == [context_ids[a:b] for a, b in windows]
    # " e" is context token 4: position 1 + (4 - start) in the windows holding it, else none
    assert [(f.start_position, f.end_position) for f in features] == [
        (NO_ANSWER, NO_ANSWER),
        (3, 3),
        (1, 1),
        (NO_ANSWER, NO_ANSWER),
    ]
    assert all(f.example_index == 0 and f.attention_mask == [1] * 5 for f in features)


def test_answer_cut_by_a_window_points_at_no_answer_and_padding_is_masked():
    tok = Tokenizer()
    context = "a b c d e f"
    example = QAExample("Q", context, [("c d", context.index("c"))], "x")
    features = qa_features([example], tok, max_length=4, doc_stride=1)  # windows 0-3, 2-5, 4-6
    assert [(f.start_position, f.end_position) for f in features] == [
        (NO_ANSWER, NO_ANSWER),  # " d" is outside
        (1, 2),
        (NO_ANSWER, NO_ANSWER),
    ]
    last = features[-1]
    assert last.attention_mask == [1, 1, 1, 0] and last.input_ids[-1] == tok.eot_id
    assert last.offsets[0] is None and last.offsets[-1] is None


def test_offsets_reconstruct_the_context():
    tok = Tokenizer()
    for context in [CONTEXT, "Café naïve — “quoted” 日本語 text\nnext line  two spaces"]:
        ids = tok.encode(context)
        offsets = context_offsets(tok, context, ids)
        # a character split over tokens is covered by each of them: count it once
        pieces, end = [], 0
        for a, b in offsets:
            assert a in (end, end - 1) and b >= end
            if a == end - 1:
                assert len(context[a].encode()) > 1  # only a multi-byte character is shared
            pieces.append(context[end:b])
            end = b
        assert "".join(pieces) == context


def test_every_example_yields_a_feature_and_answers_decode_to_their_text():
    tok = Tokenizer()
    examples = read_qa("builtin:qa-speakers", "test")[:200]
    features = qa_features(examples, tok, max_length=128, doc_stride=32)
    assert {f.example_index for f in features} == set(range(len(examples)))
    answered = set()
    for f in features:
        if f.start_position != NO_ANSWER:
            text, start = examples[f.example_index].answers[0]
            span = tok.decode(f.input_ids[f.start_position : f.end_position + 1])
            assert span.strip() == text
            first, last = f.offsets[f.start_position], f.offsets[f.end_position]
            assert first is not None and last is not None
            assert first[0] <= start and last[1] >= start + len(text)
            answered.add(f.example_index)
    assert len(answered) == len(examples)  # a heading of a few tokens always fits some window


def test_question_longer_than_the_window_is_an_error():
    with pytest.raises(UserError, match="lower doc_stride or raise block_size"):
        qa_features([QAExample("a b c d", "x", [], "x")], Tokenizer(), 6, doc_stride=2)


def test_qa_speakers_answers_phrases_and_disjoint_split():
    train, test = read_qa("builtin:qa-speakers", "train"), read_qa("builtin:qa-speakers", "test")
    assert len(train) > 1000 and len(test) > 100
    for ex in train + test:
        ((name, start),) = ex.answers
        assert ex.context[start : start + len(name) + 2] == f"{name}:\n"
        phrase = ex.question.removeprefix('Who says "').removesuffix('"?')
        assert ex.context.count(phrase) == 1
        # the phrase is in the speech under the answer's heading: no heading between them
        at = ex.context.index(phrase)
        assert "\n\n" not in ex.context[start:at]
    assert {ex.context for ex in train}.isdisjoint({ex.context for ex in test})
    assert len(read_qa("builtin:qa-speakers", "all")) == len(train) + len(test)


def test_qa_speakers_is_listed_and_not_read_as_documents():
    assert "builtin:qa-speakers" in [b["name"] for b in list_builtins()]
    with pytest.raises(UserError, match="question-answering data"):
        load_builtin("builtin:qa-speakers")
