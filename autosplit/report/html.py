"""The plan report as one self-contained HTML page.

A plan is a JSON file of ranges and device indices; the page turns it into pictures a person
reads at a glance, and keeps every exact figure in a table or a tooltip next to the picture.
The page has no script, no external stylesheet, font or image: the charts are inline SVG, so
it opens offline, prints, and can be attached to a ticket as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from autosplit.cost.schedule_sim import Simulation
from autosplit.plan.schema import Alternative, Plan, Replica, StagePlan, StagePrediction
from autosplit.report.charts import (
    cluster_map_svg,
    memory_svg,
    stage_label,
    time_breakdown_svg,
    timeline_svg,
)
from autosplit.report.fmt import (
    fmt_bytes,
    fmt_count,
    fmt_layout,
    fmt_pct,
    fmt_rate,
    fmt_ratio,
    fmt_seconds,
    fmt_signed_pct,
    layer_span,
)
from autosplit.report.idle import idle_summary
from autosplit.report.measured import MeasuredRun, compare_stages, relative_error
from autosplit.report.svg import stage_color
from autosplit.report.timeline import bubble_share, plan_timeline

__all__ = ["render_html", "plan_timeline", "device_list", "stage_devices", "alternative_layout"]


#: Above this many micro-batches the timeline gets a close-up of its start.
_CLOSE_UP_ABOVE = 24


def _ranges(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0–2,5``."""
    out: list[str] = []
    idx = sorted(indices)
    i = 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        out.append(f"{idx[i]}–{idx[j]}" if j > i else f"{idx[i]}")
        i = j + 1
    return ",".join(out)


def device_list(replica: Replica) -> str:
    """``node:0–3``: the devices of one replica (one TP group)."""
    return f"{replica.node}:{_ranges(replica.local_indices)}"


def alternative_layout(alt: Alternative) -> str:
    """Units per stage of an alternative (``5 | 1``), from its stage summaries."""
    counts: list[int] = []
    for st in alt.stages:
        if "layers" in st:
            counts.append(int(st["layers"]))
        elif "layer_start" in st and "layer_end" in st:
            counts.append(int(st["layer_end"]) - int(st["layer_start"]))
        else:
            return "—"
    return fmt_layout(counts) if counts else "—"


def stage_devices(st: StagePlan) -> list[str]:
    """A stage's devices, one line per node: ``node:0–3`` when each device is its own
    replica (TP 1), else the TP groups side by side (``node:0–1 | 2–3``)."""
    per_node: dict[str, list[tuple[int, ...]]] = {}
    for r in st.replicas:
        per_node.setdefault(r.node, []).append(r.local_indices)
    lines = []
    for node, groups in per_node.items():
        if st.tp == 1:
            lines.append(f"{node}:{_ranges([i for g in groups for i in g])}")
        else:
            lines.append(f"{node}:" + " | ".join(_ranges(g) for g in groups))
    return lines


def _shares(st: StagePlan) -> str:
    """Samples each replica takes of a micro-batch: ``2 + 2``, or ``1 (×16)`` for many."""
    values = [r.batch_share for r in st.replicas]
    if len(values) <= 4:
        return " + ".join(str(v) for v in values)
    runs: list[list[int]] = []
    for v in values:
        if runs and runs[-1][0] == v:
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    return " + ".join(f"{v} (×{n})" if n > 1 else str(v) for v, n in runs)


def _e(x: object) -> str:
    return escape(str(x))


def _secs(s: float) -> str:
    """A time for a table cell: a dash for exactly nothing, so real figures stand out."""
    return fmt_seconds(s) if s else "—"


def _comm_share(sp: StagePrediction) -> float:
    """The part of a stage's busy time that is communication it cannot hide: TP
    collectives and transfers over blocking links (everything beyond its own compute)."""
    if sp.busy_s <= 0:
        return 0.0
    return max(0.0, sp.busy_s - (sp.fwd_s + sp.bwd_s + sp.recompute_s)) / sp.busy_s


