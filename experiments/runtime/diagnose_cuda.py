"""Is one training step of a 1.3B-wide GPT finite on this GPU, per attention backend?

Single process, no pipeline: the model (GPT size=1.3b cut to 2 blocks) is built by the same
stage builder `autosplit run` uses, then one forward/backward at micro-batch 2, sequence 2048,
bf16 autocast (``PRECISION=autocast``, the default here) or bf16 weights (``PRECISION=master``),
for each scaled-dot-product-attention backend. Separates "the model or a kernel
gives NaN on this device" from "the pipeline or the CPU relay corrupts data".

    python3 experiments/runtime/diagnose_cuda.py OUT.json
"""

from __future__ import annotations

import json
import math
import os
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from autosplit.model.loader import load_model_source
from autosplit.runtime.health import FirstNonFinite
from autosplit.runtime.pipeline import default_loss, make_master_optimizer
from autosplit.runtime.stage_builder import build_stage

BACKENDS = {"default": None, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "math": SDPBackend.MATH}


nan = float("nan")


def main() -> int:
    device = torch.device("cuda", 0)
    source = load_model_source("experiments/models/gpt.py", {"size": "1.3b", "layers": "2"})
    stage = build_stage(source, start=0, end=4, num_units=4, seq_len=2048, rows=2,
                        recompute=False, seed=0, device=device)
    master = os.environ.get("PRECISION", "autocast") == "master"
    if master:
        make_master_optimizer(list(stage.parameters()), dtype=torch.bfloat16)
    else:
        stage.autocast_dtype = torch.bfloat16
    stage.boundary_dtype = torch.bfloat16
    watch = FirstNonFinite(stage)
    params_ok = all(bool(torch.isfinite(p).all()) for p in stage.parameters())
    torch.manual_seed(0)
    tokens = torch.randint(0, 256, (2, 2049), device=device)
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    results: dict[str, object] = {"params_finite": params_ok}
    for name, backend in BACKENDS.items():
        stage.zero_grad(set_to_none=True)
        watch.found = None
        watch.arm()
        try:
            ctx = sdpa_kernel(backend) if backend is not None else torch.enable_grad()
            with ctx:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=not master):
                    loss = default_loss(stage(x), y)
                loss.backward()
            torch.cuda.synchronize()
            grads_ok = all(bool(torch.isfinite(p.grad).all()) for p in stage.parameters()
                           if p.grad is not None)
            results[name] = {"loss": float(loss), "grads_finite": grads_ok,
                             "first_nonfinite": watch.found}
        except Exception as exc:  # noqa: BLE001 - a backend may not support this shape
            results[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        watch.disarm()
        print(name, results[name], flush=True)
    finite = [n for n in BACKENDS if isinstance(results[n], dict)
              and results[n].get("grads_finite") and math.isfinite(results[n].get("loss", nan))]
    results["first_finite_backend"] = finite[0] if finite else ""
    with open(sys.argv[1], "w") as fh:
        json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
