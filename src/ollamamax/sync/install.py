"""Installing a synced model into a stock Ollama through its own API, and the receiving side.

A node with the ``ollama`` engine keeps synced models in its own store (that is where peers
fetch blobs from), and then hands them to the Ollama behind it the way Ollama documents:

    HEAD /api/blobs/sha256:<hex>     200 if Ollama has the blob, 404 if not
    POST /api/blobs/sha256:<hex>     the bytes; 201 Created, 400 if they do not hash to it
    POST /api/create                 {"model": name, "files": {"model.gguf": "sha256:<hex>"}}
                                     streams {"status": ...} lines, the last "success"

`OllamaInstaller` is that client. `receive_blob` and `create_from_files` are the server side
the ``sim`` engine answers with (so tests need no Ollama binary): a received blob is kept only
once its digest is checked, and ``create`` makes a model from a stored GGUF blob exactly as
``ollamamax models import`` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp
import msgspec

from ollamamax.api.ollama_types import _ModelRequest
from ollamamax.errors import BadRequest, EngineError
from ollamamax.models import names
from ollamamax.models.importer import import_gguf
from ollamamax.models.store import MODEL_MEDIA_TYPE, LocalModel, ModelStore, check_digest

log = logging.getLogger(__name__)


class CreateRequest(_ModelRequest):
    """The ``/api/create`` body this side understands: a model from uploaded files."""

    files: dict[str, str] | None = None
    stream: bool | None = None

CHUNK = 1 << 20


class OllamaInstaller:
    """Puts models from a `ModelStore` into the Ollama at `base_url`."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession | None = None) -> None:
        self.base = base_url.rstrip("/")
        self._session = session
        self._own = session is None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=5, sock_read=300))
        return self._session

    async def close(self) -> None:
        if self._own and self._session is not None:
            await self._session.close()
            self._session = None

    async def install(self, store: ModelStore, name: str) -> str:
        """Upload `name`'s GGUF blob unless Ollama has it, then create the model; returns
        the sentence of what was done. `EngineError` if Ollama refuses."""
        model = store.get(name)
        digest = model.model_layer["digest"]
        uploaded = await self.ensure_blob(digest, store.blob_path(digest))
        await self.create(model.name.short, {"model.gguf": digest})
        return (f"installed {model.name.short} into {self.base}"
                f"{' (blob uploaded)' if uploaded else ''}")

    async def reconcile(self, store: ModelStore) -> list[str]:
        """Install every model of `store` whose name Ollama does not list (after a restart,
        or an Ollama whose models were wiped); the sentences of what was done."""
        try:
            async with self.session.get(f"{self.base}/api/tags") as r:
                if r.status != 200:
                    raise EngineError(f"ollama at {self.base}: /api/tags answered {r.status}")
                listed = (await r.json()).get("models") or []
        except (aiohttp.ClientError, ValueError) as exc:
            raise EngineError(f"ollama at {self.base}: {exc}") from None
        present = {names.try_key(str(m.get("name") or m.get("model") or "")) for m in listed}
        done = []
        for model in store.list():
            if model.name.key not in present:
                done.append(await self.install(store, model.name.short))
        return done

    async def ensure_blob(self, digest: str, path: Path) -> bool:
        """True if the blob had to be uploaded."""
        url = f"{self.base}/api/blobs/{digest}"
        try:
            async with self.session.head(url) as r:
                if r.status == 200:
                    return False
                if r.status != 404:
                    raise EngineError(f"ollama at {self.base}: HEAD {digest[:19]} -> {r.status}")
            with path.open("rb") as f:
                async with self.session.post(url, data=_file_chunks(f)) as r:
                    if r.status not in (200, 201):
                        raise EngineError(f"ollama at {self.base} refused blob {digest[:19]}: "
                                          f"HTTP {r.status} {(await r.text())[:200]}")
        except aiohttp.ClientError as exc:
            raise EngineError(f"ollama at {self.base}: {exc}") from None
        return True

    async def create(self, name: str, files: Mapping[str, str]) -> None:
        body = {"model": name, "files": dict(files), "stream": True}
        try:
            async with self.session.post(f"{self.base}/api/create", json=body) as r:
                if r.status != 200:
                    raise EngineError(f"ollama at {self.base} could not create {name}: "
                                      f"HTTP {r.status} {(await r.text())[:200]}")
                status = ""
                async for line in r.content:
                    if not line.strip():
                        continue
                    doc = msgspec.json.decode(line)
                    if "error" in doc:
                        raise EngineError(f"ollama could not create {name}: {doc['error']}")
                    status = str(doc.get("status", status))
        except aiohttp.ClientError as exc:
            raise EngineError(f"ollama at {self.base}: {exc}") from None
        if status != "success":
            raise EngineError(f"ollama's create of {name} ended with {status!r}, not 'success'")


async def _file_chunks(f: object) -> AsyncIterator[bytes]:
    while chunk := f.read(CHUNK):  # type: ignore[attr-defined]
        yield chunk


# -- the receiving side (the sim engine's /api/blobs and /api/create) ------------------------


async def receive_blob(store: ModelStore, digest: str, chunks: AsyncIterator[bytes]) -> int:
    """Keep the bytes of `chunks` as blob `digest`; `BadRequest` if they hash to another
    digest (nothing is kept). Returns the size."""
    expected = check_digest(digest)
    store.blobs.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=store.blobs, prefix=".tmp-")
    sha, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in chunks:
                sha.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if sha.hexdigest() != expected:
            raise BadRequest(f"digest mismatch, expected {digest}, got sha256:{sha.hexdigest()}")
        os.replace(tmp, store.blobs / f"sha256-{expected}")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return size


def create_from_files(store: ModelStore, name: str, files: Mapping[str, str]) -> LocalModel:
    """Ollama's ``/api/create`` with ``files``: a model from one stored GGUF blob.
    `BadRequest` (Ollama answers 400) for anything else."""
    if not isinstance(files, Mapping) or len(files) != 1:
        raise BadRequest("files must name exactly one GGUF blob, as {\"model.gguf\": digest}")
    (filename, digest), = files.items()
    if not isinstance(filename, str) or not filename.endswith(".gguf"):
        raise BadRequest(f"unsupported file {filename!r}: only GGUF files")
    if not isinstance(digest, str) or not store.has_blob(digest):
        raise BadRequest(f"blob {digest!r} not found: upload it with POST /api/blobs/:digest")
    try:
        return import_gguf(store, store.blob_path(digest), name)
    except (ValueError, OSError) as exc:
        raise BadRequest(f"{filename} is not a GGUF file: {exc}") from None


def create_statuses(model: LocalModel) -> list[dict[str, str]]:
    """The status lines Ollama streams for a create from files."""
    layer = next(layer for layer in model.manifest["layers"]
                 if layer["mediaType"] == MODEL_MEDIA_TYPE)
    return [{"status": "parsing GGUF"}, {"status": f"using existing layer {layer['digest']}"},
            {"status": "writing manifest"}, {"status": "success"}]
