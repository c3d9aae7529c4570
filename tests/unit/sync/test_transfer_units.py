"""The pure and on-disk parts of peer transfers: chunk lists, the partial file's resume,
range parsing, the upload/download pacer on a fake clock, and the chunk picker."""

from __future__ import annotations

import hashlib
import math
import os
import random

import pytest

from ollamamax.models.store import ModelStore
from ollamamax.sync import chunks
from ollamamax.sync.blobs import Pacer, RangeNotSatisfiable, parse_range
from ollamamax.sync.transfer import MAX_FAULTS, Source, pick

CHUNK = 1000


def blob(store: ModelStore, size: int = 4500) -> tuple[str, bytes]:
    data = os.urandom(size)
    digest, _ = store.write_blob_bytes(data)
    return digest, data


# -- chunk lists ---------------------------------------------------------------------------

def test_a_chunk_list_hashes_every_chunk_and_roots_them(store) -> None:
    digest, data = blob(store)
    listed = chunks.hash_file(store.blob_path(digest), CHUNK)
    assert listed.count == 5 and listed.span(4) == (4000, 4500)
    assert listed.hashes == [hashlib.sha256(data[i:i + CHUNK]).hexdigest()
                             for i in range(0, 4500, CHUNK)]
    assert listed.root == hashlib.sha256(b"".join(bytes.fromhex(h) for h in listed.hashes)).hexdigest()
    assert chunks.decode(listed.encode()) == listed
    assert listed.matches(4, data[4000:]) and not listed.matches(4, data[3999:4499])


def test_a_list_whose_root_or_count_is_wrong_is_refused(store) -> None:
    digest, _ = blob(store)
    listed = chunks.hash_file(store.blob_path(digest), CHUNK)
    forged = chunks.ChunkList(listed.size, CHUNK, [*listed.hashes[:-1], "0" * 64], listed.root)
    with pytest.raises(ValueError, match="root"):
        forged.check()
    with pytest.raises(ValueError, match="chunk hashes"):
        chunks.make(listed.hashes[:-1], listed.size, CHUNK).check()
    with pytest.raises(ValueError, match="not a sha256"):
        chunks.ChunkList(10, CHUNK, ["../../etc/passwd"], listed.root).check()


def test_the_index_computes_a_list_once_and_keeps_it_beside_the_store(store) -> None:
    digest, _ = blob(store)
    index = chunks.ChunkIndex(store)
    first = index.get(digest, CHUNK)
    sidecars = list((store.root / ".ollamamax" / "chunks").iterdir())
    assert [p.name for p in sidecars] == [f"{digest[7:]}.{CHUNK}.json"]
    assert not any(p.name.startswith(".") for p in store.blobs.iterdir())
    sidecars[0].write_bytes(first.encode())  # what a second call reads instead of hashing
    assert index.get(digest, CHUNK) == first
    assert index.get(digest, 2 * CHUNK).count == 3  # another chunk size: another list


def test_have_bitmaps_round_trip_as_base64_bits_or_index_lists() -> None:
    have = bytearray([1, 0, 0, 1, 1, 0, 0, 0, 0, 1])
    assert chunks.decode_have(chunks.encode_have(have), len(have)) == have
    assert chunks.decode_have([0, 3, 4, 9, 99, -1], len(have)) == have


# -- the partial file ----------------------------------------------------------------------

def test_a_partial_file_resumes_with_exactly_the_chunks_made_durable(store) -> None:
    digest, data = blob(store)
    listed = chunks.hash_file(store.blob_path(digest), CHUNK)
    first = chunks.PartialFile(store, digest, listed)
    assert first.open() == 0
    for i in (0, 2):
        first.write(i, data[i * CHUNK:(i + 1) * CHUNK])
    assert first.has_range(2000, 3000) and not first.has_range(999, 1001)
    assert first.flush() == 2
    first.write(3, data[3000:4000])  # written, never flushed: as if killed here
    first.close()

    again = chunks.PartialFile(store, digest, listed)
    assert again.open() == 2
    assert list(again.have) == [1, 0, 1, 0, 0]
    for i in (1, 3, 4):
        start, end = listed.span(i)
        again.write(i, data[start:end])
    assert again.complete
    assert again.hash_along() == digest[7:]  # the whole blob, fed from the file in order
    again.discard()
    assert not again.dir.exists()


def test_a_marked_chunk_that_no_longer_verifies_is_fetched_again(store) -> None:
    digest, data = blob(store)
    listed = chunks.hash_file(store.blob_path(digest), CHUNK)
    partial = chunks.PartialFile(store, digest, listed)
    partial.open()
    partial.write(1, data[1000:2000])
    partial.flush()
    partial.close()
    with open(partial.data_path, "r+b") as f:  # the disk lied about that chunk
        f.seek(1500)
        f.write(b"\xff" * 10)
    assert chunks.PartialFile(store, digest, listed).open() == 0


