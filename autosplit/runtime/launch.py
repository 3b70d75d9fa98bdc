"""Start a planned run: check everything first, then one process per rank on this host, or
join a ``torchrun`` launch as the rank its environment names.

Local ranks are started by ``torch.distributed.elastic.multiprocessing.start_processes``, the
process layer under ``torchrun``: fresh interpreters (``python -m autosplit.runtime.worker``),
each with its own environment set before CUDA starts (e.g.
``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``, which ``torchrun`` cannot set per rank), each writing
its output to its own log files. If any rank fails the others are stopped (SIGTERM, then
SIGKILL) and the first to fail is reported — its exit code or the signal that killed it — with
the last lines of its output. ``torchrun`` itself adds rendezvous and restarts, which a run
of a few measured steps on one host does not need; across hosts, start ``autosplit run``
under ``torchrun`` and every process runs the rank its environment names.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from autosplit.errors import AutosplitError, BadInputError
from autosplit.plan.io import load_plan
from autosplit.runtime.checks import check_model, check_plan_shape, choose_devices
from autosplit.runtime.config import DEFAULT_GRAD_CLIP, DEFAULT_LR, RunConfig
from autosplit.runtime.layout import run_layout
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
    _, tp_styles = check_model(plan, plan_path=request.plan_path,
                               model_path=request.model_path, model_args=model_args)
    layout = run_layout(plan)
    choice = choose_devices(world_size=layout.world_size, device=request.device,
                            backend=request.backend, cuda_devices=request.cuda_devices,
                            external_launch=under_torchrun(),
                            max_tp=max(s.tp for s in plan.stages))
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
        lr=request.lr, grad_clip=request.grad_clip, tp_styles=tp_styles)
    return config, layout.world_size


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: str, lines: int = 15) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as fh:
        return "".join(fh.readlines()[-lines:])


#: Signals ``start_processes`` takes over in the launching process (to stop the ranks).
_HANDLED = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")


@contextmanager
def _own_signal_handlers() -> Iterator[None]:
    """Give back the caller's signal handlers afterwards (the launcher may be a library
    call, e.g. inside a test session)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {name: signal.getsignal(getattr(signal, name)) for name in _HANDLED
             if hasattr(signal, name)}
    elastic = logging.getLogger("torch.distributed.elastic")
    level = elastic.level
    elastic.setLevel(logging.CRITICAL)  # we report failures ourselves, once
    try:
        yield
    finally:
        elastic.setLevel(level)
        for name, handler in saved.items():
            signal.signal(getattr(signal, name), handler)


def _failure_report(result: object) -> str:
    """The first rank to fail: how, its error and the last lines of its output."""
    failures = result.failures  # type: ignore[attr-defined]
    first = min(failures.values(), key=lambda f: f.timestamp)
    rank = first.local_rank
    if first.exitcode < 0:
        how = f"rank {rank} was killed by signal {first.signal_name()}"
    else:
        how = f"rank {rank} failed (exit code {first.exitcode})"
    message = first.message if isinstance(first.message, str) else ""
    if message and not message.startswith("Signal") and message != "<N/A>":
        how += f": {message.strip().splitlines()[-1]}"
    err = _tail(result.stderrs.get(rank, ""))  # type: ignore[attr-defined]
    std = _tail(result.stdouts.get(rank, ""))  # type: ignore[attr-defined]
    out = err + (f"(standard output)\n{std}" if std and err else std)
    return how + (f"\nlast lines of its output:\n{out}" if out else " (no output)")


def _spawn_local(config: RunConfig, world_size: int, *, timeout_s: float | None) -> None:
    from torch.distributed.elastic.multiprocessing import (
        DefaultLogsSpecs,
        SignalException,
        Std,
        start_processes,
    )

    with tempfile.TemporaryDirectory(prefix="autosplit-run-") as tmp, _own_signal_handlers():
        cfg_path = os.path.join(tmp, "config.json")
        with open(cfg_path, "w") as fh:
            fh.write(config.to_json())
        port = _free_port()
        threads = max(1, (os.cpu_count() or 1) // world_size)
        envs = {}
        for rank in range(world_size):
            env = {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                   "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port),
                   "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
                   # A rank killed by a signal loses what it buffered: its last lines are
                   # what the failure report shows, so nothing is buffered.
                   "PYTHONUNBUFFERED": "1"}
            env.update(config.rank_env.get(rank, {}))
            envs[rank] = env
        context = start_processes(
            name="autosplit-run", entrypoint=sys.executable,
            args={r: ("-m", "autosplit.runtime.worker", cfg_path) for r in range(world_size)},
            envs=envs, logs_specs=DefaultLogsSpecs(log_dir=os.path.join(tmp, "logs"),
                                                   redirects=Std.ALL))
        try:
            result = context.wait(timeout=-1 if timeout_s is None else timeout_s,
                                  period=0.05)
        except SignalException as exc:
            context.close(death_sig=exc.sigval, timeout=10)
            raise AutosplitError(f"stopped by {exc.sigval.name}; the ranks were stopped "
                                 "too") from None
        finally:
            context.close(timeout=10)
        if result is None:
            raise AutosplitError(f"the run did not finish within {timeout_s:.0f} s; the ranks "
                                 "were stopped", fix="raise --timeout, or run fewer steps")
        if result.is_failed():
            raise AutosplitError(_failure_report(result))


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
