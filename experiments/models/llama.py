"""Llama-style decoder-only transformer (Touvron et al. 2023, "Llama 2", arXiv 2307.09288).

RMSNorm before attention and MLP, rotary position embeddings (computed once per forward by a
parameter-free ``rotary`` module and passed to every block as keyword inputs; each pipeline
stage recomputes them, see docs/runtime.md), grouped-query
attention (``kv_heads`` key/value heads shared by ``heads // kv_heads`` query heads) through
``F.scaled_dot_product_attention(is_causal=True)``, a SwiGLU MLP, no biases, and an untied
output head.

Parameters: 2·V·h (embedding, head) + h (final norm)
+ L·(2h² + 2·h·kv_heads·h/heads + 3·h·ffn + 2h).

Model args (strings): ``size`` (tiny, 7b, 13b, 70b) and overrides ``layers``, ``hidden``,
``heads``, ``kv_heads``, ``ffn``, ``vocab``. Shapes from Table 1 of the Llama 2 paper and the
released configurations: 7B (32 layers, h 4096, 32 heads, ffn 11008), 13B (40, 5120, 40,
13824), 70B (80, 8192, 64 heads with 8 KV heads, ffn 28672); vocabulary 32000.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SIZES", "Llama", "Block", "build_model", "example_batch", "BLOCKS"]

BLOCKS = "layers"

#: size -> (layers, hidden, heads, kv_heads, ffn, vocab)
SIZES: dict[str, tuple[int, int, int, int, int, int]] = {
    "tiny": (4, 128, 4, 2, 352, 512),
    "7b": (32, 4096, 32, 32, 11008, 32000),
    "13b": (40, 5120, 40, 40, 13824, 32000),
    "70b": (80, 8192, 64, 8, 28672, 32000),
}

_BATCH_VOCAB = 256
_ROPE_BASE = 10000.0


class RMSNorm(nn.Module):
    """x / rms(x) · weight, computed in fp32 like the reference implementation."""

    def __init__(self, hidden: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class Rotary(nn.Module):
    """cos/sin tables for rotary embeddings; no parameters."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        inv_freq = 1.0 / _ROPE_BASE ** (torch.arange(0, head_dim, 2).float() / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.arange(seq_len, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq.float())
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Grouped-query attention with rotary embeddings.

    Head counts are read from the tensors' shapes, so the same code runs on a
    tensor-parallel rank's share of the heads (its slice of wq, wk and wv)."""

    def __init__(self, hidden: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.head_dim = hidden // heads
        self.wq = nn.Linear(hidden, hidden, bias=False)
        self.wk = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if k.shape[1] != q.shape[1]:
            repeat = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(repeat, dim=1)
            v = v.repeat_interleave(repeat, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) · w3 x)."""

    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(hidden, ffn, bias=False)
        self.w3 = nn.Linear(hidden, ffn, bias=False)
        self.w2 = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm block; takes the rotary tables as keyword inputs."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, ffn: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(hidden)
        self.attention = Attention(hidden, heads, kv_heads)
        self.ffn_norm = RMSNorm(hidden)
        self.feed_forward = FeedForward(hidden, ffn)

    def forward(self, x: torch.Tensor, *, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    """Token ids ``(b, s)`` -> logits ``(b, s, vocab)``."""

    def __init__(self, *, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int,
                 vocab: int) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab, hidden)
        self.rotary = Rotary(hidden // heads)
        self.layers = nn.ModuleList(Block(hidden, heads, kv_heads, ffn) for _ in range(layers))
        self.norm = RMSNorm(hidden)
        self.output = nn.Linear(hidden, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok_embeddings(tokens)
        cos, sin = self.rotary(tokens.shape[1], x.dtype)
        for layer in self.layers:
            x = layer(x, cos=cos, sin=sin)
        return self.output(self.norm(x))


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


def build_model(size: str = "7b", layers: str | None = None, hidden: str | None = None,
                heads: str | None = None, kv_heads: str | None = None, ffn: str | None = None,
                vocab: str | None = None) -> Llama:
    """A Llama of a named ``size``; any dimension can be overridden."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    d_layers, d_hidden, d_heads, d_kv, d_ffn, d_vocab = SIZES[size]
    n_hidden = _int_arg("hidden", hidden, d_hidden)
    n_heads = _int_arg("heads", heads, d_heads)
    n_kv = _int_arg("kv_heads", kv_heads, d_kv if heads is None else n_heads)
    if n_hidden % n_heads or n_heads % n_kv or (n_hidden // n_heads) % 2:
        raise ValueError(f"need hidden % heads == 0, heads % kv_heads == 0 and an even head "
                         f"size (hidden {n_hidden}, heads {n_heads}, kv_heads {n_kv})")
    n_vocab = _int_arg("vocab", vocab, d_vocab)
    if n_vocab < _BATCH_VOCAB:
        raise ValueError(f"vocab must be at least {_BATCH_VOCAB}")
    return Llama(layers=_int_arg("layers", layers, d_layers), hidden=n_hidden, heads=n_heads,
                 kv_heads=n_kv, ffn=_int_arg("ffn", ffn, d_ffn), vocab=n_vocab)


def example_batch(batch_size: int, seq_len: int,
                  device: torch.device | str = "cpu") -> tuple[tuple[torch.Tensor], torch.Tensor]:
    """Random token ids and next-token targets, ``(b, seq_len)`` each."""
    tokens = torch.randint(0, _BATCH_VOCAB, (batch_size, seq_len + 1), device=device)
    return (tokens[:, :-1],), tokens[:, 1:]
