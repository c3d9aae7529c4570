"""Removing models frees a blob only when no manifest refers to it; verify re-hashes blobs."""

import hashlib

import pytest

from ollamamax.errors import BadRequest, ModelNotFound
from ollamamax.models.importer import import_gguf
from ollamamax.models.store import hash_file
from ollamamax.testing.tiny_gguf import write_tiny_gguf


def _blob_names(store):
    return sorted(p.name for p in store.blobs.iterdir())


def test_a_shared_blob_survives_until_its_last_model_goes(store, tmp_path):
    gguf = write_tiny_gguf(tmp_path / "a.gguf")
    a = import_gguf(store, gguf, "a:1")
    import_gguf(store, gguf, "b:1")  # the same weights and config: every blob shared
    other = import_gguf(store, write_tiny_gguf(tmp_path / "c.gguf", seed=7), "c:1")
    shared = set(a.blob_digests)
    assert store.references()[a.model_layer["digest"]] == {"a:1", "b:1"}

    assert store.remove("A:1") == []  # names compare case-insensitively, as in Ollama
    assert [m.name.short for m in store.list()] == ["b:1", "c:1"]
    assert all(store.has_blob(d) for d in shared)
    assert store.verify("b:1") == []

    freed = store.remove("b:1")
    assert set(freed) == shared - set(other.blob_digests)
    assert not any(store.has_blob(d) for d in freed)
    assert all(store.has_blob(d) for d in other.blob_digests)
    assert _blob_names(store) == sorted(f"sha256-{d[7:]}" for d in set(other.blob_digests))
    assert not (store.manifests / "registry.ollama.ai" / "library" / "a").exists()


def test_removing_an_unknown_model_is_not_found(store):
    with pytest.raises(ModelNotFound):
        store.remove("ghost:1")


def test_a_blob_only_partly_downloaded_elsewhere_is_untouched_by_remove(store, tmp_path):
    model = import_gguf(store, write_tiny_gguf(tmp_path / "a.gguf"), "a:1")
    stray, _ = store.write_blob_bytes(b"a blob some pull wrote before its manifest")
    store.remove("a:1")
    assert store.has_blob(stray)  # not this model's: remove never sweeps unrelated blobs
    assert not any(store.has_blob(d) for d in model.blob_digests)


def test_verify_finds_corrupt_and_missing_blobs(store, tmp_path):
    model = import_gguf(store, write_tiny_gguf(tmp_path / "a.gguf"), "a:1")
    assert store.verify() == [] and store.verify("a:1") == []
    weights = store.model_file(model)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    config_digest = model.manifest["config"]["digest"]
    store.blob_path(config_digest).unlink()

    problems = {p.digest: p for p in store.verify()}
    layer = model.model_layer["digest"]
    assert problems[layer].problem == "corrupt"
    assert hashlib.sha256(data).hexdigest() in problems[layer].detail
    assert problems[config_digest].problem == "missing"
    assert len(problems) == 2
    assert {p.digest for p in store.verify("a:1")} == {layer, config_digest}


def test_adopt_blob_refuses_a_file_that_is_not_what_it_claims(store, tmp_path):
    part = tmp_path / "x.part"
    part.write_bytes(b"the bytes")
    good = hash_file(part)
    with pytest.raises(BadRequest, match="digest mismatch"):
        store.adopt_blob(part, "sha256:" + "0" * 64)
    assert not part.exists() and not store.blob_path("sha256:" + "0" * 64).exists()
    part.write_bytes(b"the bytes")
    assert store.adopt_blob(part, good) == (good, 9)
    assert store.blob_path(good).read_bytes() == b"the bytes"


def test_a_manifest_with_a_path_for_a_digest_is_refused(store):
    with pytest.raises(BadRequest):
        store.write_manifest_bytes("x:1", b'{"config": {"digest": "sha256:../../etc/passwd"},'
                                          b' "layers": []}')
    assert not store.manifests.exists() or not any(store.manifests.rglob("*"))
