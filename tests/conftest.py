"""Fixtures shared by every test layer."""

from __future__ import annotations

import pytest

from ollamamax.models.store import ModelStore


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path / "models")
