"""Bad input files, as data: every reader of a user's file (cluster, chip, plan, suite, baseline,
measured run, profile CSV, importers), each case a record the runner executes through the CLI.

A case names the files to write in its own empty folder, the command line, the exit code and
the words its message must contain, and the output files that must not exist afterwards (a
failing command leaves none). In ``files`` and ``argv``, ``{tmp}`` is the case's folder and
``{repo}`` the repository root; a file's content is text, bytes, or a ``Special`` (a FIFO, a
folder, a symlink, or a sparse file of a given size).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Case", "Special", "CASES", "FIFO", "FOLDER", "REPO", "symlink", "sized",
           "plan_text", "fill", "materialise"]

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Special:
    """A path that is not a plain file with content."""

    kind: str  # "fifo", "folder", "symlink", "sized"
    target: str = ""
    size: int = 0


FIFO = Special("fifo")
FOLDER = Special("folder")


def symlink(target: str) -> Special:
    return Special("symlink", target=target)


def sized(size: int) -> Special:
    """A sparse file of ``size`` bytes (all zero): large without costing disk or memory."""
    return Special("sized", size=size)


@dataclass(frozen=True)
class Case:
    name: str
    files: Mapping[str, str | bytes | Special]
    argv: tuple[str, ...]
    exit_code: int
    #: Substrings the command's stderr must contain.
    message: tuple[str, ...]
    #: Paths (relative to the case folder) that must not exist after the command.
    absent: tuple[str, ...] = ()
    tags: tuple[str, ...] = field(default=())
    #: Environment variables set while the command runs.
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def special(self) -> bool:
        """Whether a file is a FIFO, device or the like (run these in a subprocess with a
        timeout: a reader that blocked on one would otherwise hang the test run)."""
        return any(isinstance(v, Special) for v in self.files.values())


def fill(text: str, folder: Path) -> str:
    """``text`` with ``{tmp}`` (the case's folder) and ``{repo}`` (the repository) filled in."""
    return text.replace("{tmp}", str(folder)).replace("{repo}", str(REPO))


def materialise(case: Case, folder: Path) -> None:
    """Write the case's files into ``folder``."""
    for rel, content in case.files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Special):
            if content.kind == "fifo":
                os.mkfifo(path)
            elif content.kind == "folder":
                path.mkdir()
            elif content.kind == "symlink":
                path.symlink_to(content.target)
            else:
                with open(path, "wb") as fh:
                    fh.truncate(content.size)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(fill(content, folder), encoding="utf-8")


GPT = "{repo}/experiments/models/gpt.py"
SMALL = "{repo}/experiments/clusters/small_2type.yaml"

# ---- cluster files ---------------------------------------------------------------------


def _search(cluster: str | bytes | Special, *words: str, name: str) -> Case:
    return Case(name=f"cluster-{name}", files={"c.yaml": cluster},
                argv=("search", GPT, "-a", "size=tiny", "-c", "{tmp}/c.yaml", "--seq-len",
                      "128", "--global-batch", "16", "-o", "{tmp}/plan.json", "-q"),
                exit_code=2, message=("c.yaml", "fix:", *words), absent=("plan.json",))


_NODE = "nodes: [{chip: H100, devices: 8}]\n"
_BOMB = ('a: &a ["x","x","x","x","x","x","x","x","x"]\n'
         + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9)
                   + "]\n" for i in range(8))
         + "description: *i\n" + _NODE)
_CHIP = ("{vendor: Acme, tflops_bf16: 100, tflops_fp16: 100, tflops_fp32: 10, memory_gb: 32, "
         "memory_bw_gbs: 900, intra_node_link: pcie, intra_node_bw_gbs: 32, "
         "collective_library: ACCL")

