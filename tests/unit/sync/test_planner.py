"""The pure planner: replicas go to nodes with room, pins and labels are respected, conflicts
are resolved everywhere, and every planner writes the same assignments; then the leader loop
on the embedded store."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from ollamamax.cluster.embedded import EmbeddedStore
from ollamamax.cluster.records import Layout, NodeRecord
from ollamamax.sync.desired import Desired, SyncKeys, update
from ollamamax.sync.planner import NodeInfo, PlannerLoop, decode_assignment, plan
from ollamamax.sync.resolve import VersionRecord, manifest_digest

GB = 1 << 30


def record(seed: int, wall: int = 1000, node: str = "a", size: int = GB) -> VersionRecord:
    text = msgspec.json.encode({
        "config": {"digest": f"sha256:{seed + 100:064x}", "size": 100},
        "layers": [{"digest": f"sha256:{seed:064x}", "size": size}]}).decode()
    return VersionRecord(digest=manifest_digest(text), manifest=text, origin=node,
                         hlc=(wall, 0, node))


def nodes(*specs: tuple[str, int | None, tuple[str, ...]]) -> dict[str, NodeInfo]:
    return {n: NodeInfo(n, labels, free, 64 * GB, 32 * GB) for n, free, labels in specs}


def test_replicas_go_to_the_nodes_with_the_most_free_disk() -> None:
    fleet = nodes(("a", 10 * GB, ()), ("b", 2 * GB, ()), ("c", 50 * GB, ()), ("d", 20 * GB, ()))
    r = record(1)
    out = plan(fleet, {"m:1": {"a": r}}, {"m:1": Desired(replicas=3)}, {})
    assert sorted(out.put) == [("c", "m:1"), ("d", "m:1")]
    assert out.put[("c", "m:1")].digest == r.digest
    assert out.put[("c", "m:1")].record() == r  # the copy keeps the version's time and origin


def test_a_node_without_room_is_skipped_and_the_shortfall_said() -> None:
    fleet = nodes(("a", 10 * GB, ()), ("b", GB // 2, ()), ("c", None, ()))
    out = plan(fleet, {"m:1": {"a": record(1)}}, {"m:1": Desired(replicas=3)}, {})
    assert sorted(out.put) == [("c", "m:1")]
    assert any("no room on b" in n for n in out.notes)
    assert any("wants 3 replicas" in n for n in out.notes)


def test_a_node_holding_the_blobs_already_is_preferred() -> None:
    """The Bloom filter of a node's blobs: it lacks fewer bytes, so it is chosen first."""
    shared = record(1, size=4 * GB)
    other = VersionRecord(**{**msgspec.structs.asdict(record(7)), "manifest": shared.manifest,
                             "digest": shared.digest})
    fleet = nodes(("a", 100 * GB, ()), ("b", 100 * GB, ()), ("c", 5 * GB, ()))
    out = plan(fleet, {"m:1": {"a": shared}, "n:1": {"c": other}},
               {"m:1": Desired(replicas=2)}, {})
    assert list(out.put) == [("c", "m:1")]


def test_pins_and_labels_are_respected() -> None:
    fleet = nodes(("a", 10 * GB, ()), ("b", 99 * GB, ()), ("c", 5 * GB, ("gpu=a100",)),
                  ("d", 6 * GB, ("gpu=a100",)))
    held = {"m:1": {"a": record(1)}}
    pinned = plan(fleet, held, {"m:1": Desired(nodes=("a", "c"))}, {})
    assert list(pinned.put) == [("c", "m:1")]
    labelled = plan(fleet, held, {"m:1": Desired(replicas=1, labels=("gpu=a100",))}, {})
    assert list(labelled.put) == [("d", "m:1")]  # b has more room but not the label
    dead_pin = plan(fleet, held, {"m:1": Desired(nodes=("a", "zz"))}, {})
    assert not dead_pin.put


def test_models_without_a_desired_record_stay_put_unless_they_conflict() -> None:
    fleet = nodes(("a", 10 * GB, ()), ("b", 10 * GB, ()), ("c", 10 * GB, ()))
    old, new = record(1, wall=1000, node="a"), record(2, wall=2000, node="b")
    out = plan(fleet, {"lonely:1": {"a": old}, "m:1": {"a": old, "b": new}}, {}, {})
    assert list(out.put) == [("a", "m:1")]  # the conflict resolved on a; c gets nothing
    assert out.put[("a", "m:1")].digest == new.digest
    assert out.resolutions["m:1"].conflict