def _fits(plan: Plan) -> str:
    if plan.prediction is None:
        return "—"
    over = [sp for sp in plan.prediction.stages if not sp.memory.fits]
    if not over:
        return "yes"
    worst = max(over, key=lambda sp: sp.memory.total - sp.memory.capacity)
    return (f"no: S{worst.index} over by "
            f"{fmt_bytes(worst.memory.total - worst.memory.capacity)}")


# --------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------

def _header(plan: Plan, notes: Sequence[str], nav: Sequence[tuple[str, str]]) -> str:
    m, pred = plan.model, plan.prediction
    used = sum(st.num_devices for st in plan.stages)
    total = max(plan.cluster.num_devices, used + len(plan.idle_devices))
    cards: list[tuple[str, str, str]] = []
    if pred is not None:
        bn = next((st for st in plan.stages if st.index == pred.bottleneck_stage), None)
        cards = [
            ("Iteration time", fmt_seconds(pred.iteration_s), "predicted, one optimizer step"),
            ("Throughput", f"{fmt_rate(pred.tokens_per_s)} tok/s",
             f"{fmt_rate(pred.samples_per_s)} samples/s"),
            ("MFU", fmt_pct(pred.mfu), "of the used devices' peak"),
            ("Pipeline bubble", fmt_pct(bubble_share(pred)),
             f"{fmt_seconds(pred.bubble_s)} idle per rank, of {fmt_seconds(pred.pipeline_s)}"),
            ("Bottleneck", f"S{pred.bottleneck_stage}", bn.chip if bn else ""),
        ]
    cards.append(("Devices", f"{used} of {total}",
                  f"{len(plan.idle_devices)} idle" if plan.idle_devices else "all used"))
    card_html = "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div>'
        f'<div class="s">{_e(s)}</div></div>' for k, v, s in cards)
    facts = (f"{_e(m.name)} · {fmt_count(m.params)} parameters · {m.num_layers} partition "
             f"units · sequence {m.seq_len} · {_e(m.dtype)} — global batch {plan.global_batch} "
             f"in {plan.micro_batch_count} micro-batches of {plan.micro_batch_samples} · "
             f"schedule {_e(_schedule_label(plan))}" + (" · ZeRO-1" if plan.zero1 else ""))
    if m.model_args:
        facts += " · " + ", ".join(f"{_e(k)}={_e(v)}" for k, v in sorted(m.model_args.items()))
    note_html = "".join(f'<div class="note">{_e(n)}</div>' for n in notes)
    flow = " → ".join(
        f'<span class="chip" style="border-color:{stage_color(st.index)}">'
        f'<b>S{st.index}</b> {_e(st.chip_label)} · TP{st.tp}×DP{st.dp} · units '
        f'{st.layer_start}–{st.layer_end - 1}{" · recompute" if st.recompute else ""}</span>'
        for st in plan.stages)
    links = "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in nav)
    return (f'<header><h1>{_e(m.name)} on {_e(plan.cluster.name)}</h1>'
            f'<p class="facts">{facts}</p><p class="flow">{flow}</p><nav>{links}</nav>'
            f'<div class="cards">{card_html}</div>{note_html}</header>')


