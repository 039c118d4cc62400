"""Lab 8's checks: right answers pass; each classic mistake fails with a message
that names it, the tensor and the step; each forbidden route is named.

The generic lab tests (generation, references on hidden cases, grading) are in
``test_labs.py`` and ``test_grading.py``.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from course_lib.labs import checks
from course_lib.labs import lab08_pruning as lab8

# --- answers, right and with one mistake switched on ---------------------------------


def make_masks(flaw=""):
    def global_magnitude_masks(weights, sparsity):
        if flaw != "accepts any sparsity" and not 0 <= sparsity <= 1:
            raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
        if flaw == "layer-wise":
            return [make_masks()([w], sparsity)[0] for w in weights]
        score = (lambda w: w) if flaw == "signed" else torch.abs
        flat = torch.cat([score(w).flatten() for w in weights])
        k = int(sparsity * flat.numel()) if flaw == "floor" else round(
            sparsity * flat.numel())  # fmt: skip
        k += flaw == "one more"
        mask = torch.ones_like(flat)
        mask[flat.argsort()[:k]] = 0
        if flaw == "inverted":
            mask = 1 - mask
        pieces = mask.split([w.numel() for w in weights])
        masks = [p.reshape(w.shape) for p, w in zip(pieces, weights, strict=True)]
        return [m.bool() for m in masks] if flaw == "boolean" else masks

    return global_magnitude_masks


def make_step(flaw=""):
    def pruned_step(model, masks, optimizer, X, y):
        params = dict(model.named_parameters())
        optimizer.zero_grad()
        if flaw == "before the step":
            with torch.no_grad():
                for name, mask in masks.items():
                    params[name].mul_(mask)
        loss = F.cross_entropy(model(X), y)
        if flaw == "summed loss":
            loss = F.cross_entropy(model(X), y, reduction="sum")
        loss.backward()
        if flaw in ("gradients only", "gradients and momentum"):
            for name, mask in masks.items():
                params[name].grad.mul_(mask)
        if flaw == "gradients and momentum":  # also clears the stale state: right
            for name, mask in masks.items():
                state = optimizer.state[params[name]]
                if "momentum_buffer" in state and state["momentum_buffer"] is not None:
                    state["momentum_buffer"].mul_(mask)
        optimizer.step()
        if flaw in ("", "summed loss"):
            with torch.no_grad():
                for name, mask in masks.items():
                    params[name].mul_(mask)

    return pruned_step


def make_rewind(flaw=""):
    def rewind(model, initial_state, masks):
        if flaw == "new parameters":
            for module_name, module in model.named_modules():
                for name, _ in list(module.named_parameters(recurse=False)):
                    full = f"{module_name}.{name}"
                    value = initial_state[full] * masks.get(full, 1.0)
                    setattr(module, name, nn.Parameter(value.clone()))
            for name, b in model.named_buffers():
                b.copy_(initial_state[name])
            return
        with torch.no_grad():
            for name, p in model.named_parameters():
                if flaw == "only the masked weights" and name not in masks:
                    continue
                if flaw == "biases zeroed" and name.endswith("bias"):
                    p.zero_()
                    continue
                if flaw != "no rewind":
                    p.copy_(initial_state[name])
                if name in masks and flaw != "no mask":
                    p.mul_(masks[name])
            if flaw != "buffers kept":
                for name, b in model.named_buffers():
                    b.copy_(initial_state[name])

    return rewind


def load_and_mask(model, initial_state, masks):
    model.load_state_dict(initial_state)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)


def checked(capsys, check, answer) -> tuple[bool, str]:
    passed = check(answer)
    return passed, capsys.readouterr().out


def verdicts(key, answer, cases) -> list:
    q = lab8.QUESTIONS[key]
    return [checks.judge(q, q.expected_outputs(i), checks.run_one(q, answer, i))
            for _, i in cases]  # fmt: skip


# --- the references are torch.nn.utils.prune's, and right wherever graded ------------


@pytest.mark.parametrize("seed", [0, 3, 1234])
def test_references_pass_every_public_and_hidden_case(seed):
    for key, q in lab8.QUESTIONS.items():
        for label, inputs in q.public_cases() + q.hidden_cases(seed):
            out = q.run(q.reference, inputs)  # not run_one: it forbids references
            verdict = checks.judge(q, q.expected_outputs(inputs), out)
            assert verdict is None, (key, label, verdict)


def test_hidden_cases_differ_from_the_public_ones_and_with_the_seed():
    for key, q in lab8.QUESTIONS.items():
        public = [inputs for _, inputs in q.public_cases()]
        hidden = [inputs for _, inputs in q.hidden_cases(0)]
        assert not any(h in public for h in hidden), key
        assert hidden != [inputs for _, inputs in q.hidden_cases(1)], key


@pytest.mark.parametrize("shapes, sparsity", [
    ([(7, 3)], 0.4), ([(20, 10), (10, 20), (3, 10)], 0.95),
    ([(6, 2, 3, 3), (5, 6, 1, 1), (9, 5)], 0.37), ([(1, 1), (2, 1)], 1.0),
    ([(40, 30), (30, 40)], 0.01),
])  # fmt: skip
def test_the_explicit_masks_are_global_unstructureds(shapes, sparsity):
    """The masks the feedback and the other questions use equal torch's, on
    shapes and sparsities of their own."""
    g = torch.Generator().manual_seed(5)
    weights = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    ours = lab8._magnitude_masks(weights, sparsity)
    for mine, torchs in zip(ours, lab8._torch_masks(weights, sparsity), strict=True):
        assert torch.equal(mine, torchs)
    assert sum(int((m == 0).sum()) for m in ours) == round(
        sparsity * sum(w.numel() for w in weights))  # fmt: skip


@pytest.mark.parametrize("kind", ["sgd", "momentum", "momentum + weight decay",
                                  "nesterov", "adam"])  # fmt: skip
def test_masking_after_the_step_is_prunes_reparametrisation(kind):
    """Re-applying the mask after each step gives, step for step, the network
    prune.custom_from_mask computes with; its pruned weights are 0 throughout."""
    _, inputs = lab8._pruned_case(kind, 0.75, warm=4, steps=15, seed=11)
    ours = lab8._run_pruned(lab8.pruned_step_reference, inputs)["trajectory"]
    torchs = lab8._torch_pruned_run(inputs)
    torch.testing.assert_close(ours, torchs, rtol=1e-12, atol=1e-14)
    keep = lab8._expected_pruned(inputs)["keep"].bool()
    assert bool((ours[:, ~keep] == 0).all()) and int((~keep).sum()) > 10
    assert not torch.equal(ours[0], ours[-1])  # it trained


# --- right answers pass ---------------------------------------------------------------


@pytest.mark.parametrize("key, answer", [
    ("q1", make_masks()), ("q1", make_masks("boolean")), ("q2", make_step()),
    ("q3", make_rewind()),
    ("q3", load_and_mask),
])  # fmt: skip
def test_a_right_answer_passes_public_and_hidden_cases(capsys, key, answer):
    passed, out = checked(capsys, getattr(lab8, f"check_{key}"), answer)
    assert passed, out
    cases = lab8.QUESTIONS[key].hidden_cases(7)
    assert verdicts(key, answer, cases) == [None] * len(cases)


# --- q1: the mask ---------------------------------------------------------------------


@pytest.mark.parametrize("flaw, words, failed", [
    ("signed", ["signed value", "magnitude, |w|"], "3 of 3"),
    ("layer-wise", ["layer-wise", "ranks all the weights together"], "3 of 3"),
    ("floor", ["round the number of weights to prune down"], "1 of 3"),
    ("inverted", ["your masks are inverted"], "3 of 3"),
    ("one more", ["one weight too many"], "3 of 3"),
    ("accepts any sparsity", ["sparsity=1.5 must raise ValueError"], "3 of 3"),
])  # fmt: skip
def test_each_mask_mistake_is_named(capsys, flaw, words, failed):
    passed, out = checked(capsys, lab8.check_q1, make_masks(flaw))
    assert not passed and f"{failed} cases failed" in out, out
    for word in words:
        assert word in out, out


def test_a_mask_that_prunes_the_wrong_count_says_how_many(capsys):
    def prunes_half(weights, sparsity):
        return make_masks()(weights, 0.5)

    passed, out = checked(capsys, lab8.check_q1, prunes_half)
    assert not passed and "you prune 52 of 104 weights, torch prunes round(sparsity " \
        "* total) = 83" in out, out


def test_hidden_masks_reach_both_ends_and_convolutions():
    cases = [inputs for _, inputs in lab8.QUESTIONS["q1"].hidden_cases(0)]
    sparsities = {c["sparsity"] for c in cases}
    assert {0.0, 1.0} <= sparsities and max(sparsities - {1.0}) > 0.5
    assert any(len(s) == 4 for c in cases for s in c["shapes"])
    verdict = verdicts("q1", make_masks("layer-wise"), lab8._masks_hidden(0)[:1])[0]
    assert "layer-wise" in verdict


# --- q2: training under the mask ------------------------------------------------------


@pytest.mark.parametrize("flaw, words, failed", [
    ("gradients only", ["after step 1, the pruned weight", "not 0",
                        "momentum", "after optimizer.step()"], "1 of 2"),
    ("before the step", ["after step 1, the pruned weight 0.weight[1, 0]",
                         "before optimizer.step()"], "2 of 2"),
    ("no mask", ["never applies the mask"], "2 of 2"),
    ("summed loss", ["after step 1, the kept parameter",
                     "differs from torch.nn.utils.prune's masked run"], "2 of 2"),
])  # fmt: skip
def test_each_step_mistake_is_named_with_the_step_and_the_weight(capsys, flaw, words,
                                                                 failed):  # fmt: skip
    answer = make_step("" if flaw == "no mask" else flaw)
    if flaw == "no mask":
        def answer(model, masks, optimizer, X, y):
            optimizer.zero_grad()
            F.cross_entropy(model(X), y).backward()
            optimizer.step()

    passed, out = checked(capsys, lab8.check_q2, answer)
    assert not passed and f"{failed} cases failed" in out, out
    for word in words:
        assert word in out, out


def test_clearing_the_momentum_too_is_right_for_sgd_but_not_for_adam():
    """Masking the gradient and the momentum buffer keeps SGD's pruned weights at
    zero (passes the public cases); Adam's averages still move them."""
    answer = make_step("gradients and momentum")
    q = lab8.QUESTIONS["q2"]
    assert verdicts("q2", answer, q.public_cases()) == [None, None]
    cases = [c for c in q.hidden_cases(0) if c[1]["optimizer"] == "adam"
             and c[1]["warm"] > 0]  # fmt: skip
    assert cases and "not enough" in verdicts("q2", answer, cases)[0]


