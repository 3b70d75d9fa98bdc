"""Tests of the pipeline schedules (``autosplit.cost.schedule``) and their event simulation
(``autosplit.cost.schedule_sim``).

The orders are checked against what the installed ``torch.distributed.pipelining`` executes;
the simulation against the closed form where that is exact, against the published bubble
figures (Narayanan et al. 2021 for interleaving, Qi et al. 2023 for zero bubble), and for
the properties any schedule must have (every pass once, dependencies respected, never
faster than the busiest rank, monotone in every time).
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autosplit.cost.pipeline import pipeline_time
from autosplit.cost.schedule import SCHEDULE_NAMES, get_schedule
from autosplit.cost.schedule_sim import Simulation, StageTimes
from autosplit.errors import BadInputError
from autosplit.protocols.schedule import Schedule

torch_sched = pytest.importorskip("torch.distributed.pipelining.schedules")

_EPS = 1e-9

# Schedules and the chunk counts they are tested with.
VARIANTS = [("1f1b", 1), ("gpipe", 1), ("interleaved-1f1b", 2), ("interleaved-1f1b", 3),
            ("zb-h1", 1), ("interleaved-zb", 2), ("zbv", 2)]


def shapes(schedule: Schedule, max_ranks: int = 5) -> list[tuple[int, int]]:
    """(ranks, micro-batches) pairs the schedule accepts, small enough to test them all."""
    out = []
    for p in range(1, max_ranks + 1):
        for m in range(1, 3 * p + 3):
            try:
                schedule.check(p, m)
            except BadInputError:
                continue
            out.append((p, m))
    return out


# ---------------------------------------------------------------------------------------
# the orders are PyTorch's
# ---------------------------------------------------------------------------------------

class _RecordingStage:
    """Just enough of a ``PipelineStage`` for a schedule to be built and stepped without
    processes: no communication, and forward/backward calls recorded in ``log``."""

    submod = None

    def __init__(self, *, rank: int, ranks: int, stages: int) -> None:
        self.group_rank, self.group_size, self.num_stages = rank, ranks, stages
        self.stage_index = rank
        self.is_first, self.is_last = rank == 0, rank == ranks - 1
        self.log: list[tuple] = []

    def forward_one_chunk(self, k: int, *args: object, **kwargs: object) -> None:
        self.log.append(("F", self.stage_index, k))

    def backward_one_chunk(self, k: int, *args: object, **kwargs: object) -> None:
        self.log.append(("B", self.stage_index, k))

    def _no_ops(self, *args: object, **kwargs: object) -> list:
        return []

    get_fwd_recv_ops = get_fwd_send_ops = get_bwd_recv_ops = get_bwd_send_ops = _no_ops
    clear_runtime_states = perform_reduce_grad = _no_ops


def torch_single_order(cls: type, ranks: int, micro_batches: int, rank: int) -> list[tuple]:
    """What ``Schedule1F1B``/``ScheduleGPipe`` execute on ``rank``: their step loop run with a
    stage that records its forward and backward calls (their ``pipeline_order`` tables are
    only a picture, and in PyTorch 2.13 the 1F1B one is off by one on the last rank)."""
    stage = _RecordingStage(rank=rank, ranks=ranks, stages=ranks)
    schedule = cls(stage, micro_batches, loss_fn=None)
    schedule._has_backward = True
    schedule._initialize_stage = lambda *a, **kw: None
    schedule._step_microbatches([()] * micro_batches, [{}] * micro_batches, None, None)
    return stage.log


def torch_multi_order(cls: type, ranks: int, micro_batches: int, chunks: int) -> list[list]:
    """The compute actions a multi-stage schedule executes, per rank, in order: its lowered
    program (``pipeline_order_with_comms``) without the communication and gradient-reduce
    actions (the schedule's constructor builds it for every rank)."""
    ct = torch_sched._ComputationType
    kind = {ct.FORWARD: "F", ct.FULL_BACKWARD: "B", ct.BACKWARD_INPUT: "B",
            ct.BACKWARD_WEIGHT: "W"}
    stage = _RecordingStage(rank=0, ranks=ranks, stages=ranks * chunks)
    schedule = cls([stage] * chunks, micro_batches)
    return [[(kind[a.computation_type], a.stage_index, a.microbatch_index)
             for a in schedule.pipeline_order_with_comms[r] if a.computation_type in kind]
            for r in range(ranks)]


def ours(schedule: Schedule, ranks: int, micro_batches: int) -> list[list[tuple]]:
    return [[(ps.kind, ps.stage, ps.micro_batch) for ps in passes]
            for passes in schedule.order(ranks, micro_batches)]


@pytest.mark.parametrize("name", ["1f1b", "gpipe"])
def test_single_stage_orders_match_torch_execution(name: str) -> None:
    schedule = get_schedule(name)
    cls = getattr(torch_sched, schedule.runtime_class)
    for p in range(1, 6):
        for m in range(p, 3 * p + 2):  # Schedule1F1B needs at least one micro-batch per rank
            mine = ours(schedule, p, m)
            for r in range(p):
                assert mine[r] == torch_single_order(cls, p, m, r), (name, p, m, r)


@pytest.mark.parametrize(("name", "v"), [v for v in VARIANTS if v[1] > 1 or v[0] == "zb-h1"])
def test_multi_stage_orders_match_torch(name: str, v: int) -> None:
    """Same order as PyTorch, and refused exactly where PyTorch refuses the shape."""
    schedule = get_schedule(name, virtual_stages=v)
    cls = getattr(torch_sched, schedule.runtime_class)
    compared = 0
    for p in range(1, 6):
        for m in range(1, 3 * p + 3):
            try:
                expected = torch_multi_order(cls, p, m, v)
            except ValueError:
                with pytest.raises(BadInputError):
                    schedule.order(p, m)
                continue
            assert ours(schedule, p, m) == expected, (name, v, p, m)
            compared += 1
    assert compared > 20


def test_runtime_classes_and_export_names_exist() -> None:
    for name in SCHEDULE_NAMES:
        schedule = get_schedule(name)
        assert isinstance(schedule, Schedule)
        assert hasattr(torch_sched, schedule.runtime_class), schedule.runtime_class
        # torchtitan takes PyTorch's names (get_schedule_class is case-insensitive).
        tt = schedule.export_names["torchtitan"]
        assert getattr(torch_sched, schedule.runtime_class) is torch_sched.get_schedule_class(tt)
    assert set(get_schedule("1f1b").export_names) == {"torchtitan", "megatron", "deepspeed"}
    assert get_schedule("interleaved-1f1b").export_names["megatron"] == \
        "forward_backward_pipelining_with_interleaving"
    assert "deepspeed" not in get_schedule("interleaved-1f1b").export_names


# ---------------------------------------------------------------------------------------
# every order is a valid schedule
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "v"), VARIANTS)
def test_each_pass_once_on_its_rank_and_dependencies_hold(name: str, v: int) -> None:
    schedule = get_schedule(name, virtual_stages=v)
    kinds = ("F", "B", "W") if schedule.splits_backward else ("F", "B")
    for p, m in shapes(schedule):
        n = p * v
        orders = schedule.order(p, m)
        seen = Counter((ps.kind, ps.stage, ps.micro_batch) for o in orders for ps in o)
        assert seen == Counter({(k, s, mb): 1 for k in kinds for s in range(n)
                                for mb in range(m)}), (name, p, m)
        for r, o in enumerate(orders):
            assert {schedule.rank_of(ps.stage, p) for ps in o} <= {r}
        # Unequal stages, transfers: the simulation finishes (no deadlock) and every pass
        # starts after its inputs and after the previous pass of its rank.
        times = [StageTimes(0.5 + 0.1 * s, 1.0 + 0.05 * s, wgt_s=0.4, p2p_next_s=0.03 * s)
                 for s in range(n)]
        sim = schedule.simulate(times, m)
        assert_dependencies(sim, times, split=schedule.splits_backward)


