"""A style score for generated text: does it read like one Shakespeare character (the demo), or
like the user's own training text (``gpt2tune compare``, against a contrast text)?

A small classifier (TF-IDF over character n-grams, then logistic regression) learns to tell the
character's training speeches from other characters' speeches (or the user's text from the
contrast); its share of generated samples
judged "in character" is the style score. The classifier's own held-out accuracy is measured on
speeches it never saw, so a reader can tell how far to trust the score.

Speeches are cut to ``max_chars`` characters and very short ones are skipped, for training and for
scoring alike: generated samples are a few hundred characters long, and without the cut the
classifier could learn speech length (Falstaff talks at length, many others say "Ay, my lord.")
instead of style.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gpt2tune.data.builtin import (
    DEFAULT_CHARACTER,
    load_builtin,
    shakespeare_other_speeches,
)
from gpt2tune.errors import UserError

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline


@dataclass
class StyleConfig:
    """How the style classifier is trained and checked."""

    max_chars: int = 300
    """Keep only the first this many characters of each speech and sample."""
    min_chars: int = 40
    """Skip speeches shorter than this (one-line interjections carry no style)."""
    negatives_per_positive: int = 2
    """Other characters' training speeches per speech of the character (classes are weighted)."""
    heldout_negatives_per_positive: int = 4
    """Other characters' held-out speeches per held-out speech of the character."""
    ngram_range: tuple[int, int] = (2, 5)
    """Character n-gram lengths (n-grams may span word boundaries, so they see punctuation)."""
    C: float = 4.0
    """Inverse regularisation strength of the logistic regression."""
    seed: int = 0
    """Seeds the choice of other characters' speeches."""


@dataclass
class HeldOut:
    """How the classifier does on speeches it was not trained on."""

    accuracy: float
    """Balanced accuracy: the mean of the two rates below (chance is 0.5)."""
    in_character_rate: float
    """Share of the character's held-out speeches judged in character (true positive rate)."""
    false_positive_rate: float
    """Share of other characters' held-out speeches judged in character."""
    positives: int
    """Number of the character's held-out speeches."""
    negatives: int
    """Number of other characters' held-out speeches."""


@dataclass
class StyleClassifier:
    """A trained classifier of one character's style; see ``train_style_classifier``."""

    character: str
    config: StyleConfig
    pipeline: Pipeline
    """The fitted scikit-learn pipeline (vectorizer + logistic regression)."""
    train_sizes: tuple[int, int] = (0, 0)
    """(character's speeches, other speeches) it was trained on."""
    heldout: HeldOut | None = None
    top_features: list[str] = field(default_factory=list)
    """The n-grams that most push a text towards the character."""

    def prepare(self, texts: list[str]) -> list[str]:
        """Texts cut to ``max_chars`` and whitespace-normalised, as the classifier saw them."""
        return [" ".join(t.split())[: self.config.max_chars] for t in texts]

    def probabilities(self, texts: list[str]) -> list[float]:
        """Probability that each text is the character's, as the classifier judges it."""
        if not texts:
            return []
        return [float(p) for p in self.pipeline.predict_proba(self.prepare(texts))[:, 1]]

    def share_in_character(self, texts: list[str]) -> float:
        """Share of ``texts`` with probability above one half (the style score)."""
        probs = self.probabilities(texts)
        return sum(p > 0.5 for p in probs) / len(probs) if probs else 0.0


def _usable(texts: list[str], cfg: StyleConfig) -> list[str]:
    return [t for t in texts if len(" ".join(t.split())) >= cfg.min_chars]


def train_style_classifier(
    character: str = DEFAULT_CHARACTER, cfg: StyleConfig | None = None
) -> StyleClassifier:
    """Train a classifier of ``character``'s speeches against other characters', and measure it.

    The character's speeches come from the training split of ``builtin:shakespeare:CHARACTER``
    (the same speeches the language models are fine-tuned on); the held-out check uses its test
    split and other characters' speeches not used in training.

    Args:
        character: a Shakespeare character (case-insensitive).
        cfg: training settings; defaults to ``StyleConfig()``.

    Returns:
        The fitted classifier with its held-out rates filled in.
    """
    cfg = cfg or StyleConfig()
    name = f"builtin:shakespeare:{character}"
    others = shakespeare_other_speeches(character, seed=cfg.seed)
    return fit_style_classifier(
        character.upper(), load_builtin(name, "train"), load_builtin(name, "test"), others, cfg
    )


