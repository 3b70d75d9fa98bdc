"""Bad command lines and model files, generated: every numeric option just outside its
range and at NaN/infinity, every output option pointed at a folder or a file in the way, and
model files that exit, end the process, loop, raise or have no parameters — for the search
and for the profile commands, which run the same model files.

The numeric cases are generated from the ranges the commands declare
(``autosplit.cli.ranges.SEARCH_RANGES``, ``autosplit.cli.run_cmd.RUN_RANGES``): a range
widened or an option that stops being checked makes its cases fail. Each must exit 2 naming
the option and the allowed range, before any work (no output file).
"""

from __future__ import annotations

import json
import math

from autosplit.cli.profile_cmd import IMPORT_RANGES, PROFILE_RANGES
from autosplit.cli.ranges import SEARCH_RANGES, Range
from autosplit.cli.run_cmd import RUN_RANGES

from .cases_files import FOLDER, GPT, SMALL, Case, plan_text

__all__ = ["CLI_CASES", "RANGE_CASES", "OUTPUT_CASES", "MODEL_CASES", "PROFILE_CASES"]

_SEARCH = ("search", GPT, "-a", "size=tiny", "-c", SMALL, "--seq-len", "128",
           "--global-batch", "16", "-q")
_INTEGER = {"--seq-len", "--global-batch", "--max-stages", "--steps", "--warmup", "--seed"}


def _outside(allowed: Range, integer: bool) -> list[tuple[str, str]]:
    """``(label, value)`` pairs just outside ``allowed``, and NaN/∞ for a real option."""
    step = 1 if integer else 0.5
    out = []
    if allowed.low is not None:
        low = allowed.low if allowed.low_open else allowed.low - step
        out.append(("below", str(int(low)) if integer else f"{low:g}"))
    if allowed.high is not None and math.isfinite(allowed.high):
        high = allowed.high + step
        out.append(("above", str(int(high)) if integer else repr(float(high))))
    if not integer:
        out += [("nan", "nan"), ("inf", "inf"), ("minus-inf", "-inf")]
    return out


def _range_case(command: str, argv: tuple[str, ...], option: str, allowed: Range,
                files: dict | None = None, output: str | None = "out.json") -> list[Case]:
    """``command`` with ``option`` just outside ``allowed`` (``output``: the ``-o`` file that
    must not appear; ``None`` for a command without one)."""
    out = ("-o", "{tmp}/" + output) if output else ()
    cases = []
    for label, value in _outside(allowed, option in _INTEGER):
        cases.append(Case(
            name=f"option-{command}-{option.lstrip('-')}-{label}", files=files or {},
            argv=(*argv, option, value, *out), exit_code=2,
            message=(option, "allowed range", allowed.text(), "fix:"),
            absent=(output,) if output else ()))
    return cases


_RUN = ("run", "{tmp}/plan.json")
RANGE_CASES: list[Case] = [
    *(c for opt, r in SEARCH_RANGES.items() for c in _range_case("search", _SEARCH, opt, r)),
    *(c for opt, r in RUN_RANGES.items()
      for c in _range_case("run", _RUN, opt, r, files={"plan.json": plan_text()})),
    Case(name="option-search-tp-larger-than-nodes",
         files={"c.yaml": "network: {nic_bw_gbs: 50}\nnodes: [{chip: H100, devices: 4, "
                          "count: 2}]\n"},
         argv=("search", GPT, "-a", "size=tiny", "-c", "{tmp}/c.yaml", "--seq-len", "128",
               "--global-batch", "16", "--tp", "1,8", "-o", "{tmp}/out.json", "-q"),
         exit_code=2, message=("--tp", "TP degree 8", "1,2,4"), absent=("out.json",)),
    Case(name="option-search-tp-too-large", files={},
         argv=(*_SEARCH, "--tp", "1,4096", "-o", "{tmp}/out.json"), exit_code=2,
         message=("--tp", "[1, 1024]"), absent=("out.json",)),
    Case(name="option-search-micro-batch-zero", files={},
         argv=(*_SEARCH, "--micro-batch-sizes", "0,1", "-o", "{tmp}/out.json"), exit_code=2,
         message=("--micro-batch-sizes", "positive"), absent=("out.json",)),
    Case(name="option-search-micro-batch-text", files={},
         argv=(*_SEARCH, "--micro-batch-sizes", "one", "-o", "{tmp}/out.json"), exit_code=2,
         message=("--micro-batch-sizes", "integers"), absent=("out.json",)),
    *(Case(name=f"option-export-{opt.lstrip('-')}", files={"plan.json": plan_text()},
           argv=("export", "{tmp}/plan.json", "--to", "megatron", opt, "-1", "-o",
                 "{tmp}/out.sh"),
           exit_code=2, message=(opt, "[0, 1000]"), absent=("out.sh",))
      for opt in ("--pre-layers", "--post-layers")),
]