def assert_dependencies(sim: Simulation, times: list[StageTimes], *, split: bool) -> None:
    n, m = sim.num_stages, sim.micro_batches
    start = {(iv.kind, iv.stage, iv.micro_batch): iv.start_s for iv in sim.intervals}
    end = {(iv.kind, iv.stage, iv.micro_batch): iv.end_s for iv in sim.intervals}

    def hop(s: int) -> float:
        return times[s].p2p_next_s if sim.ranks[s] != sim.ranks[s + 1] else 0.0

    for k in range(m):
        for s in range(1, n):
            assert start[("F", s, k)] >= end[("F", s - 1, k)] + hop(s - 1) - _EPS
        for s in range(n - 1):
            assert start[("B", s, k)] >= end[("B", s + 1, k)] + hop(s) - _EPS
        assert start[("B", n - 1, k)] >= end[("F", n - 1, k)] - _EPS
        if split:
            for s in range(n):
                assert start[("W", s, k)] >= end[("B", s, k)] - _EPS
    for r in range(sim.num_ranks):
        passes = sim.of_rank(r, "F", "B", "W")
        for a, b in zip(passes, passes[1:], strict=False):
            assert b.start_s >= a.end_s - _EPS


def test_unknown_schedule_and_bad_virtual_stages_are_named() -> None:
    with pytest.raises(BadInputError) as exc:
        get_schedule("zigzag")
    assert exc.value.field == "schedule"
    assert all(name in exc.value.fix for name in SCHEDULE_NAMES)
    for name, v in [("1f1b", 2), ("interleaved-1f1b", 1), ("zbv", 3), ("gpipe", 0)]:
        with pytest.raises(BadInputError) as exc:
            get_schedule(name, virtual_stages=v)
        assert exc.value.field == "virtual_stages"
    with pytest.raises(BadInputError) as exc:
        get_schedule("interleaved-1f1b").order(4, 9)  # 2 rounds do not divide 9
    assert exc.value.field == "micro_batch_count"
    with pytest.raises(BadInputError):
        get_schedule("zbv").num_ranks(5)


