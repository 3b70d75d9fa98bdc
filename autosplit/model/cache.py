"""An on-disk cache of ingested model profiles.

Why: ingestion itself takes well under a second, but importing PyTorch and its first
operation on meta tensors cost several seconds per process — most of a search's wall time on
a laptop. A profile depends only on the model file, its arguments, the sequence length, the
dtype, the ingestion code and the PyTorch release, so it is cached under a hash of exactly
those. A model file that imports other local files the hash cannot see: pass ``--no-cache``
after changing those (the key covers the model file itself).

Location: ``$AUTOSPLIT_CACHE_DIR`` or ``~/.cache/autosplit``; one JSON file per profile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from autosplit.atomic import atomic_write_text
from autosplit.model.isolated import ingest_isolated
from autosplit.model.types import ModelProfile

__all__ = ["ingest_model_cached", "cache_dir", "cache_key"]

_CODE_FILES = ("ingest.py", "measure.py", "kernels.py", "replay.py", "loader.py", "types.py",
               "user_code.py", "worker.py")


def cache_dir() -> Path:
    root = os.environ.get("AUTOSPLIT_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "autosplit"


def _torch_version() -> str:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "none"


def cache_key(path: str, *, model_args: dict[str, str], seq_len: int, dtype: str) -> str | None:
    """Hash of everything a profile depends on; ``None`` when the file cannot be read (the
    ingestion then reports the problem properly)."""
    try:
        content = Path(path).read_bytes()
    except OSError:
        return None
    digest = hashlib.sha256(content)
    here = Path(__file__).parent
    for name in _CODE_FILES:
        f = here / name
        if f.exists():
            digest.update(f.read_bytes())
    digest.update(json.dumps({"args": dict(sorted(model_args.items())), "seq": seq_len,
                              "dtype": dtype, "torch": _torch_version(),
                              "path": str(Path(path).resolve())}, sort_keys=True).encode())
    return digest.hexdigest()[:24]


def _load(file: Path) -> ModelProfile | None:
    try:
        return ModelProfile.from_dict(json.loads(file.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None  # a damaged entry is simply re-measured


def ingest_model_cached(path: str, *, model_args: dict[str, str] | None = None, seq_len: int,
                        dtype: str = "bf16", use_cache: bool = True) -> ModelProfile:
    """``autosplit.model.ingest.ingest_model`` with the on-disk cache in front of it; a miss
    is ingested in a child process with a time limit (``autosplit.model.isolated``)."""
    args = dict(model_args or {})
    key = cache_key(path, model_args=args, seq_len=seq_len, dtype=dtype) if use_cache else None
    file = cache_dir() / f"ingest-{key}.json" if key else None
    if file is not None and file.exists():
        hit = _load(file)
        if hit is not None and hit.source_file == path:
            return hit
    profile = ingest_isolated(path, model_args=args, seq_len=seq_len, dtype=dtype)
    if file is not None:
        with contextlib.suppress(OSError):  # a read-only home only costs speed
            atomic_write_text(file, json.dumps(asdict(profile)))
    return profile
