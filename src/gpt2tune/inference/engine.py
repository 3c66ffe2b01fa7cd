"""The generation engine: sequences decoded together in one batch, joining and leaving between
steps.

Every caller generates through it: ``gpt2tune generate`` (one request), the experiments, and
``gpt2tune serve`` (many requests at once: continuous batching). A request's prompt is prefilled
once into one slot of the KV cache and copied to the slots of its ``n`` samples; then every
step feeds each running row its last token, so rows that started at different times share one
forward pass (each attends over its own cached positions only). Rows may use different LoRA
adapters of one base (``core.multilora``). A row leaves when it ends; a waiting request joins
as soon as there are free slots for all its samples.

A row's tokens do not depend on which other rows share its batch: its sampling settings (logit
bias and penalties over its own tokens included), random generator and adapter are its request's
own.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import Tensor

from gpt2tune.core.model import GPT2, KVCache
from gpt2tune.core.multilora import adapter_bank
from gpt2tune.errors import UserError
from gpt2tune.inference.prefix_cache import PrefixCache, load
from gpt2tune.inference.sampling import SamplingConfig, adjust, draw, process_logits
from gpt2tune.runtime import autocast


@dataclass
class GenerationRequest:
    """What to generate."""

    prompt: list[int]
    """Token ids to continue (priming text included)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How to pick tokens, how many, and the seed."""
    n: int = 1
    """Samples to draw from the prompt (they share its prefill)."""
    adapter: str | None = None
    """The LoRA adapter to generate with (installed with ``core.multilora``); None: the base."""
    logprobs: int | None = None
    """Report the log-probability of each sampled token and the ``logprobs`` most likely
    alternatives (from the model's distribution, before sampling settings, logit bias and
    penalties); None: none."""
    prompt_logprobs: bool = False
    """Also report each prompt token's log-probability given the tokens before it (and the
    ``logprobs`` most likely), on every row's first token (``Token.prompt``); needs ``logprobs``."""
    logit_bias: dict[int, float] = field(default_factory=dict)
    """Added to the logits of these token ids before sampling (OpenAI's ``logit_bias``:
    -100..100; -100 bans a token, 100 all but forces it)."""


@dataclass
class Token:
    """One new token of one row."""

    request: int
    """The request's id (from ``Engine.submit``)."""
    row: int
    """Which of the request's samples, 0..n-1."""
    token: int
    logprob: float | None = None
    """log p(token) under the model, when the request asked for log-probabilities."""
    top: list[tuple[int, float]] | None = None
    """The most likely tokens and their log-probabilities, when asked for."""
    finish: str | None = None
    """``"stop"`` (end of text), ``"length"`` (the token budget is spent) or None (more to come)."""
    prompt: list[Token] | None = None
    """On a row's first token, when the request asked for ``prompt_logprobs``: the prompt's
    tokens with their log-probabilities (the first has none: nothing comes before it)."""


@dataclass
class _Row:
    request: int
    index: int
    adapter: str | None
    tokens: list[int]
    """Prompt and generated tokens so far."""
    generated: int = 0


@dataclass
class _Running:
    request: GenerationRequest
    generator: torch.Generator
    rows_left: int
    prompt: list[Token] | None = None
    """The prompt's log-probabilities, when asked for (computed at the prefill)."""


