"""Every export of the example plans, fed to the runtime's own parser as a user would.

- Megatron-LM: megatron-core's ``parse_args`` + ``validate_args``, then its own layer
  placement for each (pipeline rank, virtual stage) and, for interleaved plans, the order of
  its interleaved schedule. megatron-core 0.17+
  needs Python 3.12, so it lives in its own environment (``.venv/megatron``, built by
  ``.ci/run``; ``AUTOSPLIT_MEGATRON_PYTHON`` points elsewhere) and runs in a subprocess.
- torchtitan: ``ConfigManager().parse_args`` on the exported ``--module/--config`` line, then
  torchtitan's own pipeline split of its model, built on the meta device, by the parsed
  ``module_fqns_per_model_part``, and its own choice of the chunks each rank builds for the
  parsed schedule.
- DeepSpeed: ``DeepSpeedConfig`` with the data-parallel size of the exported topology.
- Kubernetes: ``kubernetes-validate --strict`` against the newest schema it ships.

Each check compares the layer counts the runtime will build with the plan's. A test skips,
with the reason, only when the runtime's package is not installed (the ``parsers`` extra).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from autosplit.cli import main
from autosplit.export.megatron import megatron_args
from autosplit.export.model_shape import ModelShape
from autosplit.export.shape import blocks_per_stage, rank_stages
from autosplit.plan.io import load_plan
from autosplit.plan.schema import Plan

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "experiments" / "models"
CLUSTERS = REPO / "experiments" / "clusters"

#: (name, model file, model args, cluster, --target or "" for none, --schedule)
EXAMPLES = [
    ("gpt-1.3b", "gpt.py", "size=1.3b", "small_2type.yaml", "megatron", "auto"),
    ("llama-7b", "llama.py", "size=7b", "two_vendor_h100_910b.yaml", "", "auto"),
    ("llama-70b", "llama.py", "size=70b", "homogeneous_a100x16.yaml", "torchtitan", "auto"),
    # two chunks on each of two ranks (H100 and A100), uneven: Megatron's layout
    ("gpt-1.3b-interleaved", "gpt.py", "size=1.3b", "small_2type.yaml", "megatron",
     "interleaved-1f1b"),
]

_MEGATRON_PYTHON = os.environ.get("AUTOSPLIT_MEGATRON_PYTHON",
                                  str(REPO / ".venv" / "megatron" / "bin" / "python"))

# Run by megatron-core's interpreter: parse and validate the arguments, then ask Megatron
# which decoder layers each (pipeline rank, virtual stage) builds — the functions its
# TransformerBlock calls, with its own setters standing in for the process groups — and, for a
# virtual pipeline, the order of passes its interleaved schedule runs on each rank (its
# warm-up count and micro-batch table, walked as forward_backward_pipelining_with_interleaving
# walks them: warm-up forwards, one forward and one backward per step, cool-down backwards).
# validate_args asks the GPU for its architecture when TP > 1; this host has none, so it
# answers for a Hopper (9), the newest generation that still needs
# CUDA_DEVICE_MAX_CONNECTIONS=1. Rotary fusion needs Transformer Engine, which a CPU host
# lacks; it changes no layer placement, so it is switched off before the config is built.
_MEGATRON_CHECK = r"""
import json, os, sys
from types import SimpleNamespace
spec = json.loads(sys.argv[1])
os.environ.update(spec["env"])
os.environ["WORLD_SIZE"] = str(spec["world_size"])
os.environ["RANK"] = "0"
import megatron.core
import megatron.training.arguments as arguments
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import schedules
from megatron.core.transformer.transformer_block import get_num_layers_to_build
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset
from megatron.training.argument_utils import core_transformer_config_from_args
arguments.get_device_arch_version = lambda: 9
sys.argv = ["pretrain_gpt.py", *spec["args"]]
args = arguments.parse_args()
arguments.validate_args(args, {})
args.apply_rope_fusion = False
config = core_transformer_config_from_args(args)
pp = args.pipeline_model_parallel_size
vpp = args.virtual_pipeline_model_parallel_size
v = vpp or 1
parallel_state.set_pipeline_model_parallel_world_size(pp)
parallel_state.set_virtual_pipeline_model_parallel_world_size(vpp)
placement = []  # per stage in model order: [rank, chunk, first decoder layer, count]
for chunk in range(v):
    for rank in range(pp):
        parallel_state.set_pipeline_model_parallel_rank(rank)
        vp = chunk if vpp else None
        placement.append([rank, chunk, get_transformer_layer_offset(config, vp_stage=vp),
                          get_num_layers_to_build(config, vp_stage=vp)])