def fit_style_classifier(
    name: str,
    train: list[str],
    heldout: list[str],
    others: list[str],
    cfg: StyleConfig | None = None,
) -> StyleClassifier:
    """Train a classifier of ``train`` (the style) against ``others``, and measure it on
    ``heldout`` and on the ``others`` it did not train on.

    Args:
        name: whose style it is (for the report).
        train: texts in the style (the same the language models are fine-tuned on).
        heldout: texts in the style it never sees in training.
        others: texts not in the style, in an order whose prefix is a fair sample; the first
            ``negatives_per_positive`` per training text train it, the next ones check it.
        cfg: settings; defaults to ``StyleConfig()``.

    Returns:
        The fitted classifier with its held-out rates filled in.

    Raises:
        UserError: too few usable texts on either side to train and check a classifier.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    cfg = cfg or StyleConfig()
    pos_train, pos_test, others = (_usable(t, cfg) for t in (train, heldout, others))
    n_neg = len(pos_train) * cfg.negatives_per_positive
    neg_train = others[:n_neg]
    neg_test = others[n_neg : n_neg + len(pos_test) * cfg.heldout_negatives_per_positive]
    if min(len(pos_train), len(neg_train)) < 2 or not pos_test or not neg_test:
        raise UserError(
            f"too little text for a style classifier of {name} ({len(pos_train)} "
            f"training and {len(pos_test)} held-out texts of at least "
            f"{cfg.min_chars} characters, {len(others)} contrast texts); give more "
            "data or a larger `contrast`, or turn `style` off"
        )

    pipeline = make_pipeline(
        TfidfVectorizer(analyzer="char", ngram_range=cfg.ngram_range, sublinear_tf=True, min_df=2),
        # balanced weights: the classes are unequal on purpose (more variety among the others)
        LogisticRegression(C=cfg.C, max_iter=2000, class_weight="balanced"),
    )
    clf = StyleClassifier(
        character=name, config=cfg, pipeline=pipeline, train_sizes=(len(pos_train), len(neg_train))
    )
    pipeline.fit(clf.prepare(pos_train + neg_train), [1] * len(pos_train) + [0] * len(neg_train))

    tpr = clf.share_in_character(pos_test)
    fpr = clf.share_in_character(neg_test)
    clf.heldout = HeldOut(
        accuracy=(tpr + 1 - fpr) / 2,
        in_character_rate=tpr,
        false_positive_rate=fpr,
        positives=len(pos_test),
        negatives=len(neg_test),
    )
    vectorizer, logreg = pipeline.steps[0][1], pipeline.steps[1][1]
    names = vectorizer.get_feature_names_out()
    order = logreg.coef_[0].argsort()[::-1]
    clf.top_features = [str(names[i]) for i in order[:12]]
    return clf


def builtin_contrast(exclude: str, seed: int = 0, per_source: int = 1500) -> list[str]:
    """Built-in text that is not the user's, as contrast for their style: news articles,
    Wikipedia paragraphs and Shakespeare speeches, shuffled (a prefix is a fair sample).

    Args:
        exclude: the user's ``--data``; a built-in dataset named there is left out.
        seed: seeds the shuffle.
        per_source: texts taken from each source at most.
    """
    import random

    pools = []
    if not exclude.startswith("builtin:news"):
        pools.append(load_builtin("builtin:news", "all"))
    if not exclude.startswith("builtin:wiki"):
        # paragraphs, not whole articles: closer to the length of samples
        pools.append([p for a in load_builtin("builtin:wiki", "all") for p in a.split("\n")])
    if not exclude.startswith("builtin:shakespeare"):
        pools.append(shakespeare_other_speeches(DEFAULT_CHARACTER, seed=seed))
    rng = random.Random(seed)
    texts = []
    for pool in pools:  # equal shares, so no one kind of text is what "not the user's" means
        rng.shuffle(pool)
        texts += pool[:per_source]
    rng.shuffle(texts)
    return texts