class Engine:
    """Decodes the rows of many requests together, one token per row per ``step()``."""

    def __init__(
        self,
        model: GPT2,
        *,
        eot_id: int,
        max_batch: int = 8,
        autocast_dtype: torch.dtype | None = None,
        use_cache: bool = True,
        max_len: int | None = None,
        prefix_cache_mb: float = 0,
    ) -> None:
        """Args:
        model: the language model (eval mode), with adapters installed by
            ``core.multilora.install_adapters`` if requests name adapters.
        eot_id: the end-of-text token.
        max_batch: rows decoded together at most (a request waits for free slots).
        autocast_dtype: e.g. ``torch.bfloat16`` to run matmuls in bf16.
        use_cache: decode with a KV cache (False recomputes every row's whole sequence each
            step: the reference the cache is tested against).
        max_len: the longest prompt + new tokens any request will need (the KV cache's
            length per row); default: the model's context.
        prefix_cache_mb: MiB for the K/V of prompt prefixes that later prompts share; 0: none.
        """
        if max_batch < 1:
            raise UserError(f"`max_batch` must be >= 1, got {max_batch}")
        self.model = model
        self.eot_id = eot_id
        self.max_batch = max_batch
        self.autocast_dtype = autocast_dtype
        self.use_cache = use_cache
        self.max_len = min(max_len or model.config.n_positions, model.config.n_positions)
        self.bank = adapter_bank(model)
        self.device = next(model.parameters()).device
        self.cache: KVCache | None = None  # allocated on first use
        self.rows: list[_Row] = []  # rows[i] lives in cache slot i
        self.waiting: deque[int] = deque()
        self.running: dict[int, _Running] = {}
        self._cancelled: set[tuple[int, int | None]] = set()
        self._next_id = 0
        self.peak_rows = 0
        """The most rows decoded together in one step so far."""
        self.prefix_cache = PrefixCache(int(prefix_cache_mb * 2**20))

    # ------------------------------------------------------------------ requests

    @property
    def adapters(self) -> list[str]:
        """Names of the adapters requests may use."""
        return list(self.bank.names) if self.bank is not None else []

    def check(self, request: GenerationRequest) -> None:
        """Raise ``UserError`` naming the problem if ``request`` cannot run."""
        request.sampling.validate()
        n_positions = self.model.config.n_positions
        if not request.prompt:
            raise UserError("empty prompt: give `prompt` or `prime` text to condition on")
        if request.n < 1:
            raise UserError(f"`n` must be >= 1, got {request.n}")
        if request.n > self.max_batch:
            # the batch is the engine's (the server's) setting, not the request's: the field to
            # change is the request's sample count, so the message names no setting to raise
            raise UserError(
                f"{request.n} samples of one prompt are more than the "
                f"{self.max_batch} rows decoded at once; ask for at most "
                f"{self.max_batch} samples",
                field="n",
            )
        total = len(request.prompt) + request.sampling.max_new_tokens
        if total > n_positions:
            raise UserError(
                f"prompt ({len(request.prompt)} tokens) + `max_new_tokens` "
                f"({request.sampling.max_new_tokens}) exceeds the context of "
                f"{n_positions}; shorten either"
            )
        if total > self.max_len:
            raise UserError(
                f"prompt ({len(request.prompt)} tokens) + `max_new_tokens` "
                f"({request.sampling.max_new_tokens}) exceeds this engine's "
                f"max_len of {self.max_len}"
            )
        if request.adapter is not None and request.adapter not in self.adapters:
            raise UserError(
                f"unknown adapter {request.adapter!r}; this model has: "
                f"{', '.join(self.adapters) or 'none'}",
                field="adapter",
            )
        if request.logprobs is not None and request.logprobs < 0:
            raise UserError(f"`logprobs` must be >= 0, got {request.logprobs}")
        if request.prompt_logprobs and request.logprobs is None:
            raise UserError("`prompt_logprobs` needs `logprobs` (0 for no alternatives)")
        vocab = self.model.config.vocab_size
        for token, bias in request.logit_bias.items():
            if not 0 <= token < vocab:
                raise UserError(
                    f"`logit_bias` names token {token}, outside this model's vocabulary "
                    f"(0..{vocab - 1})"
                )
            if not -100 <= bias <= 100:  # (NaN fails too)
                raise UserError(
                    f"`logit_bias` values must be between -100 and 100, got {bias} for token "
                    f"{token}"
                )

    def submit(self, request: GenerationRequest) -> int:
        """Queue ``request``; it joins the batch at a coming ``step()``. Returns its id.

        Raises:
            UserError: the request cannot run (see ``check``).
        """
        self.check(request)
        rid = self._next_id
        self._next_id += 1
        seed = request.sampling.seed
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
        self.running[rid] = _Running(request, generator, request.n)
        self.waiting.append(rid)
        return rid

    def cancel(self, request: int, row: int | None = None) -> None:
        """Stop generating for one row of a request, or for all of it (a stop string was found,
        the client went away). Takes effect before the next step; unknown ids are ignored."""
        self._cancelled.add((request, row))

    @property
    def idle(self) -> bool:
        """Nothing is waiting or running."""
        return not self.running

    @property
    def queued(self) -> int:
        """Requests waiting for free slots."""
        return len(self.waiting)

    # ------------------------------------------------------------------ stepping

    def step(self) -> list[Token]:
        """Admit waiting requests while their samples fit, then decode one token for every row.

        Returns:
            The new tokens; a row's last token has ``finish`` set.
        """
        self._apply_cancellations()
        self._admit()
        if not self.rows:
            return []
        self.peak_rows = max(self.peak_rows, len(self.rows))
        logits = self._next_logits()
        tokens = self._sample(logits)
        self._retire([i for i, t in enumerate(tokens) if t.finish is not None])
        return sorted(tokens, key=lambda t: (t.request, t.row))

    def _apply_cancellations(self) -> None:
        if not self._cancelled:
            return
        cancelled, self._cancelled = self._cancelled, set()
        for rid, row in cancelled:
            if rid in self.waiting and row is None:
                self.waiting.remove(rid)
                del self.running[rid]
        self._retire(
            [
                i
                for i, r in enumerate(self.rows)
                if (r.request, None) in cancelled or (r.request, r.index) in cancelled
            ]
        )

    def _admit(self) -> None:
        """Move the waiting requests that fit (in order) into the batch, prefilling them
        together: their prompts in slots B..B+m-1, then the copies for their other samples."""
        admitted: list[int] = []
        rows = len(self.rows)
        while self.waiting:
            n = self.running[self.waiting[0]].request.n
            if rows + n > self.max_batch:
                break
            admitted.append(self.waiting.popleft())
            rows += n
        if not admitted:
            return
        requests = [self.running[rid].request for rid in admitted]
        first = len(self.rows)
        if self.use_cache:
            prompts = [(r.prompt[:-1], r.adapter, r.prompt_logprobs) for r in requests]
            hits = self.prefix_cache.lookup_all(prompts, self.bank)
            order = sorted(range(len(admitted)), key=lambda j: len(hits[j]))
            admitted, requests = [admitted[j] for j in order], [requests[j] for j in order]
            logits = self._prefill(first, [prompts[j] for j in order], [hits[j] for j in order])
        else:
            logits = [
                self._logits(r.prompt[:-1], r.adapter) if r.prompt_logprobs else None
                for r in requests
            ]
        for rid, req, lg in zip(admitted, requests, logits):
            if lg is not None:
                self.running[rid].prompt = _prompt_tokens(rid, req, lg)
        copies = first + len(admitted)
        new = []
        for j, (rid, req) in enumerate(zip(admitted, requests)):
            new.append((first + j, _Row(rid, 0, req.adapter, list(req.prompt))))
            for i in range(1, req.n):
                if self.cache is not None:  # (allocated by the prefill when use_cache)
                    self.cache.copy_slot(first + j, copies)
                new.append((copies, _Row(rid, i, req.adapter, list(req.prompt))))
                copies += 1
        self.rows += [row for _, row in sorted(new, key=lambda it: it[0])]

    @contextlib.contextmanager
    def _forward(self, adapters: list[str | None]):
        # grad mode and autocast only around the forward: they are thread-wide settings, and a
        # consumer's code runs between the steps
        select = (
            self.bank.select(adapters, self.device)
            if self.bank is not None
            else contextlib.nullcontext()
        )
        with torch.no_grad(), autocast(self.device, self.autocast_dtype), select:
            yield

    def _prefill(
        self, first: int, prompts: list[tuple[list[int], str | None, bool]], hits: list[list]
    ) -> list[Tensor | None]:
        """Put each prompt (all but its last token) into slots first, first+1, ... of the cache:
        its cached prefix blocks (``hits``, sorted by length) copied in, the rest through the
        model, one forward pass per cached length. Shorter prompts are padded on the right: their
        tokens never attend to the padding (causal), and each slot's length ends at its prompt,
        so the padding's keys are never attended to later and get overwritten.

        Returns the (len, vocab) logits of the prompts whose third item asks for them."""
        if self.cache is None:
            dtype = self.autocast_dtype or next(self.model.parameters()).dtype
            self.cache = KVCache(
                self.model.config, self.max_batch, self.max_len, self.device, dtype
            )
        cached = [load(blocks, self.cache, first + j) for j, blocks in enumerate(hits)]
        logits: list[Tensor | None] = [
            torch.empty(0, self.model.config.vocab_size) if want else None for _, _, want in prompts
        ]
        for past in sorted(set(cached)):  # (sorted: the prompts with `past` cached are adjacent)
            start, stop = cached.index(past), cached.index(past) + cached.count(past)
            group = prompts[start:stop]
            width = max(len(ids) for ids, _, _ in group) - past
            if width > 0:
                x = torch.full((len(group), width), self.eot_id, dtype=torch.long)
                for j, (ids, _, _) in enumerate(group):
                    x[j, : len(ids) - past] = torch.tensor(ids[past:], dtype=torch.long)
                with self._forward([adapter for _, adapter, _ in group]):
                    h = self.model.hidden_states(
                        x.to(self.device), cache=self.cache.rows(first + start, first + stop)
                    )
                    for j, (ids, _, want) in enumerate(group):
                        if want:  # (no cached prefix; the padding's positions are no prompt's)
                            logits[start + j] = self.model.lm_head(h[j, : len(ids)]).float()
        for j, (ids, adapter, _) in enumerate(prompts):
            self.cache.lengths[first + j] = len(ids)
            self.prefix_cache.save(adapter, ids, self.cache, first + j, cached[j])
        return logits

    def _logits(self, ids: list[int], adapter: str | None) -> Tensor:
        """(len(ids), vocab) float32 logits after each of ``ids``, without the cache."""
        if not ids:
            return torch.empty(0, self.model.config.vocab_size)
        with self._forward([adapter]):
            return self.model(torch.tensor([ids], device=self.device))[0].float()

    def _next_logits(self) -> Tensor:
        """(B, vocab) float32 logits of every row's next token."""
        adapters = [r.adapter for r in self.rows]
        if self.cache is None:  # use_cache=False
            out = []
            for r in self.rows:
                with self._forward([r.adapter]):
                    x = torch.tensor([r.tokens], device=self.device)
                    out.append(self.model.next_token_logits(x).float())
            return torch.cat(out)
        with self._forward(adapters):
            x = torch.tensor([[r.tokens[-1]] for r in self.rows], device=self.device)
            return self.model.next_token_logits(x, cache=self.cache.rows(0, len(self.rows))).float()

    def _sample(self, logits: Tensor) -> list[Token]:
        by_request: dict[int, list[int]] = {}
        for i, r in enumerate(self.rows):
            by_request.setdefault(r.request, []).append(i)
        # requests with the same logits processing are processed as one batch (8 one-row
        # requests: 8 top-k passes become one); each still draws with its own generator
        groups: dict[tuple, list[int]] = {}
        for rid, slots in by_request.items():
            # a request's rows in sample order, whatever slots they occupy
            slots.sort(key=lambda i: self.rows[i].index)
            cfg = self.running[rid].request.sampling
            key = (cfg.greedy, cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty)
            groups.setdefault(key, []).append(rid)
        adjusted = self._adjust(logits)
        out: list[tuple[int, Token]] = []
        for rids in groups.values():
            slots = [i for rid in rids for i in by_request[rid]]
            cfg = self.running[rids[0]].request.sampling
            raw = logits[slots]
            context = None
            if cfg.repetition_penalty != 1.0:
                width = max(len(self.rows[i].tokens) for i in slots)
                context = torch.full((len(slots), width), -1, dtype=torch.long, device=self.device)
                for j, i in enumerate(slots):
                    context[j, : len(self.rows[i].tokens)] = torch.tensor(self.rows[i].tokens)
            processed = process_logits(adjusted[slots], context, cfg)
            start = 0
            for rid in rids:
                n = len(by_request[rid])
                rows = slice(start, start + n)
                start += n
                out += self._take(rid, by_request[rid], raw[rows], processed[rows])
        # in slot order, so the caller can find each row's token
        return [t for _, t in sorted(out, key=lambda it: it[0])]

    def _adjust(self, logits: Tensor) -> Tensor:
        """The logits with each row's logit bias and presence and frequency penalties (over the
        tokens the row has generated) applied; the rows without any are left as they are."""
        adjusted = logits
        for i, r in enumerate(self.rows):
            req = self.running[r.request].request
            cfg = req.sampling
            if req.logit_bias or cfg.presence_penalty or cfg.frequency_penalty:
                if adjusted is logits:
                    adjusted = logits.clone()
                generated = r.tokens[len(r.tokens) - r.generated :]
                adjusted[i] = adjust(logits[i], generated, cfg, req.logit_bias)
        return adjusted

    def _take(
        self, rid: int, slots: list[int], raw: Tensor, processed: Tensor
    ) -> list[tuple[int, Token]]:
        """Pick the next token of each of a request's rows, and note it."""
        req = self.running[rid].request
        cfg = req.sampling
        chosen = (
            processed.argmax(-1) if cfg.greedy else draw(processed, self.running[rid].generator)
        ).tolist()
        logp = raw.log_softmax(-1) if req.logprobs is not None else None
        if logp is not None and req.logprobs:
            top_lp, top_ids = logp.topk(req.logprobs, dim=-1)
        out = []
        for j, i in enumerate(slots):
            row = self.rows[i]
            token = chosen[j]
            row.tokens.append(token)
            row.generated += 1
            t = Token(rid, row.index, token)
            if row.generated == 1:
                t.prompt = self.running[rid].prompt
            if logp is not None:
                t.logprob = float(logp[j, token])
                t.top = (
                    [(int(a), float(b)) for a, b in zip(top_ids[j], top_lp[j])]
                    if req.logprobs
                    else []
                )
            if token == self.eot_id and cfg.stop_at_eot:
                t.finish = "stop"
            elif row.generated >= cfg.max_new_tokens:
                t.finish = "length"
            out.append((i, t))
        return out

    def _retire(self, slots: list[int]) -> None:
        """Take rows out of the batch; the last row moves into each freed slot (the running rows
        stay in slots 0..B-1, so the batch's cache is a view, never a gather)."""
        for i in sorted(set(slots), reverse=True):
            row = self.rows[i]
            last = len(self.rows) - 1
            if i != last:
                if self.cache is not None:
                    self.cache.copy_slot(last, i)
                self.rows[i] = self.rows[last]
            self.rows.pop()
            if self.cache is not None:
                self.cache.lengths[last] = 0
            run = self.running.get(row.request)
            if run is not None:
                run.rows_left -= 1
                if run.rows_left == 0:
                    del self.running[row.request]

    def finished(self, request: int) -> bool:
        """Every row of the request has ended (or it was cancelled)."""
        return request not in self.running


def _prompt_tokens(rid: int, request: GenerationRequest, logits: Tensor) -> list[Token]:
    """The prompt's tokens with their log-probabilities, from the (len - 1, vocab) logits after
    each but the last prompt token."""
    logp = logits.log_softmax(-1)
    targets = torch.tensor(request.prompt[1:], device=logp.device)
    chosen = logp.gather(1, targets[:, None])[:, 0].tolist()
    k = request.logprobs or 0
    top_lp, top_ids = logp.topk(k, dim=-1) if k else (logp[:, :0], logp[:, :0])
    out = [Token(rid, 0, request.prompt[0])]  # nothing before it: no log-probability
    for j, token in enumerate(request.prompt[1:]):
        top = [(int(a), float(b)) for a, b in zip(top_ids[j], top_lp[j])]
        out.append(Token(rid, 0, token, chosen[j], top))
    return out
