"""Time the CPU relay exactly as `autosplit run` moves a stage boundary, between two MPS clients.

The cost model prices a CPU-relay transfer as three hops (device→host copy, the network, host→
device copy) plus a per-message latency (docs/cost-model.md). The runtime's relay is: the
sender copies the boundary tensor to host memory (``.to("cpu")``, a pageable synchronous copy),
gloo sends it, the receiver copies it onto its device (``.to(device)``). This script times that
path and each hop, as two processes at their own SM shares, while other clients keep their
shares busy (``--load``), the way a pipeline's neighbours compute while a stage transfers:

    python3 experiments/runtime/relay_bench.py --shares 30 15 --load 50 -o relay.json

Rows: ``relay`` (half a ping-pong of the whole path), ``d2h`` and ``h2d`` (one copy each, on
the first rank) and ``gloo`` (half a ping-pong of a host tensor). Each is fitted to
``t = alpha + bytes / beta`` (``link_bench.fit_alpha_beta``) over the rows up to
``--fit-max-mib`` (default 16 MiB: the boundary tensors of the example models are 4-13 MB;
on the H200 machine a 64 MiB device-to-host copy ran at a tenth of the 16 MiB one's rate, each
copy into freshly mapped host pages, which would set the fit for every size); the JSON holds
the fits and every row, which ``mps_chips.py trio --relay`` turns into the cluster's relay
figures. ``--refit FILE`` fits the rows of an earlier output again.

The receive buffer is reused across messages. With ``--fresh-buffers`` (a new host tensor
per message, as the executor allocates its receive buffers) the whole path measured
0.56 GB/s at 4-16 MiB on the H200 machine, a quarter of the reused buffer's 2.3 GB/s, and
priced both plans of that run 34-43 % slower than they trained
(results/mix-50-20-15-llama); the reused buffer's fit priced the runs within 1-8 %. So the
training runs do not pay what a fresh buffer costs in this ping-pong; why is not known.

``--device cpu`` runs the same steps without a GPU (a check of the plumbing; the figures mean
nothing). Bad arguments exit with code 2 and a message naming the argument.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from link_bench import Row, fit_alpha_beta, free_port, median_seconds  # noqa: E402

__all__ = ["main"]

SIZES = tuple(2**18 * 4 ** i for i in range(5))  # 256 KiB to 64 MiB
KINDS = ("relay", "d2h", "h2d", "gloo")
LOAD_SCRIPT = Path(__file__).resolve().parents[1] / "profiling" / "gpu_load.py"


def _rank(rank: int, port: int, device_name: str, repeats: int, max_bytes: int,
          out: str, fresh: bool) -> None:
    """One side of the relay: the same calls as the runtime's executor (``_give`` copies to
    host, ``batch_isend_irecv`` over gloo, ``_run_forward`` copies onto the device)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device(device_name)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    rows: list[Row] = []
    for nbytes in (n for n in SIZES if n <= max_bytes):
        rows += _time_size(rank, device, nbytes, repeats, fresh)
        dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps([asdict(r) for r in rows]))