def _stage_table(plan: Plan) -> str:
    preds = {sp.index: sp for sp in plan.prediction.stages} if plan.prediction else {}
    rows = []
    for st in plan.stages:
        sp = preds.get(st.index)
        lines = stage_devices(st)
        devs = "<br>".join(_e(d) for d in lines)
        if len(lines) > 3:
            devs = (f"<details><summary>{len(lines)} nodes, {st.num_devices} devices</summary>"
                    f"{devs}</details>")
        shares = _shares(st)
        names = ", ".join(st.layer_names)
        names_ = st.layer_names
        span = (f"{names_[0]} … {names_[-1]}" if len(names_) > 2
                else layer_span(names_, st.layer_start, st.layer_end))
        layers = (f'<details><summary>{_e(span)}</summary>'
                  f'<div class="names">{_e(names)}</div>'
                  + (f'<div class="names mod">modules: {_e(", ".join(st.module_names))}</div>'
                     if st.module_names else "")
                  + "</details>")
        mem = (f"{fmt_bytes(sp.memory.total)} / {fmt_bytes(sp.memory.capacity)}"
               if sp else "—")
        rows.append(
            f'<tr><td><span class="sw" style="background:{stage_color(st.index)}"></span>'
            f'S{st.index}</td><td>{_e(st.chip_label)}</td><td class="dev">{devs}</td>'
            f'<td class="num">{st.tp}</td><td class="num">{st.dp}</td>'
            f'<td class="num">{_e(shares)}</td>'
            f'<td class="num">{st.layer_start}–{st.layer_end - 1}</td><td>{layers}</td>'
            f'<td>{"yes" if st.recompute else "no"}</td><td>{_e(st.cost_source)}</td>'
            f'<td class="num">{fmt_seconds(sp.busy_s) if sp else "—"}</td>'
            f'<td class="num">{mem}</td></tr>')
    head = ("<tr><th>Stage</th><th>Chip</th><th>Devices (TP groups)</th><th>TP</th>"
            "<th>DP</th><th>Samples per micro-batch</th><th>Units</th><th>Layers</th>"
            "<th>Recompute</th><th>Cost source</th><th>Busy / micro-batch</th>"
            "<th>Memory (peak device)</th></tr>")
    return f'<table class="stages">{head}{"".join(rows)}</table>'


def _map_section(plan: Plan) -> str:
    idle = ""
    if plan.idle_devices:
        idle = (f'<p class="caption">Idle devices ({len(plan.idle_devices):,}): '
                f'{_e(idle_summary(plan.idle_devices))}.'
                + (f" {_e(plan.idle_note)}" if plan.idle_note else "") + "</p>")
    return (
        '<section id="map"><h2>Where everything runs</h2>'
        '<p class="caption">Each box is a node; each square a device, coloured by the pipeline '
        'stage it serves; a dark outline groups the devices of one tensor-parallel group (one '
        'data-parallel replica). The strip below shows which partition units of the model '
        'each stage owns; R marks recomputation. Click a layer summary in the table for the '
        'full list.</p>'
        f'{cluster_map_svg(plan).render()}{idle}{_stage_table(plan)}</section>')


def _schedule_label(plan: Plan) -> str:
    """``1f1b``, or ``interleaved-1f1b (2 virtual stages per rank)``."""
    if plan.virtual_stages > 1:
        return f"{plan.schedule} ({plan.virtual_stages} virtual stages per rank)"
    return plan.schedule


