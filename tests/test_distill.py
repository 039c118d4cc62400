"""Tests for course_lib.distill: the loss against its definition written with
F.kl_div (both log_target forms, reduction batchmean, T**2, alpha mixing with
F.cross_entropy) in values and gradients (float64); the gradient's size
independent of T in the high-temperature limit thanks to T**2 (and shrinking
like 1/T**2 without it); softened probabilities; ensemble soft targets; the
training helper step for step against a loop written out by hand."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import distill as D
from course_lib.train import minibatch_indices

F64 = torch.float64


def randn(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=F64)


def labels(n, c, seed=0):
    return torch.randint(c, (n,), generator=torch.Generator().manual_seed(seed))


def reference(z, v, y, T, alpha, log_target):
    """Hinton et al.'s loss as PyTorch users write it."""
    log_q = F.log_softmax(z / T, dim=1)
    if log_target:
        target = F.log_softmax(v / T, dim=1)
        kl = F.kl_div(log_q, target, reduction="batchmean", log_target=True)
    else:
        kl = F.kl_div(log_q, F.softmax(v / T, dim=1), reduction="batchmean")
    return alpha * T**2 * kl + (1 - alpha) * F.cross_entropy(z, y)


# ---------------------------------------------------------------- probabilities


@pytest.mark.parametrize("T", [0.5, 1.0, 3.0, 20.0])
def test_softened_probabilities_is_softmax_of_logits_over_T(T):
    v = randn(6, 10, scale=3)
    got = D.softened_probabilities(v, T)
    torch.testing.assert_close(got, F.softmax(v / T, dim=-1), rtol=1e-14, atol=0)
    torch.testing.assert_close(got.sum(1), torch.ones(6, dtype=F64))
    # the ranking of the classes never changes, only the contrast
    assert torch.equal(got.argsort(1), v.argsort(1))


def test_softened_probabilities_limits_and_entropy_grows_with_T():
    v = randn(4, 10, scale=3)
    uniform = torch.full((4, 10), 0.1, dtype=F64)
    hot = D.softened_probabilities(v, 1e6)
    torch.testing.assert_close(hot, uniform, atol=1e-5, rtol=0)
    one_hot = F.one_hot(v.argmax(1), 10).to(F64)
    torch.testing.assert_close(D.softened_probabilities(v, 1e-3), one_hot)
    entropies = []
    for T in [0.5, 1, 2, 4, 8]:
        p = D.softened_probabilities(v, T)
        entropies.append(-(p * p.log()).sum(1))
    for low, high in zip(entropies[:-1], entropies[1:], strict=True):
        assert (high > low).all()


# ---------------------------------------------------------------- the loss


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (4.0, 0.9), (20.0, 0.3), (2.5, 1.0)])
def test_loss_and_gradients_equal_the_kl_div_definition(T, alpha, log_target):
    z = randn(32, 10, seed=1, scale=2).requires_grad_()
    v = randn(32, 10, seed=2, scale=4)
    y = labels(32, 10)
    got = D.distillation_loss(z, v, y, temperature=T, alpha=alpha)
    (grad,) = torch.autograd.grad(got, z)
    expected = reference(z, v, y, T, alpha, log_target)
    (expected_grad,) = torch.autograd.grad(expected, z)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-15)


def test_gradient_is_T_times_q_minus_p_over_batch():
    z, v = randn(8, 5, seed=3).requires_grad_(), randn(8, 5, seed=4)
    for T in [0.7, 3.0, 12.0]:
        loss = D.distillation_loss(z, v, temperature=T, alpha=1.0)
        (grad,) = torch.autograd.grad(loss, z)
        q, p = F.softmax(z / T, 1), F.softmax(v / T, 1)
        expected = T * (q - p).detach() / 8
        torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-16)


def soft_grad(z, v, T, squared=True):
    z = z.clone().requires_grad_()
    loss = D.distillation_loss(z, v, temperature=T, alpha=1.0)
    if not squared:
        loss = loss / T**2
    return torch.autograd.grad(loss, z)[0]


