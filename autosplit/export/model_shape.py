"""The transformer shape a runtime's own model needs, read from the user's model.

A plan records how the model is cut, not what it is: Megatron-LM builds its own GPT/Llama and
needs ``--hidden-size``, ``--num-attention-heads``, ``--ffn-hidden-size``, the query groups of
grouped-query attention and the architecture switches (SwiGLU, RMSNorm, rotary or learned
positions, biases, tied head); torchtitan ships its own Llama 3 whose modules are called
``tok_embeddings``, ``layers.N``, ``norm`` and ``lm_head``. Both are read here from the model
file the plan was made from, built on the meta device (no memory), so the export never asks the
user to repeat what the model file already says.

What is read, from the modules themselves rather than their names:

- the token embedding: among the ``nn.Embedding`` modules before the blocks, the one with as
  many rows as the head has outputs (else the largest): vocabulary and hidden size; a second
  embedding there is a learned position table;
- the attention of the first block: the submodule with a ``head_dim`` (or a head-count)
  attribute; its projections give the key/value heads
  (``(q + k + v − hidden) / (2 · head_dim)``, which is the head count for a fused QKV);
- the MLP: the block's linears outside the attention (two ``hidden → ffn`` and one
  ``ffn → hidden``: gated, SwiGLU; one each way: GELU);
- norms: ``nn.LayerNorm`` or a weight-only norm (RMSNorm); biases on any block linear;
- the head: the linear after the blocks that maps ``hidden → vocab``, tied when it shares the
  embedding's weight.

A model that does not look like a decoder-only transformer (no token embedding, no attention
with a head size) raises ``BadInputError`` naming what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from autosplit.errors import BadInputError

if TYPE_CHECKING:  # torch is imported where a model is read, not when the CLI starts
    from torch import nn

__all__ = ["ModelShape", "infer_model_shape", "load_model_shape"]

_HEAD_COUNT_ATTRS = ("n_heads", "num_heads", "heads", "n_head", "num_attention_heads")


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer as Megatron-LM and torchtitan describe one."""

    num_layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    #: Rows of a learned position table; 0 when positions are rotary (no table).
    positions: int
    gated_mlp: bool
    rms_norm: bool
    bias: bool
    tied_head: bool
    #: Module name (as in the plan) → its role: ``embedding``, ``positions``, ``norm``,
    #: ``head``, or ``none`` for a module without parameters (e.g. a rotary table).
    roles: dict[str, str] = field(default_factory=dict)

    @property
    def is_llama(self) -> bool:
        """Llama's architecture: SwiGLU, RMSNorm, rotary positions, no biases, own head."""
        return self.gated_mlp and self.rms_norm and not self.positions and not self.bias \
            and not self.tied_head


def load_model_shape(path: str, model_args: dict[str, str], *, block_list: str) -> ModelShape:
    """Build the model file on the meta device and read its shape."""
    from autosplit.model.loader import build_on_meta, load_model_source

    source = load_model_source(path, model_args)
    model = build_on_meta(source)
    return infer_model_shape(model, block_list=block_list, source=path)