def _timeline_section(plan: Plan, timeline: Simulation | None) -> str:
    head = '<section id="timeline"><h2>Pipeline timeline</h2>'
    if timeline is None or plan.prediction is None:
        return head + '<p class="caption">No prediction in this plan: run ' \
                      '<code>autosplit evaluate</code> on it first.</p></section>'
    pred = plan.prediction
    rows = ("One row per pipeline rank; a rank runs several stages (chunks), told apart by "
            "the thin strip in the stage's colour on each bar, when the schedule interleaves them. "
            if timeline.num_ranks < timeline.num_stages else "")
    split = ("The backward runs as two passes: the input gradient (B), which the previous "
             "stage waits for, and the weight gradient (W), which fills the gaps. "
             if any(iv.kind == "W" for iv in timeline.intervals) else "")
    caption = (
        f"One iteration under <b>{_e(_schedule_label(plan))}</b> with "
        f"{plan.micro_batch_count} micro-batches (numbers in the bars), as the cost model "
        "simulates it from the per-stage times of the prediction. " + rows + split +
        "Grey is idle time: the pipeline bubble. Purple ticks between two rows are "
        "activations going down (upper half) and gradients coming back (lower half). "
        "Each rank ends with its data-parallel gradient all-reduce and optimizer step. "
        f"Simulated iteration: <b>{fmt_seconds(timeline.makespan_s)}</b>, the predicted "
        "iteration time. Hover a bar for its exact times.")
    idle = max(range(timeline.num_ranks), key=timeline.idle_s)
    who = (f"rank {idle}" if timeline.num_ranks < timeline.num_stages else f"stage {idle}")
    verdict = (f'<p class="verdict">Pipeline bubble: <b>{fmt_pct(bubble_share(pred))}</b> of '
               f"every rank's pipeline time ({fmt_seconds(pred.bubble_s)} idle per rank of "
               f"{fmt_seconds(pred.pipeline_s)}); {who} waits longest "
               f"({fmt_seconds(timeline.idle_s(idle))} per iteration).</p>")
    close_up = ""
    if timeline.micro_batches > _CLOSE_UP_ABOVE:
        # Many micro-batches make thin bars: add a close-up of the warm-up, up to the end of
        # the forward of micro-batch (ranks + 8) on the first stage.
        k = min(timeline.micro_batches - 1, timeline.num_ranks + 8)
        until = next(iv.end_s for iv in timeline.intervals
                     if iv.stage == 0 and iv.kind == "F" and iv.micro_batch == k)
        close_up = (f'<p class="caption"><b>Close-up</b> of the first '
                    f"{fmt_seconds(until)}: the warm-up and the first steady-state passes."
                    f"</p>{timeline_svg(plan, timeline, until_s=until, legend=False).render()}")
    return (f'{head}{verdict}<p class="caption">{caption}</p>'
            f'{timeline_svg(plan, timeline, predicted_s=pred.iteration_s).render()}'
            f"{close_up}</section>")


def _memory_section(plan: Plan) -> str:
    rows = []
    for sp in sorted(plan.prediction.stages, key=lambda s: s.index) if plan.prediction else []:
        mem = sp.memory
        st = next((s for s in plan.stages if s.index == sp.index), None)
        rows.append(
            f'<tr><td>S{sp.index}</td><td>{_e(st.chip if st else "")}</td>'
            + "".join(f'<td class="num">{fmt_bytes(v)}</td>' for v in (
                mem.weights, mem.gradients, mem.optimizer, mem.activations, mem.workspace,
                mem.reserve,
                mem.total, mem.capacity))
            + f'<td class="num">{fmt_pct(mem.total / mem.capacity) if mem.capacity else "—"}'
              f'</td><td class="num">{sp.in_flight}</td>'
              f'<td>{"yes" if st and st.recompute else "no"}</td>'
              f'<td class="{"ok" if mem.fits else "bad"}">{"yes" if mem.fits else "NO"}</td>'
              '</tr>')
    verdict = ""
    if plan.prediction is not None and plan.prediction.stages:
        tight = max(plan.prediction.stages,
                    key=lambda sp: sp.memory.total / sp.memory.capacity if sp.memory.capacity
                    else 0.0)
        over = [sp for sp in plan.prediction.stages if not sp.memory.fits]
        chip = next((st.chip for st in plan.stages if st.index == tight.index), "")
        used = tight.memory.total / tight.memory.capacity if tight.memory.capacity else 0.0
        verdict = (f'<p class="verdict">Fullest device: <b>stage {tight.index}</b> ({_e(chip)}) '
                   f"at {fmt_pct(used, 0)} of {fmt_bytes(tight.memory.capacity)}; "
                   + (f'<b class="bad">{len(over)} stage(s) do not fit</b>.</p>' if over
                      else "every stage fits.</p>"))
    table = ""
    if rows:
        table = ('<table><tr><th>Stage</th><th>Chip</th><th>Weights</th><th>Gradients</th>'
                 '<th>Optimizer</th><th>Activations</th><th>Workspace</th><th>Reserve</th><th>Total</th>'
                 '<th>Capacity</th><th>Used</th><th>Micro-batches in flight</th>'
                 f'<th>Recompute</th><th>Fits</th></tr>{"".join(rows)}</table>')
    return (
        '<section id="memory"><h2>Memory per device</h2>'
        f'{verdict}<p class="caption">'
        'The most loaded device of each stage. The outlined box is the '
        "device's capacity; the bar stacks what the plan puts in it. Activations grow with "
        'the micro-batches a stage keeps in flight (under 1F1B early stages keep more); '
        'stages with recomputation keep only each layer\'s input. The reserve is head-room '
        'kept for the framework and fragmentation.</p>'
        f'{memory_svg(plan).render()}{table}</section>')


