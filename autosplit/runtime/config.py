"""What every rank of a run needs to know, in one serialisable record.

The launcher checks the plan once, resolves the options (devices, backend, relay) and hands
each rank the same ``RunConfig`` as a JSON file, so ranks started by our launcher and ranks
started by ``torchrun`` behave identically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

__all__ = ["RunConfig", "DEFAULT_LR", "DEFAULT_GRAD_CLIP"]


@dataclass(frozen=True)
class RunConfig:
    """A checked run: the plan and model to load, and how to execute them."""

    plan_path: str
    model_path: str
    model_args: dict[str, str]
    steps: int
    warmup: int
    device: str  # "cpu" | "cuda"
    backend: str  # "gloo" | "nccl"
    #: Stage boundaries go through host memory over gloo while stages compute on GPUs.
    cpu_relay: bool
    #: CUDA device index per rank (empty: the CPU, or LOCAL_RANK under torchrun).
    cuda_devices: tuple[int, ...]
    #: Extra environment per rank (e.g. CUDA MPS thread percentages), applied before CUDA.
    rank_env: dict[int, dict[str, str]] = field(default_factory=dict)
    seed: int = 0
    output: str = ""
    #: Where each rank saves its parameters after the last step (tests); empty: don't.
    dump_params_dir: str = ""
    #: Compute dtype override ("fp32" on the CPU, else the plan's dtype).
    dtype: str = "bf16"
    #: Restrict scaled-dot-product attention to one backend ("" = PyTorch's choice).
    attention_backend: str = ""
    #: bf16/fp16 runs: "master" (weights and gradients in the dtype, fp32 masters in the
    #: optimizer) or "autocast" (fp32 weights, forward under autocast). fp32 runs ignore it.
    precision: str = "master"
    #: AdamW learning rate. The default is the scale GPT-3 trained its 1.3B-2.7B models at
    #: (2e-4, 1.6e-4); 1e-3 made a 2.7B model diverge within a few steps.
    lr: float = 1e-4
    #: Clip the gradients to this global L2 norm (over every stage), as Megatron-LM does by
    #: default; 0 turns clipping off.
    grad_clip: float = 1.0
    #: Tensor-parallel style of every split module (``tensor_parallel.TP_STYLES``), decided
    #: once by the launcher for the stages with tp > 1.
    tp_styles: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        d = asdict(self)
        d["rank_env"] = {str(k): v for k, v in self.rank_env.items()}
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        d = json.loads(text)
        d["cuda_devices"] = tuple(d["cuda_devices"])
        d["rank_env"] = {int(k): v for k, v in d["rank_env"].items()}
        return cls(**d)


#: The learning rate and clipping norm a run uses unless told otherwise (one place for the
#: command line, the ranks and the single-process references of the tests).
DEFAULT_LR: float = RunConfig.lr
DEFAULT_GRAD_CLIP: float = RunConfig.grad_clip
