"""A plan as Kubernetes manifests that request its devices through HAMi resource names.

Kubernetes runs our own runtime, which executes any plan, so nothing is projected. The output
is one multi-document YAML: a ConfigMap holding the plan, a headless Service that gives every
pod a stable DNS name (rank 0 is the rendezvous), then the pods of each stage in stage order.
A replica (a TP group) sits inside one node, so each replica is one pod; a stage with DP=3 is
three pods. Each pod:

- requests ``TP`` devices under its chip's resource name: the chip file's
  ``kubernetes_resource``, else HAMi's name for the vendor and chip model
  (``HAMI_VENDOR_RESOURCES``, ``HAMI_PER_CHIP``; sources in docs/export.md); a chip whose
  resource is ``none`` (a CPU) requests no device; optionally with HAMi's memory resource
  (``nvidia.com/gpumem``, ``huawei.com/Ascend910B3-memory``…) sized from the prediction;
- selects nodes by chip (``autosplit.io/chip: H100``) and by the plan's node name
  (``kubernetes.io/hostname``), so the scheduler puts it where the plan did;
- gets the environment a rank needs to find its part of the plan: ``AUTOSPLIT_PLAN``,
  ``AUTOSPLIT_STAGE``, ``AUTOSPLIT_REPLICA``, ``AUTOSPLIT_TP``, ``AUTOSPLIT_RANK_OFFSET``,
  ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``.

Ranks are numbered stage by stage, replica by replica, TP index last. Under an interleaved or
V schedule the stages (chunks) of one pipeline rank share its devices and processes, so pods
are made per pipeline rank, named and numbered by the rank's first stage.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import yaml

from autosplit.errors import BadInputError
from autosplit.export.shape import rank_stages
from autosplit.plan.schema import Plan

__all__ = [
    "HAMI_VENDOR_RESOURCES",
    "HAMI_PER_CHIP",
    "NO_RESOURCE",
    "CHIP_LABEL",
    "PLAN_MOUNT",
    "DEFAULT_COMMAND",
    "KubernetesOptions",
    "guess_vendor",
    "device_resource",
    "memory_resource",
    "kubernetes_manifests",
    "render_kubernetes",
]

#: Device resource per vendor where HAMi gives every chip of the vendor one name (HAMi's Helm
#: chart ``charts/hami/values.yaml`` and ``pkg/device/<vendor>/device.go``; docs/export.md has
#: the table with links). Gaudi is not there: HAMi does not manage it, and Habana's own device
#: plugin names it ``habana.ai/gaudi`` (the shipped ``gaudi2`` chip file says so).
HAMI_VENDOR_RESOURCES: dict[str, str] = {
    "nvidia": "nvidia.com/gpu",
    "cambricon": "cambricon.com/vmlu",
    "hygon": "hygon.com/hcunum",
    "metax": "metax-tech.com/sgpu",
    "amd": "amd.com/gpu",
    "enflame": "enflame.com/gcu",
    "mthreads": "mthreads.com/vgpu",
    "kunlunxin": "kunlunxin.com/xpu",
    "aws": "aws.amazon.com/neuron",
    "biren": "birentech.com/gpu",
    "vastai": "vastaitech.com/va",
}

#: Vendors HAMi names per chip model: the models it knows, and how a model becomes a resource.
HAMI_PER_CHIP: dict[str, tuple[tuple[str, ...], str]] = {
    # longest first, so 910B4-1 is not read as 910B4
    "huawei": (("910B4-1", "910B2", "910B3", "910B4", "910A", "910C", "310P"),
               "huawei.com/Ascend{model}"),
    "iluvatar": (("BI-V100", "BI-V150", "MR-V100", "MR-V50"), "iluvatar.ai/{model}-vgpu"),
}

#: ``kubernetes_resource`` of a chip that needs no accelerator (a CPU).
NO_RESOURCE = "none"

#: Device resource -> memory resource counted in MiB (HAMi's ``resourceMemoryName``), for
#: ``--request-memory``. Vendors whose memory unit is not MiB (Iluvatar: 256 MB) are left out.
_MEMORY_MIB: tuple[tuple[str, str], ...] = (
    (r"^nvidia\.com/gpu$", "nvidia.com/gpumem"),
    (r"^hygon\.com/hcunum$", "hygon.com/hcumem"),
    (r"^(huawei\.com/Ascend[0-9A-Z-]+)$", r"\1-memory"),
)

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
    ("hygon", r"hygon|dcu|hcu|^[kz]100|^bw\d"),
    ("iluvatar", r"iluvatar|^bi[-_]?v?\d|^mr[-_]?v"),
    ("amd", r"^amd|instinct|^mi\d"),
    ("intel", r"gaudi|^hl[-_]?\d"),
    ("metax", r"metax|^c5\d\d"),
    ("enflame", r"enflame|^gcu|^[is]\d0$"),
    ("nvidia", r"nvidia|^(gb|[abhlvt])\d|^rtx"),
)

_VENDOR_ALIASES: dict[str, str] = {
    "ascend": "huawei", "habana": "intel", "mlu": "cambricon", "dcu": "hygon", "hcu": "hygon",
    "moore": "mthreads", "kunlun": "kunlunxin", "neuron": "aws", "amazon": "aws",
}


@dataclass(frozen=True)
class KubernetesOptions:
    """What the manifests need beyond the plan."""

    image: str = "autosplit:latest"
    namespace: str = ""
    job_name: str = ""
    command: tuple[str, ...] = DEFAULT_COMMAND
    #: Chip name → vendor (from the cluster's chip specs); others are guessed from the name.
    vendors: Mapping[str, str] | None = None
    #: Chip name → ``kubernetes_resource`` of its chip file (empty entries: derive it).
    chip_resources: Mapping[str, str] | None = None
    #: Chip name → resource name from ``--resource``, overriding everything else.
    resources: Mapping[str, str] | None = None
    #: Add the memory resource (MiB) from the plan's predicted peak memory, where HAMi has one.
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
                    chip_resources: Mapping[str, str] | None = None,
                    resources: Mapping[str, str] | None = None) -> str | None:
    """The resource one device of ``chip`` is requested by; ``None`` for a chip that needs
    none (``kubernetes_resource: none``, a CPU).

    In order: ``--resource`` (``resources``), the chip file's ``kubernetes_resource``
    (``chip_resources``), HAMi's name for the vendor (per chip model for Ascend and Iluvatar).
    A vendor HAMi does not support, or a model it does not name, is refused with the fix.
    """
    for table in (resources, chip_resources):
        chosen = (table or {}).get(chip, "").strip()
        if chosen:
            return None if chosen.lower() == NO_RESOURCE else chosen
    vendor = (vendors or {}).get(chip) or guess_vendor(chip)
    key = _vendor_key(vendor) if vendor else None
    fix = (f"set `kubernetes_resource:` in the chip file of {chip} (docs/chips.md; `none` for "
           f"a CPU), or pass --resource {chip}=DOMAIN/NAME")
    if key in HAMI_VENDOR_RESOURCES:
        return HAMI_VENDOR_RESOURCES[key]
    if key in HAMI_PER_CHIP:
        models, template = HAMI_PER_CHIP[key]
        upper = chip.upper().replace("_", "-")
        model = next((m for m in models if m in upper or m.replace("-", "") in upper), None)
        if model is None:
            raise BadInputError(
                f"HAMi names {vendor} devices per chip model ({', '.join(models)}) and the "
                f"chip name '{chip}' does not say which model it is", field="chip", fix=fix)
        return template.format(model=model)
    supported = sorted({*HAMI_VENDOR_RESOURCES, *HAMI_PER_CHIP})
    raise BadInputError(
        f"no Kubernetes device resource known for chip '{chip}'"
        + (f": HAMi does not support vendor '{vendor}'" if vendor else
           " (its vendor is unknown)")
        + f"; HAMi supports {', '.join(supported)}", field="chip", fix=fix)


def memory_resource(device: str) -> str | None:
    """HAMi's per-device memory resource (MiB) for a device resource, or None."""
    for pattern, replacement in _MEMORY_MIB:
        if re.match(pattern, device):
            return re.sub(pattern, replacement, device)
    return None


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
    # the chunks of one pipeline rank run in the same processes: pods per rank, not per stage
    ranks = rank_stages(plan)
    world = sum(s.num_devices for s in ranks)
    pods = sum(s.dp for s in ranks)
    master = f"{job}-s0-r0.{job}"
    rank = 0
    pod_index = 0
    for stage in ranks:
        for r, replica in enumerate(stage.replicas):
            # A stage may mix chips of one collective group: each replica asks for its own.
            chip = replica.chip or stage.chip
            device = device_resource(chip, vendors=options.vendors,
                                     chip_resources=options.chip_resources,
                                     resources=options.resources)
            limits: dict[str, object] = {device: stage.tp} if device else {}
            memory = memory_resource(device) if device else None
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


def _vendor_key(vendor: str) -> str:
    """The vendor's key in the HAMi tables (``Huawei Ascend`` → ``huawei``), else itself."""
    v = vendor.strip().lower()
    known = (*HAMI_VENDOR_RESOURCES, *HAMI_PER_CHIP, "intel")
    if v in known:
        return v
    return next((k for a, k in _VENDOR_ALIASES.items() if a in v),
                next((k for k in known if k in v), v))


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
