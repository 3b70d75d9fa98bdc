"""One training step of one rank: its stages' passes in the schedule's order, and the
messages that join them to the neighbouring stages.

One executor runs every plan the search makes. A plan whose stages have different
data-parallel or tensor-parallel degrees, or whose replicas take different batch shares on
different stages, needs a rank to exchange each micro-batch's activations with several
ranks of the next stage (``layout``: rows by range); ``torch.distributed.pipelining``'s stages
assume one peer per neighbouring stage. So the executor follows the per-rank order of passes
that the plan's schedule gives (``autosplit.cost.schedule``, the same object the cost model
prices) and does its own point-to-point messages with ``torch.distributed``'s public
``batch_isend_irecv``.

A rank may hold several stages (model chunks: interleaved 1F1B, interleaved zero bubble,
ZBV); each pass names its stage. Where two consecutive stages sit on the same rank (ZBV's turn
at the last rank, or every boundary of a one-rank pipeline) the activation and its gradient
are handed over in memory instead of sent.

Messages are grouped as ``torch.distributed.pipelining`` groups them: after each pass, one
batch holds the sends of that pass's results and the receives the next pass needs (a rank
waits on a receive only when its pass starts). With NCCL a batch is one NCCL group and the
groups of a rank run in order, so this order must never deadlock; ``comm_program`` builds each
rank's sequence of batches from the order alone, and the tests replay those sequences under
that rule for every schedule, stage count and micro-batch count they try. Every message
carries a tag (micro-batch, boundary, direction, tensor), so gloo matches them whatever the
order.

A split-backward schedule (ZB-H1, interleaved zero bubble, ZBV) runs the backward as two
passes. B computes only the gradient of the stage's inputs, which the previous stage waits
for (``torch.autograd.grad`` with respect to the received inputs, keeping the graph); W later
computes the parameters' gradients from the same output gradients (``torch.autograd.backward``
restricted to the parameters), which frees the graph. W walks the chunk's graph again up to
each parameter, so it repeats part of B's work; ``torch.distributed.pipelining`` avoids that by
keeping the gradients at the parameters' consumers from B, which this executor does not do
yet. The result is the same gradients as one backward.

Each forward keeps what its backward needs and nothing more: the received inputs (autograd
leaves) and the outputs it sent, or on the last stage only the loss — the logits are freed as
soon as the loss has been computed from them, unless autograd saved them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist

from autosplit.protocols.schedule import Pass
from autosplit.runtime.boundaries import StageIO
from autosplit.runtime.layout import Route, RunLayout
from autosplit.runtime.stage_builder import StageModule

__all__ = ["Message", "CommBatch", "Chunk", "pass_rounds", "comm_program", "StageExecutor"]

#: Tags per (micro-batch, boundary, direction): one per boundary tensor.
_TAGS_PER_MESSAGE = 64

#: A boundary's direction: activations go forward, their gradients back.
Direction = Literal["act", "grad"]


@dataclass(frozen=True)
class Message:
    """One message of a step: ``kind`` "act" goes forward, "grad" goes back, across the
    boundary between stage ``boundary`` and stage ``boundary + 1``."""

    kind: Direction
    micro_batch: int
    peer: int
    route: Route
    boundary: int = 0


@dataclass(frozen=True)
class CommBatch:
    """What a rank posts at once, before a pass: the previous pass's sends and this pass's
    receives."""

    sends: tuple[Message, ...]
    recvs: tuple[Message, ...]


def _messages(kind: Direction, boundary: int, micro_batch: int,
              routes: Sequence[Route]) -> tuple[Message, ...]:
    return tuple(Message(kind, micro_batch, r.peer, r, boundary) for r in routes)


def _tag(m: Message, num_stages: int, index: int) -> int:
    """A tag unique per (micro-batch, boundary, direction, tensor): a rank holding several
    chunks exchanges several boundaries' tensors of one micro-batch with the same peer."""
    slot = (m.micro_batch * num_stages + m.boundary) * 2 + (m.kind == "grad")
    return slot * _TAGS_PER_MESSAGE + index


