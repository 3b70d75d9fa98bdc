"""The report's pictures, drawn as inline SVG from a plan and its simulated timeline.

Four charts answer the four questions a reader of a plan asks first: where does each layer
run (``cluster_map_svg``), what does each stage do over one iteration (``timeline_svg``),
does it fit in memory (``memory_svg``) and where does the time go (``time_breakdown_svg``).
Every shape carries a tooltip with its exact figures; the same SVG is written as the static
image export.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autosplit.cost.schedule_sim import Interval, Simulation
from autosplit.plan.schema import Plan, StagePlan, StagePrediction
from autosplit.report.fmt import fmt_bytes, fmt_pct, fmt_seconds
from autosplit.report.svg import Svg, nice_step, stage_color

__all__ = [
    "KIND_COLORS",
    "MEMORY_COLORS",
    "TIME_COLORS",
    "cluster_map_svg",
    "timeline_svg",
    "memory_svg",
    "time_breakdown_svg",
    "stage_label",
]

WIDTH = 1100
LABEL_W = 190

#: Timeline interval colours (forward, backward, recompute part of the backward, transfers).
KIND_COLORS: dict[str, str] = {
    "F": "#4e79a7",
    "B": "#59a14f",
    "W": "#8cd17d",
    "recompute": "#2d6a27",
    "p2p": "#b07aa1",
    "dp_sync": "#e15759",
    "optimizer": "#9c755f",
    "idle": "#e3e6ea",
}
KIND_NAMES: dict[str, str] = {
    "F": "forward", "B": "backward", "W": "weight gradient (split backward)",
    "recompute": "recompute (in backward)",
    "p2p": "transfer between stages (inside a bar: blocking)", "dp_sync": "DP gradient all-reduce",
    "optimizer": "optimizer step", "idle": "idle (bubble)",
}

MEMORY_COLORS: dict[str, str] = {
    "weights": "#4e79a7",
    "gradients": "#76b7b2",
    "optimizer": "#f28e2b",
    "activations": "#e15759",
    "workspace": "#9c755f",
    "reserve": "#bab0ac",
}

TIME_COLORS: dict[str, str] = {
    "forward": "#4e79a7",
    "backward": "#59a14f",
    "recompute": "#2d6a27",
    "TP comm": "#edc948",
    "p2p (blocking)": "#b07aa1",
    "p2p (overlapped)": "#dcc6d8",
}


def stage_label(stage: StagePlan) -> str:
    """``S0 · H100 · TP2×DP2``."""
    return f"S{stage.index} · {stage.chip_label} · TP{stage.tp}×DP{stage.dp}"


def _stage_head(svg: Svg, st: StagePlan | None, index: int, *, y: float, h: float) -> None:
    """The label left of a stage's row: colour, ``S1 · chip`` and, below, its shape."""
    svg.rect(0, y + 3, 6, h - 6, fill=stage_color(index), rx=2)
    if st is None:
        svg.text(12, y + h / 2, f"S{index}", size=12, weight="600")
        return
    chip = st.chip if len(st.chip) <= 18 else st.chip[:17] + "…"
    svg.text(12, y + h / 2 - 7, f"S{st.index} · {chip}", size=12, weight="600",
             title=stage_label(st))
    shape = f"TP{st.tp} × DP{st.dp}"
    svg.text(12, y + h / 2 + 8, shape, size=11, fill="#666")
    if st.recompute:
        svg.text(16 + 7.0 * len(shape), y + h / 2 + 8, "· recompute", size=11,
                 fill=KIND_COLORS["recompute"], weight="600")


def _legend(svg: Svg, items: Sequence[tuple[str, str]], *, x: float, y: float,
            max_x: float = WIDTH) -> float:
    """Draw legend entries from ``(x, y)``, wrapping at ``max_x``; return the bottom y."""
    cx, cy = x, y
    for name, color in items:
        w = 16 + 6.9 * len(name) + 16
        if cx > x and cx + w > max_x:
            cx, cy = x, cy + 18
        svg.rect(cx, cy - 6, 12, 12, fill=color, rx=2)
        svg.text(cx + 16, cy, name, size=12, fill="#333")
        cx += w
    return cy + 10


