"""What ingestion learns about a model: one ``LayerProfile`` per partition unit.

A partition unit is the smallest piece a pipeline stage may own: the modules before the
repeated block list (embedding), each block, and the modules after it (final norm, head, loss).
Per-sample figures are measured at micro-batch 1 and the configured sequence length; the cost
model scales them linearly with the micro-batch size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import cached_property

from autosplit.model.kernel_records import AttentionCall, Gemm, KernelCounts

__all__ = ["LayerProfile", "ModelProfile", "kernels_from_dict", "layer_from_dict"]


@dataclass(frozen=True)
class LayerProfile:
    """One partition unit, per sample (one sequence of ``seq_len`` tokens).

    - ``fwd_flops``/``bwd_flops``: FLOPs of the forward and backward pass.
    - ``fwd_bytes``: activation bytes the forward pass must move through device memory per
      sample (inputs read, outputs and saved tensors written), excluding weights: the
      roofline's memory term is ``param_bytes + micro_batch * fwd_bytes``.
    - ``activation_bytes``: bytes autograd keeps for backward (saved tensors).
    - ``input_bytes``: bytes of the unit's input — what full recomputation keeps instead.
    - ``output_bytes``: bytes crossing a stage boundary placed right after this unit.
    - ``tp_collectives``: all-reduces per forward pass when tensor-parallel (Megatron: 2 per
      transformer block, 1 for a vocab-parallel embedding or head); the backward does as many.
    """

    index: int
    name: str
    kind: str  # "pre" | "block" | "post"
    module_names: tuple[str, ...]
    params: int
    param_bytes: int
    fwd_flops: float
    bwd_flops: float
    fwd_bytes: float
    activation_bytes: float
    input_bytes: float
    output_bytes: float
    tp_collectives: int = 2
    #: Key shared by identical units (same class, same parameter shapes): profiles are
    #: measured once per kind, not once per layer.
    layer_kind: str = ""
    #: The forward's GEMM shapes, fused attention calls and memory-bound kernels per sample
    #: (``autosplit.model.kernels``); empty for a unit described by totals only.
    kernels: KernelCounts = KernelCounts()

    @property
    def recompute_flops(self) -> float:
        """Full recomputation reruns the forward pass before the backward."""
        return self.fwd_flops


@dataclass(frozen=True)
class ModelProfile:
    """The whole model as a sequence of partition units, plus what was measured and how."""

    name: str
    source_file: str
    layers: tuple[LayerProfile, ...]
    seq_len: int
    dtype: str
    #: Tokens one sample contributes to tokens/s (``seq_len`` for language models, 1 otherwise).
    tokens_per_sample: int
    #: Name of the repeated block list the units were cut from (e.g. ``layers``).
    block_list: str
    model_args: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @cached_property
    def first_alike(self) -> tuple[int, ...]:
        """For each unit, the index of the first unit alike: same kind (or, without one, same
        name) and the same per-sample figures and kernels — only position and names differ.
        Alike units cost the same wherever they run, so cost tables price the 80 blocks of a
        Llama-70B once; computed once per profile (hashing the kernel records is not cheap)."""
        first: dict[LayerProfile, int] = {}
        return tuple(first.setdefault(replace(layer, index=0, name=layer.layer_kind or layer.name,
                                              module_names=()), k)
                     for k, layer in enumerate(self.layers))

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def flops_per_sample(self) -> float:
        return sum(layer.fwd_flops + layer.bwd_flops for layer in self.layers)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelProfile:
        """The inverse of ``to_dict`` (the ingestion cache and the ingestion child use it)."""
        data = dict(data)
        layers = tuple(layer_from_dict(d) for d in data.pop("layers"))
        return cls(layers=layers, **data)


def kernels_from_dict(data: dict) -> KernelCounts:
    """The inverse of ``asdict`` for a unit's kernels (cached profiles are JSON)."""
    return KernelCounts(gemms=tuple(Gemm(**g) for g in data.get("gemms", ())),
                        attention=tuple(AttentionCall(**a) for a in data.get("attention", ())),
                        memory_kernels=int(data.get("memory_kernels", 0)),
                        memory_bytes=float(data.get("memory_bytes", 0.0)))


def layer_from_dict(data: dict) -> LayerProfile:
    """A ``LayerProfile`` from its ``asdict`` form."""
    return LayerProfile(**{**data, "module_names": tuple(data["module_names"]),
                           "kernels": kernels_from_dict(data.get("kernels") or {})})
