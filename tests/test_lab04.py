"""Lab 4's checks: right answers pass; each classic mistake fails with a message
that names the quantity and the place; each forbidden route is named.

The generic lab tests (generation, references on hidden cases, grading) are in
``test_labs.py`` and ``test_grading.py``.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import course_lib.init as course_init
import course_lib.norm as course_norm
from course_lib.labs import lab04_init_norm as lab4

# --- answers, right and with one mistake switched on ---------------------------


def make_kaiming(flaw=""):
    def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu",
                        generator=None):  # fmt: skip
        receptive = math.prod(tensor.shape[2:])
        fan_in, fan_out = tensor.shape[1] * receptive, tensor.shape[0] * receptive
        fan = fan_in if mode == "fan_in" else fan_out
        if flaw == "fan_out for fan_in":
            fan = fan_out
        gains = {"linear": 1.0, "relu": math.sqrt(2.0), "tanh": 5.0 / 3,
                 "leaky_relu": math.sqrt(2.0 / (1 + a**2))}  # fmt: skip
        gain = gains[nonlinearity]
        if flaw == "no factor 2":
            gain = 1.0
        std = gain / math.sqrt(fan)
        if flaw == "std rounded differently":
            std = math.sqrt(gain**2 / fan)
        with torch.no_grad():
            if flaw == "two draws":
                tensor.normal_(0, std, generator=generator)
            return tensor.normal_(0, std, generator=generator)

    return kaiming_normal_


def make_batch_norm(flaw=""):
    class BatchNorm1d(nn.Module):
        def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True):
            super().__init__()
            self.eps, self.momentum, self.affine = eps, momentum, affine
            if affine:
                self.weight = nn.Parameter(torch.ones(num_features))
                self.bias = nn.Parameter(torch.zeros(num_features))
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0))

        def forward(self, x):
            dims = (0,) if x.dim() == 2 else (0, 2)
            view = (1, -1) if x.dim() == 2 else (1, -1, 1)
            n = x.numel() // x.shape[1]
            batch_mean = x.mean(dims)
            batch_var = ((x - batch_mean.reshape(view)) ** 2).sum(dims) / n
            unbiased = batch_var * n / (n - 1)
            if flaw == "biased running_var":
                unbiased = batch_var
            if flaw == "unbiased normalisation":
                batch_var = unbiased
            if self.training:
                mean, var = batch_mean, batch_var
            else:
                mean, var = self.running_mean.clone(), self.running_var.clone()
            if self.training or flaw == "updates in eval":
                m = self.momentum
                with torch.no_grad():
                    self.running_mean.mul_(1 - m).add_(m * batch_mean)
                    self.running_var.mul_(1 - m).add_(m * unbiased)
                    self.num_batches_tracked += 1
            y = (x - mean.reshape(view)) / torch.sqrt(var.reshape(view) + self.eps)
            if self.affine:
                y = y * self.weight.reshape(view) + self.bias.reshape(view)
            return y

    return BatchNorm1d


def make_backward(flaw=""):
    def batch_norm_backward(grad_output, x, weight, eps):
        mean = x.mean(0)
        var = ((x - mean) ** 2).mean(0)
        x_hat = (x - mean) / torch.sqrt(var + eps)
        grad_bias = grad_output.sum(0)
        grad_weight = (grad_output * x_hat).sum(0)
        centred = grad_output - grad_output.mean(0)
        if flaw == "no mean term":
            centred = grad_output
        grad_x_hat = centred - x_hat * (grad_output * x_hat).mean(0)
        grad_input = weight / torch.sqrt(var + eps) * grad_x_hat
        if flaw == "x for x_hat":
            grad_weight = (grad_output * x).sum(0)
        return grad_input, grad_weight, grad_bias

    return batch_norm_backward


def make_layer_norm(flaw=""):
    def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        dims = tuple(range(-len(normalized_shape), 0))
        if flaw == "last axis only":
            dims = (-1,)
        if flaw == "batch axis":
            dims = (0,)
        mean = x.mean(dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dims, keepdim=True)
        y = (x - mean) / torch.sqrt(var + eps)
        if flaw == "detached stats":
            y = (x - mean.detach()) / torch.sqrt(var.detach() + eps)
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        return y

    return layer_norm


def printed_by(capsys, check, answer) -> str:
    assert check(answer) is False
    out = capsys.readouterr().out
    assert out.startswith("[FAIL]"), out
    return out


# --- right answers pass --------------------------------------------------------


def test_right_answers_pass_every_public_case(capsys):
    assert lab4.check_q1(make_kaiming()) is True
    assert lab4.check_q2(make_batch_norm()) is True
    assert lab4.check_q3(make_backward()) is True
    assert lab4.check_q4(make_layer_norm()) is True
    out = capsys.readouterr().out
    assert out.count("[pass]") == 4 and "[FAIL]" not in out, out


@pytest.mark.parametrize("key, answer", [
    ("q1", make_kaiming()), ("q2", make_batch_norm()),
    ("q3", make_backward()), ("q4", make_layer_norm()),
])  # fmt: skip
def test_right_answers_pass_the_hidden_cases(key, answer):
    """What grading adds: other shapes, momenta, eps, affine off, many steps."""
    from course_lib.labs import checks

    q = lab4.QUESTIONS[key]
    for label, inputs in q.hidden_cases(7):
        actual = checks.run_one(q, answer, inputs)
        assert checks.judge(q, q.expected_outputs(inputs), actual) is None, label


# --- q1: Kaiming ---------------------------------------------------------------


@pytest.mark.parametrize("flaw, words", [
    ("fan_out for fan_in", ["fan_out used where fan_in was asked", "at the weight:",
                            "case Linear weight (48, 30), nonlinearity='relu'"]),
    ("no factor 2", ["the factor 2 of the rectifier's gain is missing",
                     "0.707107 times torch's"]),
    ("std rounded differently", ["off by round-off", "gain / math.sqrt(fan)"]),
    ("two draws", ["not torch's draws"]),
])  # fmt: skip
def test_q1_names_what_is_wrong_with_the_std(capsys, flaw, words):
    out = printed_by(capsys, lab4.check_q1, make_kaiming(flaw))
    for word in words:
        assert word in out, out


def test_q1_wants_the_filled_tensor_returned(capsys):
    right = make_kaiming()

    def returns_nothing(tensor, **kwargs):
        right(tensor, **kwargs)

    out = printed_by(capsys, lab4.check_q1, returns_nothing)
    assert "6 of 6 cases failed" in out
    assert "the weight is right, but return the tensor you filled" in out, out


def test_q1_is_judged_bit_for_bit_and_asks_for_no_grad(capsys):
    q = lab4.QUESTIONS["q1"]
    assert q.rtol == 0 and q.atol == 0

    def no_no_grad(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu",
                   generator=None):  # fmt: skip
        return tensor.normal_(0, math.sqrt(2.0) / math.sqrt(tensor.shape[1]),
                              generator=generator)  # fmt: skip

    out = printed_by(capsys, lab4.check_q1, no_no_grad)
    assert "with torch.no_grad()" in out and "a layer's weight requires grad" in out


# --- q2: BatchNorm1d -------------------------------------------------------------


@pytest.mark.parametrize("flaw, place", [
    ("biased running_var", "at train step 1 / running_var: 3 of 3 elements are off"),
    ("unbiased normalisation", "at train step 1 / output: 24 of 24 elements are off"),
    ("updates in eval", "at eval step 1 / running_mean"),
])  # fmt: skip
def test_q2_names_the_quantity_and_the_step(capsys, flaw, place):
    out = printed_by(capsys, lab4.check_q2, make_batch_norm(flaw))
    assert "3 of 3 cases failed" in out, out
    assert "case input (8, 3), defaults, 3 training then 2 eval steps" in out
    assert place in out, out
    assert "the largest difference is at index" in out and "expected" in out


def test_q2_tips_fit_the_mistake(capsys):
    out = printed_by(capsys, lab4.check_q2, make_batch_norm("biased running_var"))
    assert "unbiased batch variance (divide by n - 1)" in out
    out = printed_by(capsys, lab4.check_q2, make_batch_norm("updates in eval"))
    assert "in eval mode, normalise with the running statistics" in out


def test_q2_asks_for_torchs_parameter_and_buffer_names(capsys):
    class NoBuffers(make_batch_norm()):
        def __init__(self, num_features, **kwargs):
            super().__init__(num_features, **kwargs)
            del self.num_batches_tracked
            self.num_batches_tracked = 0  # a plain attribute, not a buffer

    out = printed_by(capsys, lab4.check_q2, NoBuffers)
    assert "the module's buffers are ['running_mean', 'running_var'], torch's are " \
        "['num_batches_tracked', 'running_mean', 'running_var']" in out, out
    assert "register_buffer" in out


# --- q3: batch norm's backward ---------------------------------------------------


@pytest.mark.parametrize("flaw, quantity", [
    ("no mean term", "grad_input"), ("x for x_hat", "grad_weight"),
])  # fmt: skip
def test_q3_names_the_gradient_that_is_off(capsys, flaw, quantity):
    out = printed_by(capsys, lab4.check_q3, make_backward(flaw))
    assert f"values differ at {quantity}:" in out, out
    assert "3 of 3 cases failed" in out and "case x (8, 3), eps=1e-05" in out


def test_q3_wants_three_tensors(capsys):
    out = printed_by(capsys, lab4.check_q3, lambda g, x, w, eps: g)
    assert "expected (grad_input, grad_weight, grad_bias), got a Tensor" in out, out


# --- q4: layer norm ----------------------------------------------------------------


@pytest.mark.parametrize("flaw, words", [
    ("last axis only", ["1 of 3 cases failed", "normalized_shape=(3, 5)",
                        "values differ at output"]),
    ("batch axis", ["3 of 3 cases failed", "values differ at output",
                    "over its last len(normalized_shape) dimensions"]),
    ("detached stats", ["values differ at grad of x", "detached"]),
])  # fmt: skip
def test_q4_names_the_quantity(capsys, flaw, words):
    out = printed_by(capsys, lab4.check_q4, make_layer_norm(flaw))
    for word in words:
        assert word in out, out


# --- forbidden routes: each is caught and named -----------------------------------


def kaiming_by_torch(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu",
                     generator=None):  # fmt: skip
    init = getattr(torch.nn.init, "kaiming_" + "normal_")  # a computed name
    return init(tensor, a, mode, nonlinearity, generator)


def kaiming_with_torchs_gain(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu",
                             generator=None):  # fmt: skip
    std = torch.nn.init.calculate_gain(nonlinearity, a) / math.sqrt(tensor.shape[1])
    with torch.no_grad():
        return tensor.normal_(0, std, generator=generator)


def kaiming_with_torchs_fan(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu",
                            generator=None):  # fmt: skip
    fan = torch.nn.init._calculate_correct_fan(tensor, mode)
    with torch.no_grad():
        return tensor.normal_(0, math.sqrt(2.0 / fan), generator=generator)


def kaiming_by_the_course(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu",
                          generator=None):  # fmt: skip
    return course_init.kaiming_normal_(tensor, a, mode, nonlinearity, generator)


class SubclassedBatchNorm(nn.BatchNorm1d):
    pass


class FunctionalBatchNorm(make_batch_norm()):
    def forward(self, x):
        stats = self.running_mean, self.running_var
        return F.batch_norm(x, *stats, self.weight, self.bias, self.training,
                            self.momentum, self.eps)  # fmt: skip


class InstanceNormBatchNorm(make_batch_norm()):
    def forward(self, x):  # (N, C) -> (1, C, N): instance norm over the batch
        y = F.instance_norm(x.T[None], use_input_stats=self.training, eps=self.eps)
        return y[0].T


def backward_by_autograd(grad_output, x, weight, eps):
    x = x.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    b = torch.zeros_like(w, requires_grad=True)
    y = make_batch_norm()(x.shape[1]).double()(x) * w + b
    (y * grad_output).sum().backward()  # Tensor.backward, from the student's code
    return x.grad, w.grad, b.grad


def backward_by_autograd_grad(grad_output, x, weight, eps):
    x, w = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    b = torch.zeros_like(w, requires_grad=True)
    mean, var = x.mean(0), x.var(0, unbiased=False)
    y = (x - mean) / torch.sqrt(var + eps) * w + b
    return torch.autograd.grad(y, (x, w, b), grad_output)


def backward_by_torch_func(grad_output, x, weight, eps):
    def forward(x, w, b):
        mean, var = x.mean(0), x.var(0, unbiased=False)
        return (x - mean) / torch.sqrt(var + eps) * w + b

    _, vjp = torch.func.vjp(forward, x, weight, torch.zeros_like(weight))
    return vjp(grad_output)


def backward_by_functional_vjp(grad_output, x, weight, eps):
    def forward(x, w, b):
        return F.batch_norm(x, None, None, w, b, training=True, eps=eps)

    inputs = (x, weight, torch.zeros_like(weight))
    return torch.autograd.functional.vjp(forward, inputs, grad_output)[1]


def backward_by_the_course(grad_output, x, weight, eps):
    return lab4.bn_backward_reference(grad_output, x, weight, eps)


def as_shape(normalized_shape) -> tuple:
    if isinstance(normalized_shape, int):
        return (normalized_shape,)
    return tuple(normalized_shape)


def layer_norm_by_torch(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    shape = as_shape(normalized_shape)
    return F.layer_norm(x, tuple(shape), weight, bias, eps)


def layer_norm_by_group_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    shape = as_shape(normalized_shape)
    rows = x.reshape(-1, 1, math.prod(shape))  # one group holding every feature
    y = F.group_norm(rows, 1, eps=eps).reshape(x.shape)
    return y * (1 if weight is None else weight) + (0 if bias is None else bias)


def layer_norm_by_batch_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    shape = as_shape(normalized_shape)
    columns = x.reshape(-1, math.prod(shape)).T  # (features, samples)
    y = F.batch_norm(columns, None, None, training=True, eps=eps).T.reshape(x.shape)
    return y * (1 if weight is None else weight) + (0 if bias is None else bias)


def layer_norm_by_module(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    module = nn.LayerNorm(normalized_shape, eps=eps, elementwise_affine=False).double()
    y = module(x)
    return y * (1 if weight is None else weight) + (0 if bias is None else bias)


def layer_norm_by_the_course(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    return course_norm.layer_norm(x, normalized_shape, weight, bias, eps)


@pytest.mark.parametrize("check, answer, used", [
    (lab4.check_q1, torch.nn.init.kaiming_normal_, "torch.nn.init.kaiming_normal_"),
    (lab4.check_q1, kaiming_by_torch, "torch.nn.init.kaiming_normal_"),
    (lab4.check_q1, kaiming_with_torchs_gain, "torch.nn.init.calculate_gain"),
    (lab4.check_q1, kaiming_with_torchs_fan, "torch.nn.init._calculate_correct_fan"),
    (lab4.check_q1, kaiming_by_the_course, "course_lib.init.kaiming_normal_"),
    (lab4.check_q2, SubclassedBatchNorm, "torch.nn.BatchNorm1d"),
    (lab4.check_q2, FunctionalBatchNorm, "torch.nn.functional.batch_norm"),
    (lab4.check_q2, InstanceNormBatchNorm, "torch.nn.functional.instance_norm"),
    (lab4.check_q2, course_norm.BatchNorm1d, "course_lib.norm.BatchNorm1d"),
    (lab4.check_q3, backward_by_autograd, "torch.Tensor.backward"),
    (lab4.check_q3, backward_by_autograd_grad, "torch.autograd.grad"),
    (lab4.check_q3, backward_by_torch_func, "torch.autograd.grad"),
    (lab4.check_q3, backward_by_functional_vjp, "torch.autograd.functional.vjp"),
    (lab4.check_q3, backward_by_the_course, "course_lib.labs"),
    (lab4.check_q4, layer_norm_by_torch, "torch.nn.functional.layer_norm"),
    (lab4.check_q4, layer_norm_by_group_norm, "torch.nn.functional.group_norm"),
    (lab4.check_q4, layer_norm_by_batch_norm, "torch.nn.functional.batch_norm"),
    (lab4.check_q4, layer_norm_by_module, "torch.nn.LayerNorm"),
    (lab4.check_q4, layer_norm_by_the_course, "course_lib.norm.layer_norm"),
])  # fmt: skip
def test_a_forbidden_route_fails_the_check_and_is_named(capsys, check, answer, used):
    out = printed_by(capsys, check, answer)
    assert f"not allowed: it uses {used}," in out, out


def test_q3_course_backward_function_is_forbidden_by_its_methods(capsys):
    def backward_by_course_function(grad_output, x, weight, eps):
        x = x.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        b = torch.zeros_like(w, requires_grad=True)
        y = course_norm.batch_norm(x, None, None, w, b, training=True, eps=eps)
        return torch.autograd.grad(y, (x, w, b), grad_output)

    out = printed_by(capsys, lab4.check_q3, backward_by_course_function)
    assert "not allowed: it uses course_lib.norm.batch_norm," in out, out


def test_a_custom_autograd_function_stays_allowed(capsys):
    """BatchNormFunction is forbidden by its own methods, not torch.autograd.
    Function's: a module built on the student's own Function is fine."""
    backward = make_backward()

    class MyBatchNorm(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, eps):
            ctx.save_for_backward(x, weight)
            ctx.eps = eps
            mean, var = x.mean(0), x.var(0, unbiased=False)
            return (x - mean) / torch.sqrt(var + eps) * weight

        @staticmethod
        def backward(ctx, grad_output):
            x, weight = ctx.saved_tensors
            grad_input, grad_weight, _ = backward(grad_output, x, weight, ctx.eps)
            return grad_input, grad_weight, None

    class BatchNorm1d(make_batch_norm()):
        def forward(self, x):
            if not self.training or x.dim() != 2 or not self.affine:
                return super().forward(x)
            super().forward(x.detach())  # the running statistics only
            return MyBatchNorm.apply(x, self.weight, self.eps) + self.bias

    assert lab4.check_q2(BatchNorm1d) is True, capsys.readouterr().out


def test_q2_a_detached_output_is_named_by_its_missing_gradient(capsys):
    class Detached(make_batch_norm()):
        def forward(self, x):
            return super().forward(x).detach()

    out = printed_by(capsys, lab4.check_q2, Detached)
    assert "expected a tensor at train step 1 / grad of input, got NoneType" in out
    assert "detached" in out


def test_q2_affine_false_has_no_parameters(capsys):
    class AlwaysAffine(make_batch_norm()):
        def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True):
            super().__init__(num_features, eps, momentum, True)
            self.affine = affine

    out = printed_by(capsys, lab4.check_q2, AlwaysAffine)
    assert "1 of 3 cases failed" in out and "affine=False" in out
    assert "the module's parameters are ['bias', 'weight'], torch's are []" in out


def layer_norm_by_the_builtin(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    return torch.layer_norm(x, as_shape(normalized_shape), weight, bias, eps)


def backward_by_native_batch_norm(grad_output, x, weight, eps):
    x = x.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    b = torch.zeros_like(w)
    y = torch.native_batch_norm(x, w, b, None, None, True, 0.1, eps)[0]
    return torch.autograd.grad(y, (x, w), grad_output) + (grad_output.sum(0),)


@pytest.mark.parametrize("check, answer, used", [
    (lab4.check_q4, layer_norm_by_the_builtin, "torch.layer_norm"),
    (lab4.check_q4, torch.layer_norm, "torch.layer_norm"),
    (lab4.check_q3, backward_by_native_batch_norm, "torch.native_batch_norm"),
])  # fmt: skip
def test_a_forbidden_builtin_is_named(capsys, check, answer, used):
    out = printed_by(capsys, check, answer)
    assert f"not allowed: it uses {used}," in out, out