# ---------------------------------------------------------------------------------------
# the closed form: where it is exact, where it bounds
# ---------------------------------------------------------------------------------------

def closed_form(times: list[StageTimes], m: int) -> float:
    return pipeline_time([t.fwd_s + t.bwd_s for t in times], micro_batches=m,
                         p2p=[t.p2p_next_s for t in times])


@pytest.mark.parametrize("name", ["1f1b", "gpipe"])
@pytest.mark.parametrize(("p", "m"), [(1, 1), (1, 5), (2, 1), (3, 2), (4, 8), (5, 3), (6, 24)])
def test_closed_form_is_exact_for_equal_stages(name: str, p: int, m: int) -> None:
    f, b = 1.25, 2.5
    times = [StageTimes(f, b)] * p
    sim = get_schedule(name).simulate(times, m)
    assert sim.pipeline_s == pytest.approx(closed_form(times, m))
    assert sim.pipeline_s == pytest.approx((m + p - 1) * (f + b))
    assert sim.bubble_fraction() == pytest.approx((p - 1) / (m + p - 1))


_stage = st.tuples(st.floats(0.1, 2.0), st.floats(0.2, 4.0), st.floats(0.0, 1.0))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(stages=st.lists(_stage, min_size=1, max_size=6), m=st.integers(1, 12),
       transfers=st.booleans())
def test_closed_form_bounds(stages: list[tuple[float, float, float]], m: int,
                            transfers: bool) -> None:
    """GPipe: the closed form is a lower bound (equal when one stage is the slowest both
    forward and backward). 1F1B is bounded by neither side in general (see
    test_1f1b_can_end_after_the_closed_form_without_transfers). Every schedule with one
    stage per rank is at least each rank's work plus the fill before and the drain after it;
    with split backward, the fill only."""
    times = [StageTimes(f, b, wgt_s=b / 2, p2p_next_s=x if transfers else 0.0)
             for f, b, x in stages]
    times[-1] = StageTimes(times[-1].fwd_s, times[-1].bwd_s, wgt_s=times[-1].wgt_s)
    form = closed_form(times, m)
    gp = get_schedule("gpipe").simulate(times, m).pipeline_s
    assert gp >= form - _EPS
    max_f, max_b = max(t.fwd_s for t in times), max(t.bwd_s for t in times)
    if any(t.fwd_s == max_f and t.bwd_s == max_b for t in times):
        assert gp == pytest.approx(form)
    one = get_schedule("1f1b").simulate(times, m).pipeline_s
    fill = [sum(t.fwd_s + t.p2p_next_s for t in times[:s]) for s in range(len(times))]
    drain = [sum(t.bwd_s + t.p2p_next_s for t in times[:s]) for s in range(len(times))]
    for s, t in enumerate(times):
        work = m * (t.fwd_s + t.bwd_s)
        assert one >= fill[s] + work + drain[s] - _EPS
        assert gp >= fill[s] + work + drain[s] - _EPS
    zb = get_schedule("zb-h1")
    try:
        zb.check(len(times), m)
    except BadInputError:
        zb_time = None
    else:
        zb_time = zb.simulate(times, m).pipeline_s
        for s, t in enumerate(times):
            assert zb_time >= fill[s] + m * (t.fwd_s + t.bwd_s) - _EPS


