"""Shared pieces of the runtime tests: plans for any model file, single-process reference
training, and one `autosplit run` that dumps every stage's parameters."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from autosplit.cli import main
from autosplit.model.ingest import model_fingerprint
from autosplit.model.loader import build_on_meta, load_model_source
from autosplit.plan.io import plan_from_dict, save_plan
from autosplit.runtime.config import DEFAULT_GRAD_CLIP
from autosplit.runtime.data import step_batch
from autosplit.runtime.executor import CommBatch
from autosplit.runtime.pipeline import default_loss, make_optimizer
from autosplit.runtime.stage_builder import build_stage, model_partition

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "experiments" / "models"
GPT = str(MODELS / "gpt.py")
LLAMA = str(MODELS / "llama.py")
RESNET = str(MODELS / "resnet_like.py")
GPT_ARGS = {"size": "tiny", "hidden": "64", "heads": "4", "vocab": "256", "positions": "64"}
LLAMA_ARGS = {"size": "tiny", "hidden": "64", "heads": "4", "kv_heads": "2", "ffn": "96",
              "vocab": "256"}
RESNET_ARGS = {"size": "tiny", "width": "8"}
SEQ = 16
#: A learning rate at which the tiny models' loss visibly falls within two or three steps.
LR = 1e-3


@dataclass(frozen=True)
class StageSpec:
    """One stage of a test plan: units ``[start, end)``, its TP degree, each replica's batch
    share (and chip label)."""

    start: int
    end: int
    shares: tuple[int, ...] = (2,)
    tp: int = 1
    recompute: bool = False
    chips: tuple[str, ...] = field(default_factory=tuple)


def units_of(model: str, args: dict[str, str], seq: int = SEQ
             ) -> list[tuple[str, str, tuple[str, ...]]]:
    source = load_model_source(model, args)
    return model_partition(source, build_on_meta(source), seq_len=seq).unit_modules()


def plan_dict(model: str, args: dict[str, str], stages: list[StageSpec], *,
              micro_batches: int = 2, schedule: str = "1f1b", seq: int = SEQ,
              tokens_per_sample: int | None = None, ranks: list[int] | None = None,
              virtual_stages: int = 1) -> dict[str, Any]:
    """A plan of ``stages``; ``ranks`` gives each stage's pipeline position (virtual stages:
    the stages of one position share its devices, so the position's first stage decides
    them), default one position per stage."""
    units = units_of(model, args, seq)
    per_micro = sum(stages[0].shares)
    device = 0
    out_stages = []
    devices_of: dict[int, list[dict[str, Any]]] = {}
    for i, s in enumerate(stages):
        chips = s.chips or ("cpu",) * len(s.shares)
        position = i if ranks is None else ranks[i]
        if position not in devices_of:
            replicas = []
            for share, chip in zip(s.shares, chips, strict=True):
                replicas.append({"node": "cpu",
                                 "local_indices": list(range(device, device + s.tp)),
                                 "batch_share": share, "chip": chip})
                device += s.tp
            devices_of[position] = replicas
        out_stages.append({
            "index": i, "chip": chips[0], "layer_start": s.start, "layer_end": s.end,
            "layer_names": [u[0] for u in units[s.start:s.end]],
            "module_names": [m for u in units[s.start:s.end] for m in u[2]],
            "tp": s.tp, "recompute": s.recompute, "replicas": devices_of[position],
            **({} if ranks is None else {"rank": position})})
    extra = {} if ranks is None else {"schema_version": "1.1", "virtual_stages": virtual_stages}
    return {
        "schema_version": "1.0",
        "model": {"name": Path(model).stem, "source_file": model, "num_layers": len(units),
                  "params": 0,
                  "fingerprint": model_fingerprint(model, model_args=args, seq_len=seq,
                                                   dtype="fp32"),
                  "seq_len": seq, "dtype": "fp32",
                  "tokens_per_sample": tokens_per_sample or seq,
                  "block_list": "", "model_args": dict(args)},
        "cluster": {"name": "cpu", "source_file": "", "num_devices": device,
                    "chips": sorted({c for s in out_stages for c in
                                     (r["chip"] for r in s["replicas"])})},
        "global_batch": per_micro * micro_batches, "micro_batch_count": micro_batches,
        "schedule": schedule, "zero1": False, "stages": out_stages, **extra,
    }


def write_plan(tmp_path: Path, d: dict[str, Any], name: str = "plan.json") -> str:
    path = tmp_path / name
    save_plan(plan_from_dict(d), path)
    return str(path)


def clip(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the unsplit model's gradients to ``max_norm`` (global L2 norm, in fp32)."""
    norm = float(sum(p.grad.float().square().sum() for p in params)) ** 0.5
    if max_norm > 0 and norm > max_norm:
        for p in params:
            p.grad.mul_(max_norm / (norm + 1e-6))
    return norm


