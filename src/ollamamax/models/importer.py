"""Put a GGUF file into a model store as an Ollama-style model (``ollamamax models import``)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from ollamamax.errors import ModelNotFound
from ollamamax.models import gguf_meta, names
from ollamamax.models.store import (
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    MODEL_MEDIA_TYPE,
    LocalModel,
    ModelStore,
)


def import_gguf(store: ModelStore, source: str | Path, name: str) -> LocalModel:
    """Import `source` under `name`; re-importing the same file is a no-op that returns it."""
    source = Path(source)
    parsed = names.parse(name)
    info = gguf_meta.read(source)
    digest, size = store.link_blob(source)
    config = {
        "model_format": "gguf",
        "model_family": info.architecture,
        "model_families": [info.architecture] if info.architecture else None,
        "model_type": info.parameter_size,
        "file_type": info.file_type,
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest]},
    }
    config_digest, config_size = store.write_blob_bytes(msgspec.json.encode(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": MODEL_MEDIA_TYPE, "digest": digest, "size": size}],
    }
    try:
        existing = store.get(parsed.short)
    except ModelNotFound:
        existing = None
    if existing is not None and existing.manifest == manifest:
        return existing
    return store.write_manifest(parsed.short, manifest)
