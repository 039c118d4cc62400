"""Lab 6: the bug zoo. Eight training functions, each with one silent bug.

The student repairs each function in place. The checks never read the code:
they run the repaired function on seeded data (digits, or synthetic data)
and measure what it does, then compare the measurements with those of a
correct run (the reference, run on the same case):

- an audit of every optimizer step (:class:`_Audit`): the gradient the step
  uses against the gradient of the right loss on that step's batch, at the
  weights of that moment (no ``zero_grad``, a softmax fed to
  ``cross_entropy``, a ``(B, 1) - (B,)`` loss, labels off by one);
- the autograd graph kept alive from step to step
  (:class:`course_lib.monitor.GraphProbe`; ``running_loss += loss``);
- a probe test split: the standardised training data must not move when
  only the test split changes, nor a test example when its neighbours do;
- predictions called twice, on a batch and on part of it, and the model's
  state before and after (``eval()`` forgotten);
- how far the body of the network moved in each phase of a fine-tuning run
  (a layer left out of the optimizer);
- held-out accuracy or error, within a margin of the correct run's.

Every message says what was observed (the symptom), not what to change.
"""

from __future__ import annotations

import copy
import functools
import math
import random

import torch
import torch.nn.functional as F
from torch import nn

from ..monitor import GraphProbe
from .checks import Question, declare

_DOUBLE = torch.float64
_GRAD_TOL = 1e-6  # relative gradient error of a right step: float64 round-off
_ACC_MARGIN = 0.05  # held-out accuracy a repaired run may lose to the reference


# --- data and models ------------------------------------------------------------------


@functools.cache
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 8x8 digits: ``(1797, 64)`` in [0, 1] (float64), labels 0..9."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return torch.tensor(X / 16.0, dtype=_DOUBLE), torch.tensor(y, dtype=torch.int64)


def _digit_split(seed: int, n_train: int, n_test: int):
    """Disjoint random training and held-out digits (fresh tensors)."""
    X, y = _digits()
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    train, test = order[:n_train], order[n_train : n_train + n_test]
    return X[train], y[train], X[test], y[test]


def _batches(X, y, batch_size: int, steps: int, seed: int) -> list:
    """``steps`` full batches ``(X_b, y_b)``, epochs of a seeded shuffle."""
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    while len(out) < steps:
        for idx in torch.randperm(len(X), generator=g).split(batch_size):
            if len(out) < steps and len(idx) == batch_size:
                out.append((X[idx], y[idx]))
    return out


def _mlp(seed: int, sizes, act=nn.ReLU) -> nn.Sequential:
    """``Linear -> act -> ... -> Linear``, float64, seeded in a forked RNG."""
    layers: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for d_in, d_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(d_in, d_out), act()]
        return nn.Sequential(*layers[:-1]).double()


def _accuracy(model, X, y) -> float:
    with torch.no_grad():
        return float((model(X).argmax(dim=1) == y).double().mean())