CLUSTER_CASES = [
    _search(FIFO, "FIFO", "regular file", name="fifo"),
    _search(symlink("/dev/zero"), "a device", name="dev-zero"),
    _search(FOLDER, "a folder", name="folder"),
    _search(sized(2 * 2**20), "2.0 MiB", "at most 1.0 MiB", name="too-big"),
    _search(b"\x7fELF\x02\x01\x01\x00\x00\x00", "binary", name="binary"),
    _search(b"nodes: [{chip: H100, devices: 8}]\n\xff\xfe", "not UTF-8", name="not-utf8"),
    _search(_BOMB, "aliases expand the document to", name="alias-bomb"),
    _search("a: &a [*a]\n" + _NODE, "refers to a value that contains it",
            name="recursive-alias"),
    _search("nodes: [{chip: H100, devices: 1000000000000}]\n", "nodes[0].devices",
            "at most 1024", "[1, 1024]", name="devices-absurd"),
    _search("network: {nic_bw_gbs: 50}\nnodes: [{chip: H100, devices: 8, count: 100000000}]\n",
            "nodes[0].count", "at most 16384", name="count-absurd"),
    _search("network: {nic_bw_gbs: 50}\nnodes: [{chip: H100, devices: 1024, count: 200}]\n",
            "204,800 devices", "131,072", name="total-devices-absurd"),
    _search("nodes: [{chip: H100, devices: .nan}]\n", "nodes[0].devices", "whole number",
            name="devices-nan"),
    _search("nodes: [{chip: H100, devices: yes}]\n", "whole number", "bool", name="devices-bool"),
    _search("nodes: [{chip: H100, devices: 8.5}]\n", "whole number", name="devices-fraction"),
    _search("nodes: [{chip: H100, devices: 0}]\n", "at least 1", name="devices-zero"),
    _search("network: {nic_bw_gbs: .nan}\n" + _NODE, "network.nic_bw_gbs", "finite",
            name="bandwidth-nan"),
    _search("network: {nic_bw_gbs: .inf}\n" + _NODE, "network.nic_bw_gbs", "finite",
            name="bandwidth-inf"),
    _search("network: {latency_us: -1}\n" + _NODE, "network.latency_us", "0 or more",
            name="latency-negative"),
    _search("nodse: []\n", "unknown key 'nodse'", "did you mean 'nodes'", name="unknown-key"),
    _search("nodes: []\nnodes: []\n", "line 2", "given twice", name="duplicate-key"),
    _search("", "empty", name="empty"),
    _search("- a\n- b\n", "mapping", name="not-mapping"),
    _search("nodes: [\n", "YAML syntax", name="syntax"),
    _search("1: x\n" + _NODE, "cannot be a key", name="number-key"),
    _search(_NODE + "interconnect: {relay_pipelined: maybe}\n", "interconnect.relay_pipelined",
            "true or false", name="bool-text"),
    _search(_NODE + "interconnect: {links: [{between: [NVIDIA, AMD, Huawei]}]}\n",
            "exactly 2 entries", name="link-three-sides"),
    _search("nodes: [{chip: H100, devices: 8, name: 'two words'}]\n", "nodes[0].name",
            "invalid name", name="node-name"),
    _search("nodes: [{chip: H1OO, devices: 8}]\n", "unknown chip 'H1OO'", "'H100'",
            name="unknown-chip"),
    _search("chips: {X1: " + _CHIP + ", compute_efficiency: 2}}\n"
            "nodes: [{chip: X1, devices: 8}]\n", "chips.X1.compute_efficiency", "(0, 1]",
            name="inline-chip-efficiency"),
    _search("network: 50\n" + _NODE, "expected a mapping", "network: {nic_bw_gbs",
            name="section-not-mapping"),
    Case(name="cluster-missing", files={}, argv=("search", GPT, "-c", "{tmp}/nope.yaml", "-o",
                                                 "{tmp}/plan.json", "-q"),
         exit_code=2, message=("nope.yaml", "not found"), absent=("plan.json",)),
]

# ---- chip files ------------------------------------------------------------------------


def _chips(chip: str | bytes | Special, *words: str, name: str) -> Case:
    return Case(name=f"chip-{name}", files={"chips/mychip/chip.yaml": chip},
                argv=("chips", "--dir", "{tmp}/chips"), exit_code=2,
                message=("chip.yaml", "fix:", *words))


_GOOD_CHIP = ("name: MyChip\nvendor: Acme\ntflops_bf16: 100\ntflops_fp16: 100\n"
              "tflops_fp32: 10\nmemory_gb: 32\nmemory_bw_gbs: 900\nintra_node_link: pcie\n"
              "intra_node_bw_gbs: 32\ncollective_library: ACCL\n")

