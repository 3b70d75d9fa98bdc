"""Every shipped model, and models whose blocks take extra keyword tensors, run split into
uneven stages exactly as they train unsplit — with no hooks in the model files — and a model
that cannot be split is refused before any process starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_support import (
    LLAMA,
    LLAMA_ARGS,
    RESNET,
    RESNET_ARGS,
    StageSpec,
    assert_trains_like,
    plan_dict,
    reference,
    run_and_dump,
    write_plan,
)

from autosplit.cli import main

_KEYWORD_MODEL = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.lin = nn.Linear(8, 8)

    def forward(self, x, *, mask, gate):
        h = self.lin(self.norm(x))
        return x + (mask @ h) / mask.sum(-1, keepdim=True) * gate


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.layers = nn.ModuleList(Block() for _ in range(3))
        self.head = nn.Linear(8, 16)
        self.register_buffer("causal", torch.tril(torch.ones(64, 64)), persistent=False)

    def forward(self, idx):
        x = self.emb(idx)
        s = idx.shape[1]
        mask = self.causal[:s, :s]
        gate = torch.linspace(0.5, 1.0, s, device=x.device).unsqueeze(-1)
        for block in self.layers:
            x = block(x, mask=mask, gate=gate)
        return self.head(x)


def build_model():
    return Net()


def example_batch(batch_size, seq_len, device="cpu"):
    t = torch.randint(0, 16, (batch_size, seq_len + 1), device=device)
    return (t[:, :-1],), t[:, 1:]
'''


@pytest.mark.parametrize("model, args, stages, extra", [
    # Rotary tables (from a parameter-free module) and grouped-query attention; the middle
    # stage recomputes its blocks.
    (LLAMA, LLAMA_ARGS, [StageSpec(0, 2), StageSpec(2, 4, recompute=True), StageSpec(4, 6)],
     {}),
    # No sequence: convolutions and batch norm; the image side is the "sequence length".
    (RESNET, RESNET_ARGS, [StageSpec(0, 3), StageSpec(3, 6)], {"tokens_per_sample": 1}),
], ids=["llama", "resnet"])
def test_shipped_model_trains_split_like_unsplit(
        tmp_path: Path, model: str, args: dict[str, str], stages: list[StageSpec],
        extra: dict[str, int]) -> None:
    steps = 2
    plan = write_plan(tmp_path, plan_dict(model, args, stages, **extra))
    measured, got = run_and_dump(tmp_path, plan, model, steps)
    assert_trains_like(measured, got, reference(model, args, steps=steps, global_batch=4,
                                                micro_batches=2))


def test_blocks_taking_keyword_tensors_train_split_like_unsplit(tmp_path: Path) -> None:
    # The blocks take a mask (a slice of a buffer) and a gate (made from the sequence length)
    # as keyword tensors; each later stage recomputes both from what it has.
    model = tmp_path / "keyword_model.py"
    model.write_text(_KEYWORD_MODEL)
    plan = write_plan(tmp_path, plan_dict(str(model), {}, [StageSpec(0, 2), StageSpec(2, 5)]))
    measured, got = run_and_dump(tmp_path, plan, str(model), 2)
    assert_trains_like(measured, got, reference(str(model), {}, steps=2, global_batch=4,
                                                micro_batches=2))


def test_a_block_input_only_the_first_stage_has_is_refused_before_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A padding mask computed from the token values exists only where the tokens are: the
    # second stage cannot recompute it, so the plan is refused, naming the unit and argument.
    source = _KEYWORD_MODEL.replace("mask = self.causal[:s, :s]",
                                    "mask = self.causal[:s, :s] * (idx > 3).float()[0]")
    model = tmp_path / "padded_model.py"
    model.write_text(source)
    plan = write_plan(tmp_path, plan_dict(str(model), {}, [StageSpec(0, 2), StageSpec(2, 5)]))
    code = main(["run", plan, str(model), "--steps", "1", "--warmup", "0",
                 "-o", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "unit 'layers.1' of stage 1 is called with keyword argument 'mask'" in err
    assert "only earlier stages have" in err
    assert not (tmp_path / "m.json").exists()


def test_retired_stage_hooks_are_refused(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "hooked_model.py"
    model.write_text(_KEYWORD_MODEL + "\n\ndef forward_block(model, block, hidden):\n"
                                      "    return block(hidden)\n")
    plan = write_plan(tmp_path, plan_dict(str(model), {}, [StageSpec(0, 2), StageSpec(2, 5)]))
    assert main(["run", plan, str(model), "--steps", "1", "--warmup", "0",
                 "-o", str(tmp_path / "m.json")]) == 2
    assert "defines forward_block, which is no longer used" in capsys.readouterr().err
