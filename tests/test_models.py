"""The example models really train (tiny sizes, real tensors on CPU) and partition correctly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from autosplit.model.ingest import default_loss, ingest_model
from autosplit.model.loader import build_on_meta, find_partition, load_model_source

MODELS = Path(__file__).resolve().parent.parent / "experiments" / "models"

#: file -> (size arg, block list, pre modules, post modules, block count at tiny, seq/side)
EXPECTED = {
    "gpt.py": ("tiny", "blocks", ("wte", "wpe"), ("ln_f", "head"), 4, 32),
    "llama.py": ("tiny", "layers", ("tok_embeddings", "rotary"), ("norm", "output"), 4, 32),
    "resnet_like.py": ("tiny", "blocks", ("stem",), ("pool", "fc"), 4, 32),
}


@pytest.mark.parametrize("filename", sorted(EXPECTED))
def test_tiny_model_trains_on_cpu(filename: str) -> None:
    size, _, _, _, _, seq = EXPECTED[filename]
    source = load_model_source(str(MODELS / filename), {"size": size})
    torch.manual_seed(0)
    model = source.build_model(**source.model_args)
    inputs, targets = source.example_batch(2, seq, torch.device("cpu"))
    loss = (source.loss_fn or default_loss)(model(*inputs), targets)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("filename", sorted(EXPECTED))
@pytest.mark.parametrize("declared", [True, False])
def test_partition_finds_the_block_list(filename: str, declared: bool) -> None:
    size, block_list, pre, post, count, seq = EXPECTED[filename]
    source = load_model_source(str(MODELS / filename), {"size": size})
    model = source.build_model(**source.model_args)
    inputs, _ = source.example_batch(1, seq, torch.device("cpu"))
    blocks_attr = source.blocks_attr if declared else None  # also found without BLOCKS
    partition = find_partition(model, blocks_attr, inputs=inputs, path=source.path)
    assert partition.block_list == block_list
    assert partition.pre == pre
    assert partition.post == post
    assert partition.blocks == tuple(f"{block_list}.{i}" for i in range(count))


@pytest.mark.parametrize("filename", sorted(EXPECTED))
def test_tiny_model_ingests(filename: str) -> None:
    size, _, _, _, count, seq = EXPECTED[filename]
    profile = ingest_model(str(MODELS / filename), model_args={"size": size}, seq_len=seq)
    assert profile.num_layers == count + 2
    blocks = [u for u in profile.layers if u.kind == "block"]
    assert len({u.layer_kind for u in blocks}) == 1
    assert all(u.fwd_flops > 0 and u.bwd_flops > u.fwd_flops for u in blocks)
    assert all(u.activation_bytes > 0 for u in profile.layers)


def test_resnet_counts_images_and_uses_one_collective() -> None:
    profile = ingest_model(str(MODELS / "resnet_like.py"), model_args={"size": "tiny"},
                           seq_len=32)
    assert profile.tokens_per_sample == 1
    assert {u.tp_collectives for u in profile.layers} == {1}
    # 32×32 image → stem /4 → 8×8 feature maps of 16 channels in bf16.
    assert profile.layers[1].output_bytes == 16 * 8 * 8 * 2


def test_llama_blocks_take_rotary_tables_as_keyword_inputs() -> None:
    profile = ingest_model(str(MODELS / "llama.py"), model_args={"size": "tiny"}, seq_len=64)
    block = profile.layers[1]
    assert block.tp_collectives == 2
    # Only the hidden state crosses; cos/sin are rebuilt by each stage's pre-work.
    assert block.input_bytes == block.output_bytes == 64 * 128 * 2


#: Nominal sizes: GPT counts exclude the untied head (the papers tie it).
_NOMINAL = {
    ("gpt.py", "125m"): 125e6, ("gpt.py", "350m"): 350e6, ("gpt.py", "760m"): 760e6,
    ("gpt.py", "1.3b"): 1.3e9, ("gpt.py", "2.7b"): 2.7e9, ("gpt.py", "6.7b"): 6.7e9,
    ("gpt.py", "13b"): 13e9, ("gpt.py", "30b"): 30e9, ("gpt.py", "175b"): 175e9,
    ("llama.py", "7b"): 6.74e9, ("llama.py", "13b"): 13.0e9, ("llama.py", "70b"): 69.0e9,
}


@pytest.mark.parametrize("filename,size", sorted(_NOMINAL))
def test_named_sizes_match_their_nominal_parameter_count(filename: str, size: str) -> None:
    source = load_model_source(str(MODELS / filename), {"size": size})
    model = build_on_meta(source, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    if filename == "gpt.py":
        params -= model.head.weight.numel()
    assert params == pytest.approx(_NOMINAL[(filename, size)], rel=0.03)


def test_partition_without_inputs_falls_back_to_attribute_order() -> None:
    source = load_model_source(str(MODELS / "gpt.py"), {"size": "tiny"})
    model = build_on_meta(source)
    partition = find_partition(model, None)
    assert partition.block_list == "blocks"
    assert partition.pre == ("wte", "wpe")
    assert partition.post == ("ln_f", "head")


def test_a_sequence_longer_than_the_models_positions_is_refused_clearly(capsys) -> None:
    from autosplit.cli import main

    repo = Path(__file__).resolve().parents[1]
    code = main(["search", str(repo / "experiments/models/gpt.py"), "-a", "size=tiny", "-a",
                 "positions=64", "--seq-len", "128", "-c",
                 str(repo / "experiments/clusters/small_2type.yaml"), "-q", "--no-cache"])
    err = capsys.readouterr().err
    assert code == 2
    assert "sequence length 128 exceeds the model's 64 positions" in err
    assert "do what its message says" in err