def test_pinned_policy_sends_the_pinned_digest_to_the_nodes_holding_another() -> None:
    fleet = nodes(("a", 10 * GB, ()), ("b", 10 * GB, ()))
    old, new = record(1, wall=1000, node="a"), record(2, wall=2000, node="b")
    out = plan(fleet, {"m:1": {"a": old, "b": new}},
               {"m:1": Desired(policy="pinned", digest=old.digest)}, {})
    assert list(out.put) == [("b", "m:1")] and out.put[("b", "m:1")].digest == old.digest


def test_existing_assignments_are_kept_and_stale_ones_withdrawn() -> None:
    fleet = nodes(("a", 10 * GB, ()), ("b", 10 * GB, ()), ("c", 90 * GB, ()))
    r = record(1)
    assigned = {("b", "m:1"): r.digest, ("c", "gone:1"): "sha256:" + "0" * 64,
                ("dead", "m:1"): r.digest}
    out = plan(fleet, {"m:1": {"a": r}}, {"m:1": Desired(replicas=2)}, assigned)
    assert not out.put  # b is fetching already: c (more room) is not chosen on top
    assert out.delete == [("c", "gone:1"), ("dead", "m:1")]
    done = plan(fleet, {"m:1": {"a": r, "b": r}}, {"m:1": Desired(replicas=2)},
                {("b", "m:1"): r.digest})
    assert done.delete == [("b", "m:1")] and not done.put
    assert done.sentence() == "0 assigned, 1 withdrawn"


def test_several_models_are_planned_in_one_pass() -> None:
    fleet = nodes(("a", 10 * GB, ()), ("b", 10 * GB, ()), ("c", 10 * GB, ()))
    held = {f"m{i}:1": {"a": record(i)} for i in range(5)}
    out = plan(fleet, held, {m: Desired(replicas=3) for m in held}, {})
    assert len(out.put) == 10 and {n for n, _ in out.put} == {"b", "c"}


@settings(max_examples=30)
@given(st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from([1, 2, 3]),
                       min_size=1),
       st.integers(1, 4), st.randoms())
def test_every_planner_writes_the_same_assignments(holders, replicas, rnd) -> None:
    fleet = nodes(*[(n, (i + 1) * GB * 3, ()) for i, n in enumerate("abcd")])
    records = {"m:1": {n: record(seed, wall=seed * 100, node=n) for n, seed in holders.items()}}
    outs = []
    for _ in range(3):
        shuffled = dict(rnd.sample(list(fleet.items()), len(fleet)))
        recs = {"m:1": dict(rnd.sample(list(records["m:1"].items()), len(records["m:1"])))}
        outs.append(plan(shuffled, recs, {"m:1": Desired(replicas=replicas)}, {}).put)
    assert outs[0] == outs[1] == outs[2]
    winners = {a.digest for a in outs[0].values()}
    assert len(winners) <= 1  # one resolution everywhere


async def test_the_leader_loop_writes_assignments_the_nodes_can_read() -> None:
    kv = EmbeddedStore()
    layout, keys = Layout("t/"), SyncKeys("t/")
    for n in ("a", "b"):
        await kv.put(layout.node(n), msgspec.json.encode(NodeRecord(id=n, url=f"http://{n}")))
        await kv.put(layout.telemetry(n), msgspec.json.encode(
            {"disk": {"free_bytes": 10 * GB}, "memory": {"total_bytes": GB}}))
    r = record(1, size=1000)
    await kv.put(keys.version("m:1", "a"), msgspec.json.encode(r))
    await update(kv, keys, "M:1", replicas=2)
    loop = PlannerLoop(kv, "a", prefix="t/")
    await loop.election.campaign()
    assert (await loop.tick()).startswith("assigned m:1")
    item = await kv.get(keys.assign("b", "m:1"))
    assert item is not None and decode_assignment(item.value).record() == r
    assert await loop.tick() == "placement as desired"
    await loop.stop()
    await kv.close()


def test_free_disk_comes_from_the_node_telemetry(tmp_path) -> None:
    from ollamamax.node.telemetry import DISK_QUANTUM, disk
    from ollamamax.sync.planner import node_info

    doc = disk(str(tmp_path / "not" / "made" / "yet"))  # the nearest existing parent
    assert doc["free_bytes"] > 0 and doc["free_bytes"] % DISK_QUANTUM == 0
    rec = msgspec.json.encode(NodeRecord(id="a", url="http://a", labels=("gpu=x",)))
    info = node_info(rec, msgspec.json.encode({"disk": doc, "memory": {"total_bytes": 5}}))
    assert info == NodeInfo("a", ("gpu=x",), doc["free_bytes"], 5, None)
    assert node_info(rec, None).free_disk is None  # unknown: assumed to have room
