"""Tests for course_lib.optim: every optimizer against torch.optim (float64, two
parameter groups, a state_dict round trip midway), checkpoints across the two
implementations, first steps worked by hand, Lookahead against its published
rule, validation, and the small contracts (skipped weights, closures, sparse
gradients, signatures)."""

import copy
import inspect
import io
import math

import numpy as np
import pytest
import torch
from torch.nn.functional import mse_loss
from torch.optim.lr_scheduler import LambdaLR

from course_lib import optim
from course_lib.optim import Lookahead

# Largest deviation from torch's for-loop path (foreach=False) measured here
# over CASES (torch 2.14.1, float64, 60 steps, reloaded at step 25): exactly 0
# for SGD, Adagrad, RMSprop, Adam and AdamW, which repeat torch's operations in
# torch's order. NAdam 2.8e-17 absolute, 2.8e-14 relative, all of it from the
# reload: load_state_dict casts the float32 mu_product to float64, and torch's
# own NAdam, reloaded, drifts by the same 2.8e-17. RAdam 2.2e-16 absolute,
# 2.5e-13 relative (on a tiny weight): one scalar step size in place of
# torch's chain of tensor products. The tolerance leaves room for another
# CPU's rounding and still catches any change to the math.
RTOL, ATOL = 1e-10, 1e-12
NUM_STEPS, RELOAD_AT = 60, 25
NAMES = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "NAdam", "RAdam"]


def make_model(seed=0):
    """Linear(5, 8) -> Tanh -> Linear(8, 3) in float64, weights from a seed."""
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return model


def batches(num_steps, seed=1):
    """A new random batch (X, y), shapes (16, 5) and (16, 3), at every step."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(num_steps):
        X = torch.randn(16, 5, generator=generator, dtype=torch.float64)
        yield X, torch.randn(16, 3, generator=generator, dtype=torch.float64)


def two_groups(model, groups):
    """First layer in one parameter group, last layer in another."""
    first, last = model[0].parameters(), model[2].parameters()
    return [{"params": list(first), **groups[0]}, {"params": list(last), **groups[1]}]


def train_step(model, optimizer, X, y):
    optimizer.zero_grad()
    mse_loss(model(X), y).backward()
    optimizer.step()


def assert_same_params(model, reference, step):
    pairs = zip(model.named_parameters(), reference.parameters(), strict=True)
    for (name, p), q in pairs:
        torch.testing.assert_close(
            p, q, rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{n}, step {step}: {m}"
        )


def round_trip(optimizer, make_optimizer):
    """A fresh optimizer loaded with ``optimizer``'s state through torch.save."""
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    fresh = make_optimizer()
    fresh.load_state_dict(torch.load(buffer))  # weights_only=True, the default
    return fresh


def options(name):
    """The keyword arguments of course_lib's optimizer ``name``."""
    return list(inspect.signature(getattr(optim, name)).parameters)[1:]


def assert_same_state(name, ours, theirs):
    """Same state names, dtypes and values; same hyperparameters in the groups."""
    assert ours["state"].keys() == theirs["state"].keys()
    for index, state in theirs["state"].items():
        assert ours["state"][index].keys() == state.keys()
        for key, value in state.items():
            # assert_close also checks dtype and device: step is float32 on the
            # CPU. NAdam's mu_product is too, but torch's load_state_dict casts
            # it to the weights' dtype (it exempts only "step"), ours as well.
            torch.testing.assert_close(
                ours["state"][index][key], value, rtol=RTOL, atol=ATOL,
                check_dtype=key != "mu_product",
            )  # fmt: skip
    for group, torch_group in zip(
        ours["param_groups"], theirs["param_groups"], strict=True
    ):
        assert group["params"] == torch_group["params"]
        assert {key: group[key] for key in options(name)} == {
            key: torch_group[key] for key in options(name)
        }