def test_1f1b_can_end_after_the_closed_form_without_transfers() -> None:
    """1F1B's order makes the middle rank run its second forward before its first backward,
    although that backward's gradient is ready first: with a slow backward there the first
    rank waits, and the pipeline ends half a unit after the closed form Σu + (m−1)·max u —
    which is why the search re-costs its finalists by the simulation."""
    times = [StageTimes(2.0, 1.0), StageTimes(0.5, 3.0), StageTimes(0.5, 0.5)]
    assert closed_form(times, 2) == pytest.approx(11.0)
    assert get_schedule("1f1b").simulate(times, 2).pipeline_s == pytest.approx(11.5)


def test_zb_h1_is_not_bounded_by_the_closed_form() -> None:
    """With few micro-batches ZB-H1's delayed W passes bunch up on the last rank: here that
    rank is the slowest and ZB-H1 ends after 1F1B and after the closed form."""
    times = [StageTimes(2.0, 0.25, wgt_s=0.125), StageTimes(0.5, 2.0, wgt_s=1.0)]
    zb = get_schedule("zb-h1").simulate(times, 2).pipeline_s
    one = get_schedule("1f1b").simulate(times, 2).pipeline_s
    assert one == pytest.approx(closed_form(times, 2)) == pytest.approx(7.25)
    assert zb == pytest.approx(7.5)


def test_closed_form_is_optimistic_for_1f1b_with_long_transfers() -> None:
    """Stage s of 1F1B has only p − s micro-batches in flight; when a round trip over the
    link takes longer than that much work, the stage waits and the closed form (which counts
    each transfer only in the fill and the drain) is too low."""
    times = [StageTimes(1.0, 2.0, p2p_next_s=2.0), StageTimes(1.0, 2.0)]
    sim = get_schedule("1f1b").simulate(times, 8)
    assert sim.pipeline_s > closed_form(times, 8) * 1.2


def test_round_trip_period_tracks_the_simulation() -> None:
    """With each stage's in-flight limit (``p − s`` for 1F1B) the closed form's period counts
    the round trip a stage waits for (Little's law): on random 1F1B pipelines with transfers
    it is much closer to the simulation than ``max u`` alone, and on the long-transfer case
    above it is within 5 % of the simulation (it was 20 % below)."""
    rng = random.Random(7)
    old_err = new_err = 0.0
    for _ in range(300):
        p = rng.randint(2, 6)
        m = rng.choice([p, 2 * p, 16])
        times = [StageTimes(rng.uniform(0.5, 2), rng.uniform(1, 4),
                            p2p_next_s=rng.uniform(0, 3) if s < p - 1 else 0.0)
                 for s in range(p)]
        sim = get_schedule("1f1b").simulate(times, m).pipeline_s
        busy = [t.fwd_s + t.bwd_s for t in times]
        hops = [t.p2p_next_s for t in times]
        w = [get_schedule("1f1b").in_flight(s, p, m) for s in range(p)]
        old_err += abs(closed_form(times, m) / sim - 1)
        new_err += abs(pipeline_time(busy, micro_batches=m, p2p=hops, in_flight=w) / sim - 1)
    assert new_err < old_err / 3
    times = [StageTimes(1.0, 2.0, p2p_next_s=2.0), StageTimes(1.0, 2.0)]
    sim = get_schedule("1f1b").simulate(times, 8).pipeline_s
    assert pipeline_time([3.0, 3.0], micro_batches=8, p2p=[2.0, 0.0],
                         in_flight=[2, 1]) == pytest.approx(sim, rel=0.05)


