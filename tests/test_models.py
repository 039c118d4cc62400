import numpy as np
import pytest
import torch
from torch import nn

from course_lib.models import MLP, MNIST1DCNN, DigitsCNN, count_parameters


def test_mlp_layers_shapes_and_count():
    model = MLP(40, [100, 50], 10)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (40, 100),
        (100, 50),
        (50, 10),
    ]
    assert model(torch.randn(7, 40)).shape == (7, 10)
    assert count_parameters(model) == 40 * 100 + 100 + 100 * 50 + 50 + 50 * 10 + 10
    assert not isinstance(model[-1], nn.ReLU)  # logits, no final activation


def test_mlp_options():
    model = MLP(4, [8, 8], 3, activation="tanh", dropout=0.5)
    assert sum(isinstance(m, nn.Tanh) for m in model) == 2
    assert sum(isinstance(m, nn.Dropout) for m in model) == 2
    assert MLP(4, [], 3)(torch.randn(2, 4)).shape == (2, 3)  # logistic regression


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(in_features=0, hidden=[4], num_classes=2), "in_features"),
        (dict(in_features=4, hidden=[4], num_classes=True), "num_classes"),
        (dict(in_features=4, hidden=[0], num_classes=2), "hidden"),
        (dict(in_features=4, hidden=8, num_classes=2), "hidden"),
        (
            dict(in_features=4, hidden=[4], num_classes=2, activation="swish"),
            "activation",
        ),
        (dict(in_features=4, hidden=[4], num_classes=2, dropout=1.0), "dropout"),
    ],
)
def test_mlp_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MLP(**kwargs)


def test_cnns_take_flat_inputs():
    assert DigitsCNN()(torch.randn(5, 64)).shape == (5, 10)
    assert MNIST1DCNN()(torch.randn(5, 40)).shape == (5, 10)
    assert MNIST1DCNN(num_classes=3, channels=8)(torch.randn(2, 40)).shape == (2, 3)
    with pytest.raises(ValueError, match="channels"):
        DigitsCNN(channels=0)


def test_cnns_backpropagate_to_every_parameter():
    for model, n in ((DigitsCNN(), 64), (MNIST1DCNN(), 40)):
        model(torch.randn(3, n)).sum().backward()
        assert all(
            p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()
        )


NUMPY_ARGUMENTS = [
    ("in_features", lambda v: MLP(v, [8], 3), np.int64(4)),
    ("hidden", lambda v: MLP(4, [v, 8], 3), np.int64(8)),
    ("dropout", lambda v: MLP(4, [8], 3, dropout=v), np.float32(0.5)),
    ("channels", lambda v: DigitsCNN(channels=v), np.int64(4)),
    ("length", lambda v: MNIST1DCNN(channels=4, length=v), np.int32(40)),
]


@pytest.mark.parametrize(("name", "call", "value"), NUMPY_ARGUMENTS)
def test_numpy_scalars_pass_bools_and_strings_do_not(name, call, value):
    torch.manual_seed(0)
    model = call(value)
    torch.manual_seed(0)
    expected = call(value.item())
    for got, want in zip(model.state_dict().values(), expected.state_dict().values(),
                         strict=True):  # fmt: skip
        assert torch.equal(got, want)
    for bad in (True, "3"):
        with pytest.raises(ValueError, match=rf"^{name} must be "):
            call(bad)
