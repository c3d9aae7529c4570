"""Our own clients against a real gateway process with API keys: `ollamamax status`, `top`,
`alerts list` and `flags` take the key from ``--api-key`` or ``$OLLAMAMAX_API_KEY``, work with
an admin key, and say in a sentence what is wrong without one (never a traceback, never the
key); `LocalCluster`'s helpers send it too and fail at once, clearly, when it is refused.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ollamamax.cli import _register, app
from ollamamax.security import keys
from ollamamax.testing.cluster import GatewayRefused, LocalCluster

pytestmark = pytest.mark.slow
_register()

MODEL = "m:1b"
NODE_ARGS = ["--sim-profile", "cpu-small", "--sim-speed", "50", "--sim-model", f"{MODEL}=123456"]
STRATEGY = "scheduler.strategy"
runner = CliRunner()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A gateway whose keys file holds an admin key `root` and a user key `alice`."""
    root = tmp_path_factory.mktemp("cli-keys")
    keys_file = root / "keys.json"
    secrets = {"root": keys.add(keys_file, "root", "admin"), "alice": keys.add(keys_file, "alice")}
    cluster = LocalCluster(root, engine="sim", nodes=1, node_args=NODE_ARGS,
                           env={"OLLAMAMAX_SECURITY_KEYS_FILE": str(keys_file)},
                           api_key=secrets["root"]).start()  # waits for the node with the key
    cluster.secrets = secrets
    yield cluster
    cluster.stop()


@pytest.fixture(autouse=True)
def no_key_in_the_environment(monkeypatch):
    monkeypatch.delenv("OLLAMAMAX_API_KEY", raising=False)
    monkeypatch.delenv("OLLAMAMAX_GATEWAY", raising=False)


def commands(url: str) -> list[list[str]]:
    gw = ["--gateway", url]
    return [["status", *gw], ["status", "--json", *gw], ["top", "--once", *gw],
            ["alerts", "list", *gw], ["flags", "list", *gw],
            ["flags", "set", STRATEGY, "round_robin", "--percent", "10", *gw],
            ["flags", "rollback", STRATEGY, *gw]]


def said(result) -> str:
    return " ".join(result.output.split())  # rich wraps long sentences at 80 columns


def test_every_command_works_with_an_admin_key(keyed):
    key = keyed.secrets["root"]
    for args in commands(keyed.url):
        result = runner.invoke(app, [*args, "--api-key", key])
        assert result.exit_code == 0, (args, result.output)
        assert key not in result.output
    out = said(runner.invoke(app, ["status", "--gateway", keyed.url, "--api-key", key]))
    assert "node-1" in out and "healthy" in out
    out = said(runner.invoke(app, ["flags", "list", "--gateway", keyed.url, "--api-key", key]))
    assert STRATEGY in out and "intelligent" in out  # rolled back above


def test_the_key_comes_from_the_environment(keyed):
    env = {"OLLAMAMAX_API_KEY": keyed.secrets["root"]}
    for args in (["status", "--gateway", keyed.url], ["alerts", "list", "--gateway", keyed.url],
                 ["flags", "list", "--gateway", keyed.url]):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, (args, result.output)


@pytest.mark.parametrize(("who", "sentence"), [
    (None, "requires an API key: pass one with --api-key or set OLLAMAMAX_API_KEY"),
    ("alice", "needs an admin key for this"),
    ("wrong", "refused the API key given: it is unknown or revoked"),
])
def test_without_an_admin_key_each_command_says_what_is_wrong(keyed, who, sentence):
    key = {"alice": keyed.secrets["alice"], "wrong": keyed.secrets["root"] + "x"}.get(who)
    for args in commands(keyed.url):
        result = runner.invoke(app, [*args, *(["--api-key", key] if key else [])])
        assert result.exit_code in (1, 2), (args, result.output)
        assert sentence in said(result), (args, result.output)
        assert isinstance(result.exception, SystemExit)  # an exit code, not a traceback
        if key:
            assert key not in result.output
    if who == "alice":  # the gateway's own reason comes along
        result = runner.invoke(app, ["status", "--gateway", keyed.url, "--api-key", key])
        assert "key 'alice' is a user key" in said(result)


def test_local_cluster_sends_the_key_and_says_when_it_is_refused(keyed, tmp_path, monkeypatch):
    def pointed(**kw) -> LocalCluster:  # another handle on the same gateway, never started
        other = LocalCluster(tmp_path, **kw)
        other.url = keyed.url
        return other

    assert keyed.wait_nodes(healthy=1)[0]["id"] == "node-1"
    assert pointed(env={"OLLAMAMAX_API_KEY": keyed.secrets["root"]}).wait_nodes(healthy=1)
    with pytest.raises(GatewayRefused, match="requires an API key"):
        pointed().wait_nodes(healthy=1)  # at once, not after the 15 s deadline
    with pytest.raises(GatewayRefused, match="needs an admin key") as refused:
        pointed(api_key=keyed.secrets["alice"]).nodes()
    assert keyed.secrets["alice"] not in str(refused.value)
    monkeypatch.setenv("OLLAMAMAX_API_KEY", keyed.secrets["root"])
    assert [n["id"] for n in pointed().nodes()] == ["node-1"]
