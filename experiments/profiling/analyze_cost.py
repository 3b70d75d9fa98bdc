"""Per-layer table of the compute model against measured layer profiles; installs surfaces.

For every measured layer-profile CSV (``autosplit profile`` output) under ``--results``, and
every row of a transformer block at TP 1, it prints the measured forward and backward and two
predictions of them:

- *before*: the one-number roofline (``compute_efficiency`` and ``memory_efficiency`` of the
  library's chip file, the model of autosplit before the compute surface);
- *after*: the per-kernel model (``autosplit.cost.analytic``) with the chip's compute surface:
  the surface fitted by the run where the results folder has one
  (``<results>/<chip>-chip.yaml``, written by ``profile-chip --write-chip``), else the chip's
  surface in the library (the default one for a chip never measured).

Usage, from the repository root (CPU only):

    python experiments/profiling/analyze_cost.py --results DIR > DIR/cost-table.md
    python experiments/profiling/analyze_cost.py --results DIR --install   # surfaces -> profiles/

``--install`` copies each fitted ``compute_surface`` (and, where ``--links`` ran over the
chip's own collective library, the intra-node latency and bandwidth with their provenance)
from ``<results>/<chip>-chip.yaml``
into ``profiles/<chip>/chip.yaml``, replacing the keys it had and leaving the rest of the file,
comments included, as it was.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from autosplit.chips.library import load_chip_library, parse_chip, resolve_chip
from autosplit.chips.spec import ChipSpec
from autosplit.cost.analytic import AnalyticCosts, roofline_time
from autosplit.model.ingest import ingest_model
from autosplit.model.types import LayerProfile

REPO = Path(__file__).resolve().parents[2]
MODELS = {"gpt": "experiments/models/gpt.py", "llama": "experiments/models/llama.py"}
INSTALLED_KEYS = ("compute_surface", "intra_node_latency_us", "intra_node_bw_gbs")


@dataclass(frozen=True)
class Row:
    """One block at one micro-batch: measured and predicted seconds."""

    chip: str
    model: str
    micro_batch: int
    fwd: float
    bwd: float
    fwd_before: float
    bwd_before: float
    fwd_after: float
    bwd_after: float
    surface: str


def _model_of(command: str) -> tuple[str, dict[str, str], int]:
    path = next((p for p in MODELS.values() if p in command), None)
    if path is None:
        raise ValueError(f"no known model in the profile's command: {command}")
    args = dict(re.findall(r"--model-arg=(\w+)=(\S+)", command))
    seq = re.search(r"--seq-len (\d+)", command)
    return path, args, int(seq.group(1)) if seq else 2048


def _fitted_chip(results: Path, name: str, library: dict[str, ChipSpec]) -> ChipSpec:
    """The chip as the run fitted it (its chip file in the results), else the library's."""
    path = results / f"{name.lower()}-chip.yaml"
    if path.is_file():
        data = yaml.safe_load(path.read_text())
        if data.get("compute_surface"):
            return parse_chip(data, file=str(path))
    return resolve_chip(name, library)


def _before(layer: LayerProfile, chip: ChipSpec, mb: int) -> tuple[float, float]:
    """The one-number roofline (autosplit's model before the compute surface)."""
    fwd = roofline_time(mb * layer.fwd_flops, layer.param_bytes + mb * layer.fwd_bytes, chip,
                        "bf16")
    bwd = roofline_time(mb * layer.bwd_flops, 2.0 * layer.param_bytes + 2.0 * mb
                        * layer.fwd_bytes, chip, "bf16")
    return fwd, bwd


def table_rows(results: Path) -> list[Row]:
    library = load_chip_library()
    costs = AnalyticCosts()
    rows: list[Row] = []
    for csv in sorted(results.glob("*.csv")):
        frame = pd.read_csv(csv)
        if "unit" not in frame.columns or "fwd_s" not in frame.columns:
            continue  # a chip benchmark, a sweep or a link table
        frame = frame[(frame["tp"] == 1) & frame["unit"].str.contains(r"\.\d+$", regex=True)]
        if frame.empty:
            continue
        path, args, seq = _model_of(str(frame["command"].iloc[0]))
        model = ingest_model(str(REPO / path), model_args=args, seq_len=seq)
        name = f"{Path(path).stem}-{args.get('size', '?')}"
        for (chip_name, mb), group in frame.groupby(["chip", "micro_batch"], sort=True):
            unit = group["unit"].iloc[0]
            layer = next(layer for layer in model.layers if layer.name == unit)
            lib_chip = resolve_chip(str(chip_name), library)
            fitted = _fitted_chip(results, str(chip_name), library)
            fb, bb = _before(layer, lib_chip, int(mb))
            after = costs.layer_timing(layer, fitted, micro_batch=int(mb), tp=1, dtype="bf16")
            rows.append(Row(chip=str(chip_name), model=name, micro_batch=int(mb),
                            fwd=float(group["fwd_s"].median()),
                            bwd=float(group["bwd_s"].median()), fwd_before=fb, bwd_before=bb,
                            fwd_after=after.fwd_s, bwd_after=after.bwd_s,
                            surface=fitted.compute_surface().confidence))
    return rows