CHIP_CASES = [
    _chips(FIFO, "FIFO", name="fifo"),
    _chips(symlink("/dev/zero"), "a device", name="dev-zero"),
    _chips(b"\x89PNG\r\n\x1a\n\x00\x00", "binary", name="binary"),
    _chips(_GOOD_CHIP.replace("tflops_fp32: 10", "tflops_fp32: .nan"), "tflops_fp32", "finite",
           name="nan"),
    _chips(_GOOD_CHIP.replace("memory_gb: 32", "memory_gb: -32"), "memory_gb", "greater than 0",
           name="negative"),
    _chips(_GOOD_CHIP + "provenance: {tflops: {source: x}}\n", "provenance.tflops",
           "unknown key", name="provenance-key"),
    _chips(_GOOD_CHIP.replace("pcie", "pcei"), "did you mean 'pcie'", name="link-typo"),
    _chips(_GOOD_CHIP.replace("memory_gb: 32\n", ""), "memory_gb", "missing required field",
           name="missing-field"),
    _chips(_GOOD_CHIP + "aliases: x\n", "aliases", "expected a list", name="aliases-not-list"),
]

# ---- plan files ------------------------------------------------------------------------

#: A valid plan of GPT "tiny" (6 units) on small_2type.yaml, the base every plan case edits.
_PLAN: dict[str, Any] = {
    "schema_version": "1.1",
    "model": {"name": "gpt(size=tiny)", "source_file": GPT, "fingerprint": "",
              "num_layers": 6, "params": 1186560, "seq_len": 128, "dtype": "bf16",
              "tokens_per_sample": 128, "block_list": "blocks", "model_args": {"size": "tiny"}},
    "cluster": {"name": "small-2type", "source_file": SMALL, "num_devices": 8,
                "chips": ["H100", "A100"]},
    "global_batch": 16, "micro_batch_count": 4, "schedule": "1f1b", "zero1": False,
    "memory_reserve_gb": 2.0,
    "stages": [
        {"index": k, "chip": "H100", "layer_start": 3 * k, "layer_end": 3 * k + 3,
         "layer_names": [], "module_names": [], "tp": 1, "recompute": False,
         "replicas": [{"node": "h100", "local_indices": [2 * k], "batch_share": 2},
                      {"node": "h100", "local_indices": [2 * k + 1], "batch_share": 2}]}
        for k in range(2)],
}


def plan_text(edit: Any = None) -> str:
    """The base plan as JSON, after ``edit(plan_dict)``."""
    data = json.loads(json.dumps(_PLAN))
    if edit is not None:
        edit(data)
    return json.dumps(data, indent=1)


def _set(path: str, value: Any) -> Any:
    """An edit setting the dotted ``path`` (``stages.1.layer_end``) to ``value``."""
    def edit(d: Any) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[int(p)] if p.isdigit() else d[p]
        if value is _DELETE:
            del d[int(last) if last.isdigit() else last]
        else:
            d[int(last) if last.isdigit() else last] = value
    return edit


_DELETE = object()


def _plan(command: str, plan: str | bytes | Special, *words: str, name: str,
          extra: tuple[str, ...] = (), files: Mapping[str, str | bytes | Special] | None = None,
          exit_code: int = 2) -> Case:
    outputs = {"evaluate": ("-o", "{tmp}/out.json"), "export": ("--to", "megatron", "-o",
                                                                  "{tmp}/out.sh"),
               "report": ("-o", "{tmp}/out.html", "--no-baselines"),
               "validate": ("{tmp}/measured.json", "-o", "{tmp}/out.json"),
               "run": ("--steps", "2", "--warmup", "1", "-o", "{tmp}/out.json")}[command]
    absent = tuple(a.removeprefix("{tmp}/") for a in outputs if a.startswith("{tmp}/out"))
    return Case(name=f"plan-{command}-{name}", files={"plan.json": plan, **(files or {})},
                argv=(command, "{tmp}/plan.json", *outputs, *extra), exit_code=exit_code,
                message=("plan.json", "fix:", *words), absent=absent)


_MEASURED = json.dumps({"schema": "autosplit.measured/1"})
_NO_LAST_STAGE = plan_text(lambda d: d["stages"].pop())

