"""A shared-prefix cache: the keys and values of prompt prefixes that requests have in common.

A priming text sent with many requests (the server's ``prime``) is prefilled once: the engine
keeps the K/V of each prompt in blocks of ``BLOCK`` tokens, keyed by the adapter and the whole
token prefix up to the block's end (so a block is found only after the very same tokens, at the
very same positions), and a later prompt starting with the same blocks copies them into its
cache slot and prefills only the rest. Blocks are evicted least recently used first, by bytes,
within the budget; a prompt's deeper blocks are used less recently than its first ones, so a
prefix loses its tail before its head (vLLM's order).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor

from gpt2tune.core.model import KVCache
from gpt2tune.core.multilora import AdapterBank

BLOCK = 64
"""Tokens per cached block: hits come in multiples of it."""


class PrefixCache:
    """Blocks of prompt K/V, least recently used first out, within ``budget_bytes``."""

    def __init__(self, budget_bytes: int) -> None:
        """Args:
        budget_bytes: the most bytes of keys and values kept (0: nothing is kept).
        """
        self.budget_bytes = budget_bytes
        self.bytes = 0
        self.blocks: OrderedDict[tuple, tuple[Tensor, Tensor]] = OrderedDict()
        """(adapter, prefix tokens) -> (keys, values), each (n_layer, nh, BLOCK, hs)."""
        self.hits = 0
        """Prompts that found at least one block."""
        self.tokens_reused = 0
        """Prompt tokens not prefilled thanks to the cache."""
        self.version: object = None

    def lookup(
        self, adapter: str | None, ids: list[int], version: object = None
    ) -> list[tuple[Tensor, Tensor]]:
        """The cached blocks that ``ids`` starts with, in order (the longest run from the start);
        they become the most recently used. A ``version`` other than the last one (the model
        changed: an adapter was added or removed, so a name may now mean other weights and the
        base rows' projections run another code path) first empties the cache."""
        if version != self.version:
            self.blocks.clear()
            self.bytes = 0
            self.version = version
        found = []
        for end in range(BLOCK, len(ids) + 1, BLOCK):
            block = self.blocks.get((adapter, tuple(ids[:end])))
            if block is None:
                break
            found.append(block)
        self._touch(adapter, ids, len(found))
        if found:
            self.hits += 1
            self.tokens_reused += len(found) * BLOCK
        return found

    def store(self, adapter: str | None, ids: list[int], k: Tensor, v: Tensor, start: int) -> None:
        """Keep the blocks of ``ids`` from position ``start`` on, as far as whole blocks go.

        Args:
            adapter: the adapter the K/V were computed with (None: the base).
            ids: the tokens whose K/V ``k``, ``v`` hold.
            k, v: (n_layer, nh, >= len(ids), hs) keys and values of one cache slot.
            start: the first position not already cached (a multiple of ``BLOCK``).
        """
        if self.budget_bytes <= 0:
            return
        for end in range(start + BLOCK, len(ids) + 1, BLOCK):
            key = (adapter, tuple(ids[:end]))
            if key in self.blocks:
                continue
            block = (k[:, :, end - BLOCK : end].clone(), v[:, :, end - BLOCK : end].clone())
            size = _size(block)
            if size > self.budget_bytes:
                break
            while self.bytes + size > self.budget_bytes:
                _, old = self.blocks.popitem(last=False)
                self.bytes -= _size(old)
            self.blocks[key] = block
            self.bytes += size
        self._touch(adapter, ids, len(ids) // BLOCK)

    def _touch(self, adapter: str | None, ids: list[int], n: int) -> None:
        """Make the first ``n`` blocks of ``ids`` the most recently used, the first block the
        most recent of all (a prefix is then evicted from its tail)."""
        for end in range(n * BLOCK, 0, -BLOCK):
            key = (adapter, tuple(ids[:end]))
            if key in self.blocks:
                self.blocks.move_to_end(key)

    def lookup_all(
        self, prompts: list[tuple[list[int], str | None, bool]], bank: AdapterBank | None
    ) -> list[list[tuple[Tensor, Tensor]]]:
        """``lookup`` of each (ids, adapter, wants its logprobs) prompt of a model with adapter
        bank ``bank``; none for a prompt that wants its logprobs (all its positions must run)."""
        version = bank.version if bank is not None else None
        return [[] if want else self.lookup(a, ids, version) for ids, a, want in prompts]

    def save(
        self, adapter: str | None, ids: list[int], cache: KVCache, slot: int, start: int
    ) -> None:
        """``store`` the blocks of ``ids`` from slot ``slot`` of ``cache``."""
        self.store(adapter, ids, cache.k[:, slot], cache.v[:, slot], start)

    def stats(self) -> dict[str, int]:
        """Blocks, bytes, hits and tokens reused, for ``/health``."""
        return {
            "blocks": len(self.blocks),
            "bytes": self.bytes,
            "hits": self.hits,
            "tokens_reused": self.tokens_reused,
        }


def load(blocks: list[tuple[Tensor, Tensor]], cache: KVCache, slot: int) -> int:
    """Copy ``blocks`` (from ``PrefixCache.lookup``) into slot ``slot`` of ``cache`` as its first
    positions; returns their length, the slot's new length."""
    for i, (k, v) in enumerate(blocks):
        cache.k[:, slot, :, i * BLOCK : (i + 1) * BLOCK] = k
        cache.v[:, slot, :, i * BLOCK : (i + 1) * BLOCK] = v
    cache.lengths[slot] = len(blocks) * BLOCK
    return len(blocks) * BLOCK


def _size(block: tuple[Tensor, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in block)
