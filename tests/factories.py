"""Small synthetic models and clusters for fast, exact tests of the cost model and search."""

from __future__ import annotations

from dataclasses import replace

from autosplit.chips.spec import ChipSpec
from autosplit.cluster.schema import Cluster, Node
from autosplit.cost.schedule import get_schedule
from autosplit.model.types import LayerProfile, ModelProfile
from autosplit.plan.schema import ClusterRef, ModelRef, Plan, Replica, StagePlan


def gpt_like_model(*, blocks: int = 8, hidden: int = 1024, seq: int = 1024,
                   vocab: int = 32000) -> ModelProfile:
    """A transformer described by the textbook formulas (not by ingestion)."""
    h, s = hidden, seq
    block_params = 12 * h * h + 13 * h
    emb_params = vocab * h + s * h
    head_params = vocab * h + 2 * h
    act = s * h * 34 + 5 * 16 * s * s  # Korthikanti et al., 16 heads, bytes per sample
    layers = [LayerProfile(index=0, name="pre", kind="pre", module_names=("wte", "wpe"),
                           params=emb_params, param_bytes=2 * emb_params, fwd_flops=0.0,
                           bwd_flops=0.0, fwd_bytes=4.0 * s * h, activation_bytes=2.0 * s * h,
                           input_bytes=8.0 * s, output_bytes=2.0 * s * h, tp_collectives=1,
                           layer_kind="pre")]
    for k in range(blocks):
        f = 2.0 * block_params * s + 4.0 * s * s * h
        layers.append(LayerProfile(
            index=k + 1, name=f"h.{k}", kind="block", module_names=(f"h.{k}",),
            params=block_params, param_bytes=2 * block_params, fwd_flops=f, bwd_flops=2 * f,
            fwd_bytes=float(act + 4 * s * h), activation_bytes=float(act),
            input_bytes=2.0 * s * h, output_bytes=2.0 * s * h, tp_collectives=2,
            layer_kind="block"))
    f = 2.0 * vocab * h * s
    layers.append(LayerProfile(index=blocks + 1, name="post", kind="post",
                               module_names=("ln_f", "lm_head"), params=head_params,
                               param_bytes=2 * head_params, fwd_flops=f, bwd_flops=2 * f,
                               fwd_bytes=4.0 * s * vocab, activation_bytes=4.0 * s * vocab,
                               input_bytes=2.0 * s * h, output_bytes=4.0 * s,
                               tp_collectives=1, layer_kind="post"))
    return ModelProfile(name="synthetic-gpt", source_file="<synthetic>", layers=tuple(layers),
                        seq_len=s, dtype="bf16", tokens_per_sample=s, block_list="h",
                        fingerprint="synthetic")


def chip(name: str, tflops: float, *, mem_gb: float = 80.0, vendor: str = "NVIDIA",
         bw: float = 2000.0) -> ChipSpec:
    return ChipSpec(name=name, vendor=vendor, tflops_bf16=tflops, tflops_fp16=tflops,
                    tflops_fp32=tflops / 10, memory_gb=mem_gb, memory_bw_gbs=bw,
                    intra_node_link="nvlink", intra_node_bw_gbs=300.0,
                    collective_library="NCCL", compute_efficiency=0.7)


def two_type_cluster(*, fast: int = 4, slow: int = 4, ratio: float = 3.0,
                     slow_mem_gb: float = 80.0, cross_vendor: bool = False,
                     shared_collectives: bool = False, nic_gbs: float = 25.0) -> Cluster:
    fast_chip = chip("FAST", 300.0 * ratio, bw=2000.0 * ratio)
    slow_chip = chip("SLOW", 300.0, mem_gb=slow_mem_gb,
                     vendor="OTHER" if cross_vendor else "NVIDIA")
    nodes = []
    if fast:
        nodes.append(Node(name="fast", chip="FAST", devices=fast, intra_link="nvlink",
                          intra_bw_gbs=300.0, nic_bw_gbs=nic_gbs))
    if slow:
        nodes.append(Node(name="slow", chip="SLOW", devices=slow, intra_link="nvlink",
                          intra_bw_gbs=300.0, nic_bw_gbs=nic_gbs))
    groups = (frozenset({"FAST", "SLOW"}),) if shared_collectives else ()
    return Cluster(name="two-type", nodes=tuple(nodes),
                   chips={"FAST": fast_chip, "SLOW": slow_chip}, collective_groups=groups)


