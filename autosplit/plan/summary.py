"""A compact terminal summary of a plan (the report package renders a richer one)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from autosplit.plan.schema import Plan

__all__ = ["render_basic_summary"]


def render_basic_summary(plan: Plan, console: Console, *,
                         baselines: Sequence[tuple[str, Plan]] = ()) -> None:
    pred = plan.prediction
    table = Table(title=f"plan: {plan.model.name} on {plan.cluster.name}")
    for col in ("stage", "chip", "devices", "units", "TP", "DP", "recompute", "busy ms",
                "memory GB"):
        table.add_column(col)
    for st in plan.stages:
        sp = pred.stages[st.index] if pred else None
        devs = ", ".join(f"{r.node}:{','.join(map(str, r.local_indices))}" for r in st.replicas)
        table.add_row(str(st.index), st.chip, devs, f"{st.layer_start}-{st.layer_end - 1}",
                      str(st.tp), str(st.dp), "yes" if st.recompute else "",
                      f"{sp.busy_s * 1e3:.1f}" if sp else "",
                      f"{sp.memory.total / 1e9:.1f}/{sp.memory.capacity / 1e9:.0f}" if sp else "")
    console.print(table)
    if pred:
        console.print(f"iteration {pred.iteration_s:.3f} s, {pred.tokens_per_s:,.0f} tokens/s, "
                      f"MFU {pred.mfu:.1%}, micro-batches {plan.micro_batch_count}")
    for name, b in baselines:
        if b.prediction and pred:
            console.print(f"{name}: {b.prediction.iteration_s:.3f} s "
                          f"({b.prediction.iteration_s / pred.iteration_s:.2f}× slower)")
    s = plan.search
    console.print(f"search: {s.time_s:.2f} s, explored {s.explored}, pruned "
                  f"{sum(s.pruned.values())}, gap {s.optimality_gap:.2%}")
