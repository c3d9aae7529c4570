"""`ollamamax flags` finds the gateway from config when no --gateway is given."""

from __future__ import annotations

import pytest

from ollamamax.cli.flags import gateway_url


@pytest.mark.parametrize(("listen", "url"), [
    ("127.0.0.1:11434", "http://127.0.0.1:11434"), ("0.0.0.0:8080", "http://127.0.0.1:8080"),
    ("[::1]:9000", "http://[::1]:9000")])
def test_the_default_gateway_is_the_configured_listen_address(monkeypatch, listen, url):
    monkeypatch.setenv("OLLAMAMAX_GATEWAY_LISTEN", listen)
    assert gateway_url(None) == url


def test_an_explicit_gateway_wins():
    assert gateway_url("http://gw:1/") == "http://gw:1"
