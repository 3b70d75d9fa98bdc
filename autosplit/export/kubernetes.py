"""A plan as Kubernetes manifests that request its devices through HAMi resource names.

Kubernetes runs our own runtime, which executes any plan, so nothing is projected. The output
is one multi-document YAML: a ConfigMap holding the plan, a headless Service that gives every
pod a stable DNS name (rank 0 is the rendezvous), then the pods of each stage in stage order.
A replica (a TP group) sits inside one node, so each replica is one pod; a stage with DP=3 is
three pods. Each pod:

- requests ``TP`` devices under the HAMi resource name of its chip's vendor
  (``VENDOR_RESOURCES``; HAMi: https://github.com/Project-HAMi/HAMi, docs/*-support.md),
  optionally with ``nvidia.com/gpumem`` sized from the plan's memory prediction;
- selects nodes by chip (``autosplit.io/chip: H100``) and by the plan's node name
  (``kubernetes.io/hostname``), so the scheduler puts it where the plan did;
- gets the environment a rank needs to find its part of the plan: ``AUTOSPLIT_PLAN``,
  ``AUTOSPLIT_STAGE``, ``AUTOSPLIT_REPLICA``, ``AUTOSPLIT_TP``, ``AUTOSPLIT_RANK_OFFSET``,
  ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``.

Ranks are numbered stage by stage, replica by replica, TP index last.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import yaml

from autosplit.errors import BadInputError
from autosplit.plan.schema import Plan

__all__ = [
    "VENDOR_RESOURCES",
    "CHIP_LABEL",
    "PLAN_MOUNT",
    "DEFAULT_COMMAND",
    "KubernetesOptions",
    "guess_vendor",
    "device_resource",
    "kubernetes_manifests",
    "render_kubernetes",
]

#: Device resource (and optional per-device memory resource, MiB) per chip vendor. HAMi
#: registers these for NVIDIA, Huawei Ascend, Cambricon, Hygon, Iluvatar, AMD and MetaX
#: (HAMi docs: nvidia README, ascend910b-support.md, cambricon-mlu-support.md,
#: hygon-dcu-support.md, iluvatar-gpu-support.md, amd-gpu-support.md); Intel Gaudi comes from
#: Habana's own device plugin.
VENDOR_RESOURCES: dict[str, tuple[str, str | None]] = {
    "nvidia": ("nvidia.com/gpu", "nvidia.com/gpumem"),
    "huawei": ("huawei.com/Ascend910", None),
    "cambricon": ("cambricon.com/vmlu", None),
    "hygon": ("hygon.com/dcunum", None),
    "iluvatar": ("iluvatar.ai/vgpu", None),
    "amd": ("amd.com/gpu", None),
    "intel": ("habana.ai/gaudi", None),
    "metax": ("metax-tech.com/gpu", None),
}

#: Ascend chips HAMi names individually (``huawei.com/Ascend910B3`` ...).
_ASCEND_VARIANTS = ("910A", "910B2", "910B3", "910B4", "310P")

#: Node label the manifests select a chip type by; label the nodes with it.
CHIP_LABEL = "autosplit.io/chip"
#: Where the plan is mounted in every pod.
PLAN_MOUNT = "/etc/autosplit"
#: Container command unless ``--command`` overrides it: one ``torchrun`` agent per pod, one
#: process per device, pods ordered by ``AUTOSPLIT_POD_INDEX`` so that torchrun's global ranks
#: start at ``AUTOSPLIT_RANK_OFFSET``; each process joins ``autosplit run`` as its rank.
#: Kubernetes expands ``$(VAR)`` from the container's environment.
DEFAULT_COMMAND: tuple[str, ...] = (
    "torchrun", "--nnodes=$(AUTOSPLIT_NUM_PODS)", "--node-rank=$(AUTOSPLIT_POD_INDEX)",
    "--nproc-per-node=$(AUTOSPLIT_TP)", "--master-addr=$(MASTER_ADDR)",
    "--master-port=$(MASTER_PORT)", "-m", "autosplit", "run", "$(AUTOSPLIT_PLAN)",
    "--device", "cuda")

_VENDOR_PATTERNS: tuple[tuple[str, str], ...] = (
    ("huawei", r"ascend|^(atlas)?[-_ ]?(910|310)"),
    ("cambricon", r"cambricon|^mlu"),
    ("hygon", r"hygon|dcu|^[kz]100|^bw\d"),
    ("iluvatar", r"iluvatar|^bi[-_]?v?\d|^mr[-_]?v"),
    ("amd", r"^amd|instinct|^mi\d"),
    ("intel", r"gaudi|^hl[-_]?\d|intel"),
    ("metax", r"metax|^c5\d\d"),
    ("nvidia", r"nvidia|^(gb|[abhlvt])\d|^rtx"),
)


@dataclass(frozen=True)
class KubernetesOptions:
    """What the manifests need beyond the plan."""

    image: str = "autosplit:latest"
    namespace: str = ""
    job_name: str = ""
    command: tuple[str, ...] = DEFAULT_COMMAND
    #: Chip name → vendor (from the cluster's chip specs); others are guessed from the name.
    vendors: Mapping[str, str] | None = None
    #: Chip name → resource name, overriding the vendor table.
    resources: Mapping[str, str] | None = None
    #: Add ``nvidia.com/gpumem`` (MiB) from the plan's predicted peak memory.
    request_memory: bool = False
    #: Pin each pod to the plan's node with ``kubernetes.io/hostname``.
    pin_nodes: bool = True
    master_port: int = 29500


def guess_vendor(chip: str) -> str | None:
    """The vendor a chip name suggests (``H100`` → nvidia, ``910B`` → huawei), or None."""
    name = chip.strip().lower()
    for vendor, pattern in _VENDOR_PATTERNS:
        if re.search(pattern, name):
            return vendor
    return None


def device_resource(chip: str, *, vendors: Mapping[str, str] | None = None,
                    resources: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """The (device, memory-or-None) resource names for a chip."""
    if resources and chip in resources:
        return resources[chip], None
    vendor = (vendors or {}).get(chip) or guess_vendor(chip)
    key = _vendor_key(vendor) if vendor else None
    if key is None:
        raise BadInputError(
            f"no Kubernetes device resource known for chip '{chip}'"
            + (f" (vendor '{vendor}')" if vendor else ""),
            field="chip",
            fix=f"pass --resource {chip}=VENDOR.COM/RESOURCE (known vendors: "
                f"{', '.join(VENDOR_RESOURCES)})")
    device, memory = VENDOR_RESOURCES[key]
    if key == "huawei":
        upper = chip.upper()
        variant = next((v for v in _ASCEND_VARIANTS if v in upper), None)
        if variant:
            device = f"huawei.com/Ascend{variant}"
    return device, memory


def kubernetes_manifests(plan: Plan, *, options: KubernetesOptions) -> list[dict[str, object]]:
    """The manifests as plain dicts, in apply order."""
    job = _dns_name(options.job_name or f"autosplit-{plan.model.name}")
    plan_path = f"{PLAN_MOUNT}/plan.json"
    meta_ns = {"namespace": options.namespace} if options.namespace else {}
    base_labels = {"app.kubernetes.io/name": "autosplit", "autosplit.io/job": job}
    docs: list[dict[str, object]] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{job}-plan", **meta_ns, "labels": dict(base_labels)},
            "data": {"plan.json": json.dumps(plan.to_dict(), indent=1) + "\n"},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": job, **meta_ns, "labels": dict(base_labels)},
            "spec": {"clusterIP": "None", "selector": dict(base_labels),
                     "ports": [{"name": "rendezvous", "port": options.master_port}]},
        },
    ]
    world = sum(s.num_devices for s in plan.stages)
    pods = sum(s.dp for s in plan.stages)
    master = f"{job}-s0-r0.{job}"
    rank = 0
    pod_index = 0
    for stage in plan.stages:
        for r, replica in enumerate(stage.replicas):
            # A stage may mix chips of one collective group: each replica asks for its own.
            chip = replica.chip or stage.chip
            device, memory = device_resource(chip, vendors=options.vendors,
                                             resources=options.resources)
            limits: dict[str, object] = {device: stage.tp}
            if options.request_memory and memory:
                limits[memory] = _memory_mib(plan, stage.index)
            name = f"{job}-s{stage.index}-r{r}"
            labels = {**base_labels, "autosplit.io/stage": str(stage.index),
                      "autosplit.io/replica": str(r), CHIP_LABEL: _label_value(chip)}
            selector = {CHIP_LABEL: _label_value(chip)}
            if options.pin_nodes:
                selector["kubernetes.io/hostname"] = replica.node
            env = {
                "AUTOSPLIT_PLAN": plan_path,
                "AUTOSPLIT_STAGE": stage.index,
                "AUTOSPLIT_REPLICA": r,
                "AUTOSPLIT_NUM_STAGES": plan.num_stages,
                "AUTOSPLIT_TP": stage.tp,
                "AUTOSPLIT_DP": stage.dp,
                "AUTOSPLIT_CHIP": chip,
                "AUTOSPLIT_NODE": replica.node,
                "AUTOSPLIT_RANK_OFFSET": rank,
                "AUTOSPLIT_POD_INDEX": pod_index,
                "AUTOSPLIT_NUM_PODS": pods,
                "WORLD_SIZE": world,
                "LOCAL_WORLD_SIZE": stage.tp,
                "MASTER_ADDR": master,
                "MASTER_PORT": options.master_port,
            }
            docs.append({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, **meta_ns, "labels": labels},
                "spec": {
                    "hostname": name,
                    "subdomain": job,
                    "restartPolicy": "Never",
                    "nodeSelector": selector,
                    "containers": [{
                        "name": "trainer",
                        "image": options.image,
                        "command": list(options.command),
                        "env": [{"name": k, "value": str(v)} for k, v in env.items()],
                        "resources": {"limits": dict(limits)},
                        "volumeMounts": [{"name": "plan", "mountPath": PLAN_MOUNT,
                                          "readOnly": True}],
                    }],
                    "volumes": [{"name": "plan", "configMap": {"name": f"{job}-plan"}}],
                },
            })
            rank += stage.tp
            pod_index += 1
    return docs


def render_kubernetes(docs: Sequence[Mapping[str, object]], *, plan: Plan,
                      notes: tuple[str, ...] = ()) -> str:
    """Multi-document YAML, with a header saying how to use it."""
    header = [f"# autosplit plan for {plan.model.name} on {plan.cluster.name}: "
              "Kubernetes manifests (HAMi resource names).",
              f"# Label each node with {CHIP_LABEL}=<chip>; then: kubectl apply -f <this file>"]
    header += [f"# note: {n}" for n in notes]
    body = yaml.dump_all([dict(d) for d in docs], Dumper=_BlockDumper, sort_keys=False,
                         default_flow_style=False, width=100)
    return "\n".join(header) + "\n" + body


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the plan JSON) as readable ``|`` blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def _vendor_key(vendor: str) -> str | None:
    v = vendor.strip().lower()
    if v in VENDOR_RESOURCES:
        return v
    aliases = {"ascend": "huawei", "habana": "intel", "mlu": "cambricon", "dcu": "hygon"}
    return next((k for a, k in aliases.items() if a in v),
                next((k for k in VENDOR_RESOURCES if k in v), None))


def _memory_mib(plan: Plan, stage_index: int) -> int:
    if plan.prediction is None:
        raise BadInputError("--request-memory needs the plan's memory prediction, and this "
                            "plan has none", field="prediction",
                            fix="run `autosplit evaluate` on the plan first, or drop "
                                "--request-memory")
    mem = plan.prediction.stages[stage_index].memory
    return int(math.ceil(mem.total / 2**20))


def _dns_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)[:40].strip("-")
    return name or "autosplit"


def _label_value(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63].strip("-._")
    return value or "unknown"