def _time_section(plan: Plan) -> str:
    pred = plan.prediction
    if pred is None:
        return ""
    rows = []
    for sp in sorted(pred.stages, key=lambda s: s.index):
        bn = sp.index == pred.bottleneck_stage
        rows.append(
            f'<tr class="{"bn" if bn else ""}"><td>S{sp.index}{" ◀" if bn else ""}</td>'
            + "".join(f'<td class="num">{_secs(v)}</td>' for v in (
                sp.fwd_s, sp.bwd_s, sp.recompute_s, sp.tp_comm_s, sp.p2p_in_s, sp.p2p_out_s,
                sp.busy_s))
            + f'<td class="num">{fmt_pct(_comm_share(sp))}</td>'
              f'<td class="num">{_secs(sp.dp_allreduce_s)}</td>'
              f'<td class="num">{_secs(sp.optimizer_s)}</td></tr>')
    bn_stage = next((s for s in plan.stages if s.index == pred.bottleneck_stage), None)
    bn_text = ""
    if bn_stage is not None:
        bsp = next(sp for sp in pred.stages if sp.index == pred.bottleneck_stage)
        share = _comm_share(bsp)
        kind = (f"communication ({fmt_pct(share, 0)} of its busy time)" if share > 0.5 else
                f"compute ({fmt_pct(1 - share, 0)} of its busy time)")
        bn_text = (f"<p class=\"verdict\">Bottleneck: <b>stage {bn_stage.index}</b> "
                   f"({_e(stage_label(bn_stage))}, units {bn_stage.layer_start}–"
                   f"{bn_stage.layer_end - 1}), busy {fmt_seconds(bsp.busy_s)} per "
                   f"micro-batch, mostly {kind}. Every other stage waits for it once per "
                   "micro-batch.</p>")
    return (
        '<section id="time"><h2>Compute vs communication</h2>'
        f'{bn_text}<p class="caption">'
        'Per micro-batch, forward and backward together. The black tick is '
        'the time the stage is busy: its compute, TP collectives and the transfers over '
        'blocking links (the CPU relay), which it performs itself. Transfers over links that '
        'overlap with compute are drawn lighter, past the tick: they cost only in the '
        'pipeline fill. The slowest stage sets the pace of the whole pipeline. DP all-reduce '
        'and optimizer step are paid once per iteration.</p>'
        f'{time_breakdown_svg(plan).render()}'
        '<table><tr><th>Stage</th><th>Forward</th><th>Backward</th><th>Recompute</th>'
        '<th>TP comm</th><th>p2p in</th><th>p2p out</th><th>Busy</th><th>Comm share of busy</th>'
        f'<th>DP all-reduce</th><th>Optimizer</th></tr>{"".join(rows)}</table></section>')