# ---------------------------------------------------------------------------------------
# published bubble figures
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("v", [2, 3, 4])
@pytest.mark.parametrize(("p", "m"), [(2, 4), (4, 8), (4, 16), (8, 16), (8, 32)])
def test_interleaving_divides_the_bubble_by_v(v: int, p: int, m: int) -> None:
    """Narayanan et al. 2021, section 2.2: with equal stages split into ``v`` equal chunks,
    the bubble is ``(p − 1)/(v·m)`` of the ideal time (``(p − 1)/m`` without interleaving)."""
    f, b = 1.0, 2.0
    plain = get_schedule("1f1b").simulate([StageTimes(f, b)] * p, m)
    sim = get_schedule("interleaved-1f1b", virtual_stages=v).simulate(
        [StageTimes(f / v, b / v)] * (p * v), m)
    ideal = m * (f + b)
    assert (plain.pipeline_s - ideal) / ideal == pytest.approx((p - 1) / m)
    assert (sim.pipeline_s - ideal) / ideal == pytest.approx((p - 1) / (v * m))
    assert sim.bubble_s == pytest.approx(plain.bubble_s / v)


@pytest.mark.parametrize(("p", "m"), [(2, 4), (4, 8), (4, 12), (8, 16), (8, 24)])
def test_zero_bubble_h1_has_a_third_of_the_1f1b_bubble(p: int, m: int) -> None:
    """Qi et al. 2023, section 3.1: with ``T_F = T_B = T_W`` ZB-H1's bubble is
    ``(p − 1)(T_F + T_B − T_W)``, a third of 1F1B's ``(p − 1)(T_F + T_B + T_W)``."""
    t = 1.0
    times = [StageTimes(t, 2 * t, wgt_s=t)] * p
    one = get_schedule("1f1b").simulate(times, m)
    zb = get_schedule("zb-h1").simulate(times, m)
    assert one.bubble_s == pytest.approx((p - 1) * 3 * t)
    assert zb.bubble_s == pytest.approx((p - 1) * t)
    assert zb.bubble_s == pytest.approx(one.bubble_s / 3)
    # A schedule that splits the backward changes nothing when nothing waits on it.
    assert get_schedule("zb-h1").simulate([StageTimes(t, 2 * t, wgt_s=t)], m).bubble_s == 0


@pytest.mark.parametrize(("p", "m"), [(2, 4), (4, 8), (4, 16), (8, 16)])
def test_zbv_bubble_is_below_zb_h1(p: int, m: int) -> None:
    """Qi et al. 2023, section 6: ZB-V's bubble is below ZB-H1's at the same memory; at equal
    work per rank (a stage's ``F = B = W = 2`` against two chunks of 1 each) it is half."""
    zbh1 = get_schedule("zb-h1").simulate([StageTimes(2.0, 4.0, wgt_s=2.0)] * p, m)
    zbv = get_schedule("zbv").simulate([StageTimes(1.0, 2.0, wgt_s=1.0)] * (2 * p), m)
    one = get_schedule("1f1b").simulate([StageTimes(2.0, 4.0)] * p, m)
    assert zbv.bubble_s < zbh1.bubble_s < one.bubble_s
    assert zbv.bubble_s == pytest.approx(zbh1.bubble_s / 2)


def test_transfer_between_two_stages_of_one_rank_is_free() -> None:
    """The V turns on the last rank: stages p − 1 and p share devices."""
    p, m = 3, 6
    base = [StageTimes(1.0, 2.0, wgt_s=1.0, p2p_next_s=0.1)] * (2 * p)
    slow_turn = list(base)
    slow_turn[p - 1] = StageTimes(1.0, 2.0, wgt_s=1.0, p2p_next_s=50.0)
    zbv = get_schedule("zbv")
    assert zbv.simulate(slow_turn, m).pipeline_s == zbv.simulate(base, m).pipeline_s


