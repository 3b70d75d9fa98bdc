"""Measured per-layer costs, with the analytic roofline wherever nothing was measured.

The search asks one question per (unit, chip, micro-batch, TP degree): how long do forward,
backward and recomputation take? Where ``profiles/<chip>/measured/*.csv`` holds a row for that
chip, the unit (its structure key: what decides its cost, see ``structure``; for older rows
its ``layer_kind``), the model's sequence length, the TP degree and the dtype, the answer is
measured (``source="measured"``); otherwise it is the analytic roofline's
(``source="analytic"``), so a plan can say which of its stages rest on measurements.

Micro-batch sizes between two measured ones are interpolated linearly; outside the measured
range the time is scaled in proportion to the micro-batch size from the nearest measured one
(compute-bound layers scale that way; for small memory-bound layers this over-estimates at
larger sizes, which errs on the safe side).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from autosplit.chips.spec import ChipSpec
from autosplit.model.types import LayerProfile, ModelProfile
from autosplit.profiler.status import find_mismatches
from autosplit.profiler.store import ProfileRow, is_layer_profile, profiles_root, read_rows
from autosplit.profiler.structure import unit_structure
from autosplit.protocols.cost import LayerCostProvider, LayerTiming

__all__ = ["MeasuredCosts", "cost_provider_for", "load_measured_rows", "profile_files",
           "interpolate"]

def interpolate(points: Sequence[tuple[int, float]], x: float) -> float:
    """Piecewise-linear through ``points`` (sorted by x); proportional to x outside them."""
    xs = [p[0] for p in points]
    if x <= xs[0]:
        return points[0][1] * x / xs[0]
    if x >= xs[-1]:
        return points[-1][1] * x / xs[-1]
    i = bisect.bisect_left(xs, x)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    if x == x1:
        return y1
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def profile_files(chips: Iterable[str], *, extra_dirs: Sequence[str | Path] = ()
                  ) -> list[tuple[Path, list[ProfileRow]]]:
    """Each layer-profile file that holds rows of ``chips``, with those rows, in reading order.

    Files come from ``profiles/<chip>/measured/`` and ``extra_dirs`` (``*.csv`` directly and in
    ``<chip>/measured/``); rows of other chips are left out, as are files without any.
    """
    wanted = {c.lower() for c in chips}
    files: list[Path] = []
    root = profiles_root()
    for chip in sorted(wanted):
        for base in (root, *map(Path, extra_dirs)):
            folder = base / chip / "measured"
            if folder.is_dir():
                files.extend(sorted(folder.glob("*.csv")))
    for extra in map(Path, extra_dirs):
        if extra.is_dir():
            files.extend(sorted(extra.glob("*.csv")))
        elif extra.is_file():
            files.append(extra)
    out: list[tuple[Path, list[ProfileRow]]] = []
    seen: set[Path] = set()
    for path in files:
        resolved = path.resolve()
        if resolved in seen or not is_layer_profile(path):
            continue
        seen.add(resolved)
        rows = [r for r in read_rows(path) if r.chip.lower() in wanted]
        if rows:
            out.append((path, rows))
    return out


def load_measured_rows(chips: Iterable[str], *, extra_dirs: Sequence[str | Path] = ()
                       ) -> list[ProfileRow]:
    """Layer-profile rows of ``chips`` from ``profiles/<chip>/measured/`` and ``extra_dirs``
    (see ``profile_files``). Later files override earlier ones for the same shape."""
    merged: dict[tuple, ProfileRow] = {}
    for _, rows in profile_files(chips, extra_dirs=extra_dirs):
        merged.update({r.key: r for r in rows})
    return list(merged.values())


class MeasuredCosts:
    """``LayerCostProvider`` answering from measured rows, else from ``fallback``.

    Rows are found by the unit's structure key (what decides its cost, see ``structure``), so
    they survive edits of the model file that leave the work unchanged; rows written before
    rows carried that key are found by ``layer_kind`` or, for the model itself (same
    ``fingerprint``: same file, model arguments, sequence length and dtype), by the name of
    the first unit of that kind, the unit the profiler measured. ``mismatches`` are the
    profiles of this model that exist but are not used (see ``status``).
    """

    def __init__(self, rows: Iterable[ProfileRow], *, seq_len: int,
                 fallback: LayerCostProvider | None = None,
                 model: ModelProfile | None = None,
                 mismatches: Sequence[object] = ()) -> None:
        if fallback is None:
            from autosplit.cost.analytic import AnalyticCosts

            fallback = AnalyticCosts()
        self.fallback = fallback
        self.seq_len = seq_len
        self.mismatches = tuple(mismatches)
        fingerprint = model.fingerprint if model is not None else ""
        self._fingerprint = fingerprint
        self._structures: dict[LayerProfile, str] = {}
        self._first_unit: dict[str, str] = {}
        if model is not None:
            for layer in model.layers:
                self._first_unit.setdefault(layer.layer_kind or layer.name, layer.name)
        by_structure: dict[tuple, dict[int, ProfileRow]] = {}
        by_kind: dict[tuple, dict[int, ProfileRow]] = {}
        by_unit: dict[tuple, dict[int, ProfileRow]] = {}
        for row in rows:
            if row.seq_len != seq_len:
                continue
            if row.structure:
                by_structure.setdefault((row.chip.lower(), row.structure, row.tp, row.dtype),
                                        {})[row.micro_batch] = row
                continue
            key = (row.chip.lower(), row.layer_kind, row.tp, row.dtype)
            slot = by_kind.setdefault(key, {})
            old = slot.get(row.micro_batch)
            # Prefer a row of this very model (same fingerprint) over a shared layer kind.
            if old is None or (fingerprint and row.model_fingerprint == fingerprint
                               and old.model_fingerprint != fingerprint):
                slot[row.micro_batch] = row
            if fingerprint and row.model_fingerprint == fingerprint:
                unit_key = (row.chip.lower(), row.unit, row.tp, row.dtype)
                by_unit.setdefault(unit_key, {})[row.micro_batch] = row
        self._by_structure = {k: [v[mb] for mb in sorted(v)] for k, v in by_structure.items()}
        self._by_kind = {k: [v[mb] for mb in sorted(v)] for k, v in by_kind.items()}
        self._by_unit = {k: [v[mb] for mb in sorted(v)] for k, v in by_unit.items()}

    def covers(self, layer: LayerProfile, chip: ChipSpec, *, tp: int, dtype: str) -> bool:
        """Whether a measurement exists for this unit on this chip."""
        return self._rows(layer, chip, tp, dtype) is not None

    def _rows(self, layer: LayerProfile, chip: ChipSpec, tp: int, dtype: str
              ) -> list[ProfileRow] | None:
        kind = layer.layer_kind or layer.name
        unit = self._first_unit.get(kind)
        structure = self._structures.get(layer)
        if structure is None:
            structure = self._structures[layer] = unit_structure(layer).key
        for name in (chip.name, *chip.aliases):
            chip_key = name.lower()
            rows = (self._by_structure.get((chip_key, structure, tp, dtype))
                    or self._by_kind.get((chip_key, kind, tp, dtype)))
            if not rows and unit is not None:
                rows = self._by_unit.get((chip_key, unit, tp, dtype))
            if rows:
                return rows
        return None

    def layer_timing(self, layer: LayerProfile, chip: ChipSpec, *, micro_batch: int, tp: int,
                     dtype: str) -> LayerTiming:
        rows = self._rows(layer, chip, tp, dtype)
        if rows is None:
            return self.fallback.layer_timing(layer, chip, micro_batch=micro_batch, tp=tp,
                                              dtype=dtype)
        fwd = interpolate([(r.micro_batch, r.fwd_s) for r in rows], micro_batch)
        bwd = interpolate([(r.micro_batch, r.bwd_s) for r in rows], micro_batch)
        rc_rows = [r for r in rows if not math.isnan(r.recompute_bwd_s)]
        if rc_rows:
            rc_bwd = interpolate([(r.micro_batch, r.recompute_bwd_s) for r in rc_rows],
                                 micro_batch)
            recompute = max(rc_bwd - bwd, 0.0)
        else:
            recompute = fwd
        mem_rows = [r for r in rows
                    if math.isfinite(r.peak_bwd_bytes) and math.isfinite(r.activation_bytes)]
        extra = (max(0.0, interpolate([(r.micro_batch, r.peak_bwd_bytes - r.activation_bytes)
                                       for r in mem_rows], micro_batch))
                 if mem_rows else None)
        return LayerTiming(fwd_s=fwd, bwd_s=bwd, recompute_s=recompute, source="measured",
                           backward_extra_bytes=extra)


def cost_provider_for(*, model: ModelProfile, chips: Iterable[str],
                      extra_dirs: Sequence[str | Path] = ()) -> LayerCostProvider:
    """The measured provider for ``model`` on ``chips`` (analytic where nothing is measured).

    ``chips`` are the chip names of the cluster (canonical names; aliases of the chip specs
    are matched at lookup time too).
    """
    files = profile_files(list(chips), extra_dirs=extra_dirs)
    merged: dict[tuple, ProfileRow] = {}
    for _, rows in files:
        merged.update({r.key: r for r in rows})
    return MeasuredCosts(list(merged.values()), seq_len=model.seq_len, model=model,
                         mismatches=find_mismatches(model, files))
