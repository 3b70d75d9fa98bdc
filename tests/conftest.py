"""Shared test setup: keep the ingestion cache inside the test run."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTOSPLIT_CACHE_DIR", str(tmp_path_factory.mktemp("autosplit-cache")))
    yield
    mp.undo()