order = []
if vpp:
    m = args.global_batch_size // (args.micro_batch_size * args.data_parallel_size)
    group = config.microbatch_group_size_per_vp_stage
    table = schedules.get_schedule_table(m, v, group)
    for rank in range(pp):
        comm = SimpleNamespace(pp_group=SimpleNamespace(size=lambda: pp, rank=lambda r=rank: r),
                               virtual_pipeline_model_parallel_size=vpp)
        total, _, warmup, remaining = schedules.get_pp_rank_microbatches(
            m, v, group, p2p_communicator=comm)
        fwd = lambda k: ["F", table[k][1] * pp + rank, table[k][0]]
        bwd = lambda k: ["B", (v - 1 - table[k][1]) * pp + rank, table[k][0]]
        passes = [fwd(k) for k in range(warmup)]
        for k in range(remaining):
            passes += [fwd(warmup + k), bwd(k)]
        passes += [bwd(k) for k in range(remaining, total)]
        order.append(passes)
print(json.dumps({"version": megatron.core.__version__,
                  "blocks": [n for _, _, _, n in placement], "placement": placement,
                  "order": order, "group": config.microbatch_group_size_per_vp_stage,
                  "tp": args.tensor_model_parallel_size, "dp": args.data_parallel_size,
                  "heads": args.num_attention_heads, "groups": args.num_query_groups,
                  "ffn": args.ffn_hidden_size, "hidden": args.hidden_size}))
"""


@pytest.fixture(scope="module")
def example_plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The example plans, searched once for the module."""
    folder = tmp_path_factory.mktemp("example-plans")
    plans = {}
    for name, model, model_arg, cluster, target, schedule in EXAMPLES:
        out = folder / f"{name}.json"
        argv = ["search", str(MODELS / model), "--model-arg", model_arg,
                "--cluster", str(CLUSTERS / cluster), "--schedule", schedule, "-o", str(out)]
        assert main(argv + (["--target", target] if target else [])) == 0
        plans[name] = out
    return plans


def _export(plan_file: Path, target: str, out: Path, *extra: str) -> Path:
    assert main(["export", str(plan_file), "--to", target, "-o", str(out), *extra]) == 0
    return out


def _exported_plan(plan_file: Path, target: str, tmp_path: Path) -> Plan:
    """The plan as exported to ``target`` (projected when it was not expressible)."""
    from autosplit.export.expressible import expressibility_problems

    plan = load_plan(plan_file)
    if not expressibility_problems(plan, target):
        return plan
    # the export projected it: read the projected plan back from the Kubernetes-free path
    from autosplit.export.expressible import project_plan
    from autosplit.plan.context import load_plan_context

    ctx = load_plan_context(plan, plan_file=str(plan_file))
    return project_plan(plan, target, model=ctx.model, cluster=ctx.cluster, costs=ctx.costs)


# ---- Megatron-LM ---------------------------------------------------------------------------


def _megatron(spec: dict[str, object]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_MEGATRON_PYTHON, "-c", _MEGATRON_CHECK, json.dumps(spec)],
                          capture_output=True, text=True, timeout=300, check=False)


def _needs_megatron() -> None:
    if not Path(_MEGATRON_PYTHON).exists():
        pytest.skip(f"megatron-core is not installed ({_MEGATRON_PYTHON} is missing; "
                    ".ci/run builds it with Python >= 3.12)")


@pytest.mark.slow
@pytest.mark.parametrize("name", [e[0] for e in EXAMPLES])
def test_megatron_parse_and_validate_accept_every_export(
        example_plans: dict[str, Path], name: str, tmp_path: Path) -> None:
    _needs_megatron()
    out = _export(example_plans[name], "megatron", tmp_path / "megatron.json", "--json")
    export = json.loads(out.read_text())
    result = _megatron(export)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    plan = _exported_plan(example_plans[name], "megatron", tmp_path)
    assert got["blocks"] == list(blocks_per_stage(plan))
    assert got["tp"] == plan.stages[0].tp and got["dp"] == plan.stages[0].dp
    assert got["version"].startswith("0.19")
    if plan.virtual_stages > 1:
        assert got["placement"][:2] == [[0, 0, 0, got["blocks"][0]],
                                        [1, 0, got["blocks"][0], got["blocks"][1]]]
        assert got["order"]  # Megatron interleaves


