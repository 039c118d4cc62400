"""Lab 7's checks: right answers pass; each classic mistake fails with a message
that names it, the quantity and the place; each forbidden route is named.

The generic lab tests (generation, references on hidden cases, grading) are in
``test_labs.py`` and ``test_grading.py``.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from course_lib.labs import checks
from course_lib.labs import lab07_ensemble_distill as lab7

# --- answers, right and with one mistake switched on ---------------------------------


def make_ensemble(flaw=""):
    def ensemble_probabilities(models, x):
        logits = []
        for model in models:
            if flaw != "train mode":
                model.eval()
            with torch.no_grad():
                logits.append(model(x))
        z = torch.stack(logits)  # (M, N, C)
        if flaw == "mean logits":
            return z.mean(dim=0).softmax(dim=1)
        if flaw == "mean log-probabilities":
            return z.log_softmax(dim=2).mean(dim=0)
        if flaw == "sum":
            return z.softmax(dim=2).sum(dim=0)
        return z.softmax(dim=2).mean(dim=0)

    return ensemble_probabilities


def make_ema(flaw=""):
    class EMA:
        def __init__(self, model, decay):
            if not 0 <= decay <= 1 and flaw != "accepts any decay":
                raise ValueError(f"decay must be in [0, 1], got {decay}")
            self.module = model if flaw == "alias" else copy.deepcopy(model)
            self.decay, self.count = decay, 0

        @torch.no_grad()
        def update(self, model):
            d = 1 - self.decay if flaw == "swapped" else self.decay
            mine, theirs = list(self.module.parameters()), list(model.parameters())
            if flaw != "parameters only":
                mine += [b for b in self.module.buffers() if b.is_floating_point()]
                theirs += [b for b in model.buffers() if b.is_floating_point()]
            for average, current in zip(mine, theirs, strict=True):
                if self.count == 0 and flaw != "no first copy":
                    average.copy_(current)
                else:
                    average.mul_(d).add_(current, alpha=1 - d)
            if flaw == "buffers copied":
                for average, current in zip(self.module.buffers(), model.buffers(),
                                            strict=True):  # fmt: skip
                    average.copy_(current)
            if flaw == "changes the model":
                for p in model.parameters():
                    p.mul_(0.999)
            self.count += 1

    return EMA


def make_distillation(flaw=""):
    def distillation_loss(student_logits, teacher_logits, target, T, alpha):
        T_s = 1.0 if flaw == "T on the teacher only" else T
        log_p = F.log_softmax(student_logits / T_s, dim=1)
        log_q = F.log_softmax(teacher_logits / T, dim=1)
        kl = (log_q.exp() * (log_q - log_p)).sum(dim=1).mean()
        if flaw == "cross-entropy":
            kl = -(log_q.exp() * log_p).sum(dim=1).mean()
        if flaw == "log of softmax":
            p, q = (student_logits / T).softmax(1), (teacher_logits / T).softmax(1)
            kl = (q * (q.log() - p.log())).sum(dim=1).mean()
        if flaw == "reversed KL":
            kl = (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
        scale = 1.0 if flaw == "no T squared" else T**2
        a = 1 - alpha if flaw == "alpha swapped" else alpha
        hard = F.cross_entropy(student_logits, target)
        return a * scale * kl + (1 - a) * hard

    return distillation_loss


def layers_of(model):
    return [c for c in model.children() if any(True for _ in c.parameters())]


def make_groups(flaw=""):
    def fine_tuning_groups(model, k, head_lr, body_lr):
        layers = layers_of(model)
        if flaw != "accepts any k" and not 1 <= k <= len(layers):
            raise ValueError(f"k must be in [1, {len(layers)}], got {k}")
        trained = layers[:k] if flaw == "first k" else layers[len(layers) - k:]
        if flaw == "plain attribute":
            for layer in layers[: len(layers) - k]:
                layer.requires_grad = False  # freezes nothing
        elif flaw == "freezes only":
            for layer in layers[: len(layers) - k]:
                layer.requires_grad_(False)
        else:
            model.requires_grad_(False)
            for layer in trained:
                layer.requires_grad_(True)
        head = list(layers[-1].parameters())
        body = [p for layer in trained if layer is not layers[-1]
                for p in layer.parameters()]  # fmt: skip
        if flaw == "frozen in a group":
            body = [p for layer in layers[:-1] for p in layer.parameters()]
        if flaw == "lrs swapped":
            head_lr, body_lr = body_lr, head_lr
        if flaw == "no lr":
            return [{"params": head}, {"params": body, "lr": body_lr}]
        return [{"params": head, "lr": head_lr}, {"params": body, "lr": body_lr}]

    return fine_tuning_groups


def checked(capsys, check, answer) -> tuple[bool, str]:
    passed = check(answer)
    return passed, capsys.readouterr().out


def hidden_verdicts(key, answer, seed=7) -> list[str | None]:
    q = lab7.QUESTIONS[key]
    cases = q.hidden_cases(seed)
    return [checks.judge(q, q.expected_outputs(i), checks.run_one(q, answer, i))
            for _, i in cases]  # fmt: skip


# --- the references are PyTorch's, and right wherever the grader judges --------------


@pytest.mark.parametrize("seed", [0, 3, 1234])
def test_references_pass_every_public_and_hidden_case(seed):
    for key, q in lab7.QUESTIONS.items():
        for label, inputs in q.public_cases() + q.hidden_cases(seed):
            out = q.run(q.reference, inputs)  # not run_one: it forbids references
            verdict = checks.judge(q, q.expected_outputs(inputs), out)
            assert verdict is None, (key, label, verdict)


def test_hidden_cases_differ_from_the_public_ones_and_with_the_seed():
    for key, q in lab7.QUESTIONS.items():
        public = [inputs for _, inputs in q.public_cases()]
        hidden = [inputs for _, inputs in q.hidden_cases(0)]
        assert not any(h in public for h in hidden), key
        if key != "q4":  # q4's hidden networks are fixed; its learning rates vary
            assert hidden != [inputs for _, inputs in q.hidden_cases(1)], key
    lrs = {inputs["head_lr"] for _, inputs in lab7.QUESTIONS["q4"].hidden_cases(0)}
    assert lrs != {i["head_lr"] for _, i in lab7.QUESTIONS["q4"].hidden_cases(1)}


def test_the_ema_reference_is_averaged_model_step_for_step():
    """The explicit EMA the feedback uses, without a flaw, is AveragedModel's EMA
    over 40 updates, parameters and floating-point buffers, in float64."""
    model = lab7.bn_net(3, (4, 6, 3))
    ours = lab7._FlawedEMA(model, 0.93, flaw="")
    torch_ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.93),
                              use_buffers=True)  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        x = torch.randn(8, 4, generator=g, dtype=torch.float64)
        loss = F.cross_entropy(model(x), torch.randint(0, 3, (8,), generator=g))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ours.update(model)
        torch_ema.update_parameters(model)
        torch.testing.assert_close(lab7._state_vector(ours.module),
                                   lab7._state_vector(torch_ema.module),
                                   rtol=1e-12, atol=1e-14)  # fmt: skip
    buffers = dict(torch_ema.module.named_buffers())
    assert not torch.equal(buffers["1.running_mean"], model[1].running_mean)


def test_the_distillation_reference_is_its_definition():
    """alpha T² KL(q || p) + (1 - alpha) CE, the KL written as a sum here."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(7, 5, generator=g, dtype=torch.float64)
    t = torch.randn(7, 5, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 5, (7,), generator=g)
    for T, alpha in [(1.0, 0.5), (3.0, 0.2), (10.0, 1.0), (0.5, 0.0)]:
        p, q = (s / T).softmax(1), (t / T).softmax(1)
        kl = (q * (q.log() - p.log())).sum(1).mean()
        want = alpha * T**2 * kl + (1 - alpha) * F.cross_entropy(s, y)
        got = lab7.distillation_reference(s, t, y, T, alpha)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


