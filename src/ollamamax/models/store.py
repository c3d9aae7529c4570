"""A model store in Ollama's own layout, so a node can share a real Ollama's models folder.

    <root>/manifests/<host>/<namespace>/<model>/<tag>   JSON manifest (docker v2 schema)
    <root>/blobs/sha256-<hex>                           content-addressed blobs

A model's digest (what ``/api/tags`` shows) is the sha256 of its manifest file. Blobs become
visible only once complete and verified: they are written to a temporary name, fsynced and
renamed, so a crash never leaves a half blob that looks whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from ollamamax.errors import BadRequest, ModelNotFound
from ollamamax.models import names

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"

_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
_CHUNK = 1 << 20


def check_digest(digest: str) -> str:
    """Return the hex of a ``sha256:<hex>`` digest, refusing anything else (paths included)."""
    match = _DIGEST.match(digest) if isinstance(digest, str) else None
    if match is None:
        raise BadRequest(f"invalid digest {digest!r}")
    return match.group(1)


@dataclass(frozen=True, slots=True)
class LocalModel:
    """One tagged model in a store."""

    name: names.ModelName
    manifest: dict[str, Any]
    digest: str  # hex sha256 of the manifest file
    modified_at: datetime
    config: dict[str, Any]

    @property
    def size(self) -> int:
        layers = self.manifest.get("layers", [])
        return sum(int(layer.get("size", 0)) for layer in layers) + int(
            self.manifest.get("config", {}).get("size", 0)
        )

    @property
    def model_layer(self) -> dict[str, Any]:
        for layer in self.manifest.get("layers", []):
            if layer.get("mediaType") == MODEL_MEDIA_TYPE:
                return layer
        raise ModelNotFound(self.name.short)

    def details(self) -> dict[str, Any]:
        """Ollama's ``details`` object for ``/api/tags``, ``/api/ps`` and ``/api/show``."""
        cfg = self.config
        family = cfg.get("model_family", "")
        return {
            "parent_model": "",
            "format": cfg.get("model_format", "gguf"),
            "family": family,
            "families": cfg.get("model_families") or ([family] if family else None),
            "parameter_size": cfg.get("model_type", ""),
            "quantization_level": cfg.get("file_type", ""),
        }

    def tag_entry(self) -> dict[str, Any]:
        """This model as an entry of Ollama's ``/api/tags``."""
        return {
            "name": self.name.short,
            "model": self.name.short,
            "modified_at": self.modified_at.isoformat(),
            "size": self.size,
            "digest": self.digest,
            "details": self.details(),
        }


class ModelStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"

    # -- reading ---------------------------------------------------------------------------

    def list(self) -> list[LocalModel]:
        models = []
        for path in self._manifest_files():
            model = self._read(path)
            if model is not None:
                models.append(model)
        return sorted(models, key=lambda m: m.name.key)

    def get(self, name: str) -> LocalModel:
        """The model called `name`; `ModelNotFound` when the store has none."""
        parsed = names.parse(name)
        path = self.manifests.joinpath(*parsed.manifest_parts)
        model = self._read(path) if path.is_file() else None
        if model is None:
            # Names compare case-insensitively, as in Ollama.
            model = next((m for m in self.list() if m.name.key == parsed.key), None)
        if model is None:
            raise ModelNotFound(parsed.short)
        return model

    def blob_path(self, digest: str) -> Path:
        return self.blobs / f"sha256-{check_digest(digest)}"

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def model_file(self, model: LocalModel) -> Path:
        """The GGUF file of `model`."""
        return self.blob_path(model.model_layer["digest"])

    # -- writing ---------------------------------------------------------------------------

    def write_blob(self, src: BinaryIO, expected: str | None = None) -> tuple[str, int]:
        """Copy a stream into a blob; verify it against `expected` when given.

        Returns ``("sha256:<hex>", size)``. The blob appears only when complete and correct.
        """
        self.blobs.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        with _atomic_file(self.blobs) as (tmp, out):
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            name = f"sha256:{digest.hexdigest()}"
            if expected is not None and check_digest(expected) != digest.hexdigest():
                raise BadRequest(f"digest mismatch: expected {expected}, got {name}")
            final = self.blob_path(name)
        os.replace(tmp, final)
        return name, size

    def write_blob_bytes(self, data: bytes) -> tuple[str, int]:
        name = f"sha256:{hashlib.sha256(data).hexdigest()}"
        path = self.blob_path(name)
        if not path.exists():
            self.blobs.mkdir(parents=True, exist_ok=True)
            with _atomic_file(self.blobs) as (tmp, out):
                out.write(data)
            os.replace(tmp, path)
        return name, len(data)

    def link_blob(self, source: Path) -> tuple[str, int]:
        """Add a file as a blob, hard-linking it when on the same filesystem, else copying."""
        digest = hashlib.sha256()
        with source.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        name = f"sha256:{digest.hexdigest()}"
        final = self.blob_path(name)
        if final.exists():
            return name, final.stat().st_size
        self.blobs.mkdir(parents=True, exist_ok=True)
        tmp = self.blobs / f".link-{os.getpid()}-{final.name}"
        try:
            os.link(source, tmp)
        except OSError:
            with source.open("rb") as f:
                return self.write_blob(f, expected=name)
        os.replace(tmp, final)
        return name, final.stat().st_size

    def write_manifest(self, name: str, manifest: dict[str, Any]) -> LocalModel:
        parsed = names.parse(name)
        for ref in [manifest["config"], *manifest["layers"]]:
            if not self.has_blob(ref["digest"]):
                raise BadRequest(f"manifest of {parsed.short} refers to missing blob {ref['digest']}")
        path = self.manifests.joinpath(*parsed.manifest_parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _atomic_file(path.parent) as (tmp, out):
            out.write(msgspec.json.encode(manifest))
        os.replace(tmp, path)
        model = self._read(path)
        assert model is not None
        return model

    # -- internals -------------------------------------------------------------------------

    def _manifest_files(self) -> Iterator[Path]:
        if not self.manifests.is_dir():
            return
        for path in self.manifests.glob("*/*/*/*"):
            if path.is_file() and not path.name.startswith("."):
                yield path

    def _read(self, path: Path) -> LocalModel | None:
        try:
            raw = path.read_bytes()
            manifest = msgspec.json.decode(raw)
            host, namespace, model, tag = path.relative_to(self.manifests).parts
            name = names.ModelName(host, namespace, model, tag)
            config_path = self.blob_path(manifest["config"]["digest"])
            config = msgspec.json.decode(config_path.read_bytes()) if config_path.exists() else {}
            mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        except (OSError, ValueError, KeyError, TypeError, msgspec.DecodeError, BadRequest):
            return None
        return LocalModel(name, manifest, hashlib.sha256(raw).hexdigest(), mtime, config)


@contextlib.contextmanager
def _atomic_file(directory: Path) -> Iterator[tuple[str, BinaryIO]]:
    """A temporary file in `directory`, fsynced on success and removed on failure."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            yield tmp, out
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
