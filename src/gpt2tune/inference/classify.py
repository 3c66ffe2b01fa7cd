"""Using a classifier: labels and probabilities for texts, and the scores of a labelled set."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt2tune.core.classifier import GPT2Classifier
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.labeled import encode_texts
from gpt2tune.data.rows import Rows
from gpt2tune.runtime import autocast


@torch.no_grad()
def predict(
    model: GPT2Classifier,
    inputs: torch.Tensor,
    *,
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(N, num_labels) float32 probabilities (for regression: the predicted values) of (N, T)
    token ids padded on the right, as ``encode_texts`` makes them."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    with autocast(device, autocast_dtype):
        for i in range(0, len(inputs), batch_size):
            logits = model.classify(inputs[i : i + batch_size].to(device)).float()
            out.append(logits if model.regression else logits.softmax(-1))
    return torch.cat(out).cpu()


def classify_texts(
    model: GPT2Classifier,
    tokenizer: Tokenizer,
    texts: list[str],
    *,
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
) -> list[dict]:
    """``{"label", "probabilities": {label: p}}`` for each text (its end kept if too long)."""
    labels = model.labels
    inputs, _ = encode_texts(texts, tokenizer, model.config.n_positions, model.pad_token_id)
    probs = predict(model, inputs, batch_size=batch_size, autocast_dtype=autocast_dtype)
    return [
        {
            "label": labels[int(p.argmax())],
            "probabilities": {name: round(float(v), 6) for name, v in zip(labels, p)},
        }
        for p in probs
    ]


@dataclass
class ClassificationScores:
    """How well a classifier labels a set of texts."""

    labels: list[str]
    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]
    """label -> precision, recall, f1, support."""
    confusion: list[list[int]]
    """confusion[true][predicted], in ``labels`` order."""
    texts: int

    def to_dict(self) -> dict:
        return {
            "texts": self.texts,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "per_class": self.per_class,
            "labels": self.labels,
            "confusion": self.confusion,
        }


def score(
    model: GPT2Classifier,
    rows: Rows,
    *,
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
) -> ClassificationScores:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix of ``rows``
    (targets: label ids)."""
    predicted = predict(
        model, rows.inputs, batch_size=batch_size, autocast_dtype=autocast_dtype
    ).argmax(-1)
    k = model.num_labels
    confusion = torch.zeros((k, k), dtype=torch.long)
    confusion.index_put_(
        (rows.targets.cpu(), predicted), torch.ones_like(predicted), accumulate=True
    )
    per_class, f1s = {}, []
    for i, name in enumerate(model.labels):
        tp = int(confusion[i, i])
        fp = int(confusion[:, i].sum()) - tp
        fn = int(confusion[i].sum()) - tp
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
        f1s.append(f1)
    return ClassificationScores(
        labels=list(model.labels),
        accuracy=float(confusion.diag().sum()) / max(len(rows), 1),
        macro_f1=sum(f1s) / k,
        per_class=per_class,
        confusion=confusion.tolist(),
        texts=len(rows),
    )
