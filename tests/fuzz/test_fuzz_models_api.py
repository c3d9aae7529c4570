"""Property: the model-management endpoints (``/api/pull``, ``/api/create``, ``/api/blobs``)
refuse bad input with a 4xx in Ollama's shape too. Only bodies that can never be a valid
request are sent: a valid pull would go out to a registry."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

garbled = st.one_of(
    st.binary(max_size=30).filter(lambda b: not b.strip().startswith(b"{")),
    st.sampled_from([b"{", b'{"model": ', b'{"model": "a\xff"}', b'{"model": 5}', b"[]",
                     b'{"model": ["x"]}', b'{"model": null}', b'{"model": "../x", "files": {}}']))
# a create whose name is fine but whose files are not (a pull with the same body would go out)
bad_create = st.sampled_from([b'{"model": "m", "files": 5}', b'{"model": "m", "stream": "no"}',
                              b'{"model": "m", "files": {"a.gguf": "sha256:nope"}}',
                              b'{"model": "m", "files": {"a.gguf": 7}}'])


@pytest.fixture(scope="module", params=["gateway", "node"])
def target(request):
    return request.getfixturevalue(request.param)


@FUZZ
@given(path=st.sampled_from(["/api/pull", "/api/create"]), raw=garbled)
def test_bad_pull_and_create_bodies_are_refused(sim_rig, target, path, raw):
    sim_rig.refused(target.post(path, content=raw))


@FUZZ
@given(raw=bad_create)
def test_bad_create_files_are_refused(sim_rig, target, raw):
    sim_rig.refused(target.post("/api/create", content=raw))


hex_digests = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
bad_digests = (st.text(alphabet="0123456789abcdefXYZ:-_.", min_size=1, max_size=80)
               | hex_digests.map(lambda h: "sha256-" + h) | hex_digests.map(lambda h: "md5:" + h))


@FUZZ
@given(digest=bad_digests | hex_digests.map(lambda h: "sha256:" + h),
       data=st.binary(max_size=200))
def test_blob_uploads_that_do_not_match_their_digest_are_refused(sim_rig, node, digest, data):
    # sha256 of `data` is what it would take to be accepted: a random digest never is
    r = node.post(f"/api/blobs/{digest}", content=data)
    sim_rig.refused(r)
    head = node.head(f"/api/blobs/{digest}")
    assert head.status_code in (400, 404), head.status_code


def test_the_service_is_unharmed_afterwards(sim_rig, target):
    sim_rig.assert_unharmed(target)
    assert json.loads(target.get("/api/tags").text)["models"]
