"""The ingestion cache returns the same profile without re-ingesting, and notices changes."""

from __future__ import annotations

from pathlib import Path

import pytest

import autosplit.model.ingest as ingest_mod
from autosplit.model.cache import ingest_model_cached

GPT = str(Path(__file__).resolve().parents[1] / "experiments/models/gpt.py")


def test_second_call_is_served_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOSPLIT_CACHE_DIR", str(tmp_path))
    first = ingest_model_cached(GPT, model_args={"size": "tiny"}, seq_len=64)

    def boom(*_a, **_k):
        raise AssertionError("re-ingested although the cache holds the profile")

    monkeypatch.setattr(ingest_mod, "ingest_model", boom)
    again = ingest_model_cached(GPT, model_args={"size": "tiny"}, seq_len=64)
    assert again == first
    with pytest.raises(AssertionError):
        ingest_model_cached(GPT, model_args={"size": "tiny"}, seq_len=128)  # other key
    with pytest.raises(AssertionError):
        ingest_model_cached(GPT, model_args={"size": "tiny"}, seq_len=64, use_cache=False)


def test_changed_model_file_is_re_ingested(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOSPLIT_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "m.py"
    model.write_text(Path(GPT).read_text())
    a = ingest_model_cached(str(model), model_args={"size": "tiny"}, seq_len=64)
    model.write_text(Path(GPT).read_text() + "\n# edited\n")
    b = ingest_model_cached(str(model), model_args={"size": "tiny"}, seq_len=64)
    assert a.fingerprint != b.fingerprint
