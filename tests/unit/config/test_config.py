import pytest

from ollamamax import config
from ollamamax.errors import ConfigError


def test_layers_apply_in_order(tmp_path):
    file = tmp_path / "c.toml"
    file.write_text('[gateway]\nlisten = "127.0.0.1:1000"\nhealth_interval = 3.0\n'
                    '[node]\nnum_parallel = 4\n')
    env = {"OLLAMAMAX_GATEWAY_LISTEN": "127.0.0.1:2000", "OLLAMAMAX_NODE_SIM_MODELS": "a=1, b=2"}
    conf = config.load(file, env, {"gateway.listen": "127.0.0.1:3000", "node.threads": None})
    assert conf.gateway.listen == "127.0.0.1:3000"  # flag beats env beats file
    assert conf.gateway.health_interval == 3.0  # file beats default
    assert conf.node.num_parallel == 4
    assert conf.node.sim_models == ("a=1", "b=2")
    assert conf.node.threads == config.NodeConfig().threads  # a flag not given changes nothing


def test_config_is_frozen():
    conf = config.load(env={})
    with pytest.raises(AttributeError):
        conf.gateway.listen = "x"  # type: ignore[misc]


@pytest.mark.parametrize(("env", "words"), [
    ({"OLLAMAMAX_NODE_NUM_PARALLEL": "0"}, "num_parallel must be > 0"),
    ({"OLLAMAMAX_NODE_NUM_PARALLEL": "many"}, "num_parallel"),
    ({"OLLAMAMAX_LOG_FORMAT": "xml"}, "log.format"),
    ({"OLLAMAMAX_GATEWAY_HEALTH_TIMEOUT": "60"}, "health_timeout"),
])
def test_bad_values_are_refused_with_a_reason(env, words):
    with pytest.raises(ConfigError, match=words):
        config.load(env=env)


def test_unknown_file_section_lists_valid_ones(tmp_path):
    file = tmp_path / "c.toml"
    file.write_text("[gatway]\nlisten = 'x'\n")
    with pytest.raises(ConfigError, match="valid sections: gateway"):
        config.load(file, env={})


def test_unknown_key_is_refused(tmp_path):
    file = tmp_path / "c.toml"
    file.write_text("[gateway]\nlisen = 'x'\n")
    with pytest.raises(ConfigError, match="lisen"):
        config.load(file, env={})


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml", env={})


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), (":0", ("127.0.0.1", 0)), ("[::1]:80", ("::1", 80))])
def test_parse_listen(listen, expected):
    assert config.parse_listen(listen) == expected


def test_parse_listen_refuses_garbage():
    with pytest.raises(ConfigError):
        config.parse_listen("localhost")


def test_every_setting_is_documented():
    from pathlib import Path

    doc = (Path(__file__).parents[3] / "docs" / "configuration.md").read_text()
    for section, struct in config.SECTIONS.items():
        assert f"## `[{section}]`" in doc
        for key in struct.__struct_fields__:
            assert f"| `{key}` |" in doc, f"{section}.{key} is not in docs/configuration.md"
