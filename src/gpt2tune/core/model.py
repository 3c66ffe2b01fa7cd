"""GPT-2: a decoder-only Transformer (Radford et al., 2019), written to read like the paper.

Parameter names follow OpenAI's release and Hugging Face's ``GPT2LMHeadModel``
(``transformer.wte``, ``transformer.h.N.attn.c_attn``, ...), so importing a checkpoint is a
transpose of the four Conv1D weights and nothing else (see ``formats/hf.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gpt2tune.core.ops import Dropout, attention, gelu_tanh, lm_head_loss


@dataclass
class GPT2Config:
    """Shape and regularisation of a GPT-2 model."""

    n_layer: int = 12
    """Number of Transformer blocks."""
    n_head: int = 12
    """Attention heads per block; must divide ``n_embd``."""
    n_embd: int = 768
    """Width of the residual stream."""
    n_positions: int = 1024
    """Context length: number of learned position embeddings."""
    vocab_size: int = 50257
    """Token vocabulary size (GPT-2's byte-level BPE has 50,257 tokens)."""
    n_inner: int | None = None
    """Width of the MLP hidden layer; ``None`` means ``4 * n_embd``."""
    embd_pdrop: float = 0.1
    """Dropout on the sum of token and position embeddings."""
    attn_pdrop: float = 0.1
    """Dropout on the attention probabilities."""
    resid_pdrop: float = 0.1
    """Dropout on each residual branch output."""
    layer_norm_epsilon: float = 1e-5
    """Epsilon of every LayerNorm."""

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def mlp_hidden(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GPT2Config:
        """Build a config from a preset name (see ``PRESETS``), optionally overriding fields."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def num_params(self) -> int:
        """Parameter count without allocating the model (tied head counted once)."""
        d, h, L = self.n_embd, self.mlp_hidden, self.n_layer
        per_block = (
            2 * 2 * d  # ln_1, ln_2
            + d * 3 * d
            + 3 * d  # c_attn
            + d * d
            + d  # attn.c_proj
            + d * h
            + h  # c_fc
            + h * d
            + d  # mlp.c_proj
        )
        return self.vocab_size * d + self.n_positions * d + L * per_block + 2 * d


PRESETS: dict[str, dict] = {
    # OpenAI's four released sizes.
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
    # Small sizes for CPU work (same vocabulary, shorter context).
    "gpt2-nano": dict(n_layer=2, n_head=2, n_embd=64, n_positions=256),
    "gpt2-micro": dict(n_layer=4, n_head=4, n_embd=128, n_positions=256),
    "gpt2-mini": dict(n_layer=6, n_head=6, n_embd=384, n_positions=512),
}


class KVCache:
    """Preallocated keys and values of every layer, one slot per sequence, for incremental decoding.

    The model stays stateless: ``GPT2.forward`` writes each row's new keys/values after that row's
    cached ones and attends over them; it advances the lengths after the last layer. Every slot
    has its own length, so sequences that started at different times decode in one batch
    (continuous batching); ``rows(start, stop)`` is a view of some slots sharing the storage.
    """

    def __init__(
        self,
        config: GPT2Config,
        batch_size: int,
        max_len: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, max_len, hs)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        # Python ints: reading them never waits for the device.
        self.lengths: list[int] | _ListView = [0] * batch_size

    @property
    def pos(self) -> int:
        """The length shared by every slot (the cache of one batch that started together)."""
        if len(set(self.lengths)) > 1:
            raise ValueError(f"slots have different lengths {self.lengths}; use .lengths")
        return self.lengths[0] if self.lengths else 0

    def rows(self, start: int, stop: int) -> KVCache:
        """Slots ``start:stop`` as a cache of their own (a view: writes reach this cache too)."""
        view = object.__new__(KVCache)
        view.k, view.v = self.k[:, start:stop], self.v[:, start:stop]
        view.max_len = self.max_len
        view.lengths = _ListView(self.lengths, start, stop)
        return view

    def copy_slot(self, src: int, dst: int) -> None:
        """Make slot ``dst`` a copy of slot ``src`` (keys, values and length)."""
        n = self.lengths[src]
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n

    def positions(self, T: int, device: torch.device) -> Tensor:
        """(B, T) positions of the next T tokens of every slot."""
        start = torch.tensor(list(self.lengths), device=device).view(-1, 1)
        return start + torch.arange(T, device=device).view(1, T)

    def allowed(self, T: int, device: torch.device) -> Tensor | None:
        """(B, 1, T, S) keys each of the next T queries may see, or ``None`` when every slot has
        the same length (then plain causal attention over the last T positions is right)."""
        if len(set(self.lengths)) <= 1:
            return None
        S = max(self.lengths) + T
        q_pos = self.positions(T, device).view(-1, 1, T, 1)
        return torch.arange(S, device=device).view(1, 1, 1, S) <= q_pos

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k, v`` of shape (B, nh, T, hs) after each slot's cached positions; return the
        keys/values of positions ``0 : max(lengths) + T`` (B, nh, S, hs)."""
        T = k.size(2)
        end = max(self.lengths) + T
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.max_len}")
        if len(set(self.lengths)) <= 1:
            start = self.lengths[0]
            self.k[layer, :, :, start:end] = k
            self.v[layer, :, :, start:end] = v
        else:
            pos = self.positions(T, k.device)  # (B, T)
            rows = torch.arange(k.size(0), device=k.device).view(-1, 1).expand_as(pos)
            # advanced indices around a slice put their dims first: (B, T, nh, hs)
            self.k[layer][rows, :, pos] = k.transpose(1, 2)
            self.v[layer][rows, :, pos] = v.transpose(1, 2)
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, T: int) -> None:
        """Count T more positions in every slot (``GPT2.forward`` calls it after the last layer)."""
        for i in range(len(self.lengths)):
            self.lengths[i] += T


