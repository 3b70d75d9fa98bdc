"""Entry point of one rank process: ``python -m autosplit.runtime.worker CONFIG.json``.

Started by ``autosplit.runtime.launch`` (one process per rank on this host) with RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT in its environment. Rank 0 assembles every rank's
result into ``measured.json``. A failing rank prints its traceback to stderr, records its
error for the launcher and exits 1; the launcher reports it and stops the other ranks.
"""

from __future__ import annotations

import os
import sys

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from autosplit.model.loader import load_model_source
from autosplit.plan.io import load_plan
from autosplit.runtime.config import RunConfig
from autosplit.runtime.measure import MeasuredRun, RankResult, save_measured, summarise
from autosplit.runtime.pipeline import run_rank

__all__ = ["main", "execute_rank", "assemble"]


def assemble(config: RunConfig, results: list[RankResult]) -> MeasuredRun:
    """Every rank's result into one measured run."""
    from autosplit.runtime.measure import plan_fingerprint

    plan = load_plan(config.plan_path)
    source = load_model_source(config.model_path, config.model_args)
    tokens = source.tokens_per_sample or plan.model.seq_len
    ranks = sorted(results, key=lambda r: r.rank)
    times, median, tokens_s, samples_s = summarise(
        ranks=ranks, warmup=config.warmup, global_batch=plan.global_batch,
        tokens_per_sample=tokens)
    # Each replica of the last stage reports its loss once (its tensor-parallel ranks agree).
    last = [r for r in ranks if r.holds(plan.num_stages - 1) and r.tp_index == 0]
    steps = len(times)
    # The step's loss is the mean over all samples: each replica's mean by its share.
    shares = {i: rep.batch_share for i, rep in enumerate(plan.stages[-1].replicas)}
    total = sum(shares[r.replica] for r in last) if last else 0
    loss = tuple(sum(r.losses[i] * shares[r.replica] for r in last) / total
                 for i in range(steps)) \
        if last and total and all(len(r.losses) == steps for r in last) else ()
    return MeasuredRun(
        plan_fingerprint=plan_fingerprint(plan), plan_file=config.plan_path,
        model_file=config.model_path, model_args=dict(config.model_args), device=config.device,
        backend=config.backend, cpu_relay=config.cpu_relay, dtype=config.dtype,
        steps=config.steps, warmup=config.warmup, global_batch=plan.global_batch,
        micro_batch_count=plan.micro_batch_count, tokens_per_sample=tokens,
        step_times_s=times, median_step_s=median, tokens_per_s=tokens_s,
        samples_per_s=samples_s, loss=loss, ranks=tuple(ranks),
        torch_version=torch.__version__,
        precision="fp32" if config.dtype == "fp32" else config.precision)


def execute_rank(config: RunConfig) -> MeasuredRun | None:
    """Run the rank named by the environment; rank 0 writes and returns the measured run."""
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    results = run_rank(config, rank=rank, world_size=world_size)
    if rank != 0:
        return None
    run = assemble(config, results)
    if config.output:
        save_measured(run, config.output)
    return run


@record  # an uncaught error is written where the launcher reads it (its exception message)
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with open(args[0]) as fh:
        config = RunConfig.from_json(fh.read())
    execute_rank(config)
    return 0


def _exit_without_finalization(code: int) -> None:
    """Leave the process once the rank's result is written, skipping interpreter teardown.

    Gloo's C++ worker threads can still hold finished work objects (and through them tensors
    with Python references) when the interpreter finalizes; releasing them then aborts the
    process ("terminate called without an active exception", SIGABRT) at random, long after
    the rank's work succeeded. Nothing is left to clean up at this point: the process groups
    are destroyed and the result file is closed, so streams are flushed and the process ends.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_without_finalization(main())
