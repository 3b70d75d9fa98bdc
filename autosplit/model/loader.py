"""Load a user's ``model.py`` and build it on the meta device.

The convention (documented in README.md, "Model files"):

- ``build_model(**model_args) -> torch.nn.Module`` — required. ``model_args`` come from the
  CLI (``--model-arg size=70b``) as strings; the file converts them.
- ``example_batch(batch_size: int, seq_len: int, device) -> (inputs, targets)`` — required.
  ``inputs`` is a tuple of positional arguments for ``model.forward``.
- ``loss_fn(outputs, targets) -> Tensor`` — optional; defaults to cross-entropy over the last
  dimension.
- ``BLOCKS = "layers"`` — optional; the attribute path of the repeated block list. Without it,
  the largest ``nn.ModuleList``/``nn.Sequential`` of same-class children is used.
- ``TOKENS_PER_SAMPLE`` — optional; tokens one sample counts for in tokens/s (default: the
  sequence length; set 1 for non-sequence models).

Everything here raises ``BadInputError`` naming the file and the fix, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["ModelSource", "Partition", "load_model_source", "build_on_meta", "find_partition"]


@dataclass
class ModelSource:
    """A loaded model file and its entry points."""

    path: str
    name: str
    build_model: Callable[..., Any]
    example_batch: Callable[..., Any]
    loss_fn: Callable[..., Any] | None
    blocks_attr: str | None
    tokens_per_sample: int | None
    model_args: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Partition:
    """How the model is cut into partition units.

    ``pre`` and ``post`` are the fully qualified names of the top-level modules that run
    before and after the block list; ``blocks`` the names of the blocks (``layers.0`` …).
    Unit 0 is ``pre`` (if non-empty), then one unit per block, then ``post`` (if non-empty).
    """

    block_list: str
    pre: tuple[str, ...]
    blocks: tuple[str, ...]
    post: tuple[str, ...]

    def unit_modules(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """``(unit name, kind, module names)`` for every unit, in execution order."""
        units: list[tuple[str, str, tuple[str, ...]]] = []
        if self.pre:
            units.append(("pre", "pre", self.pre))
        units.extend((b, "block", (b,)) for b in self.blocks)
        if self.post:
            units.append(("post", "post", self.post))
        return units


def load_model_source(path: str, model_args: dict[str, str] | None = None) -> ModelSource:
    """Import ``path`` as a module and check it follows the convention."""
    raise NotImplementedError


def build_on_meta(source: ModelSource) -> Any:
    """Build the model with every parameter on the meta device (no memory, seconds for 70B)."""
    raise NotImplementedError


def find_partition(model: Any, blocks_attr: str | None = None) -> Partition:
    """Find the repeated block list and what runs before and after it."""
    raise NotImplementedError