class _ListView:
    """``lengths[start:stop]`` of a parent cache, read and written through."""

    def __init__(self, parent: list[int] | _ListView, start: int, stop: int) -> None:
        self.parent, self.start, self.stop = parent, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[int]:
        # by index, so a view of a view (whose parent cannot be sliced) iterates too
        return (self.parent[i] for i in range(self.start, self.stop))

    def _index(self, i: int) -> int:
        return self.start + range(len(self))[i]  # negative indices and bounds as a list's

    def __getitem__(self, i: int) -> int:
        return self.parent[self._index(i)]

    def __setitem__(self, i: int, value: int) -> None:
        self.parent[self._index(i)] = value


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        # Query, key and value projections of all heads in one matrix, as OpenAI stored them.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_pdrop = config.attn_pdrop
        self.resid_dropout = Dropout(config.resid_pdrop)

    def forward(self, x: Tensor, mask: Tensor | None, cache: KVCache | None, layer: int) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(layer, k.to(cache.k.dtype), v.to(cache.v.dtype))  # (B, nh, S, hs)
            k, v = k.to(q.dtype), v.to(q.dtype)
        dropout_p = self.attn_pdrop if self.training else 0.0
        y = attention(q, k, v, mask, dropout_p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd)
        self.dropout = Dropout(config.resid_pdrop)

    def forward(self, x: Tensor) -> Tensor:
        # GPT-2 uses the tanh approximation of GELU; the exact erf form drifts from the weights'
        # training and from Hugging Face's outputs.
        return self.dropout(self.c_proj(gelu_tanh(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, mask: Tensor | None, cache: KVCache | None, layer: int) -> Tensor:
        # Pre-LayerNorm (unlike the original Transformer's post-LN): normalise each branch's
        # input and keep the residual stream itself untouched, which trains deep stacks stably.
        x = x + self.attn(self.ln_1(x), mask, cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.ModuleDict):
    """The body under OpenAI's names (``transformer.wte``, ``transformer.h.0``, ...): a
    ``ModuleDict``, as in nanoGPT; the annotations only tell type checkers what each entry is."""

    wte: nn.Embedding
    wpe: nn.Embedding
    drop: Dropout
    h: nn.ModuleList
    ln_f: nn.LayerNorm


class GPT2(nn.Module):
    """GPT-2 language model with a tied LM head.

    ``forward(input_ids)`` returns logits (B, T, vocab). For training, ``loss(input_ids, targets)``
    computes the next-token cross-entropy without materialising every logit at once.
    """

    modules_to_save: tuple[str, ...] = ()  # a task's new head, trained beside LoRA (as peft's)

    def __init__(
        self, config: GPT2Config, *, init_weights: bool = True, source_dir: Path | None = None
    ) -> None:
        """Args:
        config: the architecture.
        init_weights: draw GPT-2's random initialisation; pass False when the weights are
            about to be loaded (e.g. on the meta device, where initialising is wasted work).
        source_dir: the directory the weights were loaded from (its tokenizer files go with
            the model); ``None`` for a model built in memory (the bundled GPT-2 vocabulary).
        """
        super().__init__()
        self.config = config
        self.source_dir = source_dir
        self.transformer = Transformer(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.n_positions, config.n_embd),
                drop=Dropout(config.embd_pdrop),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the output projection is the token embedding matrix (saves 38M params
        # in the 124M model, and is how GPT-2 was trained).
        self.lm_head.weight = self.transformer.wte.weight
        # Recompute each block in backward instead of storing its activations (set by the trainer;
        # changes memory and speed, never the math).
        self.gradient_checkpointing = False
        if init_weights:
            self.apply(self._init_weights)
            # GPT-2 scales the init of each residual projection by 1/sqrt(2 * n_layer).
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Number of parameters, the tied head counted once."""
        return sum(p.numel() for p in self.parameters())

    def hidden_states(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """Final-LayerNorm hidden states (B, T, n_embd).

        Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, S) with 1 for real tokens and 0 for (left) padding, covering the
                cached positions plus the new ones (S = cache.pos + T); ``None`` means no padding.
            position_ids: (B, T); by default counted from the first real token of each row.
            cache: a ``KVCache`` to read from and append to (advanced by T on return).
            segment_ids: (B, T) for rows packed with several examples: a token attends only to
                earlier tokens of its own segment, and positions restart at each segment, so
                each example is computed as if alone (no cache, no ``attention_mask``).
        """
        B, T = input_ids.shape
        device = input_ids.device
        mask = None  # causal over the cache and the new tokens (see ops.attention)
        if segment_ids is not None:
            last = T
            position_ids, mask = _within_segments(segment_ids)
        elif cache is not None and attention_mask is None:
            # each slot continues from its own length (they may differ: continuous batching)
            last = max(cache.lengths) + T
            if position_ids is None:
                position_ids = cache.positions(T, device)
            mask = cache.allowed(T, device)
        else:
            past = cache.pos if cache is not None else 0
            S = past + T
            last = S
            if position_ids is None:
                if attention_mask is not None:
                    # Left padding: positions count real tokens, so padded and unpadded rows match.
                    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
                else:
                    position_ids = torch.arange(past, S, device=device).unsqueeze(0)
        if last > (n := self.config.n_positions):
            raise ValueError(f"sequence of {last} positions exceeds the model's context of {n}")
        if attention_mask is not None:
            # Boolean (B, 1, T, S) mask: causal, and no attending to padding. Each query may always
            # see itself, so a padding row is never fully masked (which would give NaN).
            q_pos = torch.arange(past, S, device=device).view(T, 1)
            k_pos = torch.arange(S, device=device).view(1, S)
            keep = attention_mask.bool().view(B, 1, 1, S) | (k_pos == q_pos).view(1, 1, T, S)
            mask = (k_pos <= q_pos).view(1, 1, T, S) & keep
        return self.stack(input_ids, position_ids, mask, cache)

    def stack(
        self, input_ids: Tensor, position_ids: Tensor, mask: Tensor | None, cache: KVCache | None
    ) -> Tensor:
        """``hidden_states`` for a made mask (None: causal): embeddings, blocks, ln_f."""
        x = self.transformer.wte(input_ids) + self.transformer.wpe(position_ids)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            if self.gradient_checkpointing and self.training and cache is None:
                x = checkpoint(block, x, mask, None, i, use_reentrant=False)
            else:
                x = block(x, mask, cache, i)
        if cache is not None:
            cache.advance(input_ids.size(1))
        return self.transformer.ln_f(x)

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Logits (B, T, vocab_size). Arguments as for ``hidden_states``."""
        h = self.hidden_states(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache
        )
        return self.lm_head(h)

    def next_token_logits(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Logits (B, vocab_size) of the last position only, for decoding. Arguments as for
        ``hidden_states``."""
        h = self.hidden_states(input_ids, attention_mask=attention_mask, cache=cache)[:, -1]
        w = self.lm_head.weight
        # (V, d) @ (d, B): for a few rows MKL runs this orientation ~30% faster than h @ W.T
        # (batch 8: 37 vs 53 ms for GPT-2's head on 2 CPU cores).
        return (w @ h.t().to(w.dtype)).t()

    def loss(
        self,
        input_ids: Tensor,
        targets: Tensor,
        *,
        attention_mask: Tensor | None = None,
        chunk_size: int = 0,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """Mean next-token cross-entropy over targets that are not -100.

        Args:
            input_ids: (B, T) inputs.
            targets: (B, T) the token each position should predict (already shifted); -100 ignores.
            attention_mask: as for ``hidden_states``.
            chunk_size: if > 0, compute the LM head and loss over this many tokens at a time, with
                their gradients, so the (tokens x vocab) logits never exist in full.
            segment_ids: as for ``hidden_states`` (rows packed with several examples).
        """
        h = self.hidden_states(input_ids, attention_mask=attention_mask, segment_ids=segment_ids)
        return lm_head_loss(h, self.lm_head.weight, targets, chunk_size)


def _within_segments(segment_ids: Tensor) -> tuple[Tensor, Tensor]:
    """For rows packed with several examples: each token's position within its segment, and the
    boolean (B, 1, T, T) mask letting a token see only earlier tokens of its own segment."""
    T = segment_ids.size(1)
    idx = torch.arange(T, device=segment_ids.device)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    # a token's position: its index minus the index where its segment starts
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    same = segment_ids.unsqueeze(2) == segment_ids.unsqueeze(1)  # (B, T, T)
    return idx - first, (same & (idx.view(T, 1) >= idx.view(1, T))).unsqueeze(1)


def cast_for_inference(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Store every weight that only enters matmuls in ``dtype``, once, for generation under
    autocast to ``dtype``: each ``nn.Linear`` (LoRA adapters included) and the token embedding,
    which is the tied LM head.

    Autocast would otherwise cast them all again at every decoding step (its cast cache lasts one
    autocast region, and the engine leaves the region between steps so that the caller's code
    never runs under it): for GPT-2 124M in bf16 that copying took 65% of a batch-1 step. The
    matmuls see the same bf16 weights either way; the token embeddings enter the residual stream
    rounded to ``dtype``. LayerNorms and position embeddings stay float32, and so does the
    residual stream.

    Returns:
        The same model, changed in place (run it under ``autocast`` to ``dtype``).
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.to(dtype)  # the LM head's weight is the token embedding: cast with it
    return model


@contextmanager
def empty_init() -> Iterator[None]:
    """Build modules on the meta device with no random initialisation, for weights that are about
    to be loaded. (Initialising on meta still dispatches through torch's Python reference ops,
    whose first use imports torch._dynamo: seconds of start-up for nothing.)"""
    classes = (nn.Linear, nn.Embedding, nn.LayerNorm)
    saved = {cls: cls.reset_parameters for cls in classes}
    # patching a method is the point here (for the duration of the block only)
    for cls in classes:
        cls.reset_parameters = lambda self: None  # type: ignore[method-assign]
    try:
        with torch.device("meta"):
            yield
    finally:
        for cls, fn in saved.items():
            cls.reset_parameters = fn  # type: ignore[method-assign]
