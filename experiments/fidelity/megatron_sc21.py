"""Cost the published Megatron-LM weak-scaling table with its published strategies.

Source of every row: Narayanan et al., "Efficient Large-Scale Language Model Training on GPU
Clusters Using Megatron-LM", SC 2021 (arXiv 2104.04473), Table 1: GPT models of 1.7B to
1008B parameters on DGX A100 80 GB nodes of NVIDIA's Selene (8 GPUs per node, NVLink/NVSwitch,
8 × 200 Gb/s HDR InfiniBand per node), sequence 2048, vocabulary 51 200, mixed precision, the
table's tensor- and pipeline-parallel sizes, data parallel over the rest, activation
recomputation; achieved teraFLOP/s per GPU as published, counted with the paper's eq. (3)
``96·B·s·l·h²·(1 + s/6h + V/16lh)`` FLOPs per iteration (recomputation included).

Each row becomes an autosplit plan (1F1B, micro-batch ``--micro-batch`` samples per replica,
the blocks split evenly over the stages, the embedding on the first and the head on the last,
every stage recomputing) on a cluster of A100 nodes, costed by ``evaluate`` (the schedule's
simulation). Predicted TFLOPS per GPU = eq. (3) FLOPs / (predicted iteration · GPUs).

Fit and test: the A100's large-GEMM efficiency ``η_max`` (its compute surface's peak fraction)
is the one figure fitted, on the *fit* rows (1.7B, 7.5B, 39.1B, 145.6B, 529.6B); the other
five (3.6B, 18.4B, 76.1B, 310.1B, 1008B) are the *test* rows, costed with the fitted figure.

    python experiments/fidelity/megatron_sc21.py > experiments/fidelity/results.md
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from autosplit.chips.spec import ChipSpec
from autosplit.chips.surface import ComputeSurface
from autosplit.cluster.schema import Cluster, Node
from autosplit.cost.analytic import AnalyticCosts
from autosplit.model.ingest import ingest_model
from autosplit.model.types import ModelProfile
from autosplit.plan.evaluate import evaluate_plan
from autosplit.plan.schema import Plan, Replica, StagePlan
from autosplit.search.plan_build import cluster_ref, model_ref

REPO = Path(__file__).resolve().parents[2]
GPT = str(REPO / "experiments" / "models" / "gpt.py")
SEQ, VOCAB = 2048, 51200


@dataclass(frozen=True)
class Row:
    """One row of Table 1 (Narayanan et al. 2021)."""

    params_b: float
    heads: int
    hidden: int
    layers: int
    tp: int
    pp: int
    gpus: int
    batch: int
    tflops: float  # achieved teraFLOP/s per GPU, as published
    fit: bool  # used to fit the A100's eta_max (else a test row)

    @property
    def dp(self) -> int:
        return self.gpus // (self.tp * self.pp)

    def flops(self) -> float:
        """Eq. (3) of the paper: FLOPs of one iteration with activation recomputation."""
        b, s, h, n, v = self.batch, SEQ, self.hidden, self.layers, VOCAB
        return 96.0 * b * s * n * h * h * (1 + s / (6 * h) + v / (16 * n * h))


TABLE_1 = (
    Row(1.7, 24, 2304, 24, 1, 1, 32, 512, 137, True),
    Row(3.6, 32, 3072, 30, 2, 1, 64, 512, 138, False),
    Row(7.5, 32, 4096, 36, 4, 1, 128, 512, 142, True),
    Row(18.4, 48, 6144, 40, 8, 1, 256, 1024, 135, False),
    Row(39.1, 64, 8192, 48, 8, 2, 512, 1536, 138, True),
    Row(76.1, 80, 10240, 60, 8, 4, 1024, 1792, 140, False),
    Row(145.6, 96, 12288, 80, 8, 8, 1536, 2304, 148, True),
    Row(310.1, 128, 16384, 96, 8, 16, 1920, 2160, 155, False),
    Row(529.6, 128, 20480, 105, 8, 35, 2520, 2520, 163, True),
    Row(1008.0, 160, 25600, 128, 8, 64, 3072, 3072, 163, False),
)

#: DGX A100 80 GB: datasheet peaks; NVLink 3 through NVSwitch, 600 GB/s total = 300 per
#: direction; 8 HDR 200 Gb/s NICs per node = 25 GB/s per GPU (NVIDIA DGX A100 datasheet).
A100 = ChipSpec(name="A100", vendor="NVIDIA", tflops_bf16=312.0, tflops_fp16=312.0,
                tflops_fp32=19.5, memory_gb=80.0, memory_bw_gbs=2039.0,
                intra_node_link="nvlink", intra_node_bw_gbs=300.0, collective_library="NCCL",
                compute_efficiency=0.85, memory_efficiency=0.85)


def cluster_for(row: Row) -> Cluster:
    nodes = tuple(Node(name=f"dgx{k}", chip="A100", devices=8, intra_link="nvlink",
                       intra_bw_gbs=300.0, nic_bw_gbs=25.0) for k in range(row.gpus // 8 or 1))
    return Cluster(name=f"selene-{row.gpus}", nodes=nodes, chips={"A100": A100})


def model_for(row: Row) -> ModelProfile:
    args = {"size": "1.3b", "layers": str(row.layers), "hidden": str(row.hidden),
            "heads": str(row.heads), "vocab": str(VOCAB), "positions": str(SEQ)}
    return ingest_model(GPT, model_args=args, seq_len=SEQ)


def plan_for(row: Row, model: ModelProfile, cluster: Cluster, micro_batch: int) -> Plan:
    """The published strategy: TP inside a node, PP stages over consecutive devices, DP over
    the rest; blocks split evenly (the first stage also holds the embedding, the last the
    head)."""
    blocks = model.num_layers - 2
    per = [blocks // row.pp + (1 if s < blocks % row.pp else 0) for s in range(row.pp)]
    bounds = [0]
    for s, n in enumerate(per):
        bounds.append(bounds[-1] + n + (1 if s == 0 else 0) + (1 if s == row.pp - 1 else 0))
    groups_per_node = 8 // row.tp
    stages = []
    for s in range(row.pp):
        replicas = []
        for d in range(row.dp):
            group = s * row.dp + d  # stage-major, so a stage's replicas sit side by side
            node, slot = divmod(group, groups_per_node)
            replicas.append(Replica(node=cluster.nodes[node].name,
                                    local_indices=tuple(range(slot * row.tp,
                                                              (slot + 1) * row.tp)),
                                    batch_share=micro_batch, chip="A100"))
        lo, hi = bounds[s], bounds[s + 1]
        stages.append(StagePlan(index=s, chip="A100", layer_start=lo, layer_end=hi,
                                layer_names=tuple(u.name for u in model.layers[lo:hi]),
                                module_names=tuple(m for u in model.layers[lo:hi]
                                                   for m in u.module_names),
                                tp=row.tp, replicas=tuple(replicas), recompute=True))
    return Plan(model=model_ref(model), cluster=cluster_ref(cluster), global_batch=row.batch,
                micro_batch_count=row.batch // (micro_batch * row.dp), schedule="1f1b",
                zero1=False, stages=tuple(stages), memory_reserve_gb=2.0)


def with_eta(eta: float) -> ChipSpec:
    """The A100 with its default surface's large-GEMM efficiency set to ``eta``."""
    base = A100.compute_surface()
    fit = dataclasses.replace(base.fit("bf16"), peak_fraction=eta)
    surface = ComputeSurface(gemm=(("bf16", fit), ("fp16", fit), ("fp32", fit)),
                             launch_s=base.launch_s, memory_fraction=base.memory_fraction,
                             attention_fraction=base.attention_fraction,
                             source=f"eta_max fitted to Table 1's fit rows: {eta:.4f}",
                             confidence="medium")
    return dataclasses.replace(A100, surface=surface)