def _time_size(rank: int, device: torch.device, nbytes: int, repeats: int,
               fresh: bool) -> list[Row]:
    """The rows of one message size (the first rank also times the two copies alone);
    ``fresh``: a new receive buffer per message (``--fresh-buffers``)."""
    peer = 1 - rank
    x = torch.ones(nbytes // 2, dtype=torch.bfloat16, device=device)
    host = torch.empty(x.shape, dtype=x.dtype)

    def relay() -> None:
        got = torch.empty(x.shape, dtype=x.dtype) if fresh else host
        if rank == 0:
            dist.send(x.detach().to("cpu").contiguous(), peer)
            dist.recv(got, peer)
            got.to(device, copy=True).contiguous()
        else:
            dist.recv(got, peer)
            y = got.to(device, copy=True).contiguous()
            dist.send(y.detach().to("cpu").contiguous(), peer)

    def gloo() -> None:
        if rank == 0:
            dist.send(host, peer)
            dist.recv(host, peer)
        else:
            dist.recv(host, peer)
            dist.send(host, peer)

    for fn in (relay, gloo):  # warm-up: connections, allocator
        fn()
    rows = [Row("relay", nbytes, median_seconds(relay, device, repeats) / 2),
            Row("gloo", nbytes, median_seconds(gloo, device, repeats) / 2)]
    if rank == 0:
        # On the CPU (the plumbing check) both copies are a host memcpy.
        rows.append(Row("d2h", nbytes, median_seconds(lambda: x.to("cpu", copy=True), device,
                                               repeats)))
        rows.append(Row("h2d", nbytes, median_seconds(lambda: host.to(device, copy=True), device,
                                               repeats)))
    return rows


def _spawn(ns: argparse.Namespace, rows_file: str) -> int:
    """The two ranks at their shares and the load clients; the ranks' worst exit code."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        stop = Path(tmp) / "stop"
        loads = []
        if ns.device == "cuda":
            for share in ns.load:
                env = dict(os.environ, CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=str(share))
                loads.append(subprocess.Popen([sys.executable, str(LOAD_SCRIPT), str(stop)],
                                              env=env))
        ranks = []
        for rank, share in enumerate(ns.shares):
            env = dict(os.environ)
            if ns.device == "cuda":
                env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(share)
            ranks.append(subprocess.Popen(
                [sys.executable, __file__, "--_rank", str(rank), "--_port", str(port),
                 "--device", ns.device, "--repeats", str(ns.repeats), "--max-mib",
                 str(ns.max_mib), "-o", rows_file,
                 *(["--fresh-buffers"] if ns.fresh_buffers else [])], env=env))
        try:
            codes = [p.wait(timeout=ns.timeout) for p in ranks]
        except subprocess.TimeoutExpired:
            for p in ranks:
                p.kill()
            codes = [124]
        stop.touch()
        for p in loads:
            p.wait(timeout=30)
    return max(codes)


def _report(ns: argparse.Namespace, rows: list[Row]) -> int:
    limit = ns.fit_max_mib * 2**20
    try:
        fits = {k: asdict(fit_alpha_beta([r for r in rows if r.nbytes <= limit], k))
                for k in KINDS}
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result = {"shares": ns.shares, "load": ns.load, "device": ns.device,
              "torch": torch.__version__, "fresh_buffers": ns.fresh_buffers,
              "fit_max_bytes": limit, "fits": fits,
              "rows": [asdict(r) for r in rows]}
    Path(ns.output).write_text(json.dumps(result, indent=1))
    for kind, f in fits.items():
        print(f"{kind}: alpha {f['alpha_us']:.1f} us, beta {f['beta_gbs']:.2f} GB/s "
              f"(worst row {f['worst_error_pct']:.1f} % off the fit)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", nargs=2, type=int, default=[30, 15],
                        help="SM percentages of the sending and the receiving client")
    parser.add_argument("--load", nargs="*", type=int, default=[],
                        help="SM percentages of clients kept busy meanwhile")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--max-mib", type=int, default=64, help="largest message, MiB")
    parser.add_argument("--fresh-buffers", action="store_true",
                        help="a new host receive buffer per message (see the docstring)")
    parser.add_argument("--fit-max-mib", type=int, default=16,
                        help="largest message the fit uses, MiB")
    parser.add_argument("--refit", type=Path, default=None,
                        help="fit the rows of this earlier output instead of timing")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds for the ranks")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--_rank", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("--_port", type=int, default=0, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns._rank >= 0:
        _rank(ns._rank, ns._port, ns.device, ns.repeats, ns.max_mib * 2**20, ns.output,
              ns.fresh_buffers)
        return 0
    bad = [p for p in ns.shares + ns.load if not 1 <= p <= 100]
    if bad:
        print(f"error: --shares/--load {bad}: an SM share is a percentage from 1 to 100",
              file=sys.stderr)
        return 2
    if ns.repeats < 1 or ns.max_mib < 1 or ns.fit_max_mib < 1 or ns.timeout <= 0:
        print("error: --repeats, --max-mib, --fit-max-mib and --timeout must be positive",
              file=sys.stderr)
        return 2
    if ns.refit is not None:
        try:
            old = json.loads(ns.refit.read_text())
            rows = [Row(**r) for r in old["rows"]]
            ns.shares, ns.load, ns.device = old["shares"], old["load"], old["device"]
            ns.fresh_buffers = bool(old.get("fresh_buffers", False))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: --refit {ns.refit}: not this script's output ({exc})",
                  file=sys.stderr)
            return 2
        return _report(ns, rows)
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = str(Path(tmp) / "rows.json")
        code = _spawn(ns, rows_file)
        if code != 0 or not Path(rows_file).exists():
            print(f"error: a relay rank failed (exit code {code})", file=sys.stderr)
            return 1
        rows = [Row(**r) for r in json.loads(Path(rows_file).read_text())]
    return _report(ns, rows)


if __name__ == "__main__":
    sys.exit(main())
