import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from ollamamax import config
from ollamamax.errors import ConfigError, Unauthorized
from ollamamax.security.cluster import HEADER, cluster_headers, require_cluster_token, token_ok


def _request(headers: dict[str, str]) -> web.Request:
    return make_mocked_request("GET", "/cluster/blobs/x", headers=headers)


def test_no_token_configured_lets_everyone_in():
    assert token_ok(_request({}), "")
    assert cluster_headers("") == {}


def test_the_right_token_passes_and_a_wrong_or_missing_one_gets_401():
    require_cluster_token(_request(cluster_headers("s3cret")), "s3cret")
    for headers in ({}, {HEADER: "s3cre"}, {HEADER: "s3cret "}, {"Authorization": "Bearer s3cret"}):
        with pytest.raises(Unauthorized) as caught:
            require_cluster_token(_request(headers), "s3cret")
        assert caught.value.status == 401
        assert "s3cret" not in caught.value.message


def test_the_token_can_come_from_a_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("from-file\n")
    conf = config.load(env={}, overrides={"security.cluster_token_file": str(path)})
    assert conf.security.token() == "from-file"
    with pytest.raises(ConfigError, match="exclusive"):
        config.load(env={}, overrides={"security.cluster_token_file": str(path),
                                       "security.cluster_token": "x"})
    missing = config.load(env={}, overrides={"security.cluster_token_file": str(tmp_path / "no")})
    with pytest.raises(ConfigError, match="cannot read"):
        missing.security.token()
