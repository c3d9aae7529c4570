"""The [cluster] section: etcd and its endpoints go together, and the --etcd flag sets both."""

from __future__ import annotations

import pytest

from ollamamax import config
from ollamamax.cli.options import etcd_overrides
from ollamamax.errors import ConfigError


def test_cluster_mode_is_off_by_default():
    conf = config.load(env={})
    assert conf.cluster.store == "embedded" and conf.cluster.etcd_endpoints == ()
    assert conf.cluster.lease_ttl == 5 and conf.cluster.telemetry_interval == 2.0


def test_the_etcd_flag_turns_it_on_with_its_endpoints():
    conf = config.load(env={}, overrides=etcd_overrides("http://a:2379, http://b:2379"))
    assert conf.cluster.store == "etcd"
    assert conf.cluster.etcd_endpoints == ("http://a:2379", "http://b:2379")


def test_environment_variables_reach_the_section():
    conf = config.load(env={"OLLAMAMAX_CLUSTER_STORE": "etcd",
                            "OLLAMAMAX_CLUSTER_ETCD_ENDPOINTS": "http://a:2379,http://b:2379",
                            "OLLAMAMAX_CLUSTER_LEASE_TTL": "2",
                            "OLLAMAMAX_CLUSTER_DISCOVERY": "true"})
    assert conf.cluster.etcd_endpoints == ("http://a:2379", "http://b:2379")
    assert conf.cluster.lease_ttl == 2 and conf.cluster.discovery is True


@pytest.mark.parametrize(("env", "words"), [
    ({"OLLAMAMAX_CLUSTER_STORE": "etcd"}, "go together"),
    ({"OLLAMAMAX_CLUSTER_ETCD_ENDPOINTS": "http://a:2379"}, "go together"),
    ({"OLLAMAMAX_CLUSTER_STORE": "zookeeper"}, "'embedded' or 'etcd'"),
    ({"OLLAMAMAX_CLUSTER_LEASE_TTL": "0"}, "lease_ttl must be > 0"),
    ({"OLLAMAMAX_CLUSTER_PREFIX": "ollamamax"}, "end with '/'"),
    ({"OLLAMAMAX_CLUSTER_ETCD_KEY_FILE": "k.pem"}, "etcd_cert_file"),
    ({"OLLAMAMAX_CLUSTER_DISCOVERY_SERVICE": "ollama"}, "_name._tcp"),
])
def test_inconsistent_settings_are_refused_with_a_reason(env, words):
    with pytest.raises(ConfigError, match=words):
        config.load(env=env)
