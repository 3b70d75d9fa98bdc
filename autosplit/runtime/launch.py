"""Start a planned run: check everything first, then one process per rank on this host, or
join a ``torchrun`` launch as the rank its environment names.

Rank processes are fresh interpreters (``python -m autosplit.runtime.worker``) so that each
sets its own environment (e.g. ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``) before CUDA starts.
If any rank fails, the others are stopped and the failing rank's last lines are reported.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from autosplit.errors import AutosplitError, BadInputError
from autosplit.plan.io import load_plan
from autosplit.runtime.checks import check_model, check_plan_shape, choose_devices
from autosplit.runtime.config import DEFAULT_GRAD_CLIP, DEFAULT_LR, RankLayout, RunConfig
from autosplit.runtime.measure import MeasuredRun, load_measured
from autosplit.runtime.precision import DTYPES, PRECISIONS

#: Values of --attention-backend (kept here so the launcher need not import the pipeline).
ATTENTION_BACKENDS: tuple[str, ...] = ("math", "flash", "efficient", "cudnn")

__all__ = ["RunRequest", "prepare_run", "launch", "under_torchrun"]


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for on the command line."""

    plan_path: str
    model_path: str
    model_args: dict[str, str]
    steps: int = 10
    warmup: int = 3
    device: str = "cpu"
    backend: str | None = None
    cuda_devices: tuple[int, ...] = ()
    rank_env: dict[int, dict[str, str]] | None = None
    seed: int = 0
    output: str = "measured.json"
    dump_params_dir: str = ""
    attention_backend: str = ""
    precision: str = "master"
    #: Compute dtype; empty: the plan's on CUDA, fp32 on the CPU.
    dtype: str = ""
    lr: float = DEFAULT_LR
    grad_clip: float = DEFAULT_GRAD_CLIP