def test_masking_gradients_fails_wherever_the_optimizer_has_state():
    """Right for plain SGD; wrong with momentum, Nesterov and Adam's averages."""
    cases = lab8.QUESTIONS["q2"].hidden_cases(0)
    found = verdicts("q2", make_step("gradients only"), cases)
    for (_, inputs), verdict in zip(cases, found, strict=True):
        if inputs["warm"] > 0:
            assert "masking the gradients is not enough" in verdict, (inputs, verdict)
    _, fresh = next(c for c in cases if c[1]["warm"] == 0)  # Adam, pruned at step 0
    assert fresh["optimizer"] == "adam"


# --- q3: rewinding --------------------------------------------------------------------


@pytest.mark.parametrize("flaw, words, failed", [
    ("no mask", ["0.weight: you rewind the weights but do not apply the mask"],
     "2 of 2"),
    ("no rewind", ["prune the trained weights instead of rewinding"], "2 of 2"),
    ("only the masked weights", ["0.bias keeps its trained value"], "2 of 2"),
    ("biases zeroed", ["you zero 0.bias; it is not pruned"], "2 of 2"),
    ("buffers kept", ["the batch-norm buffer 1.running_mean keeps its trained"],
     "1 of 2"),
    ("new parameters", ["parameters are new objects", "in place"], "2 of 2"),
])  # fmt: skip
def test_each_rewind_mistake_is_named(capsys, flaw, words, failed):
    passed, out = checked(capsys, lab8.check_q3, make_rewind(flaw))
    assert not passed and f"{failed} cases failed" in out, out
    for word in words:
        assert word in out, out