# ---- output paths, checked before the work ---------------------------------------------

_PLAN = {"plan.json": plan_text()}


def _output(name: str, argv: tuple[str, ...], option: str, *words: str,
            files: dict | None = None, absent: tuple[str, ...] = ()) -> Case:
    return Case(name=f"output-{name}", files={**_PLAN, "dir": FOLDER, "afile": "x",
                                              **(files or {})},
                argv=argv, exit_code=2, message=(option, "fix:", *words), absent=absent)


OUTPUT_CASES: list[Case] = [
    _output("search-o-folder", (*_SEARCH, "-o", "{tmp}/dir"), "--output", "is a folder"),
    _output("search-report-folder", (*_SEARCH, "-o", "{tmp}/p.json", "--report", "{tmp}/dir"),
            "--report", "is a folder", absent=("p.json",)),
    _output("search-o-under-file", (*_SEARCH, "-o", "{tmp}/afile/p.json"), "--output",
            "is a file, not a folder"),
    _output("search-report-stdout", (*_SEARCH, "--report", "-"), "--report",
            "standard output"),
    _output("evaluate-o-folder", ("evaluate", "{tmp}/plan.json", "-o", "{tmp}/dir"),
            "--output", "is a folder"),
    _output("export-o-folder", ("export", "{tmp}/plan.json", "--to", "megatron", "-o",
                                "{tmp}/dir"), "--output", "is a folder"),
    _output("export-o-under-file", ("export", "{tmp}/plan.json", "--to", "torchtitan", "-o",
                                    "{tmp}/afile/x/y.toml"), "--output", "not a folder"),
    _output("report-o-folder", ("report", "{tmp}/plan.json", "-o", "{tmp}/dir",
                                "--no-baselines"), "--output", "is a folder"),
    _output("report-svg-dir-file", ("report", "{tmp}/plan.json", "-o", "{tmp}/r.html",
                                    "--svg-dir", "{tmp}/afile", "--no-baselines"),
            "--svg-dir", "not a folder", absent=("r.html",)),
    _output("report-png-dir-file", ("report", "{tmp}/plan.json", "-o", "{tmp}/r.html",
                                    "--png-dir", "{tmp}/afile", "--no-baselines"),
            "--png-dir", "not a folder", absent=("r.html",)),
    _output("report-default-folder", ("report", "{tmp}/plan.json", "--no-baselines"),
            "--output", "is a folder", files={"plan.html": FOLDER}),
    _output("validate-o-folder", ("validate", "{tmp}/plan.json", "{tmp}/m.json", "-o",
                                  "{tmp}/dir"), "--output", "is a folder"),
    _output("run-o-folder", ("run", "{tmp}/plan.json", "-o", "{tmp}/dir"), "--output",
            "is a folder"),
    _output("run-o-stdout", ("run", "{tmp}/plan.json", "-o", "-"), "--output",
            "standard output"),
    _output("bench-o-folder", ("bench", "{tmp}/suite.yaml", "-o", "{tmp}/dir"), "--output",
            "is a folder", files={"suite.yaml": "cases: []\n"}),
    _output("bench-markdown-folder", ("bench", "{tmp}/suite.yaml", "--markdown", "{tmp}/dir"),
            "--markdown", "is a folder", files={"suite.yaml": "cases: []\n"}),
]

# ---- model files: code that exits, ends the process, loops, raises or trains nothing -----

_TINY = ("-a", "size=tiny", "-c", SMALL, "--seq-len", "128", "--global-batch", "16",
         "-o", "{tmp}/out.json", "-q")


def _model_case(name: str, tail: str, *words: str, env: dict | None = None) -> Case:
    """A copy of experiments/models/gpt.py with ``tail`` appended (run at import)."""
    from .cases_files import REPO

    source = (REPO / "experiments/models/gpt.py").read_text(encoding="utf-8")
    return Case(name=f"model-{name}", files={"m.py": source + "\n" + tail + "\n"},
                argv=("search", "{tmp}/m.py", *_TINY), exit_code=2,
                message=("m.py", "fix:", *words), absent=("out.json",),
                env={"AUTOSPLIT_CACHE_DIR": "{tmp}/cache", **(env or {})})


