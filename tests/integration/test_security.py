"""Security with real processes: an https gateway with API keys over mutual-TLS nodes that
require the cluster token, driven by the official `ollama` and `openai` clients.

One node joins with a wrong cluster token: the gateway's health checks are refused (401), it
is marked down with "cluster token refused" and gets no traffic.
"""

from __future__ import annotations

import ssl
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import ollama
import openai
import pytest
import trustme

from ollamamax.security import keys
from ollamamax.security.cluster import HEADER
from ollamamax.supervisor import Supervisor
from ollamamax.testing.browser import MISSING as NO_CHROMIUM
from ollamamax.testing.browser import launch

pytestmark = pytest.mark.slow

MODEL = "secure:1b"
TOKEN = "cluster-token-8c1f0e"  # a test secret: the logs must never show it
MAX_BODY = 200_000
MESSAGES = [{"role": "user", "content": "Tell me about llamas."}]


class Secure:
    """What the tests need to reach the cluster: URLs, keys and the CA."""

    def __init__(self, root, supervisor: Supervisor) -> None:
        self.root = root
        self.supervisor = supervisor
        self.ca_file = str(root / "ca.pem")
        self.keys: dict[str, str] = {}
        self.url = ""
        self.nodes: dict[str, str] = {}

    @property
    def ca(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def with_cert(self, name: str) -> ssl.SSLContext:
        ctx = self.ca
        ctx.load_cert_chain(str(self.root / f"{name}.pem"), str(self.root / f"{name}.key"))
        return ctx

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name]}"}

    def http(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.ca, timeout=30, trust_env=False, **kw)

    def admin_nodes(self) -> list[dict]:
        with self.http() as c:
            return c.get("/admin/nodes", headers=self.auth("root")).json()["nodes"]


def _pki(root) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    for name in ("server", "client"):
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        leaf.cert_chain_pems[0].write_to_path(str(root / f"{name}.pem"))
        leaf.private_key_pem.write_to_path(str(root / f"{name}.key"))
    # a CA the nodes do not trust: its client certificates are refused
    other = trustme.CA().issue_cert("127.0.0.1")
    other.cert_chain_pems[0].write_to_path(str(root / "stranger.pem"))
    other.private_key_pem.write_to_path(str(root / "stranger.key"))


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    root = tmp_path_factory.mktemp("secure")
    _pki(root)
    keys_file = root / "keys.json"
    supervisor = Supervisor(root / "logs")
    cluster = Secure(root, supervisor)
    cluster.keys = {"alice": keys.add(keys_file, "alice"),
                    "root": keys.add(keys_file, "root", "admin"),
                    "metered": keys.add(keys_file, "metered", tokens_per_min=30),
                    "slow": keys.add(keys_file, "slow", rps=0.01, burst=1)}
    tls = {"OLLAMAMAX_SECURITY_TLS_CERT_FILE": str(root / "server.pem"),
           "OLLAMAMAX_SECURITY_TLS_KEY_FILE": str(root / "server.key")}
    node_env = {**tls, "OLLAMAMAX_SECURITY_TLS_CLIENT_CA_FILE": str(root / "ca.pem"),
                "OLLAMAMAX_SECURITY_CLUSTER_TOKEN": TOKEN}
    try:
        children = []
        for i in (1, 2, 3):
            env = {**node_env, **({"OLLAMAMAX_SECURITY_CLUSTER_TOKEN": "wrong-token"}
                                  if i == 3 else {})}
            children.append(supervisor.start(f"node-{i}", [
                "node", "--listen", "127.0.0.1:0", "--id", f"node-{i}", "--engine", "sim",
                "--models-dir", str(root / f"node-{i}"), "--sim-speed", "50",
                "--sim-model", f"{MODEL}=1000000", "--log-level", "debug"], env))
        cluster.nodes = {c.name: supervisor.wait_ready(c) for c in children}
        gateway = supervisor.start("gateway", [
            "gateway", "--listen", "127.0.0.1:0", "--log-level", "debug",
            *[a for name, url in cluster.nodes.items() for a in ("--backend", f"{name}={url}")]],
            {**tls, "OLLAMAMAX_SECURITY_KEYS_FILE": str(keys_file),
             "OLLAMAMAX_SECURITY_CLUSTER_TOKEN": TOKEN,
             "OLLAMAMAX_SECURITY_TLS_CA_FILE": str(root / "ca.pem"),
             "OLLAMAMAX_SECURITY_TLS_CLIENT_CERT_FILE": str(root / "client.pem"),
             "OLLAMAMAX_SECURITY_TLS_CLIENT_KEY_FILE": str(root / "client.key"),
             "OLLAMAMAX_GATEWAY_MAX_BODY_BYTES": str(MAX_BODY),
             "OLLAMAMAX_GATEWAY_HEALTH_INTERVAL": "0.2"})
        cluster.url = supervisor.wait_ready(gateway)
        _wait_for_nodes(cluster)
        yield cluster
    finally:
        supervisor.stop_all()


