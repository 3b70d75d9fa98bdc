"""Summarise a run of run_h200_reprofile.sh as markdown: fault check, profiles under load
against the same chip alone, spreads and rounds, and the neighbours' training rate.

    python3 experiments/profiling/analyze_reprofile.py $OUT/reprofile > analysis.md

CPU only; reads the run's folder, writes nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from autosplit.profiler.store import ProfileRow, read_rows

__all__ = ["main"]


def _rows(folder: Path) -> dict[tuple[str, str, int], ProfileRow]:
    """(chip, unit, micro-batch) → TP-1 row, for every profile CSV under ``folder``."""
    out: dict[tuple[str, str, int], ProfileRow] = {}
    for csv in sorted(folder.glob("*/measured/*.csv")):
        for row in read_rows(csv):
            if row.tp == 1:
                out[(row.chip, row.unit, row.micro_batch)] = row
    return out


def _probe(run: Path) -> list[str]:
    lines = ["## GEMM fault check (mps_gemm_probe.py, GPT-1.3B shapes, all shares at once)", "",
             "| label | SM % | SMs | calls | non-finite | wrong | errors | first bad |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    probe = run / "probe.jsonl"
    for text in (probe.read_text().splitlines() if probe.is_file() else []):
        r = json.loads(text)
        lines.append(f"| {r['label']} | {r['mps_percentage']} | {r['sm_count']} | {r['calls']} "
                     f"| {r['nonfinite']} | {r['wrong']} | {r['errors']} | "
                     f"{r['first_bad'] or ''} |")
    return lines


def _compare(run: Path) -> list[str]:
    loaded = {**_rows(run / "profiles"), **_rows(run / "suspect-profiles")}
    idle = {**_rows(run / "idle"), **_rows(run / "suspect-idle")}
    lines = ["## Under the neighbours' training load vs alone", "",
             "fwd and bwd in ms; `vs alone`: (fwd + bwd) under load over alone, minus 1.", "",
             "| chip | unit | mb | fwd | bwd | spread | rounds | timer | alone fwd+bwd | "
             "vs alone |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key in sorted(k for k in loaded if not k[0].startswith("h200") or "mps" in k[0]):
        r = loaded[key]
        alone = idle.get(key)
        total = r.fwd_s + r.bwd_s
        ref = f"{(alone.fwd_s + alone.bwd_s) * 1e3:.3f}" if alone else ""
        ratio = f"{total / (alone.fwd_s + alone.bwd_s) - 1:+.1%}" if alone else ""
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {r.fwd_s * 1e3:.3f} | "
                     f"{r.bwd_s * 1e3:.3f} | {r.spread:.1%} | {r.rounds} | {r.timer} | {ref} | "
                     f"{ratio} |")
    return lines


def _neighbours(run: Path) -> list[str]:
    lines = ["## Neighbour load (profile-load)", "", "| log | last line |", "| --- | --- |"]
    for log in sorted(run.glob("load-*-for-*.log")):
        text = log.read_text().strip().splitlines()
        lines.append(f"| {log.name} | {text[-1] if text else '(empty)'} |")
    return lines


def main(run: str) -> None:
    folder = Path(run)
    coverage = folder / "coverage.txt"
    parts = [f"# Re-profile run {folder}", "", "## Committed GPT-1.3B rows", "", "```",
             coverage.read_text().strip() if coverage.is_file() else "(no coverage.txt)", "```",
             "", *_probe(folder), "", *_compare(folder), "", *_neighbours(folder)]
    print("\n".join(parts))


if __name__ == "__main__":
    main(sys.argv[1])