def test_T_squared_makes_the_gradient_size_independent_of_T_at_high_T():
    C, B = 10, 16
    z, v = randn(B, C, seed=5, scale=2), randn(B, C, seed=6, scale=2)
    z, v = z - z.mean(1, keepdim=True), v - v.mean(1, keepdim=True)  # zero mean
    limit = (z - v) / (C * B)  # the paper's high-temperature gradient
    errors = []
    for T in [20.0, 100.0, 1000.0]:
        g = soft_grad(z, v, T)
        errors.append((g - limit).norm() / limit.norm())
    assert errors[0] < 0.1 and errors[2] < 2e-3  # the error falls like 1/T
    assert errors[0] > errors[1] > errors[2]  # it converges to the limit
    norms = [soft_grad(z, v, T).norm() for T in [10.0, 30.0, 100.0, 300.0]]
    assert max(norms) / min(norms) < 1.1
    # without the T**2 factor the same gradient shrinks like 1/T**2
    plain = [soft_grad(z, v, T, squared=False).norm() for T in [10.0, 100.0]]
    ratio = (plain[0] / plain[1]).item()
    assert ratio == pytest.approx(100 * (norms[0] / norms[2]).item(), rel=1e-9)
    assert 90 < ratio < 110


def test_alpha_zero_is_cross_entropy_and_alpha_one_needs_no_labels():
    z, v, y = randn(20, 7, seed=7), randn(20, 7, seed=8), labels(20, 7)
    got = D.distillation_loss(z, v, y, temperature=3.0, alpha=0.0)
    assert torch.equal(got, F.cross_entropy(z, y))
    soft = D.distillation_loss(z, v, temperature=3.0, alpha=1.0)
    torch.testing.assert_close(soft, reference(z, v, y, 3.0, 1.0, True))


def test_identical_logits_give_zero_loss_and_zero_gradient():
    z = randn(10, 6, seed=9).requires_grad_()
    for T in [0.5, 2.0, 50.0]:
        loss = D.distillation_loss(z, z.detach(), temperature=T, alpha=1.0)
        (grad,) = torch.autograd.grad(loss, z)
        assert abs(loss.item()) < 1e-12 and grad.abs().max() < 1e-15


def test_teacher_gets_no_gradient_and_large_logits_stay_finite():
    z = randn(5, 4, seed=10, scale=1e3).requires_grad_()
    v = randn(5, 4, seed=11, scale=1e3).requires_grad_()
    loss = D.distillation_loss(z, v, labels(5, 4), temperature=2.0, alpha=0.5)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(z.grad).all()
    assert v.grad is None
    torch.testing.assert_close(
        loss, reference(z, v.detach(), labels(5, 4), 2.0, 0.5, True), rtol=1e-12, atol=0
    )


def test_soft_target_loss_takes_probabilities_with_zeros():
    z = randn(3, 4, seed=12)
    rows = [[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0.1, 0.2, 0.3, 0.4]]
    p = torch.tensor(rows, dtype=F64)
    got = D.soft_target_loss(z, p, 2.0)
    expected = 4.0 * F.kl_div(F.log_softmax(z / 2, 1), p, reduction="batchmean")
    assert math.isfinite(got.item())
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    # the loss with teacher logits is the loss on their softened probabilities
    v = randn(3, 4, seed=13)
    torch.testing.assert_close(
        D.distillation_loss(z, v, temperature=2.0, alpha=1.0),
        D.soft_target_loss(z, D.softened_probabilities(v, 2.0), 2.0),
        rtol=1e-14, atol=0,
    )  # fmt: skip


