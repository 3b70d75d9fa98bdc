"""The profile store: measured per-layer figures as plain CSV under ``profiles/<chip>/measured/``.

CSV, one row per (chip, layer kind, sequence length, micro-batch, TP degree, dtype), because a
user should be able to open, diff, plot (``pandas.read_csv``) and hand-edit measurements without
autosplit. Every row carries the command and date that produced it, so a plan that rests on a
number can be traced back to the run that measured it. docs/profiles.md documents the columns.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from autosplit.atomic import atomic_write_text
from autosplit.errors import BadInputError
from autosplit.inputs.files import read_input_text

__all__ = ["ProfileRow", "COLUMNS", "REQUIRED_COLUMNS", "write_rows", "read_rows",
           "is_layer_profile", "merge_rows", "profiles_root"]


@dataclass(frozen=True)
class ProfileRow:
    """One measured (or imported) layer kind at one shape.

    Times are seconds for one micro-batch on one device of a TP group, medians over
    ``repeats`` runs; ``spread`` is the interquartile range over the median (0.02 = 2 %).
    ``recompute_bwd_s`` is the backward of a checkpointed unit: forward rerun plus backward.
    ``activation_bytes`` is what the unit keeps for its backward per micro-batch;
    ``peak_bwd_bytes`` the highest memory above the level before its forward while its backward
    runs. NaN marks a figure the source did not measure.
    """

    chip: str
    model_fingerprint: str
    layer_kind: str
    unit: str
    seq_len: int
    micro_batch: int
    tp: int
    dtype: str
    fwd_s: float
    bwd_s: float
    recompute_bwd_s: float
    activation_bytes: float
    peak_bwd_bytes: float
    repeats: int
    spread: float
    method: str
    device: str
    command: str
    date: str
    #: The unit's cost-deciding figures when measured (``structure.UnitStructure.key``): how
    #: a row is found again after the model file changed; empty in rows written before it.
    structure: str = ""
    #: Sets of ``repeats`` runs taken to bring ``spread`` under the target (0: not recorded).
    rounds: int = 0
    #: ``device-events`` or ``host-clock`` (see ``device.Stopwatch``); empty: not recorded.
    timer: str = ""
    #: What the device's other clients ran while this row was measured (``profile --load``);
    #: empty: nothing recorded (an unshared device, or rows written before the column).
    load: str = ""

    @property
    def key(self) -> tuple[str, str, int, int, int, str]:
        """Identity of the measured shape (later rows with the same key replace earlier)."""
        return (self.chip.lower(), self.layer_kind, self.seq_len, self.micro_batch, self.tp,
                self.dtype)


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ProfileRow))
#: Columns a file must have to be read as a layer profile; the rest default.
REQUIRED_COLUMNS: tuple[str, ...] = ("chip", "layer_kind", "seq_len", "micro_batch", "tp",
                                     "dtype", "fwd_s", "bwd_s")
_INT_COLUMNS = {"seq_len", "micro_batch", "tp", "repeats", "rounds"}
_FLOAT_COLUMNS = {"fwd_s", "bwd_s", "recompute_bwd_s", "activation_bytes", "peak_bwd_bytes",
                  "spread"}
_DTYPES = ("bf16", "fp16", "fp32")


def profiles_root() -> Path:
    """The chip library's directory: ``$AUTOSPLIT_PROFILES`` or ``profiles/`` of the checkout."""
    env = os.environ.get("AUTOSPLIT_PROFILES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "profiles"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return repr(value)
    return str(value)


def write_rows(rows: Sequence[ProfileRow], path: str | Path) -> Path:
    """Write ``rows`` to ``path`` atomically (temp file, then rename), sorted for stable diffs."""
    path = Path(path)
    ordered = sorted(rows, key=lambda r: (r.chip, r.seq_len, r.dtype, r.unit, r.layer_kind,
                                          r.tp, r.micro_batch))
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in ordered:
        data = asdict(row)
        writer.writerow([_fmt(data[c]) for c in COLUMNS])
    atomic_write_text(path, buf.getvalue())
    return path


def is_layer_profile(path: str | Path) -> bool:
    """Whether the CSV at ``path`` has the layer-profile header (other CSVs are skipped; so is
    anything that is not a regular file, which could block or never end)."""
    if not Path(path).is_file():
        return False
    try:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return all(c in header for c in REQUIRED_COLUMNS)


def _parse(value: str, column: str, *, file: str, line: int) -> object:
    text = value.strip()
    try:
        if column in _INT_COLUMNS:
            return int(float(text)) if text else 0
        if column in _FLOAT_COLUMNS:
            return float(text) if text else math.nan
    except ValueError as exc:
        raise BadInputError(f"line {line}: '{value}' is not a number", file=file, field=column,
                            fix="write plain decimal numbers (seconds, bytes)") from exc
    return text


def read_rows(path: str | Path) -> list[ProfileRow]:
    """Read and validate one profile CSV; ``BadInputError`` names the line and column."""
    name = str(path)
    text = read_input_text(path, what="profile CSV")
    try:
        with io.StringIO(text, newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise BadInputError(f"missing column(s) {', '.join(missing)}", file=name,
                                    fix=f"a layer profile needs {', '.join(REQUIRED_COLUMNS)}")
            rows = []
            for line, raw in enumerate(reader, start=2):
                values = {c: _parse(raw.get(c) or "", c, file=name, line=line) for c in COLUMNS}
                if not values["method"]:
                    values["method"] = "measured"
                row = ProfileRow(**values)  # type: ignore[arg-type]
                _validate(row, file=name, line=line)
                rows.append(row)
    except csv.Error as exc:
        raise BadInputError(f"not a CSV table ({exc})", file=name,
                            fix="pass a profile CSV written by `autosplit profile`") from None
    return rows


def _validate(row: ProfileRow, *, file: str, line: int) -> None:
    def bad(field: str, message: str, fix: str) -> BadInputError:
        return BadInputError(f"line {line}: {message}", file=file, field=field, fix=fix)

    if not row.chip or not row.layer_kind:
        raise bad("chip" if not row.chip else "layer_kind", "empty", "name the chip and kind")
    if row.dtype not in _DTYPES:
        raise bad("dtype", f"unknown dtype '{row.dtype}'", f"use one of {', '.join(_DTYPES)}")
    for column in ("seq_len", "micro_batch", "tp"):
        if getattr(row, column) < 1:
            raise bad(column, "must be a positive integer", "measure at a real shape")
    for column in ("fwd_s", "bwd_s"):
        value = getattr(row, column)
        if not (value > 0 and math.isfinite(value)):
            raise bad(column, f"time {value} must be positive", "re-measure this row")
    if not math.isnan(row.recompute_bwd_s) and row.recompute_bwd_s < 0:
        raise bad("recompute_bwd_s", "negative time", "re-measure this row")


def merge_rows(old: Iterable[ProfileRow], new: Iterable[ProfileRow]) -> list[ProfileRow]:
    """Rows of ``old`` overridden by rows of ``new`` with the same key."""
    merged = {r.key: r for r in old}
    merged.update({r.key: r for r in new})
    return list(merged.values())