def pass_rounds(orders: Sequence[Sequence[Pass]]) -> list[list[int]]:
    """The round in which each pass of each pipeline position runs when every position runs
    its next pass as soon as the pass of another position it takes its input from (the
    previous stage's forward, the next stage's input gradient) ran in an earlier round.

    The rounds order the step's messages in one way that every rank agrees on (see
    ``comm_program``); an order whose positions wait on each other is refused."""
    num_stages = 1 + max((p.stage for order in orders for p in order), default=0)
    done: set[tuple[str, int, int]] = set()
    at = [0] * len(orders)
    rounds: list[list[int]] = [[] for _ in orders]
    t = 0
    while any(at[q] < len(order) for q, order in enumerate(orders)):
        ready = [q for q, order in enumerate(orders) if at[q] < len(order)
                 and _needs(order[at[q]], num_stages) in done | {None}]
        if not ready:
            stuck = {q: orders[q][at[q]] for q in range(len(orders)) if at[q] < len(orders[q])}
            raise ValueError(f"the schedule's orders wait on each other (next passes {stuck})")
        for q in ready:
            p = orders[q][at[q]]
            done.add((p.kind, p.stage, p.micro_batch))
            rounds[q].append(t)
            at[q] += 1
        t += 1
    return rounds


def _needs(p: Pass, num_stages: int) -> tuple[str, int, int] | None:
    """The pass whose result ``p`` takes in: the previous stage's forward for a forward,
    the next stage's backward for a backward (none at the ends, none for a W pass)."""
    if p.kind == "F" and p.stage > 0:
        return ("F", p.stage - 1, p.micro_batch)
    if p.kind == "B" and p.stage < num_stages - 1:
        return ("B", p.stage + 1, p.micro_batch)
    return None


def comm_program(orders: Sequence[Sequence[Pass]], *, layout: RunLayout,
                 rank: int) -> list[CommBatch]:
    """The batches ``rank`` posts: batch *k* before its pass *k*, and a last one after its
    last pass. ``orders``: every pipeline position's passes (the schedule's order).

    Gloo and NCCL both carry one rank pair's messages in the order they are posted, so two
    ranks must post the messages they exchange in the same order, whatever else they do in
    between. Every message is given the round of the pass that produces it
    (``pass_rounds``) and all ranks post their messages in (round, direction, boundary,
    micro-batch, sender, receiver) order: a send right after the pass that makes its
    tensors, a receive as soon as every earlier message of the rank is posted, always before
    the pass that needs it. Then the earliest unfinished message has both ends posted, so the
    step cannot deadlock. A boundary between two stages of this rank sends nothing
    (``RunLayout.is_local``); W passes neither send nor receive."""
    position = layout.position_of(rank)
    rounds = pass_rounds(orders)
    produced = {(p.kind, p.stage, p.micro_batch): t
                for order, ts in zip(orders, rounds, strict=True)
                for p, t in zip(order, ts, strict=True)}
    num_stages = len(layout.stages)
    timed: list[tuple[tuple[int, ...], Message, bool]] = []
    mine = orders[position]
    for p, t in zip(mine, rounds[position], strict=True):
        for m in _sends(p, layout, rank):
            timed.append((_order_key(t, m, rank, m.peer), m, True))
        need = _needs(p, num_stages)
        if need is not None:
            for m in _recvs(p, layout, rank):
                timed.append((_order_key(produced[need], m, m.peer, rank), m, False))
    timed.sort(key=lambda x: x[0])
    batches: list[CommBatch] = []
    k = 0
    for t in [*rounds[position], sys.maxsize]:
        # Before the pass of round t: every message of an earlier round not yet posted (the
        # previous pass's sends, and receives whose tensors are made before round t).
        group = []
        while k < len(timed) and timed[k][0][0] < t:
            group.append(timed[k])
            k += 1
        batches.append(CommBatch(tuple(m for _, m, out in group if out),
                                 tuple(m for _, m, out in group if not out)))
    return batches


def _order_key(t: int, m: Message, sender: int, receiver: int) -> tuple[int, ...]:
    return (t, m.kind == "grad", m.boundary, m.micro_batch, sender, receiver)


def _recvs(p: Pass, layout: RunLayout, rank: int) -> tuple[Message, ...]:
    if p.kind == "F" and not layout.is_local(p.stage, -1):
        return _messages("act", p.stage - 1, p.micro_batch,
                         layout.activation_recvs(rank, p.stage))
    if p.kind == "B" and not layout.is_local(p.stage, +1):
        return _messages("grad", p.stage, p.micro_batch, layout.gradient_recvs(rank, p.stage))
    return ()


