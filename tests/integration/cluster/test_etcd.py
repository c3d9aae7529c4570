"""What only a real etcd can show: restarts, dead endpoints, TLS, a member killed, and a
leader process killed with SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme

from ollamamax.cluster.etcd import EtcdStore
from ollamamax.cluster.store import EventType
from ollamamax.errors import StoreError, StoreUnavailable
from ollamamax.supervisor import die_with_parent
from ollamamax.testing.etcd import EtcdTLS, LocalEtcd, missing_reason

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))]

CANDIDATE = Path(__file__).with_name("candidate.py")


def dead_url() -> str:
    """A URL nothing listens on (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def put_when_writable(store: EtcdStore, key: str, value: bytes, timeout: float = 10) -> int:
    """The first write after a member died: retried while the cluster elects a leader."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await store.put(key, value)
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_watch_resumes_after_etcd_restarts(tmp_path, watch) -> None:
    with LocalEtcd(tmp_path) as server:
        async with EtcdStore(server.urls) as watcher:
            _, revision = await watcher.get_prefix("r/")
            recorder = watch(watcher, "r/", revision + 1)
            async with EtcdStore(server.urls) as writer:
                for i in range(5):
                    await writer.put(f"r/{i}", b"before")
            await recorder.wait(5)
            server.restart()  # SIGTERM; same ports and data dir
            async with EtcdStore(server.urls) as writer:  # new connections to the new process
                for i in range(5, 10):  # very likely before the watch is back: it must catch up
                    await writer.put(f"r/{i}", b"after")
                await writer.delete("r/0")
            events = await recorder.wait(11)
            await asyncio.sleep(0.2)  # anything extra would be a duplicate
    assert len(recorder.events) == 11
    assert [e.key for e in events] == [f"r/{i}" for i in range(10)] + ["r/0"]
    assert events[-1].type is EventType.DELETE
    revisions = [e.mod_revision for e in events]
    assert revisions == sorted(set(revisions))


async def test_a_dead_first_endpoint_fails_over_to_the_next(etcd, watch) -> None:
    async with EtcdStore([dead_url(), *etcd.urls], connect_timeout=0.5) as store:
        revision = await store.put("f/1", b"x")
        assert store.endpoint == etcd.url  # remembered: the next call goes there first
        assert (await store.get("f/1")).value == b"x"
        recorder = watch(store, "f/", revision)
        assert [e.key for e in await recorder.wait(1)] == ["f/1"]
    async with EtcdStore([dead_url(), *etcd.urls]) as store:  # the watch fails over by itself
        recorder = watch(store, "f/", revision)
        assert [e.key for e in await recorder.wait(1)] == ["f/1"]


async def test_no_endpoint_answering_is_unavailable_within_the_timeout() -> None:
    async with EtcdStore([dead_url(), dead_url()], timeout=0.5) as store:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="no endpoint answered"):
            await store.get("k")
        with pytest.raises(StoreUnavailable):
            await store.put("k", b"")
        assert time.monotonic() - started < 5


async def test_tls_with_client_certificates(tmp_path) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("ollamamax-client")
    files = {}
    for name, blob in [("ca.pem", ca.cert_pem), ("server.pem", server_cert.cert_chain_pems[0]),
                       ("server.key", server_cert.private_key_pem),
                       ("client.pem", client_cert.cert_chain_pems[0]),
                       ("client.key", client_cert.private_key_pem)]:
        blob.write_to_path(str(tmp_path / name))
        files[name] = str(tmp_path / name)
    tls = EtcdTLS(files["ca.pem"], files["server.pem"], files["server.key"],
                  files["client.pem"], files["client.key"])
    with LocalEtcd(tmp_path / "run", tls=tls) as server:
        assert server.url.startswith("https://")
        async with EtcdStore(server.urls, ca_file=files["ca.pem"], cert_file=files["client.pem"],
                             key_file=files["client.key"]) as store:
            revision = await store.put("tls/k", b"secret")
            assert (await store.get("tls/k")).value == b"secret"
            events = store.watch_prefix("tls/", revision)
            assert (await anext(events)).key == "tls/k"
            await events.aclose()
        async with EtcdStore(server.urls, ca_file=files["ca.pem"], timeout=1) as anonymous:
            with pytest.raises(StoreError):  # no client certificate: refused
                await anonymous.get("tls/k")
        other = trustme.CA()
        other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
        async with EtcdStore(server.urls, ca_file=str(tmp_path / "other.pem"),
                             cert_file=files["client.pem"], key_file=files["client.key"]) as wrong:
            with pytest.raises(StoreError, match="certificate"):  # the server is not trusted
                await wrong.get("tls/k")


async def test_three_members_keep_serving_with_one_killed(tmp_path, watch) -> None:
    with LocalEtcd(tmp_path, members=3) as cluster:
        # a write that reached a follower just as the leader died waits for etcd's request
        # timeout (seconds) unless ours is shorter: then put_when_writable sends it again
        async with EtcdStore(cluster.urls, timeout=2) as store, EtcdStore(cluster.urls) as watcher:
            _, revision = await watcher.get_prefix("m/")
            recorder = watch(watcher, "m/", revision + 1)  # on member 0, like every call
            for i in range(3):
                await store.put(f"m/{i}", b"")
            await recorder.wait(3)
            cluster.kill(0)  # the member both clients talk to; maybe the raft leader
            await put_when_writable(store, "m/3", b"")
            for i in range(4, 8):
                await store.put(f"m/{i}", b"")
            assert store.endpoint != cluster.urls[0]
            events = await recorder.wait(8, timeout=15)
            assert [e.key for e in events] == [f"m/{i}" for i in range(8)]
            cluster.restart(0)
            assert {kv.key for kv in (await store.get_prefix("m/"))[0]} == {
                f"m/{i}" for i in range(8)}
        async with EtcdStore(cluster.urls[:1]) as back:  # the restarted member caught up
            assert len((await back.get_prefix("m/"))[0]) == 8


def reports(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return []


def wait_for_leader(paths: dict[str, Path], exclude: set[str], timeout: float) -> tuple[str, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, path in paths.items():
            led = [r["t"] for r in reports(path) if r["event"] == "leader"]
            if name not in exclude and led:
                return name, led[0]
        time.sleep(0.02)
    raise AssertionError(f"no new leader within {timeout:g} s")


def test_a_killed_leader_process_is_replaced_within_the_ttl(etcd, tmp_path) -> None:
    ttl = 2
    names = ["c0", "c1", "c2"]
    paths = {name: tmp_path / f"{name}.jsonl" for name in names}
    with contextlib.ExitStack() as stack:
        procs = {name: start_candidate(stack, etcd.urls, name, ttl, paths[name]) for name in names}
        check_takeovers(procs, paths, ttl)


def start_candidate(stack: contextlib.ExitStack, urls: list[str], name: str, ttl: int,
                    report: Path) -> subprocess.Popen[bytes]:
    log = stack.enter_context(report.with_suffix(".log").open("wb"))
    proc = subprocess.Popen([sys.executable, str(CANDIDATE), ",".join(urls), name, str(ttl),
                             str(report)], stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=die_with_parent)  # noqa: PLW1509
    stack.callback(proc.wait, 10)
    stack.callback(proc.kill)
    return proc


def check_takeovers(procs: dict[str, subprocess.Popen[bytes]], paths: dict[str, Path],
                    ttl: int) -> None:
    """Kill the leader twice; each time a survivor leads within the TTL (+ 2 s), and no two
    tenures overlap: a killed leader's ends when its process is gone."""
    tenures: list[tuple[float, float, str]] = []  # (became leader, certainly ended, who)
    dead: set[str] = set()
    leader, since = wait_for_leader(paths, dead, timeout=20)
    for _ in range(2):
        procs[leader].send_signal(signal.SIGKILL)
        procs[leader].wait(10)
        killed_at = time.monotonic()  # after the process is gone: its tenure ended before
        tenures.append((since, killed_at, leader))
        dead.add(leader)
        leader, since = wait_for_leader(paths, dead, timeout=ttl + 5)
        assert since - killed_at <= ttl + 2, f"{leader} led {since - killed_at:.2f} s after"
    tenures.append((since, time.monotonic(), leader))
    for name, path in paths.items():
        assert all(r["event"] != "lost" for r in reports(path)), f"{name} lost its lead"
    tenures.sort()
    for (_, end, who), (start, _, successor) in itertools.pairwise(tenures):
        assert end <= start, f"{who} and {successor} led at once"
