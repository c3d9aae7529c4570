"""A candidate of the leader-kill test, in a process of its own so it can die by SIGKILL.

    python candidate.py ENDPOINTS NAME TTL REPORT

Appends one JSON line to REPORT per step ("campaigning", "leader", "lost") with the time on
CLOCK_MONOTONIC, which every process on the machine shares, so the test can order the
reports of several candidates."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from ollamamax.cluster.election import Election
from ollamamax.cluster.etcd import EtcdStore


def note(report: str, event: str) -> None:
    with open(report, "a") as out:
        out.write(json.dumps({"event": event, "t": time.monotonic()}) + "\n")


async def main(endpoints: str, name: str, ttl: str, report: str) -> None:
    store = EtcdStore(endpoints)
    lost = asyncio.Event()
    election = Election(store, "kill-test", name, int(ttl), on_lost=lost.set)
    note(report, "campaigning")
    await election.campaign()
    note(report, "leader")
    await lost.wait()  # leads until killed, unless its lease is lost
    note(report, "lost")
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
