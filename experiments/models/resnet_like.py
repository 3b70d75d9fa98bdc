"""A deep residual convnet (He et al. 2016, "Deep Residual Learning", arXiv 1512.03385 —
basic blocks): autosplit's example of a model without a sequence.

Stem (7×7 stride-2 convolution, batch norm, ReLU, 3×3 stride-2 max-pool), then ``blocks``
identical basic residual blocks (two 3×3 convolutions with batch norm, ReLU, identity
shortcut) at constant width and resolution — so every block is one partition unit of the
same kind — then global average pooling and a linear classifier.

``TOKENS_PER_SAMPLE = 1``: throughput is counted in images. The ``seq_len`` autosplit passes to
``example_batch`` is the **image side** in pixels (e.g. ``--seq-len 224``).

Model args (strings): ``size`` (tiny: 4 blocks of 16 channels, 10 classes; small: 16 blocks
of 64 channels; large: 48 blocks of 256 channels; both 1000 classes) and overrides
``blocks``, ``width``, ``classes``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SIZES", "ResNetLike", "BasicBlock", "build_model", "example_batch", "BLOCKS",
           "TOKENS_PER_SAMPLE"]

BLOCKS = "blocks"
TOKENS_PER_SAMPLE = 1

#: size -> (blocks, width, classes)
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (4, 16, 10),
    "small": (16, 64, 1000),
    "large": (48, 256, 1000),
}

#: ``example_batch`` draws labels below this, so any classifier at least this wide works.
_BATCH_CLASSES = 10


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus the input, then relu."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class ResNetLike(nn.Module):
    """Images ``(b, 3, side, side)`` -> class logits ``(b, classes)``."""

    def __init__(self, *, blocks: int, width: int, classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.blocks = nn.ModuleList(BasicBlock(width) for _ in range(blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        for block in self.blocks:
            x = block(x)
        return self.fc(self.pool(x).flatten(1))


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


def build_model(size: str = "small", blocks: str | None = None, width: str | None = None,
                classes: str | None = None) -> ResNetLike:
    """A residual convnet of a named ``size``; any dimension can be overridden."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    d_blocks, d_width, d_classes = SIZES[size]
    n_classes = _int_arg("classes", classes, d_classes)
    if n_classes < _BATCH_CLASSES:
        raise ValueError(f"classes must be at least {_BATCH_CLASSES}")
    return ResNetLike(blocks=_int_arg("blocks", blocks, d_blocks),
                      width=_int_arg("width", width, d_width), classes=n_classes)


def example_batch(batch_size: int, seq_len: int,
                  device: torch.device | str = "cpu") -> tuple[tuple[torch.Tensor], torch.Tensor]:
    """Random images of side ``seq_len`` and class labels."""
    images = torch.randn(batch_size, 3, seq_len, seq_len, device=device)
    labels = torch.randint(0, _BATCH_CLASSES, (batch_size,), device=device)
    return (images,), labels