# Two groups with their own lr; weight decay off in the first, on in the second
LR_WD = [{"lr": 1e-2}, {"lr": 3e-3, "weight_decay": 1e-2}]
SGD_GROUPS = [{"lr": 0.1}, {"lr": 0.03, "weight_decay": 1e-2}]
ADAGRAD_GROUPS = [{"lr": 0.05}, {"lr": 0.01, "weight_decay": 1e-2}]
MOMENTUM, BETAS = {"momentum": 0.9}, {"betas": (0.8, 0.99), "eps": 1e-6}
CASES = [
    ("SGD", {}, SGD_GROUPS),
    ("SGD", MOMENTUM, SGD_GROUPS),
    ("SGD", {**MOMENTUM, "dampening": 0.3}, [{"lr": 0.1}, {"lr": 0.03}]),
    ("SGD", {**MOMENTUM, "nesterov": True}, SGD_GROUPS[::-1]),
    ("SGD", {}, [{"lr": 0.1, **MOMENTUM}, SGD_GROUPS[1]]),  # momentum in one group
    ("Adagrad", {}, ADAGRAD_GROUPS),
    ("Adagrad", {"lr_decay": 0.05}, ADAGRAD_GROUPS),
    ("Adagrad", {"initial_accumulator_value": 0.1}, [{"lr": 0.05}, {"lr": 0.01}]),
    ("Adagrad", {"lr_decay": 0.01, "initial_accumulator_value": 0.5}, LR_WD),
    ("RMSprop", {}, LR_WD),
    ("RMSprop", {"centered": True}, LR_WD),
    ("RMSprop", {"momentum": 0.5}, LR_WD),
    ("RMSprop", {"centered": True, "momentum": 0.5}, LR_WD),
    ("RMSprop", {"alpha": 0.9, "eps": 1e-4}, [{"lr": 1e-2, "centered": True}, {}]),
    ("Adam", {}, LR_WD),
    ("Adam", {"amsgrad": True}, LR_WD),
    ("Adam", BETAS, [{"lr": 1e-2, "amsgrad": True}, {"lr": 3e-3}]),
    ("AdamW", {}, [{"lr": 1e-2}, {"lr": 3e-3, "weight_decay": 0.1}]),  # default 1e-2
    ("AdamW", {"amsgrad": True}, [{"lr": 1e-2, "weight_decay": 0}, {"lr": 3e-3}]),
    ("NAdam", {}, LR_WD),
    ("NAdam", {"momentum_decay": 0.02}, LR_WD),
    ("NAdam", BETAS, LR_WD[::-1]),
    # rho_t > 5 from step 6 on with beta2 = 0.999 and 0.9; never with 0.6
    ("RAdam", {}, LR_WD),
    ("RAdam", {"betas": (0.5, 0.9), "eps": 1e-6}, LR_WD),
    ("RAdam", {"betas": (0.9, 0.6)}, LR_WD),
]


def case_id(case):
    name, kwargs, groups = case
    return f"{name}-{kwargs}-{groups}".replace(" ", "")


@pytest.mark.parametrize(("name", "kwargs", "groups"), CASES, ids=map(case_id, CASES))
def test_same_trajectory_and_state_as_torch(name, kwargs, groups):
    model, twin = make_model(), make_model()

    def make_ours():
        return getattr(optim, name)(two_groups(model, groups), **kwargs)

    ours = make_ours()
    theirs = getattr(torch.optim, name)(
        two_groups(twin, groups), foreach=False, **kwargs
    )
    for step, (X, y) in enumerate(batches(NUM_STEPS), start=1):
        train_step(model, ours, X, y)
        train_step(twin, theirs, X, y)
        assert_same_params(model, twin, step)
        if step == RELOAD_AT:  # torch's optimizer runs straight through
            ours = round_trip(ours, make_ours)
    assert_same_state(name, ours.state_dict(), theirs.state_dict())


DEFAULTS = {"SGD": {"lr": 0.1, "momentum": 0.9}}  # SGD's default keeps no state


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("first", ["ours", "torch"])
def test_state_dict_loads_into_the_other_implementation(name, first):
    kwargs = DEFAULTS.get(name, {})
    makers = {
        "ours": lambda m: getattr(optim, name)(m.parameters(), **kwargs),
        "torch": lambda m: getattr(torch.optim, name)(
            m.parameters(), foreach=False, **kwargs
        ),
    }
    second = "torch" if first == "ours" else "ours"
    model, reference = make_model(), make_model()
    optimizer, torch_optimizer = makers[first](model), makers["torch"](reference)
    for step, (X, y) in enumerate(batches(2 * RELOAD_AT), start=1):
        train_step(model, optimizer, X, y)
        train_step(reference, torch_optimizer, X, y)
        assert_same_params(model, reference, step)
        if step == RELOAD_AT:
            optimizer = round_trip(optimizer, lambda: makers[second](model))
            assert type(optimizer).__module__.startswith(
                "torch" if second == "torch" else "course_lib"
            )
    assert_same_state(name, optimizer.state_dict(), torch_optimizer.state_dict())


