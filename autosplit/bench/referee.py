"""The search against the exhaustive optimum: how far the searched plan is from the best plan
the schema expresses, on fixed cases and on random small ones.

``autosplit.bench.exhaustive`` is independent of the search; this module is where the two
meet (``search_gap``), with the random problems both the property tests and
``experiments/bench/exhaustive.py`` draw from (``RandomCase``): two chip types of the
library, one or two nodes of each, one to four devices per node, a collective group or not,
and a GPT or Llama model of a few small layers.
"""

from __future__ import annotations

import functools
import math
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from autosplit.bench.exhaustive import (
    MAX_DEVICES,
    ExhaustiveResult,
    exhaustive_optimum,
    perfect_balance_ratio,
    plan_summary,
)
from autosplit.bench.suite import BenchCase
from autosplit.chips.library import load_chip_library
from autosplit.chips.spec import ChipSpec
from autosplit.cluster.load import load_cluster
from autosplit.cluster.schema import Cluster
from autosplit.config import SearchConfig, TrainingConfig
from autosplit.cost.analytic import AnalyticCosts
from autosplit.errors import NoFeasiblePlanError
from autosplit.model.cache import ingest_model_cached
from autosplit.model.types import ModelProfile
from autosplit.plan.evaluate import closed_form_time
from autosplit.plan.schema import Plan
from autosplit.protocols.cost import LayerCostProvider
from autosplit.search.engine import search_plan

__all__ = ["GAP_LIMIT", "SearchGap", "search_gap", "case_gap", "RandomCase", "CHIP_POOL",
           "MODELS", "random_case", "build_random_case", "ingest_case"]

#: The search must come within this fraction of the exhaustive optimum (issue 11, item 4).
GAP_LIMIT = 0.005

#: Chips random cases draw from: the library's accelerators (the CPU entry and the H200
#: fractions of the MPS experiment left out).
CHIP_POOL: tuple[str, ...] = ("H100", "A100", "H200", "H20", "L40S", "V100", "MI300X",
                              "MI250X", "Ascend910B", "Gaudi2", "MLU370")

_REPO = Path(__file__).resolve().parents[2]
#: name -> (model file, base size): hidden sizes 1024 (GPT-350M shape) and 128 (Llama tiny).
MODELS: dict[str, tuple[Path, str]] = {
    "gpt": (_REPO / "experiments" / "models" / "gpt.py", "350m"),
    "llama": (_REPO / "experiments" / "models" / "llama.py", "tiny"),
}


@dataclass(frozen=True)
class SearchGap:
    """The searched plan against the exhaustive optimum, under both objectives.

    ``searched_closed_s`` is the plan's closed-form time (the objective the search and the
    enumeration both minimise; the enumeration's is exact, so the search can never be below
    it), ``searched_s`` its prediction, the schedule's simulation, compared with the best
    simulated time among the enumeration's best closed-form plans (``gap``). Both are infinite
    when the search finds no plan (or one that does not fit)."""

    searched_s: float
    searched_closed_s: float
    searched: str  # plan summary, or the search's error
    optimum: ExhaustiveResult
    balance: float  # perfect-balance ratio of the optimum

    @property
    def gap(self) -> float:
        """``(searched − optimum) / optimum`` of the predictions: 0 when neither finds a
        plan, ``inf`` when only the enumeration does, ``-inf`` when only the search does (a
        bug in one of them)."""
        best = self.optimum.simulated_s
        if math.isinf(best):
            return 0.0 if math.isinf(self.searched_s) else -math.inf
        return (self.searched_s - best) / best


def search_gap(*, model: ModelProfile, cluster: Cluster, training: TrainingConfig,
               search: SearchConfig | None = None,
               costs: LayerCostProvider | None = None) -> SearchGap:
    """Run the current search and the exhaustive enumeration on one problem."""
    search = search or SearchConfig()
    costs = costs or AnalyticCosts()
    optimum = exhaustive_optimum(model=model, cluster=cluster, training=training,
                                 search=search, costs=costs)
    try:
        plan = search_plan(model=model, cluster=cluster, training=training, search=search,
                           costs=costs)
    except NoFeasiblePlanError as exc:
        searched_s = closed_s = math.inf
        searched = exc.message.splitlines()[0]
    else:
        searched_s, closed_s = _times_if_fits(plan, model=model, cluster=cluster, costs=costs)
        searched = plan_summary(plan)
    balance = perfect_balance_ratio(optimum.iteration_s, model=model, cluster=cluster,
                                    training=training, search=search, costs=costs)
    return SearchGap(searched_s=searched_s, searched_closed_s=closed_s, searched=searched,
                     optimum=optimum, balance=balance)


