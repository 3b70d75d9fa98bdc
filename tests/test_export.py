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
from autosplit.errors import BadInputError
from autosplit.export.deepspeed import deepspeed_export, partition_parts
from autosplit.export.expressible import (
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
from autosplit.export.naming import (
    IDENTITY,
    load_name_map,
    name_map_from_data,
    stage_module_names,
)
from autosplit.export.torchtitan import render_torchtitan_toml, torchtitan_config
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
    parsed = parse_layout(megatron_args(plan).layout)
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
    m = megatron_args(plan)
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
    text = render_megatron(m, plan=plan)
    assert "MEGATRON_PARALLEL_ARGS=(" in text and text.rstrip().endswith(")")


def test_megatron_first_last_only_when_middle_stages_are_even() -> None:
    stages = [_stage(i, "H100", a, b, 1, [(f"n{i}", (0,), 4)])
              for i, (a, b) in enumerate([(0, 2), (2, 4), (4, 7), (7, 10)])]
    assert megatron_args(_plan(stages)).first_last_args == ()  # middle 2 and 3 blocks


def test_megatron_recompute_flags_when_stages_recompute() -> None:
    m = megatron_args(uniform_plan(recompute=True))
    assert _flag(m.args, "--recompute-granularity") == "full"
    assert _flag(m.args, "--recompute-method") == "uniform"
    assert _flag(m.args, "--recompute-num-layers") == "1"


def test_torchtitan_module_lists_cover_every_module_once_in_order() -> None:
    plan = uniform_plan(recompute=True)
    cfg = torchtitan_config(plan)
    flat = [m for part in cfg.module_fqns_per_model_part for m in part]
    expected = [m for u in range(UNITS) for m in _unit_modules(u)]
    assert flat == expected
    assert len(cfg.module_fqns_per_model_part) == plan.num_stages
    assert cfg.pipeline_parallel_degree == 3 and cfg.tensor_parallel_degree == 2
    assert cfg.data_parallel_replicate_degree == 2
    assert cfg.pipeline_parallel_microbatch_size == 2
    assert cfg.pipeline_parallel_schedule == "1F1B"
    assert cfg.activation_checkpoint_mode == "full"


def test_torchtitan_toml_parses_and_uses_the_name_map(tmp_path: Path) -> None:
    tomllib = pytest.importorskip("tomllib")
    map_file = tmp_path / "map.yaml"
    map_file.write_text(
        "rules:\n"
        "  - prefix: transformer.wte\n    replace: tok_embeddings\n"
        "  - prefix: transformer.wpe\n    replace: tok_embeddings\n"
        "  - match: 'transformer\\.h\\.(\\d+)'\n    replace: 'layers.\\1'\n"
        "  - match: 'transformer\\.ln_f'\n    replace: norm\n"
        "  - prefix: lm_head\n    replace: output\n")
    names = load_name_map(map_file)
    plan = uniform_plan()
    cfg = torchtitan_config(plan, name_map=names)
    parsed = tomllib.loads(render_torchtitan_toml(cfg, plan=plan))
    parts = parsed["parallelism"]["module_fqns_per_model_part"]
    assert parts[0] == ["tok_embeddings", "layers.0", "layers.1"]
    assert parts[-1][-2:] == ["norm", "output"]
    assert [m for p in parts for m in p] == (
        ["tok_embeddings"] + [f"layers.{i}" for i in range(BLOCKS)] + ["norm", "output"])
    assert parsed["parallelism"]["tensor_parallel_degree"] == 2
    assert parsed["activation_checkpoint"]["mode"] == "none"
    assert parsed["training"]["global_batch_size"] == 32


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


CHIPS = {
    "H100": ("nvidia.com/gpu", "nvidia"),
    "910B": ("huawei.com/Ascend910", "huawei"),
    "910B3": ("huawei.com/Ascend910B3", "huawei"),
    "MLU370": ("cambricon.com/vmlu", "cambricon"),
    "Z100": ("hygon.com/dcunum", "hygon"),
    "BI-V150": ("iluvatar.ai/vgpu", "iluvatar"),
    "MI300X": ("amd.com/gpu", "amd"),
    "Gaudi2": ("habana.ai/gaudi", "intel"),
}


@pytest.mark.parametrize("chip", sorted(CHIPS))
def test_vendor_and_resource_per_chip(chip: str) -> None:
    resource, vendor = CHIPS[chip]
    assert guess_vendor(chip) == vendor
    assert device_resource(chip)[0] == resource


def test_kubernetes_manifests_request_each_stage_devices() -> None:
    stages = [
        _stage(0, "H100", 0, 3, 4, [("h0", (0, 1, 2, 3), 4)]),
        _stage(1, "MI300X", 3, 6, 2, [("m0", (0, 1), 2), ("m0", (2, 3), 2)]),
        _stage(2, "910B", 6, 8, 1, [("a0", (0,), 1), ("a1", (0,), 3)]),
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


def test_kubernetes_vendor_table_overrides_and_unknown_chips() -> None:
    plan = _plan([_stage(0, "X9", 0, 10, 2, [("x", (0, 1), 32)])], micro=1)
    with pytest.raises(BadInputError, match="X9"):
        kubernetes_manifests(plan, options=KubernetesOptions())
    by_vendor = kubernetes_manifests(plan, options=KubernetesOptions(vendors={"X9": "Hygon"}))
    assert by_vendor[-1]["spec"]["containers"][0]["resources"]["limits"] == {
        "hygon.com/dcunum": 2}
    forced = kubernetes_manifests(plan, options=KubernetesOptions(
        resources={"X9": "example.com/xpu"}, pin_nodes=False))
    assert forced[-1]["spec"]["containers"][0]["resources"]["limits"] == {"example.com/xpu": 2}
    assert "kubernetes.io/hostname" not in forced[-1]["spec"]["nodeSelector"]


def test_kubernetes_memory_request_comes_from_the_prediction() -> None:
    plan = uniform_plan()
    with pytest.raises(BadInputError, match="prediction"):
        kubernetes_manifests(plan, options=KubernetesOptions(request_memory=True))
    costed = _fake_evaluate(plan, model=None, cluster=None, costs=None)
    pods = [d for d in kubernetes_manifests(costed, options=KubernetesOptions(
        request_memory=True)) if d["kind"] == "Pod"]
    h100 = pods[0]["spec"]["containers"][0]["resources"]["limits"]
    need = costed.prediction.stages[0].memory.total
    assert h100 == {"nvidia.com/gpu": 2, "nvidia.com/gpumem": -(-int(need) // 2**20)}
    ascend = pods[-1]["spec"]["containers"][0]["resources"]["limits"]
    assert ascend == {"huawei.com/Ascend910": 2}  # HAMi's memory resource is NVIDIA-only here


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
        megatron_args(heterogeneous_plan())


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


@pytest.mark.parametrize("target", ["megatron", "torchtitan", "deepspeed", "kubernetes"])
def test_cli_exports_an_expressible_plan(tmp_path: Path, target: str) -> None:
    _needs_plan_io()
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(uniform_plan().to_dict()))
    out = tmp_path / "export.out"
    assert main(["export", str(plan_file), "--to", target, "-o", str(out)]) == 0
    assert out.read_text().strip()
    if target in ("megatron", "torchtitan"):
        assert main(["export", str(plan_file), "--to", target, "--json", "-o", str(out)]) == 0
        assert json.loads(out.read_text())


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
    tomllib = pytest.importorskip("tomllib")
    from autosplit.plan.io import load_plan

    plan = load_plan(searched_plan)
    outputs = {}
    for target in ("megatron", "torchtitan", "deepspeed", "kubernetes"):
        out = tmp_path / f"export.{target}"
        assert main(["export", str(searched_plan), "--to", target, "-o", str(out)]) == 0
        outputs[target] = out.read_text()
    exported = plan
    if expressibility_problems(plan, "megatron"):  # the search is free to be heterogeneous
        assert "projected for megatron" in outputs["megatron"]
        return
    layout = re.search(r"--pipeline-model-parallel-layout '?([^'\n]+)'?", outputs["megatron"])
    if layout:
        assert len(parse_layout(layout.group(1))) == exported.num_stages
    parts = tomllib.loads(outputs["torchtitan"])["parallelism"]["module_fqns_per_model_part"]
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
    from autosplit.plan.io import load_plan, save_plan

    plan = load_plan(searched_plan)
    first = plan.stages[0]
    # give stage 0 two TP-2 replicas with uneven shares when it owns four devices on a node
    devices = [(r.node, i) for r in first.replicas for i in r.local_indices]
    node = devices[0][0]
    if len(devices) < 4 or any(n != node for n, _ in devices) or plan.micro_batch_samples < 2:
        pytest.skip("the searched plan's first stage is not four devices on one node")
    b = plan.micro_batch_samples
    shares = (b // 2 + 1, b - b // 2 - 1) if b >= 3 else (b // 2, b - b // 2)
    idx = sorted(i for _, i in devices)
    het = replace(plan, prediction=None, stages=(
        replace(first, tp=2, replicas=(Replica(node, tuple(idx[:2]), shares[0]),
                                       Replica(node, tuple(idx[2:4]), shares[1]))),
        *plan.stages[1:]))
    assert expressibility_problems(het, "megatron")
    het_file = tmp_path / "het.json"
    save_plan(het, het_file)
    out = tmp_path / "het.sh"
    capsys.readouterr()
    assert main(["export", str(het_file), "--to", "megatron", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "megatron cannot express this plan" in err
    assert re.search(r"iteration .* vs .* planned", err)
    assert "# note: projected for megatron: uniform TP=" in out.read_text()
