"""Hand a plan to the runtimes people already use: Megatron-LM, torchtitan, DeepSpeed and
Kubernetes (HAMi).

One module per target renders the plan in that runtime's terms; ``expressible`` says what a
runtime cannot express (it takes one TP and one DP size for every stage) and projects a plan to
the nearest one it can; ``naming`` renames the ingested model's modules to the runtime's.
"""

from __future__ import annotations

__all__ = ["TARGETS"]

#: Targets ``autosplit export --to`` accepts, in the order the docs list them.
TARGETS: tuple[str, ...] = ("megatron", "torchtitan", "deepspeed", "kubernetes")