def objective_of(plan, model: ModelProfile, cluster: Cluster, costs=None) -> float:
    """The search's objective for ``plan`` (``plan.evaluate.closed_form_time``)."""
    from autosplit.plan.evaluate import closed_form_time

    return closed_form_time(plan, model=model, cluster=cluster, costs=costs)


def one_node_plan(model: ModelProfile, cluster: Cluster, *, schedule: str, sizes: list[int],
                  ranks: int, virtual_stages: int = 1, micro_batches: int = 8,
                  global_batch: int = 8) -> Plan:
    """Stages of ``sizes`` units each on the devices ``fast:0..ranks-1``: stage ``s`` on the
    rank the schedule places it on, one device per rank, every sample on that device."""
    schedule_obj = get_schedule(schedule, virtual_stages=virtual_stages)
    names = [layer.name for layer in model.layers]
    stages, start = [], 0
    for s, n in enumerate(sizes):
        r = schedule_obj.rank_of(s, ranks)
        stages.append(StagePlan(
            index=s, chip="FAST", layer_start=start, layer_end=start + n,
            layer_names=tuple(names[start:start + n]), module_names=(), tp=1,
            replicas=(Replica("fast", (r,), global_batch // micro_batches),),
            recompute=False, rank=r if virtual_stages > 1 else None))
        start += n
    return Plan(
        model=ModelRef(name=model.name, source_file=model.source_file, fingerprint="x",
                       num_layers=model.num_layers, params=model.total_params,
                       seq_len=model.seq_len, dtype="bf16",
                       tokens_per_sample=model.tokens_per_sample, block_list="h"),
        cluster=ClusterRef(name=cluster.name, source_file="", num_devices=cluster.num_devices,
                           chips=tuple(cluster.chips)),
        global_batch=global_batch, micro_batch_count=micro_batches, schedule=schedule,
        zero1=False, stages=tuple(stages), virtual_stages=virtual_stages)


def node_stage_plan(base: Plan, model: ModelProfile, cluster: Cluster, *,
                    bounds: tuple[int, ...], nodes: tuple[str, ...], tp: int = 1,
                    micro_batches: int | None = None) -> Plan:
    """``base`` (its model, cluster and batch) with a pipeline laid out by hand: stage ``i``
    owns units ``bounds[i]:bounds[i + 1]`` and every device of node ``nodes[i]``, in TP
    groups of ``tp``, each micro-batch split equally over the groups.

    Tests that need a particular placement build it here instead of hoping a search
    produces it, so they always run."""
    by_name = {n.name: n for n in cluster.nodes}
    micro = micro_batches or base.micro_batch_count
    names = [layer.name for layer in model.layers]
    stages = []
    for s, (lo, hi, node_name) in enumerate(zip(bounds, bounds[1:], nodes, strict=False)):
        node = by_name[node_name]
        groups = [tuple(range(g, g + tp)) for g in range(0, node.devices - tp + 1, tp)]
        share, rest = divmod(base.global_batch // micro, len(groups))
        assert rest == 0 and share > 0, "the micro-batch must split equally over the groups"
        units = model.layers[lo:hi]
        stages.append(StagePlan(
            index=s, chip=node.chip, layer_start=lo, layer_end=hi,
            layer_names=tuple(names[lo:hi]),
            module_names=tuple(m for u in units for m in u.module_names), tp=tp,
            replicas=tuple(Replica(node.name, g, share) for g in groups), recompute=False))
    return replace(base, stages=tuple(stages), micro_batch_count=micro, schedule="1f1b",
                   virtual_stages=1, prediction=None, idle_devices=(), idle_note="",
                   alternatives=())
