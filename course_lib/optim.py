r"""Optimizers from scratch, each a drop-in for its ``torch.optim`` namesake.

``from course_lib.optim import Adam`` in place of ``from torch.optim import
Adam`` gives the same numbers: same class names, keyword arguments (in the
same order), defaults, state names and ``state_dict`` layout, so checkpoints
load from one into the other. Left out is torch's production machinery:
``foreach``/``fused`` kernels, ``capturable``, ``differentiable``, complex
weights, ``maximize`` and tensor lrs. Each optimizer is one short update
function applied to one weight at a time; its docstring has the math and
says where torch (and so this code) departs from the paper.

What each optimizer keeps in ``optimizer.state[p]``:

=========  ===============================  ==================================
optimizer  first moment (mean of g)         second moment (of g squared)
=========  ===============================  ==================================
SGD        ``momentum_buffer`` if momentum  none
Adagrad    none                             ``sum`` (a sum, not a mean)
RMSprop    ``grad_avg`` if centered         ``square_avg``
Adam       ``exp_avg``                      ``exp_avg_sq`` (``max_exp_avg_sq``)
AdamW      ``exp_avg``                      ``exp_avg_sq`` (``max_exp_avg_sq``)
NAdam      ``exp_avg``                      ``exp_avg_sq``
RAdam      ``exp_avg``                      ``exp_avg_sq``
Lookahead  the inner optimizer's            the inner optimizer's
=========  ===============================  ==================================

``max_exp_avg_sq`` is kept with ``amsgrad=True``; RMSprop's
``momentum_buffer`` averages scaled steps :math:`g/\sqrt{v}`, not gradients;
Lookahead adds a ``slow_param`` copy of each weight. All but SGD count steps
in ``step``, a 0-d CPU tensor, as torch does. Validation follows torch's, a
little stricter (course_lib's rules, ``course_lib._args``): NaN, infinities,
bools and non-numbers are rejected, SGD's ``dampening`` must lie in [0, 1]
and RMSprop's ``alpha`` in [0, 1) (torch accepts any, and any >= 0). NumPy
scalars are accepted and stored as plain floats, so checkpoints load with
``weights_only=True``.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.optim import Optimizer

from ._args import check_bool, check_int, check_real, check_real_sequence, require

__all__ = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "NAdam", "RAdam", "Lookahead"]


# What each option accepts; any other is a real number >= 0 (lr, eps, ...).
_INTERVALS = {"dampening": "[0, 1]", "alpha": "[0, 1)"}
_BOOLS = ("nesterov", "centered", "amsgrad")


def _checked(**options) -> dict:
    """The options as plain floats, bools and (betas) a pair, once each is valid."""
    checked = {}
    for name, value in options.items():
        if name in _BOOLS:
            checked[name] = check_bool(name, value)
        elif name == "betas":
            checked[name] = check_real_sequence(name, value, "[0, 1)", length=2)
        else:
            checked[name] = check_real(name, value, _INTERVALS.get(name, "[0, inf)"))
    return checked


def _new_step() -> torch.Tensor:
    # torch's own rule (optimizer._get_scalar_dtype), so state_dicts load both
    # ways. It lives on the CPU even for CUDA weights, so .item() needs no sync.
    # Beware: float32 counts exactly only to 2**24; then step += 1 stops moving.
    float64 = torch.get_default_dtype() == torch.float64
    return torch.tensor(0.0, dtype=torch.float64 if float64 else torch.float32)


def _init_moments(state: dict, p: torch.Tensor, *names: str) -> None:
    """A step counter at 0 and, for each name, a buffer of zeros shaped like p."""
    state["step"] = _new_step()
    for name in names:
        state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _count_step(state: dict) -> float:
    """Add one to ``state["step"]`` and return it: t = 1 on the first step."""
    state["step"] += 1  # in place, like torch's step_t += 1
    return state["step"].item()


def _sgd_update(p, grad, state, group) -> None:
    r"""SGD, with momentum :math:`\mu`, dampening :math:`\tau`, weight decay
    :math:`\lambda`:

    .. math::
        g_t &= \nabla f(\theta_{t-1}) + \lambda \theta_{t-1}, \qquad
        b_t = \mu b_{t-1} + (1 - \tau) g_t, \qquad b_1 = g_1 \\
        \theta_t &= \theta_{t-1} - \gamma\, (g_t + \mu b_t) \text{ (nesterov)},
        \text{ else } \theta_{t-1} - \gamma b_t \text{ (or } \gamma g_t
        \text{ if } \mu = 0)

    Like torch, this departs from Sutskever et al. (2013), whose buffer holds
    the lr, :math:`v_t = \mu v_{t-1} + \gamma g_t`, :math:`\theta_t =
    \theta_{t-1} - v_t`: the same while the lr is constant, not when a
    schedule changes it. The first buffer, :math:`g_1`, is not dampened.
    """
    lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
    if weight_decay != 0:
        grad = grad.add(p, alpha=weight_decay)  # a new tensor: p.grad stays as it is
    if momentum != 0:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = grad.clone()
        else:
            buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
        grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
    p.add_(grad, alpha=-lr)


def _adagrad_update(p, grad, state, group) -> None:
    r"""Adagrad, with lr decay :math:`\eta` and weight decay :math:`\lambda`:

    .. math::
        g_t &= \nabla f(\theta_{t-1}) + \lambda \theta_{t-1}, \qquad
        s_t = s_{t-1} + g_t^2, \qquad s_0 = \texttt{initial\_accumulator\_value} \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1 + (t - 1)\,\eta} \,
            \frac{g_t}{\sqrt{s_t} + \epsilon}

    Duchi, Hazan & Singer (2011) have neither :math:`\eta` (``lr_decay``, a
    decay on top of the one :math:`\sqrt{s_t}` brings) nor :math:`s_0`.
    """
    t = _count_step(state)
    lr = group["lr"] / (1 + (t - 1) * group["lr_decay"])
    if group["weight_decay"] != 0:
        grad = grad.add(p, alpha=group["weight_decay"])
    state["sum"].addcmul_(grad, grad, value=1)
    std = state["sum"].sqrt().add_(group["eps"])
    p.addcdiv_(grad, std, value=-lr)


def _rmsprop_update(p, grad, state, group) -> None:
    r"""RMSprop, with momentum :math:`\mu` and weight decay :math:`\lambda`:

    .. math::
        g_t &= \nabla f(\theta_{t-1}) + \lambda \theta_{t-1}, \qquad
        v_t = \alpha v_{t-1} + (1 - \alpha) g_t^2 \\
        \bar g_t &= \alpha \bar g_{t-1} + (1 - \alpha) g_t \text{ (centered;
            else 0)}, \qquad d_t = g_t \big/ \big(\sqrt{v_t - \bar g_t^2}
            + \epsilon\big) \\
        b_t &= \mu b_{t-1} + d_t, \qquad \theta_t = \theta_{t-1} - \gamma b_t
            \text{ (or } \gamma d_t \text{ if } \mu = 0)

    From Hinton's lecture 6e (2012), not a paper; centering and momentum on
    the scaled step are Graves's (2013), who puts :math:`\epsilon` inside the
    root and :math:`\gamma` inside :math:`b_t`. With :math:`v_0 = 0` and no
    bias correction the first step is :math:`\gamma/\sqrt{1-\alpha}` per
    coordinate: 10 lrs at the default :math:`\alpha = 0.99`.
    """
    alpha, momentum = group["alpha"], group["momentum"]
    _count_step(state)  # kept for torch's state_dict; the update never reads it
    if group["weight_decay"] != 0:
        grad = grad.add(p, alpha=group["weight_decay"])
    square_avg = state["square_avg"].mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
    if group["centered"]:
        grad_avg = state["grad_avg"].lerp_(grad, 1 - alpha)
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
    else:
        avg = square_avg.sqrt()
    avg.add_(group["eps"])
    if momentum > 0:
        buf = state["momentum_buffer"].mul_(momentum).addcdiv_(grad, avg)
        p.add_(buf, alpha=-group["lr"])
    else:
        p.addcdiv_(grad, avg, value=-group["lr"])


def _adam_update(p, grad, state, group) -> None:
    r"""Adam (and AMSGrad), with L2 weight decay :math:`\lambda`:

    .. math::
        g_t &= \nabla f(\theta_{t-1}) + \lambda \theta_{t-1}, \qquad
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t} \,
            \frac{m_t}{\sqrt{\hat v_t / (1 - \beta_2^t)} + \epsilon}, \qquad
        \hat v_t = \max(\hat v_{t-1}, v_t) \text{ (amsgrad), else } v_t

    Algorithm 1 of Kingma & Ba (2015): :math:`\epsilon` comes after the bias
    correction, not added to :math:`\sqrt{v_t}` as in their "efficient" form
    and in TensorFlow/Keras. The decay :math:`\lambda\theta` is divided by
    :math:`\sqrt{\hat v_t}` like the gradient, so weights with large
    gradients decay less: AdamW fixes that. AMSGrad (Reddi et al. 2018) has
    no bias correction; torch's applies the current one to the max.
    """
    beta1, beta2 = group["betas"]
    t = _count_step(state)
    if group["weight_decay"] != 0:
        grad = grad.add(p, alpha=group["weight_decay"])
    exp_avg = state["exp_avg"].lerp_(grad, 1 - beta1)  # m += (1 - b1) (g - m)
    exp_avg_sq = state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    if group["amsgrad"]:
        exp_avg_sq = torch.maximum(
            state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"]
        )
    # torch's order of operations, for equal rounding: (sqrt(v) / sqrt(bc2)) + eps
    denom = (exp_avg_sq.sqrt() / (1 - beta2**t) ** 0.5).add_(group["eps"])
    p.addcdiv_(exp_avg, denom, value=-group["lr"] / (1 - beta1**t))


def _adamw_update(p, grad, state, group) -> None:
    r"""AdamW: shrink the weights, then an Adam step with no weight decay.

    .. math::
        \theta_t = (1 - \gamma \lambda)\, \theta_{t-1} - \frac{\gamma}{1 -
            \beta_1^t} \, \frac{m_t}{\sqrt{\hat v_t / (1 - \beta_2^t)} + \epsilon}

    The decay never passes through :math:`m_t, \hat v_t`. Loshchilov & Hutter
    (2019) decay by :math:`\eta_t \lambda \theta`, :math:`\eta_t` the schedule
    multiplier alone; torch multiplies by the lr instead, so
    :math:`\lambda = 10^{-2}` at :math:`\gamma = 10^{-3}` shrinks the weights
    by :math:`10^{-5}` a step, and an lr schedule schedules the decay too.
    """
    if group["weight_decay"] != 0:
        p.mul_(1 - group["lr"] * group["weight_decay"])
    _adam_update(p, grad, state, {**group, "weight_decay": 0})


def _nadam_update(p, grad, state, group) -> None:
    r"""NAdam: Adam with Nesterov momentum, on a momentum schedule.

    .. math::
        \mu_t &= \beta_1 \big(1 - \tfrac12\, 0.96^{\,t \psi}\big), \qquad
            m_t, v_t \text{ and } \lambda \text{ as in Adam} \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{\sqrt{v_t/(1 - \beta_2^t)}
            + \epsilon} \left( \frac{(1 - \mu_t)\, g_t}{1 - \prod_{i \le t}
            \mu_i} + \frac{\mu_{t+1}\, m_t}{1 - \prod_{i \le t+1} \mu_i} \right)

    Dozat (2016); :math:`\psi` = ``momentum_decay`` = 0.004 gives his
    :math:`0.96^{t/250}`. Like torch's, the product ``mu_product`` is a
    float32 tensor like ``step`` even for float64 weights, until
    ``load_state_dict`` casts it to their dtype (torch spares only ``step``).
    """
    beta1, beta2 = group["betas"]
    lr, psi = group["lr"], group["momentum_decay"]
    t = _count_step(state)
    if group["weight_decay"] != 0:
        grad = grad.add(p, alpha=group["weight_decay"])
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * psi))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * psi))
    state["mu_product"] *= mu
    mu_product = state["mu_product"].item()
    exp_avg = state["exp_avg"].lerp_(grad, 1 - beta1)
    exp_avg_sq = state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = exp_avg_sq.div(1 - beta2**t).sqrt().add_(group["eps"])
    p.addcdiv_(grad, denom, value=-lr * (1.0 - mu) / (1.0 - mu_product))
    p.addcdiv_(exp_avg, denom, value=-lr * mu_next / (1.0 - mu_product * mu_next))


def _radam_update(p, grad, state, group) -> None:
    r"""RAdam: Adam that starts as momentum SGD, rectified once it adapts.

    .. math::
        \rho_\infty &= \frac{2}{1 - \beta_2} - 1, \quad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t}, \quad
        r_t = \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\,\rho_\infty}
            {(\rho_\infty - 4)(\rho_\infty - 2)\,\rho_t}} \\
        \theta_t &= \theta_{t-1} - \frac{\gamma\, m_t}{1 - \beta_1^t} \cdot
            \frac{r_t \sqrt{1 - \beta_2^t}}{\sqrt{v_t} + \epsilon}
            \text{ if } \rho_t > 5, \text{ else }
            \theta_{t-1} - \frac{\gamma\, m_t}{1 - \beta_1^t}

    with :math:`m_t, v_t, \lambda` as in Adam. Liu et al. (2020) rectify once
    :math:`\rho_t > 4`; torch, like the authors' code, waits for
    :math:`\rho_t > 5` (step 6 for :math:`\beta_2 = 0.999`; never if
    :math:`\beta_2 \le 0.6`). The paper has no :math:`\epsilon`; torch adds it
    before the bias correction, unlike its Adam. One scalar step size here
    rounds an ulp away from torch's chain of tensor products.
    """
    beta1, beta2 = group["betas"]
    t = _count_step(state)
    if group["weight_decay"] != 0:
        grad = grad.add(p, alpha=group["weight_decay"])
    exp_avg = state["exp_avg"].lerp_(grad, 1 - beta1)
    exp_avg_sq = state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1, bias_correction2 = 1 - beta1**t, 1 - beta2**t
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2**t / bias_correction2
    if rho_t > 5:
        rect = (rho_t - 4) * (rho_t - 2) * rho_inf
        rect = (rect / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        step_size = group["lr"] * rect * bias_correction2**0.5 / bias_correction1
        p.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(group["eps"]), value=-step_size)
    else:
        p.add_(exp_avg, alpha=-group["lr"] / bias_correction1)


class _PerParamOptimizer(Optimizer):
    """An Optimizer whose step applies one update function to each weight.

    Subclasses set ``_update(p, grad, state, group)`` and ``_init_state(state,
    p, group)``, which fills a weight's empty state the first time it has a
    gradient (lazily, as torch does).
    """

    def _init_state(self, state: dict, p: torch.Tensor, group: dict) -> None:
        pass

    def _state(self, p: torch.Tensor, group: dict) -> dict:
        state = self.state[p]
        if not state:
            self._init_state(state, p, group)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        """Update every weight that has a gradient; return ``closure()``'s loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():  # step runs under no_grad; backward needs grad
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:  # frozen or unused: leave it, and its state, alone
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients "
                        "(e.g. from nn.Embedding(sparse=True)); use torch.optim."
                        "SparseAdam, or dense gradients"
                    )
                self._update(p, p.grad, self._state(p, group), group)
        return loss


