"""The pure parts of a registry pull: part plans, manifests, resumable state, URLs, ranges."""

import itertools

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollamamax.errors import BadRequest
from ollamamax.models import names
from ollamamax.models.registry import (
    MIN_PART,
    PartialBlob,
    PullError,
    parse_manifest,
    plan_parts,
    pulling,
    registry_base,
)
from ollamamax.testing.registry import parse_range

HEX = "ab" * 32


@given(st.integers(0, 1 << 40), st.integers(1, 32), st.integers(1, 1 << 30))
def test_parts_cover_the_blob_once_in_order(size, max_parts, min_part):
    parts = plan_parts(size, max_parts, min_part, max_part=max(min_part, 1 << 30))
    assert sum(end - start for start, end in parts) == size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
    assert not parts or (parts[0][0] == 0 and parts[-1][1] == size)


def test_parts_are_cut_as_ollama_cuts_them():
    assert plan_parts(50_000_000, 16) == [(0, 50_000_000)]  # small blobs: one part
    assert len(plan_parts(4_000_000_000, 16)) == 16  # 250 MB each
    assert len(plan_parts(40_000_000_000, 16)) == 40  # capped at 1 GB a part
    assert plan_parts(3 * MIN_PART, 16)[1] == (MIN_PART, 2 * MIN_PART)
    assert plan_parts(0, 16) == []


def _manifest(*digests, size=5):
    return msgspec.json.encode({
        "schemaVersion": 2, "config": {"digest": digests[0], "size": size, "mediaType": "c"},
        "layers": [{"digest": d, "size": size, "mediaType": "l"} for d in digests[1:]]})


def test_a_manifest_gives_its_blobs_config_first():
    layers = parse_manifest(_manifest(f"sha256:{HEX}", f"sha256:{'cd' * 32}"))
    assert [(layer.digest, layer.size) for layer in layers] == [
        (f"sha256:{HEX}", 5), (f"sha256:{'cd' * 32}", 5)]


@pytest.mark.parametrize("raw", [
    b"not json", b"[]", b'{"layers": []}',
    _manifest("sha256:../../../etc/passwd"),
    _manifest(f"sha256:{HEX}", "sha256:/etc/shadow"),
    _manifest(f"sha256:{HEX}", size=-1),
    _manifest(f"sha256:{HEX}", size="12"),
])
def test_bad_manifests_and_path_digests_are_refused(raw):
    with pytest.raises(PullError, match="pull model manifest"):
        parse_manifest(raw)


def test_saved_progress_is_kept_only_when_it_describes_this_blob():
    plan = plan_parts(1000, 4, min_part=100)
    blob = PartialBlob.resume("sha256:" + HEX, 1000, plan, None)
    blob.parts[1].done = 70
    saved = blob.to_json()
    assert PartialBlob.resume("sha256:" + HEX, 1000, plan, saved).completed == 70
    assert PartialBlob.resume("sha256:" + HEX, 1001, plan_parts(1001, 4, 100), saved).completed == 0
    assert PartialBlob.resume("sha256:" + "cd" * 32, 1000, plan, saved).completed == 0
    assert PartialBlob.resume("sha256:" + HEX, 1000, plan_parts(1000, 2, 100), saved).completed == 0
    assert PartialBlob.resume("sha256:" + HEX, 1000, plan, b"{garbage").completed == 0
    blob.parts[0].done = 999  # more than the part holds: not trusted
    assert PartialBlob.resume("sha256:" + HEX, 1000, plan, blob.to_json()).completed == 0


def test_registry_urls():
    ollama = names.parse("llama3:8b")
    assert registry_base(ollama, "https://registry.ollama.ai") == "https://registry.ollama.ai"
    assert registry_base(ollama, "https://r", "http://127.0.0.1:5/") == "http://127.0.0.1:5"
    own = names.parse("myreg.lan:5000/team/model:v1")
    assert registry_base(own, "https://registry.ollama.ai") == "https://myreg.lan:5000"
    assert registry_base(own, "https://registry.ollama.ai", insecure=True) == "http://myreg.lan:5000"
    with pytest.raises(BadRequest, match="http"):
        registry_base(ollama, "https://r", "mirror.lan:5000")


def test_progress_events_are_ollamas():
    assert pulling("sha256:" + HEX, 10, 4) == {"status": f"pulling {HEX[:12]}",
                                               "digest": "sha256:" + HEX, "total": 10, "completed": 4}


@pytest.mark.parametrize(("header", "span"), [
    (None, None), ("bytes=0-9", (0, 9)), ("bytes=5-", (5, 99)), ("bytes=-10", (90, 99)),
    ("bytes=90-500", (90, 99))])
def test_ranges_the_test_registry_serves(header, span):
    assert parse_range(header, 100) == span


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=5-2", "bytes=-0", "bytes=-", "items=0-1",
                                    "bytes=0-1,5-6"])
def test_unsatisfiable_ranges(header):
    with pytest.raises(ValueError):
        parse_range(header, 100)
