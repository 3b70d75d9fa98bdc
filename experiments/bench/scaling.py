"""Scaling study: whole-process search time, work and peak memory against cluster size.

Each point is one ``autosplit search`` child process (interpreter start, imports, the cached
model profile, search, summary: what a user waits for), measured with ``os.wait4`` (wall
time, peak RSS). The clusters are ``experiments/clusters/four_type_1024.yaml`` scaled by
whole nodes — 384 H100 : 256 A100 : 192 MI300X : 192 Ascend 910B per 1,024 devices, H100 and
A100 sharing a collective library, NVIDIA and AMD joined by RDMA, Ascend by the CPU relay —
from 128 to 16,384 devices, Llama-70B (80 layers, sequence 4,096). Two batch sweeps: the
CLI's default global batch (64) and 2,048. Then two target points: Llama-70B on
``three_vendor_128.yaml`` at the quick suite's settings (global batch 256), and
``--time-limit 2`` on 4,096 devices.

Per point it prints devices, wall seconds, the search's deterministic work (millions of
programme and split cells: ``search.work``), programme calls and exact pricings, peak RSS,
the provable gap and what stopped the search; per sweep the growth exponent ``k`` of
``wall ∝ devices^k`` (least squares on log–log, points at 1,024 devices and above), of the
CPU time (user + system: what the wall time is on an idle machine, the search being
single-threaded) and of the work counter. The profile cache is primed by one unrecorded
run, so every recorded run is warm. Writes ``scaling.csv`` and the table between the
markers of ``scaling.md``.

    .venv/bin/python experiments/bench/scaling.py [--time-limit 60] [--devices 128 1024 ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LLAMA = REPO / "experiments" / "models" / "llama.py"
FOUR_TYPE = REPO / "experiments" / "clusters" / "four_type_1024.yaml"
THREE_VENDOR = REPO / "experiments" / "clusters" / "three_vendor_128.yaml"
DEVICES = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)
BATCHES = (64, 2048)
#: Points at or above this size enter the growth fit (below it, start-up dominates).
FIT_FROM = 1024


@dataclass(frozen=True)
class Point:
    """One measured ``autosplit search`` run."""

    sweep: str
    devices: int
    global_batch: int
    time_limit_s: float
    wall_s: float
    cpu_s: float
    search_s: float
    peak_mib: float
    work: float
    programmes: int
    priced: int
    gap: float
    iteration_s: float
    stopped_by: str


def four_type_yaml(devices: int) -> str:
    """``four_type_1024.yaml`` with every node count scaled to ``devices`` devices."""
    if devices % 128:
        raise SystemExit(f"--devices: {devices} is not a multiple of 128 (whole nodes of "
                         "every type); pass e.g. 128, 1024 or 16384")
    text = FOUR_TYPE.read_text()
    scaled = re.sub(r"count: (\d+)", lambda m: f"count: {int(m.group(1)) * devices // 1024}",
                    text)
    return scaled.replace("four-type-1024", f"four-type-{devices}")


def _spawn(cmd: list[str], env: dict[str, str], kill_after: float
           ) -> tuple[float, float, float, int, str]:
    """Run ``cmd``; its wall time, CPU time (user + system), peak RSS (MiB), exit code (-9
    when killed) and stdout."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        pid = os.posix_spawn(cmd[0], cmd, env,
                             file_actions=[(os.POSIX_SPAWN_DUP2, out.fileno(), 1)])
        killed = False
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            if time.perf_counter() - t0 > kill_after:
                os.kill(pid, signal.SIGKILL)
                killed = True
                _, status, usage = os.wait4(pid, 0)
                break
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        out.seek(0)
        text = out.read().decode()
    code = -9 if killed else os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, code, text


def run_point(*, sweep: str, cluster: Path, devices: int, batch: int, time_limit: float,
              kill_after: float, env: dict[str, str]) -> Point:
    """One search of Llama-70B on ``cluster``, as a user runs it."""
    cmd = [sys.executable, "-m", "autosplit", "search", str(LLAMA), "-a", "size=70b",
           "--seq-len", "4096", "-b", str(batch), "-c", str(cluster),
           "--time-limit", str(time_limit), "--json", "-q"]
    wall, cpu, peak, code, text = _spawn(cmd, env, kill_after)
    if code != 0:
        return Point(sweep=sweep, devices=devices, global_batch=batch,
                     time_limit_s=time_limit, wall_s=wall, cpu_s=cpu, search_s=math.nan,
                     peak_mib=peak,
                     work=math.nan, programmes=0, priced=0, gap=math.nan,
                     iteration_s=math.nan,
                     stopped_by="killed" if code == -9 else f"exit {code}")
    plan = json.loads(text)
    s = plan["search"]
    return Point(sweep=sweep, devices=devices, global_batch=batch, time_limit_s=time_limit,
                 wall_s=wall, cpu_s=cpu, search_s=s["time_s"], peak_mib=peak, work=s["work"],
                 programmes=s["exact_solves"], priced=s["explored"],
                 gap=s["optimality_gap"], iteration_s=plan["prediction"]["iteration_s"],
                 stopped_by=s["stopped_by"])