def _losses(value, what: str) -> list[float]:
    """The list of per-step losses a training function returned, as floats."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{what} must return the list of its losses, one per step, "
                        f"got {type(value).__name__}")  # fmt: skip
    return [float(v) for v in value]


# --- the step audit -------------------------------------------------------------------


class _Audit:
    """At every ``optimizer.step()``: the gradient the step uses against the
    gradient of ``loss_fn`` on the step's batch at the weights of that moment.

    Step ``k`` is meant for ``batches[k]``. The right gradient is computed on a
    twin of the model (a copy made before training, given the current
    weights), so nothing the student's model or graph holds is touched.
    Records per step: ``deviation`` = ||g_used - g|| / ||g||, ``ratio`` =
    ||g_used|| / ||g||, and ``loss``, the right loss of the batch.
    """

    def __init__(self, model, optimizer, batches, loss_fn, on_step=None):
        self.model, self.twin = model, copy.deepcopy(model)
        self.batches, self.loss_fn, self.on_step = batches, loss_fn, on_step
        self.deviation, self.ratio, self.loss = [], [], []
        self.handle = optimizer.register_step_pre_hook(self._hook)

    def _hook(self, optimizer, args, kwargs):
        if self.on_step is not None:
            self.on_step()
        k = len(self.loss)
        if k >= len(self.batches):  # more steps than batches: noted, not audited
            self.deviation.append(math.inf)
            self.ratio.append(math.nan)
            self.loss.append(math.nan)
            return
        X, y = self.batches[k]
        twin = self.twin
        with torch.no_grad():
            for t, p in zip(twin.parameters(), self.model.parameters(), strict=True):
                t.copy_(p)
        twin.zero_grad(set_to_none=True)
        loss = self.loss_fn(twin(X), y)
        loss.backward()
        right = torch.cat([t.grad.flatten() for t in twin.parameters()])
        used = torch.cat([
            (p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
            for p in self.model.parameters()
        ]).to(right.dtype)  # fmt: skip
        scale = float(right.norm()) or 1e-300
        self.deviation.append(float((used - right).norm()) / scale)
        self.ratio.append(float(used.norm()) / scale)
        self.loss.append(loss.item())

    def outputs(self) -> dict:
        self.handle.remove()
        return {
            "steps": len(self.loss),
            "deviation": torch.tensor(self.deviation, dtype=_DOUBLE),
            "ratio": torch.tensor(self.ratio, dtype=_DOUBLE),
            "true_loss": torch.tensor(self.loss, dtype=_DOUBLE),
        }


def _gradient_problem(expected, actual, loss_words: str) -> str | None:
    """What the audit saw, in words: wrong number of steps, or the first step
    whose gradient is not the right one (and how that goes on)."""
    steps = expected["steps"]
    if actual["steps"] != steps:
        return (f"it took {actual['steps']} optimizer steps for {steps} batches (one "
                "step per batch, in order, is what it is meant to do)")  # fmt: skip
    dev, ratio = actual["deviation"], actual["ratio"]
    bad = torch.nonzero(~(dev <= _GRAD_TOL)).flatten()
    if len(bad) == 0:
        return None
    k = int(bad[0])
    where = "at every step" if k == 0 else f"from step {k + 1} on"
    if k > 0 and len(bad) < steps - k:
        where = f"at {len(bad)} of the {steps} steps, first at step {k + 1}"
    message = (
        f"{where}, the gradient the optimizer steps with is not the gradient of "
        f"{loss_words} on that step's batch at the current weights: at step {k + 1} "
        f"it is {float(ratio[k]):.3g} times as long (relative difference "
        f"{float(dev[k]):.2g})"
    )
    last = float(ratio[-1])
    if k < steps - 1 and last > 1.5 * float(ratio[k]):
        message += f", and it grows: {last:.3g} times by step {steps}"
    return message


def _accuracy_problem(expected, actual) -> str | None:
    acc, ref = actual["accuracy"], expected["accuracy"]
    if acc >= ref - _ACC_MARGIN:
        return None
    return (f"after training, the network is right on {acc:.1%} of the held-out "
            f"digits (a correct run: {ref:.1%})")  # fmt: skip


def _joined(problems) -> str | None:
    found = [p for p in problems if p]
    return "; ".join(found) if found else None


# --- the training questions: digits classified by a small MLP -----------------------


def _classify_case(seed=0, lr=0.1, batch_size=32, steps=60):
    label = f"{steps} steps of SGD, lr={lr}, batch {batch_size}, seed {seed}"
    return label, dict(seed=seed, lr=lr, batch_size=batch_size, steps=steps)


def _classify_hidden(tag: str, steps=(40, 80), lr=(0.05, 0.2)):
    def cases(seed):
        rng = random.Random(f"lab06-{tag}-{seed}")
        return [
            _classify_case(seed * 7 + i, round(rng.uniform(*lr), 3),
                           rng.choice((16, 32, 48)), rng.randint(*steps))
            for i in range(1, 3)
        ]  # fmt: skip

    return cases


def _classify_setup(inputs):
    seed = inputs["seed"]
    X, y, X_test, y_test = _digit_split(seed, 500, 300)
    model = _mlp(seed + 1, (64, 32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=inputs["lr"])
    batches = _batches(X, y, inputs["batch_size"], inputs["steps"], seed)
    return model, optimizer, batches, X_test, y_test


def _run_classifier(fn, inputs, loss_fn=F.cross_entropy) -> dict:
    model, optimizer, batches, X_test, y_test = _classify_setup(inputs)
    audit = _Audit(model, optimizer, batches, loss_fn)
    reported = fn(model, optimizer, batches)
    out = audit.outputs()
    out["reported"] = torch.tensor(_losses(reported, "it"), dtype=_DOUBLE)
    out["accuracy"] = _accuracy(model, X_test, y_test)
    return out


def _train_steps_reference(model, optimizer, batches):
    """Reference of q1: one SGD step per batch; returns the losses."""
    losses = []
    for X, y in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _explain_q1(expected, actual, *, rtol, atol) -> str | None:
    gradient = _gradient_problem(expected, actual, "the cross-entropy")
    return _joined([gradient, gradient and _accuracy_problem(expected, actual)])


def _train_classifier_reference(model, optimizer, batches):
    """Reference of q2: cross-entropy of the logits; returns the losses."""
    losses = []
    for X, y in batches:
        optimizer.zero_grad()
        logits = model(X)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _reported_problem(actual, loss_words: str) -> str | None:
    """The losses the function returned against the right loss of each batch."""
    got, right = actual["reported"], actual["true_loss"]
    if got.shape != right.shape:
        return (f"it returned {len(got)} losses for {len(right)} steps")  # fmt: skip
    off = ~torch.isclose(got, right, rtol=1e-6, atol=1e-9)
    if not bool(off.any()):
        return None
    k = int(torch.nonzero(off)[0])
    return (
        f"the losses it returns are not {loss_words} (step {k + 1}: it reports "
        f"{float(got[k]):.4f}, {loss_words} is {float(right[k]):.4f}; its reported "
        f"loss never goes below {float(got.min()):.3f})"
    )


def _explain_q2(expected, actual, *, rtol, atol) -> str | None:
    words = "the cross-entropy of the network's outputs"
    gradient = _gradient_problem(expected, actual, words)
    slow = None
    if gradient:
        slow = (f"after {expected['steps']} steps the network's cross-entropy is "
                f"{float(actual['true_loss'][-5:].mean()):.3f} (a correct run: "
                f"{float(expected['true_loss'][-5:].mean()):.3f})")  # fmt: skip
    return _joined([gradient, _reported_problem(actual, words), slow])


# --- q3: regression, a (B, 1) output against (B,) targets ---------------------------


def _regression_data(seed: int, n: int):
    g = torch.Generator().manual_seed(10_000 + seed)
    X = torch.randn(n, 4, generator=g, dtype=_DOUBLE)
    w = torch.tensor([1.0, -0.5, 0.8, 0.3], dtype=_DOUBLE)
    y = torch.sin(2 * X @ w) + 0.5 * X[:, 0] + 0.05 * torch.randn(n, generator=g,
                                                                   dtype=_DOUBLE)
    return X, y  # (n, 4), (n,)


def _regression_case(seed=0, lr=0.2, batch_size=32, steps=300):
    label = f"{steps} steps of SGD, lr={lr}, batch {batch_size}, seed {seed}"
    return label, dict(seed=seed, lr=lr, batch_size=batch_size, steps=steps)


def _regression_hidden(seed):
    rng = random.Random(f"lab06-q3-{seed}")
    return [
        _regression_case(seed * 7 + i, round(rng.uniform(0.1, 0.25), 3),
                         rng.choice((16, 32, 64)), rng.randint(200, 300))
        for i in range(1, 3)
    ]  # fmt: skip


def _mse_per_example(pred, y):
    return ((pred.squeeze(1) - y) ** 2).mean()  # (B, 1) -> (B,)


def _run_regressor(fn, inputs) -> dict:
    seed = inputs["seed"]
    X, y = _regression_data(seed, 800)
    X_train, y_train, X_test, y_test = X[:500], y[:500], X[500:], y[500:]
    model = _mlp(seed + 1, (4, 32, 1), act=nn.Tanh)
    optimizer = torch.optim.SGD(model.parameters(), lr=inputs["lr"])
    batches = _batches(X_train, y_train, inputs["batch_size"], inputs["steps"], seed)
    audit = _Audit(model, optimizer, batches, _mse_per_example)
    fn(model, optimizer, batches)
    out = audit.outputs()
    with torch.no_grad():
        pred = model(X_test).squeeze(1)  # (N,)
    out["test_mse"] = float(((pred - y_test) ** 2).mean())
    out["pred_std"], out["target_std"] = float(pred.std()), float(y_test.std())
    return out


def _train_regressor_reference(model, optimizer, batches):
    """Reference of q3: the mean squared error of each prediction."""
    for X, y in batches:
        optimizer.zero_grad()
        pred = model(X)  # (B, 1)
        loss = ((pred.squeeze(1) - y) ** 2).mean()
        loss.backward()
        optimizer.step()


def _explain_q3(expected, actual, *, rtol, atol) -> str | None:
    words = "the mean squared error of each prediction against its target"
    gradient = _gradient_problem(expected, actual, words)
    mse, ref = actual["test_mse"], expected["test_mse"]
    flat = None
    if not mse <= 1.25 * ref + 0.02:
        flat = f"held-out mean squared error {mse:.3f} (a correct run: {ref:.3f})"
        if actual["pred_std"] < 0.5 * expected["pred_std"]:
            flat = (f"the network predicts nearly the same value for every input (the "
                    f"spread of its held-out predictions is {actual['pred_std']:.3f}, "
                    f"the targets' {actual['target_std']:.3f}); {flat}")  # fmt: skip
    return _joined([flat, gradient])


# --- q4: standardisation, judged with a probe test split ----------------------------


def _split_data(seed: int, n_train: int, n_test: int):
    g = torch.Generator().manual_seed(20_000 + seed)
    scale = torch.rand(6, generator=g, dtype=_DOUBLE) * 4 + 0.5
    shift = torch.randn(6, generator=g, dtype=_DOUBLE) * 3
    X = torch.randn(n_train + 2 * n_test, 6, generator=g, dtype=_DOUBLE) * scale + shift
    # the second test split comes from elsewhere: shifted and spread out
    probe = X[n_train + n_test :] * 2.0 + 5.0
    return X[:n_train], X[n_train : n_train + n_test], probe


def _standardize_case(seed=0, n_train=200, n_test=80):
    label = f"{n_train} training and {n_test} test examples of 6 features, seed {seed}"
    return label, dict(seed=seed, n_train=n_train, n_test=n_test)


def _standardize_hidden(seed):
    rng = random.Random(f"lab06-q4-{seed}")
    return [_standardize_case(seed * 7 + i, rng.randint(50, 400), rng.randint(20, 200))
            for i in range(1, 4)]  # fmt: skip


def _pair(value, shapes) -> tuple[torch.Tensor, torch.Tensor]:
    want = f"standardize must return two float64 tensors of shapes {shapes}"
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{want}, got {type(value).__name__}")
    for v, shape in zip(value, shapes, strict=True):
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != shape:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise TypeError(f"{want}, got {got}")
    return value[0].detach().to(_DOUBLE), value[1].detach().to(_DOUBLE)


def _run_standardize(fn, inputs) -> dict:
    X_train, X_test, probe = _split_data(inputs["seed"], inputs["n_train"],
                                         inputs["n_test"])  # fmt: skip
    shapes = (tuple(X_train.shape), tuple(X_test.shape))
    Z_train, Z_test = _pair(fn(X_train.clone(), X_test.clone()), shapes)
    Z_train_probe, _ = _pair(fn(X_train.clone(), probe.clone()), shapes)
    half = len(X_test) // 2
    _, Z_half = _pair(fn(X_train.clone(), X_test[:half].clone()),
                      (shapes[0], (half, X_test.shape[1])))  # fmt: skip
    mean, std = X_train.mean(dim=0), X_train.std(dim=0, correction=0)
    want = (X_test - mean) / std  # (n_test, 6)
    return {
        # how far the training data moves when only the test split changes
        "train_moved": float((Z_train_probe - Z_train).abs().max()),
        # how far a test example moves when half its test split is removed
        "test_moved": float((Z_half - Z_test[:half]).abs().max()),
        "train_mean": float(Z_train.mean(dim=0).abs().max()),
        "train_std": float((Z_train.std(dim=0, correction=0) - 1).abs().max()),
        # relative distance from the training split's standardisation of X_test
        "test_error": float(((Z_test - want) / (1 + want.abs())).abs().max()),
    }


def _standardize_reference(X_train, X_test):
    """Reference of q4: both splits standardised with the training statistics."""
    mean, std = X_train.mean(dim=0), X_train.std(dim=0)
    return (X_train - mean) / std, (X_test - mean) / std


def _explain_q4(expected, actual, *, rtol, atol) -> str | None:
    problems = []
    if not actual["train_moved"] <= 1e-9:
        problems.append(
            "the standardised training set depends on the test split: with the same "
            "training examples and another test split, the training features move "
            f"by up to {actual['train_moved']:.3g}"
        )
    if not actual["test_moved"] <= 1e-9:
        problems.append(
            "a test example's standardised value depends on which other examples "
            "are in the test split: removing half of them moves the rest by up to "
            f"{actual['test_moved']:.3g}"
        )
    if not (actual["train_mean"] <= 1e-6 and actual["train_std"] <= 0.02):
        problems.append(
            "the training split does not come out standardised: a feature's mean "
            f"is off 0 by up to {actual['train_mean']:.3g}, its standard deviation "
            f"off 1 by up to {actual['train_std']:.3g}"
        )
    if not problems and not actual["test_error"] <= 0.02:
        problems.append(
            "the test split is not transformed as the training split is: it is up "
            f"to {actual['test_error']:.3g} away from (X_test - training mean) / "
            "training standard deviation"
        )
    return _joined(problems)


# --- q5: one epoch that returns its mean loss, probed for kept graphs ---------------


def _run_epoch(fn, inputs, probe: bool = True) -> dict:
    """The audit, and the autograd graph alive at step 2 and at the last step
    (two :class:`~course_lib.monitor.GraphProbe` samples: each walks every
    Python object, so two, not one per step). The reference run, known to
    keep one step's graph at most, is not probed (``probe=False``)."""
    model, optimizer, batches, _, _ = _classify_setup(inputs)
    graph, steps = GraphProbe(), len(batches)
    counter = iter(range(10**9))

    def sample():
        if probe and next(counter) in (1, steps - 1):
            graph.sample()

    audit = _Audit(model, optimizer, batches, F.cross_entropy, on_step=sample)
    value = fn(model, optimizer, batches)
    out = audit.outputs()
    nodes = graph.nodes if len(graph.nodes) == 2 else [0, 0]  # too few steps: the
    out["growth"] = (nodes[1] - nodes[0]) / (steps - 2)  # audit says so
    out["nodes"] = nodes[1]
    returned_graph = isinstance(value, torch.Tensor) and value.grad_fn is not None
    out["returned_graph"] = returned_graph
    try:
        out["mean_loss"] = float(value.detach() if returned_graph else value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"train_epoch must return the mean loss as a number, got "
                        f"{type(value).__name__}") from err  # fmt: skip
    return out


