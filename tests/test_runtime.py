"""`autosplit run`: a split, recomputing pipeline trains exactly like the unsplit model, and bad
plans are refused before any process starts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from autosplit.cli import main
from autosplit.model.ingest import model_fingerprint
from autosplit.model.loader import load_model_source
from autosplit.plan.io import plan_from_dict, save_plan
from autosplit.runtime.data import step_batch
from autosplit.runtime.pipeline import default_loss, make_optimizer
from autosplit.runtime.stage_builder import build_stage

REPO = Path(__file__).resolve().parents[1]
GPT = str(REPO / "experiments" / "models" / "gpt.py")
ARGS = {"size": "tiny", "hidden": "64", "heads": "4", "vocab": "256", "positions": "64"}
SEQ = 16
UNITS = ["pre", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "post"]
MODULES = [["wte", "wpe"], ["blocks.0"], ["blocks.1"], ["blocks.2"], ["blocks.3"],
           ["ln_f", "head"]]


def _plan_dict(stages: list[tuple[int, int, bool]], *, dp: int = 1, global_batch: int = 8,
               micro_batches: int = 4, schedule: str = "1f1b",
               args: dict[str, str] | None = None) -> dict[str, Any]:
    args = dict(ARGS if args is None else args)
    return {
        "schema_version": "1.0",
        "model": {"name": "gpt", "source_file": GPT, "num_layers": len(UNITS), "params": 0,
                  "fingerprint": model_fingerprint(GPT, model_args=args, seq_len=SEQ,
                                                   dtype="fp32"),
                  "seq_len": SEQ, "dtype": "fp32", "tokens_per_sample": SEQ,
                  "block_list": "blocks", "model_args": args},
        "cluster": {"name": "cpu", "source_file": "", "num_devices": len(stages) * dp,
                    "chips": ["cpu"]},
        "global_batch": global_batch, "micro_batch_count": micro_batches,
        "schedule": schedule, "zero1": False,
        "stages": [{"index": i, "chip": "cpu", "layer_start": a, "layer_end": b,
                    "layer_names": UNITS[a:b], "module_names": sum(MODULES[a:b], []),
                    "tp": 1, "recompute": rec,
                    "replicas": [{"node": "cpu", "local_indices": [i * dp + r],
                                  "batch_share": global_batch // micro_batches // dp}
                                 for r in range(dp)]}
                   for i, (a, b, rec) in enumerate(stages)],
    }


def _write(tmp_path: Path, d: dict[str, Any], name: str = "plan.json") -> str:
    path = tmp_path / name
    save_plan(plan_from_dict(d), path)
    return str(path)


def _reference(steps: int, *, global_batch: int, micro_batches: int
               ) -> tuple[list[float], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Single-process training of the unsplit model: losses, final params, last grads."""
    source = load_model_source(GPT, ARGS)
    model = build_stage(source, start=0, end=len(UNITS), num_units=len(UNITS), seq_len=SEQ,
                        recompute=False, seed=0, device=torch.device("cpu"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params)
    losses = []
    for step in range(steps):
        batch = step_batch(source, step=step, seed=0, global_batch=global_batch, seq_len=SEQ,
                           replica=0, replicas=1)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for x, y in zip(batch.inputs[0].chunk(micro_batches),
                        batch.targets.chunk(micro_batches), strict=True):
            loss = default_loss(model(x), y)
            (loss / micro_batches).backward()
            total += loss.detach().item()
        losses.append(total / micro_batches)
        opt.step()
    named = list(model.model.named_parameters())
    return (losses, {k: v.detach().clone() for k, v in named},
            {k: v.grad.detach().clone() for k, v in named})


def _dumped(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    params: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("stage*.pt")):
        state = torch.load(f)
        assert not set(state["params"]) & set(params), "a parameter lives on two stages"
        params.update(state["params"])
        grads.update(state["grads"])
    return params, grads


def test_split_pipeline_with_recompute_matches_unsplit_training(tmp_path: Path) -> None:
    steps = 2
    # Uneven: embedding + 3 blocks with recomputation on one stage, 1 block + head on the
    # other; two data-parallel replicas of that pipeline (4 processes).
    plan = _write(tmp_path, _plan_dict([(0, 4, True), (4, 6, False)], dp=2))
    out = tmp_path / "measured.json"
    dump = tmp_path / "dump"
    dump.mkdir()
    code = main(["run", plan, GPT, "--steps", str(steps), "--warmup", "1", "-o", str(out),
                 "--dump-params", str(dump), "--timeout", "240"])
    assert code == 0
    measured = json.loads(out.read_text())
    assert measured["schema"] == "autosplit.measured/1"
    assert [(r["stage"], r["replica"]) for r in measured["ranks"]] == [(0, 0), (0, 1),
                                                                        (1, 0), (1, 1)]
    assert len(measured["step_times_s"]) == steps and measured["median_step_s"] > 0
    assert measured["tokens_per_s"] > 0

    ref_losses, ref_params, ref_grads = _reference(steps, global_batch=8, micro_batches=4)
    assert measured["loss"] == pytest.approx(ref_losses, rel=1e-5, abs=1e-6)
    params, grads = _dumped(dump)
    assert set(params) == set(ref_params)
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, rtol=1e-4, atol=1e-6, msg=name)
    # Adam divides by the gradient's magnitude, so where the true gradient is zero (e.g. the
    # key bias, which softmax ignores) rounding noise decides the update; compare elsewhere.
    for name, ref in ref_params.items():
        live = ref_grads[name].abs() > 1e-7
        torch.testing.assert_close(params[name][live], ref[live], rtol=1e-5, atol=1e-6,
                                   msg=name)


