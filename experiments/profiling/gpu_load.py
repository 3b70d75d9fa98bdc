"""Keep one MPS client's share of the GPU busy until a file appears.

Used by run_h200.sh and run_h200_mix.sh so that a client that has finished profiling keeps
loading the GPU while the others are still profiling: every "chip" is then measured while
sharing the card, as it will be used.

Two loads. The default is bf16 matrix products (8192²): compute-bound, little memory traffic.
``--model FILE`` runs the model's own training step instead (forward, loss, backward of one
micro-batch, the weights in the compute dtype): the kernels a pipeline neighbour really runs,
memory-bound ones included (norms, attention, elementwise), which contend for the HBM and L2
that MPS clients share while their SMs are apart (experiments/runtime/README.md: stages of
the slowest chips, profiled next to matrix products, trained 6–16 % slower than profiled).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def gemm_step() -> Callable[[], None]:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

    def step() -> None:
        for _ in range(8):
            torch.mm(a, b)

    return step


def model_step(path: Path, words: list[str], *, seq_len: int, micro_batch: int,
                dtype: torch.dtype) -> Callable[[], None]:
    """One training micro-batch of the model in ``path`` (``build_model(**words)``)."""
    spec = importlib.util.spec_from_file_location("load_model", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kwargs = dict(w.split("=", 1) for w in words)
    model = module.build_model(**kwargs).to(device="cuda", dtype=dtype)
    inputs, targets = module.example_batch(micro_batch, seq_len, device="cuda")

    def step() -> None:
        logits = model(*inputs)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(),
                                                 targets.flatten())
        loss.backward()
        for p in model.parameters():
            p.grad = None

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stop_file")
    parser.add_argument("--limit-s", type=float, default=300.0)
    parser.add_argument("--model", type=Path, help="model file with build_model/example_batch")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--ready", type=Path, help="file to create once the load runs")
    args = parser.parse_args(argv)
    step = (model_step(args.model, args.model_arg, seq_len=args.seq_len,
                        micro_batch=args.micro_batch, dtype=DTYPES[args.dtype])
            if args.model is not None else gemm_step())
    start = time.time()
    while not os.path.exists(args.stop_file) and time.time() - start < args.limit_s:
        step()
        torch.cuda.synchronize()
        if args.ready is not None and not args.ready.exists():
            args.ready.touch()


if __name__ == "__main__":
    main(sys.argv[1:])