def test_float32_matches_float64():
    z, v = randn(64, 10, seed=14, scale=3), randn(64, 10, seed=15, scale=3)
    y = labels(64, 10)
    got = D.distillation_loss(z.float(), v.float(), y, temperature=4.0, alpha=0.7)
    assert got.dtype == torch.float32
    expected = D.distillation_loss(z, v, y, temperature=4.0, alpha=0.7)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(temperature=0.0), "temperature must be a real number > 0"),
        (dict(temperature=-1.0), "temperature must be a real number > 0"),
        (dict(temperature=math.nan), "temperature"),
        (dict(temperature=math.inf), "temperature"),
        (dict(temperature=True), "temperature"),
        (dict(alpha=1.5), r"alpha must be a real number in \[0, 1\]"),
        (dict(alpha=-0.1), "alpha"),
        (dict(alpha=0.5, targets=None), "alpha must be 1 when targets is None"),
    ],
)
def test_bad_loss_arguments_are_named(kwargs, match):
    z, v = randn(4, 3), randn(4, 3, seed=1)
    args = dict(targets=labels(4, 3), temperature=2.0, alpha=0.5) | kwargs
    with pytest.raises(ValueError, match=match):
        D.distillation_loss(z, v, args.pop("targets"), **args)


def test_bad_loss_shapes_and_types_are_named():
    z, v, y = randn(4, 3), randn(4, 3, seed=1), labels(4, 3)
    with pytest.raises(ValueError, match="teacher_logits must be of the student"):
        D.distillation_loss(z, randn(4, 5), y)
    with pytest.raises(ValueError, match="targets must be an int64 tensor of shape"):
        D.distillation_loss(z, v, y.double())
    with pytest.raises(ValueError, match="targets must be an int64 tensor of shape"):
        D.distillation_loss(z, v, labels(5, 3))
    with pytest.raises(ValueError, match="student_logits must be a 2-D floating"):
        D.distillation_loss(randn(4), v, y)
    with pytest.raises(TypeError, match="teacher_logits must be a torch.Tensor"):
        D.distillation_loss(z, v.tolist(), y)
    with pytest.raises(TypeError, match="targets must be a torch.Tensor"):
        D.distillation_loss(z, v, [0, 1, 2, 0])
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        D.softened_probabilities(torch.arange(3), 2.0)
    with pytest.raises(ValueError, match="temperature"):
        D.softened_probabilities(z, 0)
    with pytest.raises(ValueError, match="teacher_probs must be of the student"):
        D.soft_target_loss(z, randn(3, 3).softmax(1), 2.0)


# ---------------------------------------------------------------- teachers


def models(k=3, dropout=0.0):
    out = []
    for i in range(k):
        torch.manual_seed(i)
        layers = [nn.Linear(6, 8), nn.Dropout(dropout), nn.Linear(8, 4)]
        out.append(nn.Sequential(*layers).double())
    return out


def test_teacher_probabilities_single_and_ensemble_average_softened_members():
    X = randn(50, 6, seed=20)
    members = models(3)
    with torch.no_grad():
        each = [F.softmax(m(X) / 3.0, 1) for m in members]
    got = D.teacher_probabilities(members[0], X, 3.0, batch_size=7)
    torch.testing.assert_close(got, each[0], rtol=1e-14, atol=0)
    got = D.teacher_probabilities(members, X, 3.0)
    torch.testing.assert_close(got, sum(each) / 3, rtol=1e-14, atol=1e-16)
    torch.testing.assert_close(got.sum(1), torch.ones(50, dtype=F64))
    assert not got.requires_grad
    # averaging softened members differs from softening the averaged logits
    with torch.no_grad():
        mean_logits = sum(m(X) for m in members) / 3
    assert (got - F.softmax(mean_logits / 3.0, 1)).abs().max() > 1e-4


def test_teacher_runs_in_eval_mode_and_its_mode_is_restored():
    X = randn(40, 6, seed=21)
    (teacher,) = models(1, dropout=0.5)
    teacher.train()
    first = D.teacher_probabilities(teacher, X, 2.0)
    second = D.teacher_probabilities(teacher, X, 2.0)
    assert torch.equal(first, second)  # no dropout noise
    assert teacher.training
    teacher.eval()
    with torch.no_grad():
        torch.testing.assert_close(first, F.softmax(teacher(X) / 2.0, 1))