# --- right answers pass ---------------------------------------------------------------


@pytest.mark.parametrize("key, answer", [
    ("q1", make_ensemble()), ("q2", make_ema()), ("q3", make_distillation()),
    ("q4", make_groups()),
])  # fmt: skip
def test_a_right_answer_passes_public_and_hidden_cases(capsys, key, answer):
    passed, out = checked(capsys, getattr(lab7, f"check_{key}"), answer)
    assert passed, out
    assert hidden_verdicts(key, answer) == [None] * len(lab7.QUESTIONS[key]
                                                        .hidden_cases(7))


# --- q1: the ensemble -----------------------------------------------------------------


@pytest.mark.parametrize("flaw, words", [
    ("mean logits", ["average the logits and take one softmax"]),
    ("mean log-probabilities", ["average log-probabilities"]),
    ("sum", ["sum the members' probabilities"]),
    ("train mode", ["training mode", "model.eval()"]),
])  # fmt: skip
def test_each_ensemble_mistake_is_named(capsys, flaw, words):
    passed, out = checked(capsys, lab7.check_q1, make_ensemble(flaw))
    assert not passed and "2 of 2 cases failed" in out, out
    assert "case 3 members (hidden widths [6, 7, 8]), x (8, 5)" in out
    for word in words:
        assert word in out, out