def _wait_for_nodes(cluster: Secure, timeout: float = 20.0) -> None:
    """Until node-1 and node-2 are up and node-3 has been refused."""
    deadline = time.monotonic() + timeout
    nodes: list[dict] = []
    while time.monotonic() < deadline:
        nodes = cluster.admin_nodes()
        up = {n["id"] for n in nodes if n["healthy"]}
        refused = [n for n in nodes if n["id"] == "node-3" and n["last_error"]]
        if up == {"node-1", "node-2"} and refused:
            return
        time.sleep(0.05)
    raise TimeoutError(f"nodes not as expected within {timeout:g} s: {nodes}")


def test_a_node_with_a_wrong_cluster_token_is_down_and_gets_no_traffic(secure):
    node3 = next(n for n in secure.admin_nodes() if n["id"] == "node-3")
    assert not node3["healthy"]
    assert "cluster token refused" in node3["last_error"]
    with secure.http() as c:
        served = {c.post("/api/generate", headers=secure.auth("alice"), json={
            "model": MODEL, "prompt": f"request {i}", "stream": False,
            "options": {"num_predict": 2}}).headers["X-OllamaMax-Node"] for i in range(12)}
    assert served <= {"node-1", "node-2"}


def test_the_ollama_client_over_https_with_a_key(secure):
    with ollama.Client(host=secure.url, headers=secure.auth("alice"), verify=secure.ca,
                       timeout=30) as client:
        answer = client.chat(model=MODEL, messages=MESSAGES, options={"num_predict": 5})
        assert answer.done and answer.eval_count > 0
        chunks = list(client.chat(model=MODEL, messages=MESSAGES, options={"num_predict": 5},
                                  stream=True))
        assert chunks[-1].done and len(chunks) > 1
        assert MODEL in [m.model for m in client.list().models]


def test_the_ollama_client_without_a_key_or_with_a_wrong_one_gets_401(secure):
    for headers in ({}, {"Authorization": "Bearer omx_not-a-key"}):
        with ollama.Client(host=secure.url, headers=headers, verify=secure.ca,
                           timeout=30) as client, pytest.raises(ollama.ResponseError) as caught:
            client.chat(model=MODEL, messages=MESSAGES)
        assert caught.value.status_code == 401
        assert "API key" in caught.value.error


