import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset

from course_lib.data import make_2d, make_loader
from course_lib.schedules import Cosine, StepDecay, Warmup
from course_lib.train import (
    Callback,
    EarlyStopping,
    History,
    evaluate,
    fit,
    minibatch_indices,
    minibatch_sgd,
)


def small_problem(n=103, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 5, generator=g, dtype=dtype)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long() + (X[:, 2] > 1).long()  # 3 classes
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)
    return X, y, model


def sgd_with_torch(model, X, y, lr, batch_size, num_epochs, shuffle, seed, schedule):
    """The same algorithm with PyTorch's pieces: DataLoader + optim.SGD + LambdaLR.

    SubsetRandomSampler draws one permutation per epoch, as minibatch_sgd does
    (RandomSampler makes an extra draw after each epoch, see its source).
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, schedule or (lambda t: 1.0)
    )
    g = torch.Generator().manual_seed(seed)
    sampler = SubsetRandomSampler(range(len(X)), generator=g) if shuffle else None
    loader = DataLoader(TensorDataset(X, y), batch_size=batch_size, sampler=sampler)
    losses = []
    for _ in range(num_epochs):
        for xb, yb in loader:
            loss = nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
    return losses


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("schedule", [None, Warmup(Cosine(20), 5), StepDecay(7, 0.5)])
def test_minibatch_sgd_equals_torch_sgd(shuffle, schedule):
    X, y, ours = small_problem()
    theirs = copy.deepcopy(ours)
    kwargs = dict(lr=0.3, batch_size=16, num_epochs=4, shuffle=shuffle, seed=3)
    ours_losses = minibatch_sgd(ours, X, y, schedule=schedule, **kwargs)
    torch_losses = sgd_with_torch(theirs, X, y, schedule=schedule, **kwargs)
    assert len(ours_losses) == 4 * math.ceil(103 / 16)  # last batch is partial
    assert ours_losses == pytest.approx(torch_losses, rel=1e-12, abs=1e-14)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    moved = [
        not torch.equal(p, q)
        for p, q in zip(ours.parameters(), small_problem()[2].parameters(), strict=True)
    ]
    assert all(moved)


def test_minibatch_sgd_shuffle_matters_and_seed_repeats():
    X, y, m1 = small_problem()
    m2, m3 = copy.deepcopy(m1), copy.deepcopy(m1)
    a = minibatch_sgd(m1, X, y, lr=0.1, batch_size=10, num_epochs=2, seed=0)
    b = minibatch_sgd(m2, X, y, lr=0.1, batch_size=10, num_epochs=2, seed=0)
    c = minibatch_sgd(m3, X, y, lr=0.1, batch_size=10, num_epochs=2, seed=1)
    assert a == b and a != c


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lr=-0.1), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2.0), "batch_size"),
        (dict(num_epochs=0), "num_epochs"),
        (dict(shuffle="yes"), "shuffle"),
    ],
)
def test_minibatch_sgd_rejects_bad_arguments(kwargs, name):
    X, y, model = small_problem()
    args = dict(lr=0.1, batch_size=8, num_epochs=1) | kwargs
    with pytest.raises(ValueError, match=name):
        minibatch_sgd(model, X, y, **args)
    with pytest.raises(ValueError, match="same length"):
        minibatch_sgd(model, X, y[:-1], lr=0.1, batch_size=8, num_epochs=1)


def moons_setup(seed=0, n=400):
    X, y = make_2d("moons", n_samples=n, noise=0.1, seed=seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))
    train = make_loader(X[:300], y[:300], batch_size=25, shuffle=True, seed=seed)
    val = make_loader(X[300:], y[300:], batch_size=100, shuffle=False)
    return model, train, val


def test_fit_records_history_and_learns():
    model, train, val = moons_setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    h = fit(
        model,
        train,
        opt,
        num_epochs=15,
        val_loader=val,
        schedule=Cosine(15 * 12),
        progress=False,
    )
    assert h.steps_per_epoch == 12 and h.num_epochs == 15
    assert len(h.step_loss) == len(h.step_lr) == 180
    assert len(h.val_loss) == len(h.val_acc) == 15
    assert h.step_lr == pytest.approx(
        [0.2 * Cosine(180)(t) for t in range(180)], rel=1e-12
    )
    assert h.val_acc[-1] > 0.95 and h.train_loss[-1] < 0.5 * h.train_loss[0]
    assert h.val_loss[-1] == pytest.approx(evaluate(model, val)[0], rel=1e-6)
    assert h.stopped is None and set(h.as_dict()) >= {"step_loss", "val_acc"}


def test_fit_is_reproducible():
    runs = []
    for _ in range(2):
        model, train, val = moons_setup(seed=4)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        runs.append(
            fit(model, train, opt, num_epochs=3, val_loader=val, progress=False)
        )
    assert runs[0].step_loss == runs[1].step_loss and runs[0].val_acc == runs[1].val_acc


def test_fit_accepts_a_torch_scheduler_and_rejects_junk():
    model, train, _ = moons_setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    h = fit(model, train, opt, num_epochs=1, schedule=sched, progress=False)
    assert h.step_lr == [0.1 * 0.5 ** (t // 5) for t in range(12)]
    with pytest.raises(ValueError, match="schedule"):
        fit(model, train, opt, num_epochs=1, schedule=3, progress=False)
    with pytest.raises(ValueError, match="num_epochs"):
        fit(model, train, opt, num_epochs=0, progress=False)


def test_fit_stops_on_non_finite_loss():
    model, train, val = moons_setup()
    opt = torch.optim.SGD(model.parameters(), lr=1e6)
    h = fit(model, train, opt, num_epochs=20, val_loader=val, progress=False)
    assert h.stopped is not None and "non-finite" in h.stopped
    assert not math.isfinite(h.step_loss[-1])
    assert h.num_epochs < 20 and len(h.val_loss) == h.num_epochs


class Snapshots(Callback):
    def on_train_begin(self, model, history):
        self.states = []

    def on_epoch_end(self, model, history):
        self.states.append(copy.deepcopy(model.state_dict()))
        return False


def test_early_stopping_stops_and_restores_best_weights():
    # Few samples, a wide net and a high learning rate overfit within a few epochs.
    X, y = make_2d("moons", n_samples=340, noise=0.35, seed=1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(2, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2)
    )
    train = make_loader(X[:40], y[:40], batch_size=8, shuffle=True)
    val = make_loader(X[40:], y[40:], batch_size=300, shuffle=False)
    snaps, stopper = Snapshots(), EarlyStopping(patience=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    h = fit(
        model,
        train,
        opt,
        num_epochs=200,
        val_loader=val,
        callbacks=[snaps, stopper],
        progress=False,
    )
    best = min(range(h.num_epochs), key=h.val_loss.__getitem__)
    assert (
        h.num_epochs == best + 1 + 3 < 200
    )  # stopped exactly `patience` epochs after the best
    assert h.best_epoch == best
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, snaps.states[best][k], rtol=0, atol=0)
    assert evaluate(model, val)[0] == pytest.approx(h.val_loss[best], rel=1e-6)


def test_early_stopping_arguments():
    with pytest.raises(ValueError, match="monitor"):
        EarlyStopping(monitor="val_accuracy")
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="min_delta"):
        EarlyStopping(min_delta=-1.0)
    model, train, _ = moons_setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="val_loader"):
        fit(
            model, train, opt, num_epochs=2, callbacks=[EarlyStopping()], progress=False
        )


def test_evaluate_matches_a_hand_computation():
    model, _, val = moons_setup()
    X, y = next(iter(val))
    logits = model(X)
    loss, acc = evaluate(model, val)
    assert loss == pytest.approx(
        nn.functional.cross_entropy(logits, y).item(), rel=1e-6
    )
    assert acc == (logits.argmax(1) == y).sum().item() / len(y)


def test_history_defaults():
    h = History(steps_per_epoch=3)
    assert h.num_epochs == 0 and h.step_loss == [] and h.stopped is None


def _sgd(**changes):
    X, y, model = small_problem(n=20)
    args = dict(lr=0.1, batch_size=8, num_epochs=1) | changes
    return minibatch_sgd(model, X, y, **args)


def _fit(num_epochs):
    model, train, _ = moons_setup(n=60)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return fit(model, train, opt, num_epochs=num_epochs, progress=False)


NUMPY_ARGUMENTS = [
    ("lr", lambda v: _sgd(lr=v), np.float32(0.1)),
    ("batch_size", lambda v: _sgd(batch_size=v), np.int64(8)),
    ("num_epochs", lambda v: _sgd(num_epochs=v), np.int64(2)),
    ("shuffle", lambda v: _sgd(shuffle=v), np.bool_(False)),
    ("n", lambda v: minibatch_indices(v, 4, shuffle=False, generator=None),
     np.int64(10)),
    ("num_epochs", _fit, np.int64(1)),
    ("patience", lambda v: EarlyStopping(patience=v), np.int64(3)),
    ("min_delta", lambda v: EarlyStopping(min_delta=v), np.float32(0.01)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "call", "value"), NUMPY_ARGUMENTS)
def test_numpy_scalars_pass_bools_and_strings_do_not(name, call, value):
    call(value)
    for bad in (1, "yes") if isinstance(value, np.bool_) else (True, "3"):
        with pytest.raises(ValueError, match=rf"^{name} must be "):
            call(bad)