# --- forbidden routes: each is caught and named ---------------------------------------


def masks_by_torch(weights, sparsity):
    holders = []
    for w in weights:
        holder = nn.Module()
        holder.weight = nn.Parameter(w.clone())
        holders.append((holder, "weight"))
    prune.global_unstructured(holders, pruning_method=prune.L1Unstructured,
                              amount=sparsity)  # fmt: skip
    return [h.weight_mask for h, _ in holders]


def masks_by_compute_mask(weights, sparsity):
    flat = torch.cat([w.flatten() for w in weights])
    method = getattr(prune, "L1" + "Unstructured")(amount=sparsity)  # computed name
    mask = method.compute_mask(flat, torch.ones_like(flat))
    return [m.reshape(w.shape) for m, w in zip(mask.split([w.numel() for w in weights]),
                                               weights, strict=True)]  # fmt: skip


def masks_by_the_count_helper(weights, sparsity):
    k = prune._compute_nparams_toprune(sparsity, sum(w.numel() for w in weights))
    return make_masks()(weights, k / sum(w.numel() for w in weights))


def step_by_custom_from_mask(model, masks, optimizer, X, y):
    for name, mask in masks.items():
        layer = model.get_submodule(name.split(".")[0])
        if not prune.is_pruned(layer):
            prune.custom_from_mask(layer, "weight", mask)
    lab8._step(model, optimizer, X, y)