# ---------------------------------------------------------------------------------------
# unequal stages and transfers behave sensibly
# ---------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None, derandomize=True)
@given(variant=st.sampled_from(VARIANTS), ranks=st.integers(1, 4), m=st.integers(1, 10),
       base=st.lists(_stage, min_size=12, max_size=12), which=st.integers(0, 11),
       field=st.sampled_from(["fwd_s", "bwd_s", "p2p_next_s"]), extra=st.floats(0.01, 3.0))
def test_monotone_in_every_time_and_never_below_the_busiest_rank(
        variant: tuple[str, int], ranks: int, m: int, base: list, which: int, field: str,
        extra: float) -> None:
    name, v = variant
    schedule = get_schedule(name, virtual_stages=v)
    try:
        schedule.check(ranks, m)
    except BadInputError:
        return
    n = ranks * v
    times = [StageTimes(f, b, wgt_s=b / 2, p2p_next_s=x) for f, b, x in base[:n]]
    sim = schedule.simulate(times, m)
    work = [sum(m * (times[s].fwd_s + times[s].bwd_s) for s in sim.stages_of(r))
            for r in range(ranks)]
    assert sim.pipeline_s >= max(work) - _EPS
    for r in range(ranks):
        assert sim.busy_s(r) == pytest.approx(work[r])
    k = which % n
    old = times[k]
    bigger = {"fwd_s": old.fwd_s, "bwd_s": old.bwd_s, "p2p_next_s": old.p2p_next_s}
    bigger[field] += extra
    times[k] = StageTimes(wgt_s=old.wgt_s, **bigger)
    assert schedule.simulate(times, m).pipeline_s >= sim.pipeline_s - _EPS


def test_tails_follow_each_ranks_last_pass() -> None:
    times = [StageTimes(1.0, 2.0, dp_sync_s=0.5, optimizer_s=0.25),
             StageTimes(1.0, 2.0, dp_sync_s=4.0, optimizer_s=1.0)]
    sim = get_schedule("1f1b").simulate(times, 3)
    for r, t in enumerate(times):
        last = max(iv.end_s for iv in sim.of_rank(r, "F", "B"))
        sync, opt = sim.of_rank(r, "dp_sync")[0], sim.of_rank(r, "optimizer")[0]
        assert sync.start_s == pytest.approx(last)
        assert opt.start_s == pytest.approx(sync.end_s)
        assert opt.duration_s == pytest.approx(t.optimizer_s)
    assert sim.makespan_s == pytest.approx(max(
        max(iv.end_s for iv in sim.of_rank(r, "B")) + t.dp_sync_s + t.optimizer_s
        for r, t in enumerate(times)))
    assert sim.tail_s == pytest.approx(sim.makespan_s - sim.pipeline_s)


def test_empty_and_invalid_inputs() -> None:
    schedule = get_schedule("1f1b")
    assert schedule.simulate([], 4).makespan_s == 0
    with pytest.raises(BadInputError):
        schedule.simulate([StageTimes(-1.0, 1.0)], 2)
    with pytest.raises(BadInputError):
        schedule.simulate([StageTimes(1.0, 1.0, wgt_s=2.0)], 2)


# ---------------------------------------------------------------------------------------
# micro-batches in flight (memory)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("p", "m"), [(1, 3), (3, 8), (4, 3), (2, 6), (6, 6)])
def test_in_flight_of_1f1b_gpipe_and_zb_h1(p: int, m: int) -> None:
    one, gp, zb = get_schedule("1f1b"), get_schedule("gpipe"), get_schedule("zb-h1")
    assert [one.in_flight(s, p, m) for s in range(p)] == [min(p - s, m) for s in range(p)]
    assert [gp.in_flight(s, p, m) for s in range(p)] == [m] * p
    assert [zb.in_flight(s, p, m) for s in range(p)] == [min(p, m)] * p
    # 1F1B's and GPipe's closed forms are what walking their orders counts
    for schedule in (one, gp):
        assert [_rank_peak(schedule, p, m, s) for s in range(p)] == \
            [schedule.in_flight(s, p, m) for s in range(p)]


