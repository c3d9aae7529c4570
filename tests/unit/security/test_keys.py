import json
import os
import stat

import pytest

from ollamamax.errors import ConfigError
from ollamamax.security import keys


def test_a_key_is_random_and_only_its_hash_is_stored(tmp_path):
    path = tmp_path / "keys.json"
    one = keys.add(path, "alice", "user", rps=5, tokens_per_min=1000)
    two = keys.add(path, "root", "admin")
    assert one != two and one.startswith("omx_") and len(one) >= 40
    text = path.read_text()
    assert one not in text and two not in text
    stored = json.loads(text)["keys"]
    assert stored[0]["sha256"] == keys.digest(one) and stored[1]["role"] == "admin"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_find_accepts_the_key_and_nothing_else(tmp_path):
    path = tmp_path / "keys.json"
    key = keys.add(path, "alice")
    found = keys.KeySet(keys.read(path))
    assert found.find(key).name == "alice"
    for wrong in ("", key[:-1], key + "x", keys.digest(key), key.upper()):
        assert found.find(wrong) is None


def test_revoke_removes_the_key(tmp_path):
    path = tmp_path / "keys.json"
    key = keys.add(path, "alice")
    keys.add(path, "bob")
    keys.revoke(path, "alice")
    assert [r.name for r in keys.read(path)] == ["bob"]
    assert keys.KeySet(keys.read(path)).find(key) is None
    with pytest.raises(ConfigError, match="no key called"):
        keys.revoke(path, "alice")


@pytest.mark.parametrize(("name", "role", "limit", "match"), [
    ("", "user", 0, "key name"), ("a b", "user", 0, "key name"), ("x" * 65, "user", 0, "key name"),
    ("ok", "root", 0, "role"), ("ok", "user", -1, ">= 0"),
])
def test_bad_names_roles_and_limits_are_refused(tmp_path, name, role, limit, match):
    with pytest.raises(ConfigError, match=match):
        keys.add(tmp_path / "k", name, role, rps=limit)
    assert keys.read(tmp_path / "k") == []


def test_names_are_unique_and_a_broken_file_says_so(tmp_path):
    path = tmp_path / "keys.json"
    keys.add(path, "alice")
    with pytest.raises(ConfigError, match="exists"):
        keys.add(path, "alice")
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not a keys file"):
        keys.read(path)


def test_limits_read_as_words():
    record = keys.KeyRecord(name="a", sha256="x", rps=2, tokens_per_min=100, tokens_per_day=5000)
    assert record.limits() == "2 req/s, 100 tok/min, 5000 tok/day"
    assert keys.KeyRecord(name="a", sha256="x").limits() == "none"
