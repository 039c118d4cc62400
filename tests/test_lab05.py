"""Lab 5 (regularisation): each classic mistake fails with a message naming it.

The generic lab tests (``test_labs.py``, ``test_grading.py``) cover the
mechanism; here: the references pass every public and hidden case, a right
answer written as a student would passes, each mistake the issue lists
(dropout that does not rescale or rescales at test time, the other
label-smoothing convention, an L2 penalty without its 1/2, ...) gets its own
message, and each forbidden route is named.
"""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from course_lib import regularize
from course_lib.labs import checks
from course_lib.labs import lab05_regularize as lab5

# --- answers as students write them: right, and with one mistake each -----------------


class Dropout(nn.Module):
    """Inverted dropout; ``flaw`` switches on one classic mistake."""

    flaw = ""

    def __init__(self, p=0.5, *, generator=None):
        super().__init__()
        if not 0 <= p <= 1 and self.flaw != "accepts any p":
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p, self.generator = p, generator

    def forward(self, x):
        p, flaw = self.p, self.flaw
        if not self.training and flaw != "drops in eval":
            return x * (1 - p) if flaw == "scales at test time" else x
        if p == 1:
            return x * 0
        if p == 0:
            return x
        g = None if flaw == "global generator" else self.generator
        keep = 1 - p if flaw != "keep probability" else p
        if flaw == "keeps where u > p":  # right odds, but not F.dropout's draw
            mask = (torch.rand(x.shape, generator=g, dtype=x.dtype) > p).to(x.dtype)
        elif flaw == "u < 1 - p":  # the same draw as bernoulli_(1 - p)
            mask = (torch.rand(x.shape, generator=g, dtype=x.dtype) < keep).to(x.dtype)
        else:
            mask = torch.empty_like(x).bernoulli_(keep, generator=g)
        if flaw == "no rescale":
            return x * mask
        return x * mask / keep


def flawed(flaw):
    return type(f"Dropout_{flaw.replace(' ', '_')}", (Dropout,), {"flaw": flaw})


class NotAModule:
    def __init__(self, p=0.5, *, generator=None):
        self.p = p

    def __call__(self, x):
        return x


def smooth_cross_entropy(logits, target, eps):
    log_p = F.log_softmax(logits, dim=1)
    nll = -log_p.gather(1, target[:, None]).squeeze(1)
    return ((1 - eps) * nll - eps * log_p.mean(dim=1)).mean()


