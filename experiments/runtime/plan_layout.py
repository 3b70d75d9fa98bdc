"""Check that a searched plan has the layout an experiment asks for, before it is run.

run_h200x2.sh searches each of its plans on a cluster and with options that leave one layout
(a two-stage pipeline of the two chips, one stage of TP = 2, one stage of DP = 2 with a replica
on each chip); a plan of another shape would make its table compare the wrong thing, so the
script stops instead. tests/test_runtime_two_chip.py checks the same.

    python3 experiments/runtime/plan_layout.py PLAN.json pipeline|tp2|dp2

prints the layout and exits 0 when it is the one named, 3 when it is not, 2 when the plan
cannot be read.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KINDS", "StageShape", "layout_problem", "read_shapes"]


@dataclass(frozen=True)
class StageShape:
    """What decides a stage's layout: its degree of TP and its replicas' chips."""

    tp: int
    chips: tuple[str, ...]


def read_shapes(path: Path) -> list[StageShape]:
    """The stages of a plan file; ValueError naming the file when it is not a plan."""
    try:
        stages = json.loads(path.read_text())["stages"]
        return [StageShape(int(s["tp"]), tuple(r.get("chip") or s["chip"]
                                               for r in s["replicas"])) for s in stages]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a plan file ({exc})") from None


def _pipeline(shapes: list[StageShape]) -> str | None:
    if len(shapes) != 2 or any(s.tp != 1 or len(s.chips) != 1 for s in shapes):
        return "a pipeline of two one-device stages"
    if shapes[0].chips == shapes[1].chips:
        return "two stages on different chips"
    return None


def _tp2(shapes: list[StageShape]) -> str | None:
    ok = len(shapes) == 1 and shapes[0].tp == 2 and len(shapes[0].chips) == 1
    return None if ok else "one stage of TP = 2"


def _dp2(shapes: list[StageShape]) -> str | None:
    ok = (len(shapes) == 1 and shapes[0].tp == 1 and len(shapes[0].chips) == 2
          and len(set(shapes[0].chips)) == 2)
    return None if ok else "one stage of DP = 2, a replica on each chip"


KINDS = {"pipeline": _pipeline, "tp2": _tp2, "dp2": _dp2}


def layout_problem(shapes: list[StageShape], kind: str) -> str | None:
    """None when ``shapes`` is the layout ``kind``, else what was expected."""
    expected = KINDS[kind](shapes)
    if expected is None:
        return None
    found = " | ".join(f"tp {s.tp} on {'+'.join(s.chips)}" for s in shapes)
    return f"expected {expected}, the plan has: {found}"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in KINDS:
        print(f"usage: plan_layout.py PLAN.json {'|'.join(KINDS)}", file=sys.stderr)
        return 2
    try:
        shapes = read_shapes(Path(argv[0]))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problem = layout_problem(shapes, argv[1])
    if problem:
        print(f"STOP: {argv[0]}: {problem}", file=sys.stderr)
        return 3
    print(f"{argv[0]}: " + " | ".join(f"tp {s.tp} on {'+'.join(s.chips)}" for s in shapes))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