def one_weight(value=(0.5, -2.0, 3.0), grad=(0.1, 0.3, -4.0)):
    p = torch.tensor(value, dtype=torch.float64, requires_grad=True)
    p.grad = torch.tensor(grad, dtype=torch.float64)
    return p


def nadam_first_step(g, lr, beta1, eps, psi=4e-3):
    mu1, mu2 = (beta1 * (1 - 0.5 * 0.96 ** (t * psi)) for t in (1, 2))
    # The product of the mu's is kept in float32, like torch's: in float64 the
    # step would differ by 1.3e-10 relative.
    product = torch.tensor(mu1, dtype=torch.float32).item()
    # (1 - mu1) g / (1 - mu1) + mu2 (1 - beta1) g / (1 - mu1 mu2), over |g| + eps
    scale = (1 - mu1) / (1 - product) + mu2 * (1 - beta1) / (1 - product * mu2)
    return lr * g / (g.abs() + eps) * scale


# The first step, worked from each update rule by hand: p1 = p0 - delta(p0, g)
FIRST_STEPS = [
    ("SGD", {"lr": 0.1, "weight_decay": 0.2}, lambda p, g: 0.1 * (g + 0.2 * p)),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.5}, lambda p, g: 0.1 * g),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}, lambda p, g: 0.19 * g),
    ("Adagrad", {"lr": 0.1, "initial_accumulator_value": 2.0},
     lambda p, g: 0.1 * g / ((2.0 + g**2).sqrt() + 1e-10)),
    ("RMSprop", {"lr": 0.01, "alpha": 0.9},
     lambda p, g: 0.01 * g / ((0.1 * g**2).sqrt() + 1e-8)),
    ("RMSprop", {"lr": 0.01, "alpha": 0.9, "centered": True},
     lambda p, g: 0.01 * g / ((0.1 * g**2 - 0.01 * g**2).sqrt() + 1e-8)),
    ("Adam", {"lr": 0.01, "eps": 0.1}, lambda p, g: 0.01 * g / (g.abs() + 0.1)),
    ("Adam", {"lr": 0.01, "weight_decay": 0.5},
     lambda p, g: 0.01 * (g + 0.5 * p) / ((g + 0.5 * p).abs() + 1e-8)),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.5},
     lambda p, g: 0.005 * p + 0.01 * g / (g.abs() + 1e-8)),
    ("NAdam", {"lr": 0.01, "eps": 0.1},
     lambda p, g: nadam_first_step(g, 0.01, 0.9, 0.1)),
    ("RAdam", {"lr": 0.01}, lambda p, g: 0.01 * g),  # rho_1 = 1: plain momentum
]  # fmt: skip


@pytest.mark.parametrize(("name", "kwargs", "delta"), FIRST_STEPS)
def test_first_step_matches_the_formula_by_hand(name, kwargs, delta):
    p = one_weight()
    expected = p.detach() - delta(p.detach(), p.grad)
    getattr(optim, name)([p], **kwargs).step()
    torch.testing.assert_close(p.detach(), expected, rtol=1e-14, atol=0)


def test_adam_bias_correction_over_a_constant_gradient():
    # Bias correction makes m_hat = g and v_hat = g^2 at every step, so each
    # step is lr * g / (|g| + eps), whatever t is.
    p = one_weight(value=(0.0, 0.0, 0.0))
    optimizer = optim.Adam([p], lr=0.01, eps=0.5)
    for _ in range(7):
        optimizer.step()
    expected = -7 * 0.01 * p.grad / (p.grad.abs() + 0.5)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-13, atol=0)
    assert optimizer.state[p]["step"].item() == 7


