"""The table of ``profile_bias_h200.sh``: each share's layer profile, summed over the model's
units, against the model's training step timed whole — both alone and next to the others.

The step (``contention_bench.py``) is forward, loss and backward of one micro-batch, the
units' forward and backward are what ``autosplit profile`` times piece by piece; the profile
predicts the step as ``pre + layers x block + post``. If the profile carries the neighbours'
load, its loaded sum tracks the loaded step; if its ratio to the step differs between shares,
the profile is biased by the chip's speed, not by the load.

    python3 experiments/runtime/profile_bias.py RESULT_DIR layers=8 [other KEY=VALUE words]
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def _units_ms(path: Path, layers: int) -> float | None:
    """Forward + backward milliseconds of one micro-batch over every unit of the model."""
    if not path.exists():
        return None
    total = 0.0
    for row in csv.DictReader(path.open()):
        if int(row["micro_batch"]) != 1 or int(row["tp"]) != 1:
            continue
        count = layers if row["unit"].startswith(("blocks.", "layers.")) else 1
        total += count * (float(row["fwd_s"]) + float(row["bwd_s"])) * 1e3
    return total


def _cell(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or not b else f"{a / b:.3f}"


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    words = dict(w.split("=", 1) for w in argv[1:])
    layers = int(words.get("layers", "0"))
    data = json.loads((folder / "contention.json").read_text())
    steps: dict[int, dict[str, float]] = {}
    for row in data["rows"]:
        steps.setdefault(row["target"], {})["loaded" if row["load"] else "alone"] = row["ms"]
    print("| share | step alone (ms) | profile alone (ms) | ratio | step loaded (ms) "
          "| profile loaded (ms) | ratio | step loaded / alone | profile loaded / alone |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for share in data["shares"]:
        s = steps.get(share, {})
        pa = _units_ms(folder / f"profile_alone_{share}.csv", layers)
        pl = _units_ms(folder / f"profile_loaded_{share}.csv", layers)

        print(f"| {share} % | {_cell(s.get('alone'))} | {_cell(pa)} | {_ratio(pa, s.get('alone'))} "
              f"| {_cell(s.get('loaded'))} | {_cell(pl)} | {_ratio(pl, s.get('loaded'))} "
              f"| {_ratio(s.get('loaded'), s.get('alone'))} | {_ratio(pl, pa)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