def _compare_section(plan: Plan, baselines: Sequence[tuple[str, Plan]],
                     baseline_note: str) -> str:
    pred = plan.prediction
    head = '<section id="compare"><h2>Compared with simpler splits</h2>'
    caption = ('<p class="caption">The same devices split the obvious ways, costed by the same '
               'model, and the next-best plans the search kept. The last column is each '
               "plan's iteration time divided by this plan's: above 1× means this plan is "
               'faster.</p>')
    note = f'<div class="note">{_e(baseline_note)}</div>' if baseline_note else ""

    def layout(p: Plan) -> str:
        return fmt_layout([st.num_layers for st in p.stages])

    rows = []
    if pred is not None:
        rows.append(
            f'<tr class="this"><td>This plan</td><td class="num">{_e(layout(plan))}</td>'
            f'<td class="num">{fmt_seconds(pred.iteration_s)}</td>'
            f'<td class="num">{fmt_rate(pred.tokens_per_s)}</td>'
            f'<td class="num">{fmt_pct(pred.mfu)}</td><td>{_e(_fits(plan))}</td>'
            f'<td class="num">{fmt_ratio(1.0)}</td></tr>')
    for name, other in baselines:
        op = other.prediction
        ratio = (fmt_ratio(op.iteration_s / pred.iteration_s)
                 if op is not None and pred is not None and pred.iteration_s else "—")
        rows.append(
            f'<tr><td>{_e(name)}</td><td class="num">{_e(layout(other))}</td>'
            f'<td class="num">{fmt_seconds(op.iteration_s) if op else "—"}</td>'
            f'<td class="num">{fmt_rate(op.tokens_per_s) if op else "—"}</td>'
            f'<td class="num">{fmt_pct(op.mfu) if op else "—"}</td>'
            f'<td>{_e(_fits(other))}</td><td class="num">{ratio}</td></tr>')
    for alt in plan.alternatives:
        layout_alt = alternative_layout(alt)
        ratio = (fmt_ratio(alt.iteration_s / pred.iteration_s)
                 if pred is not None and pred.iteration_s else fmt_ratio(alt.ratio_to_best))
        rows.append(
            f'<tr class="alt"><td>alternative: {_e(alt.summary)}</td>'
            f'<td class="num">{_e(layout_alt)}</td>'
            f'<td class="num">{fmt_seconds(alt.iteration_s)}</td><td class="num">—</td>'
            f'<td class="num">—</td><td>—</td><td class="num">{ratio}</td></tr>')
    if not rows:
        return head + note + caption + "<p>Nothing to compare.</p></section>"
    table = ('<table><tr><th>Plan</th><th>Units per stage</th><th>Iteration</th>'
             '<th>Tokens/s</th><th>MFU</th><th>Fits in memory</th>'
             f'<th>Time ÷ this plan</th></tr>{"".join(rows)}</table>')
    verdicts = []
    if pred is not None:
        for name, other in baselines:
            if other.prediction is not None and pred.iteration_s:
                r = other.prediction.iteration_s / pred.iteration_s
                word = "faster" if r >= 1 else "slower"
                verdicts.append(f"{fmt_ratio(r if r >= 1 else 1 / r)} {word} than the "
                                f"{_e(name)}")
    verdict = (f'<p class="verdict">This plan is {"; ".join(verdicts)}.</p>'
               if verdicts else "")
    return f"{head}{verdict}{note}{caption}{table}</section>"


