"""Point-to-point and all-reduce timings between two processes, and their α-β fit.

Why: a link is latency-bound for small messages and bandwidth-bound for large ones; one
bandwidth figure prices a 64 KiB activation of a small stage as if it streamed at full rate.
The cost model charges ``α + n/β`` per message (docs/cost-model.md §2); this benchmark
measures both over the collective library the devices use — gloo between processes on the
host (also what two CUDA MPS clients of one GPU use), NCCL between two GPUs where there are
two — and fits them:

- ``p2p``: a ping-pong of ``n`` bytes (rank 0 sends, rank 1 returns it); one way is half the
  round trip;
- ``all_reduce``: a sum over both ranks; a ring of two moves ``n`` bytes each way in two
  steps, ``n/β + 2α``, the formula of ``autosplit.cost.comm`` at ``d = 2``.

Each size is timed ``repeats`` times after ``warmup`` runs; the median is kept.
"""

from __future__ import annotations

import os
import socket
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["LINK_SIZES", "LinkFit", "LinkRow", "fit_alpha_beta", "run_link_bench"]

#: Message sizes (bytes): 4 KiB to 64 MiB, from latency-bound to bandwidth-bound.
LINK_SIZES: tuple[int, ...] = tuple(4096 * 4**i for i in range(8))


@dataclass(frozen=True)
class LinkRow:
    """One timed message size. ``seconds`` is one way for ``p2p``, the whole collective for
    ``all_reduce``."""

    kind: str  # "p2p" | "all_reduce"
    backend: str
    nbytes: int
    seconds: float


@dataclass(frozen=True)
class LinkFit:
    """``t = alpha + n / beta`` (per message; the all-reduce's per-step form at d = 2)."""

    kind: str
    alpha_s: float
    beta_gbs: float
    #: Median and worst relative error of the fit on the rows.
    median_error: float
    worst_error: float


def fit_alpha_beta(rows: Sequence[LinkRow], kind: str) -> LinkFit:
    """Least squares in relative error of ``α + n/β`` (``2α + n/β`` for an all-reduce of two
    ranks), so that small and large messages weigh alike."""
    chosen = [r for r in rows if r.kind == kind]
    if len(chosen) < 2:
        raise ValueError(f"need at least two {kind} sizes to fit latency and bandwidth")
    t = np.array([r.seconds for r in chosen])
    n = np.array([float(r.nbytes) for r in chosen])
    steps = 2.0 if kind == "all_reduce" else 1.0
    design = np.stack([steps / t, n / t], axis=1)
    (alpha, per_byte), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    alpha = max(0.0, float(alpha))
    per_byte = max(float(per_byte), 1e-15)
    model = steps * alpha + n * per_byte
    rel = np.abs(model - t) / t
    return LinkFit(kind=kind, alpha_s=alpha, beta_gbs=1.0 / per_byte / 1e9,
                   median_error=float(np.median(rel)), worst_error=float(np.max(rel)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, backend: str, port: int, sizes: Sequence[int], repeats: int,
            warmup: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=2)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)

    def sync() -> None:
        if backend == "nccl":
            torch.cuda.synchronize(device)

    lines = []
    for nbytes in sizes:
        buf = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
        for kind in ("p2p", "all_reduce"):
            samples = []
            for i in range(warmup + repeats):
                dist.barrier()
                sync()
                start = time.perf_counter()
                if kind == "p2p":
                    if rank == 0:
                        dist.send(buf, 1)
                        dist.recv(buf, 1)
                    else:
                        dist.recv(buf, 0)
                        dist.send(buf, 0)
                else:
                    dist.all_reduce(buf)
                sync()
                if i >= warmup:
                    samples.append(time.perf_counter() - start)
            med = statistics.median(samples)
            lines.append(f"{kind},{backend},{nbytes},{med / 2 if kind == 'p2p' else med!r}")
    if rank == 0:
        Path(out).write_text("\n".join(lines) + "\n")
    dist.destroy_process_group()


def run_link_bench(*, backend: str, sizes: Sequence[int] = LINK_SIZES, repeats: int = 10,
                   warmup: int = 3) -> list[LinkRow]:
    """Time p2p and all-reduce between two fresh processes over ``backend``."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "links.csv")
        mp.start_processes(_worker, args=(backend, _free_port(), tuple(sizes), repeats, warmup,
                                          out), nprocs=2, join=True, start_method="spawn")
        rows = []
        for line in Path(out).read_text().splitlines():
            kind, be, nbytes, seconds = line.split(",")
            rows.append(LinkRow(kind=kind, backend=be, nbytes=int(nbytes),
                                seconds=float(seconds)))
    return rows
