"""The runtime's parts on their own, in one process: the stage builder, the stage forward
cut out of the model's own forward, mixed precision, first-step health checks and the GEMM
self-check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from runtime_support import GPT, GPT_ARGS, LLAMA, LLAMA_ARGS, SEQ, units_of

from autosplit.errors import BadInputError
from autosplit.model.loader import load_model_source
from autosplit.runtime.config import DEFAULT_LR
from autosplit.runtime.gemm_check import check_gemms, stage_gemm_shapes
from autosplit.runtime.health import FirstNonFinite
from autosplit.runtime.pipeline import make_master_optimizer, make_optimizer
from autosplit.runtime.precision import MasterWeightOptimizer
from autosplit.runtime.stage_builder import build_stage


def _stage(model: str, args: dict[str, str], start: int, end: int, *, stage: int = 1,
           recompute: bool = False, rows: int = 2) -> torch.nn.Module:
    source = load_model_source(model, args)
    n = len(units_of(model, args))
    return build_stage(source, start=start, end=end, num_units=n, seq_len=SEQ, rows=rows,
                       recompute=recompute, seed=0, device=torch.device("cpu"), stage=stage)


def test_stage_builder_allocates_only_owned_units() -> None:
    stage = _stage(GPT, GPT_ARGS, 2, 4)
    names = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "")
             for n, _ in stage.model.named_parameters()}
    assert names == {"blocks.1", "blocks.2"}
    full = _stage(GPT, GPT_ARGS, 0, 6, stage=0)
    # Same values whichever stage owns a parameter: initialisation is seeded per module name.
    for name, p in stage.model.named_parameters():
        torch.testing.assert_close(p, full.model.get_parameter(name), rtol=0, atol=0)


@pytest.mark.parametrize("model, args", [(GPT, GPT_ARGS), (LLAMA, LLAMA_ARGS)],
                         ids=["gpt", "llama"])
@pytest.mark.parametrize("recompute", [False, True])
def test_stage_slices_compose_to_the_models_own_forward(model: str, args: dict[str, str],
                                                        recompute: bool) -> None:
    # Three stages cut out of the forward (the middle one recomputing its blocks): their
    # chain gives the unsplit model's output and, through the boundaries, its gradients.
    # Llama's later stages recompute the rotary tables the blocks take as keyword arguments.
    full = _stage(model, args, 0, 6, stage=0).model
    stages = [_stage(model, args, 0, 2, stage=0), _stage(model, args, 2, 4, recompute=recompute),
              _stage(model, args, 4, 6, stage=2)]
    idx = torch.randint(0, 256, (2, SEQ))
    want = full(idx)
    want.square().mean().backward()
    hidden = stages[0](idx)
    boundary = hidden.detach().requires_grad_()
    middle = stages[1](boundary)
    second = middle.detach().requires_grad_()
    out = stages[2](second)
    torch.testing.assert_close(out, want)
    out.square().mean().backward()
    middle.backward(second.grad)
    hidden.backward(boundary.grad)
    for s in stages:
        for name, p in s.model.named_parameters():
            torch.testing.assert_close(p.grad, full.get_parameter(name).grad, msg=name)


# ---- first-step health and stage inputs ------------------------------------------------------

_MASK_MODEL = """
import torch
from torch import nn

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x, mask):
        return x + (mask[: x.shape[1], : x.shape[1]] @ self.lin(x)) / x.shape[1]

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.layers = nn.ModuleList(Block() for _ in range(2))
        self.head = nn.Linear(8, 16)
        self.register_buffer("mask", torch.tril(torch.ones(64, 64)), persistent=False)

    def forward(self, idx):
        x = self.emb(idx)
        for block in self.layers:
            x = block(x, self.mask)
        return self.head(x)

def build_model():
    return Net()

def example_batch(batch_size, seq_len, device="cpu"):
    t = torch.randint(0, 16, (batch_size, seq_len + 1), device=device)
    return (t[:, :-1],), t[:, 1:]
"""


def test_buffers_are_recomputed_on_every_stage(tmp_path: Path) -> None:
    # to_empty leaves buffers uninitialised; a stage that only receives activations must
    # still get the real causal mask, not whatever memory held.
    model = tmp_path / "mask_model.py"
    model.write_text(_MASK_MODEL)
    source = load_model_source(str(model), {})
    stage = build_stage(source, start=2, end=4, num_units=4, seq_len=SEQ, rows=2,
                        recompute=False, seed=0, device=torch.device("cpu"))
    torch.testing.assert_close(stage.model.mask, torch.tril(torch.ones(64, 64)), rtol=0, atol=0)
    broken = tmp_path / "broken_model.py"
    broken.write_text(_MASK_MODEL.replace("def build_model():\n    return Net()",
                                          "CALLS = []\n\ndef build_model():\n"
                                          "    CALLS.append(1)\n    net = Net()\n"
                                          "    if len(CALLS) > 1:\n"
                                          "        net.mask = torch.ones(2, 2)\n"
                                          "    return net"))
    with pytest.raises(BadInputError, match="buffer 'mask'"):
        build_stage(load_model_source(str(broken), {}), start=2, end=4, num_units=4,
                    seq_len=SEQ, rows=2, recompute=False, seed=0, device=torch.device("cpu"))


def test_first_nonfinite_names_the_innermost_module_and_micro_batch() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Sequential(
        torch.nn.Linear(4, 4), torch.nn.GELU()), torch.nn.Linear(4, 2))
    watch = FirstNonFinite(model)
    watch.arm()
    model(torch.randn(3, 4))
    assert watch.found is None
    with torch.no_grad():
        model[1][0].weight[0, 0] = float("inf")
    model(torch.randn(3, 4))
    assert watch.found is not None
    assert watch.found.startswith("output of 1.0 (Linear)") and "micro-batch 1" in watch.found
    assert "inputs are finite" in watch.found and "parameters not finite" in watch.found
    assert watch.found.endswith("it is not finite")  # a bad weight: the fault repeats
    watch.disarm()
    watch.found = None
    model(torch.randn(3, 4))
    assert watch.found is None  # disarmed: no hooks left


class _FlakyLinear(torch.nn.Linear):
    """Gives NaN on its first call only, like a kernel that raced."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = super().forward(x)
        return out * float("nan") if self.calls == 1 else out