def infer_model_shape(model: nn.Module, *, block_list: str, source: str = "") -> ModelShape:
    """The shape of a built model whose blocks are the ``nn.ModuleList`` at ``block_list``."""
    from torch import nn
    file = source or None
    try:
        blocks = model.get_submodule(block_list)
    except AttributeError:
        blocks = None
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise BadInputError(f"the model has no block list '{block_list}'", file=file,
                            field="model.block_list",
                            fix="export the plan with the model file it was searched with "
                                "(--model PATH)")
    top = _outer_modules(model, block_list)
    found = _embeddings(top, block_list)
    if not found:
        raise BadInputError("no token embedding (an nn.Embedding before the blocks) was found",
                            file=file, fix="Megatron-LM and torchtitan exports are for "
                                           "decoder-only language models")
    hidden = found[0][1].embedding_dim
    head_out = _head(top, block_list, hidden, None)
    vocab_rows = head_out[1].out_features if head_out else None
    # the token table is the one with as many rows as the head has outputs (a position
    # table may be larger: GPT-tiny has 512 tokens and 2048 positions), else the largest
    ranked = sorted(found, key=lambda nm: (nm[1].num_embeddings != vocab_rows,
                                           -nm[1].num_embeddings))
    emb_name, emb = ranked[0]
    extra = ranked[1] if len(ranked) > 1 else None
    vocab = emb.num_embeddings
    block = blocks[0]
    attention = _attention(block)
    if attention is None:
        raise BadInputError("the first block has no attention module with a head size "
                            f"(an attribute {' or '.join(('head_dim',) + _HEAD_COUNT_ATTRS)})",
                            file=file, field=f"{block_list}.0",
                            fix="give the attention module a `head_dim` attribute")
    att_name, att = attention
    head_dim, heads = _heads(att, hidden)
    att_linears = [m for m in att.modules() if isinstance(m, nn.Linear)]
    qkv = sum(m.out_features for m in att_linears if m.in_features == hidden) - hidden
    kv_heads = max(1, (qkv - hidden) // (2 * head_dim)) if qkv > hidden else heads
    ffn, gated = _mlp(block, att_name, hidden)
    head = _head(top, block_list, hidden, vocab)
    roles = _roles(top, block_list, emb_name, extra, head)
    norms = [m for m in block.modules() if _is_norm(m)]
    return ModelShape(
        num_layers=len(blocks), hidden=hidden, heads=heads, kv_heads=kv_heads, ffn=ffn,
        vocab=vocab, positions=extra[1].num_embeddings if extra else 0, gated_mlp=gated,
        rms_norm=bool(norms) and not any(isinstance(m, nn.LayerNorm) for m in norms),
        bias=any(m.bias is not None for m in block.modules() if isinstance(m, nn.Linear)),
        tied_head=head is not None and head[1].weight is emb.weight, roles=roles)


# ---- pieces -------------------------------------------------------------------------------


def _outer_modules(model: nn.Module, block_list: str) -> list[tuple[str, nn.Module]]:
    """Modules beside the block list and beside each of its parents (``transformer.wte``),
    in registration order with each parent's modules in its place; the block list itself is
    kept as a marker."""
    head, _, rest = block_list.partition(".")
    out: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if name != head or not rest:
            out.append((name, child))
        else:
            out += [(f"{name}.{n}", m) for n, m in _outer_modules(child, rest)]
    return out


def _embeddings(top: list[tuple[str, nn.Module]], block_list: str
                ) -> list[tuple[str, nn.Embedding]]:
    """The embeddings among the modules before the blocks, in order."""
    from torch import nn
    before: list[tuple[str, nn.Embedding]] = []
    for name, module in top:
        if name == block_list:
            break
        before += [(f"{name}.{n}" if n else name, m) for n, m in module.named_modules()
                   if isinstance(m, nn.Embedding)]
    return before


def _attention(block: nn.Module) -> tuple[str, nn.Module] | None:
    for name, module in block.named_modules():
        if name and any(isinstance(getattr(module, a, None), int)
                        for a in ("head_dim", *_HEAD_COUNT_ATTRS)):
            return name, module
    return None


def _heads(att: nn.Module, hidden: int) -> tuple[int, int]:
    head_dim = getattr(att, "head_dim", None)
    if isinstance(head_dim, int) and head_dim > 0:
        return head_dim, hidden // head_dim
    count = next(getattr(att, a) for a in _HEAD_COUNT_ATTRS if isinstance(getattr(att, a, None),
                                                                           int))
    return hidden // count, count


def _mlp(block: nn.Module, att_name: str, hidden: int) -> tuple[int, bool]:
    from torch import nn
    linears = [m for n, m in block.named_modules() if isinstance(m, nn.Linear)
               and not (n == att_name or n.startswith(att_name + "."))]
    up = [m.out_features for m in linears if m.in_features == hidden and m.out_features != hidden]
    down = [m.in_features for m in linears if m.out_features == hidden and m.in_features != hidden]
    if not down:
        return 4 * hidden, False
    ffn = down[0]
    return ffn, up.count(ffn) >= 2


def _head(top: list[tuple[str, nn.Module]], block_list: str, hidden: int, vocab: int | None
          ) -> tuple[str, nn.Linear] | None:
    """The first linear after the blocks mapping ``hidden`` to ``vocab`` (any width if None)."""
    from torch import nn
    after = False
    for name, module in top:
        if name == block_list:
            after = True
            continue
        if after:
            for n, m in module.named_modules():
                if isinstance(m, nn.Linear) and m.in_features == hidden \
                        and vocab in (None, m.out_features):
                    return (f"{name}.{n}" if n else name), m
    return None


def _roles(top: list[tuple[str, nn.Module]], block_list: str, emb_name: str,
           extra: tuple[str, nn.Embedding] | None, head: tuple[str, nn.Linear] | None
           ) -> dict[str, str]:
    roles: dict[str, str] = {}
    for name, module in top:
        if name == block_list:
            continue
        if name == emb_name:
            roles[name] = "embedding"
        elif extra is not None and name == extra[0]:
            roles[name] = "positions"
        elif head is not None and name == head[0]:
            roles[name] = "head"
        elif _is_norm(module):
            roles[name] = "norm"
        elif not any(True for _ in module.parameters()):
            roles[name] = "none"
        else:
            roles[name] = "other"
    return roles


def _is_norm(module: nn.Module) -> bool:
    """LayerNorm, or a module whose only parameters are one 1-D weight (and bias)."""
    import torch
    from torch import nn
    if isinstance(module, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))):
        return True
    params = dict(module.named_parameters(recurse=False))
    return bool(params) and set(params) <= {"weight", "bias"} and not list(module.children()) \
        and all(isinstance(p, torch.Tensor) and p.dim() == 1 for p in params.values())
