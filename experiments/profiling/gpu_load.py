"""Keep one MPS client's share of the GPU busy with bf16 matrix products until a file appears.

Used by run_h200.sh so that the faster MPS client keeps loading the GPU while the slower one
is still profiling: both "chips" are then measured while sharing the card, as they will be used.
"""

from __future__ import annotations

import os
import sys
import time

import torch


def main(stop_file: str, limit_s: float = 300.0) -> None:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    start = time.time()
    while not os.path.exists(stop_file) and time.time() - start < limit_s:
        for _ in range(8):
            torch.mm(a, b)
        torch.cuda.synchronize()


if __name__ == "__main__":
    main(sys.argv[1])
