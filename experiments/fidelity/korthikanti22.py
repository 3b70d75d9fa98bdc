"""Cost the published full-recomputation iteration times of Korthikanti et al. 2022.

Source of every row: Korthikanti et al., "Reducing Activation Recomputation in Large
Transformer Models", MLSys 2023 (arXiv 2205.05198): Table 3 (the four configurations — GPT of
22B, 175B, 530B and 1T parameters, tensor parallel 8, pipeline parallel 1/8/35/64, no data
parallelism, global and micro-batch sizes; sequence 2048, vocabulary 51 200, Selene's DGX A100
80 GB nodes) and Table 5 (end-to-end iteration time, column "Full Recompute": tensor
parallelism without sequence parallelism, every layer recomputed). Section 6 says the 175B
and 530B runs use the interleaved schedule with three chunks per rank.

Each row becomes an autosplit plan (``selene.strategy_plan``) costed by ``evaluate`` (the
schedule's simulation) and compared with the published iteration time. The A100's large-GEMM
efficiency is the figure ``megatron_sc21.py`` fits on the fit rows of Narayanan et al. 2021's
Table 1 — nothing here is fitted to these rows, so all four are test rows. The paper's other
column (sequence parallelism with selective recomputation) is not costed: the cost model
recomputes a unit fully or not at all.

    python experiments/fidelity/korthikanti22.py > experiments/fidelity/results_korthikanti22.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass

from megatron_sc21 import TABLE_1, fit_eta  # noqa: I001 (sibling scripts)
from selene import A100, Strategy, gpt_model, selene, strategy_plan, with_eta

from autosplit.chips.spec import ChipSpec
from autosplit.cost.analytic import AnalyticCosts
from autosplit.plan.evaluate import evaluate_plan


@dataclass(frozen=True)
class Row:
    """One configuration of Table 3 with its Table 5 full-recompute iteration time."""

    name: str
    heads: int
    hidden: int
    layers: int
    strategy: Strategy
    iteration_s: float  # published, full recompute


TABLE_5 = (
    Row("22B", 64, 6144, 48, Strategy(tp=8, pp=1, gpus=8, batch=4, micro_batch=4), 1.42),
    Row("175B", 96, 12288, 96,
        Strategy(tp=8, pp=8, gpus=64, batch=64, micro_batch=1, virtual=3), 18.13),
    Row("530B", 128, 20480, 105,
        Strategy(tp=8, pp=35, gpus=280, batch=280, micro_batch=1, virtual=3), 49.05),
    Row("1T", 160, 25600, 128, Strategy(tp=8, pp=64, gpus=512, batch=512, micro_batch=1),
        94.42),
)


def predicted_s(row: Row, chip: ChipSpec, attention: str) -> tuple[float, float]:
    """The plan's simulated iteration time and its most loaded device's peak memory (GB)."""
    cluster = selene(row.strategy.gpus, chip)
    model = gpt_model(layers=row.layers, hidden=row.hidden, heads=row.heads,
                      attention=attention)
    plan = evaluate_plan(strategy_plan(row.strategy, model, cluster), model=model,
                         cluster=cluster, costs=AnalyticCosts())
    assert plan.prediction is not None
    peak = max(s.memory.total for s in plan.prediction.stages) / 1e9
    return plan.prediction.iteration_s, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eta", type=float, default=None,
                        help="the A100's large-GEMM efficiency (default: fitted on Narayanan "
                             "et al. 2021's fit rows by megatron_sc21.fit_eta)")
    parser.add_argument("--attention", choices=("explicit", "sdpa"), default="explicit",
                        help="the GPT's attention: scores multiplied out, as the published "
                             "runs' Megatron-LM (default), or a fused causal kernel")
    ns = parser.parse_args(argv)
    eta = ns.eta
    if eta is None:
        eta = fit_eta([r for r in TABLE_1 if r.fit], 1, {}, A100.compute_efficiency,
                      ns.attention)
    fitted = with_eta(eta, f"eta_max fitted to Narayanan et al. 2021 Table 1: {eta:.4f}")
    out = [f"A100 eta_max: **{eta:.4f}** (fitted on Narayanan et al. 2021's fit rows; default "
           f"surface {A100.compute_efficiency}); attention {ns.attention}. Every row is a test "
           "row.", "",
           "| model | TP | PP | chunks | GPUs | batch | micro-batch | published s | "
           "predicted, default surface | error | predicted, fitted | error | peak memory GB |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    errors = []
    for r in TABLE_5:
        st = r.strategy
        t0, _ = predicted_s(r, A100, ns.attention)
        t1, peak = predicted_s(r, fitted, ns.attention)
        e0, e1 = t0 / r.iteration_s - 1, t1 / r.iteration_s - 1
        errors.append(abs(e1))
        out.append(f"| {r.name} | {st.tp} | {st.pp} | {st.virtual} | {st.gpus} | {st.batch} | "
                   f"{st.micro_batch} | {r.iteration_s:g} | {t0:.2f} | {e0 * 100:+.1f}% | "
                   f"{t1:.2f} | {e1 * 100:+.1f}% | {peak:.1f} |")
    out += ["", f"Test rows (fitted figure): median |error| "
            f"{statistics.median(errors) * 100:.1f}%, worst {max(errors) * 100:.1f}%."]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
