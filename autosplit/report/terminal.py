"""The plan in the terminal: what ``autosplit search`` and ``evaluate`` print.

A user who never opens the HTML report should still see, in one screen, where each layer
runs, whether it fits, how fast the iteration is, what slows it down, what was left idle,
how hard the search looked and how the plan compares with the obvious splits.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table

from autosplit.plan.schema import Plan, StagePlan
from autosplit.report.fmt import (
    fmt_bytes,
    fmt_layout,
    fmt_pct,
    fmt_rate,
    fmt_ratio,
    fmt_seconds,
    layer_span,
)
from autosplit.report.html import alternative_layout, stage_devices
from autosplit.report.idle import idle_summary
from autosplit.report.timeline import bubble_share

__all__ = ["render_plan_summary"]


def _devices(st: StagePlan) -> str:
    return ", ".join(stage_devices(st))


def _layers(st: StagePlan) -> str:
    names = st.layer_names
    if len(names) > 2:
        return f"{names[0]} … {names[-1]}"
    return layer_span(names, st.layer_start, st.layer_end)


def _stage_table(plan: Plan, *, width: int) -> Table:
    """One row per stage. On a narrow terminal the device list and the layer names give way
    (they are in the plan JSON and the HTML report) so the figures are never truncated."""
    preds = {sp.index: sp for sp in plan.prediction.stages} if plan.prediction else {}
    bottleneck = plan.prediction.bottleneck_stage if plan.prediction else -1
    wide = width >= 118
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    columns = [("stage", "left"), ("chip", "left"), ("devices", "left"), ("units", "right"),
               ("layers", "left"), ("TP×DP", "right"), ("recompute", "left"),
               ("busy/mb", "right"), ("memory / capacity", "right"), ("costs", "left")]
    if not wide:
        columns = [c for c in columns if c[0] not in ("devices", "layers", "costs")]
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)
    for st in plan.stages:
        sp = preds.get(st.index)
        mem = "—"
        if sp is not None:
            m = sp.memory
            pct = fmt_pct(m.total / m.capacity, 0) if m.capacity else "—"
            mem = f"{m.total / 1e9:.1f} / {fmt_bytes(m.capacity)} ({pct})"
            if not m.fits:
                mem = f"[bold red]{mem} OVER[/]"
        busy = fmt_seconds(sp.busy_s) if sp else "—"
        if st.index == bottleneck:
            busy = f"[bold]{busy}[/]"
        cells = {
            "stage": f"[bold]S{st.index}[/]", "chip": st.chip_label, "devices": _devices(st),
            "units": f"{st.layer_start}–{st.layer_end - 1}", "layers": _layers(st),
            "TP×DP": f"{st.tp}×{st.dp}", "recompute": "[green]yes[/]" if st.recompute else "no",
            "busy/mb": busy, "memory / capacity": mem, "costs": st.cost_source,
        }
        table.add_row(*(cells[name] for name, _ in columns))
    return table


def _comparison_table(plan: Plan, baselines: Sequence[tuple[str, Plan]]) -> Table | None:
    pred = plan.prediction
    if pred is None or (not baselines and not plan.alternatives):
        return None
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("plan", min_width=16)
    table.add_column("units per stage", no_wrap=True, overflow="ellipsis", max_width=30)
    table.add_column("iteration", justify="right", no_wrap=True, min_width=9)
    table.add_column("÷ this plan", justify="right", no_wrap=True, min_width=11)
    table.add_row("[bold]this plan[/]", fmt_layout([s.num_layers for s in plan.stages]),
                  fmt_seconds(pred.iteration_s), fmt_ratio(1.0))
    for name, other in baselines:
        op = other.prediction
        ratio = fmt_ratio(op.iteration_s / pred.iteration_s) if op and pred.iteration_s else "—"
        table.add_row(name, fmt_layout([s.num_layers for s in other.stages]),
                      fmt_seconds(op.iteration_s) if op else "—", ratio)
    for alt in plan.alternatives:
        ratio = (fmt_ratio(alt.iteration_s / pred.iteration_s) if pred.iteration_s
                 else fmt_ratio(alt.ratio_to_best))
        table.add_row(f"[dim]alternative:[/] {alt.summary}", alternative_layout(alt),
                      fmt_seconds(alt.iteration_s), ratio)
    return table


def render_plan_summary(plan: Plan, console: Console, *,
                        baselines: Sequence[tuple[str, Plan]] = ()) -> None:
    """Print the plan's stages, prediction, bottleneck, idle devices, search statistics and
    comparison with ``baselines`` (``(name, plan)`` pairs) and the plan's alternatives."""
    used = sum(st.num_devices for st in plan.stages)
    console.print(
        f"[bold]{plan.model.name}[/] on [bold]{plan.cluster.name}[/]: {plan.num_stages} "
        f"stage(s) on {used} device(s), {plan.schedule}"
        + (f" ({plan.virtual_stages} virtual stages per rank)" if plan.virtual_stages > 1 else "")
        + f", {plan.micro_batch_count} "
        f"micro-batches of {plan.micro_batch_samples} sample(s)", highlight=False)
    console.print(_stage_table(plan, width=console.width))
    measured = [f"S{st.index}" for st in plan.stages if st.cost_source == "measured"]
    console.print("[bold]costs[/]: " + (f"measured profiles for {', '.join(measured)}; "
                                        "analytic model elsewhere" if measured
                                        else "analytic model (no measured profiles)"),
                  highlight=False)
    pred = plan.prediction
    if pred is None:
        console.print("[yellow]no prediction in this plan[/] — run `autosplit evaluate` on it")
    else:
        console.print(
            f"[bold]predicted[/]: iteration [bold]{fmt_seconds(pred.iteration_s)}[/] · "
            f"{fmt_rate(pred.tokens_per_s)} tokens/s · MFU {fmt_pct(pred.mfu)} · "
            f"bubble {fmt_pct(bubble_share(pred))} ({fmt_seconds(pred.bubble_s)} idle per rank "
            f"of {fmt_seconds(pred.pipeline_s)})", highlight=False)
        bn = next((s for s in plan.stages if s.index == pred.bottleneck_stage), None)
        bsp = next((s for s in pred.stages if s.index == pred.bottleneck_stage), None)
        if bn is not None and bsp is not None:
            console.print(
                f"[bold]bottleneck[/]: stage {bn.index} ({bn.chip_label}, units {bn.layer_start}–"
                f"{bn.layer_end - 1}), busy {fmt_seconds(bsp.busy_s)} per micro-batch",
                highlight=False)
    for st in plan.stages:
        shares = [r.batch_share for r in st.replicas]
        if len(set(shares)) > 1:
            by_chip: dict[str, list[int]] = {}
            for r in st.replicas:
                by_chip.setdefault(r.chip or st.chip, []).append(r.batch_share)
            parts = ", ".join(f"{chip} {'/'.join(map(str, sorted(set(v), reverse=True)))}"
                              f" ×{len(v)}" for chip, v in by_chip.items())
            console.print(f"[bold]uneven batch shares[/] S{st.index} (samples per replica per "
                          f"micro-batch): {parts}", highlight=False)
    if plan.idle_devices:
        console.print(f"[bold]idle devices[/] ({len(plan.idle_devices):,}): "
                      f"{idle_summary(plan.idle_devices)}", highlight=False)
        if plan.idle_note:
            console.print(f"  {plan.idle_note}", highlight=False)
    s = plan.search
    if s.explored or s.time_s:
        pruned = sum(s.pruned.values())
        console.print(
            f"[bold]search[/]: {fmt_seconds(s.time_s)}, {s.explored:,} candidates explored, "
            f"{pruned:,} pruned, optimality gap {fmt_pct(s.optimality_gap, 2)}"
            + (" [yellow](time limit hit)[/]" if s.timed_out else ""), highlight=False)
    table = _comparison_table(plan, baselines)
    if table is not None:
        console.print(table)
