"""Tiny random-weight GGUF models for tests: a real llama.cpp model of ~0.7 MB, written in ms.

The model is a `llama` architecture with F32 tensors, tied embeddings and a SentencePiece
(``llama``) vocabulary: ``<unk>``, ``<s>``, ``</s>``, the 256 byte tokens, the space marker and
every prefix of a few words. SentencePiece merges symbols pairwise, so a word becomes one token
only when each of its prefixes is in the vocabulary; anything else falls back to bytes. Its
output is gibberish but deterministic for greedy decoding: assert on shapes, counts and
determinism, never on text.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ollamamax.models.importer import import_gguf
from ollamamax.models.store import LocalModel, ModelStore

SPACE = "\u2581"  # SentencePiece's word-start marker

WORDS = (
    "the", "and", "hello", "world", "model", "node", "cluster", "capital", "France", "Paris",
    "llama", "tiny", "random", "answer", "question", "assistant", "system", "user", "token",
    "stream", "router", "gateway", "engine", "request", "response", "embedding", "vector",
    "weight", "context", "prompt", "sample", "greedy", "output", "input", "number", "letter",
    "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "what", "is", "of", "a", "to",
    "in", "it", "you", "are", "helpful", "json", "tool", "call", "weather", "city",
    "machine", "memory", "thread", "socket", "server", "client", "replica", "digest", "manifest",
    "latency", "throughput", "queue", "slot", "keepalive", "schedule", "balance", "failover",
    "health", "metric", "window", "orange", "purple", "yellow", "garden",
)

# A ChatML-like template. llama.cpp renders it with its own Jinja engine when use_jinja is on.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

UNK, BOS, EOS = 0, 1, 2


def vocabulary(words: tuple[str, ...] = WORDS) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of the tiny SentencePiece vocabulary."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces: dict[str, None] = {SPACE: None}  # ordered set
    for word in words:
        marked = SPACE + word
        for end in range(2, len(marked) + 1):
            pieces[marked[:end]] = None
    tokens += list(pieces)
    types += [gguf.TokenType.NORMAL] * len(pieces)
    # Longer pieces score higher so the tokenizer prefers whole words.
    scores = [0.0] * 259 + [float(len(p)) for p in pieces]
    return tokens, scores, [int(t) for t in types]


def write_tiny_gguf(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    embedding_length: int = 64,
    blocks: int = 2,
    heads: int = 4,
    feed_forward_length: int = 128,
    context_length: int = 4096,
    pooling_type: gguf.PoolingType | None = None,
    words: tuple[str, ...] = WORDS,
) -> Path:
    """Write a tiny random `llama` model to `path`; different seeds give different weights."""
    path = Path(path)
    tokens, scores, types = vocabulary(words)
    writer = gguf.GGUFWriter(path, "llama")
    _add_metadata(writer, embedding_length=embedding_length, blocks=blocks, heads=heads,
                  feed_forward_length=feed_forward_length, context_length=context_length)
    if pooling_type is not None:
        writer.add_pooling_type(pooling_type)
    _add_tokenizer(writer, tokens, scores, types)
    shapes = _tensor_shapes(len(tokens), embedding_length, blocks, feed_forward_length)
    rng = np.random.default_rng(seed)
    for name, shape in shapes.items():
        writer.add_tensor(name, _weights(rng, name, shape))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def import_tiny_model(
    models_dir: str | os.PathLike[str], name: str = "tiny:latest", seed: int = 0, **options: Any
) -> LocalModel:
    """Write a tiny model and import it into the store at `models_dir` under `name`.

    The file is written inside `models_dir` so the blob can be a hard link of it; the
    temporary name is removed afterwards (the blob keeps the data).
    """
    store = ModelStore(models_dir)
    store.root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=store.root, prefix=".tiny-", suffix=".gguf")
    os.close(fd)
    try:
        write_tiny_gguf(tmp, seed=seed, **options)
        return import_gguf(store, tmp, name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# -- internals -----------------------------------------------------------------------------


def _add_metadata(writer: gguf.GGUFWriter, *, embedding_length: int, blocks: int, heads: int,
                  feed_forward_length: int, context_length: int) -> None:
    writer.add_name("tiny-random-llama")
    writer.add_context_length(context_length)
    writer.add_embedding_length(embedding_length)
    writer.add_block_count(blocks)
    writer.add_feed_forward_length(feed_forward_length)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)


def _add_tokenizer(writer: gguf.GGUFWriter, tokens: list[str], scores: list[float],
                   types: list[int]) -> None:
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_chat_template(CHAT_TEMPLATE)


def _tensor_shapes(vocab: int, embd: int, blocks: int, ffn: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and numpy shapes, (out, in); no ``output.weight`` = tied embeddings."""
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (vocab, embd)}
    for i in range(blocks):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            shapes[f"blk.{i}.{part}.weight"] = (embd, embd)
        shapes[f"blk.{i}.ffn_gate.weight"] = (ffn, embd)
        shapes[f"blk.{i}.ffn_up.weight"] = (ffn, embd)
        shapes[f"blk.{i}.ffn_down.weight"] = (embd, ffn)
        shapes[f"blk.{i}.attn_norm.weight"] = (embd,)
        shapes[f"blk.{i}.ffn_norm.weight"] = (embd,)
    shapes["output_norm.weight"] = (embd,)
    return shapes


def _weights(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) == 1:
        return np.ones(shape, dtype=np.float32)  # norms: identity scale
    values = rng.normal(0.0, 1.0 / np.sqrt(shape[1]), size=shape).astype(np.float32)
    if name == "token_embd.weight":
        # With tied embeddings a token's output logit is the dot product with its row: a
        # zero row for <unk>, <s> and </s> keeps greedy decoding from ever choosing them, so
        # generation runs to num_predict instead of stopping after a random first token.
        values[: EOS + 1] = 0.0
    return values