def test_bad_teachers_are_named():
    X = randn(5, 6)
    for bad in ([], [nn.Linear(6, 4), "model"], "model", None):
        with pytest.raises(TypeError, match="teacher must be an nn.Module or a non"):
            D.teacher_probabilities(bad, X)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        D.teacher_probabilities(models(1)[0], X, batch_size=0)


# ---------------------------------------------------------------- training


def by_hand(student, teacher, X, y, T, alpha, lr, epochs, batch_size, seed):
    """The training loop written out, with the loss as PyTorch users write it."""
    optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9)
    rng = torch.Generator().manual_seed(seed)
    members = teacher if isinstance(teacher, list) else [teacher]
    with torch.no_grad():
        p = sum(F.softmax(m(X) / T, 1) for m in members) / len(members)
    for _ in range(epochs):
        for idx in minibatch_indices(len(X), batch_size, shuffle=True, generator=rng):
            z = student(X[idx])
            kl = F.kl_div(F.log_softmax(z / T, 1), p[idx], reduction="batchmean")
            loss = alpha * T**2 * kl + (1 - alpha) * F.cross_entropy(z, y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def student_pair(seed=30):
    torch.manual_seed(seed)
    a = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)).double()
    b = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)).double()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("alpha,ensemble", [(0.0, False), (0.6, False), (1.0, True)])
def test_distill_equals_the_loop_written_out(alpha, ensemble):
    X, y = randn(70, 6, seed=31), labels(70, 4, seed=32)
    teacher = models(3) if ensemble else models(1)[0]
    ours, theirs = student_pair()
    opt = torch.optim.SGD(ours.parameters(), lr=0.05, momentum=0.9)
    history = D.distill(
        ours, None if alpha == 0 else teacher, X, y, optimizer=opt, num_epochs=4,
        batch_size=16, temperature=3.0, alpha=alpha, seed=5, progress=False,
    )  # fmt: skip
    by_hand(theirs, teacher, X, y, 3.0, alpha, 0.05, 4, 16, seed=5)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert len(history.step_loss) == 4 * 5 and history.steps_per_epoch == 5
    assert len(history.train_loss) == 4 and 0 <= history.train_acc[-1] <= 1
    assert history.stopped is None


def test_distill_takes_soft_targets_given_as_probabilities():
    X, y = randn(70, 6, seed=33), labels(70, 4, seed=34)
    teacher = models(1)[0]
    probs = D.teacher_probabilities(teacher, X, 2.0)
    from_model, from_probs = student_pair()
    for student, source in [(from_model, teacher), (from_probs, probs)]:
        opt = torch.optim.SGD(student.parameters(), lr=0.05)
        D.distill(
            student, source, X, y, optimizer=opt, num_epochs=3, batch_size=16,
            temperature=2.0, alpha=0.7, seed=1, progress=False,
        )  # fmt: skip
    for p, q in zip(from_model.parameters(), from_probs.parameters(), strict=True):
        assert torch.equal(p, q)
    opt = torch.optim.SGD(from_probs.parameters(), lr=0.05)
    kw = dict(optimizer=opt, num_epochs=1, progress=False)
    for bad in [probs[:60], probs * 2, probs - probs.mean(), probs[:, :3]]:
        with pytest.raises(ValueError, match="teacher must be probabilities of shape"):
            D.distill(from_probs, bad, X, y, **kw)


def test_distilled_student_learns_the_teachers_function():
    X, X_val = randn(400, 6, seed=40), randn(200, 6, seed=41)
    teacher = models(1)[0]
    with torch.no_grad():
        teacher[2].weight.mul_(4)  # a confident teacher
        y_val = teacher(X_val).argmax(1)
    torch.manual_seed(1)
    student = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 4)).double()
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    history = D.distill(
        student, teacher, X, optimizer=opt, num_epochs=60, batch_size=50,
        temperature=2.0, alpha=1.0, val=(X_val, y_val), progress=False,
    )  # fmt: skip
    assert history.train_loss[-1] < 0.2 * history.train_loss[0]
    assert history.val_acc[-1] > 0.9 and len(history.val_acc) == 60
    assert math.isnan(history.train_acc[0])  # no labels given
    assert student.training


