"""A name index: model names in a character trie, for prefix and glob queries.

``ollamamax models list 'llama3*'`` asks it for every name matching a shell-style pattern.
The literal part of a pattern before its first wildcard is walked down the trie, so only the
names under that prefix are looked at (all of them for ``*foo``); the rest of the pattern is
checked with `fnmatch` on those. Pure: no I/O, keys go in as the caller gives them (the
store uses canonical, lower-case model keys such as ``llama3:8b``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator

_WILDCARDS = "*?["


class _Node:
    __slots__ = ("children", "end")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.end = False


class NameTrie:
    """A set of names with ordered prefix and glob queries."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._root = _Node()
        self._size = 0
        for name in names:
            self.add(name)

    def __len__(self) -> int:
        return self._size

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        node = self._find(name)
        return node is not None and node.end

    def add(self, name: str) -> None:
        node = self._root
        for ch in name:
            node = node.children.setdefault(ch, _Node())
        if not node.end:
            node.end = True
            self._size += 1

    def discard(self, name: str) -> None:
        """Remove `name` if present, pruning branches left without names."""
        path = [self._root]
        for ch in name:
            child = path[-1].children.get(ch)
            if child is None:
                return
            path.append(child)
        if not path[-1].end:
            return
        path[-1].end = False
        self._size -= 1
        for depth in range(len(name), 0, -1):
            node = path[depth]
            if node.end or node.children:
                break
            del path[depth - 1].children[name[depth - 1]]

    def with_prefix(self, prefix: str) -> list[str]:
        """Every name starting with `prefix`, sorted."""
        node = self._find(prefix)
        return [] if node is None else list(_walk(node, prefix))

    def match(self, pattern: str) -> list[str]:
        """Every name matching the shell-style `pattern` (``*``, ``?``, ``[...]``), sorted;
        matching is case-sensitive (``fnmatch.fnmatchcase``)."""
        literal = literal_prefix(pattern)
        if literal == pattern:
            return [pattern] if pattern in self else []
        return [name for name in self.with_prefix(literal) if fnmatch.fnmatchcase(name, pattern)]

    def _find(self, prefix: str) -> _Node | None:
        node: _Node | None = self._root
        for ch in prefix:
            node = node.children.get(ch) if node is not None else None
            if node is None:
                return None
        return node


def literal_prefix(pattern: str) -> str:
    """The part of `pattern` before its first wildcard."""
    cut = min((i for i in (pattern.find(w) for w in _WILDCARDS) if i >= 0), default=len(pattern))
    return pattern[:cut]


def is_pattern(text: str) -> bool:
    return any(w in text for w in _WILDCARDS)


def _walk(node: _Node, prefix: str) -> Iterator[str]:
    """Names under `node` in sorted order (depth first, children in character order)."""
    stack = [(prefix, node)]
    while stack:
        name, at = stack.pop()
        if at.end:
            yield name
        for ch in sorted(at.children, reverse=True):
            stack.append((name + ch, at.children[ch]))