def _pct(pred: float, meas: float) -> str:
    return f"{(pred / meas - 1) * 100:+.1f}%"


def markdown(rows: list[Row]) -> str:
    out = ["| chip | model block | mb | measured fwd / bwd (ms) | before: fwd, bwd | "
           "after: fwd, bwd | surface |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.chip} | {r.model} | {r.micro_batch} | {r.fwd * 1e3:.3f} / "
                   f"{r.bwd * 1e3:.3f} | {_pct(r.fwd_before, r.fwd)}, "
                   f"{_pct(r.bwd_before, r.bwd)} | {_pct(r.fwd_after, r.fwd)}, "
                   f"{_pct(r.bwd_after, r.bwd)} | {r.surface} |")
    if rows:
        def med(key: str) -> str:
            errs = [abs(getattr(r, key) / getattr(r, key.split("_")[0]) - 1) for r in rows]
            return f"{statistics.median(errs) * 100:.1f}% (worst {max(errs) * 100:.1f}%)"
        out.append("")
        out.append(f"Median |error| before: forward {med('fwd_before')}, backward "
                   f"{med('bwd_before')}; after: forward {med('fwd_after')}, backward "
                   f"{med('bwd_after')}.")
    return "\n".join(out) + "\n"


def _replace_keys(text: str, updates: dict) -> str:
    """``text`` (a chip.yaml) without its top-level ``INSTALLED_KEYS`` blocks, plus ``updates``
    appended as YAML; comments and other keys stay as written."""
    lines = text.splitlines()
    kept: list[str] = []
    skipping = False
    for line in lines:
        top = re.match(r"^([A-Za-z_][\w]*):", line)
        if top:
            skipping = top.group(1) in updates
        elif line and not line.startswith((" ", "#", "\t")):
            skipping = False
        if not skipping:
            kept.append(line)
    body = "\n".join(kept).rstrip("\n") + "\n"
    return body + yaml.safe_dump(updates, sort_keys=False, allow_unicode=True, width=100)


def install(results: Path) -> list[Path]:
    """Copy fitted surfaces (and link fits) into ``profiles/<chip>/chip.yaml``."""
    written = []
    for fitted in sorted(results.glob("*-chip.yaml")):
        data = yaml.safe_load(fitted.read_text()) or {}
        target = REPO / "profiles" / str(data.get("name", "")).lower() / "chip.yaml"
        if not data.get("compute_surface") or not target.is_file():
            continue
        updates = {k: data[k] for k in INSTALLED_KEYS[:1] if k in data}
        repo = yaml.safe_load(target.read_text())
        provenance = dict(repo.get("provenance") or {})
        library = str(repo.get("collective_library", "")).lower()
        for key in INSTALLED_KEYS[1:]:
            note = (data.get("provenance") or {}).get(key)
            # Only a link measured over the chip's own collective library describes its
            # intra-node link (gloo between two host processes is not NVLink).
            if (key in data and note and note.get("confidence") == "measured"
                    and str(note.get("source", "")).lower().startswith(library)):
                updates[key] = data[key]
                provenance[key] = note
        if provenance != (repo.get("provenance") or {}):
            updates["provenance"] = provenance
        text = _replace_keys(target.read_text(), updates)
        check = yaml.safe_load(text)
        parse_chip(check, file=str(target))  # refuse to write a file the library rejects
        target.write_text(text)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True,
                        help="folder with the run's CSVs and <chip>-chip.yaml files")
    parser.add_argument("--install", action="store_true",
                        help="copy fitted surfaces into profiles/<chip>/chip.yaml")
    ns = parser.parse_args(argv)
    if not ns.results.is_dir():
        print(f"{ns.results}: not a folder (give the run's results folder)", file=sys.stderr)
        return 2
    if ns.install:
        for path in install(ns.results):
            print(f"installed the fitted surface into {path}")
        return 0
    sys.stdout.write(markdown(table_rows(ns.results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

