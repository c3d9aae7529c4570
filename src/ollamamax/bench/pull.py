"""``ollamamax bench pull``: a registry pull on loopback, verified, by number of parts.

An origin store gets one random blob of `size_mb` MB as the model layer of ``bench:latest``;
``ollamamax testing registry`` serves it from its own process (so the server does not share
the puller's event loop); then the model is pulled `repeat` times into an empty store for
every part count, each pull timed from the first request to the manifest written (sha256
verification included). ``hash_MBps`` is sha256 over the blob alone: the verification step's
share of the time.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ollamamax.config import SyncConfig
from ollamamax.models.registry import Puller
from ollamamax.models.store import (
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    MODEL_MEDIA_TYPE,
    ModelStore,
    hash_file,
)
from ollamamax.supervisor import Supervisor

Progress = Callable[[str], object]
NAME = "bench:latest"


@dataclass(frozen=True)
class Options:
    size_mb: float = 512.0
    parts: Sequence[int] = (1, 4, 16)
    repeat: int = 3
    work_dir: str | None = None


def run(options: Options, progress: Progress = print) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="bench-pull-", dir=options.work_dir))
    try:
        size = int(options.size_mb * 1e6)
        origin = _origin(base / "origin", size)
        started = time.perf_counter()
        hash_file(origin.model_file(origin.get(NAME)))
        hash_s = time.perf_counter() - started
        runs = []
        with Supervisor(base / "logs") as supervisor:
            child = supervisor.start("registry", ["testing", "registry", "--dir", str(origin.root)])
            url = supervisor.wait_ready(child)
            for parts in options.parts:
                seconds = [_pull_once(url, base / f"pull-{parts}", size, parts)
                           for _ in range(options.repeat)]
                best = min(seconds)
                runs.append({"parts": parts, "seconds": [round(s, 3) for s in seconds],
                             "best_MBps": round(size / best / 1e6, 1)})
                progress(f"{parts} part(s): best {runs[-1]['best_MBps']} MB/s of {options.repeat}")
        return {"size_bytes": size, "hash_MBps": round(size / hash_s / 1e6, 1), "runs": runs,
                "cpus": os.cpu_count(), "load_1m": round(os.getloadavg()[0], 2)}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _origin(root: Path, size: int) -> ModelStore:
    """A store holding `NAME`: `size` random bytes as its model layer."""
    store = ModelStore(root)
    store.blobs.mkdir(parents=True)
    tmp = root / "blob.tmp"
    with tmp.open("wb") as out:
        left = size
        while left:
            out.write(os.urandom(min(left, 8 << 20)))
            left -= min(left, 8 << 20)
    digest, size = store.link_blob(tmp)
    tmp.unlink()
    config, config_size = store.write_blob_bytes(b'{"model_format":"gguf"}')
    store.write_manifest(NAME, {
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config, "size": config_size},
        "layers": [{"mediaType": MODEL_MEDIA_TYPE, "digest": digest, "size": size}]})
    return store


def _pull_once(url: str, root: Path, size: int, parts: int) -> float:
    shutil.rmtree(root, ignore_errors=True)
    # parts of equal size: the blob cut `parts` ways, whatever its size
    puller = Puller(ModelStore(root), SyncConfig(pull_parts=parts), registry=url,
                    min_part=1, max_part=max(1, -(-size // parts)))
    started = time.perf_counter()
    asyncio.run(puller.pull(NAME))
    elapsed = time.perf_counter() - started
    shutil.rmtree(root, ignore_errors=True)
    return elapsed


def write_json(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