class SGD(_PerParamOptimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum."""

    _update = staticmethod(_sgd_update)

    def __init__(
        self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False
    ):
        defaults = _checked(
            lr=lr, momentum=momentum, dampening=dampening,
            weight_decay=weight_decay, nesterov=nesterov,
        )  # fmt: skip
        ok = not defaults["nesterov"] or (momentum > 0 and dampening == 0)
        accepted = "False unless momentum > 0 and dampening == 0"
        require(ok, "nesterov", accepted, nesterov)
        super().__init__(params, defaults)

    def _state(self, p, group):
        # Without momentum torch keeps no state at all, not even an empty dict
        return self.state[p] if group["momentum"] != 0 else {}


class Adagrad(_PerParamOptimizer):
    """Adagrad: per-coordinate step sizes shrinking with the summed squares.

    State is made at construction, as torch does (so ``share_memory()`` can
    share it before training). Departure: each group starts its ``sum`` at its
    own ``initial_accumulator_value``; torch 2.14 uses the constructor's value
    for every group.
    """

    _update = staticmethod(_adagrad_update)

    def __init__(
        self, params, lr=1e-2, lr_decay=0, weight_decay=0,
        initial_accumulator_value=0, eps=1e-10,
    ):  # fmt: skip
        defaults = _checked(
            lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
        )  # fmt: skip
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self._state(p, group)

    def _init_state(self, state, p, group):
        state["step"] = _new_step()
        value = group["initial_accumulator_value"]
        state["sum"] = torch.full_like(p, value, memory_format=torch.preserve_format)


class RMSprop(_PerParamOptimizer):
    """RMSprop: divide by a running root mean square of the gradients."""

    _update = staticmethod(_rmsprop_update)

    def __init__(
        self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0,
        momentum=0, centered=False,
    ):  # fmt: skip
        defaults = _checked(
            lr=lr, momentum=momentum, alpha=alpha, eps=eps,
            centered=centered, weight_decay=weight_decay,
        )  # fmt: skip
        super().__init__(params, defaults)

    def _init_state(self, state, p, group):
        names = ["square_avg"]
        names += ["momentum_buffer"] * (group["momentum"] > 0)
        names += ["grad_avg"] * group["centered"]
        _init_moments(state, p, *names)


class Adam(_PerParamOptimizer):
    """Adam: momentum divided by a running root mean square of the gradients."""

    _update = staticmethod(_adam_update)

    def __init__(
        self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
        amsgrad=False,
    ):  # fmt: skip
        defaults = _checked(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad
        )
        super().__init__(params, defaults)

    def _init_state(self, state, p, group):
        amsgrad = ["max_exp_avg_sq"] * group["amsgrad"]
        _init_moments(state, p, "exp_avg", "exp_avg_sq", *amsgrad)


class AdamW(Adam):
    """AdamW: Adam with the weight decay taken out of the gradient."""

    _update = staticmethod(_adamw_update)

    def __init__(
        self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
        amsgrad=False,
    ):  # fmt: skip
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


class NAdam(_PerParamOptimizer):
    """NAdam: Adam with Nesterov momentum."""

    _update = staticmethod(_nadam_update)

    def __init__(
        self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
        momentum_decay=4e-3,
    ):  # fmt: skip
        defaults = _checked(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            momentum_decay=momentum_decay,
        )  # fmt: skip
        super().__init__(params, defaults)

    def _init_state(self, state, p, group):
        _init_moments(state, p, "exp_avg", "exp_avg_sq")
        state["mu_product"] = torch.ones_like(state["step"])  # same dtype as step


class RAdam(_PerParamOptimizer):
    """RAdam: Adam with a warm-up built in (the variance rectification)."""

    _update = staticmethod(_radam_update)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0):
        defaults = _checked(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _init_state(self, state, p, group):
        _init_moments(state, p, "exp_avg", "exp_avg_sq")


class Lookahead(Optimizer):
    r"""Lookahead around any optimizer: k steps forward, 1 step back.

    The inner optimizer moves the *fast* weights :math:`\theta`; after every
    :math:`k` of its steps the *slow* weights :math:`\phi` move a fraction
    :math:`\alpha` of the way to them and the fast weights restart from there
    (Zhang, Lucas, Hinton & Ba 2019, Algorithm 1):

    .. math::
        \phi \leftarrow \phi + \alpha (\theta - \phi), \qquad
        \theta \leftarrow \phi, \qquad \phi_0 = \theta_0

    The inner state (momentum, moments) carries on across these resets.
    :math:`\phi_0` is copied at the first step, not at construction, so that
    weights loaded after the optimizer was built (a pre-trained checkpoint)
    are where the slow weights start.

    A subclass of ``Optimizer`` because ``torch.optim.lr_scheduler`` takes
    nothing else; the base class also brings hooks, ``zero_grad`` and
    ``repr``. ``param_groups`` is the inner optimizer's own list, so a
    scheduler that sets ``group["lr"]`` here sets the inner lr. ``state``
    holds only the slow weights. Load checkpoints through the Lookahead: the
    inner ``load_state_dict`` alone would replace the shared list.
    """

    def __init__(self, optimizer: Optimizer, k: int = 5, alpha: float = 0.5):
        ok = isinstance(optimizer, Optimizer)
        require(ok, "optimizer", "a torch.optim.Optimizer", optimizer)
        k, alpha = check_int("k", k, low=1), check_real("alpha", alpha, "[0, 1]")
        self.optimizer, self.k, self.alpha = optimizer, k, alpha
        self.step_count = 0  # inner steps so far; the weights sync at multiples of k
        # Given the inner optimizer's own groups and defaults, Optimizer.__init__
        # changes nothing in them; it sets up the hooks and self.state.
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self.param_groups = optimizer.param_groups  # the same list, not a copy

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, closure=None):
        """One inner step; every k-th also syncs the slow and fast weights."""
        for p in self._params():
            if "slow_param" not in self.state[p]:  # phi_0 = theta_0, or a new group
                self.state[p]["slow_param"] = p.detach().clone()
        loss = self.optimizer.step(closure)
        self.step_count += 1
        if self.step_count % self.k == 0:
            for p in self._params():
                slow = self.state[p]["slow_param"].lerp_(p, self.alpha)
                p.copy_(slow)
        return loss

    def state_dict(self) -> dict:
        """The inner optimizer's state_dict, the slow weights and the step count.

        Slow weights are keyed by the weight's index, as in torch's state_dict.
        """
        params = enumerate(self._params())  # none before the first step
        slow = {i: self.state[p]["slow_param"] for i, p in params if p in self.state}
        return {
            "optimizer": self.optimizer.state_dict(),
            "slow_params": slow,
            "step_count": self.step_count,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict["optimizer"])
        # torch's load_state_dict builds a new list of groups: share it again
        self.param_groups = self.optimizer.param_groups
        params = self._params()
        self.state = defaultdict(dict)
        for i, slow in state_dict["slow_params"].items():
            self.state[params[i]]["slow_param"] = slow.to(params[i], copy=True)
        self.step_count = state_dict["step_count"]

    def __getstate__(self) -> dict:
        # for pickle and copy.deepcopy: torch's base version keeps three fields
        own = {"optimizer": self.optimizer, "k": self.k, "alpha": self.alpha}
        return {**super().__getstate__(), **own, "step_count": self.step_count}
