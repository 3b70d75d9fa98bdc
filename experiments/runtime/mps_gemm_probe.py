"""Do bf16 GEMMs write correct results on this CUDA MPS client? One line of JSON per run.

The pipelined runs on one H200 split by MPS SM limits give a non-finite loss that first shows
in a plain ``Linear`` with finite inputs, and only when the clients' SMs are limited
(README.md, "Non-finite loss: bisected"). This probe runs the GEMMs of GPT-2.7B's layers
(forward, input gradient and weight gradient shapes, with and without the bias epilogue) into
output buffers filled with NaN beforehand, and compares each result with an fp32 product of the
same operands. A NaN left in the output means the kernel did not write it; a large error means
it wrote something wrong. Run it in each MPS client at once, under each BLAS setting to compare
(the settings are environment variables that PyTorch reads once per process, so one process per
setting):

    CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=20 python3 experiments/runtime/mps_gemm_probe.py default

A second argument lists the token counts per micro-batch to probe (default 2048, i.e. one
sample of 2048 tokens; ``2048,4096`` adds the shapes of two-sample micro-batches). The shapes
are GPT-2.7B's unless ``--model FILE [-a KEY=VALUE ...]`` names a model file: then they are
those of every ``nn.Linear`` of that model (built on the meta device), as the runtime's own
GEMM self-check takes them (``autosplit.runtime.gemm_check.stage_gemm_shapes``):

    CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=33 python3 experiments/runtime/mps_gemm_probe.py \
        llama 2048 --model experiments/models/llama.py -a size=7b -a layers=2
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

_HIDDEN, _FFN, _VOCAB = 2560, 10240, 50257


def _shapes(tokens: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of y = x @ w: qkv, attention out, mlp in, mlp out, head; then their input-
    and weight-gradient products."""
    forward = [(tokens, _HIDDEN, 3 * _HIDDEN), (tokens, _HIDDEN, _HIDDEN),
               (tokens, _HIDDEN, _FFN), (tokens, _FFN, _HIDDEN), (tokens, _HIDDEN, _VOCAB)]
    return forward + [(m, n, k) for m, k, n in forward] + [(k, m, n) for m, k, n in forward]


def _check(out: torch.Tensor, ref: torch.Tensor) -> tuple[bool, bool]:
    """(unwritten or non-finite, wrong): wrong is a max error over 5% of the largest value."""
    nonfinite = not bool(torch.isfinite(out).all())
    err = float((out.float() - ref).abs().max()) if not nonfinite else float("inf")
    return nonfinite, err > 0.05 * float(ref.abs().max())


def _model_shapes(path: str, model_args: list[str], tokens: int) -> list[tuple[int, int, int]]:
    from autosplit.cli._common import parse_model_args
    from autosplit.model.loader import build_on_meta, load_model_source
    from autosplit.runtime.gemm_check import stage_gemm_shapes

    model = build_on_meta(load_model_source(path, parse_model_args(model_args)))
    return stage_gemm_shapes(model, tokens=tokens)


def main(label: str, tokens: str = "2048", repeats: int = 6, *, model: str = "",
         model_args: list[str] | None = None) -> None:
    torch.manual_seed(0)
    device = torch.device("cuda")
    result = {"label": label, "tokens": tokens,
              "mps_percentage": os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"),
              "sm_count": torch.cuda.get_device_properties(device).multi_processor_count,
              "calls": 0, "nonfinite": 0, "wrong": 0, "errors": 0, "first_bad": None}
    start = time.perf_counter()
    shapes = [s for t in tokens.split(",") for s in (
        _model_shapes(model, model_args or [], int(t)) if model else _shapes(int(t)))]
    result["model"] = model or "gpt-2.7b"
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        b = torch.randn(k, n, device=device, dtype=torch.bfloat16) / k ** 0.5
        bias = torch.randn(n, device=device, dtype=torch.bfloat16)
        ref = a.float() @ b.float()
        out = torch.empty(m, n, device=device, dtype=torch.bfloat16)
        for rep in range(repeats):
            for op in ("mm", "addmm", "linear"):
                out.fill_(float("nan"))
                try:
                    if op == "mm":
                        torch.mm(a, b, out=out)
                        expect = ref
                    elif op == "addmm":
                        torch.addmm(bias, a, b, out=out)
                        expect = ref + bias.float()
                    else:  # what nn.Linear calls: weight stored (n, k)
                        out = torch.nn.functional.linear(a, b.t().contiguous(), bias)
                        expect = ref + bias.float()
                    torch.cuda.synchronize()
                except RuntimeError as exc:
                    result["errors"] += 1
                    result["first_bad"] = result["first_bad"] or f"{op} {m}x{k}x{n}: {exc}"[:300]
                    continue
                result["calls"] += 1
                nonfinite, wrong = _check(out, expect)
                result["nonfinite"] += int(nonfinite)
                result["wrong"] += int(wrong and not nonfinite)
                if (nonfinite or wrong) and result["first_bad"] is None:
                    result["first_bad"] = (f"{op} {m}x{k}x{n} repeat {rep}: "
                                           f"{'non-finite' if nonfinite else 'wrong'}")
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("label")
    parser.add_argument("tokens", nargs="?", default="2048")
    parser.add_argument("--model", default="")
    parser.add_argument("-a", "--model-arg", action="append", default=[])
    ns = parser.parse_args()
    main(ns.label, ns.tokens, model=ns.model, model_args=ns.model_arg)