def test_radam_switches_to_the_rectified_step_at_step_six():
    # beta2 = 0.999: rho_5 = 4.996, rho_6 = 5.994; a constant gradient keeps
    # m_hat = g, so the first five steps move by exactly lr * g each.
    p = one_weight(value=(0.0, 0.0, 0.0))
    optimizer = optim.RAdam([p], lr=0.01)
    for _ in range(5):
        optimizer.step()
    torch.testing.assert_close(p.detach(), -0.05 * p.grad, rtol=1e-13, atol=0)
    before = p.detach().clone()
    optimizer.step()
    rho_inf, t = 1999.0, 6
    rho = rho_inf - 2 * t * 0.999**t / (1 - 0.999**t)
    rect = math.sqrt(
        (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
    )
    expected = before - 0.01 * rect * p.grad / (
        p.grad.abs() + 1e-8 / math.sqrt(1 - 0.999**t)
    )
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=0)


def small_problem(dtype=torch.float64):
    """Weights a (used by the loss) and b (unused: its grad stays None)."""
    a = torch.tensor([1.0, -2.0, 0.5], dtype=dtype, requires_grad=True)
    b = torch.tensor([3.0, 4.0], dtype=dtype, requires_grad=True)
    return a, b, lambda: ((a - 0.3) ** 2).sum() * (a.sin() + 1).prod()


