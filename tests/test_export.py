"""`autosplit export`: each target reads back to the plan it came from, and what a uniform
runtime cannot express is named and projected away."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from autosplit.cli import main
from autosplit.cost.schedule import get_schedule
from autosplit.errors import BadInputError
from autosplit.export.deepspeed import deepspeed_export, partition_parts
from autosplit.export.expressible import (
    TARGET_SCHEDULES,
    expressibility_problems,
    project_plan,
    projection_summary,
)
from autosplit.export.kubernetes import (
    KubernetesOptions,
    device_resource,
    guess_vendor,
    kubernetes_manifests,
    render_kubernetes,
)
from autosplit.export.megatron import megatron_args, render_megatron
from autosplit.export.model_shape import ModelShape
from autosplit.export.naming import (
    IDENTITY,
    load_name_map,
    name_map_from_data,
    stage_module_names,
)
from autosplit.export.schedules import export_schedule_name, microbatch_group_size
from autosplit.export.torchtitan import render_torchtitan, torchtitan_job
from autosplit.plan.schema import (
    ClusterRef,
    MemoryBreakdown,
    ModelRef,
    Plan,
    Prediction,
    Replica,
    StagePlan,
    StagePrediction,
)

# ---- fixtures: plans built from the dataclasses -------------------------------------------

BLOCKS = 8  # units: 0 = pre, 1..8 = blocks, 9 = post
UNITS = BLOCKS + 2


def _unit_modules(u: int) -> tuple[str, ...]:
    if u == 0:
        return ("transformer.wte", "transformer.wpe")
    if u == UNITS - 1:
        return ("transformer.ln_f", "lm_head")
    return (f"transformer.h.{u - 1}",)


def _unit_name(u: int) -> str:
    return "pre" if u == 0 else "post" if u == UNITS - 1 else f"transformer.h.{u - 1}"


def _stage(index: int, chip: str, start: int, end: int, tp: int,
           replicas: list[tuple[str, tuple[int, ...], int]], recompute: bool = False
           ) -> StagePlan:
    return StagePlan(
        index=index, chip=chip, layer_start=start, layer_end=end,
        layer_names=tuple(_unit_name(u) for u in range(start, end)),
        module_names=tuple(m for u in range(start, end) for m in _unit_modules(u)),
        tp=tp, replicas=tuple(Replica(n, i, s) for n, i, s in replicas), recompute=recompute)


def _plan(stages: list[StagePlan], *, global_batch: int = 32, micro: int = 8,
          schedule: str = "1f1b", zero1: bool = False) -> Plan:
    chips = tuple(dict.fromkeys(s.chip for s in stages))
    return Plan(
        model=ModelRef(name="gpt-test", source_file="experiments/models/gpt.py",
                       fingerprint="f", num_layers=UNITS, params=1000, seq_len=128,
                       dtype="bf16", tokens_per_sample=128, block_list="transformer.h"),
        cluster=ClusterRef(name="test", source_file="", num_devices=16, chips=chips),
        global_batch=global_batch, micro_batch_count=micro, schedule=schedule, zero1=zero1,
        stages=tuple(stages))


def uniform_plan(recompute: bool = False) -> Plan:
    """3 stages, TP=2, DP=2, uneven layers: [pre+2] [3] [3+post]."""
    return _plan([
        _stage(0, "H100", 0, 3, 2, [("h0", (0, 1), 2), ("h0", (2, 3), 2)], recompute),
        _stage(1, "H100", 3, 6, 2, [("h1", (0, 1), 2), ("h1", (2, 3), 2)], recompute),
        _stage(2, "910B", 6, 10, 2, [("a0", (0, 1), 2), ("a0", (2, 3), 2)], recompute),
    ])


def heterogeneous_plan() -> Plan:
    """Per-stage TP, uneven DP and batch shares, per-stage recompute."""
    return _plan([
        _stage(0, "H100", 0, 4, 4, [("h0", (0, 1, 2, 3), 4)]),
        _stage(1, "H100", 4, 7, 4, [("h1", (0, 1, 2, 3), 4)]),
        _stage(2, "910B", 7, 10, 2, [("a0", (0, 1), 3), ("a0", (2, 3), 1)], recompute=True),
    ])


#: A GPT-shaped model of the fixtures' size (learned positions, LayerNorm, biases).
GPT_SHAPE = ModelShape(num_layers=BLOCKS, hidden=256, heads=8, kv_heads=8, ffn=1024, vocab=512,
                       positions=128, gated_mlp=False, rms_norm=False, bias=True,
                       tied_head=True)
#: A Llama-shaped one with grouped-query attention, and the roles of its outer modules.
LLAMA_SHAPE = replace(GPT_SHAPE, kv_heads=2, ffn=704, positions=0, gated_mlp=True,
                      rms_norm=True, bias=False, tied_head=False)


# ---- an independent reader of Megatron's layout grammar -----------------------------------


def parse_layout(text: str) -> list[list[str]]:
    """Megatron's ``--pipeline-model-parallel-layout``: ``|`` ends a stage, ``X*n`` and
    ``(...)*n`` repeat, commas are cosmetic."""
    text = text.replace(",", "")

    def expand(s: str) -> str:
        while "(" in s:
            s = re.sub(r"\(([^()]*)\)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), s)
        return re.sub(r"([A-Za-z|])\*(\d+)", lambda m: m.group(1) * int(m.group(2)), s)

    return [list(stage) for stage in expand(text).split("|")]


def test_layout_parser_reads_the_documented_example() -> None:
    assert parse_layout("E|t*3|t*5|t*4,L") == [["E"], ["t"] * 3, ["t"] * 5, ["t"] * 4 + ["L"]]
    assert parse_layout("E(t|)*2L") == [["E", "t"], ["t"], ["L"]]


@pytest.mark.parametrize("bounds", [(0, 3, 6, 10), (0, 1, 5, 10), (0, 9, 10), (0, 10),
                                    (0, 2, 3, 4, 10)])
def test_megatron_layout_parses_back_to_the_plan_split(bounds: tuple[int, ...]) -> None:
    stages = [_stage(i, "H100", a, b, 1, [(f"n{i}", (0,), 4)])
              for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))]
    plan = _plan(stages)
    parsed = parse_layout(megatron_args(plan, GPT_SHAPE).layout)
    assert len(parsed) == plan.num_stages
    for stage, items in zip(plan.stages, parsed, strict=True):
        units = range(stage.layer_start, stage.layer_end)
        assert items.count("E") == (0 in units)
        assert items.count("L") == (UNITS - 1 in units)
        assert items.count("t") == sum(1 for u in units if 0 < u < UNITS - 1)


def _flag(args: tuple[str, ...], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_megatron_flags_carry_sizes_batch_and_uneven_split() -> None:
    plan = uniform_plan()
    m = megatron_args(plan, GPT_SHAPE)
    assert _flag(m.args, "--tensor-model-parallel-size") == "2"
    assert _flag(m.args, "--pipeline-model-parallel-size") == "3"
    # 32 samples, 8 micro-batches, DP 2 -> 2 samples per replica per micro-batch
    assert _flag(m.args, "--micro-batch-size") == "2"
    assert _flag(m.args, "--global-batch-size") == "32"
    assert _flag(m.args, "--num-layers") == str(BLOCKS)
    assert _flag(m.args, "--pipeline-model-parallel-layout") == m.layout
    # blocks per stage 2, 3, 3: one middle stage, so first/last flags suffice
    assert m.first_last_args == ("--decoder-first-pipeline-num-layers", "2",
                                 "--decoder-last-pipeline-num-layers", "3")
    assert "--recompute-granularity" not in m.args
    assert m.world_size == 12
    assert m.env == (("CUDA_DEVICE_MAX_CONNECTIONS", "1"),)  # TP 2
    text = render_megatron(m, plan=plan)
    assert "export CUDA_DEVICE_MAX_CONNECTIONS=1\nMEGATRON_ARGS=(" in text
    # every node hosts one contiguous run of ranks: one torchrun line per node, in order
    assert [line.split(":")[0] for line in m.launch] == ["h0", "h1", "a0"]
    assert "--node-rank=2 --nproc-per-node=4" in m.launch[2]


def test_megatron_model_flags_follow_the_architecture() -> None:
    gpt = megatron_args(uniform_plan(), GPT_SHAPE).args
    assert _flag(gpt, "--hidden-size") == "256" and _flag(gpt, "--ffn-hidden-size") == "1024"
    assert _flag(gpt, "--num-attention-heads") == "8"
    assert _flag(gpt, "--max-position-embeddings") == "128"
    assert _flag(gpt, "--position-embedding-type") == "learned_absolute"
    assert "--group-query-attention" not in gpt and "--swiglu" not in gpt
    assert "--disable-bias-linear" not in gpt
    assert "--untie-embeddings-and-output-weights" not in gpt
    llama = megatron_args(uniform_plan(), LLAMA_SHAPE).args
    assert _flag(llama, "--num-query-groups") == "2" and "--group-query-attention" in llama
    assert _flag(llama, "--position-embedding-type") == "rope"
    assert _flag(llama, "--normalization") == "RMSNorm"
    assert {"--swiglu", "--disable-bias-linear",
            "--untie-embeddings-and-output-weights"} <= set(llama)
    with pytest.raises(BadInputError, match="blocks but the model has"):
        megatron_args(uniform_plan(), replace(GPT_SHAPE, num_layers=BLOCKS + 1))


@pytest.mark.parametrize("size", ["tiny", "70b"])
def test_model_shape_reads_the_example_llama(size: str) -> None:
    from autosplit.export.model_shape import load_model_shape

    shape = load_model_shape(str(REPO / "experiments/models/llama.py"), {"size": size},
                             block_list="layers")
    layers, hidden, heads, kv, ffn, vocab = {"tiny": (4, 128, 4, 2, 352, 512),
                                             "70b": (80, 8192, 64, 8, 28672, 32000)}[size]
    assert (shape.num_layers, shape.hidden, shape.heads, shape.kv_heads, shape.ffn,
            shape.vocab) == (layers, hidden, heads, kv, ffn, vocab)
    assert shape.is_llama and shape.positions == 0
    assert shape.roles == LLAMA_ROLES


def test_model_shape_reads_the_example_gpt_and_nested_models(tmp_path: Path) -> None:
    from autosplit.export.model_shape import load_model_shape

    gpt = load_model_shape(str(REPO / "experiments/models/gpt.py"), {"size": "tiny"},
                           block_list="blocks")
    assert (gpt.num_layers, gpt.hidden, gpt.heads, gpt.kv_heads, gpt.ffn, gpt.vocab,
            gpt.positions) == (4, 128, 4, 4, 512, 512, 2048)
    assert not gpt.is_llama and gpt.bias and not gpt.rms_norm and not gpt.tied_head
    model_file = tmp_path / "nested.py"
    model_file.write_text(FIXTURE_MODEL)
    nested = load_model_shape(str(model_file), {}, block_list="transformer.h")
    assert nested.roles == {"transformer.wte": "embedding", "transformer.wpe": "positions",
                            "transformer.ln_f": "norm", "lm_head": "head"}
    with pytest.raises(BadInputError, match="no block list"):
        load_model_shape(str(model_file), {}, block_list="transformer.blocks")


def test_megatron_needs_no_environment_without_tp() -> None:
    stages = [_stage(i, "H100", a, b, 1, [(f"n{i}", (0,), 4)])
              for i, (a, b) in enumerate([(0, 5), (5, 10)])]
    assert megatron_args(_plan(stages), GPT_SHAPE).env == ()


def test_megatron_first_last_only_when_middle_stages_are_even() -> None:
    stages = [_stage(i, "H100", a, b, 1, [(f"n{i}", (0,), 4)])
              for i, (a, b) in enumerate([(0, 2), (2, 4), (4, 7), (7, 10)])]
    assert megatron_args(_plan(stages), GPT_SHAPE).first_last_args == ()  # middle 2 and 3


def test_megatron_recompute_flags_when_stages_recompute() -> None:
    m = megatron_args(uniform_plan(recompute=True), GPT_SHAPE)
    assert _flag(m.args, "--recompute-granularity") == "full"
    assert _flag(m.args, "--recompute-method") == "uniform"
    assert _flag(m.args, "--recompute-num-layers") == "1"


def _llama_plan(recompute: bool = False) -> Plan:
    """The uniform plan with the example Llama's module names."""
    plan = uniform_plan(recompute)

    def rename(name: str) -> str:
        return {"transformer.wte": "tok_embeddings", "transformer.wpe": "rotary",
                "transformer.ln_f": "norm", "lm_head": "output"}.get(
            name, name.replace("transformer.h.", "layers."))

    stages = tuple(replace(st, module_names=tuple(rename(m) for m in st.module_names))
                   for st in plan.stages)
    return replace(plan, stages=stages, model=replace(plan.model, block_list="layers"))


