"""The name trie answers exactly what a plain filter over the names answers."""

import fnmatch

from hypothesis import given, settings
from hypothesis import strategies as st

from ollamamax.models.name_index import NameTrie, is_pattern, literal_prefix

# a small alphabet, so prefixes and patterns actually hit names
CHARS = "ab:3.-"
names_st = st.lists(st.text(CHARS, max_size=8), max_size=30)
pattern_st = st.text(CHARS + "*?", max_size=6) | st.builds(
    lambda a, b: f"{a}[{b}]*", st.text(CHARS, max_size=3), st.text("ab3", min_size=1, max_size=2))


@settings(max_examples=150, deadline=None)
@given(names_st, st.text(CHARS, max_size=4))
def test_prefix_queries_equal_a_plain_filter(names, prefix):
    trie = NameTrie(names)
    assert trie.with_prefix(prefix) == sorted({n for n in names if n.startswith(prefix)})


@settings(max_examples=150, deadline=None)
@given(names_st, pattern_st)
def test_glob_queries_equal_fnmatch(names, pattern):
    trie = NameTrie(names)
    assert trie.match(pattern) == sorted({n for n in names if fnmatch.fnmatchcase(n, pattern)})


@settings(max_examples=100, deadline=None)
@given(names_st, names_st)
def test_discard_keeps_the_trie_equal_to_a_set(added, removed):
    trie, plain = NameTrie(added), set(added)
    for name in removed:
        trie.discard(name)
        plain.discard(name)
    assert len(trie) == len(plain)
    assert trie.with_prefix("") == sorted(plain)
    assert all(name in trie for name in plain)
    assert not any(name in trie for name in set(removed) - plain)


def test_model_names_by_prefix_and_pattern():
    trie = NameTrie(["llama3:8b", "llama3:70b", "llama3.2:1b", "qwen2:7b", "llama2:7b"])
    assert trie.match("llama3*") == ["llama3.2:1b", "llama3:70b", "llama3:8b"]
    assert trie.match("llama3:*") == ["llama3:70b", "llama3:8b"]
    assert trie.match("*:7b") == ["llama2:7b", "qwen2:7b"]
    assert trie.with_prefix("qwen") == ["qwen2:7b"]
    assert trie.match("llama3:8b") == ["llama3:8b"]
    assert trie.match("nope*") == []


def test_literal_prefix_stops_at_the_first_wildcard():
    assert literal_prefix("llama3*:8b") == "llama3"
    assert literal_prefix("a?b") == "a"
    assert literal_prefix("x[ab]") == "x"
    assert literal_prefix("plain") == "plain"
    assert is_pattern("a*") and not is_pattern("llama3:8b")
