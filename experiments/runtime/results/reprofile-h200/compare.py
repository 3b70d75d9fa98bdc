"""Old (fresh weight gradients) against new (accumulating) H200 rows, per unit, mb, tp.
   python experiments/runtime/results/reprofile-h200/compare.py > .../compare.txt"""
import csv
import statistics
from pathlib import Path

HERE = Path(__file__).parent


def load(name: str) -> dict:
    """Rows of one profile by (unit, micro-batch, TP)."""
    with open(HERE / name, newline="") as f:
        return {(r["unit"], int(r["micro_batch"]), int(r["tp"])): r for r in csv.DictReader(f)}


for model in ("gpt-1.3b", "llama-7b"):
    old, new = load(f"{model}-s2048-bf16.old.csv"), load(f"{model}-s2048-bf16.csv")
    same = sum(old[k]["structure"] == new[k]["structure"] for k in new if k in old)
    print(f"## {model}  ({len(new)} new rows, {len(old)} old, {same} with the same structure)")
    print(f"{'unit':9s} {'mb':>2s} {'tp':>2s} | {'old fwd':>8s} {'new fwd':>8s} {'new/old':>7s}"
          f" | {'old bwd':>8s} {'new bwd':>8s} {'new/old':>7s} | {'old spr':>7s} {'new spr':>7s}"
          f" {'rounds':>6s}")
    ratios = {"fwd": [], "bwd": []}
    for k in sorted(new, key=lambda k: (k[0] != "pre", k[0] == "post", k[1], k[2])):
        n, o = new[k], old.get(k)
        if o is None:
            print(f"{k[0]:9s} {k[1]:2d} {k[2]:2d} | no old row")
            continue
        cells = []
        for ph in ("fwd", "bwd"):
            a, b = float(o[f"{ph}_s"]) * 1e3, float(n[f"{ph}_s"]) * 1e3
            ratios[ph].append(b / a)
            cells.append(f"{a:8.3f} {b:8.3f} {b / a:7.3f}")
        print(f"{k[0]:9s} {k[1]:2d} {k[2]:2d} | {cells[0]} | {cells[1]} | "
              f"{float(o['spread']) * 100:6.1f}% {float(n['spread']) * 100:6.1f}% "
              f"{n.get('rounds', ''):>6s}")
    for ph, r in ratios.items():
        print(f"{model} {ph} new/old: median {statistics.median(r):.3f}, "
              f"range {min(r):.3f} .. {max(r):.3f} (n={len(r)})")
    for unit in sorted({k[0] for k in new}):
        parts = []
        for ph in ("fwd", "bwd"):
            r = [float(new[k][f"{ph}_s"]) / float(old[k][f"{ph}_s"])
                 for k in new if k[0] == unit and k in old]
            parts.append(f"{ph} median {statistics.median(r):.3f} "
                         f"({min(r):.3f} .. {max(r):.3f})")
        print(f"  {unit:9s} " + ", ".join(parts))
    print()
