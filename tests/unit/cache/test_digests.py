"""The gateway's model -> digest map, read from node telemetry; replaced digests reported."""

from __future__ import annotations

from ollamamax.cache.digests import ModelDigests


def doc(*models: tuple[str, str]) -> dict:
    return {"models": [{"name": name, "digest": digest} for name, digest in models]}


def test_a_model_all_nodes_agree_on_has_its_digest():
    digests = ModelDigests()
    assert digests.refresh(["n1", "n2"], [doc(("tiny", "d1")), doc(("tiny:latest", "d1"))],
                           [0, 1]) == []
    assert digests.get("tiny:latest") == "d1"


def test_nodes_that_disagree_make_a_model_uncacheable_until_they_agree():
    digests = ModelDigests()
    digests.refresh(["n1", "n2"], [doc(("m:1b", "old")), doc(("m:1b", "old"))], [0, 1])
    assert digests.refresh(["n1", "n2"], [doc(("m:1b", "new")), doc(("m:1b", "old"))],
                           [0, 1]) == []
    assert digests.get("m:1b") is None
    assert digests.refresh(["n1", "n2"], [doc(("m:1b", "new")), doc(("m:1b", "new"))],
                           [0, 1]) == ["old"]
    assert digests.get("m:1b") == "new"


def test_the_same_document_object_is_read_once():
    digests = ModelDigests()
    docs = [doc(("m:1b", "d1"))]
    digests.refresh(["n1"], docs, [0])
    docs[0]["models"][0]["digest"] = "changed in place"  # not how telemetry arrives
    assert digests.refresh(["n1"], docs, [0]) == []
    assert digests.get("m:1b") == "d1"


def test_a_model_that_comes_back_under_another_digest_drops_the_old_one():
    digests = ModelDigests()
    digests.refresh(["n1"], [doc(("m:1b", "d1"))], [0])
    assert digests.refresh(["n1"], [doc()], [0]) == []  # removed from every node
    assert digests.get("m:1b") is None
    assert digests.refresh(["n1"], [doc(("m:1b", "d2"))], [0]) == ["d1"]


def test_a_node_leaving_is_not_a_model_change():
    digests = ModelDigests()
    digests.refresh(["n1", "n2"], [doc(("m:1b", "d1")), doc(("m:1b", "d1"))], [0, 1])
    assert digests.refresh(["n1", "n2"], [doc(("m:1b", "d1")), {}], [0]) == []
    assert digests.get("m:1b") == "d1"


def test_documents_without_models_or_digests_change_nothing():
    digests = ModelDigests()
    digests.refresh(["n1"], [{}], [0])
    assert digests.get("m:1b") is None
    digests.refresh(["n1"], [doc(("m:1b", ""))], [0])
    assert digests.get("m:1b") is None  # no digest reported: not cacheable