def _axis(svg: Svg, *, x0: float, x1: float, y: float, top: float, span_s: float) -> float:
    """Draw a time axis at ``y`` with grid lines up to ``top``; return pixels per second."""
    scale = (x1 - x0) / span_s if span_s > 0 else 0.0
    step = nice_step(span_s)
    svg.line(x0, y, x1, y, stroke="#999")
    t = 0.0
    while t <= span_s * 1.0001 and scale > 0:
        x = x0 + t * scale
        svg.line(x, top, x, y, stroke="#e3e3e3")
        svg.line(x, y, x, y + 4, stroke="#999")
        svg.text(x, y + 15, fmt_seconds(t), size=11, anchor="middle", fill="#555")
        t += step
    return scale


# --------------------------------------------------------------------------------------
# cluster → stage → layer map
# --------------------------------------------------------------------------------------

def _node_devices(plan: Plan) -> dict[str, dict[int, tuple[int, int] | None]]:
    """node -> local index -> (stage, replica) or None for an idle device, in plan order."""
    nodes: dict[str, dict[int, tuple[int, int] | None]] = {}
    for st in plan.stages:
        for r, rep in enumerate(st.replicas):
            for idx in rep.local_indices:
                nodes.setdefault(rep.node, {})[idx] = (st.index, r)
    for dev in plan.idle_devices:
        node, _, idx = dev.rpartition(":")
        if node and idx.isdigit():
            nodes.setdefault(node, {}).setdefault(int(idx), None)
    return nodes


@dataclass(frozen=True)
class _NodeBox:
    """One box of the map: a node, or a run of nodes whose devices serve the same stages in
    the same grouping (a large cluster would otherwise draw hundreds of identical boxes)."""

    names: tuple[str, ...]
    chip: str
    devs: dict[int, tuple[int, int] | None]

    @property
    def label(self) -> str:
        if len(self.names) == 1:
            return self.names[0]
        return f"{self.names[0]} … {self.names[-1]} (×{len(self.names)})"

    @property
    def stages(self) -> str:
        """``S0`` / ``S0, S2``: the stages this box's devices serve."""
        used = sorted({o[0] for o in self.devs.values() if o is not None})
        return ", ".join(f"S{s}" for s in used) if used else "idle"


def _node_boxes(plan: Plan, chips: dict[str, str]) -> list[_NodeBox]:
    boxes: list[_NodeBox] = []
    last_key: tuple[object, ...] | None = None
    for name, devs in _node_devices(plan).items():
        group_start: dict[tuple[int, int], int] = {}
        for i, owner in sorted(devs.items()):
            if owner is not None:
                group_start.setdefault(owner, i)
        key = (chips.get(name, "?"),
               tuple((i, None if o is None else (o[0], group_start[o]))
                     for i, o in sorted(devs.items())))
        if boxes and key == last_key:
            prev = boxes[-1]
            boxes[-1] = _NodeBox(prev.names + (name,), prev.chip, prev.devs)
        else:
            boxes.append(_NodeBox((name,), chips.get(name, "?"), devs))
        last_key = key
    return boxes


