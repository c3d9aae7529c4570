"""The gateway holds requests while every slot is busy, serves them by priority, and refuses
with Retry-After past its limits."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from ollamamax.testing.cluster import LocalCluster

MODEL = "slow:1b"
BODY = {"model": MODEL, "prompt": "hello", "stream": False, "options": {"num_predict": 80}}  # ~0.6 s


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("admission"), engine="sim", nodes=1,
                     node_args=["--sim-profile", "cpu-small", "--sim-model", f"{MODEL}=1000000",
                                "--num-parallel", "1"],
                     env={"OLLAMAMAX_SCHEDULER_MAX_WAITING": "4"}).start()
    with httpx.Client(base_url=c.url, timeout=60) as client:
        assert client.post("/api/generate", json={"model": MODEL, "keep_alive": "10m"}).is_success
        deadline = time.monotonic() + 10
        while MODEL not in c.nodes()[0]["loaded"]:  # telemetry says it is loaded, with 1 slot
            assert time.monotonic() < deadline
            time.sleep(0.05)
    yield c
    c.stop()


def post(url: str, results: list, name: str, priority: str | None) -> None:
    headers = {"X-OllamaMax-Priority": priority} if priority else {}
    r = httpx.post(url + "/api/generate", json=BODY, headers=headers, timeout=60)
    results.append((name, r.status_code, time.monotonic()))


def test_held_requests_go_by_priority(one_slot):
    results: list = []
    threads = [threading.Thread(target=post, args=(one_slot.url, results, "first", None))]
    threads[0].start()
    time.sleep(0.1)  # "first" holds the only slot
    for name, priority in (("batch-1", "batch"), ("batch-2", "batch"),
                           ("interactive-1", "interactive"), ("interactive-2", "interactive")):
        t = threading.Thread(target=post, args=(one_slot.url, results, name, priority))
        t.start()
        threads.append(t)
        time.sleep(0.03)
    for t in threads:
        t.join(60)
    assert all(status == 200 for _, status, _ in results), results
    order = [name for name, _, _ in sorted(results, key=lambda r: r[2])]
    # held while "first" ran; the interactive ones, though they came last, went first
    assert order[0] == "first"
    assert set(order[1:3]) == {"interactive-1", "interactive-2"}
    assert set(order[3:]) == {"batch-1", "batch-2"}


def test_a_full_queue_answers_503_with_retry_after(one_slot):
    results: list = []
    threads = [threading.Thread(target=post, args=(one_slot.url, results, f"r{k}", None))
               for k in range(5)]  # one runs, four wait: the limit
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while httpx.get(one_slot.url + "/health").json()["waiting"] < 4:
        assert time.monotonic() < deadline, "the requests were never all held"
        time.sleep(0.01)
    r = httpx.post(one_slot.url + "/api/generate", json=BODY, timeout=60)
    assert r.status_code == 503
    assert int(r.headers["Retry-After"]) >= 1 and "busy" in r.json()["error"]
    for t in threads:
        t.join(60)
    assert sorted(status for _, status, _ in results) == [200] * 5


def test_an_unknown_priority_is_a_bad_request(one_slot):
    r = httpx.post(one_slot.url + "/api/generate", json=BODY,
                   headers={"X-OllamaMax-Priority": "urgent!!"})
    assert r.status_code == 400 and "X-OllamaMax-Priority" in r.json()["error"]