def test_distill_stops_on_a_non_finite_loss():
    X, y = randn(40, 6), labels(40, 4)
    student, _ = student_pair()
    opt = torch.optim.SGD(student.parameters(), lr=1e6)
    history = D.distill(
        student, models(1)[0], X, y, optimizer=opt, num_epochs=50, batch_size=8,
        alpha=0.5, val=(X, y), progress=False,
    )  # fmt: skip
    assert history.stopped is not None and "non-finite" in history.stopped
    assert history.num_epochs < 50 and math.isnan(history.val_acc[-1])


def test_bad_distill_arguments_are_named():
    X, y = randn(10, 6), labels(10, 4)
    student, _ = student_pair()
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    teacher = models(1)[0]
    kw = dict(optimizer=opt, num_epochs=1, progress=False)
    with pytest.raises(ValueError, match="teacher must be a model if alpha > 0"):
        D.distill(student, None, X, y, alpha=0.5, **kw)
    with pytest.raises(ValueError, match="y must be given when alpha < 1"):
        D.distill(student, teacher, X, None, alpha=0.5, **kw)
    with pytest.raises(ValueError, match="X and y must have the same length"):
        D.distill(student, teacher, X, y[:5], **kw)
    with pytest.raises(ValueError, match="num_epochs must be a positive integer"):
        D.distill(student, teacher, X, y, **(kw | dict(num_epochs=0)))
    with pytest.raises(ValueError, match="alpha"):
        D.distill(student, teacher, X, y, alpha=2, **kw)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        D.distill(student, teacher, X, y, **(kw | dict(optimizer="sgd")))


# ---------------------------------------------------------------- the book's teacher


def test_mnist1d_teacher_is_cached_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_LIB_CACHE", str(tmp_path))
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    first = D.mnist1d_teacher(num_epochs=1, channels=4)
    assert torch.equal(torch.rand(1), expected_draw)  # global RNG untouched
    files = list(tmp_path.glob("distill-mnist1d-teacher-*.pt"))
    assert len(files) == 1 and not first.training
    # read back, not retrained: a changed file on disk is what comes back
    state = {k: v + 1 for k, v in first.state_dict().items()}
    torch.save(state, files[0])
    second = D.mnist1d_teacher(num_epochs=1, channels=4)
    for k, v in second.state_dict().items():
        assert torch.equal(v, state[k]), k
    # another setting or seed shift is another file; an unreadable file retrains
    D.mnist1d_teacher(num_epochs=1, channels=4, seed=1)
    monkeypatch.setenv("COURSE_LIB_SEED_SHIFT", "1000")
    D.mnist1d_teacher(num_epochs=1, channels=4)
    assert len(list(tmp_path.glob("distill-mnist1d-teacher-*.pt"))) == 3
    monkeypatch.delenv("COURSE_LIB_SEED_SHIFT")
    files[0].write_bytes(b"not a checkpoint")
    third = D.mnist1d_teacher(num_epochs=1, channels=4)
    for k, v in third.state_dict().items():
        assert torch.equal(v, first.state_dict()[k]), k  # the same training again


def test_mnist1d_teacher_without_cache_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_LIB_CACHE", str(tmp_path / "cache"))
    model = D.mnist1d_teacher(num_epochs=1, channels=4, cache=False)
    assert isinstance(model, nn.Module)
    assert not list((tmp_path / "cache").glob("distill-*"))  # MNIST-1D is cached
    with pytest.raises(ValueError, match="num_epochs must be a positive integer"):
        D.mnist1d_teacher(num_epochs=0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        D.mnist1d_teacher(seed=-1)
