"""OpenAI's request and response shapes for completions and chat, so the official client works.

Requests are pydantic models (FastAPI validates them); responses are plain dicts in the shapes of
OpenAI's ``text_completion``, ``chat.completion`` and their streamed chunks. Fields OpenAI has
and this server does not honour are refused with a 400 naming the field rather than silently
ignored (a null value, which clients send for "not set", is accepted); so are non-finite numbers
(JSON's ``Infinity`` and ``NaN``, which Python's parser takes).
"""

from __future__ import annotations

import time
import uuid
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from gpt2tune.data.chat import STOP, Message, prompt_ids
from gpt2tune.data.qa import pair_questions
from gpt2tune.errors import UserError
from gpt2tune.inference.qa import DOC_STRIDE, MAX_ANSWER_TOKENS
from gpt2tune.inference.sampling import MIN_TEMPERATURE, SamplingConfig


class APIError(Exception):
    """An error answered in OpenAI's error JSON:
    ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code = param, code
        self.headers = headers
        """HTTP headers of the answer (a 429's ``Retry-After``)."""

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    @classmethod
    def from_user_error(cls, e: UserError) -> APIError:
        """A library's ``UserError`` as a 400 in the request's terms: the message with each field
        it names spelt as the request spells it, and that field as ``param``."""
        param = request_field(e.field) if e.field is not None else None
        return cls(400, e.phrased(request_field), param=param)


REQUEST_FIELDS = {"max_new_tokens": "max_tokens", "num_samples": "n", "adapter": "model"}
"""The library's field names (``UserError.field``) that OpenAI's requests call otherwise: the
engine's ``max_new_tokens`` is the request's ``max_tokens``, and so on. Limits that are the
server's own (``max_batch``, ``max_tokens_cap``) are no request field: an error about one names
the request field that exceeded it (a request's ``n`` over the batch: ``n``)."""


def request_field(field: str) -> str:
    """The request's name for a library field (``max_new_tokens`` -> ``max_tokens``)."""
    return REQUEST_FIELDS.get(field, field)


IGNORED_FIELDS = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls"})
"""OpenAI's fields that do not change the answer (an end user's id, labels for OpenAI's own
storage, a hint that matters only with tools): accepted and ignored. Any other field this server
does not know is refused unless its value is null."""

NOT_SET: tuple = (None, False, [], {}, {"type": "text"}, "none")
"""Values of a field this server does not implement that ask for nothing: null, false, no tools,
plain text as the response format, ``tool_choice: "none"``."""


class SamplingFields(BaseModel):
    """The sampling fields completions and chat share (OpenAI's, then gpt2tune's extras)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    """0 means greedy decoding."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    """OpenAI's (-2..2): subtracted from the logit of every token generated so far."""
    frequency_penalty: float = 0.0
    """OpenAI's (-2..2): subtracted once per time a token was generated so far."""
    logit_bias: dict[int, float] | None = None
    """OpenAI's: token id (a string, as JSON's keys are) -> -100..100 added to its logit."""
    # gpt2tune's extras (the openai client sends them with extra_body=)
    top_k: int = Field(default=0, ge=0)
    """Sample among the k most likely tokens only; 0 = off."""
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    """CTRL's repetition penalty, as in transformers; 1 = off."""
    prime: str | None = None
    """Text placed before the prompt (priming), trimmed from the left to fit the context."""

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def check(self) -> None:
        """400 for what the server does not implement, and for a temperature too small to
        sample with (the sampler's own limits are checked by the engine, also as 400s)."""
        for name, value in (self.model_extra or {}).items():
            if name not in IGNORED_FIELDS and not any(value == v for v in NOT_SET):
                raise APIError(
                    400,
                    f"{name} is not supported by this server; leave it out (or null)",
                    param=name,
                )
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise APIError(
                400,
                f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}: smaller ones "
                f"overflow the logits divided by it; got {self.temperature}",
                param="temperature",
            )

    def sampling(self, max_tokens: int) -> SamplingConfig:
        return SamplingConfig(
            max_new_tokens=max_tokens,
            greedy=self.temperature == 0,
            temperature=self.temperature or 1.0,
            top_k=self.top_k,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            stop=self.stops(),
            seed=self.seed,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    """Text, texts, or (as OpenAI allows) token ids: one list of ids, or a list of them."""
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    """Log-probabilities of each sampled token and of this many most likely alternatives."""
    suffix: str | None = None
    best_of: int | None = None

    def prompts(self) -> list[str] | list[list[int]]:
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and all(isinstance(t, int) for t in self.prompt):
            return [cast(list[int], list(self.prompt))]
        return cast(list[str] | list[list[int]], list(self.prompt))

    def check(self) -> None:
        super().check()
        if self.suffix:
            raise APIError(
                400, "suffix (insertion) is not supported by GPT-2; leave it out", param="suffix"
            )
        if self.best_of not in (None, 1, self.n):
            raise APIError(
                400, "best_of is not supported; ask for n samples instead", param="best_of"
            )
        if not self.prompts():
            raise APIError(400, "prompt is an empty list; give at least one prompt", param="prompt")
        if self.echo and self.logprobs is not None and self.prime:
            raise APIError(
                400,
                "echo with logprobs cannot be combined with prime (the prime's and the "
                "prompt's tokens may merge); leave out one of them",
                param="prime",
            )

    @property
    def prompt_logprobs(self) -> bool:
        """The prompt's tokens are echoed with their log-probabilities."""
        return self.echo and self.logprobs is not None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_completion_tokens: int | None = Field(default=None, ge=1)


CHAT_STOP = STOP


def chat_prompt(messages: list[ChatMessage], tokenizer) -> list[int]:
    """The prompt of a chat request as token ids, rendered by the one chat template
    (``data.chat``), the same that training and ``generate --chat`` use."""
    return prompt_ids([Message(m.role, m.content) for m in messages], tokenizer)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def model_card(name: str, kind: str, created: int) -> dict:
    """One entry of ``GET /v1/models``; ``kind`` (base, adapter, variant) is gpt2tune's extra."""
    return {"id": name, "object": "model", "created": created, "owned_by": "gpt2tune", "kind": kind}


class ClassifyRequest(BaseModel):
    """``POST /v1/classify``: gpt2tune's own endpoint (OpenAI has none), shaped like embeddings."""

    model_config = ConfigDict(extra="ignore")

    model: str
    input: str | list[str]

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class AnswerRequest(BaseModel):
    """``POST /v1/answer``: gpt2tune's own endpoint, the server's ``gpt2tune answer``. A field
    it does not know is refused (a misspelt option would otherwise change the answers
    silently)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    question: str | list[str]
    context: str | list[str]
    """One context for every question, or one per question."""
    doc_stride: int = Field(default=DOC_STRIDE, ge=0)
    """A context longer than the window is split into windows overlapping by this many tokens."""
    max_answer_tokens: int = Field(default=MAX_ANSWER_TOKENS, ge=1)
    """The longest answer considered, in tokens (at most the model's window)."""

    def pairs(self) -> list[tuple[str, str]]:
        """(question, context) of each question.

        Raises:
            APIError: no question, or an empty question or context.
            UserError: contexts that are neither one nor one per question (``pair_questions``;
                the app answers it as a 400 naming ``context``).
        """
        questions = [self.question] if isinstance(self.question, str) else self.question
        contexts = [self.context] if isinstance(self.context, str) else self.context
        for name, texts in (("question", questions), ("context", contexts)):
            if not texts or any(not t.strip() for t in texts):
                raise APIError(
                    400, f"{name} is empty, or one of its texts is; give text", param=name
                )
        return pair_questions(questions, contexts)
