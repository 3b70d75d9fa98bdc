"""What the published Selene runs share: the A100 node, the GPT model and the plan builder.

Both published tables costed here (``megatron_sc21.py``, ``korthikanti22.py``) ran GPT models
on NVIDIA's Selene: DGX A100 80 GB nodes, 8 GPUs per node on NVLink/NVSwitch, 8 × 200 Gb/s HDR
InfiniBand per node, sequence 2048, vocabulary 51 200, mixed precision. Their strategies are
Megatron-LM's: TP inside a node, PP stages over consecutive devices, DP over the rest, every
block recomputing; this module turns one such strategy into an autosplit plan.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from autosplit.chips.spec import ChipSpec
from autosplit.chips.surface import ComputeSurface
from autosplit.cluster.schema import Cluster, Node
from autosplit.model.ingest import ingest_model
from autosplit.model.types import ModelProfile
from autosplit.plan.schema import Plan, Replica, StagePlan
from autosplit.search.plan_build import cluster_ref, model_ref

__all__ = ["A100", "SEQ", "VOCAB", "Strategy", "gpt_model", "selene", "strategy_plan",
           "with_eta"]

REPO = Path(__file__).resolve().parents[2]
GPT = str(REPO / "experiments" / "models" / "gpt.py")
SEQ, VOCAB = 2048, 51200

#: DGX A100 80 GB: datasheet peaks; NVLink 3 through NVSwitch, 600 GB/s total = 300 per
#: direction; 8 HDR 200 Gb/s NICs per node = 25 GB/s per GPU (NVIDIA DGX A100 datasheet).
A100 = ChipSpec(name="A100", vendor="NVIDIA", tflops_bf16=312.0, tflops_fp16=312.0,
                tflops_fp32=19.5, memory_gb=80.0, memory_bw_gbs=2039.0,
                intra_node_link="nvlink", intra_node_bw_gbs=300.0, collective_library="NCCL",
                compute_efficiency=0.85, memory_efficiency=0.85)


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A published Megatron-LM run's parallel layout."""

    tp: int
    pp: int
    gpus: int
    batch: int  # global batch (samples)
    micro_batch: int  # samples per replica per micro-batch
    virtual: int = 1  # model chunks per pipeline rank (interleaved schedule when > 1)

    @property
    def dp(self) -> int:
        return self.gpus // (self.tp * self.pp)


def selene(gpus: int, chip: ChipSpec = A100) -> Cluster:
    """DGX A100 nodes enough for ``gpus`` devices (one node at least)."""
    nodes = tuple(Node(name=f"dgx{k}", chip="A100", devices=8, intra_link="nvlink",
                       intra_bw_gbs=300.0, nic_bw_gbs=25.0) for k in range(gpus // 8 or 1))
    return Cluster(name=f"selene-{gpus}", nodes=nodes, chips={"A100": chip})


def gpt_model(*, layers: int, hidden: int, heads: int, attention: str = "explicit"
              ) -> ModelProfile:
    """The repository's GPT example at a published shape (learned positions, 4h MLP), its
    attention multiplied out as the published runs' Megatron-LM did (``attention=sdpa``:
    the fused causal kernel of today's runs)."""
    args = {"size": "1.3b", "layers": str(layers), "hidden": str(hidden),
            "heads": str(heads), "vocab": str(VOCAB), "positions": str(SEQ),
            "attention": attention}
    return ingest_model(GPT, model_args=args, seq_len=SEQ)


def strategy_plan(st: Strategy, model: ModelProfile, cluster: Cluster) -> Plan:
    """The published strategy as a plan: ``pp · virtual`` stages, stage ``k`` on rank
    ``k mod pp`` (Megatron's interleaving), blocks split evenly over the stages (the first
    also holds the embedding, the last the head), DP replicas of a rank side by side."""
    n_stages = st.pp * st.virtual
    blocks = model.num_layers - 2
    per = [blocks // n_stages + (1 if s < blocks % n_stages else 0) for s in range(n_stages)]
    bounds = [0]
    for s, n in enumerate(per):
        bounds.append(bounds[-1] + n + (s == 0) + (s == n_stages - 1))
    groups_per_node = 8 // st.tp
    stages = []
    for s in range(n_stages):
        rank = s % st.pp
        replicas = []
        for d in range(st.dp):
            node, slot = divmod(rank * st.dp + d, groups_per_node)
            replicas.append(Replica(node=cluster.nodes[node].name,
                                    local_indices=tuple(range(slot * st.tp,
                                                              (slot + 1) * st.tp)),
                                    batch_share=st.micro_batch, chip="A100"))
        lo, hi = bounds[s], bounds[s + 1]
        stages.append(StagePlan(index=s, chip="A100", layer_start=lo, layer_end=hi,
                                layer_names=tuple(u.name for u in model.layers[lo:hi]),
                                module_names=tuple(m for u in model.layers[lo:hi]
                                                   for m in u.module_names),
                                tp=st.tp, replicas=tuple(replicas), recompute=True,
                                rank=rank if st.virtual > 1 else None))
    return Plan(model=model_ref(model), cluster=cluster_ref(cluster), global_batch=st.batch,
                micro_batch_count=st.batch // (st.micro_batch * st.dp),
                schedule="interleaved-1f1b" if st.virtual > 1 else "1f1b",
                zero1=False, stages=tuple(stages), memory_reserve_gb=2.0,
                virtual_stages=st.virtual)


def with_eta(eta: float, source: str) -> ChipSpec:
    """The A100 with its default surface's large-GEMM efficiency set to ``eta``."""
    base = A100.compute_surface()
    fit = dataclasses.replace(base.fit("bf16"), peak_fraction=eta)
    surface = ComputeSurface(gemm=(("bf16", fit), ("fp16", fit), ("fp32", fit)),
                             launch_s=base.launch_s, memory_fraction=base.memory_fraction,
                             attention_fraction=base.attention_fraction,
                             source=source, confidence="medium")
    return dataclasses.replace(A100, surface=surface)