def _measured_section(plan: Plan, run: MeasuredRun | None) -> str:
    if run is None:
        return ""
    pred = plan.prediction
    rows = []
    if pred is not None:
        err = relative_error(pred.iteration_s, run.step_time_s)
        rows.append(f'<tr><td>Iteration time</td><td class="num">{fmt_seconds(pred.iteration_s)}'
                    f'</td><td class="num">{fmt_seconds(run.step_time_s)}</td>'
                    f'<td class="num">{fmt_signed_pct(err)}</td></tr>')
        tokens = plan.global_batch * plan.model.tokens_per_sample
        meas_tps = tokens / run.step_time_s
        rows.append(f'<tr><td>Tokens/s</td><td class="num">{fmt_rate(pred.tokens_per_s)}</td>'
                    f'<td class="num">{fmt_rate(meas_tps)}</td><td class="num">'
                    f'{fmt_signed_pct(relative_error(pred.tokens_per_s, meas_tps))}</td></tr>')
    else:
        rows.append(f'<tr><td>Iteration time</td><td class="num">—</td>'
                    f'<td class="num">{fmt_seconds(run.step_time_s)}</td><td>—</td></tr>')
    for sp in sorted(pred.stages if pred is not None else (), key=lambda s: s.index):
        measured_compute = run.stage_compute(sp.index)
        if measured_compute is None:
            continue
        predicted_compute = sp.compute_s * plan.micro_batch_count
        rows.append(
            f'<tr><td>S{sp.index} compute per step</td>'
            f'<td class="num">{fmt_seconds(predicted_compute)}</td>'
            f'<td class="num">{fmt_seconds(measured_compute)}</td><td class="num">'
            f'{fmt_signed_pct(relative_error(predicted_compute, measured_compute))}</td></tr>')
    for cmp in compare_stages(plan, run):
        meas = fmt_bytes(cmp.measured_bytes) if cmp.measured_bytes is not None else "—"
        ranks = f" (ranks {', '.join(map(str, cmp.ranks))})" if cmp.ranks else ""
        rows.append(
            f'<tr><td>S{cmp.stage} peak memory{_e(ranks)}</td>'
            f'<td class="num">{fmt_bytes(cmp.predicted_bytes)}</td>'
            f'<td class="num">{meas}</td>'
            f'<td class="num">{fmt_signed_pct(cmp.error) if cmp.error is not None else "—"}'
            '</td></tr>')
    verdict = ""
    if pred is not None:
        err = relative_error(pred.iteration_s, run.step_time_s)
        verdict = (f'<p class="verdict">The cost model is <b>{fmt_signed_pct(err)}</b> off the '
                   f"measured iteration time ({fmt_seconds(pred.iteration_s)} predicted, "
                   f"{fmt_seconds(run.step_time_s)} measured).</p>")
    return ('<section id="measured"><h2>Predicted vs measured</h2>' + verdict +
            '<p class="caption">Error = (predicted − measured) / measured: positive means the '
            'cost model is pessimistic. Memory is compared without the planner\'s reserve, '
            'against the highest peak any rank of the stage reported.</p>'
            '<table><tr><th>Quantity</th><th>Predicted</th><th>Measured</th><th>Error</th>'
            f'</tr>{"".join(rows)}</table></section>')


def _search_section(plan: Plan) -> str:
    s = plan.search
    pruned = ", ".join(f"{v:,} {_e(k).replace('_', ' ')}" for k, v in
                       sorted(s.pruned.items(), key=lambda kv: (-kv[1], kv[0])) if v) or "—"
    items = [
        ("Search time", fmt_seconds(s.time_s) + (" (time limit hit)" if s.timed_out else "")),
        ("Candidates explored", f"{s.explored:,}"),
        ("Pruned", pruned),
        ("Stage layouts considered", f"{s.level1_candidates:,}"),
        ("Exact solves", f"{s.exact_solves:,} ({_e(s.solver)})"),
        ("Lower bound", fmt_seconds(s.lower_bound_s) if s.lower_bound_s else "—"),
        ("Optimality gap", fmt_pct(s.optimality_gap, 2)),
    ]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{v if k == 'Pruned' else _e(v)}</dd>" for k, v in items)
    notes = "".join(f"<li>{_e(n)}</li>" for n in s.notes)
    measured = [st for st in plan.stages if st.cost_source == "measured"]
    src_rows = "".join(
        f'<tr><td>S{st.index}</td><td>{_e(st.chip)}</td>'
        f'<td class="{"ok" if st.cost_source == "measured" else ""}">{_e(st.cost_source)}</td>'
        '</tr>' for st in plan.stages)
    return (
        '<section id="search"><h2>How the plan was found</h2>'
        '<p class="caption">The optimality gap is how far the plan may be from the best '
        'possible under the cost model (0% = proven optimal). The cost source says whether a '
        "stage's layer times come from measured profiles of that chip or from the analytic "
        'roofline model; measured figures are the more trustworthy.</p>'
        f'<div class="two"><dl>{dl}</dl><div><p>{len(measured)} of {len(plan.stages)} '
        'stages use measured profiles.</p><table><tr><th>Stage</th><th>Chip</th>'
        f'<th>Cost source</th></tr>{src_rows}</table></div></div>'
        + (f"<ul class=\"notes\">{notes}</ul>" if notes else "") + "</section>")


