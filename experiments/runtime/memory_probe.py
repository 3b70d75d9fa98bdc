"""What the CUDA runtime keeps allocated beside a stage's tensors, measured in a fresh process.

Every rank of the 2026-12-03 runs peaked 0.09–0.19 GB above the predicted weights, gradients,
optimizer states and activations (experiments/runtime/README.md), however few layers it held.
A candidate is library workspace that PyTorch's caching allocator hands out and keeps: cuBLAS
takes one workspace per (handle, stream), and handles are per thread, so the forward (the
main thread) and the backward (autograd's device thread) each hold one. This script measures
``torch.cuda.memory_allocated()`` minus the bytes of the live tensors after each of:

  matmul_forward    a bf16 matrix product on the main thread;
  matmul_backward   its backward through autograd;
  sdpa              a causal flash-attention forward and backward;
  peak              ``max_memory_allocated`` minus the live tensors over the whole probe.

  python3 experiments/runtime/memory_probe.py [--hidden 2560] [--seq 2048] [--heads 20]

prints one JSON object (bytes).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F


def _held(tensors: list[torch.Tensor]) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t is None:
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2560)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=20)
    args = parser.parse_args()
    dev = torch.device("cuda")
    torch.cuda.init()
    out: dict[str, int | str] = {"device": torch.cuda.get_device_name(dev),
                                 "torch": torch.__version__,
                                 "start": torch.cuda.memory_allocated(dev)}
    x = torch.randn(args.seq, args.hidden, device=dev, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(args.hidden, args.hidden, device=dev, dtype=torch.bfloat16,
                    requires_grad=True)
    y = x @ w
    torch.cuda.synchronize()
    out["matmul_forward"] = torch.cuda.memory_allocated(dev) - _held([x, w, y])
    y.backward(torch.ones_like(y))
    del y
    torch.cuda.synchronize()
    out["matmul_backward"] = torch.cuda.memory_allocated(dev) - _held([x, w, x.grad, w.grad])
    head = args.hidden // args.heads
    q, k, v = (torch.randn(1, args.heads, args.seq, head, device=dev, dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    a.backward(torch.ones_like(a))
    del a
    torch.cuda.synchronize()
    live = [x, w, x.grad, w.grad, q, k, v, q.grad, k.grad, v.grad]
    out["sdpa"] = torch.cuda.memory_allocated(dev) - _held(live)
    out["peak"] = torch.cuda.max_memory_allocated(dev) - _held(live)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
