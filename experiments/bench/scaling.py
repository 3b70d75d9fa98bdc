"""Scaling study: whole-process search time and peak memory against cluster size and depth.

Two sweeps, each point one ``autosplit search`` child process (interpreter start, imports,
model ingestion and search; what a user waits for):

- devices: 8 … 4,096 devices of three chip types from three vendors (H100 : MI300X :
  Ascend 910B = 2 : 1 : 1, nodes of up to 8, the topology of ``three_vendor_128.yaml``), an
  80-layer Llama of 13B width (26 B parameters, so that even 8 devices can hold it; the
  search's work depends on the layer count and the cluster, not on the width), global
  batch 2 samples per device (at least 64);
- layers: 24 … 128 layers of Llama-70B width on the 128-device cluster (80 layers is the
  target problem, Llama-70B itself);

plus the target point "1,024 devices of four types" (``four_type_1024.yaml``, Llama-70B).
Each child's wall time and peak RSS (``os.wait4``) are recorded with the search's own
statistics (level-1 candidates, exact solves, optimality gap, time-limit hit). The children
share a fresh profile cache (``AUTOSPLIT_CACHE_DIR``) that an unrecorded first run of each
model fills, so every recorded run is a warm-cache run: the sweeps measure the search, not
PyTorch's import (``search_time.py`` measures the cold first run). Writes ``scaling.csv``,
``scaling.md`` (the table between its markers; the prose is kept) and ``scaling.svg``.

    .venv/bin/python experiments/bench/scaling.py [--time-limit 60] [--kill-after 300]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LLAMA = REPO / "experiments" / "models" / "llama.py"
DEVICES = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
LAYERS = (24, 32, 48, 64, 80, 96, 128)
TARGETS = {"128 devices / 3 types / 80 layers": 5.0, "1024 devices / 4 types": 30.0}
TARGET_MIB = 1024.0


@dataclass(frozen=True)
class Point:
    sweep: str
    model: str
    devices: int
    chip_types: int
    layers: int
    global_batch: int
    wall_s: float
    peak_mib: float
    search_s: float
    level1: int
    explored: int
    gap: float
    timed_out: bool
    status: str


def three_vendor_yaml(devices: int) -> str:
    """A three-vendor cluster of ``devices`` devices (2 : 1 : 1), nodes of up to 8."""
    counts = {"H100": devices // 2, "MI300X": devices // 4, "Ascend910B": devices // 4}
    lines = [f"name: three-vendor-{devices}", "network: {nic_bw_gbs: 50, latency_us: 10}",
             "nodes:"]
    for chip, n in counts.items():
        per = min(8, n)
        lines += [f"  - name: {chip.lower()}", f"    chip: {chip}", f"    devices: {per}",
                  f"    count: {n // per}"]
        if chip == "Ascend910B":
            lines.append("    nic_bw_gbs: 25")
    lines += ["interconnect:", "  cross_vendor: cpu_relay", "  relay_latency_us: 50",
              "  links:", "    - between: [NVIDIA, AMD]", "      mode: rdma", "      bw_gbs: 25",
              "      latency_us: 15"]
    return "\n".join(lines) + "\n"


def run_point(*, sweep: str, cluster: Path, devices: int, chip_types: int, layers: int,
              size: str, time_limit: float, kill_after: float, env: dict[str, str]) -> Point:
    batch = max(64, 2 * devices)
    cmd = [sys.executable, "-m", "autosplit", "search", str(LLAMA), "-a", f"size={size}",
           "-a", f"layers={layers}", "--seq-len", "4096", "-b", str(batch), "-c", str(cluster),
           "--time-limit", str(time_limit), "--json", "-q"]
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        pid = os.posix_spawn(sys.executable, cmd, env,
                             file_actions=[(os.POSIX_SPAWN_DUP2, out.fileno(), 1)])
        status, usage, killed = 0, None, False
        while usage is None:
            done, status, ru = os.wait4(pid, os.WNOHANG)
            if done:
                usage = ru
                break
            if time.perf_counter() - t0 > kill_after:
                os.kill(pid, signal.SIGKILL)
                killed = True
                _, status, usage = os.wait4(pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        out.seek(0)
        text = out.read().decode()
    peak = usage.ru_maxrss / 1024
    base = dict(sweep=sweep, model=f"llama-{size} width", devices=devices,
                chip_types=chip_types, layers=layers, global_batch=batch, wall_s=wall,
                peak_mib=peak)
    if killed or os.waitstatus_to_exitcode(status) != 0:
        why = f"killed after {kill_after:.0f} s" if killed else \
            f"exit {os.waitstatus_to_exitcode(status)}"
        return Point(**base, search_s=float("nan"), level1=0, explored=0, gap=float("nan"),
                     timed_out=killed, status=why)
    s = json.loads(text)["search"]
    return Point(**base, search_s=s["time_s"], level1=s["level1_candidates"],
                 explored=s["explored"], gap=s["optimality_gap"], timed_out=s["timed_out"],
                 status="time limit" if s["timed_out"] else "complete")


def code_fingerprint() -> str:
    """Commit plus a hash of the search and cost-model sources as they are on disk, so a
    table can be matched to the code that produced it while that code is being changed."""
    import hashlib
    import subprocess

    digest = hashlib.sha256()
    for path in sorted([*REPO.glob("autosplit/search/*.py"), *REPO.glob("autosplit/cost/*.py")]):
        digest.update(path.name.encode() + path.read_bytes())
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                          capture_output=True, check=False).stdout.strip() or "unknown"
    return f"commit {head}, search+cost sources sha256 {digest.hexdigest()[:12]}"


def markdown(points: list[Point], *, code: str) -> str:
    head = ("| sweep | model | devices | types | layers | batch | whole-process s (warm) | "
            "search s | "
            "peak RSS MiB | level-1 candidates | solved | gap | status |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    rows = [f"| {p.sweep} | {p.model} | {p.devices} | {p.chip_types} | {p.layers} | "
            f"{p.global_batch} | "
            f"{p.wall_s:.1f} | {p.search_s:.1f} | {p.peak_mib:.0f} | {p.level1} | "
            f"{p.explored} | {p.gap:.1%} | {p.status} |" for p in points]
    return head + "\n".join(rows) + f"\n\nMeasured on {code}.\n"


_BEGIN, _END = "<!-- scaling table: begin -->", "<!-- scaling table: end -->"


def _write_table(path: Path, table: str) -> None:
    """Replace the table between the markers of ``path``, keeping the prose around it."""
    text = path.read_text() if path.exists() else f"# Search scaling\n\n{_BEGIN}\n{_END}\n"
    head, rest = text.split(_BEGIN, 1)
    tail = rest.split(_END, 1)[1]
    path.write_text(f"{head}{_BEGIN}\n{table}{_END}{tail}")


def _polyline(xs: list[float], ys: list[float], *, x0: float, y0: float, w: float, h: float,
              xr: tuple[float, float], yr: tuple[float, float], color: str) -> str:
    import math

    def sx(x: float) -> float:
        return x0 + w * (math.log2(x) - math.log2(xr[0])) / (math.log2(xr[1]) - math.log2(xr[0]))

    def sy(y: float) -> float:
        return y0 + h - h * (math.log10(y) - math.log10(yr[0])) / (
            math.log10(yr[1]) - math.log10(yr[0]))

    pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys, strict=True))
    dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>'
                   for x, y in zip(xs, ys, strict=True))
    return f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>{dots}'


def svg(points: list[Point]) -> str:
    """Two log-log panels: whole-process time (s) and peak RSS (MiB) per sweep."""
    w, h, pad = 300, 220, 60
    panels = [("devices", "devices (80 layers)", [p for p in points if p.sweep == "devices"],
               lambda p: p.devices),
              ("layers", "layers (128 devices)", [p for p in points if p.sweep == "layers"],
               lambda p: p.layers)]
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="780" height="330" '
             'font-family="sans-serif" font-size="11">',
             '<rect width="100%" height="100%" fill="white"/>']
    import math

    yr = (0.1, 2000.0)
    for k, (_, title, pts, xof) in enumerate(panels):
        if not pts:
            continue
        x0 = pad + k * (w + pad + 30)
        xs = [float(xof(p)) for p in pts]
        xr = (min(xs), max(xs) if max(xs) > min(xs) else 2 * min(xs))
        parts.append(f'<rect x="{x0}" y="30" width="{w}" height="{h}" fill="none" '
                     'stroke="#999"/>')
        parts.append(f'<text x="{x0 + w / 2}" y="{30 + h + 35}" text-anchor="middle">'
                     f'{title}</text>')
        for val in (0.1, 1, 10, 100, 1000):
            y = 30 + h - h * (math.log10(val) - math.log10(yr[0])) / (
                math.log10(yr[1]) - math.log10(yr[0]))
            parts.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{y:.1f}" y2="{y:.1f}" '
                         'stroke="#eee"/>')
            parts.append(f'<text x="{x0 - 5}" y="{y + 4:.1f}" text-anchor="end">{val}</text>')
        for x in xs:
            sx = x0 + w * (math.log2(x) - math.log2(xr[0])) / max(
                math.log2(xr[1]) - math.log2(xr[0]), 1e-9)
            parts.append(f'<text x="{sx:.1f}" y="{30 + h + 15}" text-anchor="middle">'
                         f'{int(x)}</text>')
        times = [p.wall_s for p in pts]
        mems = [p.peak_mib for p in pts]
        found = [(x, p.search_s) for x, p in zip(xs, pts, strict=True)
                 if math.isfinite(p.search_s) and p.search_s > 0]
        parts.append(_polyline(xs, times, x0=x0, y0=30, w=w, h=h, xr=xr, yr=yr,
                               color="#1f77b4"))
        if found:
            parts.append(_polyline([x for x, _ in found], [t for _, t in found], x0=x0, y0=30,
                                   w=w, h=h, xr=xr, yr=yr, color="#2ca02c"))
        parts.append(_polyline(xs, mems, x0=x0, y0=30, w=w, h=h, xr=xr, yr=yr,
                               color="#d62728"))
    parts.append('<text x="60" y="18" fill="#1f77b4">whole-process time (s)</text>')
    parts.append('<text x="210" y="18" fill="#2ca02c">search time (s)</text>')
    parts.append('<text x="320" y="18" fill="#d62728">peak RSS (MiB)</text>')
    parts.append('<text x="440" y="18" fill="#555">log scales; time-limit hits plotted at '
                 'the time they stopped</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--kill-after", type=float, default=300.0)
    parser.add_argument("--devices", type=int, nargs="*", default=list(DEVICES))
    parser.add_argument("--layers", type=int, nargs="*", default=list(LAYERS))
    parser.add_argument("--no-four-type", action="store_true",
                        help="skip the 1,024-device four-type point")
    args = parser.parse_args()
    points: list[Point] = []
    code = code_fingerprint()
    with tempfile.TemporaryDirectory() as tmp:
        def cluster_for(n: int) -> Path:
            path = Path(tmp) / f"three_vendor_{n}.yaml"
            path.write_text(three_vendor_yaml(n))
            return path

        jobs = [("devices", cluster_for(n), n, 3, 80, "13b") for n in args.devices]
        jobs += [("layers", cluster_for(128), 128, 3, n, "70b") for n in args.layers]
        if not args.no_four_type:
            jobs.append(("four-type", REPO / "experiments" / "clusters" / "four_type_1024.yaml",
                         1024, 4, 80, "70b"))
        env = {**os.environ, "AUTOSPLIT_CACHE_DIR": str(Path(tmp) / "cache")}
        primed: set[tuple[str, int]] = set()
        for sweep, cluster, n, types, layers, size in jobs:
            if (size, layers) not in primed:  # fill the profile cache, unrecorded
                primed.add((size, layers))
                run_point(sweep=sweep, cluster=cluster, devices=n, chip_types=types,
                          layers=layers, size=size, time_limit=1.0,
                          kill_after=args.kill_after, env=env)
            p = run_point(sweep=sweep, cluster=cluster, devices=n, chip_types=types,
                          layers=layers, size=size, time_limit=args.time_limit,
                          kill_after=args.kill_after, env=env)
            print(json.dumps(asdict(p)), flush=True)
            points.append(p)
    import csv

    with open(HERE / "scaling.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(points[0])))
        writer.writeheader()
        writer.writerows(asdict(p) for p in points)
    if code_fingerprint() != code:
        code += f" (changed during the run, now {code_fingerprint()})"
    _write_table(HERE / "scaling.md", markdown(points, code=code))
    (HERE / "scaling.svg").write_text(svg(points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
