"""A model store in Ollama's own layout, so a node can share a real Ollama's models folder.

    <root>/manifests/<host>/<namespace>/<model>/<tag>   JSON manifest (docker v2 schema)
    <root>/blobs/sha256-<hex>                           content-addressed blobs

A model's digest (what ``/api/tags`` shows) is the sha256 of its manifest file. Blobs become
visible only once complete and verified: they are written to a temporary name, fsynced and
renamed, so a crash never leaves a half blob that looks whole. Downloads in progress and their
bookkeeping live in ``<root>/.ollamamax/`` (``partial/``), a folder Ollama never reads, so the
store stays usable by a real Ollama. Removing a model deletes a blob only when no other
manifest refers to it.
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
    def blob_digests(self) -> list[str]:
        """Every blob the manifest refers to (config first), as ``sha256:<hex>``."""
        return _manifest_digests(self.manifest)

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


@dataclass(frozen=True, slots=True)
class BlobProblem:
    """A blob `verify` found wrong: ``missing`` (a manifest needs it) or ``corrupt``."""

    digest: str  # sha256:<hex>, what the blob should hash to
    problem: str  # "missing" | "corrupt"
    detail: str  # a sentence for people


class ModelStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        # ours, never read by Ollama: downloads in progress and their sidecar state
        self.partial = self.root / ".ollamamax" / "partial"

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

    def references(self) -> dict[str, set[str]]:
        """Every blob some manifest refers to -> the keys of the models that do."""
        refs: dict[str, set[str]] = {}
        for path in self._manifest_files():
            try:
                manifest = msgspec.json.decode(path.read_bytes())
                digests = _manifest_digests(manifest)
            except (OSError, msgspec.DecodeError, BadRequest, AttributeError, TypeError, KeyError):
                continue  # not a manifest: it protects nothing
            key = names.ModelName(*path.relative_to(self.manifests).parts).key
            for digest in digests:
                refs.setdefault(digest, set()).add(key)
        return refs

    def local_blobs(self) -> list[str]:
        """The digests of every complete blob in the store, sorted."""
        if not self.blobs.is_dir():
            return []
        found = []
        for path in self.blobs.iterdir():
            match = _DIGEST.match(path.name)
            if match is not None and path.is_file():
                found.append(f"sha256:{match.group(1)}")
        return sorted(found)

    # -- checking --------------------------------------------------------------------------

    def verify(self, name: str | None = None) -> list[BlobProblem]:
        """Re-hash the blobs of `name` (default: every blob, and every blob a manifest needs).

        Returns what is wrong, sorted by digest; an empty list means all is well."""
        if name is not None:
            wanted = self.get(name).blob_digests
        else:
            wanted = sorted(set(self.local_blobs()) | set(self.references()))
        problems = []
        for digest in dict.fromkeys(wanted):
            problem = self._check_blob(digest)
            if problem is not None:
                problems.append(problem)
        return sorted(problems, key=lambda p: p.digest)

    def _check_blob(self, digest: str) -> BlobProblem | None:
        path = self.blob_path(digest)
        try:
            actual = hash_file(path)
        except FileNotFoundError:
            return BlobProblem(digest, "missing", f"{digest} is missing")
        if actual != digest:
            return BlobProblem(digest, "corrupt", f"{digest} hashes to {actual}")
        return None

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
        return self.write_manifest_bytes(name, msgspec.json.encode(manifest))

    def write_manifest_bytes(self, name: str, raw: bytes) -> LocalModel:
        """Tag `raw` (a manifest, byte for byte: its sha256 is the model's digest) as `name`.

        Refused unless every blob it refers to is already in the store."""
        parsed = names.parse(name)
        try:
            digests = _manifest_digests(msgspec.json.decode(raw))
        except (msgspec.DecodeError, AttributeError, TypeError, KeyError):
            raise BadRequest(f"manifest of {parsed.short} is not a valid manifest") from None
        for digest in digests:
            if not self.has_blob(digest):
                raise BadRequest(f"manifest of {parsed.short} refers to missing blob {digest}")
        path = self.manifests.joinpath(*parsed.manifest_parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _atomic_file(path.parent) as (tmp, out):
            out.write(raw)
        os.replace(tmp, path)
        model = self._read(path)
        assert model is not None
        return model

    def adopt_blob(self, path: Path, expected: str) -> tuple[str, int]:
        """Move a finished download at `path` (on the store's filesystem) into the store.

        It is hashed first; on a mismatch it is deleted and `BadRequest` raised, so only a
        verified blob ever gets a name Ollama would read."""
        final = self.blob_path(expected)
        actual = hash_file(path)
        if actual != f"sha256:{check_digest(expected)}":
            path.unlink(missing_ok=True)
            raise BadRequest(f"digest mismatch: expected {expected}, got {actual}")
        with path.open("rb+") as f:
            os.fsync(f.fileno())
        self.blobs.mkdir(parents=True, exist_ok=True)
        size = path.stat().st_size
        os.replace(path, final)
        return expected, size

    def commit_verified_blob(self, path: Path, digest: str) -> int:
        """Move a file into the store that the caller already hashed to `digest` (a peer
        transfer hashes the blob as its chunks arrive, so `adopt_blob`'s second pass would be
        wasted): fsync, then rename on the store's filesystem. Returns its size."""
        final = self.blob_path(digest)
        with path.open("rb+") as f:
            os.fsync(f.fileno())
        self.blobs.mkdir(parents=True, exist_ok=True)
        size = path.stat().st_size
        os.replace(path, final)
        return size

    def remove(self, name: str) -> list[str]:
        """Delete the model `name`, then each of its blobs that no other manifest refers to.

        Returns the digests deleted. The manifest goes first: a crash in between leaves a blob
        nobody refers to, never a manifest without its blobs."""
        model = self.get(name)
        path = self.manifests.joinpath(*model.name.manifest_parts)
        path.unlink()
        for parent in path.parents:  # tidy empty <host>/<namespace>/<model> folders
            if parent == self.manifests:
                break
            with contextlib.suppress(OSError):
                parent.rmdir()
        still_used = self.references()
        deleted = []
        for digest in dict.fromkeys(model.blob_digests):
            if digest not in still_used:
                with contextlib.suppress(FileNotFoundError):
                    self.blob_path(digest).unlink()
                    deleted.append(digest)
        return deleted

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


def hash_file(path: Path) -> str:
    """``sha256:<hex>`` of a file (hashlib releases the GIL: fine in a worker thread)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _manifest_digests(manifest: dict[str, Any]) -> list[str]:
    """The blobs a manifest refers to, config first, each checked and as ``sha256:<hex>``."""
    refs = [manifest["config"], *manifest.get("layers", [])]
    return [f"sha256:{check_digest(ref['digest'])}" for ref in refs]


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
