"""DiscoveredBackends: services found on the LAN, applied to a view (no sockets)."""

from __future__ import annotations

from ollamamax.cluster.discovery import DiscoveredBackends, fqdn
from ollamamax.scheduler.view import ClusterView

NAME = "box._ollama._tcp.local."


def test_a_found_service_becomes_a_backend_for_the_health_checks_and_leaves_with_it():
    view = ClusterView()
    found = DiscoveredBackends(view)
    sentence = found.added(NAME, "box", "http://10.0.0.7:11434")
    assert sentence.startswith("discovered box at http://10.0.0.7:11434")
    i = view.node("box")
    assert view.present[i] and not view.healthy[i]  # up once a health check passes
    assert found.added(NAME, "box", "http://10.0.0.7:11434") == ""  # announced again
    assert found.added(NAME, "box", "http://10.0.0.8:11434")  # moved
    assert view.urls[i] == "http://10.0.0.8:11434"
    assert found.removed(NAME).startswith("box is no longer advertised")
    assert not view.present[i]
    assert found.removed(NAME) == ""


def test_members_of_the_etcd_cluster_are_left_to_the_membership_watch():
    view = ClusterView()
    view.add("node-1", "http://10.0.0.1:11435")
    found = DiscoveredBackends(view, is_member=lambda node_id: node_id == "node-1")
    assert found.added("node-1._ollamamax._tcp.local.", "node-1", "http://x:1") == ""
    assert found.removed("node-1._ollamamax._tcp.local.") == ""
    assert view.present[view.node("node-1")] and view.urls[0] == "http://10.0.0.1:11435"


def test_service_types_get_the_local_domain():
    assert fqdn("_ollama._tcp") == "_ollama._tcp.local."
    assert fqdn("_x._tcp.local.") == "_x._tcp.local."