def growth_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` on ``log x`` (``nan`` with fewer than two points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True)
           if x > 0 and y > 0 and math.isfinite(y)]
    if len(pts) < 2:
        return math.nan
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    var = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / var if var else math.nan


def exponents(points: Sequence[Point]) -> dict[str, tuple[float, float, float]]:
    """Per device sweep: the growth exponents of wall time, CPU time and work."""
    out = {}
    for sweep in sorted({p.sweep for p in points if p.sweep.startswith("devices")}):
        pts = [p for p in points if p.sweep == sweep and p.devices >= FIT_FROM]
        xs = [p.devices for p in pts]
        out[sweep] = (growth_exponent(xs, [p.wall_s for p in pts]),
                      growth_exponent(xs, [p.cpu_s for p in pts]),
                      growth_exponent(xs, [p.work for p in pts]))
    return out


def markdown(points: Sequence[Point], *, code: str) -> str:
    head = ("| sweep | devices | batch | limit s | wall s | CPU s | search s | work (M cells) | "
            "programmes | priced | peak RSS MiB | iteration s | gap | stopped by |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    rows = [f"| {p.sweep} | {p.devices} | {p.global_batch} | {p.time_limit_s:g} | "
            f"{p.wall_s:.1f} | {p.cpu_s:.1f} | {p.search_s:.1f} | {p.work:.0f} | "
            f"{p.programmes} | "
            f"{p.priced} | {p.peak_mib:.0f} | {p.iteration_s:.4g} | {p.gap:.1%} | "
            f"{p.stopped_by} |" for p in points]
    fits = [f"- {sweep}: wall time ∝ devices^{wall:.2f}, CPU time ∝ devices^{cpu:.2f}, "
            f"work ∝ devices^{work:.2f} (points ≥ {FIT_FROM} devices)"
            for sweep, (wall, cpu, work) in exponents(points).items()]
    return head + "\n".join(rows) + "\n\n" + "\n".join(fits) + f"\n\nMeasured on {code}.\n"


def code_fingerprint() -> str:
    """Commit plus a hash of the search and cost-model sources as they are on disk."""
    import hashlib
    import subprocess

    digest = hashlib.sha256()
    for path in sorted([*REPO.glob("autosplit/search/*.py"), *REPO.glob("autosplit/cost/*.py")]):
        digest.update(path.name.encode() + path.read_bytes())
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                          capture_output=True, check=False).stdout.strip() or "unknown"
    return f"commit {head}, search+cost sources sha256 {digest.hexdigest()[:12]}"


_BEGIN, _END = "<!-- scaling table: begin -->", "<!-- scaling table: end -->"


def write_table(path: Path, table: str) -> None:
    """Replace the table between the markers of ``path``, keeping the prose around it."""
    text = path.read_text() if path.exists() else f"# Search scaling\n\n{_BEGIN}\n{_END}\n"
    if _BEGIN not in text:
        text += f"\n{_BEGIN}\n{_END}\n"
    head, rest = text.split(_BEGIN, 1)
    tail = rest.split(_END, 1)[1]
    path.write_text(f"{head}{_BEGIN}\n{table}{_END}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=60.0,
                        help="--time-limit of every sweep point (s)")
    parser.add_argument("--kill-after", type=float, default=300.0,
                        help="kill a point that runs longer than this (s)")
    parser.add_argument("--devices", type=int, nargs="*", default=list(DEVICES))
    parser.add_argument("--batches", type=int, nargs="*", default=list(BATCHES))
    parser.add_argument("--no-targets", action="store_true",
                        help="skip the 128-device and --time-limit 2 points")
    parser.add_argument("--no-write", action="store_true",
                        help="print only; leave scaling.csv and scaling.md as they are")
    args = parser.parse_args()
    code = code_fingerprint()
    points: list[Point] = []
    with tempfile.TemporaryDirectory() as tmp:
        def cluster_for(n: int) -> Path:
            path = Path(tmp) / f"four_type_{n}.yaml"
            if not path.exists():
                path.write_text(four_type_yaml(n))
            return path

        jobs = [(f"devices, batch {b}", cluster_for(n), n, b, args.time_limit)
                for b in args.batches for n in args.devices]
        if not args.no_targets:
            jobs.append(("three-vendor target", THREE_VENDOR, 128, 256, args.time_limit))
            jobs.append(("time limit 2 s", cluster_for(4096), 4096, 64, 2.0))
        env = {**os.environ, "AUTOSPLIT_CACHE_DIR": str(Path(tmp) / "cache")}
        run_point(sweep="prime", cluster=jobs[0][1], devices=jobs[0][2], batch=64,
                  time_limit=1.0, kill_after=args.kill_after, env=env)  # fill the cache
        for sweep, cluster, n, batch, limit in jobs:
            p = run_point(sweep=sweep, cluster=cluster, devices=n, batch=batch,
                          time_limit=limit, kill_after=args.kill_after, env=env)
            print(f"{p.sweep:22s} {p.devices:6d} dev  wall {p.wall_s:6.1f} s  CPU "
                  f"{p.cpu_s:6.1f} s  search "
                  f"{p.search_s:6.1f} s  work {p.work:7.0f}  programmes {p.programmes:4d}  "
                  f"priced {p.priced:4d}  RSS {p.peak_mib:5.0f} MiB  gap {p.gap:6.1%}  "
                  f"{p.stopped_by}", flush=True)
            points.append(p)
    for sweep, (wall, cpu, work) in exponents(points).items():
        print(f"{sweep}: wall ∝ devices^{wall:.2f}, CPU ∝ devices^{cpu:.2f}, "
              f"work ∝ devices^{work:.2f}")
    if args.no_write:
        return 0
    with open(HERE / "scaling.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(points[0])))
        writer.writeheader()
        writer.writerows(asdict(p) for p in points)
    if code_fingerprint() != code:
        code += f" (changed during the run, now {code_fingerprint()})"
    write_table(HERE / "scaling.md", markdown(points, code=code))
    return 0


if __name__ == "__main__":
    sys.exit(main())