def _sends(p: Pass, layout: RunLayout, rank: int) -> tuple[Message, ...]:
    if p.kind == "F" and not layout.is_local(p.stage, +1):
        return _messages("act", p.stage, p.micro_batch, layout.activation_sends(rank, p.stage))
    if p.kind == "B" and not layout.is_local(p.stage, -1):
        return _messages("grad", p.stage - 1, p.micro_batch,
                         layout.gradient_sends(rank, p.stage))
    return ()


@dataclass(frozen=True)
class Chunk:
    """One stage a rank runs: its module and the shapes at its boundaries (``io``, at this
    rank's rows)."""

    stage: int
    module: StageModule
    io: StageIO


@dataclass
class _Held:
    """What a forward keeps for its backward."""

    leaves: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]
    loss: torch.Tensor | None


@dataclass
class _WeightWork:
    """What a B pass of a split backward leaves for its W pass: the roots of the chunk's
    graph, their gradients, and the forward's tensors (kept alive until W)."""

    roots: tuple[torch.Tensor, ...]
    grads: tuple[torch.Tensor, ...] | None
    held: _Held


class _Once:
    """A posted work that is waited on at most once. Every receive of a batch waits on the
    batch's works, so a work can be asked twice; gloo's point-to-point work waits for a new
    message each time (a second wait on a completed receive blocks for good)."""

    __slots__ = ("_work", "_done")

    def __init__(self, work: Any) -> None:
        self._work = work
        self._done = False

    def wait(self) -> None:
        if not self._done:
            self._work.wait()
            self._done = True

    def is_completed(self) -> bool:
        return self._done or bool(self._work.is_completed())


#: (direction, boundary, micro-batch): the key of one boundary crossing.
_Key = tuple[str, int, int]
#: Received tensors of one crossing, and the works that fill them.
_Incoming = tuple[tuple[torch.Tensor, ...], list[Any]]


@dataclass
class _Step:
    """One step's state on a rank."""

    held: dict[tuple[int, int], _Held] = field(default_factory=dict)
    weights: dict[tuple[int, int], _WeightWork] = field(default_factory=dict)
    #: Results of a pass waiting for the batch that sends them.
    outgoing: dict[_Key, tuple[torch.Tensor, ...]] = field(default_factory=dict)
    incoming: dict[_Key, _Incoming] = field(default_factory=dict)
    #: Crossings between two chunks of this rank, handed over in memory.
    local: dict[_Key, tuple[torch.Tensor, ...]] = field(default_factory=dict)
    #: Posted sends and their tensors, kept alive until the sends complete.
    pending: list[tuple[list[Any], tuple[torch.Tensor, ...]]] = field(default_factory=list)
    losses: dict[int, torch.Tensor] = field(default_factory=dict)


