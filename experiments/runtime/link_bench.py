"""Time point-to-point and all-reduce between two processes and fit latency + bytes/bandwidth.

The two-GPU experiment (run_h200x2.sh) needs the link between its GPUs in the cluster file.
Where ``autosplit profile-chip --links`` exists it measures this; this script is the same
measurement for a checkout without that option, and its output is what the script reads
either way: one JSON object with the fitted ``p2p`` and ``all_reduce`` (alpha in
microseconds, beta in GB/s per direction) and the timed rows.

    python3 experiments/runtime/link_bench.py --backend nccl -o links.json   # GPUs 0 and 1
    python3 experiments/runtime/link_bench.py --backend gloo -o links.json   # the CPU
    python3 experiments/runtime/link_bench.py --from-csv chip-bench-links.csv -o links.json

``--from-csv`` fits the rows ``profile-chip --links`` wrote (``kind,backend,nbytes,seconds``)
instead of timing anything.

Point-to-point is a ping-pong (rank 0 sends, rank 1 sends back; half the round trip); the
all-reduce is a sum over both ranks: a ring all-reduce moves 2 (n - 1) / n of the buffer over
each link, which for n = 2 is the buffer itself, so its beta is the bus bandwidth. The fit is
least squares of t = alpha + bytes / beta.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["Fit", "Row", "fit_alpha_beta", "free_port", "main", "median_seconds",
           "read_csv"]

SIZES = tuple(4096 * 4 ** i for i in range(8))  # 4 KiB to 64 MiB


@dataclass(frozen=True)
class Row:
    """One timed size: the median seconds of one operation."""

    kind: str
    nbytes: int
    seconds: float


@dataclass(frozen=True)
class Fit:
    """t = alpha + bytes / beta, and how well it fits the rows."""

    kind: str
    alpha_us: float
    beta_gbs: float
    worst_error_pct: float


def fit_alpha_beta(rows: list[Row], kind: str) -> Fit:
    """Least squares over the rows of ``kind``; ValueError when they do not define a link."""
    pts = [(r.nbytes, r.seconds) for r in rows if r.kind == kind]
    if len(pts) < 2:
        raise ValueError(f"need two or more {kind} rows to fit, got {len(pts)}")
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    alpha = max(my - slope * mx, 0.0)
    if slope <= 0:
        raise ValueError(f"{kind}: time does not grow with the bytes; the link was not timed")
    worst = max(abs(alpha + x * slope - y) / y for x, y in pts)
    return Fit(kind, alpha * 1e6, 1e-9 / slope, 100.0 * worst)


def median_seconds(fn, device: torch.device, repeats: int) -> float:
    """The median wall time of ``fn`` over ``repeats`` calls, the device synchronised
    before and after each."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def _worker(rank: int, backend: str, port: int, repeats: int, max_bytes: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=2)
    rows = []
    for nbytes in (n for n in SIZES if n <= max_bytes):
        buf = torch.ones(nbytes // 4, dtype=torch.float32, device=device)

        def ping_pong(buf: torch.Tensor = buf) -> None:
            if rank == 0:
                dist.send(buf, 1)
                dist.recv(buf, 1)
            else:
                dist.recv(buf, 0)
                dist.send(buf, 0)

        def all_reduce(buf: torch.Tensor = buf) -> None:
            dist.all_reduce(buf)

        for fn in (ping_pong, all_reduce):  # warm-up: connections, NCCL channels
            fn()
        rows.append(Row("p2p", nbytes, median_seconds(ping_pong, device, repeats) / 2))
        rows.append(Row("all_reduce", nbytes, median_seconds(all_reduce, device, repeats)))
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        queue.put([asdict(r) for r in rows])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("nccl", "gloo"), default="")
    parser.add_argument("--from-csv", default="")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--max-mib", type=int, default=64, help="largest message, MiB")
    parser.add_argument("-o", "--output", required=True)
    ns = parser.parse_args(argv)
    if bool(ns.backend) == bool(ns.from_csv):
        print("error: give --backend nccl|gloo (time the link) or --from-csv FILE (fit the "
              "rows of `profile-chip --links`)", file=sys.stderr)
        return 2
    if ns.from_csv:
        try:
            backend, rows = read_csv(ns.from_csv)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return _report(backend, rows, ns.output)
    if ns.backend == "nccl" and torch.cuda.device_count() < 2:
        print(f"error: --backend nccl needs two GPUs, this machine has "
              f"{torch.cuda.device_count()}", file=sys.stderr)
        return 2
    if ns.repeats < 1 or ns.max_mib < 1:
        print("error: --repeats and --max-mib must be at least 1", file=sys.stderr)
        return 2
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    args = (ns.backend, free_port(), ns.repeats, ns.max_mib * 2**20, queue)
    mp.start_processes(_worker, args=args, nprocs=2, start_method="spawn")
    rows = [Row(**r) for r in queue.get(timeout=10)]
    return _report(ns.backend, rows, ns.output)


def read_csv(path: str) -> tuple[str, list[Row]]:
    """The backend and rows of a ``profile-chip --links`` CSV; ValueError naming the line."""
    with open(path) as fh:
        lines = fh.read().splitlines()
    if not lines or lines[0].strip() != "kind,backend,nbytes,seconds":
        raise ValueError(f"{path}: line 1 must be the header kind,backend,nbytes,seconds")
    rows, backends = [], set()
    for number, line in enumerate(lines[1:], start=2):
        try:
            kind, backend, nbytes, seconds = line.split(",")
            rows.append(Row(kind, int(nbytes), float(seconds)))
            backends.add(backend)
        except ValueError:
            raise ValueError(f"{path}: line {number} is not kind,backend,nbytes,seconds: "
                             f"{line!r}") from None
    return ",".join(sorted(backends)), rows


def _report(backend: str, rows: list[Row], output: str) -> int:
    try:
        fits = [fit_alpha_beta(rows, k) for k in ("p2p", "all_reduce")]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = {"backend": backend, "fits": {f.kind: asdict(f) for f in fits},
              "rows": [asdict(r) for r in rows]}
    with open(output, "w") as fh:
        json.dump(result, fh, indent=1)
    for f in fits:
        print(f"{f.kind}: alpha {f.alpha_us:.1f} us, beta {f.beta_gbs:.2f} GB/s "
              f"(worst row {f.worst_error_pct:.1f} % off the fit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
