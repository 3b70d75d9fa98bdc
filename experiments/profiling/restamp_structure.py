"""Give profile rows written before the ``structure`` column the structure they were measured at.

Rows without a structure key are found only by ``layer_kind`` (which depends on where the
checkout lay when they were measured) or by the model file's fingerprint (which changes with any
edit of the file, a comment included). This script recovers, for every such row, the exact
version of the model file it was measured of: the git revision of the file named in the row's
``command`` whose fingerprint (file bytes, model arguments, sequence length, dtype) equals the
row's ``model_fingerprint``. That version is ingested and the row gets the structure key of its
unit *as measured*. Where the file has since changed in a way that changes the work, the key
differs from today's and searches report the row as stale instead of using it; where it has
not, searches find the row again.

    .venv/bin/python experiments/profiling/restamp_structure.py [profiles/]

Prints one line per (file, model version); rewrites only the files whose rows it stamped.
Rows whose revision cannot be found are left as they are and named.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from autosplit.model.ingest import ingest_model, model_fingerprint
from autosplit.profiler.status import measured_of
from autosplit.profiler.store import ProfileRow, is_layer_profile, read_rows, write_rows
from autosplit.profiler.structure import unit_structure

__all__ = ["Measured", "main"]


@dataclass(frozen=True)
class Measured:
    """What a row was measured of: the model file as named in its command, its model
    arguments, sequence length, dtype and fingerprint."""

    file: str
    args: tuple[tuple[str, str], ...]
    seq_len: int
    dtype: str
    fingerprint: str


def _measured(row: ProfileRow) -> Measured | None:
    if not row.command.startswith("autosplit profile ") or measured_of(row.command) is None:
        return None
    file = shlex.split(row.command)[2]
    _, args = measured_of(row.command) or ("", {})
    return Measured(file=file, args=tuple(sorted(args.items())), seq_len=row.seq_len,
                    dtype=row.dtype, fingerprint=row.model_fingerprint)


def _revisions(file: str) -> list[str]:
    out = subprocess.run(["git", "log", "--format=%H", "--", file], check=True,
                         capture_output=True, text=True).stdout
    return out.split()


def _version_of(m: Measured, folder: Path) -> tuple[str, Path] | None:
    """The revision (or ``working tree``) of ``m.file`` whose fingerprint is ``m``'s, written
    to ``folder``."""
    candidates = [("working tree", Path(m.file).read_bytes())] if Path(m.file).is_file() else []
    for rev in _revisions(m.file):
        shown = subprocess.run(["git", "show", f"{rev}:{m.file}"], capture_output=True)
        if shown.returncode == 0:
            candidates.append((rev[:10], shown.stdout))
    for label, content in candidates:
        path = folder / f"{label.replace(' ', '-')}" / Path(m.file).name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        if model_fingerprint(str(path), model_args=dict(m.args), seq_len=m.seq_len,
                             dtype=m.dtype) == m.fingerprint:
            return label, path
    return None


def _stamp(csv: Path, folder: Path) -> None:
    rows = read_rows(csv)
    groups: dict[Measured, list[int]] = {}
    for i, row in enumerate(rows):
        m = _measured(row) if not row.structure else None
        if m is not None:
            groups.setdefault(m, []).append(i)
    changed = False
    for m, indices in sorted(groups.items(), key=lambda kv: kv[1][0]):
        found = _version_of(m, folder)
        if found is None:
            print(f"{csv}: no revision of {m.file} gives fingerprint {m.fingerprint}: "
                  f"{len(indices)} rows left without a structure key")
            continue
        label, path = found
        old = ingest_model(str(path), model_args=dict(m.args), seq_len=m.seq_len, dtype=m.dtype)
        now = ingest_model(m.file, model_args=dict(m.args), seq_len=m.seq_len, dtype=m.dtype)
        keys = {u.name: unit_structure(u).key for u in old.layers}
        current = {u.name: unit_structure(u).key for u in now.layers}
        units = sorted({rows[i].unit for i in indices})
        same = [u for u in units if keys.get(u) == current.get(u)]
        for i in indices:
            if rows[i].unit in keys:
                rows[i] = replace(rows[i], structure=keys[rows[i].unit])
                changed = True
        print(f"{csv}: {len(indices)} rows of {m.file} {dict(m.args)} at {label}; units "
              f"{', '.join(units)}; structure as today: {', '.join(same) or 'none'}")
    if changed:
        write_rows(rows, csv)


def main(root: str = "profiles") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for csv in sorted(Path(root).glob("*/measured/*.csv")):
            if is_layer_profile(csv):
                _stamp(csv, Path(tmp))


if __name__ == "__main__":
    main(*sys.argv[1:])