@dataclass(frozen=True)
class Trained:
    losses: list[float]
    params: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]


def reference(model: str, args: dict[str, str], *, steps: int, global_batch: int,
              micro_batches: int, seq: int = SEQ, grad_clip: float = DEFAULT_GRAD_CLIP
              ) -> Trained:
    """Single-process training of the unsplit model (its own forward, nothing sliced):
    losses, final parameters, last gradients."""
    source = load_model_source(model, args)
    n = len(units_of(model, args, seq))
    stage = build_stage(source, start=0, end=n, num_units=n, seq_len=seq, rows=1,
                        recompute=False, seed=0, device=torch.device("cpu"))
    net = stage.model
    params = [p for p in net.parameters() if p.requires_grad]
    opt = make_optimizer(params, lr=LR)
    loss_fn = source.loss_fn or default_loss
    losses = []
    size = global_batch // micro_batches
    for step in range(steps):
        batch = step_batch(source, step=step, seed=0, global_batch=global_batch, seq_len=seq)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(micro_batches):
            rows = slice(i * size, (i + 1) * size)
            loss = loss_fn(net(*(t[rows] for t in batch.inputs)), batch.targets[rows])
            (loss / micro_batches).backward()
            total += loss.detach().item()
        losses.append(total / micro_batches)
        clip(params, grad_clip)
        opt.step()
    named = list(net.named_parameters())
    return Trained(losses, {k: v.detach().clone() for k, v in named},
                   {k: v.grad.detach().clone() for k, v in named})


def dumped(directory: Path) -> Trained:
    params: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("stage*.pt")):
        state = torch.load(f)
        assert not set(state["params"]) & set(params), "a parameter lives on two stages"
        params.update(state["params"])
        grads.update(state["grads"])
    return Trained([], params, grads)


def run_and_dump(tmp_path: Path, plan: str, model: str, steps: int, *extra: str
                 ) -> tuple[dict[str, Any], Trained]:
    """``autosplit run`` of ``plan`` for ``steps`` steps at the tests' learning rate, saving
    every stage's parameters; returns the measured JSON and what was dumped."""
    out = tmp_path / "measured.json"
    dump = tmp_path / "dump"
    dump.mkdir()
    code = main(["run", plan, model, "--steps", str(steps), "--warmup", "1", "-o", str(out),
                 "--dump-params", str(dump), "--timeout", "240", "--lr", str(LR), *extra])
    assert code == 0
    return json.loads(out.read_text()), dumped(dump)


def assert_trains_like(measured: dict[str, Any], got: Trained, ref: Trained, *,
                       param_atol: float = 0.01 * LR) -> None:
    """Same losses and gradients (to fp32 rounding) and the same parameters, to 1 % of one
    optimizer step, as the reference: summing the micro-batches and replicas in another order
    rounds tiny gradients differently, and Adam, which divides by a gradient's magnitude,
    turns that into a visible part of a step for the smallest of them."""
    assert measured["loss"] == pytest.approx(ref.losses, rel=1e-5, abs=1e-6)
    assert set(got.params) == set(ref.params)
    for name, want in ref.grads.items():
        torch.testing.assert_close(got.grads[name], want, rtol=1e-4, atol=1e-6, msg=name)
    # Adam divides by the gradient's magnitude, so where the true gradient is zero (e.g. the
    # key bias, which softmax ignores) rounding noise decides the update; compare elsewhere.
    for name, want in ref.params.items():
        live = ref.grads[name].abs() > 1e-7
        torch.testing.assert_close(got.params[name][live], want[live], rtol=1e-5,
                                   atol=param_atol, msg=name)


def replay_as_nccl(programs: dict[int, list[CommBatch]]) -> bool:
    """Run the ranks' batches as NCCL runs groups: a rank's batches in order, a batch done
    once every peer has posted the batch holding the other end of each of its messages."""
    sends, recvs = {}, {}
    for rank, program in programs.items():
        for k, batch in enumerate(program):
            for m in batch.sends:
                sends[(rank, m.peer, m.kind, m.boundary, m.micro_batch)] = k
            for m in batch.recvs:
                recvs[(m.peer, rank, m.kind, m.boundary, m.micro_batch)] = k
    assert set(sends) == set(recvs)  # every message sent is received, and nothing else
    at = dict.fromkeys(programs, 0)
    moved = True
    while moved:
        moved = False
        for rank, program in programs.items():
            if at[rank] == len(program):
                continue
            batch = program[at[rank]]
            if (all(at[m.peer] >= recvs[(rank, m.peer, m.kind, m.boundary, m.micro_batch)]
                    for m in batch.sends)
                    and all(at[m.peer] >= sends[(m.peer, rank, m.kind, m.boundary,
                                                 m.micro_batch)]
                            for m in batch.recvs)):
                at[rank] += 1
                moved = True
    return all(at[r] == len(p) for r, p in programs.items())
