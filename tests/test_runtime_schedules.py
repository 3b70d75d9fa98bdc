"""Every schedule of the registry runs: ranks holding several model chunks (interleaved 1F1B,
ZBV's V), split backward passes (B, then W), boundaries between two chunks of one rank
handed over in memory, a message order that cannot deadlock, and CPU runs through
`autosplit run` that train exactly like the unsplit model."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_support import (
    GPT,
    GPT_ARGS,
    StageSpec,
    assert_trains_like,
    plan_dict,
    reference,
    replay_as_nccl,
    run_and_dump,
    write_plan,
)

from autosplit.cost.schedule import SCHEDULE_NAMES, get_schedule
from autosplit.plan.io import load_plan
from autosplit.runtime.executor import comm_program
from autosplit.runtime.layout import Route, RunLayout, StageLayout, run_layout
from autosplit.runtime.pipeline import rank_orders


def _virtual_layout(name: str, positions: list[tuple[int, tuple[int, ...]]],
                    micro_batches: int) -> tuple[RunLayout, list[list]]:
    """The layout of ``name`` over ``positions`` (TP degree and batch shares of each
    pipeline rank), every rank holding the schedule's virtual stages, and its orders."""
    schedule = get_schedule(name)
    p = len(positions)
    firsts, at = [], 0
    for tp, shares in positions:
        firsts.append(at)
        at += tp * len(shares)
    stages = []
    for s in range(p * schedule.virtual_stages):
        r = schedule.rank_of(s, p)
        stages.append(StageLayout(s, firsts[r], *positions[r]))
    return RunLayout(tuple(stages), micro_batches), schedule.order(p, micro_batches)


# ---- layout and messages -------------------------------------------------------------------

def test_a_rank_holds_every_stage_of_its_position_and_chunk_boundaries_stay_local() -> None:
    layout, _ = _virtual_layout("zbv", [(1, (2,)), (1, (2,))], 4)
    # V shape: rank 0 runs stages 0 and 3, rank 1 stages 1 and 2.
    assert layout.world_size == 2
    assert [layout.stages_of(r) for r in (0, 1)] == [(0, 3), (1, 2)]
    # The turn at the last rank (1 -> 2) stays on rank 1; every other boundary crosses.
    assert [layout.is_local(s, +1) for s in range(3)] == [False, True, False]
    assert layout.activation_sends(1, 1) == [Route(1, 0, 2)]  # to itself: all its rows
    assert layout.activation_sends(1, 2)[0].peer == 0
    assert layout.activation_recvs(0, 3)[0].peer == 1
    interleaved, _ = _virtual_layout("interleaved-1f1b", [(1, (1, 1)), (2, (2,))], 4)
    # Two replicas, then one of two TP ranks; four stages looped over the two positions.
    assert interleaved.world_size == 4
    assert [interleaved.stages_of(r) for r in range(4)] == [(0, 2), (0, 2), (1, 3), (1, 3)]
    assert interleaved.place(3, 3).tp_index == 1


def test_chunk_boundaries_send_nothing_and_w_passes_no_message() -> None:
    layout, orders = _virtual_layout("zbv", [(1, (2,)), (1, (2,))], 4)
    program = comm_program(orders, layout=layout, rank=1)
    messages = [m for b in program for m in (*b.sends, *b.recvs)]
    # Rank 1 receives stage 1's input and stage 2's output gradient from rank 0, and sends
    # stage 2's output and stage 1's input gradient to it: never boundary 1 (local).
    assert {m.boundary for m in messages} == {0, 2}
    assert {m.peer for m in messages} == {0}
    assert len(messages) == 4 * 4  # 4 crossings of 4 micro-batches
    ws = [k for k, p in enumerate(orders[1]) if p.kind == "W"]
    assert ws and all(not program[k].recvs for k in ws)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
@pytest.mark.parametrize("positions", [
    [(1, (1,))] * 2, [(1, (1,))] * 3, [(1, (1,))] * 4,
    [(2, (4,)), (1, (1, 3)), (1, (2, 2))],
], ids=["p2", "p3", "p4", "mixed-layouts"])
def test_every_schedule_s_messages_cannot_deadlock(
        name: str, positions: list[tuple[int, tuple[int, ...]]]) -> None:
    p = len(positions)
    for micro_batches in range(1, 3 * p + 1):
        try:
            get_schedule(name).check(p, micro_batches)
        except Exception:  # noqa: BLE001 - a shape the schedule refuses is not run
            continue
        layout, orders = _virtual_layout(name, positions, micro_batches)
        programs = {r: comm_program(orders, layout=layout, rank=r)
                    for r in range(layout.world_size)}
        assert replay_as_nccl(programs), (name, positions, micro_batches)


def test_a_one_rank_interleaved_pipeline_sends_nothing() -> None:
    layout, orders = _virtual_layout("interleaved-1f1b", [(1, (2,))], 2)
    assert layout.stages_of(0) == (0, 1)
    program = comm_program(orders, layout=layout, rank=0)
    assert all(not b.sends and not b.recvs for b in program)