def _times_if_fits(plan: Plan, *, model: ModelProfile, cluster: Cluster,
                   costs: LayerCostProvider) -> tuple[float, float]:
    """The plan's prediction and closed-form time, or ``inf`` if it does not fit."""
    pred = plan.prediction
    if pred is None or not all(st.memory.fits for st in pred.stages):
        return math.inf, math.inf
    return pred.iteration_s, closed_form_time(plan, model=model, cluster=cluster, costs=costs)


def case_gap(case: BenchCase) -> SearchGap:
    """``search_gap`` for a benchmark-suite case."""
    model, cluster = ingest_case(case)
    return search_gap(model=model, cluster=cluster, training=case.training, search=case.search)


def ingest_case(case: BenchCase) -> tuple[ModelProfile, Cluster]:
    """A suite case's model (ingested once per process) and cluster."""
    model = _ingest(str(case.model), tuple(sorted(case.model_args.items())),
                    case.training.seq_len, case.training.dtype)
    return model, load_cluster(case.cluster)


@functools.lru_cache(maxsize=64)
def _ingest(path: str, args: tuple[tuple[str, str], ...], seq_len: int,
            dtype: str) -> ModelProfile:
    """Each model is ingested once per process (and cached on disk across processes)."""
    return ingest_model_cached(path, model_args=dict(args), seq_len=seq_len, dtype=dtype)


# ---- random small problems -----------------------------------------------------------------


@dataclass(frozen=True)
class RandomCase:
    """A small problem: ``nodes[k]`` nodes of ``devices[k]`` devices of ``chips[k]``."""

    chips: tuple[str, str]
    nodes: tuple[int, int]
    devices: tuple[int, int]
    collective_group: bool
    model: str  # a key of MODELS
    layers: int
    global_batch: int
    seq_len: int = 1024

    @property
    def num_devices(self) -> int:
        return sum(n * d for n, d in zip(self.nodes, self.devices, strict=True))

    @property
    def grouped(self) -> bool:
        """Whether the cluster declares the collective group: only between chips of one
        collective library, the only pairing a real cluster could declare."""
        lib = _library()
        return (self.collective_group
                and lib[self.chips[0]].collective_library
                == lib[self.chips[1]].collective_library)

    def describe(self) -> str:
        parts = [f"{n}×{d} {c}" for c, n, d in zip(self.chips, self.nodes, self.devices,
                                                      strict=True)]
        group = ", one collective group" if self.grouped else ""
        return (f"{' + '.join(parts)}{group}; {self.model} {self.layers} layers, "
                f"G={self.global_batch}")


def random_case(rng: random.Random, *, max_devices: int = MAX_DEVICES) -> RandomCase:
    """Draw one case (devices capped at ``max_devices`` by redrawing the node shapes)."""
    chips = tuple(rng.sample(CHIP_POOL, 2))
    while True:
        nodes = (rng.randint(1, 2), rng.randint(1, 2))
        devices = (rng.randint(1, 4), rng.randint(1, 4))
        if sum(n * d for n, d in zip(nodes, devices, strict=True)) <= max_devices:
            break
    return RandomCase(chips=(chips[0], chips[1]), nodes=nodes, devices=devices,
                      collective_group=rng.random() < 0.5, model=rng.choice(sorted(MODELS)),
                      layers=rng.randint(2, 8), global_batch=rng.choice((8, 16, 32)))


def build_random_case(case: RandomCase) -> tuple[ModelProfile, Cluster, TrainingConfig]:
    """The model (ingested once per process), cluster and training settings of ``case``."""
    path, size = MODELS[case.model]
    model = _ingest(str(path), (("layers", str(case.layers)), ("size", size)), case.seq_len,
                    "bf16")
    return model, _cluster(case), TrainingConfig(global_batch=case.global_batch,
                                                 seq_len=case.seq_len)


def _cluster(case: RandomCase) -> Cluster:
    data: dict = {
        "name": "random",
        "network": {"nic_bw_gbs": 25, "latency_us": 10},
        "nodes": [{"name": f"n{k}-{chip.lower()}", "chip": chip, "devices": d, "count": n}
                  for k, (chip, n, d) in enumerate(zip(case.chips, case.nodes, case.devices,
                                                       strict=True))],
    }
    if case.grouped:
        data["interconnect"] = {"collective_groups": [list(case.chips)]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cluster.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        cluster = load_cluster(path)
    return cluster


@functools.lru_cache(maxsize=1)
def _library() -> dict[str, ChipSpec]:
    return load_chip_library()
