"""``models status`` rows, desired records merging on the store, and the CLI's refusals."""

from __future__ import annotations

import msgspec
import pytest
from typer.testing import CliRunner

from ollamamax.cli import _register, app
from ollamamax.cluster.embedded import EmbeddedStore
from ollamamax.errors import BadRequest
from ollamamax.sync.desired import Desired, SyncKeys, read_all, update
from ollamamax.sync.resolve import VersionRecord, manifest_digest
from ollamamax.sync.status import rows


def record(seed: int, wall: int, node: str) -> VersionRecord:
    text = msgspec.json.encode({"config": {"digest": f"sha256:{seed + 50:064x}", "size": 1},
                                "layers": [{"digest": f"sha256:{seed:064x}", "size": 9}]}).decode()
    return VersionRecord(digest=manifest_digest(text), manifest=text, origin=node,
                         hlc=(wall, 0, node))


def test_a_row_shows_holders_conflicts_and_progress() -> None:
    old, new = record(1, 1000, "a"), record(2, 2000, "b")
    progress = {("c", f"sha256:{2:064x}"): {"done": 3, "total": 9},
                ("c", f"sha256:{52:064x}"): {"done": 1, "total": 1}}
    out = rows({"m:1": {"a": old, "b": new}}, {"m:1": Desired(replicas=3, labels=("gpu=x",))},
               {("c", "m:1"): new.digest, ("d", "m:1"): new.digest}, progress)
    (row,) = out
    assert row.digest == new.digest and row.holders == ("b",)
    assert row.conflicts == (f"a: {old.digest[7:19]}",)
    assert row.moving == ("c 40%", "d queued") and row.wanted == "3 labels gpu=x"
    assert rows({}, {"n:1": Desired()}, {}, {})[0].digest == ""  # desired, held nowhere


async def test_replicate_and_pin_merge_into_one_record() -> None:
    kv, keys = EmbeddedStore(), SyncKeys("t/")
    await update(kv, keys, "Llama3:8B", replicas=3)
    model, desired = await update(kv, keys, "llama3:8b", nodes=("a", "b"))
    assert model == "llama3:8b" and desired == Desired(replicas=3, nodes=("a", "b"))
    assert await read_all(kv, keys) == {"llama3:8b": desired}
    with pytest.raises(BadRequest, match="unknown policy"):
        await update(kv, keys, "llama3:8b", policy="oldest")
    with pytest.raises(BadRequest, match="needs a digest"):
        await update(kv, keys, "llama3:8b", policy="pinned")
    with pytest.raises(BadRequest, match="invalid digest"):
        await update(kv, keys, "llama3:8b", digest="sha256:../../etc/passwd", policy="pinned")
    await kv.close()


def test_the_placement_commands_need_the_cluster_store() -> None:
    if not app.registered_groups:
        _register()
    runner = CliRunner()
    for args in (["models", "replicate", "m:1", "--replicas", "2"], ["models", "status"],
                 ["models", "pin", "m:1", "--nodes", "a"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "--etcd" in result.output, result.output
    result = runner.invoke(app, ["models", "pin", "m:1"])
    assert result.exit_code == 2 and "--nodes, --labels" in result.output