def test_a_batch_of_one_in_training_mode_gets_the_hint():
    verdicts = hidden_verdicts("q1", make_ensemble("train mode"))
    one = [v for v in verdicts if "ValueError" in v]
    assert one and "a batch of one in training mode: call model.eval()" in one[0]


def test_the_right_probabilities_with_changed_statistics_are_named(capsys):
    right = make_ensemble()

    def trains_after(models, x):
        probabilities = right(models, x)
        for model in models:
            model.train()
            model(x)  # one forward pass in training mode moves the running stats
        return probabilities

    passed, out = checked(capsys, lab7.check_q1, trains_after)
    assert not passed and "running statistics changed" in out, out


# --- q2: the EMA ----------------------------------------------------------------------


@pytest.mark.parametrize("flaw, words", [
    ("swapped", ["after update 2, 0.weight[0, 0] differs from AveragedModel's",
                 "decay and 1 - decay are swapped"]),
    ("no first copy", ["after update 1, 0.weight[0, 0]",
                       "the first update must copy"]),
    ("parameters only", ["after update 1, 1.running_mean[0] differs",
                         "never updated"]),
    ("buffers copied", ["1.running_mean[0] differs", "instead of averaging them"]),
    ("alias", ["your average is the model itself", "copy.deepcopy"]),
    ("changes the model", ["changed the model being trained",
                           "differs from the model trained without your updates"]),
    ("accepts any decay", ["EMA(model, decay=1.5) must raise ValueError"]),
])  # fmt: skip
def test_each_ema_mistake_is_named_with_the_update_and_the_tensor(capsys, flaw, words):
    passed, out = checked(capsys, lab7.check_q2, make_ema(flaw))
    assert not passed and "2 of 2 cases failed" in out, out
    assert "case decay=0.9, 6 SGD steps (lr 0.1, momentum 0.9), seed 0" in out
    for word in words:
        assert word in out, out


def test_swapped_decay_is_caught_where_decay_is_not_one_half():
    q = lab7.QUESTIONS["q2"]
    decays = [inputs["decay"] for _, inputs in q.public_cases() + q.hidden_cases(0)]
    assert all(d != 0.5 for d in decays[:2])  # both public cases show a swap
    verdicts = hidden_verdicts("q2", make_ema("swapped"), seed=0)
    assert sum(v is not None and "swapped" in v for v in verdicts) >= 2, verdicts


def test_the_ema_needs_self_module(capsys):
    class NoModule:
        def __init__(self, model, decay):
            self.copy = copy.deepcopy(model)

        def update(self, model):
            pass

    passed, out = checked(capsys, lab7.check_q2, NoModule)
    assert not passed and "keep the averaged copy of the model in self.module" in out


# --- q3: distillation -----------------------------------------------------------------


@pytest.mark.parametrize("flaw, words, failed", [
    ("no T squared", ["lacks the factor T²"], "2 of 3"),  # T = 1 hides it
    ("T on the teacher only", ["only the teacher's logits are divided by T"], "2 of 3"),
    ("reversed KL", ["the wrong way round", "KL(q || p)"], "3 of 3"),
    ("alpha swapped", ["alpha weights the wrong term"], "2 of 3"),  # alpha = 0.5
    ("cross-entropy", ["gradient is right but the value is off", "entropy"],
     "3 of 3"),
])  # fmt: skip
def test_each_distillation_mistake_is_named(capsys, flaw, words, failed):
    passed, out = checked(capsys, lab7.check_q3, make_distillation(flaw))
    assert not passed and f"{failed} cases failed" in out, out
    for word in words:
        assert word in out, out


