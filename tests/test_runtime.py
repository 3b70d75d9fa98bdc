"""`autosplit run` end to end: a split, recomputing pipeline trains exactly like the unsplit
model, bad plans are refused before any process starts, and a rank that dies is reported."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from runtime_support import (
    GPT,
    GPT_ARGS,
    LR,
    SEQ,
    StageSpec,
    Trained,
    assert_trains_like,
    clip,
    plan_dict,
    reference,
    run_and_dump,
    write_plan,
)

from autosplit.cli import main
from autosplit.model.loader import load_model_source
from autosplit.runtime.config import DEFAULT_GRAD_CLIP
from autosplit.runtime.data import step_batch
from autosplit.runtime.pipeline import default_loss, make_master_optimizer
from autosplit.runtime.stage_builder import build_stage


def test_split_pipeline_with_recompute_matches_unsplit_training(tmp_path: Path) -> None:
    steps = 2
    # Uneven: embedding + 3 blocks with recomputation on one stage, 1 block + head on the
    # other; two data-parallel replicas of that pipeline (4 processes).
    plan = write_plan(tmp_path, plan_dict(GPT, GPT_ARGS, [
        StageSpec(0, 4, shares=(1, 1), recompute=True), StageSpec(4, 6, shares=(1, 1))],
        micro_batches=4))
    measured, got = run_and_dump(tmp_path, plan, GPT, steps)
    assert measured["schema"] == "autosplit.measured/1"
    assert [(r["stage"], r["replica"]) for r in measured["ranks"]] == [(0, 0), (0, 1),
                                                                        (1, 0), (1, 1)]
    assert len(measured["step_times_s"]) == steps and measured["median_step_s"] > 0
    assert measured["tokens_per_s"] > 0
    for r in measured["ranks"]:
        # Each rank's compute is timed per step and fits inside the step.
        assert len(r["compute_s"]) == steps
        assert all(0 < c <= t for c, t in zip(r["compute_s"], measured["step_times_s"],
                                              strict=True))
    assert_trains_like(measured, got, reference(GPT, GPT_ARGS, steps=steps, global_batch=8,
                                                micro_batches=4))


def test_uneven_data_parallel_shares_train_like_the_unsplit_model(tmp_path: Path) -> None:
    # Two replicas of the whole model; replica 0 (a faster chip's) takes 3 samples of every
    # micro-batch of 4, replica 1 takes 1. Each replica's loss is the mean over its own
    # samples, so it must count 3 : 1 towards the step's mean. (Uneven shares across a
    # pipeline boundary: tests/test_runtime_layouts.py.)
    steps = 2
    plan = write_plan(tmp_path, plan_dict(GPT, GPT_ARGS, [StageSpec(0, 6, shares=(3, 1))]))
    measured, got = run_and_dump(tmp_path, plan, GPT, steps)
    # The 3 : 1 weighting rounds differently from the reference's plain mean, and Adam turns
    # the rounding of a near-zero first gradient into up to a whole step (lr) for a few
    # elements; the gradients are the exact check, the weights agree to 5 % of a step.
    assert_trains_like(measured, got, reference(GPT, GPT_ARGS, steps=steps, global_batch=8,
                                                micro_batches=2), param_atol=0.05 * LR)


def test_gradients_are_clipped_by_the_norm_of_the_whole_model(tmp_path: Path) -> None:
    # Three uneven stages and a clipping norm far below the gradients' norm: every step clips.
    # Clipping each stage by its own norm would scale the stages differently; only the norm
    # summed over all stages trains the same model as the unsplit one.
    steps, max_norm = 2, 0.05
    plan = write_plan(tmp_path, plan_dict(GPT, GPT_ARGS, [
        StageSpec(0, 2), StageSpec(2, 5), StageSpec(5, 6)]))
    measured, got = run_and_dump(tmp_path, plan, GPT, steps, "--grad-clip", str(max_norm))
    ref = reference(GPT, GPT_ARGS, steps=steps, global_batch=4, micro_batches=2,
                    grad_clip=max_norm)
    assert measured["loss"] == pytest.approx(ref.losses, rel=1e-5, abs=1e-6)
    norms = {tuple(r["grad_norms"]) for r in measured["ranks"]}
    assert len(norms) == 1  # every rank knows the global norm
    assert all(n > max_norm for n in norms.pop())
    for name, want in ref.params.items():
        torch.testing.assert_close(got.params[name], want, rtol=1e-4, atol=1e-5, msg=name)


# ---- mixed precision -------------------------------------------------------------------------

def _reference_master(steps: int, *, global_batch: int, micro_batches: int) -> Trained:
    """Single-process bf16 training with fp32 masters, accumulating micro-batch gradients the
    way the executor does (each micro-batch's loss divided by their count, summed in bf16)."""
    source = load_model_source(GPT, GPT_ARGS)
    stage = build_stage(source, start=0, end=6, num_units=6, seq_len=SEQ, rows=1,
                        recompute=False, seed=0, device=torch.device("cpu"))
    params = [p for p in stage.model.parameters() if p.requires_grad]
    opt = make_master_optimizer(params, dtype=torch.bfloat16, lr=LR)
    losses = []
    size = global_batch // micro_batches
    for step in range(steps):
        batch = step_batch(source, step=step, seed=0, global_batch=global_batch, seq_len=SEQ)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(micro_batches):
            rows = slice(i * size, (i + 1) * size)
            loss = default_loss(stage.model(batch.inputs[0][rows]), batch.targets[rows])
            (loss / micro_batches).backward()
            total += loss.detach().item()
        losses.append(total / micro_batches)
        clip(params, DEFAULT_GRAD_CLIP)
        opt.step()
    names = [n for n, _ in stage.model.named_parameters()]
    return Trained(losses, dict(zip(names, (m.detach().clone() for m in opt.masters),
                                    strict=True)),
                   {n: p.grad.detach().float() for n, p in zip(names, params, strict=True)})


def test_bf16_master_weight_pipeline_matches_single_process(tmp_path: Path) -> None:
    steps = 3
    plan = write_plan(tmp_path, plan_dict(GPT, GPT_ARGS, [StageSpec(0, 3), StageSpec(3, 6)],
                                          micro_batches=4))
    measured, got = run_and_dump(tmp_path, plan, GPT, steps, "--dtype", "bf16")
    assert measured["precision"] == "master" and measured["dtype"] == "bf16"
    assert all(not r["notes"] for r in measured["ranks"]), measured["ranks"]
    for f in (tmp_path / "dump").glob("stage*.pt"):
        # Weights and gradients live in bf16 on the stage; the dumped values are the masters.
        assert set(torch.load(f)["dtypes"].values()) == {"torch.bfloat16"}
    ref = _reference_master(steps, global_batch=8, micro_batches=4)
    assert measured["loss"] == pytest.approx(ref.losses, rel=1e-3)
    assert measured["loss"][-1] < measured["loss"][0]
    assert set(got.params) == set(ref.params)
    # bf16 sums come out in a different order in the rank processes (other thread counts),
    # so gradients agree to bf16 rounding, not bit for bit; they are those of the third step,
    # i.e. after two master updates, and the loss of every step agrees as well.
    for name, want in ref.grads.items():
        torch.testing.assert_close(got.grads[name], want, rtol=0,
                                   atol=0.03 * float(want.abs().max()), msg=name)
        assert bool(torch.isfinite(got.params[name]).all())




# ---- refusals before any process starts ------------------------------------------------------

def _two_stage_plan() -> dict[str, Any]:
    return plan_dict(GPT, GPT_ARGS, [StageSpec(0, 3), StageSpec(3, 6)])


def _run_code(tmp_path: Path, plan: str, *extra: str, model: str = GPT) -> int:
    return main(["run", plan, model, "--steps", "2", "--warmup", "1",
                 "-o", str(tmp_path / "m.json"), *extra])


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["stages"][1].update(layer_start=4), "covers units"),
    (lambda d: d["stages"][1].update(layer_end=5), "the model has 6 units"),
    (lambda d: d.update(schedule="interleaved"), "unknown pipeline schedule"),
    (lambda d: d["model"].update(num_layers=7), "units"),
    (lambda d: d["model"].update(fingerprint="0123456789abcdef"), "another model"),
    (lambda d: d["stages"][1]["replicas"][0].update(batch_share=3),
     "batch_share values sum"),
    (lambda d: d["stages"][1].update(tp=3), "tensor parallelism of degree 3"),
    (lambda d: d.update(zero1=True), "zero1"),
], ids=["gap", "short", "schedule", "units", "fingerprint", "micro-batch", "tp-divides",
        "zero1"])