def cluster_map_svg(plan: Plan, *, node_chips: dict[str, str] | None = None) -> Svg:
    """Nodes as boxes of devices coloured by the stage they serve, above a strip of the
    model's partition units coloured the same way. Runs of identically used nodes share a
    box; with many boxes the devices are drawn small, without labels (tooltips remain)."""
    chips = dict(node_chips or {})
    for st in plan.stages:
        for rep in st.replicas:
            chips.setdefault(rep.node, rep.chip or st.chip)
    node_boxes = _node_boxes(plan, chips)
    compact = len(node_boxes) > 12
    cell, gap, pad = (20, 4, 8) if compact else (46, 6, 10)
    head_h = 24 if compact else 30
    per_row = 8
    boxes: list[tuple[_NodeBox, float, float]] = []
    for nb in node_boxes:
        n = (max(nb.devs) + 1) if nb.devs else 0
        cols = min(per_row, max(n, 1))
        rows = max(1, -(-n // per_row))
        w = pad * 2 + cols * (cell + gap) - gap
        label = f"{nb.label} · {nb.stages}" if compact else nb.label
        w = max(w, 7.0 * len(label) + 2 * pad + (0 if compact else 7.0 * len(nb.chip) + 10))
        boxes.append((nb, w, head_h + rows * (cell + gap) - gap + pad))
    # Flow the node boxes left to right, wrapping at the chart width.
    placed: list[tuple[float, float]] = []
    x, y, row_h = 0.0, 0.0, 0.0
    for _, w, h in boxes:
        if x > 0 and x + w > WIDTH:
            x, y, row_h = 0.0, y + row_h + 12, 0.0
        placed.append((x, y))
        x += w + 12
        row_h = max(row_h, h)
    nodes_h = y + row_h
    strip_top = nodes_h + 34
    total_units = max((st.layer_end for st in plan.stages), default=0)
    height = strip_top + 52
    svg = Svg(WIDTH, height, label="Cluster, stage and layer map")
    for (nb, w, h), (bx, by) in zip(boxes, placed, strict=True):
        devs, name = nb.devs, nb.label
        svg.rect(bx + 0.5, by + 0.5, w - 1, h - 1, fill="#fafbfc", stroke="#c8ccd2", rx=6,
                 title=f"{', '.join(nb.names)} ({nb.chip})")
        svg.text(bx + pad, by + head_h / 2 + 2, f"{name} · {nb.stages}" if compact else name,
                 size=12 if compact else 13, weight="600")
        if not compact:
            svg.text(bx + w - pad, by + 16, nb.chip, size=12, anchor="end", fill="#666")
        n = (max(devs) + 1) if devs else 0
        for i in range(n):
            cx = bx + pad + (i % per_row) * (cell + gap)
            cy = by + head_h + (i // per_row) * (cell + gap)
            owner = devs.get(i)
            where = f"{name}:{i}" if len(nb.names) == 1 else f"device {i} of {name}"
            if owner is None:
                tip = f"{where} — idle" if i in devs else f"{where} — not in the plan"
                svg.rect(cx, cy, cell, cell, fill="#ffffff", stroke="#b9bec5", dash="4 3",
                         rx=4, title=tip)
                if not compact:
                    svg.text(cx + cell / 2, cy + cell / 2, "idle", size=11, anchor="middle",
                             fill="#888")
                continue
            s, r = owner
            st = plan.stages[s]
            tip = (f"{where} — stage {s} ({st.chip}), "
                   + (f"DP replica {r}, " if len(nb.names) == 1 else "")
                   + f"TP group of {st.tp}, units {st.layer_start}–{st.layer_end - 1}"
                   + (", recompute" if st.recompute else ""))
            svg.rect(cx, cy, cell, cell, fill=stage_color(s), rx=3 if compact else 4,
                     title=tip)
            if compact:
                continue
            svg.text(cx + cell / 2, cy + cell / 2 - 7, f"S{s}", size=13, anchor="middle",
                     fill="#fff", weight="700")
            svg.text(cx + cell / 2, cy + cell / 2 + 10, f"dev {i}", size=10,
                     anchor="middle", fill="#fff")
        # Outline each TP group (one data-parallel replica) that sits on one row.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, owner in devs.items():
            if owner is not None:
                groups.setdefault(owner, []).append(i)
        for (s, _r), members in sorted(groups.items()):
            if len(members) < 2 or plan.stages[s].tp < 2:
                continue
            lo, hi = min(members), max(members)
            if lo // per_row != hi // per_row or hi - lo + 1 != len(members):
                continue
            o = gap / 2 - 0.5
            gx = bx + pad + (lo % per_row) * (cell + gap) - o
            gy = by + head_h + (lo // per_row) * (cell + gap) - o
            svg.rect(gx, gy, (hi - lo + 1) * (cell + gap) - gap + 2 * o, cell + 2 * o,
                     fill="none", stroke="#2b2f36", stroke_width=1.5, rx=6,
                     title=f"TP group of stage {s}: devices {lo}–{hi}")
    # The unit strip.
    svg.text(0, strip_top - 14, f"Model partition units (0–{max(total_units - 1, 0)}), "
             "in pipeline order", size=12, fill="#444", weight="600")
    scale = WIDTH / total_units if total_units else 0.0
    for st in plan.stages:
        x0, w = st.layer_start * scale, st.num_layers * scale
        tip = (f"stage {st.index} on {st.chip}: units {st.layer_start}–{st.layer_end - 1}: "
               f"{', '.join(st.layer_names)}" + (" — recompute" if st.recompute else ""))
        svg.rect(x0 + 1, strip_top, w - 2, 30, fill=stage_color(st.index), rx=3, title=tip)
        text = f"S{st.index} · {st.num_layers} unit{'s' if st.num_layers != 1 else ''}"
        if st.recompute:
            text += " · R"
        if w > 7 * len(text):
            svg.text(x0 + w / 2, strip_top + 15, text, size=12, anchor="middle", fill="#fff",
                     weight="600")
        names = st.layer_names or (f"unit {st.layer_start}",)
        under = names[0] if len(names) == 1 else f"{names[0]} … {names[-1]}"
        if w <= 6.2 * len(under):
            under = names[0]
        if w > 6.2 * len(under):
            svg.text(x0 + 3, strip_top + 44, under, size=11, fill="#555")
        svg.line(x0 + 1, strip_top + 31, x0 + 1, strip_top + 36, stroke="#999")
    return svg


# --------------------------------------------------------------------------------------
# pipeline timeline (Gantt)
# --------------------------------------------------------------------------------------

def _rank_head(svg: Svg, plan: Plan, stages: Sequence[int], rank: int, *, y: float,
               h: float) -> None:
    """The label left of a rank's row: its stage when it runs one, else ``R0 · S0+S4``."""
    if len(stages) == 1:
        s = stages[0]
        _stage_head(svg, plan.stages[s] if s < len(plan.stages) else None, s, y=y, h=h)
        return
    for q, s in enumerate(stages):  # one colour segment per chunk
        seg = (h - 6) / len(stages)
        svg.rect(0, y + 3 + q * seg, 6, seg, fill=stage_color(s))
    names = "+".join(f"S{s}" for s in stages)
    st = plan.stages[stages[0]] if stages[0] < len(plan.stages) else None
    svg.text(12, y + h / 2 - 7, f"R{rank} · {names}", size=12, weight="600",
             title=", ".join(stage_label(plan.stages[s]) for s in stages
                             if s < len(plan.stages)))
    if st is not None:
        chip = st.chip if len(st.chip) <= 14 else st.chip[:13] + "…"
        svg.text(12, y + h / 2 + 8, f"{chip} · TP{st.tp} × DP{st.dp}", size=11, fill="#666")


def timeline_svg(plan: Plan, timeline: Simulation, *, predicted_s: float | None = None,
                 until_s: float | None = None, legend: bool = True) -> Svg:
    """One row per pipeline rank: forwards, backwards (recompute part darker), weight
    gradients under a split backward, and the tails; a thin strip in the stage's colour on
    each pass tells the chunks of an interleaved rank apart. Transfers between two adjacent
    ranks sit in the gap between their rows, those between the last rank and the first (the
    wrap of an interleaved schedule) in a gap below the last row; gaps are the bubble.
    ``until_s`` draws only the start of the iteration (a close-up of the warm-up)."""
    p = timeline.num_ranks
    ranks = timeline.ranks
    row_h, link_h = 32, 12
    left, right = LABEL_W, 24
    span = max(timeline.makespan_s, predicted_s or 0.0) or 1.0
    if until_s is not None and 0 < until_s < span:
        span = until_s
    else:
        until_s = None
    svg = Svg(WIDTH, 0, label=f"Pipeline timeline ({timeline.schedule})")
    top = 22.0
    kinds = ["F", "B"] + (["W"] if any(iv.kind == "W" for iv in timeline.intervals) else [])
    if legend:
        names = dict(KIND_NAMES, B="backward (input gradient)") if "W" in kinds else KIND_NAMES
        top += _legend(svg, [(names[k], KIND_COLORS[k]) for k in
                             (*kinds, "recompute", "p2p", "dp_sync", "optimizer", "idle")],
                       x=left, y=10, max_x=WIDTH - 140)

    def gap_of(a: int, b: int) -> int:
        """The gap (below row ``g``) that holds a transfer between ranks ``a`` and ``b``."""
        return min(a, b) if abs(a - b) == 1 else p - 1

    wraps = any(abs(ranks[s] - ranks[s + 1]) > 1 for s in range(len(ranks) - 1))
    gaps = max(p - 1, 0) + (1 if wraps else 0)
    svg.height = top + p * row_h + gaps * link_h + 34
    x0, x1 = left, WIDTH - right
    axis_y = top + p * row_h + gaps * link_h + 8
    scale = _axis(svg, x0=x0, x1=x1, y=axis_y, top=top - 6, span_s=span)

    def row_y(r: int) -> float:
        return top + r * (row_h + link_h)

    for r in range(p):
        y = row_y(r)
        _rank_head(svg, plan, timeline.stages_of(r), r, y=y, h=row_h)
        svg.rect(x0, y, min(timeline.pipeline_s, span) * scale, row_h, fill=KIND_COLORS["idle"],
                 title=(f"rank {r}: idle {fmt_seconds(timeline.idle_s(r))} of "
                        f"{fmt_seconds(timeline.pipeline_s)} "
                        f"({fmt_pct(timeline.idle_s(r) / timeline.pipeline_s)})"
                        if timeline.pipeline_s > 0 else f"rank {r}"))
    interleaved = p < timeline.num_stages
    for iv in timeline.intervals:
        if until_s is not None and iv.start_s >= until_s:
            continue
        w = (min(iv.end_s, span) - iv.start_s) * scale
        xs = x0 + iv.start_s * scale
        if iv.kind in ("p2p_fwd", "p2p_bwd"):
            g = gap_of(ranks[iv.stage], ranks[iv.stage + 1])
            y = row_y(g) + row_h + (1 if iv.kind == "p2p_fwd" else link_h / 2)
            direction = (f"S{iv.stage}→S{iv.stage + 1} activations" if iv.kind == "p2p_fwd"
                         else f"S{iv.stage + 1}→S{iv.stage} gradients")
            svg.rect(xs, y, max(w, 1.0), link_h / 2 - 1, fill=KIND_COLORS["p2p"],
                     title=f"{direction}, micro-batch {iv.micro_batch}: "
                           f"{fmt_seconds(iv.start_s)} → {fmt_seconds(iv.end_s)}")
            continue
        y = row_y(iv.rank)
        if iv.kind in ("F", "B", "W"):
            label = KIND_NAMES[iv.kind]
            tip = (f"stage {iv.stage} {label} of micro-batch {iv.micro_batch}: "
                   f"{fmt_seconds(iv.start_s)} → {fmt_seconds(iv.end_s)} "
                   f"({fmt_seconds(iv.duration_s)})")
            svg.rect(xs, y + 1, max(w - 0.6, 0.6), row_h - 2, fill=KIND_COLORS[iv.kind],
                     title=tip)
            _pass_parts(svg, iv, timeline, xs=xs, y=y + 1, h=row_h - 2, scale=scale, tip=tip,
                        max_x=x1)
            if interleaved:
                svg.rect(xs, y + 1, max(w - 0.6, 0.6), 4, fill=stage_color(iv.stage),
                         title=tip)
            if w >= 5 + 6 * len(str(iv.micro_batch)):
                svg.text(xs + w / 2, y + row_h / 2 + 1, str(iv.micro_batch), size=10,
                         anchor="middle", fill="#fff")
        else:
            svg.rect(xs, y + 1, max(w, 1.0), row_h - 2, fill=KIND_COLORS[iv.kind],
                     title=f"stage {iv.stage} {KIND_NAMES[iv.kind]}: "
                           f"{fmt_seconds(iv.duration_s)}")
    if predicted_s and predicted_s <= span:
        xp = x0 + predicted_s * scale
        svg.line(xp, top - 8, xp, axis_y, stroke="#222", width=1.2, dash="5 3")
        svg.text(min(xp, x1) - 4, top - 14, f"predicted iteration: {fmt_seconds(predicted_s)}",
                 size=11, anchor="end", fill="#222")
    return svg


def _pass_parts(svg: Svg, iv: Interval, timeline: Simulation, *, xs: float, y: float,
                h: float, scale: float, tip: str, max_x: float) -> None:
    """Overlay the parts of a pass that are not its own compute: transfers over a blocking
    link (receive first and send last in a forward; the reverse in a backward) and the
    recomputation at the start of a backward. A weight-gradient pass has neither."""
    if iv.stage >= len(timeline.stage_times) or iv.kind == "W":
        return
    st = timeline.stage_times[iv.stage]
    if iv.kind == "F":
        segments = [(0.0, st.recv_s, "p2p", "receive activations"),
                    (iv.duration_s - st.send_s, st.send_s, "p2p", "send activations")]
    else:
        segments = [(0.0, st.send_s, "p2p", "receive gradients"),
                    (st.send_s, st.recompute_s, "recompute", "recompute"),
                    (iv.duration_s - st.recv_s, st.recv_s, "p2p", "send gradients")]
    for offset, dur, kind, what in segments:
        x = xs + offset * scale
        if dur <= 0 or x >= max_x:
            continue
        svg.rect(x, y, min(dur * scale, max_x - x), h, fill=KIND_COLORS[kind],
                 title=f"{tip}; {what} {fmt_seconds(dur)}")


# --------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------

def _pred_by_stage(plan: Plan) -> dict[int, StagePrediction]:
    if plan.prediction is None:
        return {}
    return {sp.index: sp for sp in plan.prediction.stages}


def memory_svg(plan: Plan) -> Svg:
    """Per stage, the most loaded device's memory, stacked, inside a box of its capacity."""
    preds = _pred_by_stage(plan)
    row_h, gap = 32, 14
    right = 210
    n = len(plan.stages)
    svg = Svg(WIDTH, 0, label="Memory per device")
    top = _legend(svg, list(MEMORY_COLORS.items()), x=LABEL_W, y=10) + 14
    svg.height = top + n * (row_h + gap)
    peak = max((max(sp.memory.capacity, sp.memory.total) for sp in preds.values()), default=1.0)
    scale = (WIDTH - LABEL_W - right) / peak if peak > 0 else 0.0
    for i, st in enumerate(plan.stages):
        y = top + i * (row_h + gap)
        _stage_head(svg, st, st.index, y=y, h=row_h)
        sp = preds.get(st.index)
        if sp is None:
            svg.text(LABEL_W, y + row_h / 2, "no prediction", size=12, fill="#888")
            continue
        mem = sp.memory
        over = mem.total > mem.capacity
        svg.rect(LABEL_W, y, mem.capacity * scale, row_h, fill="#f6f7f9",
                 stroke="#d33" if over else "#9aa1aa", stroke_width=1.2, rx=3,
                 title=f"capacity {fmt_bytes(mem.capacity)}")
        x = LABEL_W
        for part in MEMORY_COLORS:
            v = float(getattr(mem, part))
            if v <= 0:
                continue
            tip = f"stage {st.index} {part}: {fmt_bytes(v)}"
            if part == "activations":
                tip += f" ({sp.in_flight} micro-batch(es) in flight"
                tip += ", recomputed layers keep only their inputs)" if st.recompute else ")"
            svg.rect(x, y + 3, v * scale, row_h - 6, fill=MEMORY_COLORS[part], title=tip)
            x += v * scale
        cap_x = LABEL_W + mem.capacity * scale
        svg.line(cap_x, y - 3, cap_x, y + row_h + 3, stroke="#d33" if over else "#555",
                 width=1.5)
        text = (f"{fmt_bytes(mem.total)} / {fmt_bytes(mem.capacity)} "
                f"({fmt_pct(mem.total / mem.capacity, 0) if mem.capacity else '—'})")
        svg.text(max(cap_x, x) + 8, y + row_h / 2, text, size=12,
                 fill="#c00" if over else "#222", weight="600" if over else "normal")
    return svg


# --------------------------------------------------------------------------------------
# compute vs communication
# --------------------------------------------------------------------------------------

def time_breakdown_svg(plan: Plan) -> Svg:
    """Per stage and micro-batch: forward, backward, recompute, TP and boundary comm."""
    preds = _pred_by_stage(plan)
    bottleneck = plan.prediction.bottleneck_stage if plan.prediction else -1
    row_h, gap, right = 30, 12, 210
    n = len(plan.stages)
    svg = Svg(WIDTH, 0, label="Per-stage time per micro-batch")
    top = _legend(svg, list(TIME_COLORS.items()), x=LABEL_W, y=10) + 16
    svg.height = top + n * (row_h + gap) + 30

    def parts(sp: StagePrediction) -> list[tuple[str, float]]:
        """Solid parts sum to ``busy_s``; overlapped transfers (activation and gradient over
        both boundaries) are drawn after them, lighter, as they cost nothing extra."""
        own = sp.fwd_s + sp.bwd_s + sp.recompute_s + sp.tp_comm_s
        blocking = max(0.0, sp.busy_s - own)
        overlapped = max(0.0, 2 * (sp.p2p_in_s + sp.p2p_out_s) - blocking)
        return [("forward", sp.fwd_s), ("backward", sp.bwd_s), ("recompute", sp.recompute_s),
                ("TP comm", sp.tp_comm_s), ("p2p (blocking)", blocking),
                ("p2p (overlapped)", overlapped)]

    longest = max((max(sum(v for _, v in parts(sp)), sp.busy_s) for sp in preds.values()),
                  default=0.0)
    span = longest or 1.0
    scale = (WIDTH - LABEL_W - right) / span
    axis_y = top + n * (row_h + gap)
    _axis(svg, x0=LABEL_W, x1=LABEL_W + span * scale, y=axis_y, top=top - 6, span_s=span)
    for i, st in enumerate(plan.stages):
        y = top + i * (row_h + gap)
        is_bn = st.index == bottleneck
        _stage_head(svg, st, st.index, y=y, h=row_h)
        sp = preds.get(st.index)
        if sp is None:
            continue
        x = LABEL_W
        for name, v in parts(sp):
            if v <= 0:
                continue
            svg.rect(x, y, v * scale, row_h, fill=TIME_COLORS[name],
                     title=f"stage {st.index} {name}: {fmt_seconds(v)} per micro-batch")
            x += v * scale
        bx = LABEL_W + sp.busy_s * scale
        svg.line(bx, y - 3, bx, y + row_h + 3, stroke="#222", width=1.5)
        text = f"busy {fmt_seconds(sp.busy_s)}"
        if is_bn:
            text += "  ◀ bottleneck"
        svg.text(max(x, bx) + 8, y + row_h / 2, text, size=12,
                 fill="#c00" if is_bn else "#222", weight="700" if is_bn else "normal")
    return svg

