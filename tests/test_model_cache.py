"""The ingestion cache returns the same profile without re-ingesting, and notices changes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import autosplit.model.cache as cache_mod
from autosplit.model.cache import ingest_model_cached

GPT = str(Path(__file__).resolve().parents[1] / "experiments/models/gpt.py")
CLUSTER = str(Path(__file__).resolve().parents[1] / "experiments/clusters/small_2type.yaml")


def test_second_call_is_served_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOSPLIT_CACHE_DIR", str(tmp_path))
    first = ingest_model_cached(GPT, model_args={"size": "tiny"}, seq_len=64)

    def boom(*_a, **_k):
        raise AssertionError("re-ingested although the cache holds the profile")

    monkeypatch.setattr(cache_mod, "ingest_isolated", boom)
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


def test_a_search_from_the_cache_never_imports_torch(tmp_path):
    """PyTorch costs seconds to import on a small machine: once the profile is cached, a
    search (CLI start, search, summary, plan file) must not load it."""
    env = {**os.environ, "AUTOSPLIT_CACHE_DIR": str(tmp_path / "cache")}
    args = ["search", GPT, "-a", "size=tiny", "--seq-len", "64", "-b", "8", "-c", CLUSTER,
            "-o", str(tmp_path / "plan.json"), "-q"]
    first = subprocess.run([sys.executable, "-m", "autosplit", *args], env=env,
                           capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    probe = ("import sys\nfrom autosplit.cli import main\n"
             f"code = main({args!r})\n"
             "print('torch' in sys.modules, code)\n")
    again = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                           text=True, check=False)
    assert again.stdout.split()[-2:] == ["False", "0"], again.stdout + again.stderr