def test_distillation_with_large_logits_needs_log_softmax():
    q = lab7.QUESTIONS["q3"]
    label, inputs = next(c for c in q.hidden_cases(0) if c[1]["scale"] > 100)
    expected = q.expected_outputs(inputs)
    naive = checks.run_one(q, make_distillation("log of softmax"), inputs)
    assert "F.log_softmax" in checks.judge(q, expected, naive)
    stable = checks.run_one(q, make_distillation(), inputs)
    assert checks.judge(q, expected, stable) is None


def test_distillation_hidden_cases_reach_high_temperature_and_alpha_one():
    cases = [inputs for _, inputs in lab7.QUESTIONS["q3"].hidden_cases(0)]
    assert max(c["T"] for c in cases) >= 20 and min(c["T"] for c in cases) < 1
    assert any(c["alpha"] == 1.0 for c in cases) and any(c["c"] == 2 for c in cases)


# --- q4: fine-tuning set-up -----------------------------------------------------------


@pytest.mark.parametrize("flaw, words", [
    ("first k", ["you train the first k layers"]),
    ("plain attribute", ["plain attribute on model[0]", "requires_grad_(False)"]),
    ("frozen in a group", ["the frozen parameter 0.weight is in a group"]),
    ("no lr", ["parameter 4.weight's group has no 'lr'"]),
    ("accepts any k", ["k=0, ...) must raise ValueError (k is in [1, 3]"]),
])  # fmt: skip
def test_each_fine_tuning_mistake_is_named(capsys, flaw, words):
    passed, out = checked(capsys, lab7.check_q4, make_groups(flaw))
    assert not passed, out
    assert "case mlp network, k=1, head_lr=0.1, body_lr=0.01" in out, out
    for word in words:
        assert word in out, out


def test_swapped_learning_rates_are_named(capsys):
    passed, out = checked(capsys, lab7.check_q4, make_groups("lrs swapped"))
    assert not passed and "the two learning rates are swapped" in out, out


def test_a_network_frozen_before_must_be_unfrozen():
    """Freezing the first layers only is right on a fresh network and wrong on
    one frozen before the call (after a linear probe): grading has both."""
    verdicts = hidden_verdicts("q4", make_groups("freezes only"), seed=0)
    cases = lab7.QUESTIONS["q4"].hidden_cases(0)
    for (_, inputs), verdict in zip(cases, verdicts, strict=True):
        if inputs["frozen"] and inputs["k"] > 1:
            assert "is frozen (requires_grad=False); it must train" in verdict
        if not inputs["frozen"]:
            assert verdict is None, (inputs, verdict)


def test_nested_blocks_are_layers():
    """A nested Sequential is one layer: its BatchNorm trains with its Linear."""
    model = lab7._build("blocks")
    groups = make_groups()(model, 2, 0.1, 0.01)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained == ["1.0.weight", "1.0.bias", "1.1.weight", "1.1.bias",
                       "2.weight", "2.bias"]  # fmt: skip
    assert [g["lr"] for g in groups] == [0.1, 0.01]


# --- forbidden routes: each is caught and named ---------------------------------------


class EMAByAveragedModel:
    def __init__(self, model, decay):
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
                                      use_buffers=True)  # fmt: skip
        self.module = self.averaged.module

    def update(self, model):
        self.averaged.update_parameters(model)


class EMAByAveragedModelAlone:
    def __init__(self, model, decay):
        self.averaged = AveragedModel(model, use_buffers=True)  # its SWA average
        self.module = self.averaged.module

    def update(self, model):
        self.averaged.update_parameters(model)


class EMAByTheAverageFunction(make_ema()):
    @torch.no_grad()
    def update(self, model):
        from torch.optim import swa_utils

        average = getattr(swa_utils, "get_ema_" + "multi_avg_fn")(self.decay)
        if self.count == 0:
            self.module.load_state_dict(model.state_dict())
        else:
            average(list(self.module.parameters()), list(model.parameters()), None)
        self.count += 1