# ---- runs ------------------------------------------------------------------------------------

#: GPT tiny has 6 units: embeddings, four blocks, the head.
_RUNS = {
    # Interleaved 1F1B, 2 ranks x 2 chunks of unequal size, 4 micro-batches (2 rounds).
    "interleaved-1f1b": ([StageSpec(0, 2), StageSpec(2, 3), StageSpec(3, 5), StageSpec(5, 6)],
                         [0, 1, 0, 1], 2),
    # ZB-H1: one chunk per rank, split backward.
    "zb-h1": ([StageSpec(0, 3), StageSpec(3, 6)], [0, 1], 1),
    # ZBV: stages 0 and 3 on rank 0, 1 and 2 on rank 1 (the turn stays local).
    "zbv": ([StageSpec(0, 2), StageSpec(2, 3), StageSpec(3, 4), StageSpec(4, 6)],
            [0, 1, 1, 0], 2),
}


@pytest.mark.parametrize("name", list(_RUNS))
def test_virtual_and_split_backward_schedules_train_like_the_unsplit_model(
        tmp_path: Path, name: str) -> None:
    stages, ranks, v = _RUNS[name]
    steps, micro_batches = 2, 4
    plan = write_plan(tmp_path, plan_dict(GPT, GPT_ARGS, stages, micro_batches=micro_batches,
                                          schedule=name, ranks=ranks, virtual_stages=v))
    loaded = load_plan(plan)
    # The runtime's order is the cost model's: the rank running stage 0 runs these passes.
    assert rank_orders(loaded) == get_schedule(name, virtual_stages=v).order(
        loaded.num_ranks, micro_batches)
    assert run_layout(loaded).world_size == 2
    measured, got = run_and_dump(tmp_path, plan, GPT, steps)
    assert sorted(tuple(r["stages"]) for r in measured["ranks"]) == sorted(
        tuple(s for s, r in enumerate(ranks) if r == k) for k in (0, 1))
    assert_trains_like(measured, got, reference(GPT, GPT_ARGS, steps=steps,
                                                global_batch=2 * micro_batches,
                                                micro_batches=micro_batches))


def test_orders_that_wait_on_each_other_are_refused() -> None:
    from autosplit.cost.schedule import Pass
    from autosplit.runtime.executor import pass_rounds

    # Rank 1 wants micro-batch 1 before micro-batch 0, which rank 0 sends first: each waits.
    orders = [[Pass("F", 0, 0), Pass("B", 0, 1), Pass("F", 0, 1), Pass("B", 0, 0)],
              [Pass("F", 1, 1), Pass("B", 1, 1), Pass("F", 1, 0), Pass("B", 1, 0)]]
    with pytest.raises(ValueError, match="wait on each other"):
        pass_rounds(orders)
    # 1F1B, 2 ranks, 2 micro-batches: F0 F1 B0 B1 on rank 0 and F0 B0 F1 B1 on rank 1, each
    # pass one round after the pass it takes in.
    assert pass_rounds(get_schedule("1f1b").order(2, 2)) == [[0, 1, 3, 5], [1, 2, 3, 4]]


def test_a_virtual_stage_on_the_wrong_rank_is_refused_before_any_process(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autosplit.cli import main

    stages, _, _ = _RUNS["interleaved-1f1b"]
    d = plan_dict(GPT, GPT_ARGS, stages, micro_batches=4, schedule="interleaved-1f1b",
                  ranks=[0, 1, 0, 1], virtual_stages=2)
    d["stages"][2]["rank"] = 1
    d["stages"][2]["replicas"] = d["stages"][1]["replicas"]
    path = tmp_path / "plan.json"
    path.write_text(__import__("json").dumps(d))
    assert main(["run", str(path), GPT, "--steps", "1", "--warmup", "0"]) == 2
    err = capsys.readouterr().err
    assert "stages[2].rank" in err and "set rank to 0" in err


def test_a_middle_rank_receiving_an_activation_and_a_gradient_at_once_does_not_hang(
        tmp_path: Path) -> None:
    # 1F1B on three ranks, three micro-batches: before its first backward the middle rank
    # posts one batch with the next activation's and the gradient's receives, and each pass
    # waits on the batch's works. Gloo's receive work waits for a new message on every
    # wait(), so the second pass used to block for good (the run hit its time limit).
    steps, micro_batches = 2, 3
    stages = [StageSpec(0, 2), StageSpec(2, 4), StageSpec(4, 6)]
    plan = write_plan(tmp_path, plan_dict(GPT, GPT_ARGS, stages, micro_batches=micro_batches))
    measured, got = run_and_dump(tmp_path, plan, GPT, steps)
    assert len(measured["ranks"]) == 3
    assert_trains_like(measured, got, reference(GPT, GPT_ARGS, steps=steps,
                                                global_batch=2 * micro_batches,
                                                micro_batches=micro_batches))