def predicted_tflops(row: Row, chip: ChipSpec, micro_batch: int,
                     cache: dict[int, ModelProfile]) -> float:
    cluster = dataclasses.replace(cluster_for(row), chips={"A100": chip})
    model = cache.setdefault(row.hidden * 1000 + row.layers, model_for(row))
    plan = evaluate_plan(plan_for(row, model, cluster, micro_batch), model=model,
                         cluster=cluster, costs=AnalyticCosts())
    assert plan.prediction is not None
    return row.flops() / (plan.prediction.iteration_s * row.gpus) / 1e12


def fit_eta(rows: list[Row], micro_batch: int, cache: dict, start: float) -> float:
    """η_max that makes the fit rows' median error zero: predicted TFLOPS grow about in
    proportion to η, so ``η ← η / (1 + median error)``, four times (deterministic)."""
    eta = start
    for _ in range(4):
        chip = with_eta(eta)
        err = statistics.median(predicted_tflops(r, chip, micro_batch, cache) / r.tflops - 1
                                for r in rows)
        eta = min(1.0, eta / (1 + err))
    return round(eta, 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro-batch", type=int, default=1,
                        help="samples per replica per micro-batch (Table 1 does not give it)")
    ns = parser.parse_args(argv)
    cache: dict[int, ModelProfile] = {}
    fit_rows = [r for r in TABLE_1 if r.fit]
    eta = fit_eta(fit_rows, ns.micro_batch, cache, A100.compute_efficiency)
    default = A100  # default surface, eta_max = compute_efficiency 0.85
    fitted = with_eta(eta)
    out = [f"A100 eta_max fitted on the fit rows: **{eta:.4f}** (default surface: "
           f"{A100.compute_efficiency}); micro-batch {ns.micro_batch}.", "",
           "| model | TP | PP | DP | GPUs | batch | published TFLOPS/GPU | predicted, default "
           "surface | error | predicted, fitted | error | row |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    test_errors = []
    for r in TABLE_1:
        p0 = predicted_tflops(r, default, ns.micro_batch, cache)
        p1 = predicted_tflops(r, fitted, ns.micro_batch, cache)
        e0, e1 = p0 / r.tflops - 1, p1 / r.tflops - 1
        if not r.fit:
            test_errors.append(abs(e1))
        out.append(f"| {r.params_b}B | {r.tp} | {r.pp} | {r.dp} | {r.gpus} | {r.batch} | "
                   f"{r.tflops:g} | {p0:.1f} | {e0 * 100:+.1f}% | {p1:.1f} | {e1 * 100:+.1f}% | "
                   f"{'fit' if r.fit else 'test'} |")
    out += ["", f"Test rows (fitted figure): median |error| "
            f"{statistics.median(test_errors) * 100:.1f}%, worst {max(test_errors) * 100:.1f}%."]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
