"""GPT-2 for sequence classification: a ``score`` head over each row's last real token.

What transformers' ``GPT2ForSequenceClassification`` computes, with its parameter names (the body
under ``transformer.``, the head as ``score.weight``), so checkpoints load both ways. The pooled
token of a row is its rightmost token that is not the pad token (``<|endoftext|>``), which is
right for left- and right-padded rows alike. One label is regression (mean squared error), more
are classes (cross-entropy).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpt2tune.core.model import GPT2, GPT2Config, empty_init

PAD_TOKEN_ID = 50256
"""GPT-2 has no pad token; ``<|endoftext|>`` serves, as transformers' examples set it."""


class GPT2Classifier(GPT2):
    """GPT-2 with a ``score`` head (``Linear(n_embd, num_labels, bias=False)``).

    The language-model head stays (tied to the token embedding, so it adds no parameters):
    the same body can still generate.
    """

    modules_to_save = ("score",)
    """The head a LoRA run trains and saves with its adapters (peft's ``modules_to_save``)."""

    def __init__(
        self,
        config: GPT2Config,
        labels: list[str],
        *,
        init_weights: bool = True,
        source_dir: Path | None = None,
        pad_token_id: int = PAD_TOKEN_ID,
    ) -> None:
        """Args:
        config: the architecture.
        labels: the class names, by id; one name means regression.
        init_weights: draw GPT-2's random initialisation (the head too).
        source_dir: where the weights came from (see ``GPT2``).
        pad_token_id: the token that marks padding.
        """
        super().__init__(config, init_weights=init_weights, source_dir=source_dir)
        if not labels:
            raise ValueError("a classifier needs at least one label")
        self.labels = list(labels)
        self.pad_token_id = pad_token_id
        self.score = nn.Linear(config.n_embd, len(labels), bias=False)
        if init_weights:
            nn.init.normal_(self.score.weight, mean=0.0, std=0.02)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    def last_real_token(self, input_ids: Tensor) -> Tensor:
        """(B,) index of each row's rightmost token that is not padding (0 for a row of pads)."""
        real = (input_ids != self.pad_token_id).int()
        index = torch.arange(input_ids.size(1), device=input_ids.device, dtype=torch.int32)
        return (index * real).argmax(-1)

    def classify(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """(B, num_labels) logits (for regression: the predicted values).

        Args:
            input_ids: (B, T) token ids, padded with ``pad_token_id`` on either side.
            attention_mask: (B, T) 1 for real tokens; left padding also needs it for positions.
            position_ids: (B, T) explicit positions (as for ``GPT2.hidden_states``).
        """
        h = self.hidden_states(input_ids, attention_mask=attention_mask, position_ids=position_ids)
        rows = torch.arange(h.size(0), device=h.device)
        pooled = h[rows, self.last_real_token(input_ids)]  # (B, n_embd)
        return self.score(pooled)

    def classification_loss(
        self, input_ids: Tensor, labels: Tensor, *, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Mean cross-entropy against class ids, or mean squared error for regression."""
        logits = self.classify(input_ids, attention_mask=attention_mask)
        if self.regression:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        return F.cross_entropy(logits.float(), labels)

    def loss(
        self,
        input_ids: Tensor,
        targets: Tensor,
        *,
        attention_mask: Tensor | None = None,
        chunk_size: int = 0,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """The trainer's loss for this model: ``classification_loss`` (``targets``: one label per
        row). Rows padded on the right need no attention mask: causal attention keeps every real
        token from seeing the padding after it. A classifier's rows hold one text each, never
        packed (``segment_ids`` must be None)."""
        if segment_ids is not None:
            raise ValueError("a classifier's rows hold one text each; they are never packed")
        return self.classification_loss(input_ids, targets, attention_mask=attention_mask)

    @classmethod
    def from_language_model(cls, model: GPT2, labels: list[str]) -> GPT2Classifier:
        """A classifier over ``model``'s body (weights shared, not copied) with a fresh head."""
        with empty_init():  # the body is the model's own: build none of it
            clf = cls(model.config, labels, init_weights=False, source_dir=model.source_dir)
        clf.transformer = model.transformer
        clf.lm_head = model.lm_head
        weight = model.lm_head.weight
        clf.score = nn.Linear(
            model.config.n_embd, len(labels), bias=False, device=weight.device, dtype=weight.dtype
        )
        nn.init.normal_(clf.score.weight, mean=0.0, std=0.02)
        clf.train(model.training)
        return clf