def test_first_nonfinite_tells_a_transient_fault_from_a_repeating_one() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), _FlakyLinear(4, 4))
    watch = FirstNonFinite(model)
    watch.arm()
    model(torch.randn(3, 4))
    watch.disarm()
    assert watch.found is not None and watch.found.startswith("output of 1 (_FlakyLinear)")
    assert "parameters finite" in watch.found and watch.found.endswith("it is finite")



# ---- mixed precision -------------------------------------------------------------------------

def _toy_params() -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(*shape, generator=gen))
            for shape in ((5, 3), (7,), (4, 4), (2,))]


def test_master_optimizer_steps_fp32_masters_and_rounds_them_back() -> None:
    params = _toy_params()
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    # A chunk smaller than the parameters: the step walks them in several groups.
    opt = MasterWeightOptimizer(params, dtype=torch.bfloat16, make_inner=make_optimizer,
                                chunk_numel=16)
    ref_opt = make_optimizer(reference)
    for m, r in zip(opt.masters, reference, strict=True):
        assert m.dtype == torch.float32
        torch.testing.assert_close(m, r, rtol=0, atol=0)  # masters start at the fp32 values
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p, r in zip(params, reference, strict=True):
            grad = torch.randn(p.shape, generator=gen).to(torch.bfloat16)
            p.grad = grad
            r.grad = grad.float()
        opt.step()
        ref_opt.step()
    for p, m, r in zip(params, opt.masters, reference, strict=True):
        assert p.dtype == torch.bfloat16 and p.grad.dtype == torch.bfloat16
        torch.testing.assert_close(m, r, rtol=0, atol=0)
        torch.testing.assert_close(p, r.detach().to(torch.bfloat16), rtol=0, atol=0)


def test_fp16_overflow_skips_the_step_and_halves_the_scale() -> None:
    params = _toy_params()
    opt = make_master_optimizer(params, dtype=torch.float16)
    scale = opt.loss_scale
    before = [m.detach().clone() for m in opt.masters]
    for p in params:
        p.grad = torch.full(p.shape, scale / 4, dtype=torch.float16)
    params[1].grad[0] = float("inf")
    assert not opt.grads_finite()
    opt.step(skip=True)
    assert opt.loss_scale == scale / 2
    for m, b in zip(opt.masters, before, strict=True):
        torch.testing.assert_close(m, b, rtol=0, atol=0)
    # A clean step divides the gradients by the scale the backward used. Adam is blind to a
    # gradient's scale except through its epsilon (1e-8): unscaled gradients of 1e-8 move a
    # weight by lr/2, still-scaled ones by almost lr.
    scaled = torch.tensor(opt.loss_scale * 1e-8, dtype=torch.float16)
    for p in params:
        p.grad = torch.full(p.shape, float(scaled), dtype=torch.float16)
    assert opt.grads_finite()
    opt.step()
    g = float(scaled) / (scale / 2)
    for m, b in zip(opt.masters, before, strict=True):
        torch.testing.assert_close(m, b * (1 - DEFAULT_LR * 0.01) - DEFAULT_LR * g / (g + 1e-8),
                                   rtol=0, atol=1e-6)


# ---- GEMM self-check -----------------------------------------------------------------------------

def test_gemm_shapes_of_a_stage_cover_forward_and_both_gradients() -> None:
    stage = torch.nn.Sequential(torch.nn.Linear(8, 24), torch.nn.Linear(24, 8),
                                torch.nn.Linear(8, 24))
    assert stage_gemm_shapes(stage, tokens=32) == [
        (32, 8, 24), (32, 24, 8), (8, 32, 24), (24, 32, 8)]


def test_gemm_check_passes_a_correct_device_and_names_a_faulty_product(
        monkeypatch: pytest.MonkeyPatch) -> None:
    shapes = [(64, 32, 48), (48, 64, 32), (32, 64, 48)]
    for dtype in (torch.float32, torch.bfloat16):
        check = check_gemms(shapes, device=torch.device("cpu"), dtype=dtype)
        assert check.ok and check.products == 3
    real_mm = torch.mm

    def unwritten_tile(a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
        # What the faulty kernels did: the product, with one tile of the output not written.
        real_mm(a[16:], b, out=out[16:])
        return out

    def wrong_values(a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
        real_mm(a, b, out=out)
        return out.mul_(3.0)

    for fault, words in ((unwritten_tile, "not fully written"), (wrong_values, "wrong values")):
        monkeypatch.setattr(torch, "mm", fault)
        check = check_gemms(shapes, device=torch.device("cpu"), dtype=torch.float32)
        monkeypatch.setattr(torch, "mm", real_mm)
        assert len(check.failures) == 3 and words in check.failures[0]
        assert "64x32x48" in check.failures[0]
        assert "3 of 3 matrix products" in check.note(torch.device("cpu"))
