"""Which units of a model the profile store measures on each chip, and which profiles it skips.

    python3 experiments/profiling/profile_coverage.py experiments/models/gpt.py -a size=1.3b \
        --chips H200,h200-mps25,h200-mps75 [--seq-len 2048] [--dtype bf16] [--chips-dir DIR]

Prints one line per chip (units measured of all, at TP 1) and every profile of the model that
exists but is not used, with the reason (``autosplit.profiler.status``). Exit code 1 when some
chip has a unit without a measurement, so a script can re-profile only what is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autosplit.chips.library import load_chip_library, resolve_chip
from autosplit.cli._common import parse_model_args
from autosplit.model.ingest import ingest_model
from autosplit.profiler.provider import cost_provider_for
from autosplit.profiler.status import profile_notes

__all__ = ["main"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("-a", "--model-arg", action="append", default=[])
    parser.add_argument("--chips", required=True, help="comma-separated chip names")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--chips-dir", action="append", default=[], type=Path)
    ns = parser.parse_args(argv)
    library = load_chip_library(extra_dirs=ns.chips_dir)
    chips = [resolve_chip(name, library, field="--chips") for name in ns.chips.split(",")]
    model = ingest_model(ns.model, model_args=parse_model_args(ns.model_arg),
                         seq_len=ns.seq_len, dtype=ns.dtype)
    costs = cost_provider_for(model=model, chips=[c.name for c in chips],
                              extra_dirs=ns.chips_dir)
    complete = True
    for chip in chips:
        covered = [u.name for u in model.layers
                   if costs.covers(u, chip, tp=1, dtype=ns.dtype)]
        complete &= len(covered) == model.num_layers
        print(f"{chip.name}: {len(covered)} of {model.num_layers} units of {model.name} "
              "measured at TP 1")
    for note in profile_notes(costs):
        print(f"note: {note}")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