PLAN_CASES = [
    _plan("evaluate", FIFO, "FIFO", name="fifo"),
    _plan("export", symlink("/dev/zero"), "a device", name="dev-zero"),
    _plan("report", FOLDER, "a folder", name="folder"),
    _plan("validate", sized(65 * 2**20), "65.0 MiB", "at most 64.0 MiB", name="too-big",
          files={"measured.json": _MEASURED}),
    _plan("evaluate", b"\x00\x01\x02binary\xff", "not UTF-8", name="binary"),
    _plan("evaluate", plan_text().replace('"memory_reserve_gb": 2.0', '"memory_reserve_gb": NaN'),
          "memory_reserve_gb", "finite", name="reserve-nan"),
    _plan("report", plan_text().replace('"memory_reserve_gb": 2.0',
                                        '"memory_reserve_gb": Infinity'),
          "memory_reserve_gb", "finite", name="reserve-inf"),
    _plan("evaluate", plan_text(_set("memory_reserve_gb", -1)), "memory_reserve_gb",
          "0 or more", name="reserve-negative"),
    _plan("export", _NO_LAST_STAGE, "units 3..5 are missing", name="no-last-stage"),
    _plan("report", _NO_LAST_STAGE, "units 3..5 are missing", name="no-last-stage"),
    _plan("validate", _NO_LAST_STAGE, "units 3..5 are missing", name="no-last-stage",
          files={"measured.json": _MEASURED}),
    _plan("run", _NO_LAST_STAGE, "units 3..5 are missing", name="no-last-stage"),
    _plan("evaluate", _NO_LAST_STAGE, "units 3..5 are missing", name="no-last-stage"),
    _plan("export", plan_text(_set("stages.1.layer_start", 4)), "stage 1 covers units [4, 6)",
          "units 3..3 are missing", name="gap"),
    _plan("export", plan_text(_set("stages.0.replicas.1.local_indices", [0])), "used twice",
          name="device-twice"),
    _plan("export", plan_text(_set("stages.0.replicas.0.batch_share", 5)),
          "batch shares add up to 7", name="shares"),
    _plan("export", plan_text(_set("micro_batch_count", 5)), "do not divide", name="divide"),
    _plan("export", plan_text(_set("schedule", "zigzag")), "unknown pipeline schedule 'zigzag'",
          name="schedule"),
    _plan("evaluate", plan_text(_set("stages.0.recompte", True)), "unknown key 'recompte'",
          "did you mean 'recompute'", name="unknown-key"),
    _plan("evaluate", plan_text(_set("stages.0.tp", "1")), "stages[0].tp", "whole number",
          name="tp-text"),
    _plan("evaluate", plan_text(_set("global_batch", True)), "global_batch", "whole number",
          name="batch-bool"),
    _plan("evaluate", plan_text(_set("stages", _DELETE)), "stages", "missing required field",
          name="no-stages"),
    _plan("evaluate", plan_text(_set("schema_version", "2.0")), "unsupported plan schema",
          name="version"),
    _plan("evaluate", "[]", "a plan must be a JSON object", name="not-object"),
    _plan("evaluate", '{"schema_version": "1.1",', "not valid JSON", name="syntax"),
    _plan("evaluate", plan_text(_set("stages.0.replicas.0.node", "nowhere")),
          "node 'nowhere' does not exist", name="node"),
    _plan("evaluate", plan_text(_set("stages.0.replicas.0.local_indices", [9])),
          "device h100:9 does not exist", name="device-index"),
    _plan("evaluate", plan_text(_set("cluster.source_file", "{tmp}/gone.yaml")),
          "gone.yaml", "was not found", "--cluster", name="cluster-gone"),
    _plan("evaluate", plan_text(), "the plan was made for cluster 'small-2type'",
          name="other-cluster", extra=("-c", "{repo}/experiments/clusters/two_type_3to1.yaml")),
    _plan("evaluate", plan_text(_set("model.fingerprint", "0123456789abcdef")),
          "the plan was made for another model", name="other-model"),
    _plan("evaluate", plan_text(), "chip directory", "--chips-dir", name="chips-dir-gone",
          extra=("--chips-dir", "{tmp}/nope")),
]

# ---- other readers: suites, baselines, measured runs, profiles -------------------------

_SUITE = ("cases:\n  - name: c\n    model: " + GPT + "\n    model_args: {size: tiny}\n"
          "    cluster: " + SMALL + "\n    global_batch: 16\n    seq_len: 128\n")
_SAILOR = json.dumps({"1": {"1": {str(i): [0.01, 0.02, 0.0] for i in range(6)}}})