_NO_PARAMS = '''
import torch
from torch import nn


class Double(nn.Module):
    def forward(self, x):
        return x * 2


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Double() for _ in range(4)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def build_model(**kwargs):
    return Model()


def example_batch(batch_size, seq_len, device):
    x = torch.randn(batch_size, seq_len, 8, device=device)
    return (x,), x


def loss_fn(out, target):
    return ((out - target) ** 2).mean()
'''

MODEL_CASES: list[Case] = [
    _model_case("sys-exit-0", "import sys; sys.exit(0)", "sys.exit(0)"),
    _model_case("sys-exit-3", "raise SystemExit(3)", "sys.exit(3)"),
    _model_case("os-exit", "import os; os._exit(0)", "exit code 0"),
    _model_case("killed", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
                "SIGKILL"),
    _model_case("endless-loop", "while True:\n    pass", "did not finish within 3 s",
                "AUTOSPLIT_INGEST_TIMEOUT_S", env={"AUTOSPLIT_INGEST_TIMEOUT_S": "3"}),
    _model_case("raises", "raise RuntimeError('no GPU here')", "RuntimeError: no GPU here",
                "line"),
    _model_case("prints-then-exits", "print('loading weights...'); import os; os._exit(1)",
                "loading weights...", "exit code 1"),
    Case(name="model-bad-timeout-env", files={"m.py": "x = 1\n"},
         argv=("search", "{tmp}/m.py", *_TINY), exit_code=2,
         message=("AUTOSPLIT_INGEST_TIMEOUT_S", "positive number", "fix:"),
         absent=("out.json",),
         env={"AUTOSPLIT_CACHE_DIR": "{tmp}/cache", "AUTOSPLIT_INGEST_TIMEOUT_S": "nan"}),
    Case(name="model-no-parameters", files={"m.py": _NO_PARAMS},
         argv=("search", "{tmp}/m.py", *_TINY), exit_code=2,
         message=("m.py", "without parameters", "fix:"), absent=("out.json",),
         env={"AUTOSPLIT_CACHE_DIR": "{tmp}/cache"}),
]


# ---- the profile commands: ranges, dtypes, outputs, chip folders and model files ---------

_SAILOR = {"m/A100-40/profile.json": json.dumps(
    {"1": {"1": {str(i): [0.01, 0.02, 0.0] for i in range(6)}}})}
_METIS = {f"mm/DeviceType.{gpu}_tp1_bs1.json": json.dumps(
    {"model": {"model_name": "G", "num_layers": 5},
     "execution_time": {"layer_compute_total_ms": [0.3, 30.0, 30.0, 30.0, 0.4]}})
    for gpu in ("A100", "V100")}
_PROFILE = ("profile", GPT, "-a", "size=tiny", "--micro-batch", "1", "--repeats", "1",
            "--warmup", "0")
_IMPORT = ("profile-import", "{tmp}/m/A100-40", "--format", "sailor")
_LOAD = ("profile-load", GPT, "-a", "size=tiny", "--device", "cpu", "--limit", "1")
_DTYPE = ("--dtype", "fp8")
_DTYPE_WORDS = ("--dtype", "'fp8' is not a valid choice", "bf16, fp16, fp32", "fix:")


def _profile_model_case(name: str, argv: tuple[str, ...], absent: tuple[str, ...],
                        files: dict | None = None) -> Case:
    """A model file that calls ``sys.exit(0)`` at import, given to a profile command or the
    bench: it must be reported (exit 2), as the search reports it, not end the command with
    exit 0."""
    from .cases_files import REPO

    source = (REPO / "experiments/models/gpt.py").read_text(encoding="utf-8")
    return Case(name=f"model-{name}-sys-exit",
                files={"m.py": source + "\nimport sys; sys.exit(0)\n", **_SAILOR,
                       **(files or {})},
                argv=argv, exit_code=2, message=("m.py", "sys.exit(0)", "fix:"), absent=absent,
                env={"AUTOSPLIT_CACHE_DIR": "{tmp}/cache"})


