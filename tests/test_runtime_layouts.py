"""Any replica layout between stages, mixed-chip stages and tensor parallelism: the routes by
row ranges, a message order that cannot deadlock, and CPU runs that train exactly like the
unsplit model."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_support import (
    GPT,
    GPT_ARGS,
    LLAMA,
    LLAMA_ARGS,
    LR,
    RESNET,
    RESNET_ARGS,
    SEQ,
    StageSpec,
    assert_trains_like,
    plan_dict,
    reference,
    replay_as_nccl,
    run_and_dump,
    write_plan,
)

from autosplit.cost.schedule import Pass, get_schedule
from autosplit.errors import BadInputError
from autosplit.model.loader import build_on_meta, load_model_source
from autosplit.plan.io import plan_from_dict
from autosplit.runtime.checks import check_model
from autosplit.runtime.executor import CommBatch, Message, comm_program
from autosplit.runtime.layout import Place, Route, RunLayout, StageLayout
from autosplit.runtime.stage_builder import meta_inputs, model_partition
from autosplit.runtime.tensor_parallel import record_calls, tp_styles


def _layout(specs: list[tuple[int, tuple[int, ...]]], micro_batches: int = 2) -> RunLayout:
    stages, first = [], 0
    for i, (tp, shares) in enumerate(specs):
        stages.append(StageLayout(i, first, tp, shares))
        first += tp * len(shares)
    return RunLayout(tuple(stages), micro_batches)


# ---- routes -------------------------------------------------------------------------------

def test_routes_scatter_and_gather_rows_between_differently_cut_stages() -> None:
    # Stage 0: two replicas of 2 TP ranks holding rows [0,1) and [1,4) of each micro-batch;
    # stage 1: two single-rank replicas holding [0,3) and [3,4) (a fast and a slow chip).
    layout = _layout([(2, (1, 3)), (1, (3, 1))])
    assert layout.world_size == 6 and layout.resharded(1)
    assert [layout.place(r) for r in (0, 3, 5)] == [Place(0, 0, 0), Place(0, 1, 1),
                                                     Place(1, 1, 0)]
    # Rank 4 (stage 1, replica 0) takes row 0 from TP rank 0 of replica 0 (rank 0) and rows
    # 1-2 from TP rank 0 of replica 1 (rank 2), in its own row numbering.
    assert layout.activation_recvs(4) == [Route(0, 0, 1), Route(2, 1, 3)]
    assert layout.activation_recvs(5) == [Route(2, 0, 1)]
    # Senders see the same messages from their side; TP rank 1 of each replica sends none.
    assert layout.activation_sends(0) == [Route(4, 0, 1)]
    assert layout.activation_sends(2) == [Route(4, 0, 2), Route(5, 2, 3)]
    assert layout.activation_sends(1) == layout.activation_sends(3) == []
    # Gradients go back to every TP rank of the sending replicas (each runs the backward).
    assert layout.gradient_sends(4) == [Route(0, 0, 1), Route(1, 0, 1), Route(2, 1, 3),
                                        Route(3, 1, 3)]
    assert layout.gradient_recvs(3) == [Route(4, 0, 2), Route(5, 2, 3)]
    # Every message has a sender and a receiver that agree on its size.
    for kind in ("activation", "gradient"):
        sends = {(r, x.peer, x.hi - x.lo) for r in range(6)
                 for x in getattr(layout, f"{kind}_sends")(r)}
        recvs = {(x.peer, r, x.hi - x.lo) for r in range(6)
                 for x in getattr(layout, f"{kind}_recvs")(r)}
        assert sends == recvs


def test_pass_orders_run_every_micro_batch_forward_then_backward() -> None:
    for name in ("1f1b", "gpipe"):
        for stages, order in enumerate(get_schedule(name).order(4, 6)):
            assert sorted((p.kind, p.micro_batch) for p in order) == sorted(
                [("F", i) for i in range(6)] + [("B", i) for i in range(6)])
            for i in range(6):
                assert order.index(Pass("F", stages, i)) < order.index(Pass("B", stages, i))
    one_f_one_b = get_schedule("1f1b").order(4, 6)
    # Stage s holds at most 4 - s micro-batches' activations.
    for s, order in enumerate(one_f_one_b):
        live = peak = 0
        for p in order:
            live += 1 if p.kind == "F" else -1
            peak = max(peak, live)
        assert peak == 4 - s


def test_the_replay_detects_a_deadlock() -> None:
    def msg(kind: str, peer: int) -> Message:
        return Message(kind, 0, peer, Route(peer, 0, 1))  # type: ignore[arg-type]

    # Both ranks send first and receive in a later group: each waits for the other.
    assert not replay_as_nccl({
        0: [CommBatch((msg("act", 1),), ()), CommBatch((), (msg("grad", 1),))],
        1: [CommBatch((msg("grad", 0),), ()), CommBatch((), (msg("act", 0),))]})


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
@pytest.mark.parametrize("specs", [
    *[[(1, (1,))] * stages for stages in range(1, 6)],
    [(2, (4,)), (1, (1, 3)), (1, (2, 2)), (2, (3, 1))],
    [(1, (1, 1, 1, 1)), (4, (4,)), (1, (2, 2))],
], ids=[f"pipeline{n}" for n in range(1, 6)] + ["mixed-layouts", "dp4-tp4-dp2"])
def test_message_order_cannot_deadlock(schedule: str,
                                       specs: list[tuple[int, tuple[int, ...]]]) -> None:
    for micro_batches in range(1, 9):
        layout = _layout(specs, micro_batches)
        orders = get_schedule(schedule).order(len(specs), micro_batches)
        programs = {r: comm_program(orders, layout=layout, rank=r)
                    for r in range(layout.world_size)}
        assert replay_as_nccl(programs), (schedule, specs, micro_batches)


# ---- runs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("stages", [
    # One replica, then two taking 3 and 1 samples of every micro-batch: the data-parallel
    # degree changes at the boundary (3 processes).
    [StageSpec(0, 3, shares=(4,)), StageSpec(3, 6, shares=(3, 1), chips=("fast", "slow"))],
    # Two replicas on both sides cut the micro-batch differently (1 + 3, then 3 + 1): rows
    # are scattered and gathered both ways; the second stage mixes two chips (4 processes).
    [StageSpec(0, 2, shares=(1, 3)), StageSpec(2, 6, shares=(3, 1), chips=("fast", "slow"))],
], ids=["dp-changes", "shares-change-mixed-chips"])
def test_any_replica_layout_trains_like_the_unsplit_model(tmp_path: Path,
                                                          stages: list[StageSpec]) -> None:
    steps = 2
    plan = write_plan(tmp_path, plan_dict(GPT, GPT_ARGS, stages))
    measured, got = run_and_dump(tmp_path, plan, GPT, steps)
    assert_trains_like(measured, got, reference(GPT, GPT_ARGS, steps=steps, global_batch=8,
                                                micro_batches=2))


@pytest.mark.parametrize("model, args, stages", [
    # Llama: the embedding (vocabulary-parallel), grouped-query attention and the SwiGLU MLP
    # of two blocks split over 2 ranks; then one rank (3 processes).
    (LLAMA, LLAMA_ARGS, [StageSpec(0, 3, shares=(2,), tp=2), StageSpec(3, 6, shares=(2,))]),
    # GPT: 2 replicas of 2 tensor-parallel ranks (a 2-D DP x TP mesh, 4 processes), with the
    # vocabulary-parallel embeddings, the fused per-head qkv, the MLP and the
    # column-parallel head split.
    (GPT, GPT_ARGS, [StageSpec(0, 6, shares=(1, 1), tp=2)]),
], ids=["llama-tp2", "gpt-dp2xtp2"])
def test_tensor_parallel_stages_train_like_the_unsplit_model(
        tmp_path: Path, model: str, args: dict[str, str], stages: list[StageSpec]) -> None:
    steps = 2
    plan = write_plan(tmp_path, plan_dict(model, args, stages))
    measured, got = run_and_dump(tmp_path, plan, model, steps)
    assert {r["tp_index"] for r in measured["ranks"]} == {0, 1}
    # The all-reduces of the split layers add partial sums in another order; as for uneven
    # shares, the gradients are the exact check and the weights agree to 5 % of a step.
    assert_trains_like(measured, got, reference(model, args, steps=steps, global_batch=4,
                                                micro_batches=2), param_atol=0.05 * LR)


# ---- tensor-parallel plans ---------------------------------------------------------------

def _styles(model: str, args: dict[str, str], tp: int = 2) -> dict[str, str]:
    source = load_model_source(model, args)
    net = build_on_meta(source)
    partition = model_partition(source, net, seq_len=SEQ)
    calls = record_calls(net, partition, meta_inputs(source, rows=1, seq_len=SEQ),
                         path=source.path)
    n = len(partition.unit_modules())
    return tp_styles(source, net, partition, calls, start=0, end=n, tp=tp)


def test_tensor_parallel_plans_are_found_from_the_blocks_linear_layers() -> None:
    gpt = _styles(GPT, GPT_ARGS)
    assert {k: v for k, v in gpt.items() if k.startswith("blocks.0.")} == {
        "blocks.0.attn.qkv": "colwise", "blocks.0.attn.proj": "rowwise",
        "blocks.0.mlp.fc": "colwise", "blocks.0.mlp.proj": "rowwise"}
    assert gpt["wte"] == gpt["wpe"] == "vocab" and gpt["head"] == "head"
    llama = _styles(LLAMA, LLAMA_ARGS)
    assert {k: v for k, v in llama.items() if k.startswith("layers.1.")} == {
        "layers.1.attention.wq": "colwise", "layers.1.attention.wk": "colwise",
        "layers.1.attention.wv": "colwise", "layers.1.attention.wo": "rowwise",
        "layers.1.feed_forward.w1": "colwise", "layers.1.feed_forward.w3": "colwise",
        "layers.1.feed_forward.w2": "rowwise"}
    # A vocabulary that does not divide stays whole on every rank.
    assert "head" not in _styles(GPT, {**GPT_ARGS, "vocab": "257"})


def _check(tmp_path: Path, model: str, args: dict[str, str], stages: list[StageSpec]) -> None:
    d = plan_dict(model, args, stages)
    check_model(plan_from_dict(d), plan_path="plan.json", model_path=model, model_args=args)


def test_tensor_parallel_refusals_name_the_block(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"block 'blocks.0' \(BasicBlock\) has no module"):
        _check(tmp_path, RESNET, RESNET_ARGS, [StageSpec(0, 3, tp=2), StageSpec(3, 6)])
    # Grouped-query attention with 2 key/value heads cannot split over 4 ranks.
    with pytest.raises(BadInputError, match="fails with its layers split over 4"):
        _check(tmp_path, LLAMA, {**LLAMA_ARGS, "hidden": "128", "heads": "8"},
               [StageSpec(0, 3, tp=4), StageSpec(3, 6)])
    # A layer whose features do not divide by the degree is refused before any process starts.
    with pytest.raises(BadInputError, match="do not split over 3 tensor-parallel ranks"):
        _check(tmp_path, GPT, GPT_ARGS, [StageSpec(0, 3, tp=3), StageSpec(3, 6)])
    # A head count written into the forward breaks once the heads are split.
    hard = tmp_path / "hard_heads.py"
    hard.write_text(Path(GPT).read_text().replace(
        "view(b, s, -1, 3, self.head_dim)", "view(b, s, 4, 3, self.head_dim)"))
    with pytest.raises(BadInputError, match="derive head counts from tensor shapes"):
        _check(tmp_path, str(hard), GPT_ARGS, [StageSpec(0, 3, tp=2), StageSpec(3, 6)])


def test_a_declared_tensor_parallel_plan_replaces_the_automatic_one(tmp_path: Path) -> None:
    declared = tmp_path / "declared.py"
    declared.write_text(Path(GPT).read_text() + '\nTP_PLAN = {"mlp.fc": "colwise", '
                                                '"mlp.proj": "rowwise"}\n')
    styles = _styles(str(declared), GPT_ARGS)
    assert {k: v for k, v in styles.items() if k.startswith("blocks.3.")} == {
        "blocks.3.mlp.fc": "colwise", "blocks.3.mlp.proj": "rowwise"}
    wrong = tmp_path / "wrong.py"
    wrong.write_text(Path(GPT).read_text() + '\nTP_PLAN = {"mlp.up": "colwise"}\n')
    with pytest.raises(BadInputError, match="TP_PLAN names 'mlp.up'"):
        _styles(str(wrong), GPT_ARGS)