def test_a_different_chunk_list_starts_the_partial_file_over(store) -> None:
    digest, data = blob(store)
    partial = chunks.PartialFile(store, digest, chunks.hash_file(store.blob_path(digest), CHUNK))
    partial.open()
    partial.write(0, data[:CHUNK])
    partial.flush()
    partial.close()
    other = chunks.PartialFile(store, digest, chunks.hash_file(store.blob_path(digest), 500))
    assert other.open() == 0


# -- ranges --------------------------------------------------------------------------------

@pytest.mark.parametrize(("header", "span"), [
    (None, None), ("bytes=0-99", (0, 100)), ("bytes=100-", (100, 1000)),
    ("bytes=-10", (990, 1000)), ("bytes=900-5000", (900, 1000)),
])
def test_single_ranges_are_read_as_half_open_spans(header, span) -> None:
    assert parse_range(header, 1000) == span


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5-1", "bytes=0-1,5-9", "items=0-1",
                                    "bytes=-", "bytes=abc"])
def test_unsatisfiable_or_multiple_ranges_are_416(header) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(header, 1000)
    assert info.value.status == 416


# -- pacing --------------------------------------------------------------------------------

class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_the_pacer_holds_bytes_to_its_rate_from_the_start() -> None:
    fake = FakeTime()
    pacer = Pacer(1_000_000, burst=100_000, clock=fake.clock, sleep=fake.sleep)
    for _ in range(20):  # 2 MB at 1 MB/s: the bucket starts empty, no head start
        await pacer.pace(100_000)
    assert fake.slept == [pytest.approx(0.1)] * 20
    assert fake.now == pytest.approx(2.0)


async def test_a_late_wake_up_is_made_up_within_the_burst() -> None:
    fake = FakeTime()
    pacer = Pacer(1_000_000, burst=100_000, clock=fake.clock, sleep=fake.sleep)
    fake.now += 0.5  # a busy process woke late: 0.1 s of credit is kept, not 0.5 s
    await pacer.pace(100_000)
    await pacer.pace(100_000)
    assert fake.slept == [pytest.approx(0.1)]


async def test_two_senders_share_one_pacer() -> None:
    fake = FakeTime()
    pacer = Pacer(1_000_000, burst=50_000, clock=fake.clock, sleep=fake.sleep)
    for _ in range(10):  # alternating senders spend into one debt
        await pacer.pace(50_000)
        await pacer.pace(50_000)
    assert fake.now == pytest.approx(1.0)  # 1 MB at 1 MB/s


# -- picking chunks -------------------------------------------------------------------------

def source(name: str, have: list[int] | None, **kw) -> Source:
    return Source(name, f"http://{name}", complete=have is None,
                  have=bytearray(have) if have is not None else None, **kw)


def test_the_rarest_chunk_is_taken_first() -> None:
    origin = source("origin", None)
    peer = source("peer", [1, 1, 0, 0], inflight=1)
    chosen = pick({0, 1, 2, 3}, [origin, peer], 1, {}, random.Random(0))
    assert chosen is not None and chosen[0] is origin and chosen[1] in (2, 3)


def test_a_chunk_another_receiver_is_fetching_counts_as_held() -> None:
    origin = source("origin", None, sending=frozenset({0, 1, 2}))
    assert pick({0, 1, 2, 3}, [origin], 1, {}, random.Random(0)) == (origin, 3)


def test_a_holder_never_gets_asked_again_for_a_chunk_it_sent_wrong() -> None:
    liar = source("liar", None, bad={2})
    assert pick({2}, [liar], 1, {}, random.Random(0)) is None
    honest = source("honest", [0, 0, 1])
    assert pick({2}, [liar, honest], 1, {}, random.Random(0)) == (honest, 2)


def test_faulty_and_busy_holders_are_skipped_and_the_fastest_idle_one_wins() -> None:
    broken = source("broken", None, faults=MAX_FAULTS)
    busy = source("busy", None, inflight=1)
    slow, fast = source("slow", None), source("fast", None)
    chosen = pick({0}, [broken, busy, slow, fast], 1, {"slow": 1.0, "fast": 9.0},
                  random.Random(0))
    assert chosen == (fast, 0)
    assert pick({0}, [broken, busy], 1, {}, random.Random(0)) is None


def test_a_chunk_a_holder_declined_is_asked_elsewhere_or_later() -> None:
    origin = source("origin", None, declined={0: 10.0})
    assert pick({0}, [origin], 1, {}, random.Random(0), now=10.1) is None
    assert pick({0}, [origin], 1, {}, random.Random(0), now=11.0) == (origin, 0)
    peer = source("peer", [1])
    assert pick({0}, [origin, peer], 1, {}, random.Random(0), now=10.1) == (peer, 0)
    assert pick({0}, [origin], 1, {}, random.Random(0), now=math.inf) == (origin, 0)  # insisting


def test_an_empty_blob_is_complete_at_once(store) -> None:
    digest = "sha256:" + hashlib.sha256(b"").hexdigest()
    partial = chunks.PartialFile(store, digest, chunks.make([], 0, CHUNK))
    assert partial.open() == 0 and partial.complete
    assert partial.hash_along() == digest[7:]
    assert partial.data_path.stat().st_size == 0
    partial.discard()