def smoothing_over_the_others(logits, target, eps):
    c = logits.shape[1]
    one_hot = F.one_hot(target, c).to(logits.dtype)
    q = (1 - eps) * one_hot + eps / (c - 1) * (1 - one_hot)
    return -(q * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def smoothing_summed(logits, target, eps):
    return smooth_cross_entropy(logits, target, eps) * len(target)


def smoothing_through_log_of_softmax(logits, target, eps):
    c = logits.shape[1]
    q = (1 - eps) * F.one_hot(target, c).to(logits.dtype) + eps / c
    return -(q * logits.softmax(dim=1).log()).sum(dim=1).mean()


def mixup_batch(X, y, lam, num_classes, generator):
    perm = torch.randperm(len(X), generator=generator)
    one_hot = F.one_hot(y, num_classes).to(X.dtype)
    return lam * X + (1 - lam) * X[perm], lam * one_hot + (1 - lam) * one_hot[perm]


def mixup_swapped(X, y, lam, num_classes, generator):
    return mixup_batch(X, y, 1 - lam, num_classes, generator)


def mixup_rolled(X, y, lam, num_classes, generator):
    one_hot = F.one_hot(y, num_classes).to(X.dtype)
    mixed = lam * X + (1 - lam) * X.roll(1, 0)
    return mixed, lam * one_hot + (1 - lam) * one_hot.roll(1, 0)


def mixup_hard_targets(X, y, lam, num_classes, generator):
    mixed, _ = mixup_batch(X, y, lam, num_classes, generator)
    return mixed, F.one_hot(y, num_classes).to(X.dtype)


def mixup_index_targets(X, y, lam, num_classes, generator):
    return mixup_batch(X, y, lam, num_classes, generator)[0], y


def mixup_loss(logits, soft_targets):
    return -(soft_targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def mixup_loss_summed(logits, soft_targets):
    return -(soft_targets * F.log_softmax(logits, dim=1)).sum()


def l2_penalty(model):
    return sum((p**2).sum() for p in model.parameters()) / 2


def l2_without_half(model):
    return sum((p**2).sum() for p in model.parameters())


def l2_weights_only(model):
    return sum((p**2).sum() for p in model.parameters() if p.ndim > 1) / 2


def l2_as_a_float(model):
    return l2_penalty(model).item()


def l1_penalty(model):
    return sum(p.abs().sum() for p in model.parameters())


def l1_weights_only(model):
    return sum(p.abs().sum() for p in model.parameters() if p.ndim > 1)


def checked(capsys, check, answer) -> tuple[bool, str]:
    passed = check(answer)
    return passed, capsys.readouterr().out


# --- the references are right wherever the grader judges ------------------------------


@pytest.mark.parametrize("seed", [0, 3, 1234])
def test_references_pass_every_public_and_hidden_case(seed):
    for key, q in lab5.QUESTIONS.items():
        for label, inputs in q.public_cases() + q.hidden_cases(seed):
            out = q.run(q.reference, inputs)  # not run_one: it forbids references
            verdict = checks.judge(q, q.expected_outputs(inputs), out)
            assert verdict is None, (key, label, verdict)


def test_hidden_cases_differ_from_the_public_ones_and_with_the_seed():
    for q in lab5.QUESTIONS.values():
        public = [inputs for _, inputs in q.public_cases()]
        hidden = [inputs for _, inputs in q.hidden_cases(0)]
        assert not any(h in public for h in hidden)
        assert hidden != [inputs for _, inputs in q.hidden_cases(1)]


def test_hidden_dropout_cases_include_the_edges():
    ps = {inputs["p"] for _, inputs in lab5.QUESTIONS["q1"].hidden_cases(5)}
    assert {0.0, 1.0} <= ps
    assert any(p < 0.4 for p in ps) and any(p > 0.6 for p in ps)  # keep/drop differ


# --- right answers pass ---------------------------------------------------------------


@pytest.mark.parametrize(
    "key, answer",
    [
        ("q1", Dropout),
        ("q2", smooth_cross_entropy),
        ("q3", mixup_batch),
        ("q4", mixup_loss),
        ("q5", l2_penalty),
        ("q6", l1_penalty),
    ],
)
def test_a_right_answer_passes_public_and_hidden_cases(capsys, key, answer):
    passed, out = checked(capsys, getattr(lab5, f"check_{key}"), answer)
    assert passed, out
    q = lab5.QUESTIONS[key]
    for label, inputs in q.hidden_cases(7):
        actual = checks.run_one(q, answer, inputs)
        assert checks.judge(q, q.expected_outputs(inputs), actual) is None, label


# --- each mistake gets its own message ------------------------------------------------


@pytest.mark.parametrize(
    "flaw, words",
    [
        ("no rescale", ["does not rescale", "divided by 1 - p"]),
        ("scales at test time", ["in eval mode", "multiplies by 1 - p",
                                 "identity at test time"]),
        ("keep probability", ["probability p = 0.2", "probability of dropping"]),
        ("drops in eval", ["still drops units", "self.training"]),
        ("global generator", ["global random state", "generator=self.generator"]),
        ("keeps where u > p", ["not those F.dropout drops", "bernoulli_(1 - p"]),
        ("accepts any p", ["Dropout(1.5) must raise ValueError"]),
    ],
)  # fmt: skip
def test_each_dropout_mistake_is_named(capsys, flaw, words):
    passed, out = checked(capsys, lab5.check_q1, flawed(flaw))
    assert not passed and out.startswith("[FAIL]"), out
    for word in words:
        assert word in out, out


def test_dropout_mistakes_are_not_confused():
    """A layer that only scales at test time is not told it forgot to rescale, and
    a keep/drop swap is not reported where p = 0.5 hides it."""
    q = lab5.QUESTIONS["q1"]
    _, inputs = q.public_cases()[0]  # p = 0.5
    expected = q.expected_outputs(inputs)
    message = checks.judge(q, expected, checks.run_one(q, flawed("scales at test "
                                                                  "time"), inputs))
    assert "rescale" not in message and "multiplies by 1 - p" in message
    swap = checks.run_one(q, flawed("keep probability"), inputs)
    assert checks.judge(q, expected, swap) is None


def test_dropout_with_p_one_must_not_divide_by_zero():
    class DividesByZero(Dropout):
        def forward(self, x):
            if not self.training:
                return x
            mask = torch.empty_like(x).bernoulli_(1 - self.p, generator=self.generator)
            return x * mask / (1 - self.p)

    q = lab5.QUESTIONS["q1"]
    label, inputs = next(c for c in q.hidden_cases(0) if c[1]["p"] == 1.0)
    message = checks.judge(q, q.expected_outputs(inputs),
                           checks.run_one(q, DividesByZero, inputs))  # fmt: skip
    assert "NaN or inf" in message and "p = 1" in message, message


def test_a_mask_from_uniforms_below_the_keep_probability_is_f_dropouts(capsys):
    passed, out = checked(capsys, lab5.check_q1, flawed("u < 1 - p"))
    assert passed, out


def test_dropout_must_be_a_module(capsys):
    passed, out = checked(capsys, lab5.check_q1, NotAModule)
    assert not passed and "must make a torch.nn.Module" in out, out


def test_dropout_that_detaches_loses_the_gradient():
    class Detached(Dropout):
        def forward(self, x):
            return super().forward(x).detach()

    q = lab5.QUESTIONS["q1"]
    _, inputs = q.public_cases()[1]
    message = checks.judge(q, q.expected_outputs(inputs),
                           checks.run_one(q, Detached, inputs))  # fmt: skip
    assert "gradient with respect to x" in message and "no detach" in message


@pytest.mark.parametrize(
    "answer, words",
    [
        (smoothing_over_the_others, ["other convention", "ε/(C - 1)", "ε / C"]),
        (smoothing_summed, ["sum the losses over the batch"]),
        (lambda z, t, eps: smooth_cross_entropy(z, t, 0.0), ["ignores eps"]),
    ],
)
def test_each_smoothing_mistake_is_named(capsys, answer, words):
    passed, out = checked(capsys, lab5.check_q2, answer)
    assert not passed, out
    for word in words:
        assert word in out, out


def test_the_other_convention_is_named_with_two_classes_too():
    q = lab5.QUESTIONS["q2"]
    label, inputs = next(c for c in q.hidden_cases(0) if c[1]["c"] == 2)
    actual = checks.run_one(q, smoothing_over_the_others, inputs)
    assert "other convention" in checks.judge(q, q.expected_outputs(inputs), actual)


def test_smoothing_with_large_logits_needs_log_softmax():
    q = lab5.QUESTIONS["q2"]
    label, inputs = next(c for c in q.hidden_cases(0) if c[1]["scale"] > 100)
    expected = q.expected_outputs(inputs)
    naive = checks.run_one(q, smoothing_through_log_of_softmax, inputs)
    assert "log_softmax" in checks.judge(q, expected, naive)
    stable = checks.run_one(q, smooth_cross_entropy, inputs)
    assert checks.judge(q, expected, stable) is None


@pytest.mark.parametrize(
    "answer, words",
    [
        (mixup_swapped, ["λ and 1 - λ are swapped"]),
        (mixup_rolled, ["roll by one", "torch.randperm"]),
        (mixup_hard_targets, ["targets are not mixed"]),
        (mixup_index_targets, ["targets are soft", "shape"]),
        (lambda X, y, lam, c, g: X, ["must return two tensors"]),
    ],
)
def test_each_mixup_mistake_is_named(capsys, answer, words):
    passed, out = checked(capsys, lab5.check_q3, answer)
    assert not passed, out
    for word in words:
        assert word in out, out


def test_mixup_loss_mistakes_are_named(capsys):
    passed, out = checked(capsys, lab5.check_q4, mixup_loss_summed)
    assert not passed and "sum the losses" in out, out
    passed, out = checked(capsys, lab5.check_q4, lambda z, q: -mixup_loss(z, q))
    assert not passed and "sign is flipped" in out, out
    per_example = lambda z, q: -(q * F.log_softmax(z, dim=1)).sum(dim=1)  # noqa: E731
    passed, out = checked(capsys, lab5.check_q4, per_example)
    assert not passed and "0-dim tensor" in out, out


@pytest.mark.parametrize(
    "check, answer, words",
    [
        (lab5.check_q5, l2_without_half, ["2·lam·θ", "twice", "½"]),
        (lab5.check_q5, l2_weights_only, ["leaves out the biases"]),
        (lab5.check_q5, l2_as_a_float, ["the penalty must be a float64 tensor"]),
        (lab5.check_q5, lambda m: l2_penalty(m) + 1.0, ["value of the penalty"]),
        (lab5.check_q6, l1_weights_only, ["leaves out the biases"]),
        (lab5.check_q6, l2_penalty, ["after step 1, parameter", "reference L1 run"]),
    ],
)
def test_each_penalty_mistake_is_named(capsys, check, answer, words):
    passed, out = checked(capsys, check, answer)
    assert not passed, out
    for word in words:
        assert word in out, out


def test_l2_equals_weight_decay_with_momentum_too():
    q = lab5.QUESTIONS["q5"]
    label, inputs = next(c for c in q.hidden_cases(0) if c[1]["momentum"] > 0)
    actual = checks.run_one(q, l2_penalty, inputs)
    assert checks.judge(q, q.expected_outputs(inputs), actual) is None
    wrong = checks.run_one(q, l2_without_half, inputs)
    assert "twice" in checks.judge(q, q.expected_outputs(inputs), wrong)


# --- forbidden routes: each is caught and named ---------------------------------------


class SubclassedDropout(nn.Dropout):
    def __init__(self, p=0.5, *, generator=None):
        super().__init__(p)


class FunctionalDropout(Dropout):
    def forward(self, x):
        return F.dropout(x, self.p, self.training)


class CourseDropout(Dropout):
    def forward(self, x):
        return regularize.dropout(x, self.p, self.training, generator=self.generator)


class StochasticDepthDropout(Dropout):
    def forward(self, x):  # one "row" per element: a mask per element
        rows = x.reshape(-1, 1)
        out = torchvision.ops.stochastic_depth(rows, self.p, "row", self.training)
        return out.reshape(x.shape)


class FeatureDropout(Dropout):
    def forward(self, x):  # one channel per element
        out = F.dropout2d(x.reshape(1, -1, 1, 1), self.p, self.training)
        return out.reshape(x.shape)


def smoothing_by_torch(logits, target, eps):
    return F.cross_entropy(logits, target, label_smoothing=eps)


def smoothing_by_the_module(logits, target, eps):
    return nn.CrossEntropyLoss(label_smoothing=eps)(logits, target)


def smoothing_by_the_course(logits, target, eps):
    return regularize.label_smoothing_cross_entropy(logits, target, eps)


def mixup_by_torchvision(X, y, lam, num_classes, generator):
    from torchvision.transforms import v2

    return v2.MixUp(alpha=1.0, num_classes=num_classes)(X, y)


def mixup_by_the_course(X, y, lam, num_classes, generator):
    from course_lib import augment

    batch = augment.mixup(X, y, 1.0, generator=generator)
    return batch.x, batch.targets(num_classes)


def soft_targets_by_the_course(X, y, lam, num_classes, generator):
    from course_lib.augment import MixedBatch

    perm = torch.randperm(len(X), generator=generator)
    batch = MixedBatch(lam * X + (1 - lam) * X[perm], y, y[perm], lam)
    return batch.x, batch.targets(num_classes)


def soft_loss_by_torch(logits, soft_targets):
    return F.cross_entropy(logits, soft_targets)


def l2_by_the_course(model):
    return regularize.l2_penalty(model, include="all")


def l1_by_the_course(model):
    return regularize.elastic_net_penalty(model, 1.0, include="all")


@pytest.mark.parametrize(
    "check, answer, used",
    [
        (lab5.check_q1, SubclassedDropout, "torch.nn.Dropout"),
        (lab5.check_q1, FunctionalDropout, "torch.nn.functional.dropout"),
        (lab5.check_q1, CourseDropout, "course_lib.regularize.dropout"),
        (lab5.check_q1, regularize.Dropout, "course_lib.regularize.Dropout"),
        (lab5.check_q1, StochasticDepthDropout, "torchvision.ops.stochastic_depth"),
        (lab5.check_q1, FeatureDropout, "torch.nn.functional.dropout2d"),
        (lab5.check_q2, smoothing_by_torch, "torch.nn.functional.cross_entropy"),
        (lab5.check_q2, smoothing_by_the_module, "torch.nn.CrossEntropyLoss"),
        (lab5.check_q2, smoothing_by_the_course,
         "course_lib.regularize.label_smoothing_cross_entropy"),
        (lab5.check_q3, mixup_by_torchvision, "torchvision.transforms.v2.MixUp"),
        (lab5.check_q3, mixup_by_the_course, "course_lib.augment.mixup"),
        (lab5.check_q3, soft_targets_by_the_course,
         "course_lib.augment.MixedBatch.targets"),
        (lab5.check_q4, soft_loss_by_torch, "torch.nn.functional.cross_entropy"),
        (lab5.check_q5, l2_by_the_course, "course_lib.regularize.l2_penalty"),
        (lab5.check_q6, l1_by_the_course, "course_lib.regularize.elastic_net_penalty"),
        (lab5.check_q6, lab5.QUESTIONS["q6"].reference, "course_lib.labs"),
    ],
)  # fmt: skip
def test_a_forbidden_route_is_named(capsys, check, answer, used):
    passed, out = checked(capsys, check, answer)
    assert not passed
    assert f"not allowed: it uses {used}" in out, out


class BuiltinDropout(Dropout):
    def forward(self, x):  # the C function behind F.dropout: no generator argument
        return torch.dropout(x, self.p, self.training)


def test_the_c_dropout_is_named(capsys):
    """torch.dropout is a C function: the watch names it when the answer calls it."""
    passed, out = checked(capsys, lab5.check_q1, BuiltinDropout)
    assert not passed and "not allowed: it uses torch.dropout," in out, out


def test_building_blocks_stay_allowed(capsys):
    """log_softmax, nll_loss, one_hot, bernoulli_ and nn.Module are allowed."""

    def with_nll_loss(logits, target, eps):
        log_p = F.log_softmax(logits, dim=1)
        return (1 - eps) * F.nll_loss(log_p, target) - eps * log_p.mean(dim=1).mean()

    assert lab5.check_q2(with_nll_loss) is True
    assert lab5.check_q1(Dropout) is True
    assert "not allowed" not in capsys.readouterr().out


def _smoothing_by_the_c_function(logits, target, eps):
    return torch._C._nn.cross_entropy_loss(logits, target, None, 1, -100, eps)


def test_the_c_function_behind_cross_entropy_is_named(capsys):
    lab5.check_q2(_smoothing_by_the_c_function)
    out = capsys.readouterr().out
    assert "not allowed: it uses torch._C._nn.cross_entropy_loss," in out, out