def test_bad_plans_are_refused_before_start(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            edit: Any, needle: str) -> None:
    d = _two_stage_plan()
    edit(d)
    if d["model"]["num_layers"] == 7:
        d["stages"][1]["layer_end"] = 7
    plan = write_plan(tmp_path, d)
    assert _run_code(tmp_path, plan) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_plan_for_another_model_size_is_refused(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    plan = write_plan(tmp_path, _two_stage_plan())
    assert _run_code(tmp_path, plan, "--model-arg", "layers=6") == 2
    assert "units" in capsys.readouterr().err


def test_device_and_option_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = write_plan(tmp_path, _two_stage_plan())
    if not torch.cuda.is_available():
        assert _run_code(tmp_path, plan, "--device", "cuda") == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert _run_code(tmp_path, plan, "--backend", "nccl") == 2
    assert "NCCL needs CUDA" in capsys.readouterr().err
    assert _run_code(tmp_path, plan, "--device", "tpu") == 2
    assert _run_code(tmp_path, plan, "--precision", "half") == 2
    assert "unknown precision" in capsys.readouterr().err
    assert _run_code(tmp_path, plan, "--dtype", "fp8") == 2
    assert "unknown dtype" in capsys.readouterr().err
    assert _run_code(tmp_path, plan, "--lr", "0") == 2
    assert "--lr" in capsys.readouterr().err
    assert _run_code(tmp_path, plan, "--grad-clip", "-1") == 2
    assert "--grad-clip" in capsys.readouterr().err
    assert _run_code(tmp_path, plan, "--warmup", "5") == 2
    assert not (tmp_path / "m.json").exists()


# ---- a rank that dies --------------------------------------------------------------------------

_KILLED_MODEL = '''
import os
import signal
import sys

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
        self.head = nn.Linear(8, 16)

    def forward(self, idx):
        x = self.emb(idx)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def build_model():
    if os.environ.get("RANK") == "1":
        sys.stderr.write("rank 1 built half a model\\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return Net()


def example_batch(batch_size, seq_len, device="cpu"):
    t = torch.randint(0, 16, (batch_size, seq_len + 1), device=device)
    return (t[:, :-1],), t[:, 1:]
'''


def test_a_rank_killed_by_a_signal_is_reported_with_its_last_lines(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "killed_model.py"
    model.write_text(_KILLED_MODEL)
    d = plan_dict(str(model), {}, [StageSpec(0, 2), StageSpec(2, 4)])
    plan = write_plan(tmp_path, d)
    assert "RANK" not in os.environ  # the launcher builds the model too, unharmed
    code = _run_code(tmp_path, plan, "--timeout", "120", model=str(model))
    err = capsys.readouterr().err
    assert code == 4, err
    assert "rank 1 was killed by signal SIGKILL" in err
    assert "rank 1 built half a model" in err
    assert not (tmp_path / "m.json").exists()