@pytest.mark.parametrize("v", [2, 3, 4])
@pytest.mark.parametrize(("p", "m"), [(2, 4), (4, 8), (4, 16), (8, 16)])
def test_in_flight_of_interleaved_and_zbv_per_rank(v: int, p: int, m: int) -> None:
    """Interleaved 1F1B's first rank holds ``(v − 1)·p + 2p − 1`` chunk-sized micro-batches,
    ``p·(1 + (p − 1)/(p·v))`` stage-sized ones (Korthikanti et al. 2022, §4.2.3); ZBV's
    ranks hold ``2p`` chunk-sized ones, ``p`` stage-sized (Qi et al. 2023, §6)."""
    il = get_schedule("interleaved-1f1b", virtual_stages=v)
    n = p * v
    first_rank = sum(il.in_flight(s, n, m) for s in range(n) if il.rank_of(s, p) == 0)
    peak = max(_rank_peak(il, p, m, r) for r in range(p))
    assert _rank_peak(il, p, m, 0) == peak == (v - 1) * p + 2 * p - 1
    assert peak / v == pytest.approx(p * (1 + (p - 1) / (p * v)))
    assert first_rank >= peak  # per-chunk peaks need not coincide
    zbv = get_schedule("zbv")
    assert [_rank_peak(zbv, p, m, r) for r in range(p)] == [2 * p] * p


@pytest.mark.parametrize(("name", "v"), VARIANTS)
def test_rank_activation_peaks_walk_the_order(name: str, v: int) -> None:
    """Unit bytes count the chunk-sized micro-batches a rank holds; with one chunk per rank
    the walk is ``in_flight · per + work``; with several it never exceeds the sum of the
    chunks' own peaks and never falls below the largest of them."""
    schedule = get_schedule(name, virtual_stages=v)
    for p, m in shapes(schedule, max_ranks=4):
        n = p * v
        assert schedule.rank_activation_peaks([1.0] * n, [0.0] * n, m) == \
            [_rank_peak(schedule, p, m, r) for r in range(p)]
        per = [1.0 + 0.5 * (s % 3) for s in range(n)]
        work = [0.1 * (s + 1) for s in range(n)]
        peaks = schedule.rank_activation_peaks(per, work, m)
        own = [schedule.in_flight(s, n, m) * per[s] + work[s] for s in range(n)]
        for r in range(p):
            mine = [own[s] for s in range(n) if schedule.rank_of(s, p) == r]
            assert max(mine) - 1e-9 <= peaks[r] <= sum(mine) + 1e-9, (name, p, m, r)
            if v == 1:
                assert peaks[r] == pytest.approx(mine[0])


def test_interleaved_rank_peak_of_unequal_chunks() -> None:
    """Two ranks, two chunks of 6 and 5 units on rank 0, 16 micro-batches (the H200 run of
    experiments/runtime/results/interleaved-50-30-gpt): rank 0 warms up with F(0,0) F(0,1)
    F(2,0) F(2,1), then F(0,2) B(2,0) F(0,3) — four micro-batches of chunk 0 and one of
    chunk 2, 29 units' worth, where the chunks' own peaks (4 and 2) add up to 34."""
    il = get_schedule("interleaved-1f1b", virtual_stages=2)
    assert il.rank_activation_peaks([6.0, 6.0, 5.0, 5.0], [0.0] * 4, 16)[0] == 29.0
    assert [il.in_flight(s, 4, 16) for s in (0, 2)] == [4, 2]


def _rank_peak(schedule: Schedule, p: int, m: int, rank: int) -> int:
    """Chunk-sized micro-batches rank ``rank`` holds at once (all its chunks together)."""
    frees = "W" if schedule.splits_backward else "B"
    live = peak = 0
    for ps in schedule.order(p, m)[rank]:
        live += 1 if ps.kind == "F" else -1 if ps.kind == frees else 0
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize(("name", "v"), VARIANTS)
def test_in_flight_counted_on_the_order_equals_the_simulated_one(name: str, v: int) -> None:
    schedule = get_schedule(name, virtual_stages=v)
    for p, m in shapes(schedule, max_ranks=4):
        n = p * v
        times = [StageTimes(0.3 + 0.2 * (s % 3), 0.8 + 0.1 * s, wgt_s=0.3, p2p_next_s=0.05)
                 for s in range(n)]
        sim = schedule.simulate(times, m)
        assert [schedule.in_flight(s, n, m) for s in range(n)] == \
            [sim.max_in_flight(s) for s in range(n)], (name, p, m)
