"""Question-answering inference (inference.qa) against references written here: span decoding
against a brute-force search, whole answers against transformers' GPT2ForQuestionAnswering run on
windows built in the test, and SQuAD's exact match and F1 against values worked out by hand."""

import math
import random

import pytest
import torch
from checkpoints import make_hf_qa_model

from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.qa import QAExample, QAFeature
from gpt2tune.errors import UserError
from gpt2tune.formats.hf import load_qa_model
from gpt2tune.inference.qa import (
    Answer,
    answer_questions,
    best_span,
    exact_match,
    f1_score,
    normalize_answer,
    score_answers,
    window_length,
)


def softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    exps = [math.exp(x - top) for x in xs]
    total = sum(exps)
    return [x / total for x in exps]


def brute_force(start: list[float], end: list[float], max_tokens: int) -> tuple[float, int, int]:
    """(p_start * p_end, i, j) of the best span of a window's context tokens, every pair tried:
    ``start``/``end`` hold the context positions' logits only, so the softmax covers just them."""
    p_start, p_end = softmax(start), softmax(end)
    best = (-1.0, -1, -1)
    for i in range(len(start)):
        for j in range(i, min(len(end), i + max_tokens)):
            if p_start[i] * p_end[j] > best[0]:
                best = (p_start[i] * p_end[j], i, j)
    return best


# ----------------------------------------------------------------------------- best_span


def random_window(rng: random.Random, gen: torch.Generator):
    """A window of question, context and padding positions with made-up character offsets, and
    random logits; question and padding positions get the highest logits in half the windows (a
    decoder that let them in, or into its softmax, would show)."""
    n_q, n_c, n_pad = rng.randint(0, 6), rng.randint(1, 40), rng.randint(0, 8)
    offsets: list[tuple[int, int] | None] = [None] * n_q
    char = rng.randint(0, 20)
    for _ in range(n_c):
        width = rng.randint(1, 6)
        offsets.append((char, char + width))
        char += width
    offsets += [None] * n_pad
    T = len(offsets)
    feature = QAFeature(0, [0] * T, [1] * (n_q + n_c) + [0] * n_pad, offsets, 0, 0)
    start, end = 3 * torch.randn(T, generator=gen), 3 * torch.randn(T, generator=gen)
    if rng.random() < 0.5:
        outside = torch.tensor([o is None for o in offsets])
        start, end = start + 20 * outside, end + 20 * outside
    return feature, start, end, n_q, n_c


@pytest.mark.parametrize("max_tokens", [1, 2, 5, 30])
def test_best_span_is_the_brute_force_best_of_the_context_tokens(max_tokens):
    rng, gen = random.Random(max_tokens), torch.Generator().manual_seed(max_tokens)
    constrained = tempted = 0
    for _ in range(40):
        feature, start, end, n_q, n_c = random_window(rng, gen)
        context = slice(n_q, n_q + n_c)
        p_ref, i, j = brute_force(start[context].tolist(), end[context].tolist(), max_tokens)
        p, first, last = best_span(start, end, feature, max_tokens)
        # the characters are those of the chosen tokens: the first's start, the last's end
        assert (first, last) == (feature.offsets[n_q + i][0], feature.offsets[n_q + j][1])
        assert p == pytest.approx(p_ref, rel=1e-5)
        # the test is not vacuous: the unconstrained best often breaks start <= end <= start+max
        i_free, j_free = int(start[context].argmax()), int(end[context].argmax())
        constrained += not i_free <= j_free < i_free + max_tokens
        # ... and a softmax over the whole window would give another probability
        whole = start.softmax(-1)[n_q + i] * end.softmax(-1)[n_q + j]
        tempted += float(whole) < 0.99 * p_ref
    assert constrained >= 5 and tempted >= 5


def test_best_span_of_a_window_without_context_is_none():
    feature = QAFeature(0, [1, 2, 3], [1, 1, 0], [None, None, None], 0, 0)
    assert best_span(torch.randn(3), torch.randn(3), feature, 30) is None


# ----------------------------------------------------------------------------- answer_questions

# long enough for several windows of BLOCK tokens overlapping by STRIDE; "naïve" and "cafés" hold
# multi-byte characters
CONTEXT = (
    "On Monday, Anna went to the market and bought twelve apples, three naïve books and a lamp. "
    "It was raining, so she waited at the station for an hour before the train arrived. "
    "Paul met her there; he had sold forty chairs at the fair and wanted cafés and cake."
)
QUESTIONS = ["Who bought the apples?", "How many chairs did Paul sell?", "Where did she wait?"]
BLOCK, STRIDE = 24, 8


@pytest.fixture(scope="module")
def qa_model(tmp_path_factory):
    """(our model, transformers' model) of one random checkpoint (n_positions 64)."""
    path = tmp_path_factory.mktemp("qa-decoding")
    hf = make_hf_qa_model(path)
    return load_qa_model(path), hf


