"""The exhaustive optimum of the whole plan schema on small problems: the search's referee.

The search prunes, bounds and restricts itself to shapes it knows how to build; any of that
can silently lose the best plan. This package shares none of the search's code (it imports
nothing from ``autosplit.search``): it enumerates every plan the plan schema
(docs/plan-schema.md) can express for a small problem and costs each one with the cost model
``autosplit evaluate`` uses, so its optimum is the yardstick the search is measured against,
and it follows the cost model when that changes.

What is enumerated
------------------
- the number of stages (up to ``max_stages``) and, in pipeline order, each stage's devices:
  a TP degree ``t`` from ``tp_degrees`` and an ordered list of distinct nodes with a number
  of replicas on each (a replica is ``t`` devices of one node; any ``t`` up to the node's
  free devices, a divisor of the node size or not). The stage's DP degree is its replica
  count. Its chips are one chip, or chips that one ``collective_groups`` entry of the
  cluster lists together (a mixed stage); its ``chip`` is the fastest of them (peak FLOP/s in
  the training dtype), as the schema prescribes. A node may be cut into unequal stages, and
  devices may stay idle (unless ``allow_idle`` is off);
- every micro-batch count ``m`` dividing the global batch, and per stage the batch shares of
  its replicas: integers ``≥ 1`` and ``≤ max(micro_batch_sizes)`` summing to ``G / m``;
- every contiguous split of the units over the stages, and per stage recomputation on or off.

Why the reductions below lose nothing
-------------------------------------
Each is an argument about what the cost model (``autosplit.cost.stage``, ``.predict``) reads;
``tests/test_exhaustive.py`` checks each against a plain enumeration on tiny cases.

1. *Devices of one node.* The cost model never reads a local device index (only that a
   replica holds ``t`` devices of its node), so only how many devices of each node a stage
   takes matters; indices are handed out lowest first.
2. *Identical nodes.* It reads a node through its attributes (chip, devices, links, memory,
   host bandwidth) and through *equality* of node names (two stages on one node talk over the
   intra-node link; the DP ring over a stage's nodes; a lane's first node). Renaming nodes of
   one class by a permutation therefore maps a plan onto one of equal cost. Stages are built
   in pipeline order and each stage's nodes in their order in the stage; whenever an
   untouched node of a class is taken, the lowest-numbered untouched node of that class is
   taken. Every plan has a relabelling of this form (number each class's nodes in order of
   first use), so every cost the schema can reach is reached. Nodes already used by an
   earlier stage are distinguishable (one may be the neighbour's node) and are all tried.
3. *Order inside a stage.* The cost model reads replica order only through the stage's nodes
   in order of first appearance (first node: link from the previous stage and the tables'
   node; last node: link to the next stage; the ring of the DP all-reduce; the first node of
   each chip's lane). Listing each node's replicas together, nodes in every order, covers it.
4. *Batch shares.* A stage's shares are read only through the largest share of each chip's
   lane (``lane_groups``: per-unit times, memory) and the stage's largest share (transfers).
   Any share vector is thus equivalent to one with the same lane maxima; maxima ``(x_c)`` are
   reachable with ``d_c`` replicas per lane iff ``Σ (x_c + d_c − 1) ≤ G/m ≤ Σ d_c·x_c``. A
   larger lane maximum is skipped only when a reachable smaller one is no worse *for the cost
   tables at hand*: every unit's forward, backward, recompute and TP time and backward
   working set at the smaller share is at most that at the larger (checked, not assumed — a
   measured profile need not be monotone); activation memory and transfers grow with the
   share by formula. With replicas of one chip this leaves the balanced split
   ``⌈G/(m·d)⌉``; in a mixed stage the trade-offs between the lanes' maxima (uneven shares)
   remain.
5. *Recomputation.* Recomputing adds the range's recompute time ``r ≥ 0`` to the stage's
   busy time (``Σ u`` grows by ``r``, ``max u`` does not shrink) and to its backward, which
   shortens only later stages' tails, by at most ``r``; memory decides only feasibility. So
   a stage recomputes exactly when its range does not fit otherwise — per stage and range,
   which keeps the optimum of every split.

How it is costed
----------------
Each stage's cost over every unit range ``[i, j)`` is a matrix built once from the cost
model's functions (``matrices``), every split of many pipelines is costed at once from those
matrices with the iteration-time formula of docs/cost-model.md §4 (``splits``), and pipelines
are visited in order of a lower bound that is verified against their own matrices, until no
remaining pipeline can beat the best plans (``optimum``). The best plans are rebuilt as
``Plan`` objects and re-costed through ``autosplit.plan.evaluate.evaluate_plan``; a
disagreement is an error, so a drift between this package and the cost model cannot pass
unnoticed. The optimum returned is that re-costed plan.
"""

from autosplit.bench.exhaustive.balance import perfect_balance_ratio
from autosplit.bench.exhaustive.optimum import (
    MAX_DEVICES,
    MAX_UNITS,
    RECHECKED,
    ExhaustiveResult,
    exhaustive_optimum,
    plan_summary,
    small_enough,
)

__all__ = ["MAX_DEVICES", "MAX_UNITS", "RECHECKED", "ExhaustiveResult", "exhaustive_optimum",
           "plan_summary", "small_enough", "perfect_balance_ratio"]
