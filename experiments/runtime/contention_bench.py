"""How much MPS clients of one GPU slow each other down: one training step, alone and loaded.

The mix runs (experiments/runtime/README.md) found the stages of the slowest chips training
up to 30 % slower than profiled when the pipeline was balanced (every neighbour busy most of
the time) and 2-6 % slower when it was not (the uniform split, whose neighbours wait). MPS
keeps each client's SMs apart but not the memory bandwidth, L2, copy engines or the power
budget. This script measures that coupling directly: for each target share it times the
model's training step (forward, loss, backward of one micro-batch, CUDA events, median of
``--repeats``) with no other client running, then with every other share running the same
model's step in a loop (``experiments/profiling/gpu_load.py --model``):

    python3 experiments/runtime/contention_bench.py --shares 90 20 10 \\
        --model experiments/models/gpt.py --model-arg size=2.7b --model-arg layers=8 \\
        -o contention.json

It needs the MPS daemon running (``contention_h200.sh`` starts it): without it the clients
time-slice the whole GPU, every share runs alike and one neighbour doubles the step.

Prints one line per (target, load) and writes them as JSON: milliseconds per step and the
ratio to the same share alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
LOAD_SCRIPT = HERE.parent / "profiling" / "gpu_load.py"
sys.path.insert(0, str(LOAD_SCRIPT.parent))
from gpu_load import DTYPES, model_step  # noqa: E402


def _time(ns: argparse.Namespace) -> None:
    """The timer process: median milliseconds of the model's step, printed as JSON."""
    step = model_step(ns.model, ns.model_arg, seq_len=ns.seq_len, micro_batch=1,
                       dtype=DTYPES[ns.dtype])
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    samples = []
    for _ in range(ns.repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        b.synchronize()
        samples.append(a.elapsed_time(b))
    samples.sort()
    print(json.dumps({"ms": samples[len(samples) // 2],
                      "spread": (samples[-1] - samples[0]) / samples[len(samples) // 2]}))


def _model_args(ns: argparse.Namespace) -> list[str]:
    out = ["--model", str(ns.model), "--seq-len", str(ns.seq_len), "--dtype", ns.dtype]
    for w in ns.model_arg:
        out += ["--model-arg", w]
    return out


def _measure(ns: argparse.Namespace, target: int, load: list[int], tmp: Path) -> dict:
    stop = tmp / f"stop-{target}-{'-'.join(map(str, load))}"
    loaders = []
    for share in load:
        ready = tmp / f"ready-{target}-{share}"
        env = dict(os.environ, CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=str(share))
        loaders.append((ready, subprocess.Popen(
            [sys.executable, str(LOAD_SCRIPT), str(stop), "--ready", str(ready),
             *_model_args(ns)], env=env)))
    try:
        deadline = time.time() + 120
        while not all(r.exists() for r, _ in loaders) and time.time() < deadline:
            time.sleep(0.2)
        env = dict(os.environ, CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=str(target))
        done = subprocess.run([sys.executable, __file__, "--time", *_model_args(ns),
                               "--repeats", str(ns.repeats)], env=env, capture_output=True,
                              text=True, timeout=300)
        if done.returncode != 0:
            raise SystemExit(f"error: the timer at {target} % failed:\n{done.stderr[-2000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        stop.touch()
        for _, p in loaders:
            p.wait(timeout=60)
    return {"target": target, "load": load, **figures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", type=int, nargs="+", default=[90, 20, 10])
    parser.add_argument("--model", type=Path, default=HERE.parent / "models" / "gpt.py")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-single", action="store_true",
                        help="only alone and next to every other share (not one at a time)")
    parser.add_argument("--time", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-o", "--output", type=Path)
    ns = parser.parse_args(argv)
    if ns.time:
        _time(ns)
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in ns.shares:
            others = [s for s in ns.shares if s != target]
            alone = None
            singles = [] if ns.no_single else [[o] for o in others]
            for load in ([], *singles, others) if len(others) > 1 else ([], others):
                row = _measure(ns, target, list(load), Path(tmp))
                alone = alone or row["ms"]
                row["ratio"] = row["ms"] / alone
                rows.append(row)
                print(f"target {target:3d} %, load {row['load'] or 'none'}: "
                      f"{row['ms']:.2f} ms/step (x{row['ratio']:.3f}, spread {row['spread']:.1%})",
                      flush=True)
    if ns.output is not None:
        ns.output.write_text(json.dumps({"shares": ns.shares, "model": str(ns.model),
                                         "model_args": ns.model_arg, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
