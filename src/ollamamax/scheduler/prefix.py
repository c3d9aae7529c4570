"""Prefix identity: which node served which prompt prefix recently.

A prompt is cut into blocks; each block's id is a hash chained over every block before it, so
two prompts share a leading run of ids exactly when they share that prefix (modulo hash
collisions, which only cost a slightly worse routing choice). Traces such as Mooncake's give
block ids directly; the gateway derives them from the prompt text (`text_blocks`).

`PrefixIndex` remembers, per node, an LRU of the blocks it was sent (bounded like the node's
own KV cache), and for every block the nodes holding it. `matches` walks a prompt's blocks
from the first and says how many leading blocks each node holds: a stand-in for the node's
prefix cache (what SGLang's router keeps as an approximate radix tree per worker).
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Sequence

BLOCK_CHARS = 64  # ~16 tokens: the KV block size of vLLM and llm-d, at ~4 characters a token


def text_blocks(text: str, block_chars: int = BLOCK_CHARS) -> tuple[int, ...]:
    """Chained ids of the full blocks of `text` (a partial last block is not cacheable)."""
    data = text.encode("utf-8", "surrogatepass")
    view = memoryview(data)
    lo, hi = 0, 1
    out = []
    for start in range(0, len(data) - block_chars + 1, block_chars):
        chunk = view[start:start + block_chars]
        # crc32 and adler32 chained over the prefix: 64 bits, C speed (~0.5 us a block here)
        lo, hi = zlib.crc32(chunk, lo), zlib.adler32(chunk, hi)
        out.append((lo << 32) | hi)
    return tuple(out)


class PrefixIndex:
    def __init__(self, capacity_per_node: int = 4096) -> None:
        if capacity_per_node < 1:
            raise ValueError("capacity_per_node must be >= 1")
        self.capacity = capacity_per_node  # until a node says how much its caches hold
        self._capacity: dict[int, int] = {}
        self._blocks: dict[int, OrderedDict[int, None]] = {}  # node -> its blocks, LRU order
        self._holders: dict[int, set[int]] = {}  # block -> nodes holding it

    def record(self, node: int, blocks: Sequence[int]) -> None:
        """`node` was sent a prompt with these blocks: it will have them cached."""
        if not blocks:
            return
        mine = self._blocks.setdefault(node, OrderedDict())
        # Newest last, and the first block most recent of all: evicting from the front then
        # drops the ends of old prompts before their beginnings, as a KV cache does, so a
        # held block implies its predecessors are (almost always) held too.
        for block in reversed(blocks):
            if block in mine:
                mine.move_to_end(block)
            else:
                mine[block] = None
                self._holders.setdefault(block, set()).add(node)
        self._trim(node, mine)

    def set_capacity(self, node: int, blocks: int) -> None:
        """How many blocks `node`'s prefix caches hold (its KV cache, from telemetry)."""
        blocks = max(1, blocks)
        if self._capacity.get(node) != blocks:
            self._capacity[node] = blocks
            mine = self._blocks.get(node)
            if mine is not None:
                self._trim(node, mine)

    def _trim(self, node: int, mine: OrderedDict[int, None]) -> None:
        limit = self._capacity.get(node, self.capacity)
        while len(mine) > limit:
            old, _ = mine.popitem(last=False)
            holders = self._holders.get(old)
            if holders is not None:
                holders.discard(node)
                if not holders:
                    del self._holders[old]

    def matches(self, blocks: Sequence[int], limit: int = 0) -> dict[int, int]:
        """``{node: leading blocks it holds}`` for every node holding at least the first.

        Blocks are held in prefix order (`record` keeps a prompt's first blocks the most
        recent), so the run of blocks every remaining node holds is found by galloping and
        bisection: O(log blocks) lookups per node that drops out, not one per block. Were an
        eviction to leave a hole mid-prompt, a node would be credited up to the next drop.
        """
        end = len(blocks) if limit <= 0 else min(limit, len(blocks))
        if not end:
            return {}
        holders = self._holders
        alive = holders.get(blocks[0])
        if not alive:
            return {}
        last = holders.get(blocks[end - 1])
        if last is not None and alive <= last:  # the usual case: whoever has it has it all
            return dict.fromkeys(alive, end)
        depth: dict[int, int] = {}
        k = 1
        while alive and k < end:
            k = self._first_drop(alive, blocks, k, end)
            if k >= end:
                break
            held = holders.get(blocks[k]) or set()
            for node in alive - held:
                depth[node] = k
            alive = alive & held
            k += 1
        for node in alive:
            depth[node] = end if k >= end else k
        return depth

    def _first_drop(self, alive: set[int], blocks: Sequence[int], k: int, end: int) -> int:
        """The first index >= k whose block some node of `alive` does not hold (or `end`)."""
        get = self._holders.get
        empty: set[int] = set()
        lo, hi, step = k, end, 1
        while lo < end:  # gallop: 1, 2, 4, ... blocks ahead
            j = min(lo + step - 1, end - 1)
            if not alive <= get(blocks[j], empty):
                hi = j
                break
            lo, step = j + 1, step * 2
        while lo < hi:  # then bisect between the last good and the first bad
            mid = (lo + hi) // 2
            if alive <= get(blocks[mid], empty):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def longest(self, blocks: Sequence[int]) -> tuple[int, int]:
        """The node holding the longest prefix of `blocks` and its length, (-1, 0) if none."""
        best, length = -1, 0
        for node, k in self.matches(blocks).items():
            if k > length or (k == length and node < best):
                best, length = node, k
        return best, length

    def size(self, node: int) -> int:
        """Blocks remembered for `node` (SGLang's 'tree size')."""
        mine = self._blocks.get(node)
        return len(mine) if mine is not None else 0

    def forget(self, node: int) -> None:
        """Drop what `node` held (it restarted or unloaded its model)."""
        for block in self._blocks.pop(node, {}):
            holders = self._holders.get(block)
            if holders is not None:
                holders.discard(node)
                if not holders:
                    del self._holders[block]