def test_stage_builder_allocates_only_owned_units() -> None:
    source = load_model_source(GPT, ARGS)
    stage = build_stage(source, start=2, end=4, num_units=len(UNITS), seq_len=SEQ,
                        recompute=False, seed=0, device=torch.device("cpu"))
    names = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "")
             for n, _ in stage.model.named_parameters()}
    assert names == {"blocks.1", "blocks.2"}
    full = build_stage(source, start=0, end=len(UNITS), num_units=len(UNITS), seq_len=SEQ,
                       recompute=False, seed=0, device=torch.device("cpu"))
    # Same values whichever stage owns a parameter: initialisation is seeded per module name.
    for name, p in stage.model.named_parameters():
        torch.testing.assert_close(p, full.model.get_parameter(name), rtol=0, atol=0)


def _run_code(tmp_path: Path, plan: str, *extra: str) -> int:
    return main(["run", plan, GPT, "--steps", "2", "--warmup", "1",
                 "-o", str(tmp_path / "m.json"), *extra])


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["stages"][1].update(layer_start=4, layer_names=UNITS[4:]), "covers units"),
    (lambda d: d["stages"][1].update(layer_end=5), "the model has 6 units"),
    (lambda d: d.update(schedule="interleaved"), "not supported"),
    (lambda d: d["stages"][0].update(tp=2), "tensor parallelism"),
    (lambda d: d["model"].update(num_layers=7), "units"),
    (lambda d: d["model"].update(fingerprint="0123456789abcdef"), "another model"),
])
def test_bad_plans_are_refused_before_start(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            edit: Any, needle: str) -> None:
    d = _plan_dict([(0, 3, False), (3, 6, False)])
    edit(d)
    if d["model"]["num_layers"] == 7:
        d["stages"][1]["layer_end"] = 7
    plan = _write(tmp_path, d)
    assert _run_code(tmp_path, plan) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_plan_for_another_model_size_is_refused(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    plan = _write(tmp_path, _plan_dict([(0, 3, False), (3, 6, False)]))
    assert _run_code(tmp_path, plan, "--model-arg", "layers=6") == 2
    assert "units" in capsys.readouterr().err


def test_device_and_batch_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = _write(tmp_path, _plan_dict([(0, 3, False), (3, 6, False)]))
    if not torch.cuda.is_available():
        assert _run_code(tmp_path, plan, "--device", "cuda") == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert _run_code(tmp_path, plan, "--backend", "nccl") == 2
    assert "NCCL needs CUDA" in capsys.readouterr().err
    assert _run_code(tmp_path, plan, "--device", "tpu") == 2
    d = _plan_dict([(0, 3, False), (3, 6, False)], dp=2, global_batch=8, micro_batches=2)
    d["stages"][1]["replicas"] = d["stages"][1]["replicas"][:1]
    uneven_dp = _write(tmp_path, d, "dp.json")
    assert _run_code(tmp_path, uneven_dp) == 2
    assert "data-parallel degrees" in capsys.readouterr().err
    d = _plan_dict([(0, 3, False), (3, 6, False)], dp=2, global_batch=8, micro_batches=2)
    d["stages"][0]["replicas"][0]["batch_share"] = 3
    d["stages"][1]["replicas"][0]["batch_share"] = 3
    d["stages"][0]["replicas"][1]["batch_share"] = 1
    d["stages"][1]["replicas"][1]["batch_share"] = 1
    shares = _write(tmp_path, d, "shares.json")
    assert _run_code(tmp_path, shares) == 2
    assert "uneven batch shares" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()
    assert _run_code(tmp_path, plan, "--warmup", "5") == 2
    assert os.listdir(tmp_path)  # nothing else was written


_KWARG_MODEL = """
import torch
from torch import nn

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x, *, scale):
        return x + self.lin(x) * scale

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.layers = nn.ModuleList(Block() for _ in range(2))
        self.head = nn.Linear(8, 16)

    def forward(self, idx):
        x = self.emb(idx)
        for block in self.layers:
            x = block(x, scale=0.5)
        return self.head(x)

def build_model():
    return Net()

def example_batch(batch_size, seq_len, device="cpu"):
    t = torch.randint(0, 16, (batch_size, seq_len + 1), device=device)
    return (t[:, :-1],), t[:, 1:]
"""


def _kwarg_plan(tmp_path: Path, model: Path) -> str:
    d = _plan_dict([(0, 2, False), (2, 4, False)], args={})
    d["model"].update(source_file=str(model), block_list="layers", num_layers=4,
                      fingerprint=model_fingerprint(str(model), model_args={}, seq_len=SEQ,
                                                    dtype="fp32"))
    names = ["pre", "layers.0", "layers.1", "post"]
    for stage, (a, b) in zip(d["stages"], [(0, 2), (2, 4)], strict=True):
        stage["layer_names"] = names[a:b]
        stage["module_names"] = []
    return _write(tmp_path, d)


def test_block_needing_extra_arguments_without_hook_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Blocks that take more than the hidden state (rotary tables, masks) need the model
    # file's forward_block hook; without it the launcher refuses before any process starts.
    model = tmp_path / "kwarg_model.py"
    model.write_text(_KWARG_MODEL)
    code = main(["run", _kwarg_plan(tmp_path, model), str(model), "--steps", "2",
                 "--warmup", "1", "-o", str(tmp_path / "m.json")])
    assert code == 2
    assert "forward_block" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_forward_block_hook_feeds_block_arguments(tmp_path: Path) -> None:
    model = tmp_path / "kwarg_model.py"
    model.write_text(_KWARG_MODEL + """

def forward_block(model, block, hidden):
    return block(hidden, scale=0.5)
""")
    source = load_model_source(str(model), {})
    stage = build_stage(source, start=2, end=4, num_units=4, seq_len=SEQ, recompute=True,
                        seed=0, device=torch.device("cpu"))
    full = build_stage(source, start=0, end=4, num_units=4, seq_len=SEQ, recompute=False,
                       seed=0, device=torch.device("cpu"))
    x = torch.randn(2, SEQ, 8, requires_grad=True)
    ref = full.model.head(full.model.layers[1](x, scale=0.5))
    torch.testing.assert_close(stage(x), ref)