def _expected_epoch(inputs) -> dict:
    return _run_epoch(_train_epoch_reference, inputs, probe=False)


def _train_epoch_reference(model, optimizer, batches):
    """Reference of q5: the mean loss, summed as Python floats."""
    running_loss = 0.0
    for X, y in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
    return running_loss / len(batches)


def _explain_q5(expected, actual, *, rtol, atol) -> str | None:
    problems = []
    if actual["growth"] >= 0.5:
        problems.append(
            f"the autograd graph kept alive grows with every step, by "
            f"{actual['growth']:.1f} nodes per step ({actual['nodes']} nodes alive at "
            "the last step, where a correct loop holds one step's graph at most): "
            "memory grows with the length of the epoch"
        )
    if actual["returned_graph"]:
        problems.append("the number it returns is a tensor that still carries an "
                        "autograd graph")  # fmt: skip
    problems.append(_gradient_problem(expected, actual, "the cross-entropy"))
    mean = float(actual["true_loss"].mean())
    if not math.isclose(actual["mean_loss"], mean, rel_tol=1e-6, abs_tol=1e-9):
        problems.append(f"it returns {actual['mean_loss']:.6g}, but the mean of its "
                        f"batches' losses is {mean:.6g}")  # fmt: skip
    return _joined(problems)


