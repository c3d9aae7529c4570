"""A real redis-server for the shared tier's tests (skipped, saying why, where absent)."""

from __future__ import annotations

import pytest

from ollamamax.testing.redis import LocalRedis, missing_reason


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    with LocalRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server