OTHER_CASES = [
    Case(name="suite-fifo", files={"suite.yaml": FIFO}, argv=("bench", "{tmp}/suite.yaml"),
         exit_code=2, message=("suite.yaml", "FIFO")),
    Case(name="suite-reserve-nan",
         files={"suite.yaml": _SUITE + "    options: {memory_reserve_gb: .nan}\n"},
         argv=("bench", "{tmp}/suite.yaml", "-o", "{tmp}/out.csv"), exit_code=2,
         message=("suite.yaml", "memory_reserve_gb"), absent=("out.csv",)),
    Case(name="suite-time-limit-inf",
         files={"suite.yaml": _SUITE + "    options: {time_limit_s: .inf}\n"},
         argv=("bench", "{tmp}/suite.yaml"), exit_code=2,
         message=("suite.yaml", "time_limit_s")),
    Case(name="baseline-folder", files={"suite.yaml": _SUITE, "base.csv": FOLDER},
         argv=("bench", "{tmp}/suite.yaml", "--check", "{tmp}/base.csv"), exit_code=2,
         message=("base.csv", "a folder")),
    Case(name="measured-fifo", files={"plan.json": plan_text(), "measured.json": FIFO},
         argv=("validate", "{tmp}/plan.json", "{tmp}/measured.json"), exit_code=2,
         message=("measured.json", "FIFO")),
    Case(name="measured-folder", files={"plan.json": plan_text(), "measured": FOLDER},
         argv=("validate", "{tmp}/plan.json", "{tmp}/measured", "-o", "{tmp}/out.json"),
         exit_code=2, message=("measured", "a folder"), absent=("out.json",)),
    Case(name="profile-csv-nul",
         files={"chips/h100/measured/x.csv": "chip,layer_kind,seq_len,micro_batch,tp,dtype,"
                                             "fwd_s,bwd_s\nH100,\x00,1,1,1,bf16,1,1\n"},
         argv=("search", GPT, "-a", "size=tiny", "-c", SMALL, "--seq-len", "128",
               "--global-batch", "16", "--chips-dir", "{tmp}/chips", "-o", "{tmp}/plan.json",
               "-q"),
         exit_code=2, message=("x.csv", "NUL"), absent=("plan.json",)),
    Case(name="sailor-binary", files={"m/A100-40/profile.json": b"\x89PNG\r\n\x00\x00"},
         argv=("profile-import", "{tmp}/m/A100-40", "--format", "sailor", "--seq-len", "128",
               "-o", "{tmp}/out"),
         exit_code=2, message=("profile.json", "not UTF-8"), absent=("out",)),
    Case(name="sailor-fifo", files={"m/A100-40/profile.json": FIFO},
         argv=("profile-import", "{tmp}/m/A100-40", "--format", "sailor", "--seq-len", "128",
               "-o", "{tmp}/out"),
         exit_code=2, message=("profile.json", "FIFO"), absent=("out",)),
    Case(name="sailor-unknown-gpu", files={"m/TPU-16/profile.json": _SAILOR},
         argv=("profile-import", "{tmp}/m/TPU-16", "--format", "sailor", "--seq-len", "128",
               "-o", "{tmp}/out"),
         exit_code=2, message=("'TPU-16'", "aliases", "--chip"), absent=("out",)),
    Case(name="sailor-llm-info-bad",
         files={"m/A100-40/profile.json": _SAILOR,
                "llm_info.json": json.dumps({"m": {"1": {"0": {"act_mem_floats": -1}}}})},
         argv=("profile-import", "{tmp}/m/A100-40", "--format", "sailor", "--seq-len", "128",
               "-o", "{tmp}/out"),
         exit_code=2, message=("llm_info.json", "m.1.0.act_mem_floats", "0 or more"),
         absent=("out",)),
    Case(name="metis-not-object", files={"m/DeviceType.A100_tp1_bs1.json": "[1, 2]"},
         argv=("profile-import", "{tmp}/m", "--format", "metis", "--seq-len", "128",
               "-o", "{tmp}/out"),
         exit_code=2, message=("DeviceType.A100_tp1_bs1.json", "JSON object"), absent=("out",)),
    Case(name="metis-nan",
         files={"m/DeviceType.A100_tp1_bs1.json":
                '{"model": {"model_name": "g"}, "execution_time": '
                '{"layer_compute_total_ms": [1, NaN, 1]}}'},
         argv=("profile-import", "{tmp}/m", "--format", "metis", "--seq-len", "128",
               "-o", "{tmp}/out"),
         exit_code=2, message=("execution_time.layer_compute_total_ms[1]", "finite"),
         absent=("out",)),
]

CASES: list[Case] = [*CLUSTER_CASES, *CHIP_CASES, *PLAN_CASES, *OTHER_CASES]
