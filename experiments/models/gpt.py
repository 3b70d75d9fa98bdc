"""GPT-2/GPT-3 style decoder-only transformer, the reference model for autosplit's planner.

Architecture (Radford et al. 2019; Brown et al. 2020, "Language Models are Few-Shot Learners",
arXiv 2005.14165): learned token and position embeddings, pre-LayerNorm blocks of causal
multi-head attention (``F.scaled_dot_product_attention(is_causal=True)``) and a GELU MLP of
width 4h, a final LayerNorm and an **untied** output head (no bias). Untied so that the first
and last pipeline stages each own their own weights; tying would save V·h parameters.
No dropout: it changes neither FLOPs nor the parameter count, and keeps the example exact.

Parameters: V·h (tokens) + P·h (positions) + L·(12h² + 13h) + 2h (final LN) + V·h (head).

Model args (strings, from ``--model-arg``): ``size`` (tiny, 125m, 350m, 760m, 1.3b, 2.7b,
6.7b, 13b, 30b, 175b) and overrides ``layers``, ``hidden``, ``heads``, ``vocab``,
``positions``; ``attention=explicit`` multiplies the scores out instead of the fused causal
kernel (as Megatron-LM did in the published runs of experiments/fidelity).
Sizes follow Table 2.1 of Brown et al. 2020 with vocab 50257 and 2048
positions. Three departures where the table is inconsistent or silent: for 1.3B it prints
24 heads of 128 with d_model 2048 — 16 heads of 128 are used; for 13B it prints d_model 5140,
which does not divide into its 40 heads of 128 — 5120 is used; 30B is not in that table and
uses OPT-30B's shape (48 layers, 7168 hidden, 56 heads; Zhang et al. 2022, arXiv 2205.01068,
Table 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SIZES", "GPT", "Block", "build_model", "example_batch", "BLOCKS"]

BLOCKS = "blocks"

#: size -> (layers, hidden, heads, vocab, positions)
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (4, 128, 4, 512, 2048),
    "125m": (12, 768, 12, 50257, 2048),
    "350m": (24, 1024, 16, 50257, 2048),
    "760m": (24, 1536, 16, 50257, 2048),
    "1.3b": (24, 2048, 16, 50257, 2048),
    "2.7b": (32, 2560, 32, 50257, 2048),
    "6.7b": (32, 4096, 32, 50257, 2048),
    "13b": (40, 5120, 40, 50257, 2048),
    "30b": (48, 7168, 56, 50257, 2048),
    "175b": (96, 12288, 96, 50257, 2048),
}

#: ``example_batch`` draws token ids below this, so any vocab of at least this size works.
_BATCH_VOCAB = 256


class Attention(nn.Module):
    """Causal multi-head self-attention with a fused QKV projection.

    The fused projection's outputs are laid out head by head (q, k, v of head 0, then of
    head 1, ...), as in Megatron-LM, and the head count is read from the tensor's shape: split
    by output features over tensor-parallel ranks, each rank holds whole heads and the same
    code runs on its share of them."""

    def __init__(self, hidden: int, heads: int, explicit: bool = False) -> None:
        super().__init__()
        self.head_dim = hidden // heads
        self.explicit = explicit
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = self.qkv(x).view(b, s, -1, 3, self.head_dim).unbind(3)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        y = _explicit_attention(q, k, v) if self.explicit else \
            F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, s, -1))


def _explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention as Megatron-LM ran it before fused attention kernels (Shoeybi et al.
    2019; the 2021 and 2022 Selene runs): the full ``s × s`` scores of every head are
    multiplied out (the scale folded into ``q``), masked and soft-maxed in memory, then
    multiplied by ``v`` — the scores' bytes moved by each elementwise step. Megatron-LM fuses
    the scale, mask and softmax into one kernel; here the mask and the softmax are two."""
    s = q.shape[-2]
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
    future = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)
    probs = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    return torch.matmul(probs, v)


class MLP(nn.Module):
    """h -> 4h -> h with GELU."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(hidden, 4 * hidden)
        self.proj = nn.Linear(4 * hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-LN transformer block: 12h² + 13h parameters."""

    def __init__(self, hidden: int, heads: int, explicit_attention: bool = False) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden)
        self.attn = Attention(hidden, heads, explicit_attention)
        self.ln_2 = nn.LayerNorm(hidden)
        self.mlp = MLP(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token ids ``(b, s)`` -> logits ``(b, s, vocab)``."""

    def __init__(self, *, layers: int, hidden: int, heads: int, vocab: int,
                 positions: int, explicit_attention: bool = False) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, hidden)
        self.wpe = nn.Embedding(positions, hidden)
        self.blocks = nn.ModuleList(Block(hidden, heads, explicit_attention)
                                    for _ in range(layers))
        self.ln_f = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        # Checked here because the meta device, where autosplit ingests the model, does not
        # check embedding indices: without it a too-long sequence fails only on a real device.
        if idx.shape[1] > self.wpe.num_embeddings:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds the model's "
                             f"{self.wpe.num_embeddings} positions; use --seq-len "
                             f"{self.wpe.num_embeddings} or less, or -a positions=N")
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _int_arg(name: str, value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"model arg {name}={value!r} is not an integer") from None
    if number < 1:
        raise ValueError(f"model arg {name}={value!r} must be positive")
    return number


def build_model(size: str = "125m", layers: str | None = None, hidden: str | None = None,
                heads: str | None = None, vocab: str | None = None,
                positions: str | None = None, attention: str = "sdpa") -> GPT:
    """A GPT of a named ``size``; any dimension can be overridden. ``attention``: ``sdpa``
    (a fused causal kernel) or ``explicit`` (scores multiplied out, as older Megatron-LM)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    d_layers, d_hidden, d_heads, d_vocab, d_positions = SIZES[size]
    n_hidden = _int_arg("hidden", hidden, d_hidden)
    n_heads = _int_arg("heads", heads, d_heads)
    if n_hidden % n_heads:
        raise ValueError(f"hidden {n_hidden} is not divisible by heads {n_heads}")
    if attention not in ("sdpa", "explicit"):
        raise ValueError(f"model arg attention={attention!r}: choose sdpa or explicit")
    n_vocab = _int_arg("vocab", vocab, d_vocab)
    if n_vocab < _BATCH_VOCAB:
        raise ValueError(f"vocab must be at least {_BATCH_VOCAB}")
    return GPT(layers=_int_arg("layers", layers, d_layers), hidden=n_hidden, heads=n_heads,
               vocab=n_vocab, positions=_int_arg("positions", positions, d_positions),
               explicit_attention=attention == "explicit")


def example_batch(batch_size: int, seq_len: int,
                  device: torch.device | str = "cpu") -> tuple[tuple[torch.Tensor], torch.Tensor]:
    """Random token ids and next-token targets, ``(b, seq_len)`` each."""
    tokens = torch.randint(0, _BATCH_VOCAB, (batch_size, seq_len + 1), device=device)
    return (tokens[:, :-1],), tokens[:, 1:]