def reference_answer(hf, fast, question: str, context: str, max_tokens: int):
    """(answer, start, end, p, window of the winner, windows) by transformers' model on windows
    built here: question tokens then a run of the context's tokens (each run starting
    ``room - STRIDE`` tokens after the last, until one reaches the context's end), no padding."""
    q = Tokenizer().encode(question)
    enc = fast(context, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    room = BLOCK - len(q)
    best, first, windows = None, 0, 0
    while True:
        last = min(first + room, len(ids))
        with torch.no_grad():
            out = hf(input_ids=torch.tensor([q + ids[first:last]]))
        start, end = out.start_logits[0, len(q) :], out.end_logits[0, len(q) :]
        p, i, j = brute_force(start.tolist(), end.tolist(), max_tokens)
        if best is None or p > best[0]:
            best = (p, offsets[first + i][0], offsets[first + j][1], windows)
        windows += 1
        if last >= len(ids):
            break
        first += room - STRIDE
    p, a, b, winner = best
    text = context[a:b]  # " apples" is the token; "apples" the answer
    a, b = a + len(text) - len(text.lstrip()), b - (len(text) - len(text.rstrip()))
    return context[a:b], a, b, p, winner, windows


def examples() -> list[QAExample]:
    short = "Tom bought seven pens at the shop on Friday."
    return [QAExample(q, CONTEXT, [], f"q{i}") for i, q in enumerate(QUESTIONS)] + [
        QAExample("Who bought pens?", short, [], "short")
    ]


@pytest.mark.parametrize("max_tokens", [1, 3, 30])
def test_answers_equal_transformers_windows_and_brute_force(qa_model, hf_tokenizers, max_tokens):
    ours, hf = qa_model
    fast = hf_tokenizers[1]
    assert fast(CONTEXT)["input_ids"] == Tokenizer().encode(CONTEXT)  # one tokenisation
    exs = examples()
    # batch_size 3: windows of different examples share a batch
    got = answer_questions(
        ours,
        Tokenizer(),
        exs,
        block_size=BLOCK,
        doc_stride=STRIDE,
        max_answer_tokens=max_tokens,
        batch_size=3,
    )
    winners = []
    for example, a in zip(exs, got):
        answer, start, end, p, winner, windows = reference_answer(
            hf, fast, example.question, example.context, max_tokens
        )
        assert (a.answer, a.start, a.end) == (answer, start, end)
        assert a.score == pytest.approx(p, rel=1e-4)
        assert example.context[a.start : a.end] == a.answer
        assert a.answer == a.answer.strip() and a.answer
        if example.id != "short":
            assert windows >= 4
            winners.append(winner)
    assert max(winners) > 0  # not every answer from the first window: best over windows counts


def test_max_answer_tokens_bounds_the_answer(qa_model, hf_tokenizers):
    ours, _ = qa_model
    fast = hf_tokenizers[1]
    offsets = fast(CONTEXT, return_offsets_mapping=True)["offset_mapping"]
    scores = []
    for max_tokens in [1, 2, 4, 8, 30]:
        got = answer_questions(
            ours,
            Tokenizer(),
            examples()[:3],
            block_size=BLOCK,
            doc_stride=STRIDE,
            max_answer_tokens=max_tokens,
        )
        for a in got:
            tokens = [o for o in offsets if o[0] < a.end and o[1] > a.start]
            assert 1 <= len(tokens) <= max_tokens
        scores.append([a.score for a in got])
    # a longer limit searches more spans: no answer's probability can drop
    for shorter, longer in zip(scores, scores[1:]):
        assert all(s <= t + 1e-7 for s, t in zip(shorter, longer))
    assert scores[0] != scores[-1]  # the limit binds for some question


def test_question_and_padding_scores_do_not_enter_the_answer(qa_model, monkeypatch):
    ours, _ = qa_model
    tok = Tokenizer()
    ex = examples()[:1]
    n_q = len(tok.encode(ex[0].question))
    opts = dict(block_size=BLOCK, doc_stride=STRIDE, max_answer_tokens=30)
    plain = answer_questions(ours, tok, ex, **opts)
    span_logits = ours.span_logits

    def tempting(ids, *, attention_mask=None):
        # the question's and the padding's positions score far above every context token
        start, end = span_logits(ids, attention_mask=attention_mask)
        outside = attention_mask == 0
        outside[:, :n_q] = True
        return start + 50 * outside, end + 50 * outside

    monkeypatch.setattr(ours, "span_logits", tempting)
    boosted = answer_questions(ours, tok, ex, **opts)
    assert [(a.answer, a.start, a.end) for a in boosted] == [
        (a.answer, a.start, a.end) for a in plain
    ]
    assert boosted[0].score == pytest.approx(plain[0].score, rel=1e-5)
    assert plain[0].start >= 0 and plain[0].end <= len(CONTEXT)


def test_a_whitespace_only_span_is_kept_and_an_empty_context_is_an_error(qa_model):
    ours, _ = qa_model
    tok = Tokenizer()
    (a,) = answer_questions(ours, tok, [QAExample("Who?", "   ", [], "blank")], doc_stride=8)
    assert a.answer == "   "[a.start : a.end] and a.answer  # nothing left to trim it to
    with pytest.raises(UserError, match="context is empty"):
        answer_questions(ours, tok, [QAExample("Who?", "", [], "empty")], doc_stride=8)


def test_options_out_of_range_are_user_errors(qa_model):
    ours, _ = qa_model
    ex = examples()[:1]
    with pytest.raises(UserError, match="max_answer_tokens must be at least 1"):
        answer_questions(ours, Tokenizer(), ex, max_answer_tokens=0, doc_stride=8)
    # a negative stride would skip a token between windows
    with pytest.raises(UserError, match="doc_stride must be at least 0"):
        answer_questions(ours, Tokenizer(), ex, doc_stride=-1)
    assert window_length(ours) == 64  # min(384, n_positions)
    assert window_length(ours, 24) == 24
    for block in [0, 1, 65]:
        with pytest.raises(UserError, match=f"block_size {block} is outside 2..64"):
            window_length(ours, block)


# ----------------------------------------------------------------------------- SQuAD scores


def test_normalize_answer_is_squads():
    # lower case; punctuation dropped (not replaced by a space); a, an, the dropped as words only;
    # runs of whitespace one space, none at the ends
    assert normalize_answer("  The Eiffel\tTower!  ") == "eiffel tower"
    assert normalize_answer("An apple, a pear & the plum.") == "apple pear plum"
    assert normalize_answer("Theatre anathema") == "theatre anathema"
    assert normalize_answer("U.S.A. (don't)") == "usa dont"
    assert normalize_answer("the") == normalize_answer("...") == ""


def test_exact_match():
    assert exact_match("the Eiffel tower.", ["Eiffel Tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower"]) == 0.0  # a part is not a match
    assert exact_match("Eiffel Tower in Paris", ["Eiffel Tower"]) == 0.0  # nor a superset
    assert exact_match("Paris", ["Lyon", "paris!", "Nice"]) == 1.0  # any gold answer
    # no gold answer: gold is [""], so only an answer that normalises to nothing matches
    assert exact_match("", []) == 1.0
    assert exact_match("The", []) == 1.0
    assert exact_match("Emma", []) == 0.0


def test_f1_from_the_definition():
    # pred "red dog" vs gold "big red dog barked": 2 words shared, P = 2/2 = 1, R = 2/4 = 1/2,
    # F1 = 2PR/(P+R) = 1/(3/2) = 2/3
    assert f1_score("red dog", ["big red dog barked"]) == pytest.approx(2 / 3)
    # words count with multiplicity: "dog dog dog" vs "the dog" shares one word, P = 1/3, R = 1,
    # F1 = (2/3)/(4/3) = 1/2
    assert f1_score("dog dog dog", ["the dog"]) == pytest.approx(1 / 2)
    # ... on both sides: "dog dog" vs "a dog and a dog" (dog, and, dog) shares two, P = 2/2,
    # R = 2/3, F1 = (4/3)/(5/3) = 4/5 (a set of words would share one: 2/5)
    assert f1_score("dog dog", ["a dog and a dog"]) == pytest.approx(4 / 5)
    # articles and punctuation go before counting: "The red, dog." vs "red dog" is exact
    assert f1_score("The red, dog.", ["red dog"]) == 1.0
    assert f1_score("red dog", ["cat"]) == 0.0
    # several gold answers: the best, 2/3 for the first and 1/2 for the second -> 2/3
    assert f1_score("red dog", ["big red dog barked", "red fox"]) == pytest.approx(2 / 3)
    assert f1_score("red dog", ["cat", "big red dog barked", "Red dog!"]) == 1.0
    # empty after normalising: 1 when both are, 0 when one is
    assert f1_score("", []) == 1.0 and f1_score("a", ["the"]) == 1.0
    assert f1_score("Emma", []) == 0.0 and f1_score("", ["Emma"]) == 0.0
    # a planted bug (precision ignored) would score a superset 1: it must not
    assert 0 < f1_score("Emma and Tom", ["Emma"]) < 1


def test_score_answers_means_over_questions():
    examples = [
        QAExample("q0", "Emma sat.", [("Emma", 0)], "a"),
        QAExample("q1", "big red dog barked", [("big red dog barked", 0)], "b"),
        QAExample("q2", "Nothing here.", [], "c"),
    ]
    answers = [Answer("Emma", 0, 4, 0.5), Answer("red dog", 4, 11, 0.25), Answer("", 0, 0, 0.1)]
    res = score_answers(examples, answers)
    # exact: 1, 0, 1 (no gold: the empty answer); F1: 1, 2/3, 1
    assert res.questions == 3
    assert res.exact_match == pytest.approx(2 / 3)
    assert res.f1 == pytest.approx((1 + 2 / 3 + 1) / 3)
    rows = res.predictions
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert [r["answers"] for r in rows] == [["Emma"], ["big red dog barked"], []]
    assert [r["exact_match"] for r in rows] == [1.0, 0.0, 1.0]
    assert rows[1] | {"f1": 0} == {
        "id": "b",
        "question": "q1",
        "answer": "red dog",
        "start": 4,
        "end": 11,
        "score": 0.25,
        "answers": ["big red dog barked"],
        "exact_match": 0.0,
        "f1": 0,
    }
    assert res.to_dict() == {"exact_match": res.exact_match, "f1": res.f1, "questions": 3}
