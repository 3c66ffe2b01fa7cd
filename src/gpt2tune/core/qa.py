"""GPT-2 for extractive question answering: a ``qa_outputs`` head scoring each token as the
answer's start and end.

What transformers' ``GPT2ForQuestionAnswering`` computes, with its parameter names (the body under
``transformer.``, the head as ``qa_outputs.weight`` and ``qa_outputs.bias``), so checkpoints load
both ways. Rows are laid out as transformers' ``run_qa.py`` feeds GPT-2: the question's tokens, then
the context's (no separator), padded on the right with an attention mask. The loss is the mean of
the start and end cross-entropies; a position outside the row (a truncated answer) is ignored.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpt2tune.core.model import GPT2, GPT2Config, empty_init


class GPT2QuestionAnswering(GPT2):
    """GPT-2 with a ``qa_outputs`` head (``Linear(n_embd, 2)``: start and end scores).

    The language-model head stays (tied to the token embedding, so it adds no parameters): the
    same body can still generate.
    """

    modules_to_save = ("qa_outputs",)
    """The head a LoRA run trains and saves with its adapters (peft's ``modules_to_save``)."""

    def __init__(
        self,
        config: GPT2Config,
        *,
        init_weights: bool = True,
        source_dir: Path | None = None,
    ) -> None:
        """Args:
        config: the architecture.
        init_weights: draw GPT-2's random initialisation (the head too).
        source_dir: where the weights came from (see ``GPT2``).
        """
        super().__init__(config, init_weights=init_weights, source_dir=source_dir)
        self.qa_outputs = nn.Linear(config.n_embd, 2)
        if init_weights:
            self._init_weights(self.qa_outputs)

    def span_logits(
        self, input_ids: Tensor, *, attention_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Start and end logits, each (B, T), equal to transformers' at every position.

        The loss is a softmax over all T positions, padding included, so padding positions must
        score as in transformers too: positions count from the first column, and a padding token
        attends to the real tokens before it only (``GPT2.hidden_states`` lets it see itself and
        repeats the last real position, which changes its score, not the real tokens').

        Args:
            input_ids: (B, T) question then context tokens, padded on the right.
            attention_mask: (B, T) 1 for real tokens; ``None`` means no padding.
        """
        B, T = input_ids.shape
        device = input_ids.device
        if self.config.n_positions < T:
            raise ValueError(
                f"sequence of {T} positions exceeds the model's context of "
                f"{self.config.n_positions}"
            )
        mask = None  # causal
        if attention_mask is not None:
            q_pos = torch.arange(T, device=device).view(T, 1)
            k_pos = torch.arange(T, device=device).view(1, T)
            allowed = (k_pos <= q_pos).view(1, 1, T, T) & attention_mask.bool().view(B, 1, 1, T)
            # a query with no key at all (a row of padding only) sees itself rather than give NaN
            alone = ~allowed.any(-1, keepdim=True) & (k_pos == q_pos).view(1, 1, T, T)
            mask = allowed | alone
        h = self.stack(input_ids, torch.arange(T, device=device), mask, None)  # (B, T, n_embd)
        start, end = self.qa_outputs(h).unbind(-1)  # (B, T, 2) -> 2 x (B, T)
        return start, end

    def span_loss(
        self,
        input_ids: Tensor,
        start_positions: Tensor,
        end_positions: Tensor,
        *,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """(CE(start) + CE(end)) / 2, as transformers computes it.

        Positions are clamped to [0, T] and T is ignored: an answer cut off by truncation adds
        nothing (a negative position counts as 0, the no-answer convention's first token).

        Args:
            input_ids: (B, T) as for ``span_logits``.
            start_positions: (B,) token index of each answer's first token.
            end_positions: (B,) token index of each answer's last token.
            attention_mask: (B, T) 1 for real tokens.
        """
        start, end = self.span_logits(input_ids, attention_mask=attention_mask)
        T = start.size(1)
        start_loss = F.cross_entropy(start.float(), start_positions.clamp(0, T), ignore_index=T)
        end_loss = F.cross_entropy(end.float(), end_positions.clamp(0, T), ignore_index=T)
        return (start_loss + end_loss) / 2

    def loss(
        self,
        input_ids: Tensor,
        targets: Tensor,
        *,
        attention_mask: Tensor | None = None,
        chunk_size: int = 0,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """The trainer's loss for this model: ``span_loss`` with ``targets`` (B, 2) holding each
        row's start and end position.

        A row is one question and context, never packed: ``segment_ids`` (B, T), as
        ``data.qa.qa_rows`` makes them, is 0 for real tokens and -1 for padding, and serves as
        the attention mask, so padding positions score as in transformers (they are part of the
        softmax). ``chunk_size`` is for the language-model loss and unused here.
        """
        if attention_mask is None and segment_ids is not None:
            if int(segment_ids.max()) > 0:
                raise ValueError("a question-answering row holds one example; rows are not packed")
            attention_mask = (segment_ids >= 0).long()
        return self.span_loss(
            input_ids, targets[:, 0], targets[:, 1], attention_mask=attention_mask
        )

    @classmethod
    def from_language_model(cls, model: GPT2) -> GPT2QuestionAnswering:
        """A QA model over ``model``'s body (weights shared, not copied) with a fresh head."""
        with empty_init():  # the body is the model's own: build none of it
            qa = cls(model.config, init_weights=False, source_dir=model.source_dir)
        qa.transformer = model.transformer
        qa.lm_head = model.lm_head
        weight = model.lm_head.weight
        qa.qa_outputs = nn.Linear(model.config.n_embd, 2, device=weight.device, dtype=weight.dtype)
        cls._init_weights(qa.qa_outputs)
        qa.train(model.training)
        return qa