LLAMA_ROLES = {"tok_embeddings": "embedding", "rotary": "none", "norm": "norm",
               "output": "head"}


def _override(args: tuple[str, ...], name: str) -> list[str]:
    i = args.index(name) + 1
    j = i
    while j < len(args) and not args[j].startswith("--") and ":" not in args[j]:
        j += 1
    return list(args[i:j])


def test_torchtitan_llama_names_are_torchtitans_and_the_head_is_lm_head() -> None:
    plan = _llama_plan(recompute=True)
    job = torchtitan_job(plan, model=replace(LLAMA_SHAPE, roles=LLAMA_ROLES), config="my_8")
    assert job.llama3_names and (job.module, job.config) == ("llama3", "my_8")
    parts = job.module_fqns_per_model_part
    assert parts[0] == ("tok_embeddings", "layers.0", "layers.1")  # rotary has no counterpart
    assert parts[-1][-2:] == ("norm", "lm_head")
    assert [m for p in parts for m in p] == (
        ["tok_embeddings"] + [f"layers.{i}" for i in range(BLOCKS)] + ["norm", "lm_head"])
    assert _override(job.args, "--parallelism.module_fqns_per_model_part") == [
        ",".join(p) for p in parts]
    assert _flag(job.args, "--parallelism.pipeline_parallel_degree") == "3"
    assert _flag(job.args, "--parallelism.tensor_parallel_degree") == "2"
    assert _flag(job.args, "--parallelism.data_parallel_replicate_degree") == "2"
    assert _flag(job.args, "--parallelism.pipeline_parallel_microbatch_size") == "2"
    assert _flag(job.args, "--parallelism.pipeline_parallel_schedule") == "1F1B"
    assert _flag(job.args, "--training.local_batch_size") == "16"  # 2 samples x 8 micro
    assert _flag(job.args, "--training.global_batch_size") == "32"
    assert "--training.disable_cuda_graphs" in job.args
    assert job.args[-1] == "activation-checkpoint:full"
    text = render_torchtitan(job, plan=plan)
    assert "TORCHTITAN_ARGS=(" in text and "-m torchtitan.train" in text