# --- q6: predictions of a network with batch norm and dropout -----------------------


def _bn_model(seed: int) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(64, 10),
        ).double()  # fmt: skip


def _trained_bn_model(seed: int):
    """A network trained 40 steps (running statistics set), its held-out data."""
    X, y, X_test, y_test = _digit_split(seed, 500, 300)
    model = _bn_model(seed + 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        for X_b, y_b in _batches(X, y, 32, 40, seed):
            optimizer.zero_grad()
            F.cross_entropy(model(X_b), y_b).backward()
            optimizer.step()
    return model, X_test, y_test


def _predictions(value, n: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != (n,):
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else (
            type(value).__name__)  # fmt: skip
        raise TypeError(f"predict must return a tensor of {n} class indices, got {got}")
    return value.detach().long()


def _run_predict(fn, inputs) -> dict:
    model, X_test, y_test = _trained_bn_model(inputs["seed"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n, half = len(X_test), len(X_test) // 3
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(inputs["seed"] + 3)
        first = _predictions(fn(model, X_test.clone()), n)
        again = _predictions(fn(model, X_test.clone()), n)
        part = _predictions(fn(model, X_test[:half].clone()), half)
    changed = [k for k, v in model.state_dict().items()
               if not torch.equal(v, before[k])]  # fmt: skip
    return {
        "predictions": first, "again": float((again == first).double().mean()),
        "part": float((part == first[:half]).double().mean()),
        "accuracy": float((first == y_test).double().mean()), "changed": changed,
    }  # fmt: skip


def _predict_reference(model, X):
    """Reference of q6: class indices from the network in evaluation mode."""
    model.eval()
    with torch.no_grad():
        return model(X).argmax(dim=1)


def _explain_q6(expected, actual, *, rtol, atol) -> str | None:
    problems = []
    if actual["again"] < 1:
        problems.append(f"called twice on the same inputs, it gives different "
                        f"predictions for {1 - actual['again']:.1%} of them")
    if actual["part"] < 1:
        problems.append(
            "an example's prediction depends on the other examples in the batch: "
            f"{1 - actual['part']:.1%} of them change when it is called on the "
            "first third of the batch alone"
        )
    if actual["changed"]:
        problems.append("calling it changed the model's state ("
                        + ", ".join(actual["changed"][:3]) + ")")  # fmt: skip
    agree = float((actual["predictions"] == expected["predictions"]).double().mean())
    if agree < 0.99:
        problems.append(
            f"its predictions agree with the trained network's on {agree:.1%} of "
            f"the examples, and are right on {actual['accuracy']:.1%} of them (the "
            f"trained network: {expected['accuracy']:.1%})"
        )
    return _joined(problems)


def _predict_case(seed=0):
    label = f"a trained network with batch norm and dropout, seed {seed}"
    return label, dict(seed=seed)


# --- q7: labels in the SVHN convention ----------------------------------------------


def _svhn(y):
    return torch.where(y == 0, 10, y)  # digit 0 is label 10


def _run_svhn(fn, inputs) -> dict:
    model, optimizer, batches, X_test, y_test = _classify_setup(inputs)
    batches = [(X, _svhn(y)) for X, y in batches]

    def loss_fn(logits, labels):
        return F.cross_entropy(logits, labels % 10)

    audit = _Audit(model, optimizer, batches, loss_fn)
    reported = fn(model, optimizer, batches)
    out = audit.outputs()
    out["reported"] = torch.tensor(_losses(reported, "it"), dtype=_DOUBLE)
    out["accuracy"] = _accuracy(model, X_test, y_test)
    with torch.no_grad():
        pred = model(X_test).argmax(dim=1)
    out["one_below"] = float((pred == (y_test - 1) % 10).double().mean())
    return out


def _train_svhn_labels_reference(model, optimizer, batches):
    """Reference of q7: labels 1..10 (10 for the digit 0) to classes 0..9."""
    losses = []
    for X, labels in batches:
        targets = labels % 10
        optimizer.zero_grad()
        loss = F.cross_entropy(model(X), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _explain_q7(expected, actual, *, rtol, atol) -> str | None:
    accuracy = _accuracy_problem(expected, actual)
    if accuracy:
        reported = actual["reported"]
        falls = len(reported) and float(reported[-5:].mean()) < 0.8 * float(reported[0])
        if falls:
            end = float(reported[-5:].mean())
            accuracy += (f", though the loss it reports falls from "
                         f"{float(reported[0]):.3f} to {end:.3f}")
        if actual["one_below"] > 0.3:
            accuracy += (f"; on {actual['one_below']:.1%} of the held-out digits it "
                         "answers the digit one below the true one (0 for a 1, 9 for "
                         "a 0)")  # fmt: skip
    gradient = _gradient_problem(
        expected, actual, "the cross-entropy of the network's outputs against the "
        "digits the images show")  # fmt: skip
    return _joined([accuracy, gradient])


# --- q8: fine-tuning in two phases ---------------------------------------------------


def _finetune_case(seed=0, lr=0.2, steps=100, head_steps=30):
    label = f"{head_steps} head-only steps, then {steps - head_steps} full steps, " \
        f"lr={lr}, seed {seed}"
    return label, dict(seed=seed, lr=lr, steps=steps, head_steps=head_steps)


def _finetune_hidden(seed):
    rng = random.Random(f"lab06-q8-{seed}")
    return [_finetune_case(seed * 7 + i, round(rng.uniform(0.1, 0.3), 3),
                           rng.randint(80, 120), rng.randint(10, 40))
            for i in range(1, 3)]  # fmt: skip


def _flat(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def _run_finetune(fn, inputs) -> dict:
    seed = inputs["seed"]
    X, y, X_test, y_test = _digit_split(seed, 500, 300)
    model = _mlp(seed + 1, (64, 32, 10))
    body, head = model[:-1], model[-1]
    start_body, start_head = _flat(body), _flat(head)
    seen = []  # (body moved, head moved) before each forward call

    def note(module, args):
        seen.append((float((_flat(body) - start_body).norm()),
                     float((_flat(head) - start_head).norm())))  # fmt: skip

    handle = model.register_forward_pre_hook(note)
    batches = _batches(X, y, 32, inputs["steps"], seed)
    try:
        fn(model, batches, inputs["lr"], inputs["head_steps"])
    finally:
        handle.remove()
    note(model, ())
    k = min(inputs["head_steps"], len(seen) - 1)
    return {
        "body_phase1": seen[k][0], "head_phase1": seen[k][1],
        "body_end": seen[-1][0], "head_end": seen[-1][1],
        "accuracy": _accuracy(model, X_test, y_test),
    }  # fmt: skip


def _fine_tune_reference(model, batches, lr, head_steps):
    """Reference of q8: the head alone for ``head_steps`` steps, then everything."""
    body = model[:-1]
    body.requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for step, (X, y) in enumerate(batches):
        if step == head_steps:
            body.requires_grad_(True)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        optimizer.step()
    return model


def _explain_q8(expected, actual, *, rtol, atol) -> str | None:
    problems = []
    if actual["body_phase1"] > 1e-12:
        problems.append(
            "the body (every layer but the last) already moves during the head-only "
            f"steps (by {actual['body_phase1']:.3g})"
        )
    if actual["head_phase1"] < 0.5 * expected["head_phase1"]:
        problems.append(
            "the head barely moves during the head-only steps "
            f"({actual['head_phase1']:.3g}; a correct run: "
            f"{expected['head_phase1']:.3g})"
        )
    moved = actual["body_end"] - actual["body_phase1"]
    want = expected["body_end"] - expected["body_phase1"]
    if not 0.5 * want <= moved <= 2 * want:
        still = "never changes" if moved < 1e-12 else f"moves by {moved:.3g}"
        problems.append(
            f"after the head-only steps the body {still} during the steps that "
            f"should train the whole network (a correct run: {want:.3g})"
        )
    if problems:
        problems.append(_accuracy_problem(expected, actual))
    return _joined(problems)


# --- what each answer may not use ---------------------------------------------------

_LOOPS = ("course_lib.train.fit", "course_lib.train._train_epoch",
          "course_lib.train.minibatch_sgd", "course_lib.train.sgd_step")  # fmt: skip

QUESTIONS = declare(__name__, [
    Question(
        "q1", "train_steps", "steps that do not follow their batch",
        run=_run_classifier, reference=_train_steps_reference, explain=_explain_q1,
        public_cases=lambda: [_classify_case(0, 0.5, 32, 100),
                              _classify_case(1, 0.3, 16, 90)],
        hidden_cases=_classify_hidden("q1", steps=(80, 120), lr=(0.3, 0.6)),
        forbidden=_LOOPS,
    ),
    Question(
        "q2", "train_classifier", "a classifier that learns slowly",
        run=_run_classifier, reference=_train_classifier_reference, explain=_explain_q2,
        public_cases=lambda: [_classify_case(0, 0.3, 32, 80),
                              _classify_case(1, 0.6, 16, 60)],
        hidden_cases=_classify_hidden("q2", steps=(60, 100), lr=(0.1, 1.0)),
        forbidden=_LOOPS,
    ),
    Question(
        "q3", "train_regressor", "a regressor that predicts the mean",
        run=_run_regressor, reference=_train_regressor_reference, explain=_explain_q3,
        public_cases=lambda: [_regression_case(0), _regression_case(1, 0.1, 16, 250)],
        hidden_cases=_regression_hidden, forbidden=_LOOPS,
    ),
    Question(
        "q4", "standardize", "a test score that is too good",
        run=_run_standardize, reference=_standardize_reference, explain=_explain_q4,
        public_cases=lambda: [_standardize_case(0), _standardize_case(1, 60, 150)],
        hidden_cases=_standardize_hidden,
        forbidden=("course_lib.data.Standardizer", "course_lib.data.standardize",
                   "sklearn.preprocessing.StandardScaler",
                   "sklearn.preprocessing.scale"),  # fmt: skip
    ),
    Question(
        "q5", "train_epoch", "memory that grows every step",
        run=_run_epoch, reference=_train_epoch_reference, expected=_expected_epoch,
        explain=_explain_q5,
        public_cases=lambda: [_classify_case(0, 0.1, 32, 20)],
        hidden_cases=lambda seed: [_classify_case(seed * 7 + 1, 0.1, 16, 16),
                                   _classify_case(seed * 7 + 2, 0.2, 48, 24)],
        forbidden=_LOOPS,
    ),
    Question(
        "q6", "predict", "predictions that change",
        run=_run_predict, reference=_predict_reference, explain=_explain_q6,
        public_cases=lambda: [_predict_case(0), _predict_case(1)],
        hidden_cases=lambda seed: [_predict_case(seed * 7 + i) for i in (1, 2)],
        forbidden=("course_lib.train.evaluate",),
    ),
    Question(
        "q7", "train_svhn_labels", "confident and wrong",
        run=_run_svhn, reference=_train_svhn_labels_reference, explain=_explain_q7,
        public_cases=lambda: [_classify_case(0, 0.2, 32, 100)],
        hidden_cases=lambda seed: [
            _classify_case(seed * 7 + i, 0.2, 32, random.Random(seed).randint(80, 120))
            for i in (1, 2)],  # fmt: skip
        forbidden=_LOOPS,
    ),
    Question(
        "q8", "fine_tune", "a body that never learns",
        run=_run_finetune, reference=_fine_tune_reference, explain=_explain_q8,
        public_cases=lambda: [_finetune_case(0), _finetune_case(1, 0.1, 90, 20)],
        hidden_cases=_finetune_hidden, forbidden=_LOOPS,
    ),
])  # fmt: skip