_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f3f4f6;color:#1f2328;
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:18px 20px 40px}
header,section{background:#fff;border:1px solid #dfe2e6;border-radius:8px;padding:16px 20px;
margin-bottom:16px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:0 0 6px}
.facts{color:#555;margin:0 0 8px}
.flow{margin:0 0 8px;line-height:2}
.chip{display:inline-block;border:1px solid;border-left-width:5px;border-radius:4px;
padding:0 8px;line-height:1.7;background:#fafbfc;font-size:13px;white-space:nowrap}
nav{margin:4px 0 12px}nav a{margin-right:14px;color:#2f6fb0;text-decoration:none;font-size:13px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:10px}
.card{border:1px solid #e3e6ea;border-radius:6px;padding:8px 12px;background:#fafbfc}
.card .k{font-size:12px;color:#666;text-transform:uppercase;letter-spacing:.03em}
.card .v{font-size:22px;font-weight:650}
.card .s{font-size:12px;color:#777}
.note{margin-top:10px;padding:8px 12px;background:#fff7e0;border:1px solid #f0d58c;
border-radius:6px}
.caption{color:#555;margin:0 0 10px;max-width:980px}
.verdict{font-size:15px;margin:6px 0 10px}
svg.chart{width:100%;height:auto;display:block;margin:6px 0 12px}
table{border-collapse:collapse;width:100%;margin:6px 0;font-size:13px}
th,td{border-bottom:1px solid #e6e8eb;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f6f7f9;font-weight:600;font-size:12px;color:#444}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.dev{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;
white-space:nowrap}
tr.this td{font-weight:650;background:#eef5ff}tr.alt td{color:#555}
tr.bn td{background:#fff0f0}
td.ok{color:#1d7a2e}td.bad,b.bad{color:#c00;font-weight:700}
table.stages th:nth-child(8){min-width:170px}table.stages td:first-child{white-space:nowrap}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
details summary{cursor:pointer}
.names{font-size:12px;color:#555;max-width:340px;word-break:break-word}
.names.mod{color:#888}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 14px;margin:0}
dt{color:#666}dd{margin:0;font-weight:600}
.two{display:grid;grid-template-columns:1fr 1fr;gap:24px}
footer{color:#888;font-size:12px;text-align:center}
@media (max-width:900px){.two{grid-template-columns:1fr}}
@media print{body{background:#fff}header,section{border:none;break-inside:avoid}}
"""


def render_html(plan: Plan, *, baselines: Sequence[tuple[str, Plan]] = (),
                measured: MeasuredRun | None = None, notes: Sequence[str] = (),
                baseline_note: str = "", version: str = "") -> str:
    """The whole report page for ``plan`` as a string."""
    timeline = plan_timeline(plan)
    all_notes = list(notes)
    if plan.prediction is None:
        all_notes.append("This plan carries no prediction: run `autosplit evaluate` on it to "
                         "fill in times and memory.")
    sections = [
        ("map", "Map", _map_section(plan)),
        ("timeline", "Timeline", _timeline_section(plan, timeline)),
        ("memory", "Memory", _memory_section(plan)),
        ("time", "Compute vs comm", _time_section(plan)),
        ("compare", "Baselines", _compare_section(plan, baselines, baseline_note)),
        ("measured", "Measured", _measured_section(plan, measured)),
        ("search", "Search", _search_section(plan)),
    ]
    nav = [(anchor, name) for anchor, name, html in sections if html]
    body = _header(plan, all_notes, nav) + "".join(html for _, _, html in sections)
    title = f"autosplit plan — {plan.model.name} on {plan.cluster.name}"
    footer = (f"<footer>autosplit {_e(version)} · plan schema {_e(plan.schema_version)} · "
              f"model {_e(plan.model.source_file)} · cluster {_e(plan.cluster.source_file)}"
              "</footer>")
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
            f"<body><main>{body}{footer}</main></body></html>\n")
