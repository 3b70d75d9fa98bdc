"""Compare a benchmark run with the committed baseline: has plan quality or search time
regressed?

Plan quality is compared directly: a case fails when its predicted iteration time is more
than ``PLAN_TOLERANCE`` (1 %) above the baseline's, or when it no longer finds a plan.
Search time is compared as a ratio to the suite's reference case measured in the same run
(``time_ratio = case search CPU time / reference search CPU time``), so a slower or busier
machine does not fail the check but a search that became slower relative to the rest does: a
case fails when its ratio exceeds ``TIME_FACTOR`` (2×) times the baseline's ratio. A ratio
is only as steady as both of its terms: when the case's or the reference's search took less
than ``TIME_FLOOR_S`` of CPU in this run (imports, first-call warm-up and scheduler noise
dominate there), the case is not time-checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from autosplit.errors import BadInputError
from autosplit.inputs.files import check_input_file

__all__ = ["EXIT_REGRESSION", "PLAN_TOLERANCE", "TIME_FACTOR", "TIME_FLOOR_S", "Finding",
           "compare", "read_baseline"]

#: Exit code of ``autosplit bench --check`` when a case regressed.
EXIT_REGRESSION = 5
PLAN_TOLERANCE = 0.01
TIME_FACTOR = 2.0
TIME_FLOOR_S = 0.5

_REQUIRED = ("name", "iteration_s", "search_cpu_s", "time_ratio")


@dataclass(frozen=True)
class Finding:
    """One line of the check's verdict; ``failed`` findings make the check fail."""

    case: str
    what: str  # "plan", "time", "missing", "new", "improved", "error"
    message: str
    failed: bool


def read_baseline(path: str | Path) -> pd.DataFrame:
    """Load a baseline CSV written by ``autosplit bench -o`` / ``--update``."""
    file = str(path)
    if not Path(path).exists():
        raise BadInputError("baseline file not found", file=file,
                            fix="create it with `autosplit bench SUITE --check FILE --update`")
    check_input_file(path, what="baseline CSV")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BadInputError(f"not a CSV table: {exc}", file=file,
                            fix="regenerate it with `autosplit bench SUITE --check FILE "
                                "--update`") from None
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise BadInputError(f"missing column(s) {', '.join(missing)}", file=file,
                            fix="regenerate it with `autosplit bench SUITE --check FILE "
                                "--update`")
    if df["name"].duplicated().any():
        dup = df["name"][df["name"].duplicated()].iloc[0]
        raise BadInputError(f"case {dup!r} appears twice", file=file,
                            fix="keep one row per case")
    return df


def compare(current: pd.DataFrame, baseline: pd.DataFrame) -> list[Finding]:
    """Every difference worth reporting, failures first, then by case name."""
    base = {str(r["name"]): r for _, r in baseline.iterrows()}
    seen: set[str] = set()
    out: list[Finding] = []
    for _, row in current.iterrows():
        name = str(row["name"])
        seen.add(name)
        if name not in base:
            out.append(Finding(name, "new", "not in the baseline (run --update to add it)",
                               failed=False))
            continue
        out.extend(_compare_row(name, row, base[name]))
    for name in base:
        if name not in seen:
            out.append(Finding(name, "missing", "in the baseline but not run", failed=False))
    return sorted(out, key=lambda f: (not f.failed, f.case, f.what))


def _num(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _compare_row(name: str, row: pd.Series, ref: pd.Series) -> list[Finding]:
    out: list[Finding] = []
    now, was = _num(row["iteration_s"]), _num(ref["iteration_s"])
    if math.isfinite(was) and not math.isfinite(now):
        err = row.get("error", "")
        msg = err if isinstance(err, str) and err else "no plan"
        return [Finding(name, "error", f"found a plan before ({was:.4g} s), now: {msg}",
                        failed=True)]
    if math.isfinite(was) and math.isfinite(now):
        change = now / was - 1.0
        if change > PLAN_TOLERANCE:
            out.append(Finding(name, "plan", f"predicted iteration {now:.4g} s vs {was:.4g} s "
                               f"in the baseline (+{change:.1%}, limit +{PLAN_TOLERANCE:.0%})",
                               failed=True))
        elif change < -PLAN_TOLERANCE:
            out.append(Finding(name, "improved", f"predicted iteration {now:.4g} s vs "
                               f"{was:.4g} s ({change:.1%}); run --update to keep it",
                               failed=False))
    r_now, r_was = _num(row["time_ratio"]), _num(ref["time_ratio"])
    t_now = _num(row["search_cpu_s"])
    t_ref = t_now / r_now if r_now > 0 else math.nan  # the reference case's time this run
    if (math.isfinite(r_now) and math.isfinite(r_was) and r_was > 0
            and min(t_now, t_ref) >= TIME_FLOOR_S and r_now > TIME_FACTOR * r_was):
        out.append(Finding(name, "time", f"search time is {r_now:.2f}× the reference case's, "
                           f"{r_now / r_was:.1f}× the baseline's {r_was:.2f}× "
                           f"(limit {TIME_FACTOR:.0f}×)", failed=True))
    return out