def test_the_openai_client_with_api_key(secure):
    with httpx.Client(verify=secure.ca, trust_env=False) as http:
        client = openai.OpenAI(base_url=secure.url + "/v1", api_key=secure.keys["alice"],
                               http_client=http, max_retries=0)
        reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
        assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens
        wrong = openai.OpenAI(base_url=secure.url + "/v1", api_key="omx_wrong",
                              http_client=http, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()


def test_admin_endpoints_want_an_admin_key(secure):
    with secure.http() as c:
        for path in ("/admin/nodes", "/admin/flags", "/metrics", "/dashboard"):
            assert c.get(path).status_code == 401
            r = c.get(path, headers=secure.auth("alice"))
            assert r.status_code == 403 and "admin key" in r.json()["error"]
            assert c.get(path, headers=secure.auth("root")).status_code == 200
        assert c.get("/health").status_code == 200


def test_tokens_per_minute_are_charged_after_the_answer(secure):
    with ollama.Client(host=secure.url, headers=secure.auth("metered"), verify=secure.ca,
                       timeout=30) as client:
        answer = client.generate(model=MODEL, prompt="a long answer please",
                                 options={"num_predict": 40})
        assert answer.prompt_eval_count + answer.eval_count > 30  # over the minute's budget
        with pytest.raises(ollama.ResponseError) as caught:
            client.generate(model=MODEL, prompt="again", options={"num_predict": 1})
    assert caught.value.status_code == 429 and "tokens per minute" in caught.value.error
    with secure.http() as c:
        r = c.get("/api/tags", headers=secure.auth("metered"))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"].startswith("key 'metered' has used its tokens per minute")


def test_requests_per_second_answer_429_with_retry_after(secure):
    with secure.http() as c:
        assert c.get("/api/tags", headers=secure.auth("slow")).status_code == 200
        r = c.get("/api/tags", headers=secure.auth("slow"))
    # 1 / 0.01 s, less what refilled between the two requests (rounded up)
    assert r.status_code == 429 and 90 <= int(r.headers["Retry-After"]) <= 100
    assert "error" in r.json()


def test_a_body_over_the_cap_is_413_in_ollamas_shape(secure):
    with secure.http() as c:
        r = c.post("/api/chat", headers=secure.auth("alice"),
                   content=b'{"model": "' + b"x" * MAX_BODY + b'"}')
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]


def test_nodes_want_a_client_certificate_and_the_token(secure):
    url = secure.nodes["node-1"]
    # no client certificate, or one from another CA: no TLS session, so not one byte of HTTP
    for ctx in (secure.ca, secure.with_cert("stranger")):
        with httpx.Client(verify=ctx, trust_env=False) as c, \
                pytest.raises(httpx.TransportError):
            c.get(url + "/api/tags")
    with httpx.Client(verify=secure.with_cert("client"), trust_env=False) as c:
        assert c.get(url + "/health").status_code == 200  # probes need no token
        assert c.get(url + "/api/tags").status_code == 401
        assert c.get(url + "/api/tags", headers={HEADER: TOKEN}).status_code == 200


def test_secrets_never_reach_the_logs(secure):
    with secure.http() as c:  # failed attempts too: the wrong key must not be logged either
        c.get("/api/tags", headers={"Authorization": "Bearer omx_guessed-key-123"})
        c.get("/dashboard?key=omx_guessed-key-456")
    logs = "".join(child.log.read_text(errors="replace")
                   for child in secure.supervisor.children.values())
    assert "gateway on https://127.0.0.1:" in logs and "API keys in force" in logs
    for secret in (TOKEN, "wrong-token", "omx_guessed-key-123", "omx_guessed-key-456",
                   *secure.keys.values()):
        assert secret not in logs




@pytest.mark.skipif(bool(NO_CHROMIUM), reason=NO_CHROMIUM)
def test_the_dashboard_works_in_a_browser_with_an_admin_key(secure):
    playwright = pytest.importorskip("playwright.sync_api")
    seen: dict = {}

    def browse() -> None:  # Playwright's sync API, in a thread with no event loop of its own
        with playwright.sync_playwright() as p:
            browser = launch(p)
            try:
                stranger = browser.new_context(ignore_https_errors=True).new_page()
                seen["no key"] = stranger.goto(secure.url + "/dashboard").status
                page = browser.new_context(ignore_https_errors=True).new_page()
                page.goto(f"{secure.url}/dashboard?key={secure.keys['root']}")
                page.wait_for_selector("#live.on", timeout=10_000)  # the event stream is up
                page.wait_for_selector('#nodes tr[data-node="node-2"]', timeout=10_000)
                seen["url"] = page.url
                seen["nodes"] = page.locator("#nodes .node-name").all_inner_texts()
            finally:
                browser.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(browse).result(timeout=90)
    assert seen["no key"] == 401
    assert seen["url"] == secure.url + "/dashboard"  # the key left the address bar
    assert sorted(seen["nodes"]) == ["node-1", "node-2", "node-3"]
