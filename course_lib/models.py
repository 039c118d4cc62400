"""Small models used throughout the book.

All of them take flat feature vectors, the shape in which
:func:`course_lib.data.load_dataset` returns every dataset, and reshape inside
when they need an image or a signal:

- :class:`MLP`: ``(B, in_features) -> (B, num_classes)``
- :class:`DigitsCNN`: ``(B, 64)`` (8x8 digits) ``-> (B, 10)``
- :class:`MNIST1DCNN`: ``(B, 40)`` (MNIST-1D signals) ``-> (B, 10)``
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._args import check_choice, check_int, check_int_sequence, check_real

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


def make_activation(name: str) -> nn.Module:
    """``"relu"``, ``"tanh"``, ``"gelu"`` or ``"sigmoid"`` as a module."""
    check_choice("activation", name, tuple(ACTIVATIONS))
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """A multilayer perceptron: ``Linear -> activation`` per hidden layer.

    ``MLP(40, [100, 100], 10)`` has layers 40->100->100->10. The last layer
    has no activation: the model returns logits for ``cross_entropy``.
    ``dropout`` > 0 adds ``nn.Dropout`` after every hidden activation.
    Weights keep PyTorch's default initialisation (chapter 4 is about
    changing it).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        num_classes: int,
        *,
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        in_features = check_int("in_features", in_features, low=1)
        hidden = check_int_sequence("hidden", hidden, low=1)  # the widths
        num_classes = check_int("num_classes", num_classes, low=1)
        check_choice("activation", activation, tuple(ACTIVATIONS))
        dropout = check_real("dropout", dropout, "[0, 1)")
        layers: list[nn.Module] = []
        widths = [in_features, *hidden]
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), make_activation(activation)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(widths[-1], num_classes))
        super().__init__(*layers)


class DigitsCNN(nn.Module):
    """A two-convolution CNN for scikit-learn's 8x8 digits.

    (B, 64) -> (B, 1, 8, 8) -> conv 3x3 (16) -> pool -> conv 3x3 (32) -> pool
    -> (B, 32*2*2) -> linear -> (B, 10).
    """

    def __init__(self, num_classes: int = 10, channels: int = 16):
        super().__init__()
        num_classes = check_int("num_classes", num_classes, low=1)
        c = check_int("channels", channels, low=1)
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c, 4, 4)
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 2c, 2, 2)
        )
        self.head = nn.Linear(2 * c * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, 8, 8)
        return self.head(self.features(x).flatten(1))


class MNIST1DCNN(nn.Module):
    """A three-layer 1-D CNN for MNIST-1D's length-40 signals.

    (B, 40) -> (B, 1, 40) -> three conv 3 (stride 2, then 1, 1) with ReLU
    -> flatten -> linear -> (B, 10). This is the size of network with which
    the MNIST-1D paper (Greydanus, 2020) reports its CNN baseline.
    """

    def __init__(self, num_classes: int = 10, channels: int = 25, length: int = 40):
        super().__init__()
        num_classes = check_int("num_classes", num_classes, low=1)
        c = check_int("channels", channels, low=1)
        length = check_int("length", length, low=1)
        self.length = length
        self.features = nn.Sequential(
            nn.Conv1d(1, c, 5, stride=2, padding=1),
            nn.ReLU(),  # (B, c, 19)
            nn.Conv1d(c, c, 3, stride=2, padding=1),
            nn.ReLU(),  # (B, c, 10)
            nn.Conv1d(c, c, 3, stride=2, padding=1),
            nn.ReLU(),  # (B, c, 5)
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, 1, length)).numel()
        self.head = nn.Linear(flat, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, 1, self.length)).flatten(1))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
