"""Before training: does this device compute the stage's matrix products correctly?

A device can return wrong products without reporting an error. On an H200 behind CUDA MPS
with an SM limit, cuBLAS left parts of bf16 GEMM outputs unwritten at many percentages
(experiments/runtime/README.md, "The MPS fault"); training then ran at a plausible speed with
gradients a million times too large, and only the loss curve gave it away. So each CUDA rank
runs the products its stage will run — every ``Linear`` weight shape at the stage's
micro-batch, forward, input gradient and weight gradient — once, into outputs filled with NaN
beforehand, and compares a few rows of each with a float64 product on the host. A NaN left
means the kernel did not write it; a large difference, that it wrote something wrong. It takes
a fraction of a second and says which product failed, so a run on a faulty device is flagged
in its notes before its numbers are trusted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from autosplit.runtime.tensor_parallel import local

__all__ = ["GemmCheck", "check_gemms", "stage_gemm_shapes"]

#: Rows of each product compared on the host (the whole output is checked for NaN).
_ROWS = 4
#: Largest acceptable difference, relative to the largest value of the reference rows: far
#: above bf16 rounding of a k-term sum, far below a missing or garbage tile.
_TOLERANCE = 0.05


@dataclass(frozen=True)
class GemmCheck:
    """What the check found: how many products ran and which came back wrong."""

    products: int
    failures: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.failures

    def note(self, device: torch.device) -> str:
        return (f"GEMM self-check: {len(self.failures)} of {self.products} matrix products on "
                f"{device} came back wrong or incomplete (first: {self.failures[0]}); the "
                f"device's results are not valid training (a known cause: CUDA MPS SM limits "
                f"on some drivers, see docs/runtime.md)")


def stage_gemm_shapes(module: nn.Module, *, tokens: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every distinct product of the ``Linear`` layers of ``module`` for
    ``tokens`` rows: forward (tokens × in → out), input gradient (tokens × out → in) and
    weight gradient (in × tokens → out)."""
    shapes: list[tuple[int, int, int]] = []
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            n, k = local(layer.weight).shape  # this rank's shard under tensor parallelism
            for shape in ((tokens, k, n), (tokens, n, k), (k, tokens, n)):
                if shape not in shapes:
                    shapes.append(shape)
    return shapes


def check_gemms(shapes: Iterable[tuple[int, int, int]], *, device: torch.device,
                dtype: torch.dtype, seed: int = 0) -> GemmCheck:
    """Run each (m, k, n) product once on ``device`` in ``dtype`` and check it."""
    gen = torch.Generator(device=device).manual_seed(seed)
    failures: list[str] = []
    count = 0
    for m, k, n in shapes:
        a = torch.randn(m, k, generator=gen, device=device).to(dtype)
        b = (torch.randn(k, n, generator=gen, device=device) / k ** 0.5).to(dtype)
        out = torch.full((m, n), float("nan"), device=device, dtype=dtype)
        torch.mm(a, b, out=out)
        count += 1
        if not bool(torch.isfinite(out).all()):
            failures.append(f"{m}x{k}x{n} {str(dtype).removeprefix('torch.')} not fully written")
            continue
        rows = torch.linspace(0, m - 1, min(_ROWS, m)).long()
        ref = a[rows].cpu().double() @ b.cpu().double()
        got = out[rows].cpu().double()
        scale = float(ref.abs().max()) or 1.0
        if float((got - ref).abs().max()) > _TOLERANCE * scale:
            failures.append(f"{m}x{k}x{n} {str(dtype).removeprefix('torch.')} wrong values")
    return GemmCheck(products=count, failures=tuple(failures))
