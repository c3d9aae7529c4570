import hashlib
import io
import os

import pytest

from ollamamax.errors import BadRequest, ModelNotFound
from ollamamax.models import gguf_meta
from ollamamax.models.importer import import_gguf
from ollamamax.testing.tiny_gguf import write_tiny_gguf


def test_import_writes_ollama_layout(store, tmp_path):
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    model = import_gguf(store, gguf, "tiny:v1")
    manifest = store.root / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "v1"
    assert manifest.is_file()
    assert model.digest == hashlib.sha256(manifest.read_bytes()).hexdigest()
    blob = store.model_file(model)
    assert blob.name == "sha256-" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    entry = model.tag_entry()
    assert entry["name"] == "tiny:v1"
    assert entry["details"]["family"] == "llama"
    assert entry["size"] == model.size > gguf.stat().st_size


def test_get_is_case_insensitive_and_missing_is_not_found(store, tmp_path):
    import_gguf(store, write_tiny_gguf(tmp_path / "t.gguf"), "Tiny:V1")
    assert store.get("tiny:v1").name.short == "Tiny:V1"
    with pytest.raises(ModelNotFound):
        store.get("other")


def test_reimport_is_idempotent(store, tmp_path):
    gguf = write_tiny_gguf(tmp_path / "t.gguf")
    a = import_gguf(store, gguf, "tiny")
    b = import_gguf(store, gguf, "tiny")
    assert a.digest == b.digest
    assert [m.name.short for m in store.list()] == ["tiny:latest"]


def test_write_blob_verifies_digest_and_leaves_nothing_on_mismatch(store):
    data = b"hello blob"
    good = "sha256:" + hashlib.sha256(data).hexdigest()
    assert store.write_blob(io.BytesIO(data), expected=good) == (good, len(data))
    with pytest.raises(BadRequest):
        store.write_blob(io.BytesIO(b"tampered"), expected=good.replace("a", "b", 1)
                         if "a" in good else "sha256:" + "0" * 64)
    leftovers = [p for p in os.listdir(store.blobs) if p.startswith(".tmp")]
    assert leftovers == []


@pytest.mark.parametrize("digest", ["sha256:../../etc/passwd", "sha256:abc", "md5:" + "0" * 32,
                                    "sha256:" + "G" * 64])
def test_digests_are_checked_before_touching_the_filesystem(store, digest):
    with pytest.raises(BadRequest):
        store.blob_path(digest)


def test_gguf_meta_rejects_non_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(BadRequest):
        gguf_meta.read(bad)


def test_gguf_meta_reads_tiny_model(tmp_path):
    info = gguf_meta.read(write_tiny_gguf(tmp_path / "t.gguf"))
    assert info.architecture == "llama"
    assert info.parameter_count > 0
    assert info.chat_template