def test_torchtitan_picks_the_llama3_config_of_the_same_depth_or_refuses() -> None:
    plan = _llama_plan()
    with pytest.raises(BadInputError, match="not 8"):
        torchtitan_job(plan, model=replace(LLAMA_SHAPE, roles=LLAMA_ROLES))
    job = torchtitan_job(plan, model=replace(LLAMA_SHAPE, roles=LLAMA_ROLES),
                         config="my_llama_8_layers")
    assert job.args[:4] == ("--module", "llama3", "--config", "my_llama_8_layers")
    assert job.args[-1] == "activation-checkpoint:none"


def test_torchtitan_keeps_other_models_names_and_asks_for_their_module(
        tmp_path: Path) -> None:
    plan = uniform_plan()
    gpt = replace(GPT_SHAPE, roles={"transformer.wte": "embedding",
                                    "transformer.wpe": "positions",
                                    "transformer.ln_f": "norm", "lm_head": "head"})
    with pytest.raises(BadInputError, match="torchtitan ships no model"):
        torchtitan_job(plan, model=gpt)
    job = torchtitan_job(plan, model=gpt, module="my_pkg.gpt", config="gpt_1b")
    assert not job.llama3_names
    assert [m for p in job.module_fqns_per_model_part for m in p] == [
        m for u in range(UNITS) for m in _unit_modules(u)]
    map_file = tmp_path / "map.yaml"
    map_file.write_text(
        "rules:\n"
        "  - prefix: transformer.wte\n    replace: tok_embeddings\n"
        "  - prefix: transformer.wpe\n    replace: tok_embeddings\n"
        "  - match: 'transformer\\.h\\.(\\d+)'\n    replace: 'layers.\\1'\n"
        "  - match: 'transformer\\.ln_f'\n    replace: norm\n"
        "  - prefix: lm_head\n    replace: lm_head\n")
    mapped = torchtitan_job(plan, model=gpt, name_map=load_name_map(map_file),
                            module="my_pkg.gpt", config="gpt_1b")
    assert mapped.module_fqns_per_model_part[0] == ("tok_embeddings", "layers.0", "layers.1")