PROFILE_CASES: list[Case] = [
    *(c for opt, r in PROFILE_RANGES.items()
      for c in _range_case("profile", _PROFILE, opt, r, output="out.csv")),
    *(c for opt, r in PROFILE_RANGES.items()
      for c in _range_case("profile-load", _LOAD, opt, r, output=None)),
    *(c for opt, r in IMPORT_RANGES.items()
      for c in _range_case("profile-import", _IMPORT, opt, r, files=_SAILOR, output="out")),
    Case(name="option-search-dtype", files={}, argv=(*_SEARCH, *_DTYPE, "-o", "{tmp}/o.json"),
         exit_code=2, message=_DTYPE_WORDS, absent=("o.json",)),
    Case(name="option-profile-dtype", files={}, argv=(*_PROFILE, *_DTYPE, "-o", "{tmp}/o.csv"),
         exit_code=2, message=_DTYPE_WORDS, absent=("o.csv",)),
    Case(name="option-profile-import-dtype", files=_SAILOR,
         argv=(*_IMPORT, "--seq-len", "128", *_DTYPE, "-o", "{tmp}/out"), exit_code=2,
         message=_DTYPE_WORDS, absent=("out",)),
    Case(name="option-profile-load-dtype", files={}, argv=(*_LOAD, *_DTYPE), exit_code=2,
         message=_DTYPE_WORDS),
    _output("profile-o-folder", (*_PROFILE, "-o", "{tmp}/dir"), "--output", "is a folder"),
    _output("profile-o-stdout", (*_PROFILE, "-o", "-"), "--output", "standard output"),
    _output("profile-chip-o-folder", ("profile-chip", "-o", "{tmp}/dir"), "--output",
            "is a folder"),
    _output("profile-chip-o-under-file", ("profile-chip", "-o", "{tmp}/afile/b.csv"),
            "--output", "is a file, not a folder"),
    _output("profile-chip-sweep-folder", ("profile-chip", "-o", "{tmp}/b.csv"), "--output",
            "b-sweep.csv is a folder", files={"b-sweep.csv": FOLDER}, absent=("b.csv",)),
    _output("profile-chip-chip-file-folder", ("profile-chip", "-o", "{tmp}/b.csv",
                                              "--chip-file", "{tmp}/dir"),
            "--chip-file", "is a folder", absent=("b.csv",)),
    _output("profile-import-o-file", (*_IMPORT, "--seq-len", "128", "-o", "{tmp}/afile"),
            "--output", "is not a folder", files=_SAILOR),
    _output("profile-import-o-under-file", (*_IMPORT, "--seq-len", "128", "-o",
                                            "{tmp}/afile/out"),
            "--output", "is a file, not a folder", files=_SAILOR),
    # Two GPUs, two store files: the second one's path is blocked, so nothing may be written.
    Case(name="output-profile-import-chip-folder-is-a-file",
         files={**_METIS, "out/v100": "x"},
         argv=("profile-import", "{tmp}/mm", "--format", "metis", "--seq-len", "128", "-o",
               "{tmp}/out"),
         exit_code=2, message=("out/v100", "--output", "is a file", "fix:"),
         absent=("out/a100",)),
    Case(name="output-profile-import-store-file-is-a-folder",
         files={**_METIS, "out/v100/measured/imported-metis-G-s128-bf16.csv": FOLDER},
         argv=("profile-import", "{tmp}/mm", "--format", "metis", "--seq-len", "128", "-o",
               "{tmp}/out"),
         exit_code=2, message=("imported-metis-G-s128-bf16.csv", "is a folder", "fix:"),
         absent=("out/a100",)),
    Case(name="option-profile-import-chips-dir-file", files={**_SAILOR, "afile": "x"},
         argv=(*_IMPORT, "--seq-len", "128", "--chips-dir", "{tmp}/afile", "-o", "{tmp}/out"),
         exit_code=2, message=("afile", "--chips-dir", "not a folder", "fix:"),
         absent=("out",)),
    _profile_model_case("profile", ("profile", "{tmp}/m.py", "-a", "size=tiny", "--seq-len",
                                    "16", "--micro-batch", "1", "-o", "{tmp}/out.csv"),
                        absent=("out.csv",)),
    _profile_model_case("profile-import", (*_IMPORT, "--seq-len", "16", "--model",
                                           "{tmp}/m.py", "-a", "size=tiny", "-o", "{tmp}/out"),
                        absent=("out",)),
    _profile_model_case("profile-load", ("profile-load", "{tmp}/m.py", "-a", "size=tiny",
                                         "--device", "cpu", "--limit", "1"), absent=()),
    _profile_model_case("bench", ("bench", "{tmp}/suite.yaml", "-o", "{tmp}/out.csv"),
                        absent=("out.csv",), files={"suite.yaml": (
                            "cases:\n  - name: c\n    model: {tmp}/m.py\n    model_args: "
                            "{size: tiny}\n    cluster: " + SMALL + "\n    global_batch: 16\n"
                            "    seq_len: 128\n")}),
]

CLI_CASES: list[Case] = [*RANGE_CASES, *OUTPUT_CASES, *MODEL_CASES, *PROFILE_CASES]