def rewind_then_remove(model, initial_state, masks):
    model.load_state_dict(initial_state)
    for name, mask in masks.items():
        layer = model.get_submodule(name.split(".")[0])
        prune.custom_from_mask(layer, "weight", mask)
        prune.remove(layer, "weight")


class MyL1(prune.L1Unstructured):  # a subclass brings torch's compute_mask
    pass


def masks_by_a_subclass(weights, sparsity):
    flat = torch.cat([w.flatten() for w in weights])
    mask = MyL1(sparsity).compute_mask(flat, torch.ones_like(flat))
    return [m.reshape(w.shape) for m, w in zip(mask.split([w.numel() for w in weights]),
                                               weights, strict=True)]  # fmt: skip


def masks_by_the_course(weights, sparsity):
    from course_lib import pruning

    holders = []
    for w in weights:
        holder = nn.Module()
        holder.weight = nn.Parameter(w.clone())
        holders.append((holder, "weight"))
    return pruning.global_magnitude_masks(holders, sparsity)


def rewind_by_the_course(model, initial_state, masks):
    from course_lib import pruning

    pruning.rewind_(model, initial_state)
    load_and_mask(model, initial_state, masks)


@pytest.mark.parametrize("check, answer, used", [
    (lab8.check_q1, masks_by_the_course, "course_lib.pruning.global_magnitude_mask"),
    (lab8.check_q3, rewind_by_the_course, "course_lib.pruning.rewind_"),
    (lab8.check_q1, masks_by_torch, "torch.nn.utils.prune.global_unstructured"),
    (lab8.check_q1, masks_by_compute_mask, "torch.nn.utils.prune.L1Unstructured"),
    (lab8.check_q1, masks_by_a_subclass, "torch.nn.utils.prune.L1Unstructured"),
    (lab8.check_q1, masks_by_the_count_helper,
     "torch.nn.utils.prune._compute_nparams_toprune"),
    (lab8.check_q2, step_by_custom_from_mask, "torch.nn.utils.prune.is_pruned"),
    (lab8.check_q3, rewind_then_remove, "torch.nn.utils.prune.custom_from_mask"),
    (lab8.check_q1, lab8.QUESTIONS["q1"].reference, "course_lib.labs"),
    (lab8.check_q2, lab8.pruned_step_reference, "course_lib.labs"),
    (lab8.check_q3, lab8.rewind_reference, "course_lib.labs"),
])  # fmt: skip
def test_a_forbidden_route_is_named(capsys, check, answer, used):
    passed, out = checked(capsys, check, answer)
    assert not passed
    assert f"not allowed: it uses {used}" in out, out