def distillation_by_kl_div(student_logits, teacher_logits, target, T, alpha):
    soft = F.kl_div(F.log_softmax(student_logits / T, 1),
                    F.softmax(teacher_logits / T, 1), reduction="batchmean")
    return alpha * T**2 * soft + (1 - alpha) * F.cross_entropy(student_logits, target)


def distillation_by_the_module(student_logits, teacher_logits, target, T, alpha):
    kl = nn.KLDivLoss(reduction="batchmean", log_target=True)
    log_p = F.log_softmax(student_logits / T, 1)
    soft = kl(log_p, F.log_softmax(teacher_logits / T, 1))
    return alpha * T**2 * soft + (1 - alpha) * F.cross_entropy(student_logits, target)


def distillation_by_the_c_function(student_logits, teacher_logits, target, T, alpha):
    log_p = F.log_softmax(student_logits / T, 1)
    q = F.softmax(teacher_logits / T, 1)
    soft = torch.kl_div(log_p, q, 1).sum() / len(q)  # reduction 1: none... summed
    return alpha * T**2 * soft + (1 - alpha) * F.cross_entropy(student_logits, target)


def ensemble_by_the_course(models, x):
    from course_lib import ensemble

    return ensemble.ensemble_predict(models, x)


class EMAByTheCourse:
    def __init__(self, model, decay):
        from course_lib.ensemble import EMA

        self.average = EMA(model, decay, use_buffers=True)
        self.module = self.average.module

    def update(self, model):
        self.average.update_parameters(model)


def distillation_by_the_course(student_logits, teacher_logits, target, T, alpha):
    from course_lib.distill import distillation_loss

    return distillation_loss(student_logits, teacher_logits, target, temperature=T,
                             alpha=alpha)  # fmt: skip


def groups_by_the_course(model, k, head_lr, body_lr):
    from course_lib import transfer

    transfer.train_last(model, k)
    return make_groups()(model, k, head_lr, body_lr)


@pytest.mark.parametrize("check, answer, used", [
    (lab7.check_q1, ensemble_by_the_course, "course_lib.ensemble.ensemble_predict"),
    (lab7.check_q2, EMAByTheCourse, "course_lib.ensemble.EMA"),
    (lab7.check_q3, distillation_by_the_course, "course_lib.distill.distillation_l"),
    (lab7.check_q4, groups_by_the_course, "course_lib.transfer.train_last"),
    (lab7.check_q2, EMAByAveragedModel, "torch.optim.swa_utils.get_ema_multi_avg"),
    (lab7.check_q2, EMAByAveragedModelAlone, "torch.optim.swa_utils.AveragedModel"),
    (lab7.check_q2, EMAByTheAverageFunction,
     "torch.optim.swa_utils.get_ema_multi_avg_fn"),
    (lab7.check_q2, lab7.EMAReference, "course_lib.labs"),
    (lab7.check_q3, distillation_by_kl_div, "torch.nn.functional.kl_div"),
    (lab7.check_q3, distillation_by_the_module, "torch.nn.KLDivLoss"),
    (lab7.check_q3, distillation_by_the_c_function, "torch.kl_div"),
    (lab7.check_q3, lab7.distillation_reference, "course_lib.labs"),
    (lab7.check_q4, lab7.fine_tuning_reference, "course_lib.labs"),
    (lab7.check_q1, lab7.QUESTIONS["q1"].reference, "course_lib.labs"),
])  # fmt: skip
def test_a_forbidden_route_is_named(capsys, check, answer, used):
    passed, out = checked(capsys, check, answer)
    assert not passed
    assert f"not allowed: it uses {used}" in out, out


def test_building_blocks_stay_allowed(capsys):
    """deepcopy, softmax, log_softmax, cross_entropy, requires_grad_ and
    torch.optim are allowed: the right answers above use them."""
    for key, answer in [("q1", make_ensemble()), ("q2", make_ema()),
                        ("q3", make_distillation()), ("q4", make_groups())]:
        assert getattr(lab7, f"check_{key}")(answer) is True
    assert "not allowed" not in capsys.readouterr().out