@pytest.mark.parametrize("name", NAMES)
def test_weights_without_grad_are_skipped_like_torch(name):
    kwargs = DEFAULTS.get(name, {"lr": 0.1})
    results = {}
    for module in (optim, torch.optim):
        a, b, loss_fn = small_problem()
        optimizer = getattr(module, name)([a, b], **kwargs)
        for _ in range(3):
            optimizer.zero_grad()
            loss_fn().backward()
            optimizer.step()
        assert b.grad is None
        assert b.tolist() == [3.0, 4.0]
        results[module.__name__] = (a.detach(), b in optimizer.state, optimizer)
    (a, b_has_state, ours), (a_torch, torch_has_state, theirs) = results.values()
    torch.testing.assert_close(a, a_torch, rtol=RTOL, atol=ATOL)
    assert b_has_state == torch_has_state == (name == "Adagrad")  # made at init
    assert_same_state(name, ours.state_dict(), theirs.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_closure_is_evaluated_and_its_loss_returned(name):
    kwargs = DEFAULTS.get(name, {"lr": 0.1})
    returned = {}
    for module in (optim, torch.optim):
        a, _, loss_fn = small_problem()
        optimizer = getattr(module, name)([a], **kwargs)
        losses = []

        def closure(optimizer=optimizer, loss_fn=loss_fn, losses=losses):
            optimizer.zero_grad()
            losses.append(loss_fn())
            losses[-1].backward()
            return losses[-1]

        for _ in range(4):
            assert optimizer.step(closure) is losses[-1]
        assert optimizer.step() is None  # no closure: no loss
        returned[module.__name__] = (a.detach(), torch.stack(losses))
    (a, losses), (a_torch, torch_losses) = returned.values()
    torch.testing.assert_close(a, a_torch, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(losses, torch_losses, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_sparse_gradients_raise_a_clear_error(name):
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    optimizer = getattr(optim, name)(embedding.parameters())
    embedding(torch.tensor([1, 4])).sum().backward()
    with pytest.raises(RuntimeError, match=f"{name} does not support sparse gradients"):
        optimizer.step()


@pytest.mark.parametrize("name", NAMES)
def test_signature_is_torch_minus_the_production_options(name):
    ours = list(inspect.signature(getattr(optim, name)).parameters.values())
    theirs = list(inspect.signature(getattr(torch.optim, name)).parameters.values())
    assert [(p.name, p.default) for p in ours] == [
        (p.name, p.default) for p in theirs[: len(ours)]
    ]


@pytest.mark.parametrize("name", NAMES)
def test_step_is_a_cpu_scalar_tensor_of_torch_dtype(name):
    for default_dtype, step_dtype in [
        (torch.float32, torch.float32),
        (torch.float64,) * 2,
    ]:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(default_dtype)
        try:
            a, _, loss_fn = small_problem(dtype=torch.float32)
            optimizer = getattr(optim, name)([a], **DEFAULTS.get(name, {}))
            loss_fn().backward()
            optimizer.step()
        finally:
            torch.set_default_dtype(previous)
        state = optimizer.state[a]
        if name == "SGD":
            assert list(state) == ["momentum_buffer"]
            continue
        assert state["step"].shape == () and state["step"].device.type == "cpu"
        assert state["step"].dtype == step_dtype and state["step"].item() == 1
        if name == "NAdam":
            assert state["mu_product"].dtype == step_dtype


def test_adagrad_initial_accumulator_value_is_per_group_unlike_torch():
    sums = []
    for module in (optim, torch.optim):
        a, b, _ = small_problem()
        groups = [{"params": [a]}, {"params": [b], "initial_accumulator_value": 5.0}]
        optimizer = module.Adagrad(groups, initial_accumulator_value=1.0)
        sums.append([optimizer.state[p]["sum"].tolist() for p in (a, b)])
    assert sums[0] == [[1.0] * 3, [5.0] * 2]
    assert sums[1] == [[1.0] * 3, [1.0] * 2]  # torch 2.14 ignores the group's value


def test_lambda_lr_drives_ours_like_torch():
    model, twin = make_model(), make_model()
    ours = optim.Adam(two_groups(model, LR_WD))
    theirs = torch.optim.Adam(two_groups(twin, LR_WD), foreach=False)
    schedules = [LambdaLR(o, lambda t: 1 / (1 + 0.3 * t)) for o in (ours, theirs)]
    for step, (X, y) in enumerate(batches(20), start=1):
        for m, o, s in zip((model, twin), (ours, theirs), schedules, strict=True):
            train_step(m, o, X, y)
            s.step()
        assert_same_params(model, twin, step)
    assert ours.param_groups[1]["lr"] == pytest.approx(3e-3 / (1 + 0.3 * 20))


def bad(cls, name, values, **fixed):
    """One validation case per bad value of the argument ``name``."""
    return [
        pytest.param(cls, {**fixed, name: v}, name, id=f"{cls.__name__}-{name}={v!r}")
        for v in values
    ]


NAN, INF = math.nan, math.inf
NOT_NONNEGATIVE = [-1e-3, NAN, INF, True, "0.1", None]
BAD_BETAS = [
    (1.0, 0.999),
    (0.9, 1.0),
    (-0.1, 0.9),
    (NAN, 0.9),
    (0.9,),
    (0.9, 0.9, 0.9),
    0.9,
]
NOT_BOOL = [1, "yes", None]
ADAM_LIKE = [
    *[case for cls in (optim.Adam, optim.AdamW, optim.NAdam, optim.RAdam)
      for name in ("lr", "eps", "weight_decay")
      for case in bad(cls, name, NOT_NONNEGATIVE)],
    *[case for cls in (optim.Adam, optim.AdamW, optim.NAdam, optim.RAdam)
      for case in bad(cls, "betas", BAD_BETAS)],
]  # fmt: skip
VALIDATION = [
    *[case for name in ("lr", "momentum", "weight_decay")
      for case in bad(optim.SGD, name, NOT_NONNEGATIVE)],
    *bad(optim.SGD, "dampening", [-0.1, 1.5, NAN, "0"]),
    *bad(optim.SGD, "nesterov", [True], momentum=0),
    *bad(optim.SGD, "nesterov", [True], momentum=0.9, dampening=0.1),
    *bad(optim.SGD, "nesterov", NOT_BOOL, momentum=0.9),
    *bad(optim.SGD, "momentum", ["0.9"], nesterov=True),  # type first, then rule
    *[case for name in ("lr", "lr_decay", "weight_decay", "eps",
                        "initial_accumulator_value")
      for case in bad(optim.Adagrad, name, NOT_NONNEGATIVE)],
    *[case for name in ("lr", "eps", "weight_decay", "momentum")
      for case in bad(optim.RMSprop, name, NOT_NONNEGATIVE)],
    *bad(optim.RMSprop, "alpha", [-0.1, 1.0, 1.5, NAN, None]),
    *bad(optim.RMSprop, "centered", NOT_BOOL),
    *ADAM_LIKE,
    *bad(optim.Adam, "amsgrad", NOT_BOOL),
    *bad(optim.AdamW, "amsgrad", NOT_BOOL),
    *bad(optim.NAdam, "momentum_decay", NOT_NONNEGATIVE),
]  # fmt: skip


@pytest.mark.parametrize(("cls", "kwargs", "name"), VALIDATION)
def test_bad_argument_raises_value_error_naming_it(cls, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must be "):
        cls([torch.zeros(2, requires_grad=True)], **kwargs)


def test_lookahead_validates_its_arguments():
    inner = optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    for kwargs, name in [
        *[({"k": k}, "k") for k in (0, -1, 2.5, True, "5", None)],
        *[({"alpha": a}, "alpha") for a in (-0.1, 1.01, NAN, True, None)],
    ]:
        with pytest.raises(ValueError, match=rf"^{name} must be "):
            Lookahead(inner, **kwargs)
    for not_an_optimizer in ("adam", [torch.zeros(2)], None):
        with pytest.raises(ValueError, match=r"^optimizer must be "):
            Lookahead(not_an_optimizer)


def lookahead_reference(model, make_inner, k, alpha, num_steps):
    """Zhang et al.'s Algorithm 1 written out: after every k inner steps on the
    fast weights theta, phi <- phi + alpha (theta - phi), then theta <- phi."""
    inner = make_inner(model.parameters())
    phi = [p.detach().clone() for p in model.parameters()]
    trajectory = []
    for t, (X, y) in enumerate(batches(num_steps), start=1):
        train_step(model, inner, X, y)
        if t % k == 0:
            with torch.no_grad():
                for theta, slow in zip(model.parameters(), phi, strict=True):
                    slow += alpha * (theta - slow)
                    theta.copy_(slow)
        trajectory.append(copy.deepcopy(model))
    return trajectory


INNER = {
    "torch-SGD-momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    "torch-Adam": lambda ps: torch.optim.Adam(ps, lr=0.01, foreach=False),
    "ours-Adam": lambda ps: optim.Adam(ps, lr=0.01),
    "ours-RMSprop": lambda ps: optim.RMSprop(ps, lr=0.01, centered=True),
}


@pytest.mark.parametrize("inner", INNER)
@pytest.mark.parametrize(("k", "alpha"), [(5, 0.5), (3, 0.8), (1, 1.0), (4, 0.0)])
def test_lookahead_follows_the_published_rule(inner, k, alpha):
    num_steps = 55  # not a multiple of 3, 4 or 5: it ends between two syncs
    expected = lookahead_reference(make_model(), INNER[inner], k, alpha, num_steps)
    model = make_model()
    optimizer = Lookahead(INNER[inner](model.parameters()), k=k, alpha=alpha)
    for step, (X, y) in enumerate(batches(num_steps), start=1):
        train_step(model, optimizer, X, y)
        assert_same_params(model, expected[step - 1], step)
    assert optimizer.step_count == num_steps
    if alpha == 0.0:  # the slow weights never move: every sync goes back to the start
        assert_same_params(expected[k - 1], make_model(), k)


def test_lookahead_is_not_its_inner_optimizer():
    # Guards the test above against a Lookahead that does nothing
    model, plain = make_model(), make_model()
    optimizer = Lookahead(optim.Adam(model.parameters(), lr=0.01))
    inner_only = optim.Adam(plain.parameters(), lr=0.01)
    for X, y in batches(20):
        train_step(model, optimizer, X, y)
        train_step(plain, inner_only, X, y)
    assert (model[0].weight - plain[0].weight).abs().max() > 1e-3


def make_lookahead(model):
    return Lookahead(optim.Adam(two_groups(model, LR_WD)), k=5, alpha=0.6)


def test_lookahead_state_dict_round_trip_mid_cycle():
    model, reference = make_model(), make_model()
    optimizer, straight = make_lookahead(model), make_lookahead(reference)
    for step, (X, y) in enumerate(batches(NUM_STEPS), start=1):
        train_step(model, optimizer, X, y)
        train_step(reference, straight, X, y)
        assert_same_params(model, reference, step)
        if step == 27:  # two steps into a cycle: slow and fast weights differ
            optimizer = round_trip(optimizer, lambda: make_lookahead(model))
            assert optimizer.step_count == 27
            assert optimizer.param_groups is optimizer.optimizer.param_groups
            for p, q in zip(model.parameters(), reference.parameters(), strict=True):
                slow = optimizer.state[p]["slow_param"]
                assert torch.equal(slow, straight.state[q]["slow_param"])
                assert not torch.equal(slow, p)
                assert optimizer.optimizer.state[p]["step"].item() == 27
    assert_same_state(
        "Adam", optimizer.optimizer.state_dict(), straight.optimizer.state_dict()
    )


def test_lookahead_state_dict_before_the_first_step_has_no_slow_weights():
    optimizer = make_lookahead(make_model())
    assert optimizer.state_dict()["slow_params"] == {}
    assert len(optimizer.state) == 0


def test_lookahead_shares_the_inner_groups_so_schedulers_reach_the_inner_lr():
    model = make_model()
    inner = optim.SGD(two_groups(model, [{"lr": 0.1}, {"lr": 0.01}]), momentum=0.9)
    optimizer = Lookahead(inner, k=3)
    assert optimizer.param_groups is inner.param_groups
    scheduler = LambdaLR(optimizer, lambda t: 0.5**t)
    for X, y in batches(4):
        train_step(model, optimizer, X, y)
        scheduler.step()
    assert [g["lr"] for g in inner.param_groups] == pytest.approx([0.1 / 16, 0.01 / 16])
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_lookahead_closure_and_weights_without_grad():
    a, b, loss_fn = small_problem()
    optimizer = Lookahead(optim.SGD([a, b], lr=0.05, momentum=0.9), k=2)

    def closure():
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    losses = [optimizer.step(closure).item() for _ in range(6)]
    assert losses[-1] < losses[0]
    assert b.tolist() == [3.0, 4.0]  # synced three times, never moved


def test_lookahead_add_param_group_reaches_the_inner_optimizer():
    model = make_model()
    inner = optim.Adam(model[0].parameters(), lr=0.01)
    optimizer = Lookahead(inner, k=2)
    for X, y in batches(3):
        train_step(model, optimizer, X, y)
    start = model[2].weight.detach().clone()
    optimizer.add_param_group({"params": model[2].parameters(), "lr": 0.02})
    assert len(inner.param_groups) == 2 and inner.param_groups[1]["betas"] == (
        0.9,
        0.999,
    )
    for X, y in batches(3, seed=2):
        train_step(model, optimizer, X, y)
    assert not torch.equal(model[2].weight, start)
    assert "slow_param" in optimizer.state[model[2].weight]


def test_lookahead_deepcopy_continues_identically():
    model = make_model()
    optimizer = make_lookahead(model)
    for X, y in batches(7):
        train_step(model, optimizer, X, y)
    # One deepcopy of both, so the copied optimizer holds the copied weights
    twin_model, twin = copy.deepcopy((model, optimizer))
    assert twin.step_count == 7 and twin.param_groups is twin.optimizer.param_groups
    assert twin.param_groups[0]["params"][0] is twin_model[0].weight
    for step, (X, y) in enumerate(batches(8, seed=3), start=8):
        train_step(model, optimizer, X, y)
        train_step(twin_model, twin, X, y)
        assert_same_params(twin_model, model, step)


NUMPY_OPTIONS = [
    (optim.SGD, "lr", np.float32(0.1)),
    (optim.SGD, "momentum", np.float64(0.9)),
    (optim.Adagrad, "lr_decay", np.int64(0)),
    (optim.RMSprop, "alpha", np.float32(0.9)),
    (optim.Adam, "eps", np.float64(1e-8)),
    (optim.AdamW, "betas", (np.float32(0.5), np.float64(0.999))),
    (optim.Adam, "amsgrad", np.bool_(True)),
]


@pytest.mark.parametrize(("cls", "name", "value"), NUMPY_OPTIONS)
def test_numpy_scalars_pass_as_plain_numbers_bools_and_strings_do_not(
    cls, name, value
):
    # Stored as plain floats/bools, so the state_dict loads with weights_only=True
    weight = torch.ones(2, dtype=torch.float64, requires_grad=True)
    optimizer = cls([weight], **{name: value})
    stored = optimizer.defaults[name]
    assert stored == (tuple(map(float, value)) if name == "betas" else value)
    assert type(stored) in (float, bool, tuple), type(stored)
    weight.grad = torch.ones_like(weight)
    optimizer.step()
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    optimizer.load_state_dict(torch.load(buffer, weights_only=True))
    refused = ["0.1", None] if name == "amsgrad" else [True, "0.1"]
    for bad in refused:
        with pytest.raises(ValueError, match=rf"^{name} must be "):
            cls([weight], **{name: bad})


def test_lookahead_takes_numpy_scalars():
    inner = optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    lookahead = Lookahead(inner, k=np.int64(3), alpha=np.float32(0.5))
    assert (lookahead.k, lookahead.alpha) == (3, 0.5)
    assert type(lookahead.k) is int and type(lookahead.alpha) is float