def test_name_map_rejects_collisions_across_stages_and_bad_rules(tmp_path: Path) -> None:
    everything = name_map_from_data({r"transformer\.h\.\d+": "layers"})
    with pytest.raises(BadInputError, match="same name 'layers'"):
        stage_module_names(uniform_plan(), everything)
    with pytest.raises(BadInputError, match="invalid regular expression"):
        name_map_from_data({"rules": [{"match": "(", "replace": "x"}]})
    with pytest.raises(BadInputError, match="group"):
        name_map_from_data({"rules": [{"match": "a", "replace": r"\1"}]})
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [unclosed\n")
    with pytest.raises(BadInputError):
        load_name_map(bad)
    assert stage_module_names(uniform_plan(), IDENTITY)[1] == (
        "transformer.h.2", "transformer.h.3", "transformer.h.4")


def test_deepspeed_parts_match_the_plan_boundaries() -> None:
    plan = uniform_plan(recompute=True)
    ds = deepspeed_export(plan)
    assert ds.parts == tuple(s.layer_start for s in plan.stages) + (UNITS,)
    assert len(ds.parts) == plan.num_stages + 1
    cfg = ds.ds_config
    assert cfg["train_batch_size"] == (cfg["train_micro_batch_size_per_gpu"]
                                       * cfg["gradient_accumulation_steps"]
                                       * ds.data_parallel_size)
    assert ds.activation_checkpoint_interval == 1
    # two entries for the embedding and three for the head shift every later boundary
    assert partition_parts(plan, pre_layers=2, post_layers=3) == (0, 4, 7, UNITS + 1 + 2)


#: Chip name -> (HAMi resource derived from the name, vendor guessed from the name).
CHIPS = {
    "H100": ("nvidia.com/gpu", "nvidia"),
    "910B3": ("huawei.com/Ascend910B3", "huawei"),
    "Ascend910B4-1": ("huawei.com/Ascend910B4-1", "huawei"),
    "Ascend910B4": ("huawei.com/Ascend910B4", "huawei"),
    "910C": ("huawei.com/Ascend910C", "huawei"),
    "MLU370": ("cambricon.com/vmlu", "cambricon"),
    "Z100": ("hygon.com/hcunum", "hygon"),
    "BI-V150": ("iluvatar.ai/BI-V150-vgpu", "iluvatar"),
    "MR-V100": ("iluvatar.ai/MR-V100-vgpu", "iluvatar"),
    "MI300X": ("amd.com/gpu", "amd"),
}


@pytest.mark.parametrize("chip", sorted(CHIPS))
def test_vendor_and_resource_per_chip(chip: str) -> None:
    resource, vendor = CHIPS[chip]
    assert guess_vendor(chip) == vendor
    assert device_resource(chip) == resource


def test_resource_refusals_and_the_chip_files_say() -> None:
    with pytest.raises(BadInputError, match="does not say which model") as info:
        device_resource("910B")  # 910B2, B3, B4 are different HAMi resources
    assert "kubernetes_resource" in (info.value.fix or "")
    with pytest.raises(BadInputError, match="HAMi does not support vendor 'Intel'"):
        device_resource("Gaudi2", vendors={"Gaudi2": "Intel"})
    with pytest.raises(BadInputError, match="vendor is unknown"):
        device_resource("X9")
    # the chip file's field wins over the vendor, and `none` requests no device
    assert device_resource("910B", chip_resources={"910B": "huawei.com/Ascend910B2"}) \
        == "huawei.com/Ascend910B2"
    assert device_resource("cpu", chip_resources={"cpu": "none"}) is None
    assert device_resource("910B", chip_resources={"910B": "huawei.com/Ascend910B2"},
                           resources={"910B": "huawei.com/Ascend910B4"}) \
        == "huawei.com/Ascend910B4"


def test_shipped_chip_files_name_their_resource() -> None:
    from autosplit.chips.library import load_chip_library

    chips = load_chip_library()
    assert all(spec.kubernetes_resource for spec in chips.values())
    assert chips["Ascend910B"].kubernetes_resource == "huawei.com/Ascend910B3"
    assert chips["BI-V100"].kubernetes_resource == "iluvatar.ai/BI-V100-vgpu"
    assert chips["cpu-intel-xeon-2c"].kubernetes_resource == "none"
    assert chips["Gaudi2"].kubernetes_resource == "habana.ai/gaudi"


_RESOURCES = {"910B": "huawei.com/Ascend910B3"}


def test_kubernetes_manifests_request_each_stage_devices() -> None:
    stages = [
        _stage(0, "H100", 0, 3, 4, [("h0", (0, 1, 2, 3), 4)]),
        _stage(1, "MI300X", 3, 6, 2, [("m0", (0, 1), 2), ("m0", (2, 3), 2)]),
        _stage(2, "910B3", 6, 8, 1, [("a0", (0,), 1), ("a1", (0,), 3)]),
        _stage(3, "MLU370", 8, 10, 2, [("c0", (0, 1), 4)]),
    ]
    plan = _plan(stages)
    docs = list(yaml.safe_load_all(render_kubernetes(
        kubernetes_manifests(plan, options=KubernetesOptions(image="img:1")), plan=plan)))
    assert [d["kind"] for d in docs[:2]] == ["ConfigMap", "Service"]
    assert json.loads(docs[0]["data"]["plan.json"])["global_batch"] == 32
    pods = [d for d in docs if d["kind"] == "Pod"]
    assert len(pods) == sum(s.dp for s in stages)
    world = sum(s.num_devices for s in stages)
    expected_offset = 0
    for pod in pods:
        labels = pod["metadata"]["labels"]
        stage = plan.stages[int(labels["autosplit.io/stage"])]
        replica = stage.replicas[int(labels["autosplit.io/replica"])]
        c = pod["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in c["env"]}
        resource = CHIPS[stage.chip][0]
        assert c["resources"]["limits"] == {resource: stage.tp}
        assert pod["spec"]["nodeSelector"] == {"autosplit.io/chip": stage.chip,
                                               "kubernetes.io/hostname": replica.node}
        assert env["AUTOSPLIT_STAGE"] == str(stage.index)
        assert env["AUTOSPLIT_PLAN"].endswith("plan.json")
        assert env["WORLD_SIZE"] == str(world)
        assert env["AUTOSPLIT_RANK_OFFSET"] == str(expected_offset)
        expected_offset += stage.tp
        assert c["image"] == "img:1"
    assert expected_offset == world


def test_kubernetes_makes_one_pod_per_replica_of_each_pipeline_rank_not_of_each_chunk() -> None:
    for schedule in ("interleaved-1f1b", "zbv"):
        plan = chunked_plan(schedule, UNEVEN_CHUNKS)  # two ranks of TP 2, two chunks each
        docs = kubernetes_manifests(plan, options=KubernetesOptions(image="img:1"))
        pods = [d for d in docs if d["kind"] == "Pod"]
        assert [p["metadata"]["name"] for p in pods] == ["autosplit-gpt-test-s0-r0",
                                                         "autosplit-gpt-test-s1-r0"]
        envs = [{e["name"]: e["value"] for e in p["spec"]["containers"][0]["env"]}
                for p in pods]
        assert [e["WORLD_SIZE"] for e in envs] == ["4", "4"]
        assert [e["AUTOSPLIT_RANK_OFFSET"] for e in envs] == ["0", "2"]
        assert [e["AUTOSPLIT_NUM_PODS"] for e in envs] == ["2", "2"]


def test_kubernetes_vendor_table_overrides_and_unknown_chips() -> None:
    plan = _plan([_stage(0, "X9", 0, 10, 2, [("x", (0, 1), 32)])], micro=1)
    with pytest.raises(BadInputError, match="X9"):
        kubernetes_manifests(plan, options=KubernetesOptions())
    by_vendor = kubernetes_manifests(plan, options=KubernetesOptions(vendors={"X9": "Hygon"}))
    assert by_vendor[-1]["spec"]["containers"][0]["resources"]["limits"] == {
        "hygon.com/hcunum": 2}
    cpu = kubernetes_manifests(plan, options=KubernetesOptions(chip_resources={"X9": "none"}))
    assert cpu[-1]["spec"]["containers"][0]["resources"]["limits"] == {}
    forced = kubernetes_manifests(plan, options=KubernetesOptions(
        resources={"X9": "example.com/xpu"}, pin_nodes=False))
    assert forced[-1]["spec"]["containers"][0]["resources"]["limits"] == {"example.com/xpu": 2}
    assert "kubernetes.io/hostname" not in forced[-1]["spec"]["nodeSelector"]


def test_kubernetes_memory_request_comes_from_the_prediction() -> None:
    plan = uniform_plan()
    with pytest.raises(BadInputError, match="prediction"):
        kubernetes_manifests(plan, options=KubernetesOptions(request_memory=True,
                                                             chip_resources=_RESOURCES))
    costed = _fake_evaluate(plan, model=None, cluster=None, costs=None)
    pods = [d for d in kubernetes_manifests(costed, options=KubernetesOptions(
        request_memory=True, chip_resources=_RESOURCES)) if d["kind"] == "Pod"]
    h100 = pods[0]["spec"]["containers"][0]["resources"]["limits"]
    need = costed.prediction.stages[0].memory.total
    assert h100 == {"nvidia.com/gpu": 2, "nvidia.com/gpumem": -(-int(need) // 2**20)}
    ascend = pods[-1]["spec"]["containers"][0]["resources"]["limits"]
    need = costed.prediction.stages[-1].memory.total
    assert ascend == {"huawei.com/Ascend910B3": 2,
                      "huawei.com/Ascend910B3-memory": -(-int(need) // 2**20)}


# ---- schedules of several chunks per rank -------------------------------------------------


def chunked_plan(schedule: str, bounds: tuple[int, ...], *, ranks: int = 2, v: int = 2,
                 micro: int = 8, global_batch: int = 32, tp: int = 2) -> Plan:
    """Stages ``bounds[k]:bounds[k + 1]`` on the ranks ``schedule`` places them on (rank
    ``r`` is node ``n{r}``'s TP group, DP 1), ``v`` chunks per rank."""
    placed = get_schedule(schedule, virtual_stages=v)
    stages = []
    for k, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        r = placed.rank_of(k, ranks)
        stage = _stage(k, "H100", a, b, tp, [(f"n{r}", tuple(range(tp)), global_batch // micro)])
        stages.append(replace(stage, rank=r if v > 1 else None))
    plan = _plan(stages, global_batch=global_batch, micro=micro, schedule=schedule)
    return replace(plan, virtual_stages=v)


def test_target_schedules_are_the_registrys_export_names() -> None:
    assert TARGET_SCHEDULES == {
        "megatron": ("1f1b", "interleaved-1f1b"),
        "torchtitan": ("1f1b", "gpipe", "interleaved-1f1b", "zb-h1", "interleaved-zb", "zbv"),
        "deepspeed": ("1f1b",)}
    for target, names in TARGET_SCHEDULES.items():
        for name in names:
            plan = replace(uniform_plan(), schedule=name,
                           virtual_stages=get_schedule(name).virtual_stages)
            assert export_schedule_name(plan, target) == get_schedule(name).export_names[target]
    with pytest.raises(BadInputError, match="deepspeed does not run the zbv schedule"):
        export_schedule_name(chunked_plan("zbv", UNEVEN_CHUNKS), "deepspeed")


#: Four chunks on two ranks: blocks 2, 2, 3, 1 (uneven) and 2, 2, 2, 2 (even).
UNEVEN_CHUNKS = (0, 3, 5, 8, 10)
EVEN_CHUNKS = (0, 3, 5, 7, 10)


def test_megatron_interleaved_uneven_chunks_are_a_layout_in_rank_order() -> None:
    # 3 micro-batches on 2 ranks: PyTorch's order runs all 3 per chunk back to back, which
    # Megatron's default group (the pipeline size, 2) would refuse
    plan = chunked_plan("interleaved-1f1b", UNEVEN_CHUNKS, micro=3, global_batch=6)
    assert expressibility_problems(plan, "megatron") == []
    m = megatron_args(plan, GPT_SHAPE)
    assert _flag(m.args, "--pipeline-model-parallel-size") == "2"
    assert m.layout == "E,t*2|t*2|t*3|t,L"
    assert _flag(m.args, "--pipeline-model-parallel-layout") == m.layout
    assert "--num-virtual-stages-per-pipeline-rank" not in m.args
    assert _flag(m.args, "--microbatch-group-size-per-virtual-pipeline-stage") == "3"
    assert _flag(m.args, "--micro-batch-size") == "2" and m.world_size == 4
    # Megatron's part k is chunk k // p of rank k mod p: the plan's stage k
    for k, items in enumerate(parse_layout(m.layout)):
        stage = plan.stages[k]
        assert stage.pipeline_rank == k % 2
        assert items.count("t") == sum(1 for u in range(stage.layer_start, stage.layer_end)
                                       if 0 < u < UNITS - 1)
    assert m.first_last_args == ()
    assert m.stage_devices == ("pipeline rank 0, stages 0, 2 (H100, ranks 0-1): n0:0,1",
                               "pipeline rank 1, stages 1, 3 (H100, ranks 2-3): n1:0,1")
    assert [line.split(":")[0] for line in m.launch] == ["n0", "n1"]


def test_megatron_interleaved_equal_chunks_take_the_virtual_stage_count() -> None:
    plan = chunked_plan("interleaved-1f1b", EVEN_CHUNKS)
    m = megatron_args(plan, GPT_SHAPE)
    assert _flag(m.args, "--num-virtual-stages-per-pipeline-rank") == "2"
    assert "--pipeline-model-parallel-layout" not in m.args
    assert _flag(m.args, "--microbatch-group-size-per-virtual-pipeline-stage") == "2"
    one_chunk = megatron_args(uniform_plan(), GPT_SHAPE).args
    assert "--microbatch-group-size-per-virtual-pipeline-stage" not in one_chunk
    assert "--num-virtual-stages-per-pipeline-rank" not in one_chunk


def test_microbatch_group_is_the_run_of_one_chunk_in_the_priced_order() -> None:
    # rounds of m // max(1, m // p) micro-batches: 8 on 2 ranks -> 2, 6 on 4 -> 6, 3 on 2 -> 3
    for ranks, micro, group in ((2, 8, 2), (4, 6, 6), (2, 3, 3), (4, 8, 4)):
        bounds = tuple(range(2 * ranks)) + (UNITS,)
        plan = chunked_plan("interleaved-1f1b", bounds, ranks=ranks, micro=micro,
                            global_batch=micro)
        assert microbatch_group_size(plan) == group, (ranks, micro)


def test_megatron_refuses_zero_bubble_and_too_few_micro_batches() -> None:
    zbv = chunked_plan("zbv", UNEVEN_CHUNKS)
    assert any(p.startswith("schedule 'zbv' is not available in megatron (it runs 1f1b, "
                            "interleaved-1f1b): megatron-core 0.19 has no zero-bubble")
               for p in expressibility_problems(zbv, "megatron"))
    izb = chunked_plan("interleaved-zb", UNEVEN_CHUNKS)
    assert any("'interleaved-zb' is not available in megatron" in p
               for p in expressibility_problems(izb, "megatron"))
    one = chunked_plan("interleaved-1f1b", UNEVEN_CHUNKS, micro=1, global_batch=2)
    assert expressibility_problems(one, "torchtitan") == []
    assert any("needs at least one micro-batch per rank" in p
               for p in expressibility_problems(one, "megatron"))
    with pytest.raises(BadInputError, match="cannot be expressed in megatron"):
        megatron_args(zbv, GPT_SHAPE)


def test_one_pipeline_rank_is_exported_without_a_pipeline() -> None:
    # two chunks on one rank: the runtimes run each micro-batch through the whole model
    single = chunked_plan("interleaved-1f1b", (0, 4, 10), ranks=1)
    for target in ("megatron", "torchtitan"):
        assert expressibility_problems(single, target) == [], target
    m = megatron_args(single, GPT_SHAPE).args
    assert _flag(m, "--pipeline-model-parallel-size") == "1"
    assert not {"--pipeline-model-parallel-layout", "--num-virtual-stages-per-pipeline-rank",
                "--microbatch-group-size-per-virtual-pipeline-stage"} & set(m)
    job = torchtitan_job(single, model=None, module="my_pkg.gpt", config="gpt_small")
    assert _flag(job.args, "--parallelism.pipeline_parallel_degree") == "1"
    assert "--parallelism.pipeline_parallel_schedule" not in job.args
    # no pipeline: torchtitan runs local_batch_size at once and accumulates the rest
    assert _flag(job.args, "--training.local_batch_size") == "4"
    assert _flag(job.args, "--training.global_batch_size") == "32"


def test_deepspeed_stays_one_forward_one_backward() -> None:
    plan = chunked_plan("interleaved-1f1b", EVEN_CHUNKS)
    assert any("is not available in deepspeed (it runs 1f1b)" in p
               for p in expressibility_problems(plan, "deepspeed"))
    with pytest.raises(BadInputError, match="cannot be expressed in deepspeed"):
        deepspeed_export(plan)


@pytest.mark.parametrize("schedule, v, name, ranks_of", [
    ("interleaved-1f1b", 2, "Interleaved1F1B", [0, 1, 0, 1]),
    ("interleaved-zb", 2, "InterleavedZeroBubble", [0, 1, 0, 1]),
    ("zbv", 2, "ZBVZeroBubble", [0, 1, 1, 0]),
    ("zb-h1", 1, "InterleavedZeroBubble", [0, 1, 2, 3]),
    ("gpipe", 1, "GPipe", [0, 1, 2, 3]),
])
def test_torchtitan_exports_each_schedule_with_its_chunks(schedule: str, v: int, name: str,
                                                          ranks_of: list[int]) -> None:
    ranks = 4 // v
    plan = chunked_plan(schedule, UNEVEN_CHUNKS, ranks=ranks, v=v)
    assert [s.pipeline_rank for s in plan.stages] == ranks_of
    assert expressibility_problems(plan, "torchtitan") == []
    job = torchtitan_job(plan, model=None, module="my_pkg.gpt", config="gpt_small")
    assert _flag(job.args, "--parallelism.pipeline_parallel_schedule") == name
    assert _flag(job.args, "--parallelism.pipeline_parallel_degree") == str(ranks)
    # one part per stage in model order: torchtitan hands part k to the rank the plan has
    assert job.module_fqns_per_model_part == tuple(s.module_names for s in plan.stages)
    assert _flag(job.args, "--parallelism.pipeline_parallel_microbatch_size") == "4"
    assert _flag(job.args, "--training.local_batch_size") == "32"  # 4 samples x 8 micro
    text = render_torchtitan(job, plan=plan)
    if v > 1:
        lead = [s.index for s in plan.stages if s.pipeline_rank == 0]
        assert f"#   pipeline rank 0: stages {', '.join(map(str, lead))}" in text


# ---- expressibility and projection --------------------------------------------------------


def test_uniform_plan_is_expressible_everywhere() -> None:
    for target in ("megatron", "torchtitan", "deepspeed", "kubernetes", ""):
        assert expressibility_problems(uniform_plan(recompute=True), target) == []


def test_heterogeneous_plan_problems_are_named() -> None:
    problems = expressibility_problems(heterogeneous_plan(), "megatron")
    assert ("stage 2 uses TP=2 but megatron needs one TP size for all stages "
            "(others use 4)") in problems
    assert any(p.startswith("stage 2 has DP=2") for p in problems)
    assert any(p.startswith("uneven batch shares in stage 2") for p in problems)
    assert any(p.startswith("per-stage recompute differs") for p in problems)
    assert expressibility_problems(heterogeneous_plan(), "kubernetes") == []
    gpipe = replace(uniform_plan(), schedule="gpipe")
    assert expressibility_problems(gpipe, "torchtitan") == []
    assert any("gpipe" in p for p in expressibility_problems(gpipe, "deepspeed"))
    with pytest.raises(BadInputError, match="unknown target"):
        expressibility_problems(uniform_plan(), "jax")
    with pytest.raises(BadInputError, match="cannot be expressed"):
        megatron_args(heterogeneous_plan(), GPT_SHAPE)


SPEED = {"H100": 3.0, "910B": 1.0, "L4": 1.0}
CAPACITY_GB = {"H100": 80.0, "910B": 12.0, "L4": 8.0}


def _fake_evaluate(plan: Plan, *, model, cluster, costs) -> Plan:  # noqa: ARG001
    """A toy cost model: time ∝ samples × units / (TP × chip speed); activations need memory
    unless recomputed. Enough to check the projection's choices, not the real cost model's."""
    stage_preds = []
    for s in plan.stages:
        share = max(r.batch_share for r in s.replicas)
        busy = share * s.num_layers / (s.tp * SPEED[s.chip]) * (1.33 if s.recompute else 1.0)
        act = 0.5e9 if s.recompute else 4e9 * s.num_layers / s.tp
        mem = MemoryBreakdown(weights=1e9 * s.num_layers / s.tp, gradients=0.0, optimizer=0.0,
                              activations=act, reserve=2e9,
                              capacity=CAPACITY_GB[s.chip] * 1e9)
        stage_preds.append(StagePrediction(
            index=s.index, fwd_s=busy / 3, bwd_s=2 * busy / 3, recompute_s=0.0, tp_comm_s=0.0,
            p2p_in_s=0.0, p2p_out_s=0.0, busy_s=busy, dp_allreduce_s=0.0, optimizer_s=0.0,
            memory=mem, in_flight=1))
    busiest = max(stage_preds, key=lambda p: p.busy_s)
    it = sum(p.busy_s for p in stage_preds) + (plan.micro_batch_count - 1) * busiest.busy_s
    pred = Prediction(iteration_s=it, tokens_per_s=1.0, samples_per_s=1.0, mfu=0.1,
                      pipeline_s=it, bubble_s=0.0, dp_sync_s=0.0, optimizer_s=0.0,
                      bottleneck_stage=busiest.index, stages=tuple(stage_preds))
    return replace(plan, prediction=pred)


@pytest.fixture
def fake_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    import autosplit.plan.evaluate as evaluate

    monkeypatch.setattr(evaluate, "evaluate_plan", _fake_evaluate, raising=False)


@pytest.mark.usefixtures("fake_costs")
@pytest.mark.parametrize("target", ["megatron", "torchtitan", "deepspeed"])
def test_projection_is_expressible_and_reports_its_loss(target: str) -> None:
    original = _fake_evaluate(heterogeneous_plan(), model=None, cluster=None, costs=None)
    projected = project_plan(original, target, model=None, cluster=None, costs=None)
    assert expressibility_problems(projected, target) == []
    assert [(s.layer_start, s.layer_end, s.chip) for s in projected.stages] == [
        (s.layer_start, s.layer_end, s.chip) for s in original.stages]
    # stage 2's node holds four devices, so TP 4 is possible everywhere; it costs the same
    # as TP 2 x DP 2 under the toy model, and the more common TP wins the tie
    assert {s.tp for s in projected.stages} == {4}
    assert {s.dp for s in projected.stages} == {1}
    assert projected.global_batch == original.global_batch
    assert projected.micro_batch_samples == projected.stages[0].replicas[0].batch_share
    # 3 units on a 12 GB chip at TP 4 need 1e9*3/4 + 4e9*3/4 + 2e9 = 5.75 GB: no recompute
    assert not any(s.recompute for s in projected.stages)
    summary = projection_summary(original, projected, target)
    assert summary[0].startswith("uniform TP=4, DP=1")
    assert re.search(r"iteration .* vs .* planned \(\d+% (slower|faster)\)", summary[0])
    assert "projected for " + target in projected.search.notes


@pytest.mark.usefixtures("fake_costs")
def test_projection_turns_recompute_on_when_memory_needs_it() -> None:
    plan = _plan([
        _stage(0, "H100", 0, 2, 2, [("h0", (0, 1), 8)]),
        _stage(1, "910B", 2, 10, 1, [("a0", (0,), 4), ("a0", (1,), 4)], recompute=True),
    ])
    projected = project_plan(plan, "megatron", model=None, cluster=None, costs=None)
    assert expressibility_problems(projected, "megatron") == []
    # TP=2 (both stages can form it): 8 units at TP 2 on 910B need 4+16+2 GB > 12 GB
    # without recompute, so recompute is on everywhere
    assert all(s.recompute for s in projected.stages)
    assert all(s.tp == 2 and s.dp == 1 for s in projected.stages)


@pytest.mark.usefixtures("fake_costs")
def test_projection_says_when_nothing_fits() -> None:
    plan = _plan([
        _stage(0, "H100", 0, 1, 2, [("h0", (0, 1), 8)]),
        _stage(1, "L4", 1, 10, 1, [("g0", (0,), 8)], recompute=True),
    ])
    projected = project_plan(plan, "megatron", model=None, cluster=None, costs=None)
    assert [s.tp for s in projected.stages] == [1, 1]  # the L4 stage has one device
    # 9 units at TP 1 on 8 GB: 9 GB of weights alone; recompute is the smaller overflow
    assert all(s.recompute for s in projected.stages)
    lines = projection_summary(plan, projected, "megatron")
    assert any(line.startswith("the plan does not fit in memory: stage 1") for line in lines)


@pytest.mark.usefixtures("fake_costs")
def test_projection_frees_devices_it_cannot_use() -> None:
    plan = _plan([
        _stage(0, "H100", 0, 5, 2, [("h0", (0, 1), 4), ("h0", (2, 3), 4), ("h1", (0, 1), 8)]),
        _stage(1, "910B", 5, 10, 4, [("a0", (0, 1, 2, 3), 16)]),
    ])
    projected = project_plan(plan, "megatron", model=None, cluster=None, costs=None)
    assert expressibility_problems(projected, "megatron") == []
    used = {f"{r.node}:{i}" for s in projected.stages for r in s.replicas
            for i in r.local_indices}
    all_devices = {f"{r.node}:{i}" for s in plan.stages for r in s.replicas
                   for i in r.local_indices}
    assert set(projected.idle_devices) == all_devices - used
    assert {"h1:0", "h1:1"} <= set(projected.idle_devices)  # stage 1 caps DP


def _uneven_shares(plan: Plan) -> Plan:
    """``plan`` with rank 0's devices as two TP-1 replicas taking 3 and 1 samples."""
    def split(st: StagePlan) -> StagePlan:
        if st.pipeline_rank != 0:
            return st
        [r] = st.replicas
        return replace(st, tp=1, replicas=(Replica(r.node, r.local_indices[:1], 3),
                                           Replica(r.node, r.local_indices[1:], 1)))
    return replace(plan, stages=tuple(split(st) for st in plan.stages))


@pytest.mark.usefixtures("fake_costs")
def test_projection_keeps_the_chunks_where_the_target_interleaves_them() -> None:
    # interleaved zero bubble -> Megatron's interleaved 1F1B: same chunks on the same ranks
    plan = _uneven_shares(chunked_plan("interleaved-zb", UNEVEN_CHUNKS))
    assert any("not available in megatron" in p
               for p in expressibility_problems(plan, "megatron"))
    projected = project_plan(plan, "megatron", model=None, cluster=None, costs=None)
    assert expressibility_problems(projected, "megatron") == []
    assert (projected.schedule, projected.virtual_stages) == ("interleaved-1f1b", 2)
    assert [(s.layer_start, s.layer_end, s.pipeline_rank) for s in projected.stages] == [
        (s.layer_start, s.layer_end, s.pipeline_rank) for s in plan.stages]
    assert "schedule interleaved-1f1b" in projection_summary(plan, projected, "megatron")[0]
    # torchtitan runs ZBV itself: only the batch split changes
    zbv = _uneven_shares(chunked_plan("zbv", UNEVEN_CHUNKS))
    kept = project_plan(zbv, "torchtitan", model=None, cluster=None, costs=None)
    assert (kept.schedule, kept.virtual_stages) == ("zbv", 2)
    assert expressibility_problems(kept, "torchtitan") == []


@pytest.mark.usefixtures("fake_costs")
def test_projection_merges_each_ranks_chunks_where_the_target_cannot_place_them() -> None:
    from factories import gpt_like_model

    # ZBV's V (stages 0 and 3 on rank 0) has no Megatron placement: one stage per rank
    zbv = chunked_plan("zbv", UNEVEN_CHUNKS)
    model = gpt_like_model(blocks=BLOCKS)
    for target in ("megatron", "deepspeed"):
        projected = project_plan(zbv, target, model=model, cluster=None, costs=None)
        assert expressibility_problems(projected, target) == []
        assert (projected.schedule, projected.virtual_stages) == ("1f1b", 1)
        # rank 0 owned 3 + 2 units, rank 1 owned 2 + 3
        assert [(s.layer_start, s.layer_end) for s in projected.stages] == [(0, 5), (5, 10)]


# ---- the command line ---------------------------------------------------------------------


def test_cli_rejects_unknown_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(uniform_plan().to_dict()))
    assert main(["export", str(plan_file), "--to", "jax"]) == 2
    assert "unknown export target" in capsys.readouterr().err


def _needs_plan_io() -> None:
    io = pytest.importorskip("autosplit.plan.io")
    if not hasattr(io, "load_plan"):
        pytest.skip("plan loading is not available yet")


def test_cli_rejects_a_malformed_plan(tmp_path: Path) -> None:
    _needs_plan_io()
    broken = tmp_path / "plan.json"
    broken.write_text("{ not json")
    out = tmp_path / "out.sh"
    assert main(["export", str(broken), "--to", "megatron", "-o", str(out)]) == 2
    assert not out.exists()


@pytest.mark.parametrize("breakage", ["no stages", "no replicas", "wrong TP group",
                                      "folder", "missing name map"])
def test_cli_rejects_broken_plans_with_exit_2(tmp_path: Path, breakage: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _needs_plan_io()
    d = uniform_plan().to_dict()
    extra: list[str] = []
    if breakage == "no stages":
        d["stages"] = []
    elif breakage == "no replicas":
        d["stages"][1]["replicas"] = []
    elif breakage == "wrong TP group":
        d["stages"][2]["replicas"][0]["local_indices"] = [0]
    elif breakage == "missing name map":
        extra = ["--name-map", str(tmp_path / "nope.yaml")]
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(d))
    arg = str(tmp_path) if breakage == "folder" else str(plan_file)
    out = tmp_path / "out.toml"
    assert main(["export", arg, "--to", "torchtitan", "-o", str(out), *extra]) == 2
    assert not out.exists()
    assert "Traceback" not in capsys.readouterr().err


#: A model file with the fixtures' module names (``transformer.wte`` ... ``lm_head``).
FIXTURE_MODEL = """
import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.head_dim = hidden // heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)


class Block(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden)
        self.attn = Attention(hidden, heads)
        self.ln_2 = nn.LayerNorm(hidden)
        self.fc = nn.Linear(hidden, 4 * hidden)
        self.out = nn.Linear(4 * hidden, hidden)


class Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(512, 64)
        self.wpe = nn.Embedding(128, 64)
        self.h = nn.ModuleList(Block(64, 4) for _ in range(8))
        self.ln_f = nn.LayerNorm(64)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer = Body()
        self.lm_head = nn.Linear(64, 512, bias=False)


def build_model():
    return Model()


def example_batch(batch_size, seq_len, device):
    x = torch.zeros(batch_size, seq_len, dtype=torch.long, device=device)
    return (x,), x
"""


#: The torchtitan model and config the exports of the fixture model name.
_TORCHTITAN_MODEL = ["--torchtitan-module", "my_pkg.gpt", "--torchtitan-config", "gpt_small"]


def _plan_with_fixture_model(tmp_path: Path, plan: Plan) -> Path:
    """``plan`` saved as ``plan.json`` beside a copy of the fixture model file it names."""
    model_file = tmp_path / "fixture_model.py"
    model_file.write_text(FIXTURE_MODEL)
    plan = replace(plan, model=replace(plan.model, source_file=str(model_file)))
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan.to_dict()))
    return plan_file


@pytest.mark.parametrize("target", ["megatron", "torchtitan", "deepspeed", "kubernetes"])
def test_cli_exports_an_expressible_plan(tmp_path: Path, target: str) -> None:
    _needs_plan_io()
    plan_file = _plan_with_fixture_model(tmp_path, uniform_plan())
    out = tmp_path / "export.out"
    extra = _TORCHTITAN_MODEL if target == "torchtitan" else []
    assert main(["export", str(plan_file), "--to", target, "-o", str(out), *extra]) == 0
    text = out.read_text()
    if target == "megatron":
        assert "--hidden-size 64" in text and "--num-attention-heads 4" in text
        assert "--ffn-hidden-size 256" in text and "--max-position-embeddings 128" in text
    if target in ("megatron", "torchtitan"):
        assert main(["export", str(plan_file), "--to", target, "--json", "-o", str(out),
                     *extra]) == 0
        assert json.loads(out.read_text())


@pytest.mark.parametrize("schedule, target, says", [
    ("interleaved-1f1b", "megatron", "--microbatch-group-size-per-virtual-pipeline-stage 2"),
    ("zbv", "torchtitan", "--parallelism.pipeline_parallel_schedule ZBVZeroBubble"),
])
def test_cli_exports_a_plan_of_several_chunks_per_rank(tmp_path: Path, schedule: str,
                                                       target: str, says: str) -> None:
    _needs_plan_io()
    plan_file = _plan_with_fixture_model(tmp_path, chunked_plan(schedule, UNEVEN_CHUNKS))
    out = tmp_path / "export.sh"
    extra = _TORCHTITAN_MODEL if target == "torchtitan" else []
    assert main(["export", str(plan_file), "--to", target, "-o", str(out), "--no-project",
                 *extra]) == 0
    text = out.read_text()
    assert says in text
    if target == "megatron":
        assert "--pipeline-model-parallel-layout 'E,t*2|t*2|t*3|t,L'" in text
        assert "#   pipeline rank 1, stages 1, 3 (H100, ranks 2-3): n1:0,1" in text


def test_cli_torchtitan_without_a_torchtitan_model_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _needs_plan_io()
    plan_file = _plan_with_fixture_model(tmp_path, uniform_plan())
    assert main(["export", str(plan_file), "--to", "torchtitan"]) == 2
    assert "--torchtitan-module" in capsys.readouterr().err


def test_cli_no_project_refuses_a_heterogeneous_plan(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _needs_plan_io()
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(heterogeneous_plan().to_dict()))
    assert main(["export", str(plan_file), "--to", "megatron", "--no-project"]) == 2
    assert "uses TP=2" in capsys.readouterr().err


# ---- end to end: a searched plan, exported to every target --------------------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def searched_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("search") / "plan.json"
    code = main(["search", str(REPO / "experiments/models/gpt.py"), "--model-arg", "size=tiny",
                 "--cluster", str(REPO / "experiments/clusters/small_2type.yaml"),
                 "-o", str(out)])
    assert code == 0
    return out


@pytest.mark.slow
def test_searched_plan_exports_to_every_target(searched_plan: Path, tmp_path: Path) -> None:
    from autosplit.plan.io import load_plan

    plan = load_plan(searched_plan)
    outputs = {}
    for target in ("megatron", "torchtitan", "deepspeed", "kubernetes"):
        out = tmp_path / f"export.{target}"
        # torchtitan ships no GPT: name the user's own torchtitan model, as a GPT user would
        extra = ["--json", "--torchtitan-module", "my_pkg.gpt", "--torchtitan-config",
                 "gpt_tiny"] if target == "torchtitan" else []
        assert main(["export", str(searched_plan), "--to", target, "-o", str(out),
                     *extra]) == 0
        outputs[target] = out.read_text()
    exported = plan
    if expressibility_problems(plan, "megatron"):  # the search is free to be heterogeneous
        assert "projected for megatron" in outputs["megatron"]
        return
    layout = re.search(r"--pipeline-model-parallel-layout '?([^'\n]+)'?", outputs["megatron"])
    if layout:
        assert len(parse_layout(layout.group(1))) == exported.num_stages
    parts = json.loads(outputs["torchtitan"])["module_fqns_per_model_part"]
    assert [m for p in parts for m in p] == [m for s in plan.stages for m in s.module_names]
    ds = json.loads(outputs["deepspeed"])
    assert ds["pipeline_module"]["parts"] == [s.layer_start for s in plan.stages] + [
        plan.stages[-1].layer_end]
    pods = [d for d in yaml.safe_load_all(outputs["kubernetes"]) if d["kind"] == "Pod"]
    assert len(pods) == sum(s.dp for s in plan.stages)
    for pod in pods:  # small_2type is H100 + A100: both NVIDIA
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert list(limits) == ["nvidia.com/gpu"]


@pytest.mark.slow
def test_heterogeneous_searched_plan_is_projected_with_the_real_cost_model(
        searched_plan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from factories import node_stage_plan

    from autosplit.plan.context import load_plan_context, with_sources
    from autosplit.plan.io import load_plan, save_plan

    searched = load_plan(searched_plan)
    ctx = load_plan_context(searched, plan_file=str(searched_plan))
    # paths valid from anywhere: the plans below are saved in another folder
    searched = with_sources(searched, cluster=ctx.cluster, model=ctx.model)
    # the searched plan's model, cluster and batch on a layout built here: one stage per
    # node, each a TP-4 group, four samples per micro-batch
    half = ctx.model.num_layers // 2
    plan = node_stage_plan(searched, ctx.model, ctx.cluster,
                           bounds=(0, half, ctx.model.num_layers), nodes=("h100", "a100"),
                           tp=4, micro_batches=searched.global_batch // 4)
    assert not expressibility_problems(plan, "megatron")
    first = plan.stages[0]
    [replica] = first.replicas
    idx = replica.local_indices
    # stage 0 as two TP-2 replicas with uneven shares: three of the four problems
    het = replace(plan, stages=(
        replace(first, tp=2, replicas=(Replica(replica.node, idx[:2], 3),
                                       Replica(replica.node, idx[2:], 1))),
        *plan.stages[1:]))
    problems = expressibility_problems(het, "megatron")
    assert [p.split(" ")[0] for p in problems] == ["stage", "stage", "uneven"], problems
    het_file = tmp_path / "het.json"
    save_plan(het, het_file)
    out = tmp_path / "het.sh"
    capsys.readouterr()
    assert main(["export", str(het_file), "--to", "megatron", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "megatron cannot express this plan" in err
    assert re.search(r"iteration .* vs .* planned", err)
    text = out.read_text()
    assert "# note: projected for megatron: uniform TP=" in text
    assert "--pipeline-model-parallel-size 2" in text
