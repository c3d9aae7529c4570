from __future__ import annotations

import hashlib

import gguf

from ollamamax.models import gguf_meta
from ollamamax.models.store import ModelStore
from ollamamax.testing.tiny_gguf import WORDS, import_tiny_model, vocabulary, write_tiny_gguf


def test_writes_a_valid_llama_gguf(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    info = gguf_meta.read(path)
    assert info.architecture == "llama"
    assert info.file_type == "F32"
    assert info.metadata["llama.embedding_length"] == 64
    assert info.metadata["llama.block_count"] == 2
    assert info.metadata["tokenizer.ggml.model"] == "llama"
    assert "<|im_start|>" in info.chat_template
    assert info.array_lengths["tokenizer.ggml.tokens"] == len(vocabulary()[0])
    assert path.stat().st_size < 1_000_000


def test_vocabulary_holds_every_prefix_of_every_word():
    tokens, scores, types = vocabulary()
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert tokens[3] == "<0x00>" and tokens[258] == "<0xFF>"
    assert types[3:259] == [int(gguf.TokenType.BYTE)] * 256
    assert len(tokens) == len(set(tokens)) == len(scores) == len(types)
    pieces = set(tokens)
    for word in WORDS:
        marked = "\u2581" + word
        assert all(marked[:end] in pieces for end in range(1, len(marked) + 1))


def test_options_shape_the_model(tmp_path):
    path = write_tiny_gguf(tmp_path / "t.gguf", embedding_length=32, blocks=1,
                           pooling_type=gguf.PoolingType.MEAN)
    info = gguf_meta.read(path)
    assert info.metadata["llama.embedding_length"] == 32
    assert info.metadata["llama.block_count"] == 1
    assert info.metadata["llama.pooling_type"] == int(gguf.PoolingType.MEAN)


def test_seeds_give_different_weights(tmp_path):
    def digest(seed: int) -> str:
        data = write_tiny_gguf(tmp_path / f"{seed}.gguf", seed=seed).read_bytes()
        return hashlib.sha256(data).hexdigest()

    assert digest(0) != digest(1)
    assert digest(0) == hashlib.sha256((tmp_path / "0.gguf").read_bytes()).hexdigest()
    assert write_tiny_gguf(tmp_path / "again.gguf", seed=0).read_bytes() == (
        tmp_path / "0.gguf").read_bytes()


def test_import_is_idempotent_and_leaves_no_temporary_file(tmp_path):
    models = tmp_path / "models"
    first = import_tiny_model(models, name="tiny:latest", seed=3)
    second = import_tiny_model(models, name="tiny:latest", seed=3)
    assert first.digest == second.digest
    assert first.manifest == second.manifest
    store = ModelStore(models)
    assert [m.name.short for m in store.list()] == ["tiny:latest"]
    assert gguf_meta.read(store.model_file(first)).architecture == "llama"
    assert not list(models.glob(".tiny-*"))


def test_different_seeds_import_as_different_models(tmp_path):
    a = import_tiny_model(tmp_path, name="a:latest", seed=0)
    b = import_tiny_model(tmp_path, name="b:latest", seed=1)
    assert a.digest != b.digest
    assert a.model_layer["digest"] != b.model_layer["digest"]