class StageExecutor:
    """Runs one rank's passes of a step.

    ``chunks`` are the stages this rank runs (one, or several under a virtual-stage
    schedule), ``orders`` every pipeline position's passes (this rank runs its position's and
    orders its messages by all of them, see ``comm_program``); messages travel as tensors on
    ``comm_device`` (the host with the CPU relay), compute happens on the stages' device.
    ``loss_fn(outputs, targets)`` is the last stage's loss; ``loss_scale`` multiplies it
    for the backward only (this replica's share of the micro-batch, over the micro-batch
    count, times an fp16 loss scale), so that summing
    gradients over replicas and micro-batches gives the gradient of the step's mean loss.
    ``split_backward``: B passes compute input gradients only and W passes the weight
    gradients (the order then holds W passes). ``wrap`` times the stages' own work
    (forward, loss, backward).
    """

    def __init__(self, chunks: Sequence[Chunk], *, orders: Sequence[Sequence[Pass]],
                 layout: RunLayout, rank: int, comm_device: torch.device,
                 loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None,
                 split_backward: bool = False,
                 wrap: Callable[[Callable[..., Any]], Callable[..., Any]] = lambda f: f) -> None:
        self.chunks = {c.stage: c for c in chunks}
        self.order = list(orders[layout.position_of(rank)])
        missing = sorted({p.stage for p in self.order} - set(self.chunks))
        if missing:
            raise ValueError(f"rank {rank} has passes of stage(s) {missing} it does not hold")
        self.layout = layout
        self.program = comm_program(orders, layout=layout, rank=rank)
        self.comm_device = comm_device
        self.device = chunks[0].module.compute_device
        self.split_backward = split_backward
        self.loss_scale = 1.0
        self._forward = {c.stage: wrap(c.module) for c in chunks}
        self._loss = wrap(loss_fn) if loss_fn is not None else None
        self._backward = wrap(torch.autograd.backward)
        self._grad = wrap(torch.autograd.grad)
        self._params = {c.stage: [p for p in c.module.parameters() if p.requires_grad]
                        for c in chunks}

    # ---- messages -------------------------------------------------------------------------

    def _recv_buffers(self, kind: str, boundary: int) -> tuple[torch.Tensor, ...]:
        metas = (self.chunks[boundary + 1].io.inputs if kind == "act" else tuple(
            t for t in self.chunks[boundary].io.outputs if t.requires_grad))
        return tuple(torch.empty(t.shape, dtype=t.dtype, device=self.comm_device)
                     for t in metas)

    def _post(self, batch: CommBatch, st: _Step) -> None:
        """Post one batch. Sent tensors stay referenced until their sends have completed; a
        receive's buffers and works wait in ``st.incoming`` for their pass."""
        num_stages = len(self.layout.stages)
        ops: list[dist.P2POp] = []
        # Each send carries every tensor of its crossing (to its route's rows).
        keys = list(dict.fromkeys((m.kind, m.boundary, m.micro_batch) for m in batch.sends))
        for m in batch.sends:
            for i, t in enumerate(st.outgoing[(m.kind, m.boundary, m.micro_batch)]):
                ops.append(dist.P2POp(dist.isend, self._rows(t, m.route), m.peer,
                                      tag=_tag(m, num_stages, i)))
        sent = [t for key in keys for t in st.outgoing.pop(key)]
        waiting: list[list[Any]] = []
        for m in batch.recvs:
            key = (m.kind, m.boundary, m.micro_batch)
            if key not in st.incoming:
                st.incoming[key] = (self._recv_buffers(m.kind, m.boundary), [])
                waiting.append(st.incoming[key][1])
            for i, t in enumerate(st.incoming[key][0]):
                ops.append(dist.P2POp(dist.irecv, self._rows(t, m.route), m.peer,
                                      tag=_tag(m, num_stages, i)))
        st.pending[:] = [(w, ts) for w, ts in st.pending
                         if not all(x.is_completed() for x in w)]
        if not ops:
            return
        works = [_Once(w) for w in dist.batch_isend_irecv(ops)]
        for target in waiting:
            target.extend(works)
        if sent:
            st.pending.append((works, tuple(sent)))

    def _rows(self, t: torch.Tensor, route: Route) -> torch.Tensor:
        """The rows of ``t`` a route carries: the whole tensor when it is all of this rank's
        rows (then the tensor need not be batch-major), else a slice of dimension 0."""
        rows = next(iter(self.chunks.values())).io.rows
        if (route.lo, route.hi) == (0, rows):
            return t
        return t[route.lo:route.hi]

    def _take(self, st: _Step, key: _Key, *, local: bool) -> tuple[torch.Tensor, ...]:
        """The tensors of one crossing: handed over by a chunk of this rank, or received."""
        if local:
            return st.local.pop(key)
        buffers, works = st.incoming.pop(key)
        for w in works:
            w.wait()
        return buffers

    def _give(self, st: _Step, key: _Key, tensors: Sequence[torch.Tensor], *,
              local: bool) -> None:
        """Hand one crossing's tensors to a chunk of this rank, or queue them for sending."""
        if local:
            st.local[key] = tuple(t.detach() for t in tensors)
        else:
            st.outgoing[key] = tuple(t.detach().to(self.comm_device).contiguous()
                                     for t in tensors)

    # ---- passes ---------------------------------------------------------------------------

    def step(self, *, inputs: Callable[[int], tuple[Any, ...]] | None,
             targets: Callable[[int], torch.Tensor] | None) -> list[float]:
        """Run the step's passes. ``inputs(i)`` gives micro-batch *i*'s model inputs (first
        stage), ``targets(i)`` its loss targets (last stage); returns the last stage's loss
        of every micro-batch (unscaled), in micro-batch order."""
        st = _Step()
        for k, p in enumerate(self.order):
            self._post(self.program[k], st)
            chunk = self.chunks[p.stage]
            if p.kind == "F":
                self._run_forward(chunk, p.micro_batch, st, inputs=inputs, targets=targets)
            elif p.kind == "B":
                self._run_backward(chunk, p.micro_batch, st)
            else:
                self._run_weight(chunk, p.micro_batch, st)
        self._post(self.program[-1], st)
        for works, _ in st.pending:
            for w in works:
                w.wait()
        if not st.losses:
            return []
        return torch.stack([st.losses[i].float() for i in sorted(st.losses)]).cpu().tolist()

    def _run_forward(self, chunk: Chunk, i: int, st: _Step, *,
                     inputs: Callable[[int], tuple[Any, ...]] | None,
                     targets: Callable[[int], torch.Tensor] | None) -> None:
        s = chunk.stage
        if chunk.module.is_first:
            assert inputs is not None
            leaves: tuple[torch.Tensor, ...] = ()
            args = tuple(t.to(self.device) if isinstance(t, torch.Tensor) else t
                         for t in inputs(i))
        else:
            # A copy on the stage's device, so a receive buffer is free as soon as it is
            # read; contiguous, as kernels expect. A chunk of this rank hands over its
            # outputs themselves (detached), already on the device.
            local = self.layout.is_local(s, -1)
            leaves = tuple((t if local else t.to(self.device, copy=True).contiguous())
                           .requires_grad_(t.is_floating_point())
                           for t in self._take(st, ("act", s - 1, i), local=local))
            args = leaves
        out = self._forward[s](*args)
        if chunk.module.is_last:
            assert targets is not None and self._loss is not None
            loss = self._loss(out, targets(i).to(self.device))
            del out  # the logits: freed here unless autograd saved them
            st.losses[i] = loss.detach()  # read after the step: no device sync per micro-batch
            st.held[(s, i)] = _Held(leaves, (), loss)
            return
        outputs = out if isinstance(out, tuple) else (out,)
        self._give(st, ("act", s, i), outputs, local=self.layout.is_local(s, +1))
        st.held[(s, i)] = _Held(leaves, tuple(t for t in outputs if t.is_floating_point()),
                                None)

    def _roots(self, chunk: Chunk, h: _Held, i: int, st: _Step
               ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
        """Where the chunk's backward starts: the scaled loss on the last stage, else the
        outputs that need gradients and the gradients the next stage returned for them."""
        if h.loss is not None:
            return (h.loss * self.loss_scale,), None
        s = chunk.stage
        grads = tuple(g.to(self.device) for g in self._take(
            st, ("grad", s, i), local=self.layout.is_local(s, +1)))
        pairs = [(o, g) for o, g in zip(h.outputs, grads, strict=True) if o.requires_grad]
        return tuple(o for o, _ in pairs), tuple(g for _, g in pairs)

    def _run_backward(self, chunk: Chunk, i: int, st: _Step) -> None:
        s = chunk.stage
        h = st.held.pop((s, i))
        roots, grads = self._roots(chunk, h, i, st)
        wanted = [leaf for leaf in h.leaves if leaf.requires_grad]
        if not self.split_backward:
            if roots:
                self._backward(roots, grads)
            input_grads = [leaf.grad for leaf in wanted]
        else:
            # Input gradients only; the graph stays for the W pass.
            input_grads = (list(self._grad(roots, wanted, grads, retain_graph=True,
                                           allow_unused=True))
                           if roots and wanted else [None] * len(wanted))
            st.weights[(s, i)] = _WeightWork(roots, grads, h)
        if chunk.module.is_first:
            return
        self._give(st, ("grad", s - 1, i),
                   [g if g is not None else torch.zeros_like(leaf)
                    for g, leaf in zip(input_grads, wanted, strict=True)],
                   local=self.layout.is_local(s, -1))

    def _run_weight(self, chunk: Chunk, i: int, st: _Step) -> None:
        """The weight gradients of a split backward, from the output gradients B used; the
        chunk's graph (and the forward's tensors) are freed here."""
        if not self.split_backward:
            raise ValueError("a W pass in the order of a schedule that does not split the "
                             "backward")
        work = st.weights.pop((chunk.stage, i))
        params = self._params[chunk.stage]
        if work.roots and params:
            self._backward(work.roots, work.grads, inputs=params)
