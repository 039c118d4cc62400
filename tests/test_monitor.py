"""course_lib.monitor: clipping against torch.nn.utils, the gradient monitor
against hand-computed norms, the NaN finder and the graph-leak probe."""

import math

import pytest
import torch
from torch import nn

from course_lib import monitor
from course_lib.train import fit

F64 = torch.float64
NORMS = [1.0, 2.0, math.inf, 0.5, 3.0]


def _params(seed, scale=1.0, with_none=True):
    """Float64 parameters with gradients (one without, when ``with_none``)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (3,), (2, 2, 2)]
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    for p in params:
        p.requires_grad_(True)
        p.grad = scale * torch.randn(p.shape, generator=gen, dtype=torch.float64)
    if with_none:
        params.append(torch.zeros(5, dtype=torch.float64, requires_grad=True))
    return params


def _twin(params):
    twin = [p.detach().clone().requires_grad_(True) for p in params]
    for p, q in zip(params, twin, strict=True):
        q.grad = None if p.grad is None else p.grad.clone()
    return twin


@pytest.mark.parametrize("norm_type", NORMS)
@pytest.mark.parametrize("max_norm", [0.0, 0.1, 1.0, 1e3, math.inf])
def test_clip_grad_norm_matches_torch_over_steps(norm_type, max_norm):
    ours = _params(0)
    theirs = _twin(ours)
    for step in range(4):  # new gradients each step, of growing size
        gen = torch.Generator().manual_seed(step)
        for p, q in zip(ours, theirs, strict=True):
            if p.grad is not None:
                new = (step + 1) * torch.randn(p.shape, generator=gen, dtype=p.dtype)
                p.grad, q.grad = new.clone(), new.clone()
        a = monitor.clip_grad_norm_(ours, max_norm, norm_type)
        b = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
        for p, q in zip(ours, theirs, strict=True):
            assert (p.grad is None) == (q.grad is None)
            if p.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=0)
    assert ours[-1].grad is None  # the parameter without a gradient is left alone


def test_clip_grad_norm_scales_to_max_norm_and_keeps_direction():
    params = _params(1, scale=10.0)
    before = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
    total = monitor.clip_grad_norm_(params, 1.0)
    after = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
    assert total.item() == pytest.approx(before.norm().item(), rel=1e-12)
    assert after.norm().item() == pytest.approx(1.0, rel=1e-5)
    cos = torch.dot(before, after) / (before.norm() * after.norm())
    assert cos.item() == pytest.approx(1.0, rel=1e-12)


def test_clip_single_tensor_generator_and_empty():
    p = _params(2, with_none=False)[0]
    q = _twin([p])[0]
    a = monitor.clip_grad_norm_(p, 0.5)
    b = torch.nn.utils.clip_grad_norm_(q, 0.5)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=0)
    ps = _params(3)
    qs = _twin(ps)
    a = monitor.clip_grad_norm_((x for x in ps), 0.5, 1.0)
    b = torch.nn.utils.clip_grad_norm_((x for x in qs), 0.5, 1.0)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    for empty in ([], [torch.zeros(3, requires_grad=True)]):
        assert monitor.clip_grad_norm_(empty, 1.0).item() == 0.0
        assert torch.nn.utils.clip_grad_norm_(empty, 1.0).item() == 0.0
        monitor.clip_grad_value_(empty, 1.0)


def test_clip_grad_norm_nonfinite():
    ours = _params(4)
    ours[0].grad[0, 0] = math.inf
    theirs = _twin(ours)
    with pytest.raises(RuntimeError, match="non-finite|cannot be clipped"):
        monitor.clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)
    assert torch.equal(ours[1].grad, theirs[1].grad)  # nothing changed
    a = monitor.clip_grad_norm_(ours, 1.0)
    b = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert math.isinf(a.item()) and math.isinf(b.item())
    for p, q in zip(ours[:3], theirs[:3], strict=True):
        torch.testing.assert_close(p.grad, q.grad, equal_nan=True)


@pytest.mark.parametrize("clip_value", [0.0, 0.3, 1.0, 100.0])
def test_clip_grad_value_matches_torch_over_steps(clip_value):
    ours = _params(5, scale=2.0)
    theirs = _twin(ours)
    ours[1].grad[0] = math.nan
    theirs[1].grad[0] = math.nan
    for _ in range(3):
        assert monitor.clip_grad_value_(ours, clip_value) is None
        torch.nn.utils.clip_grad_value_(theirs, clip_value)
        for p, q in zip(ours, theirs, strict=True):
            if p.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0,
                                           equal_nan=True)  # fmt: skip
                p.grad.mul_(3.0)
                q.grad.mul_(3.0)
    single = _params(6, with_none=False)[0]
    twin = _twin([single])[0]
    monitor.clip_grad_value_(single, 0.2)
    torch.nn.utils.clip_grad_value_(twin, 0.2)
    assert torch.equal(single.grad, twin.grad)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda p: monitor.clip_grad_norm_(p, -1.0), "max_norm"),
        (lambda p: monitor.clip_grad_norm_(p, 1.0, 0), "norm_type"),
        (lambda p: monitor.clip_grad_norm_(p, 1.0, "inf"), "norm_type"),
        (lambda p: monitor.clip_grad_norm_(p, 1.0, error_if_nonfinite=1), "error_if"),
        (lambda p: monitor.clip_grad_norm_(p, 1.0, foreach=1), "foreach"),
        (lambda p: monitor.clip_grad_value_(p, -0.1), "clip_value"),
        (lambda p: monitor.clip_grad_value_(p, math.nan), "clip_value"),
    ],
)
def test_clip_bad_arguments(call, name):
    with pytest.raises(ValueError, match=name):
        call(_params(7))


def _tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _data(n=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (n,), generator=gen)
    return list(zip(X.split(4), y.split(4), strict=True))  # 3 batches of 4


def test_gradient_monitor_matches_hand_computed_sgd():
    model, batches, lr = _tiny(), _data(), 0.1
    reference = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    mon = monitor.GradientMonitor(opt)
    fit(model, batches, opt, num_epochs=2, callbacks=[mon], progress=False)
    names = [n for n, _ in reference.named_parameters()]
    assert list(mon.grad_norm) == names
    step = 0
    for _ in range(2):
        for X, y in batches:  # the same run, by hand
            reference.zero_grad()
            nn.functional.cross_entropy(reference(X), y).backward()
            with torch.no_grad():
                for name, p in reference.named_parameters():
                    g = p.grad.norm().item()
                    assert mon.grad_norm[name][step] == pytest.approx(g, rel=1e-10)
                    ratio = lr * g / p.norm().item()
                    got = mon.update_ratio[name][step]
                    assert got == pytest.approx(ratio, rel=1e-8)
                    p -= lr * p.grad
            step += 1
    assert all(len(v) == 6 for v in mon.update_ratio.values())
    X, y = batches[0]  # a step after fit is not recorded: the hooks are gone
    nn.functional.cross_entropy(model(X), y).backward()
    opt.step()
    assert all(len(v) == 6 for v in mon.grad_norm.values())


def test_gradient_monitor_adam_epoch_means_and_frozen_layer():
    model, batches = _tiny(1), _data(seed=1)
    model[0].bias.requires_grad_(False)  # never gets a gradient
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    mon = monitor.GradientMonitor(opt, every="epoch")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, batches[:1], opt, num_epochs=1, callbacks=[mon], progress=False)
    assert all(len(v) == 1 for v in mon.grad_norm.values())
    assert math.isnan(mon.grad_norm["0.bias"][0])
    for name, p in model.named_parameters():  # one Adam step: true ratio
        if name != "0.bias":
            true = ((p - before[name]).norm() / before[name].norm()).item()
            assert mon.update_ratio[name][0] == pytest.approx(true, rel=1e-10)
    model, batches = _tiny(2), _data(n=24, seed=2)  # 6 steps per epoch
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps, epochs = monitor.GradientMonitor(opt), monitor.GradientMonitor(opt, "epoch")
    fit(model, batches, opt, num_epochs=2, callbacks=[steps, epochs], progress=False)
    for name in steps.grad_norm:  # each epoch's entry is the mean of its 6 steps
        for record in ("grad_norm", "update_ratio"):
            per_step = torch.tensor(getattr(steps, record)[name], dtype=F64).view(2, 6)
            got = torch.tensor(getattr(epochs, record)[name], dtype=F64)
            torch.testing.assert_close(got, per_step.mean(dim=1), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="every"):
        monitor.GradientMonitor(opt, every="batch")
    with pytest.raises(ValueError, match="optimizer"):
        monitor.GradientMonitor(model)


class _Blowup(nn.Module):
    def forward(self, x):
        return x * 1e308 * 10  # overflows to inf


def _net_with_inf():
    return nn.Sequential(
        nn.Linear(3, 4),
        nn.Sequential(nn.ReLU(), nn.Linear(4, 4), _Blowup()),
        nn.Linear(4, 2),
    ).double()


def test_find_nonfinite_names_the_first_module():
    torch.manual_seed(0)
    model = _net_with_inf()
    X = torch.randn(5, 3, dtype=torch.float64)
    with monitor.find_nonfinite(model) as finder:
        model(X)
        model(X)
    found = finder.found
    assert found is not None
    assert (found.name, found.module, found.call) == ("1.2", "_Blowup", 0)
    assert not found.inputs_nonfinite
    assert "1.2" in str(found)
    assert all(not m._forward_hooks for m in model.modules())  # hooks removed
    with monitor.find_nonfinite(model, raise_error=True):
        with pytest.raises(FloatingPointError, match="1.2"):
            model(X)
    assert all(not m._forward_hooks for m in model.modules())


def test_find_nonfinite_second_call_and_bad_input():
    torch.manual_seed(0)
    model = _tiny()
    good = torch.randn(4, 3, dtype=torch.float64)
    bad = good.clone()
    bad[1, 0] = math.nan
    with monitor.find_nonfinite(model) as finder:
        model(good)
        assert finder.found is None  # a healthy net: nothing found
        model(bad)
    assert (finder.found.name, finder.found.call) == ("0", 1)
    assert finder.found.inputs_nonfinite  # the data, not the layer
    with pytest.raises(ValueError, match="model"):
        monitor.find_nonfinite("model")


def _loop(leak):
    torch.manual_seed(0)
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    X = torch.randn(8, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (8,))
    state = {"running": 0.0}

    def step(i):
        loss = nn.functional.cross_entropy(model(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        state["running"] += loss if leak else loss.item()

    return model, step


@pytest.mark.parametrize("leak", [True, False])
def test_probe_loop_flags_only_the_leak(leak):
    _, step = _loop(leak)
    probe = monitor.probe_loop(step, num_steps=5)
    assert probe.leaking == leak
    if leak:
        assert probe.growth >= 5  # a whole graph per iteration
    else:
        assert probe.growth == 0 and len(set(probe.nodes[1:])) == 1


def test_graph_probe_watches_a_training_function():
    def train(model, leak):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        X = torch.randn(8, 3, dtype=torch.float64)
        y = torch.zeros(8, dtype=torch.long)
        running = 0.0
        for _ in range(5):
            loss = nn.functional.cross_entropy(model(X), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running = running + (loss if leak else loss.item())
        return running

    for leak in (True, False):
        model = _tiny()
        with monitor.GraphProbe(model) as probe:
            train(model, leak)
        assert len(probe.nodes) == 5
        assert probe.leaking == leak
        assert not model._forward_pre_hooks
    model = _tiny()  # course_lib's fit keeps no graph between steps
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with monitor.GraphProbe(model) as probe:
        fit(model, _data(n=16), opt, num_epochs=1, progress=False)
    assert len(probe.nodes) == 4 and not probe.leaking
    with pytest.raises(ValueError, match="threshold"):
        monitor.GraphProbe(threshold=0)
    with pytest.raises(ValueError, match="model"):
        monitor.GraphProbe("model")
    with pytest.raises(ValueError, match="num_steps"):
        monitor.probe_loop(lambda i: None, num_steps=2)
    with pytest.raises(ValueError, match="step"):
        monitor.probe_loop(3)


class _WhereSqrt(nn.Module):
    def forward(self, x):  # finite forward; sqrt backward 0 / 0 = NaN at x = 0
        return torch.where(x > 0, x.sqrt(), torch.zeros_like(x))


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_nan_born_in_backward_needs_detect_anomaly():
    model = nn.Sequential(nn.Linear(3, 3), _WhereSqrt()).double()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()  # the sqrt sees exactly 0
    X = torch.randn(4, 3, dtype=torch.float64)
    with monitor.find_nonfinite(model) as finder:
        model(X).sum().backward()
    assert finder.found is None  # forward hooks see nothing ...
    assert torch.isnan(model[0].weight.grad).any()  # ... yet the gradient is NaN
    # detect_anomaly names the backward function and warns with the forward
    # call's traceback
    with pytest.warns(UserWarning, match="SqrtBackward0"):
        with pytest.raises(RuntimeError, match="SqrtBackward0.*nan"):
            with torch.autograd.detect_anomaly(check_nan=True):
                model(X).sum().backward()