def _tp2_plan() -> tuple[Plan, ModelShape]:
    from test_export import uniform_plan

    shape = ModelShape(num_layers=8, hidden=512, heads=8, kv_heads=2, ffn=1408, vocab=1000,
                       positions=0, gated_mlp=True, rms_norm=True, bias=False,
                       tied_head=False)
    return uniform_plan(), shape


def test_megatron_validate_refuses_tp_without_the_exported_environment() -> None:
    _needs_megatron()
    plan, shape = _tp2_plan()
    margs = megatron_args(plan, shape)
    assert dict(margs.env) == {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    ok = _megatron({"args": list(margs.args), "env": dict(margs.env),
                    "world_size": margs.world_size})
    assert ok.returncode == 0, ok.stderr[-3000:]
    got = json.loads(ok.stdout.strip().splitlines()[-1])
    assert got["blocks"] == [2, 3, 3] and got["groups"] == 2 and got["ffn"] == 1408
    bare = _megatron({"args": list(margs.args), "env": {"CUDA_DEVICE_MAX_CONNECTIONS": "8"},
                      "world_size": margs.world_size})
    assert bare.returncode != 0 and "CUDA_DEVICE_MAX_CONNECTIONS" in bare.stderr


#: Interleaved plans for Megatron: (stage bounds over the fixtures' 10 units, ranks, micro-
#: batches, global batch). Unequal chunks (a layout), equal ones (a virtual stage count), and
#: three ranks with a micro-batch count Megatron's default group would refuse.
_INTERLEAVED = {
    "uneven": ((0, 3, 5, 8, 10), 2, 3, 6),
    "even": ((0, 3, 5, 7, 10), 2, 8, 32),
    "three-ranks": ((0, 2, 3, 5, 6, 8, 10), 3, 6, 12),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(_INTERLEAVED))
def test_megatron_builds_interleaved_chunks_where_the_plan_puts_them(case: str) -> None:
    _needs_megatron()
    from test_export import LLAMA_SHAPE, UNITS, chunked_plan

    from autosplit.export.schedules import microbatch_group_size, plan_schedule

    bounds, ranks, micro, batch = _INTERLEAVED[case]
    plan = chunked_plan("interleaved-1f1b", bounds, ranks=ranks, micro=micro,
                        global_batch=batch)
    margs = megatron_args(plan, LLAMA_SHAPE)
    result = _megatron({"args": list(margs.args), "env": dict(margs.env),
                        "world_size": margs.world_size})
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    # stage k: rank k mod p, chunk k // p, its own blocks (block b is unit b + 1)
    want = []
    for s, blocks in zip(plan.stages, blocks_per_stage(plan), strict=True):
        first = max(s.layer_start, 1) - 1
        assert s.layer_end <= UNITS
        want.append([s.pipeline_rank, s.index // ranks, first, blocks])
    assert got["placement"] == want
    assert got["group"] == microbatch_group_size(plan)
    # the passes Megatron runs on each rank are the ones the cost model prices
    priced = plan_schedule(plan).order(ranks, micro)
    assert got["order"] == [[[ps.kind, ps.stage, ps.micro_batch] for ps in rank]
                            for rank in priced]


# ---- torchtitan ----------------------------------------------------------------------------


def _torchtitan_args(name: str) -> tuple[str, ...]:
    # torchtitan has no GPT-2: the GPT plan's job names a module and config, as a user of
    # their own GPT model in torchtitan would; the overrides are what is checked.
    if name.startswith("gpt"):
        return ("--torchtitan-module", "llama3", "--torchtitan-config", "llama3_debugmodel")
    return ()


@pytest.mark.slow
@pytest.mark.parametrize("name", [e[0] for e in EXAMPLES])
def test_torchtitan_config_manager_and_pipeline_split_accept_every_export(
        example_plans: dict[str, Path], name: str, tmp_path: Path) -> None:
    pytest.importorskip("torchtitan", reason="torchtitan is not installed (the parsers extra)")
    import torch
    from torchtitan.config import ConfigManager
    from torchtitan.distributed.activation_checkpoint import FullAC

    # the split torchtitan's pipeline_module_split applies to each stage
    from torchtitan.distributed.pipeline_parallel import _split_module

    out = _export(example_plans[name], "torchtitan", tmp_path / "tt.json", "--json",
                  *_torchtitan_args(name))
    job = json.loads(out.read_text())
    cfg = ConfigManager().parse_args(job["args"])
    plan = _exported_plan(example_plans[name], "torchtitan", tmp_path)
    s0 = plan.stages[0]
    par = cfg.parallelism
    assert par.pipeline_parallel_degree == plan.num_ranks
    assert par.tensor_parallel_degree == s0.tp
    assert par.data_parallel_replicate_degree * par.data_parallel_shard_degree == s0.dp
    assert par.pipeline_parallel_microbatch_size == s0.replicas[0].batch_share
    assert cfg.training.global_batch_size == plan.global_batch
    assert cfg.training.seq_len == plan.model.seq_len
    if s0.recompute:
        assert isinstance(cfg.activation_checkpoint, FullAC.Config)
    else:  # `activation-checkpoint:none` selects no config at all
        assert cfg.activation_checkpoint is None
    if plan.num_ranks == 1:
        return
    assert cfg.training.disable_cuda_graphs
    parts = par.module_fqns_per_model_part
    assert parts == job["module_fqns_per_model_part"]
    if not job["llama3_names"]:
        return
    with torch.device("meta"):
        model = cfg.model_spec.model.build()
    chunks = [_split_module(model, p) for p in parts]
    assert [len(c.layers) for c in chunks] == list(blocks_per_stage(plan))
    assert [c.tok_embeddings is not None for c in chunks] == [True] + [False] * (len(parts) - 1)
    assert [c.lm_head is not None for c in chunks] == [False] * (len(parts) - 1) + [True]
    assert [c.norm is not None for c in chunks] == [False] * (len(parts) - 1) + [True]


#: A 6-layer Llama in torchtitan's names (``llama3_debugmodel`` has six layers), as units:
#: the embedding, one per layer, the final norm with the head.
_TT_UNITS = (("tok_embeddings",), *((f"layers.{i}",) for i in range(6)), ("norm", "lm_head"))


def _torchtitan_plan(schedule: str, v: int, ranks: int) -> Plan:
    """Four stages over the 6-layer Llama (1, 2, 2 and 1 layers) on the schedule's ranks."""
    from dataclasses import replace

    from test_export import chunked_plan

    plan = chunked_plan(schedule, (0, 2, 4, 6, 8), ranks=ranks, v=v)
    stages = tuple(replace(s, module_names=tuple(
        m for u in range(s.layer_start, s.layer_end) for m in _TT_UNITS[u]))
        for s in plan.stages)
    return replace(plan, stages=stages, model=replace(plan.model, block_list="layers",
                                                      num_layers=len(_TT_UNITS)))


@pytest.mark.slow
@pytest.mark.parametrize("schedule, v, ranks", [
    ("interleaved-1f1b", 2, 2), ("interleaved-zb", 2, 2), ("zbv", 2, 2), ("zb-h1", 1, 4)])
def test_torchtitan_builds_each_schedules_chunks_on_the_planned_ranks(
        schedule: str, v: int, ranks: int) -> None:
    pytest.importorskip("torchtitan", reason="torchtitan is not installed (the parsers extra)")
    import torch
    from torch.distributed.pipelining.schedules import PipelineScheduleMulti, get_schedule_class
    from torchtitan.config import ConfigManager

    # torchtitan's own split and its own choice of the stages each pipeline rank builds
    from torchtitan.distributed.pipeline_parallel import (
        _get_pp_rank_to_stage_indices_mapping,
        _split_module,
    )

    from autosplit.export.torchtitan import torchtitan_job

    plan = _torchtitan_plan(schedule, v, ranks)
    job = torchtitan_job(plan, model=None, module="llama3", config="llama3_debugmodel")
    cfg = ConfigManager().parse_args(list(job.args))
    par = cfg.parallelism
    assert par.pipeline_parallel_degree == ranks
    assert issubclass(get_schedule_class(par.pipeline_parallel_schedule), PipelineScheduleMulti)
    assert cfg.training.local_batch_size // par.pipeline_parallel_microbatch_size == \
        plan.micro_batch_count
    parts = par.module_fqns_per_model_part
    for r in range(ranks):
        built = _get_pp_rank_to_stage_indices_mapping(r, ranks, par.pipeline_parallel_schedule,
                                                      len(parts))
        assert list(built) == [s.index for s in plan.stages if s.pipeline_rank == r]
    with torch.device("meta"):
        model = cfg.model_spec.model.build()
    chunks = [_split_module(model, p) for p in parts]
    assert [len(c.layers) for c in chunks] == list(blocks_per_stage(plan)) == [1, 2, 2, 1]
    assert [c.tok_embeddings is not None for c in chunks] == [True, False, False, False]
    assert [c.lm_head is not None for c in chunks] == [False, False, False, True]


# ---- DeepSpeed -----------------------------------------------------------------------------


class _DataParallelGroup:
    """What DeepSpeedConfig asks a model-parallel unit: the data-parallel size."""

    def __init__(self, size: int) -> None:
        self.size = size

    def get_data_parallel_world_size(self) -> int:
        return self.size


@pytest.fixture
def deepspeed_rank0(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as rank 0 of the exported job, for DeepSpeedConfig.

    DeepSpeedConfig asks ``deepspeed.comm`` for the rank before it asks the model-parallel
    unit for the data-parallel size; starting ``deepspeed.comm`` on a CPU host compiles its
    shared-memory op, so the test answers the rank question itself and DeepSpeed's batch
    checks run as in a real job."""
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (the parsers extra)")
    import deepspeed.runtime.config as ds_config

    monkeypatch.setattr(ds_config.dist, "get_rank", lambda group=None: 0)


@pytest.mark.slow
@pytest.mark.parametrize("name", [e[0] for e in EXAMPLES])
@pytest.mark.usefixtures("deepspeed_rank0")
def test_deepspeed_config_accepts_every_export(example_plans: dict[str, Path], name: str,
                                               tmp_path: Path) -> None:
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    out = _export(example_plans[name], "deepspeed", tmp_path / "ds.json")
    export = json.loads(out.read_text())
    pm = export["pipeline_module"]
    topo = PipeModelDataParallelTopology(**pm["topology"])
    cfg = DeepSpeedConfig(export["ds_config"], mpu=_DataParallelGroup(topo.get_dim("data")))
    plan = _exported_plan(example_plans[name], "deepspeed", tmp_path)
    assert cfg.world_size == plan.stages[0].dp
    assert cfg.train_batch_size == plan.global_batch
    assert topo.get_dim("pipe") == plan.num_stages == pm["num_stages"]
    parts = pm["parts"]
    units = [parts[i + 1] - parts[i] for i in range(len(parts) - 1)]
    assert units == [s.layer_end - s.layer_start for s in plan.stages]


# ---- Kubernetes ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", [e[0] for e in EXAMPLES])
def test_kubernetes_validate_strict_accepts_every_export(example_plans: dict[str, Path],
                                                         name: str, tmp_path: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate is not installed (the parsers extra)")
    out = _export(example_plans[name], "kubernetes", tmp_path / "k8s.yaml")
    docs = list(yaml.safe_load_all(out.read_text()))
    version = kv.latest_version()
    for doc in docs:
        kv.validate(doc, version, strict=True)
    plan = load_plan(example_plans[name])
    pods = [d for d in docs if d["kind"] == "Pod"]
    assert len(pods) == sum(s.dp for s in rank_stages(plan))
    allowed = {"H100": "nvidia.com/gpu", "A100": "nvidia.com/gpu",
               "Ascend910B": "huawei.com/Ascend910B3"}
    for pod in pods:
        chip = next(e["value"] for e in pod["spec"]["containers"][0]["env"]
                    if e["name"] == "AUTOSPLIT_CHIP")
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert list(limits) == [allowed[chip]]


@pytest.mark.usefixtures("deepspeed_rank0")
def test_deepspeed_config_rejects_a_batch_that_does_not_add_up() -> None:
    from deepspeed.runtime.config import DeepSpeedConfig
    from test_export import uniform_plan

    from autosplit.export.deepspeed import deepspeed_export

    ds = deepspeed_export(uniform_plan())
    assert DeepSpeedConfig(ds.ds_config, mpu=_DataParallelGroup(2)).train_batch_size == 32
    with pytest.raises(AssertionError, match="train_batch_size is not equal"):
        DeepSpeedConfig(ds.ds_config, mpu=_DataParallelGroup(3))


def test_kubernetes_validate_rejects_a_broken_manifest() -> None:
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate is not installed (the parsers extra)")
    from test_export import uniform_plan

    from autosplit.export.kubernetes import KubernetesOptions, kubernetes_manifests

    docs = kubernetes_manifests(uniform_plan(), options=KubernetesOptions(
        resources={"H100": "nvidia.com/gpu", "910B": "huawei.com/Ascend910B3"}))
    pod = docs[2]
    for doc in docs:
        kv.validate(doc, kv.latest_version(), strict=True)
    broken = replace_key(pod, "restartPolicy", "restartPolicyy")
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, kv.latest_version(), strict=True)


def replace_key(doc: dict[str, object], key: str, new: str) -> dict[str, object]:
    spec = dict(doc["spec"])  # type: ignore[arg-type]
    spec[new] = spec.pop(key)
    return {**doc, "spec": spec}

