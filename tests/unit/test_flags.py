"""Feature flags: stable hashing, shares, rollback, persistence, the named pairs."""

from __future__ import annotations

import json
import zlib

import pytest

from ollamamax import variants
from ollamamax.errors import BadRequest, ConfigError, NotFound
from ollamamax.flags import BUCKETS, FlagDef, FlagFile, Flags, NothingToRollBack, Setting

COLOUR = FlagDef("colour", ("red", "green", "blue"), "red")
ENGINE = FlagDef("engine", ("v1", "v2"), "v1", per_request=False)


def keys(n: int) -> list[bytes]:
    return [f"user-{k}".encode() for k in range(n)]


def share(flags: Flags, name: str, variant: str, n: int = 20_000) -> float:
    return sum(flags[name].pick(k) == variant for k in keys(n)) / n


def test_a_new_flag_serves_its_default_to_everyone():
    flags = Flags([COLOUR])
    assert flags.variant("colour") == "red"
    assert not flags["colour"].split and flags["colour"].active == ("red",)
    assert {flags["colour"].pick(k) for k in keys(100)} == {"red"}


def test_the_bucket_is_a_crc32_of_the_key_seeded_by_the_flag_name():
    """The same in every process (no `hash()` randomisation): pinned to literal values."""
    flags = Flags([COLOUR])
    flags.set("colour", "green", 50)
    salt = zlib.crc32(b"colour")
    assert salt == 4210582990
    for key in keys(50):
        inside = zlib.crc32(key, salt) % BUCKETS < 5000
        assert flags["colour"].pick(key) == ("green" if inside else "red")
    assert zlib.crc32(b"user-0", salt) % BUCKETS == 3205  # < 5000: in the rollout
    assert zlib.crc32(b"user-1", salt) % BUCKETS == 8483
    assert flags["colour"].pick(b"user-0") == "green"
    assert flags["colour"].pick(b"user-1") == "red"


@pytest.mark.parametrize("percent", [1, 10, 25, 50, 90])
def test_a_rollout_reaches_its_share_of_requests(percent):
    flags = Flags([COLOUR])
    flags.set("colour", "blue", percent)
    assert share(flags, "colour", "blue") == pytest.approx(percent / 100, abs=0.01)
    assert flags["colour"].active == ("red", "blue")


def test_a_growing_rollout_keeps_the_requests_it_already_had():
    flags = Flags([COLOUR])
    flags.set("colour", "green", 10)
    first = {k for k in keys(5000) if flags["colour"].pick(k) == "green"}
    flags.set("colour", "green", 30)
    second = {k for k in keys(5000) if flags["colour"].pick(k) == "green"}
    assert first < second


def test_zero_and_hundred_percent_need_no_hashing():
    flags = Flags([COLOUR])
    flags.set("colour", "blue", 0)
    assert flags["colour"].active == ("red",) and flags.variant("colour") == "red"
    flags.set("colour", "blue", 100)
    assert flags["colour"].active == ("blue",) and flags["colour"].setting.base == "blue"


def test_rollback_returns_to_each_earlier_setting_in_turn():
    flags = Flags([COLOUR])
    flags.set("colour", "green")
    flags.set("colour", "blue", 20)
    assert flags["colour"].setting == Setting("blue", 20.0, "green")
    assert flags.rollback("colour") == Setting("green", 100.0, "green")
    assert flags.rollback("colour") == Setting("red", 100.0, "red")
    with pytest.raises(NothingToRollBack, match="no earlier setting") as info:
        flags.rollback("colour")
    assert info.value.status == 409


def test_listeners_hear_every_change():
    flags = Flags([COLOUR])
    heard = []
    flags.subscribe(lambda flag: heard.append((flag.name, flag.current)))
    flags.set("colour", "green")
    flags.rollback("colour")
    assert heard == [("colour", "green"), ("colour", "red")]


@pytest.mark.parametrize(("args", "error", "words"), [
    (("nope", "red"), NotFound, "unknown flag 'nope'"),
    (("colour", "pink"), BadRequest, "variants: red, green, blue"),
    (("colour", "red", 101), BadRequest, "from 0 to 100"),
    (("colour", "red", -1), BadRequest, "from 0 to 100"),
    (("colour", "red", True), BadRequest, "from 0 to 100"),
    (("engine", "v2", 50), BadRequest, "whole component"),
])
def test_bad_changes_are_refused_with_a_reason(args, error, words):
    flags = Flags([COLOUR, ENGINE])
    with pytest.raises(error, match=words):
        flags.set(*args)
    assert flags["colour"].history == [] and flags["engine"].history == []


def test_settings_and_history_survive_a_restart(tmp_path):
    path = tmp_path / "state" / "flags.json"
    flags = Flags([COLOUR, ENGINE], FlagFile(path))
    flags.set("colour", "green")
    flags.set("colour", "blue", 25)
    flags.set("engine", "v2")
    assert json.loads(path.read_text())["flags"]["colour"]["variant"] == "blue"
    again = Flags([COLOUR, ENGINE], FlagFile(path))  # a new process, the same file
    assert again["colour"].setting == Setting("blue", 25.0, "green")
    assert again.variant("engine") == "v2"
    assert [k for k in keys(200) if again["colour"].pick(k) == "blue"] == \
        [k for k in keys(200) if flags["colour"].pick(k) == "blue"]
    assert again.rollback("colour") == Setting("green", 100.0, "green")
    assert Flags([COLOUR, ENGINE], FlagFile(path)).variant("colour") == "green"


def test_a_saved_setting_no_longer_valid_is_ignored(tmp_path):
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({"flags": {
        "colour": {"variant": "pink", "percent": 100, "base": "pink"},
        "gone": {"variant": "x"}, "engine": {"variant": "v2", "history": "garbage"}}}))
    assert Flags([COLOUR, ENGINE], FlagFile(path)).variant("engine") == "v1"
    path.write_text(json.dumps({"flags": {
        "colour": {"variant": "green", "percent": "NaN"},
        "engine": {"variant": "v2", "percent": 50, "base": "v1"}}}))
    flags = Flags([COLOUR, ENGINE], FlagFile(path))
    assert flags.variant("colour") == "red" and flags.variant("engine") == "v1"
    path.write_text("{not json")
    assert Flags([COLOUR], FlagFile(path)).variant("colour") == "red"


def test_describe_shows_setting_variants_and_history_newest_first():
    flags = Flags([COLOUR])
    flags.set("colour", "green")
    flags.set("colour", "blue", 5)
    (d,) = flags.describe()
    assert d["variant"] == "blue" and d["percent"] == 5 and d["base"] == "green"
    assert d["default"] == "red" and d["variants"] == ["red", "green", "blue"]
    assert [h["variant"] for h in d["history"]] == ["green", "red"]


# -- the named pairs -------------------------------------------------------------------------


def test_every_pair_is_a_flag_whose_variants_all_load():
    defs = {d.name: d for d in variants.definitions()}
    assert variants.STRATEGY in defs and defs[variants.STRATEGY].default == "intelligent"
    for pair in variants.PAIRS:
        d = defs[pair.flag]
        assert d.default == pair.default and pair.baseline in d.variants
        for name in d.variants:
            assert callable(variants.load(pair.flag, name))


def test_the_strategy_default_comes_from_config_and_must_exist():
    defs = {d.name: d for d in variants.definitions("round_robin")}
    assert defs[variants.STRATEGY].variants[0] == "round_robin"
    with pytest.raises(ConfigError, match="valid strategys"):
        variants.definitions("nope")
