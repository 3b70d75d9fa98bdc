"""Level 3 of the search: TP groups that do not divide a node, and the upgrade's estimate."""

from __future__ import annotations

import numpy as np
import pytest
from factories import chip, gpt_like_model

from autosplit.cluster.schema import Cluster, Node
from autosplit.config import SearchConfig, TrainingConfig
from autosplit.cost.analytic import AnalyticCosts
from autosplit.cost.pipeline import pipeline_time, tail_time
from autosplit.plan.evaluate import validate_plan
from autosplit.search.engine import search_plan
from autosplit.search.estimate import Hop, PipelineEstimate
from autosplit.search.groups import find_pools
from autosplit.search.options import LaneOption, StageOption
from autosplit.search.packing import SlotLimit, slot_demand, slot_limits
from autosplit.search.placement import place


def _three_device_nodes(count: int = 2) -> Cluster:
    nodes = tuple(Node(name=f"n{k}", chip="X", devices=3, intra_link="nvlink",
                       intra_bw_gbs=300.0, nic_bw_gbs=25.0) for k in range(count))
    return Cluster(name="threes", nodes=nodes, chips={"X": chip("X", 300.0)})


def test_slot_limits_cover_only_degrees_that_do_not_divide_the_node():
    pools = find_pools(_three_device_nodes(2))
    assert slot_limits(pools, (1, 2, 4, 8)) == (SlotLimit(pool=0, tp=2, capacity=4),)
    opts = [StageOption(group=0, tp=t, lanes=(LaneOption(0, d, 1),), recompute=False)
            for t, d in ((1, 3), (2, 2))]
    assert slot_demand(opts, slot_limits(pools, (1, 2))).tolist() == [[0], [4]]


def test_groups_the_slot_limits_admit_are_placed_largest_first():
    # Two TP-2 groups and two TP-1 groups fill two nodes of 3 exactly.
    pools = find_pools(_three_device_nodes(2))
    tp2 = StageOption(group=0, tp=2, lanes=(LaneOption(0, 2, 1),), recompute=False)
    tp1 = StageOption(group=0, tp=1, lanes=(LaneOption(0, 2, 1),), recompute=False)
    stages = place([tp1, tp2], pools, 2, strategy="compact")
    used = [(r.node, i) for reps in stages for r in reps for i in r.local_indices]
    assert len(used) == len(set(used)) == 6
    assert all(len({r.node for r in [rep]}) == 1 and len(rep.local_indices) == 2
               for rep in stages[1])


@pytest.mark.parametrize("count", [1, 2])
def test_search_uses_tp2_on_three_device_nodes_and_the_plan_is_valid(count):
    model = gpt_like_model(blocks=4, hidden=4096, seq=2048)
    cluster = _three_device_nodes(count)
    training = TrainingConfig(global_batch=1, seq_len=2048)
    plan = search_plan(model=model, cluster=cluster, training=training,
                       search=SearchConfig(tp_degrees=(1, 2), allow_recompute=False),
                       costs=AnalyticCosts())
    validate_plan(plan, model=model, cluster=cluster)
    per_node: dict[str, int] = {}
    for st in plan.stages:
        for rep in st.replicas:
            per_node[rep.node] = per_node.get(rep.node, 0) + len(rep.local_indices)
    assert max(per_node.values()) <= 3
    # One sample, one micro-batch: a pipeline runs its stages one after the other, so only
    # TP can put a second device to work.
    assert any(st.tp == 2 for st in plan.stages)


def _closed_form(busy, share, tail, back, hops, window, m):
    eff, fill = np.array(busy, dtype=float), []
    drain = np.array(back, dtype=float)
    for b, h in enumerate(hops):
        p = float(h.one_way(np.maximum(share[b], share[b + 1])))
        drain[b] += p  # the gradient into stage b, over either kind of link
        if h.blocking:
            eff[b] += 2 * p
            eff[b + 1] += 2 * p
            drain[b + 1] += p  # stage b + 1 performs the blocking send
            fill.append(0.0)
        else:
            fill.append(p)
    return (pipeline_time(list(eff), micro_batches=m, p2p=fill, in_flight=list(window))
            + tail_time(dp_s=list(tail), opt_s=[0.0] * len(tail), drain_s=list(drain)))


def test_upgrade_estimate_is_the_closed_form_for_every_move():
    rng = np.random.default_rng(7)
    for _ in range(400):
        n, m = int(rng.integers(1, 7)), int(rng.integers(1, 9))
        busy, tail = rng.random(n), rng.random(n) * 0.3
        back = busy * rng.random(n) * 0.1
        share = rng.integers(1, 5, n).astype(float)
        hops = [Hop(float(rng.random()), 0.01, float(rng.random() * 5 + 0.5),
                    bool(rng.random() < 0.3)) for _ in range(n - 1)]
        window = np.array([min(n - k, m) for k in range(n)])
        chain = PipelineEstimate(busy, share, tail, back, hops, window, m)
        assert chain.value() == pytest.approx(
            _closed_form(busy, share, tail, back, hops, window, m))
        s = int(rng.integers(0, n))
        cb, ct = rng.random(4), rng.random(4) * 0.3
        cw = cb * rng.random(4) * 0.1
        cq = rng.integers(1, 5, 4).astype(float)
        values = chain.moves(s, cb, cq, ct, cw)
        for k in range(4):
            b2, q2, t2, w2 = busy.copy(), share.copy(), tail.copy(), back.copy()
            b2[s], q2[s], t2[s], w2[s] = cb[k], cq[k], ct[k], cw[k]
            assert values[k] == pytest.approx(_closed_form(b2, q2, t2, w2, hops, window, m))
        chain.take(s, float(cb[0]), float(cq[0]), float(ct[0]), float(cw[0]))
        b2, q2, t2, w2 = busy.copy(), share.copy(), tail.copy(), back.copy()
        b2[s], q2[s], t2[s], w2[s] = cb[0], cq[0], ct[0], cw[0]
        assert chain.value() == pytest.approx(_closed_form(b2, q2, t2, w2, hops, window, m))
