"""Compare the H200 measurements (run_h200.sh) with the analytic model and with ingestion.

Run from the repository root (CPU only, about 20 s):

    .venv/bin/python experiments/profiling/analyze_h200.py \
        > experiments/profiling/results/h200/analysis.md

Sections: chip micro-benchmarks; analytic vs measured forward+backward per unit kind before and
after calibrating the H200's efficiencies from the GEMM / copy benchmark; measured activation
memory vs ingestion's estimate; the MPS "chips" speed ratio; repeat-twice agreement; the
tensor-parallel estimate's scaling.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import pandas as pd

from autosplit.chips.library import load_chip_library, resolve_chip
from autosplit.cost.analytic import AnalyticCosts
from autosplit.model.ingest import ingest_model
from autosplit.profiler.chip_bench import best_rate, read_bench

RESULTS = Path("experiments/profiling/results/h200")
MODELS = {"gpt-1.3b": ("experiments/models/gpt.py", "1.3b"),
          "llama-7b": ("experiments/models/llama.py", "7b")}


def _csv(name: str) -> pd.DataFrame:
    return pd.read_csv(RESULTS / name)


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def chip_section() -> dict[str, float]:
    print("## Chip micro-benchmarks (median of 10 after 3 warm-up)\n")
    print("| chip | best bf16 GEMM TFLOPS (n) | GEMM 4096 | copy GB/s (r+w) | h2d GB/s "
          "| d2h GB/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    rates = {}
    for chip in ("h200", "h200-mps75", "h200-mps25"):
        res = read_bench(RESULTS / f"{chip}-chip-bench.csv")
        g = best_rate(res, "gemm", "bf16")
        g4096 = next(r.rate for r in res if r.benchmark == "gemm" and r.size == 4096)
        c, h, d = (best_rate(res, k) for k in ("copy", "h2d", "d2h"))
        rates[chip] = g.rate
        print(f"| {chip} | {g.rate:.0f} ({g.size}) | {g4096:.0f} | {c.rate:.0f} | {h.rate:.1f} "
              f"| {d.rate:.1f} |")
    print(f"\nMPS GEMM ratio 75 % : 25 % = {rates['h200-mps75'] / rates['h200-mps25']:.2f} "
          f"(the two clients ran concurrently; gpu-emulation.md saw 569 : 203 = 2.80).\n")
    return rates


def analytic_section() -> None:
    library = load_chip_library()
    shipped = resolve_chip("H200", library)
    bench = read_bench(RESULTS / "h200-chip-bench.csv")
    gemm = best_rate(bench, "gemm", "bf16").rate
    copy = best_rate(bench, "copy").rate
    calibrated = dataclasses.replace(shipped, compute_efficiency=gemm / shipped.tflops_bf16,
                                     memory_efficiency=min(1.0, copy / shipped.memory_bw_gbs))
    default = dataclasses.replace(shipped, compute_efficiency=0.6, memory_efficiency=0.8)
    variants = [("default 0.60/0.80", default),
                (f"shipped {shipped.compute_efficiency:.2f}/{shipped.memory_efficiency:.2f}",
                 shipped),
                (f"calibrated {calibrated.compute_efficiency:.3f}/"
                 f"{calibrated.memory_efficiency:.3f}", calibrated)]
    costs = AnalyticCosts()
    print("## Analytic vs measured forward+backward on the H200 (tp=1)\n")
    print("Error = analytic / measured - 1 (negative: the roofline is optimistic). Efficiencies "
          "are compute/memory. 'calibrated' = this run's best bf16 GEMM "
          f"({gemm:.0f} TFLOPS) / 989 and copy ({copy:.0f} GB/s) / 4800.\n")
    header = "| model | unit | mb | measured ms | " + " | ".join(v for v, _ in variants) + " |"
    print(header)
    print("|" + " --- |" * (4 + len(variants)))
    totals: dict[str, list[list[float]]] = {}
    for model, (path, size) in MODELS.items():
        profile = ingest_model(path, model_args={"size": size}, seq_len=2048, dtype="bf16")
        df = _csv(f"h200-{model}.csv")
        df = df[df.tp == 1]
        kinds = {}
        for layer in profile.layers:
            kinds.setdefault(layer.name if layer.kind != "block" else "block", layer)
        counts = {"pre": 1, "block": sum(1 for u in profile.layers if u.kind == "block"),
                  "post": 1}
        for mb in (1, 2, 4):
            whole_measured = 0.0
            whole = [0.0] * len(variants)
            for label, layer in kinds.items():
                unit = layer.name
                row = df[(df.unit == unit) & (df.micro_batch == mb)].iloc[0]
                measured = row.fwd_s + row.bwd_s
                errs = []
                for i, (_, chip) in enumerate(variants):
                    t = costs.layer_timing(layer, chip, micro_batch=mb, tp=1, dtype="bf16")
                    errs.append((t.fwd_s + t.bwd_s) / measured - 1)
                    whole[i] += counts[label] * (t.fwd_s + t.bwd_s)
                whole_measured += counts[label] * measured
                print(f"| {model} | {label} | {mb} | {measured * 1e3:.3f} | "
                      + " | ".join(_pct(e) for e in errs) + " |")
            errs = [w / whole_measured - 1 for w in whole]
            totals.setdefault(model, []).append(errs)
            print(f"| {model} | **whole model** | {mb} | {whole_measured * 1e3:.2f} | "
                  + " | ".join(f"**{_pct(e)}**" for e in errs) + " |")
    print("\nMean absolute whole-model error over micro-batches 1, 2, 4:\n")
    for model, rows in totals.items():
        means = [statistics.mean(abs(r[i]) for r in rows) for i in range(len(variants))]
        print(f"- {model}: " + ", ".join(f"{v}: {m * 100:.1f}%" for (v, _), m in
                                          zip(variants, means, strict=True)))
    print()


def memory_section() -> None:
    print("## Activation memory: measured (CUDA allocator) vs ingestion estimate\n")
    print("Measured = bytes still allocated after the unit's forward with its graph kept and "
          "its output dropped, plus its input when autograd saved it. Estimate = "
          "LayerProfile.activation_bytes x micro-batch.\n")
    print("| model | unit | mb | measured MiB | estimate MiB | difference |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model, (path, size) in MODELS.items():
        profile = ingest_model(path, model_args={"size": size}, seq_len=2048, dtype="bf16")
        by_name = {u.name: u for u in profile.layers}
        df = _csv(f"h200-{model}.csv")
        df = df[df.tp == 1]
        for _, row in df.sort_values(["micro_batch", "unit"]).iterrows():
            est = by_name[row.unit].activation_bytes * row.micro_batch
            print(f"| {model} | {row.unit} | {row.micro_batch} | "
                  f"{row.activation_bytes / 2**20:.2f} | {est / 2**20:.2f} | "
                  f"{_pct(row.activation_bytes / est - 1) if est else 'n/a'} |")
    print()


def mps_section() -> None:
    print("## MPS chips: per-unit forward+backward, concurrent clients\n")
    print("| model | unit | mb | alone ms | 75 % ms | 25 % ms | 25/75 | 75/alone | 25/alone |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    ratios = []
    for model in MODELS:
        alone = _csv(f"h200-{model}.csv")
        alone = alone[alone.tp == 1]
        fast = _csv(f"h200-mps75-{model}.csv")
        slow = _csv(f"h200-mps25-{model}.csv")
        for _, row in alone.sort_values(["micro_batch", "unit"]).iterrows():
            key = (fast.unit == row.unit) & (fast.micro_batch == row.micro_batch)
            f = fast[key].iloc[0]
            s = slow[(slow.unit == row.unit) & (slow.micro_batch == row.micro_batch)].iloc[0]
            a, tf, ts = row.fwd_s + row.bwd_s, f.fwd_s + f.bwd_s, s.fwd_s + s.bwd_s
            if row.unit not in ("pre",):
                ratios.append(ts / tf)
            print(f"| {model} | {row.unit} | {row.micro_batch} | {a * 1e3:.2f} | "
                  f"{tf * 1e3:.2f} | {ts * 1e3:.2f} | {ts / tf:.2f} | {tf / a:.2f} | "
                  f"{ts / a:.2f} |")
    print(f"\nMedian 25 %/75 % time ratio over blocks and heads: {statistics.median(ratios):.2f}\n")


def repeat_section() -> None:
    print("## Repeat-twice agreement (gpt-1.3b, same command run twice in a row)\n")
    print("| unit | mb | fwd | bwd | rc+bwd |")
    print("| --- | --- | --- | --- | --- |")
    first = _csv("h200-gpt-1.3b.csv")
    first = first[first.tp == 1]
    second = _csv("h200-gpt-1.3b-repeat.csv")
    worst = []
    for _, a in first.sort_values(["micro_batch", "unit"]).iterrows():
        b = second[(second.unit == a.unit) & (second.micro_batch == a.micro_batch)].iloc[0]
        d = [b[c] / a[c] - 1 for c in ("fwd_s", "bwd_s", "recompute_bwd_s")]
        worst.append((a.unit, max(abs(x) for x in d)))
        print(f"| {a.unit} | {a.micro_batch} | " + " | ".join(_pct(x) for x in d) + " |")
    within = sum(1 for _, w in worst if w <= 0.03)
    print(f"\n{within} of {len(worst)} (unit, micro-batch) pairs agree within 3 % on all three "
          "phases.\n")


def tp_section() -> None:
    print("## Tensor-parallel estimate (Linear calls re-timed at 1/tp): time relative to tp=1\n")
    print("| model | unit | mb | tp=2 | tp=4 | tp=8 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model in MODELS:
        df = _csv(f"h200-{model}.csv")
        for (unit, mb), g in df.groupby(["unit", "micro_batch"]):
            base = g[g.tp == 1].iloc[0]
            t1 = base.fwd_s + base.bwd_s
            cells = [f"{(r.fwd_s + r.bwd_s) / t1:.2f}" for _, r in g[g.tp > 1].sort_values(
                "tp").iterrows()]
            print(f"| {model} | {unit} | {mb} | " + " | ".join(cells) + " |")
    print()


def main() -> None:
    print("# H200 profiling results\n")
    print("Produced by `experiments/profiling/run_h200.sh` (one run) and "
          "`experiments/profiling/analyze_h200.py`. Raw files: this folder.\n")
    chip_section()
    analytic_section()
    memory_section()
    mps_section()
    repeat_section()
    tp_section()


if __name__ == "__main__":
    main()