def under_torchrun() -> bool:
    """True when this process is one rank of an external launcher (torchrun, SLURM wrapper)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def prepare_run(request: RunRequest) -> tuple[RunConfig, int]:
    """Check the plan, the model and the devices; the config every rank gets, and the world
    size. Raises ``BadInputError`` before anything starts."""
    if request.steps < 1:
        raise BadInputError("--steps must be at least 1", field="--steps", fix="e.g. --steps 10")
    if not 0 <= request.warmup < request.steps:
        raise BadInputError(f"--warmup {request.warmup} leaves no timed step of {request.steps}",
                            field="--warmup", fix="use a warm-up smaller than --steps")
    plan = load_plan(request.plan_path)
    check_plan_shape(plan, path=request.plan_path)
    model_args = {**plan.model.model_args, **request.model_args}
    check_model(plan, plan_path=request.plan_path, model_path=request.model_path,
                model_args=model_args)
    layout = RankLayout(plan.num_stages, plan.stages[0].dp)
    choice = choose_devices(world_size=layout.world_size, device=request.device,
                            backend=request.backend, cuda_devices=request.cuda_devices,
                            external_launch=under_torchrun())
    rank_env = dict(request.rank_env or {})
    bad = [r for r in rank_env if not 0 <= r < layout.world_size]
    if bad:
        raise BadInputError(f"--rank-env names rank(s) {bad}; the plan has ranks "
                            f"0..{layout.world_size - 1}", field="--rank-env",
                            fix="use RANK:NAME=VALUE with an existing rank")
    if request.attention_backend and request.attention_backend not in ATTENTION_BACKENDS:
        raise BadInputError(f"unknown attention backend '{request.attention_backend}'",
                            field="--attention-backend",
                            fix="use one of: " + ", ".join(ATTENTION_BACKENDS))
    if not request.lr > 0:
        raise BadInputError(f"learning rate {request.lr:g} is not positive", field="--lr",
                            fix="pass a positive learning rate, e.g. --lr 1e-4")
    if not request.grad_clip >= 0:
        raise BadInputError(f"gradient clipping norm {request.grad_clip:g} is negative",
                            field="--grad-clip", fix="pass a positive norm, or 0 for none")
    if request.precision not in PRECISIONS:
        raise BadInputError(f"unknown precision '{request.precision}'", field="--precision",
                            fix="use one of: " + ", ".join(PRECISIONS))
    if request.dtype and request.dtype not in DTYPES:
        raise BadInputError(f"unknown dtype '{request.dtype}'", field="--dtype",
                            fix="use one of: " + ", ".join(DTYPES))
    dtype = request.dtype or (plan.model.dtype if choice.device == "cuda" else "fp32")
    config = RunConfig(
        plan_path=os.path.abspath(request.plan_path),
        model_path=os.path.abspath(request.model_path), model_args=model_args,
        steps=request.steps, warmup=request.warmup, device=choice.device,
        backend=choice.backend, cpu_relay=choice.cpu_relay, cuda_devices=choice.cuda_devices,
        rank_env=rank_env, seed=request.seed,
        output=os.path.abspath(request.output) if request.output else "",
        dump_params_dir=request.dump_params_dir, dtype=dtype,
        attention_backend=request.attention_backend, precision=request.precision,
        lr=request.lr, grad_clip=request.grad_clip)
    return config, layout.world_size


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: str, lines: int = 15) -> str:
    with open(path, errors="replace") as fh:
        return "".join(fh.readlines()[-lines:])


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _spawn_local(config: RunConfig, world_size: int, *, timeout_s: float | None) -> None:
    with tempfile.TemporaryDirectory(prefix="autosplit-run-") as tmp:
        cfg_path = os.path.join(tmp, "config.json")
        with open(cfg_path, "w") as fh:
            fh.write(config.to_json())
        port = _free_port()
        threads = max(1, (os.cpu_count() or 1) // world_size)
        procs: list[subprocess.Popen[bytes]] = []
        logs: list[str] = []
        try:
            for rank in range(world_size):
                env = dict(os.environ)
                env.update({"RANK": str(rank), "WORLD_SIZE": str(world_size),
                            "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world_size),
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", str(threads))})
                env.update(config.rank_env.get(rank, {}))
                log = os.path.join(tmp, f"rank{rank}.log")
                logs.append(log)
                with open(log, "wb") as out:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "autosplit.runtime.worker", cfg_path],
                        env=env, stdout=out, stderr=subprocess.STDOUT))
            start = time.monotonic()
            while True:
                codes = [p.poll() for p in procs]
                failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
                if failed:
                    rank = failed[0]
                    _stop(procs)
                    raise AutosplitError(f"rank {rank} failed (exit code {codes[rank]}):\n"
                                         + _tail(logs[rank]))
                if all(c == 0 for c in codes):
                    return
                if timeout_s is not None and time.monotonic() - start > timeout_s:
                    _stop(procs)
                    raise AutosplitError(f"the run did not finish within {timeout_s:.0f} s")
                time.sleep(0.05)
        finally:
            _stop(procs)


def launch(config: RunConfig, world_size: int, *,
           timeout_s: float | None = None) -> MeasuredRun | None:
    """Run the checked config. Spawns the ranks here unless this process already is a rank
    of an external launch; returns the measured run where this process is rank 0 or the
    launcher."""
    if under_torchrun():
        if int(os.environ["WORLD_SIZE"]) != world_size:
            raise BadInputError(f"launched with WORLD_SIZE={os.environ['WORLD_SIZE']} but the "
                                f"plan needs {world_size} ranks", field="WORLD_SIZE",
                                fix=f"torchrun --nproc-per-node ... so that {world_size} ranks "
                                    "start in total")
        from autosplit.runtime.worker import execute_rank

        return execute_rank(config)
    if not config.output:
        raise BadInputError("no output file", field="-o", fix="pass -o measured.json")
    _spawn_local(config, world_size, timeout_s=timeout_s)
    return load_measured(config.output)
