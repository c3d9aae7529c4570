import ssl

import pytest
import trustme

from ollamamax import config
from ollamamax.errors import ConfigError
from ollamamax.security import tls


def security(**values):
    return config.load(env={}, overrides={f"security.{k}": v for k, v in values.items()}).security


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(root / "key.pem"))
    return root


def test_no_certificate_means_plain_http():
    assert tls.server_context(security()) is None
    assert not tls.wants_client_context(security())


def test_server_and_client_contexts(pki):
    conf = security(tls_cert_file=str(pki / "cert.pem"), tls_key_file=str(pki / "key.pem"),
                    tls_client_ca_file=str(pki / "ca.pem"), tls_ca_file=str(pki / "ca.pem"))
    assert tls.server_context(conf).verify_mode == ssl.CERT_NONE  # a gateway: keys, not certs
    mutual = tls.server_context(conf, mutual=True)
    assert mutual.verify_mode == ssl.CERT_REQUIRED
    assert mutual.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls.client_context(conf).verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(("values", "match"), [
    ({"tls_cert_file": "a.pem"}, "go together"),
    ({"tls_client_cert_file": "a.pem"}, "go together"),
    ({"tls_client_ca_file": "ca.pem"}, "needs tls_cert_file"),
    ({"keys_reload_interval": 0}, "must be > 0"),
])
def test_inconsistent_settings_are_refused(values, match):
    with pytest.raises(ConfigError, match=match):
        security(**values)


def test_unreadable_files_are_config_errors(pki, tmp_path):
    with pytest.raises(ConfigError, match="tls_cert_file"):
        tls.server_context(security(tls_cert_file=str(tmp_path / "no.pem"),
                                    tls_key_file=str(pki / "key.pem")))
    with pytest.raises(ConfigError, match="tls_ca_file"):
        tls.client_context(security(tls_ca_file=str(pki / "key.pem")))
