r"""Watch a training run's gradients and numerics.

Four tools for the debugging chapter, each answering one question:

========================  ===================================================
:class:`GradientMonitor`  how large is each layer's gradient, and how far
                          does each step move its weights? (a ``fit``
                          callback)
:func:`find_nonfinite`    which module first produced a NaN or an infinity?
:func:`clip_grad_norm_`   gradient clipping from scratch, equal to
:func:`clip_grad_value_`  ``torch.nn.utils``'s
:class:`GraphProbe`       does the training loop keep autograd graphs alive
                          (``running_loss += loss``) and so grow without end?
========================  ===================================================

The update-to-weight ratio :math:`\lVert \Delta w\rVert / \lVert w\rVert` is a
common rule of thumb for the learning rate: around :math:`10^{-3}` per step
is healthy, much smaller means the layer barely learns, much larger that it
is being thrown around.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._args import (
    check_bool,
    check_callable,
    check_choice,
    check_int,
    check_real,
    require,
)
from .train import Callback


class GradientMonitor(Callback):
    r"""A :func:`~course_lib.train.fit` callback recording, per parameter tensor,
    the gradient norm :math:`\lVert g\rVert_2` and the update-to-weight ratio

    .. math:: r = \frac{\lVert w_{t+1} - w_t\rVert_2}{\lVert w_t\rVert_2},

    measured from the parameter change over the optimizer step, so it is
    :math:`\eta \lVert g\rVert / \lVert w\rVert` for plain SGD and the true
    ratio for momentum, Adam or anything else (weight decay included).

    ``fit`` calls callbacks once per epoch, so the monitor hooks into
    ``optimizer.step`` itself (step pre- and post-hooks, put on in
    ``on_train_begin``, taken off in ``on_train_end``): gradients are read
    and weights copied just before each step, and compared just after.

    ``every="step"`` appends one value per step; ``"epoch"`` appends the mean
    over each epoch's steps. ``grad_norm`` and ``update_ratio`` map
    each parameter's qualified name (``"0.weight"``) to its list of values; a
    parameter without a gradient at a step records NaN, so every list has the
    same length. A weight that is exactly zero (a bias initialised to 0)
    gives an infinite ratio at its first step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, every: str = "step"):
        require(isinstance(optimizer, torch.optim.Optimizer), "optimizer",
                "a torch.optim.Optimizer", optimizer)  # fmt: skip
        self.optimizer = optimizer
        self.every = check_choice("every", every, ("step", "epoch"))
        self.grad_norm: dict[str, list[float]] = {}
        self.update_ratio: dict[str, list[float]] = {}
        self._handles: list = []

    def on_train_begin(self, model, history):
        self._names = [name for name, _ in model.named_parameters()]
        self._params = [p for _, p in model.named_parameters()]
        self.grad_norm = {name: [] for name in self._names}
        self.update_ratio = {name: [] for name in self._names}
        self._epoch: list[tuple[list[float], list[float]]] = []
        self._handles = [
            self.optimizer.register_step_pre_hook(self._before_step),
            self.optimizer.register_step_post_hook(self._after_step),
        ]

    @torch.no_grad()
    def _before_step(self, optimizer, args, kwargs):
        self._norms = [
            math.nan if p.grad is None else torch.linalg.vector_norm(p.grad).item()
            for p in self._params
        ]
        self._before = [p.detach().clone() for p in self._params]

    @torch.no_grad()
    def _after_step(self, optimizer, args, kwargs):
        norm = torch.linalg.vector_norm
        pairs = zip(self._params, self._before, self._norms, strict=True)
        ratios = [
            math.nan if math.isnan(g) else (norm(p - old) / norm(old)).item()
            for p, old, g in pairs
        ]
        self._before = []
        if self.every == "step":
            self._append(self._norms, ratios)
        else:
            self._epoch.append((self._norms, ratios))

    def _append(self, norms, ratios):
        for name, norm, ratio in zip(self._names, norms, ratios, strict=True):
            self.grad_norm[name].append(norm)
            self.update_ratio[name].append(ratio)

    def on_epoch_end(self, model, history):
        if self.every == "epoch" and self._epoch:
            norms, ratios = np.array(self._epoch).mean(axis=0)  # (2, P)
            self._append(norms.tolist(), ratios.tolist())
            self._epoch = []
        return False

    def on_train_end(self, model, history):
        self.on_epoch_end(model, history)  # an epoch cut short by a NaN loss
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _tensors(obj):
    """The tensors inside ``obj`` (a tensor, or lists/tuples/dicts of them)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple, dict)):
        for item in obj.values() if isinstance(obj, dict) else obj:
            yield from _tensors(item)


def _nonfinite(obj) -> bool:
    return any(
        (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())
        for t in _tensors(obj)
    )


@dataclass(frozen=True)
class NonFinite:
    """Where a NaN/inf first came out of a module.

    ``name`` is the module's qualified name in the model (``""`` for the model
    itself), ``call`` counts that module's forward calls before this one
    (0: its first), ``inputs_nonfinite`` says whether its inputs already held
    a NaN/inf: if so, the culprit is not a module but what fed it (the data,
    or a functional operation such as ``torch.log`` in a ``forward``).
    """

    name: str
    module: str
    call: int
    inputs_nonfinite: bool

    def __str__(self) -> str:
        inputs = "non-finite" if self.inputs_nonfinite else "finite"
        where = self.name or "(model)"
        return f"{where} ({self.module}), call {self.call}, inputs {inputs}"


class find_nonfinite:  # noqa: N801 (used as a function: ``with find_nonfinite(m)``)
    """Context manager naming the first module whose forward output is NaN/inf.

    A forward hook on every submodule checks the output; hooks fire when a
    module's forward returns, so children fire before their parents and the
    first hit is the innermost module that produced the value. The finding
    is in ``.found`` (a :class:`NonFinite`, or None); with ``raise_error`` a
    ``FloatingPointError`` stops the forward pass at once. The hooks are
    removed on exit, even after an exception::

        with find_nonfinite(model) as finder:
            loss_fn(model(X), y).backward()
        print(finder.found)

    When the forward pass is finite but the *gradients* turn NaN (a ``sqrt``
    at 0 behind a ``torch.where``, whose backward is 0/0; a custom
    ``backward``), forward hooks see nothing: use
    ``torch.autograd.detect_anomaly()``, which checks the output of every
    backward function, raises naming the first that returned NaN
    (``SqrtBackward0``) and prints the traceback of its forward call. It
    slows every operation down, so it is for a rerun, not for every run.
    """

    def __init__(self, model: nn.Module, raise_error: bool = False):
        require(isinstance(model, nn.Module), "model", "a torch.nn.Module", model)
        self.model = model
        self.raise_error = check_bool("raise_error", raise_error)
        self.found: NonFinite | None = None
        self._calls: dict[str, int] = {}
        self._handles: list = []

    def _hook(self, name: str):
        def hook(module, inputs, output):
            call = self._calls.get(name, 0)
            self._calls[name] = call + 1
            if self.found is None and _nonfinite(output):
                self.found = NonFinite(name, type(module).__name__, call,
                                       _nonfinite(inputs))  # fmt: skip
                if self.raise_error:
                    raise FloatingPointError(f"non-finite output from {self.found}")

        return hook

    def __enter__(self) -> find_nonfinite:
        self._handles = [
            module.register_forward_hook(self._hook(name))
            for name, module in self.model.named_modules()
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _grads(parameters) -> list[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def _check_foreach(foreach) -> None:
    require(foreach is None or isinstance(foreach, bool), "foreach",
            "None, True or False", foreach)  # fmt: skip


@torch.no_grad()
def clip_grad_norm_(
    parameters, max_norm: float, norm_type: float = 2.0,
    error_if_nonfinite: bool = False, foreach: bool | None = None,
) -> torch.Tensor:  # fmt: skip
    r"""Rescale the gradients so that their total norm is at most ``max_norm``.

    The total norm treats all gradients as one vector,

    .. math:: \lVert g\rVert_p = \Bigl(\sum_i |g_i|^p\Bigr)^{1/p}, \qquad
              \lVert g\rVert_\infty = \max_i |g_i|,

    and every gradient is multiplied by
    :math:`c = \min\bigl(1, \text{max\_norm} / (\lVert g\rVert_p + 10^{-6})\bigr)`,
    as torch does (always multiplied, by 1 when no clipping is needed; the
    :math:`10^{-6}` keeps a zero gradient finite). The direction is kept and
    only the length changes, which is why Pascanu et al. (2013) proposed it
    against exploding gradients: a step along a cliff's gradient keeps its
    direction but cannot jump arbitrarily far. Returns the total norm before
    clipping (a 0-d tensor; ``tensor(0.)`` when no parameter has a gradient).

    ``parameters`` is a tensor or an iterable of tensors; those whose
    ``.grad`` is None are skipped. With ``error_if_nonfinite`` a NaN/inf total
    raises ``RuntimeError`` before anything is changed; otherwise the
    gradients are scaled by the NaN/0 coefficient, as torch does. ``foreach``
    is accepted for drop-in use; the loop here is the same either way.
    """
    max_norm = check_real("max_norm", max_norm, "[0, inf]")
    norm_type = check_real("norm_type", norm_type, "(0, inf]")
    error_if_nonfinite = check_bool("error_if_nonfinite", error_if_nonfinite)
    _check_foreach(foreach)
    grads = _grads(parameters)
    if not grads:
        return torch.tensor(0.0)
    where = grads[0].device
    if math.isinf(norm_type):
        total = torch.stack([g.abs().max().to(where) for g in grads]).max()
    else:
        total = sum(g.abs().pow(norm_type).sum().to(where) for g in grads)
        total = total ** (1.0 / norm_type)
    if error_if_nonfinite and not bool(torch.isfinite(total)):
        raise RuntimeError(
            f"the total norm of order {norm_type} of the gradients is {total.item()},"
            " so it cannot be clipped; pass error_if_nonfinite=False to scale anyway"
        )
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.device))
    return total


@torch.no_grad()
def clip_grad_value_(parameters, clip_value: float, foreach: bool | None = None):
    r"""Clamp every gradient entry into ``[-clip_value, clip_value]``, in place.

    .. math:: g_i \leftarrow \max(-c, \min(c, g_i))

    Unlike :func:`clip_grad_norm_` this changes the gradient's direction:
    the large entries are cut and the small ones kept. ``parameters`` is a
    tensor or an iterable of tensors; those without ``.grad`` are skipped;
    NaN entries stay NaN. Returns None, as torch does.
    """
    clip_value = check_real("clip_value", clip_value, "[0, inf]")
    _check_foreach(foreach)
    for g in _grads(parameters):
        g.clamp_(min=-clip_value, max=clip_value)


def _live_graph() -> tuple[int, int, int]:
    """(graph nodes reachable from live tensors, those tensors, their bytes)."""
    gc.collect()
    roots, seen_storage, nbytes, is_tensor = [], set(), 0, {}
    for obj in gc.get_objects():
        # type(), not isinstance: isinstance reads __class__, which warns on
        # some lazily deprecated objects (torch.distributed.reduce_op)
        kind = type(obj)
        if kind not in is_tensor:
            is_tensor[kind] = issubclass(kind, torch.Tensor)
        if is_tensor[kind]:
            if obj.layout == torch.strided and obj.device.type != "meta":
                storage = obj.untyped_storage()  # views share their base's
                if storage.data_ptr() not in seen_storage:
                    seen_storage.add(storage.data_ptr())
                    nbytes += storage.nbytes()
            if obj.grad_fn is not None:
                roots.append(obj.grad_fn)
    # Depth-first walk along next_functions. The set holds the node objects
    # themselves: torch hands out one Python object per graph node only while
    # it is alive, so a set of ids alone could see a freed id come back.
    nodes, stack = set(), list(roots)
    while stack:
        node = stack.pop()
        if node is None or node in nodes:
            continue
        nodes.add(node)
        stack.extend(parent for parent, _ in node.next_functions)
    return len(nodes), len(roots), nbytes


class GraphProbe:
    r"""Tell a training loop that keeps autograd graphs alive from one that does not.

    Each :meth:`sample` runs the garbage collector, finds every live tensor
    (``gc.get_objects()``) and counts the autograd graph nodes reachable
    from those with a ``grad_fn``. A sound loop holds at most one
    iteration's graph at a time (the last ``loss`` until it is overwritten),
    so the count is flat from the second iteration on. ``running_loss +=
    loss`` without ``.item()`` chains every iteration's graph to the last
    one, and the count grows by a whole graph per iteration, without end.

    Given a ``model`` and used as a context manager, the probe samples just
    before every forward call of ``model``, so it watches a training function
    it cannot edit: ``with GraphProbe(model) as probe: train(model)``.
    :attr:`leaking` is true when the least-squares slope of the node count
    over the samples after the first is at least ``threshold`` nodes per
    sample (default 0.5: a leak adds at least one node per iteration).
    The lists ``nodes``, ``roots`` (live tensors with a ``grad_fn``),
    ``tensor_bytes`` and ``cuda_bytes`` hold one entry per sample.

    Limits: it counts graphs, not bytes. After ``backward`` a kept graph has
    freed its saved activations, so memory grows by the nodes alone, slowly;
    ``tensor_bytes`` (the storages of live Python tensors, the only bytes
    visible through ``gc`` on a CPU) misses tensors held inside graph nodes;
    on a GPU ``cuda_bytes`` (``torch.cuda.memory_allocated``) counts every
    byte but cannot say why it grew. Graphs kept on purpose (losses stacked
    later) count as growth too. A sample walks every Python object, tens of
    milliseconds, so probe a few dozen iterations, not a whole run.
    """

    def __init__(self, model: nn.Module | None = None, threshold: float = 0.5):
        ok = model is None or isinstance(model, nn.Module)
        require(ok, "model", "None or a torch.nn.Module", model)
        self.model, self._handle = model, None
        self.threshold = check_real("threshold", threshold, "(0, inf)")
        self.nodes: list[int] = []
        self.roots: list[int] = []
        self.tensor_bytes: list[int] = []
        self.cuda_bytes: list[int] = []

    def sample(self) -> None:
        """Record the live graph now."""
        nodes, roots, nbytes = _live_graph()
        self.nodes.append(nodes)
        self.roots.append(roots)
        self.tensor_bytes.append(nbytes)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.cuda_bytes.append(torch.cuda.memory_allocated())

    @property
    def growth(self) -> float:
        """Least-squares slope of the node count per sample, after the first."""
        counts = np.asarray(self.nodes[1:], dtype=float)
        if len(counts) < 2:
            raise ValueError(f"need at least 3 samples, got {len(self.nodes)}")
        return float(np.polyfit(np.arange(len(counts)), counts, 1)[0])

    @property
    def leaking(self) -> bool:
        """Whether the graph grew by at least ``threshold`` nodes per sample."""
        return self.growth >= self.threshold

    def __enter__(self) -> GraphProbe:
        if self.model is not None:
            self._handle = self.model.register_forward_pre_hook(
                lambda module, inputs: self.sample()
            )
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def probe_loop(step, num_steps: int = 20, threshold: float = 0.5) -> GraphProbe:
    """Call ``step(i)`` for ``i < num_steps``, sampling a :class:`GraphProbe`
    after each call; return the probe (``probe.leaking``, ``probe.nodes``)."""
    check_callable("step", step)
    num_steps = check_int("num_steps", num_steps, low=3)
    probe = GraphProbe(threshold=threshold)
    for i in range(num_steps):
        step(i)
        probe.sample()
    return probe
