"""When the first plan arrives: the search's progress messages, stamped with CPU and wall time.

A short ``--time-limit`` ends with a plan only if the first one comes before it. This runs the
search in-process (from the cached model profile, after the imports) on the four-type cluster
of ``scaling.py`` scaled to each size, and prints every "best so far" message with the CPU and
wall seconds since the search started, then how it stopped. Run from the repository root:

    .venv/bin/python experiments/bench/first_plan.py [--devices 4096 16384] [--time-limit 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from scaling import four_type_yaml  # noqa: E402

from autosplit.cluster.load import load_cluster  # noqa: E402
from autosplit.config import SearchConfig, TrainingConfig  # noqa: E402
from autosplit.errors import AutosplitError  # noqa: E402
from autosplit.model.cache import ingest_model_cached  # noqa: E402
from autosplit.profiler.provider import cost_provider_for  # noqa: E402
from autosplit.search.engine import search_plan  # noqa: E402
from autosplit.search.progress import SearchProgress  # noqa: E402

MODEL = str(HERE.parents[1] / "experiments/models/llama.py")


def trace(devices: int, *, batch: int, time_limit: float, tmp: Path) -> None:
    path = tmp / f"four_type_{devices}.yaml"
    path.write_text(four_type_yaml(devices))
    cluster = load_cluster(str(path))
    model = ingest_model_cached(MODEL, model_args={"size": "70b"}, seq_len=4096, dtype="bf16")
    costs = cost_provider_for(model=model, chips=cluster.chip_types())
    cpu0, wall0 = time.process_time(), time.perf_counter()

    shown: list[float] = []

    def say(event: SearchProgress) -> None:
        if event.best_s is not None and (not shown or event.best_s < shown[-1]):
            shown.append(event.best_s)
            print(f"  {time.process_time() - cpu0:6.2f} s CPU {time.perf_counter() - wall0:6.2f}"
                  f" s wall  best so far {event.best_s:.4g} s (m={event.micro_batches}, "
                  f"{event.stages} stages), {event.candidates} candidates explored", flush=True)

    print(f"{devices} devices, batch {batch}, --time-limit {time_limit:g}")
    try:
        plan = search_plan(model=model, cluster=cluster,
                           training=TrainingConfig(global_batch=batch, seq_len=4096),
                           search=SearchConfig(time_limit_s=time_limit), costs=costs,
                           progress=say)
    except AutosplitError as exc:
        print(f"  no plan after {time.perf_counter() - wall0:.2f} s wall: {exc}")
        return
    print(f"  returned after {time.process_time() - cpu0:.2f} s CPU, "
          f"{time.perf_counter() - wall0:.2f} s wall: {plan.prediction.iteration_s:.4g} s per "
          f"iteration, stopped by {plan.search.stopped_by}, gap {plan.search.optimality_gap:.1%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="*", default=[4096, 16384])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--time-limit", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.devices:
            trace(n, batch=args.batch, time_limit=args.time_limit, tmp=Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
