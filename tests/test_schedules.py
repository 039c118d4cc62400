"""Tests for course_lib.schedules: hand-computed values, torch counterparts,
the advertised ``LambdaLR`` usage, validation, pickling and checkpoints."""

import dataclasses
import io
import math
import pickle

import numpy as np
import pytest
import torch
from torch.optim import SGD
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    MultiplicativeLR,
    MultiStepLR,
    OneCycleLR,
    SequentialLR,
    StepLR,
)

from course_lib.schedules import (
    Constant,
    Cosine,
    CosineRestarts,
    Exponential,
    Inverse,
    InverseSqrt,
    LinearDecay,
    MultiStep,
    OneCycle,
    StepDecay,
    Warmup,
    factors,
    torch_scheduler,
)

# Two parameter groups with different lrs: a schedule's factor must scale each
# group's own lr.
BASE_LRS = (0.5, 0.05)

# Largest relative deviation from torch measured here over the cases below
# (torch 2.14.1, float64): Constant 0, StepDecay 1.7e-16, MultiStep 1.3e-16,
# Exponential 1.1e-15, Inverse 5.9e-16, InverseSqrt 1.1e-15, LinearDecay
# 1.2e-15, Cosine 6.3e-15, CosineRestarts 2.1e-15, OneCycle 1.3e-15, Warmup
# 6.3e-15; LambdaLR(ours) vs torch the same. Torch's recursive schedulers
# multiply the current lr each step, so their rounding error grows with the
# step count (CosineAnnealingLR: 7.8e-14 at T_max=1000); 1e-12 leaves room for
# that and still catches any off-by-one-step error.
REL = 1e-12


def make_optimizer(base_lrs=BASE_LRS):
    groups = [
        {"params": [torch.zeros(2, dtype=torch.float64, requires_grad=True)], "lr": lr}
        for lr in base_lrs
    ]
    return SGD(groups)


def record_lrs(make_scheduler, num_steps, base_lrs=BASE_LRS):
    """Each group's lr at steps 0..num_steps-1, stepping as a training loop does."""
    optimizer = make_optimizer(base_lrs)
    scheduler = make_scheduler(optimizer)
    history = []  # (num_steps, num_groups)
    for _ in range(num_steps):
        history.append([group["lr"] for group in optimizer.param_groups])
        for group in optimizer.param_groups:
            group["params"][0].grad = torch.ones(2, dtype=torch.float64)
        optimizer.step()
        scheduler.step()
    return history


def record_each_group_alone(make_scheduler, num_steps):
    """Like record_lrs, one single-group optimizer per base lr.

    Torch's eta_min is one absolute lr shared by all groups, so a per-group
    minimum of min_factor * lr needs one torch scheduler per group.
    """
    columns = [record_lrs(make_scheduler, num_steps, (lr,)) for lr in BASE_LRS]
    return [[column[t][0] for column in columns] for t in range(num_steps)]


def expected_lrs(schedule, num_steps):
    return [[lr * schedule(t) for lr in BASE_LRS] for t in range(num_steps)]


def assert_same_lrs(got, want, rel=REL):
    for step, (got_row, want_row) in enumerate(zip(got, want, strict=True)):
        assert got_row == pytest.approx(want_row, rel=rel, abs=0), f"step {step}"


def min_lr(optimizer, min_factor):
    (group,) = optimizer.param_groups  # see record_each_group_alone
    return min_factor * group["lr"]


def inverse_ratio(k, power):
    """f(t) / f(t - 1) for f(t) = (1 + k t) ** -power, written from the formula.

    MultiplicativeLR multiplies the lr by this each step, so torch builds the
    running product that our closed form must equal.
    """
    return lambda t: ((1 + k * (t - 1)) / (1 + k * t)) ** power


def warmup_then(make_inner, warmup_steps, start_factor):
    def make(optimizer):
        ramp = LinearLR(optimizer, start_factor, 1.0, total_iters=warmup_steps)
        inner = make_inner(optimizer)
        return SequentialLR(optimizer, [ramp, inner], milestones=[warmup_steps])

    return make


def one_cycle(total_steps, **kwargs):
    def make(optimizer):
        # A float max_lr would give every group the same peak; pass one per group.
        max_lrs = [group["lr"] for group in optimizer.param_groups]
        return OneCycleLR(
            optimizer, max_lrs, total_steps, cycle_momentum=False, **kwargs
        )

    return make


def case(name, schedule, make_torch, num_steps, each_group_alone=False):
    """Compare steps 0..num_steps-1 of schedule with torch's make_torch."""
    return pytest.param(schedule, make_torch, num_steps, each_group_alone, id=name)


COUNTERPARTS = [
    case("Constant", Constant(), lambda o: ConstantLR(o, 1.0, total_iters=0), 20),
    case("StepDecay-7-0.5", StepDecay(7, 0.5), lambda o: StepLR(o, 7, 0.5), 40),
    case("StepDecay-3", StepDecay(3), lambda o: StepLR(o, 3), 20),
    case("MultiStep-3", MultiStep((10, 25, 60), 0.3),
         lambda o: MultiStepLR(o, [10, 25, 60], 0.3), 80),
    case("MultiStep-1", MultiStep([1], 0.5), lambda o: MultiStepLR(o, [1], 0.5), 5),
    case("Exponential-0.97", Exponential(0.97), lambda o: ExponentialLR(o, 0.97), 150),
    case("Exponential-1", Exponential(1.0), lambda o: ExponentialLR(o, 1.0), 10),
    case("Inverse-0.1", Inverse(0.1),
         lambda o: MultiplicativeLR(o, inverse_ratio(0.1, 1)), 100),
    case("Inverse-2", Inverse(2.0),
         lambda o: MultiplicativeLR(o, inverse_ratio(2.0, 1)), 30),
    case("InverseSqrt-1", InverseSqrt(),
         lambda o: MultiplicativeLR(o, inverse_ratio(1.0, 0.5)), 100),
    case("InverseSqrt-0.05", InverseSqrt(0.05),
         lambda o: MultiplicativeLR(o, inverse_ratio(0.05, 0.5)), 100),
    case("LinearDecay-50", LinearDecay(50), lambda o: LinearLR(o, 1.0, 0.0, 50), 70),
    case("LinearDecay-50-0.2", LinearDecay(50, 0.2),
         lambda o: LinearLR(o, 1.0, 0.2, 50), 70),
    case("LinearDecay-1", LinearDecay(1, 0.5), lambda o: LinearLR(o, 1.0, 0.5, 1), 5),
    # Cosine up to T only: beyond it torch's curve climbs back (see below)
    case("Cosine-100", Cosine(100), lambda o: CosineAnnealingLR(o, 100), 101),
    case("Cosine-7", Cosine(7), lambda o: CosineAnnealingLR(o, 7), 8),
    case("Cosine-50-min0.1", Cosine(50, 0.1),
         lambda o: CosineAnnealingLR(o, 50, min_lr(o, 0.1)), 51, True),
    case("CosineRestarts-10", CosineRestarts(10),
         lambda o: CosineAnnealingWarmRestarts(o, 10), 100),
    case("CosineRestarts-5-x2", CosineRestarts(5, 2),
         lambda o: CosineAnnealingWarmRestarts(o, 5, 2), 160),
    case("CosineRestarts-3-x3-min0.2", CosineRestarts(3, 3, 0.2),
         lambda o: CosineAnnealingWarmRestarts(o, 3, 3, min_lr(o, 0.2)), 120, True),
    # OneCycle up to T - 1 only: torch overshoots at T (see below)
    case("OneCycle-100", OneCycle(100), one_cycle(100), 100),
    case("OneCycle-10-pct0.25", OneCycle(10, 0.25), one_cycle(10, pct_start=0.25), 10),
    case("OneCycle-37-div10-final100", OneCycle(37, 0.3, 10.0, 100.0),
         one_cycle(37, pct_start=0.3, div_factor=10.0, final_div_factor=100.0), 37),
    case("OneCycle-2", OneCycle(2, 0.75), one_cycle(2, pct_start=0.75), 2),
    case("Warmup-Cosine", Warmup(Cosine(50), 10, 0.1),
         warmup_then(lambda o: CosineAnnealingLR(o, 50), 10, 0.1), 61),
    case("Warmup-StepDecay", Warmup(StepDecay(7, 0.5), 5, 0.2),
         warmup_then(lambda o: StepLR(o, 7, 0.5), 5, 0.2), 60),
    case("Warmup-LinearDecay", Warmup(LinearDecay(30), 10, 0.5),
         warmup_then(lambda o: LinearLR(o, 1.0, 0.0, 30), 10, 0.5), 60),
    case("Warmup-Exponential", Warmup(Exponential(0.9), 3, 0.01),
         warmup_then(lambda o: ExponentialLR(o, 0.9), 3, 0.01), 40),
    case("Warmup-Constant", Warmup(Constant(), 4, 0.25),
         warmup_then(lambda o: ConstantLR(o, 1.0, total_iters=0), 4, 0.25), 10),
]  # fmt: skip


def torch_lrs(make_torch, num_steps, each_group_alone):
    if each_group_alone:
        return record_each_group_alone(make_torch, num_steps)
    return record_lrs(make_torch, num_steps)


@pytest.mark.parametrize(("schedule", "make_torch", "num_steps", "alone"), COUNTERPARTS)
def test_matches_torch_counterpart(schedule, make_torch, num_steps, alone):
    got = torch_lrs(make_torch, num_steps, alone)
    assert_same_lrs(got, expected_lrs(schedule, num_steps))


@pytest.mark.parametrize(("schedule", "make_torch", "num_steps", "alone"), COUNTERPARTS)
def test_lambda_lr_matches_torch_counterpart(schedule, make_torch, num_steps, alone):
    # The advertised usage, always with both groups in one optimizer.
    got = record_lrs(lambda o: LambdaLR(o, schedule), num_steps)
    assert_same_lrs(got, torch_lrs(make_torch, num_steps, alone))


# Worked by hand; cos(pi/4) = sqrt(2)/2, so (1 + cos(pi/4)) / 2 = 0.853553...
HAND_VALUES = [
    (Constant(), [1.0, 1.0, 1.0]),
    (StepDecay(2, 0.5), [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]),
    (MultiStep((2, 5), 0.1), [1.0, 1.0, 0.1, 0.1, 0.1, 0.01, 0.01]),
    (Exponential(0.5), [1.0, 0.5, 0.25, 0.125]),
    (Inverse(0.5), [1.0, 2 / 3, 0.5, 0.4]),
    (InverseSqrt(), [1.0, 0.7071067811865476, 0.5773502691896258, 0.5]),
    (InverseSqrt(3.0), [1.0, 0.5, 0.3779644730092272]),  # 1/sqrt(7)
    (LinearDecay(4), [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]),
    (LinearDecay(4, 0.2), [1.0, 0.8, 0.6, 0.4, 0.2, 0.2]),
    (Cosine(4), [1.0, 0.8535533905932737, 0.5, 0.14644660940672627, 0.0, 0.0]),
    # 0.1 + 0.9 * [1, 0.853553..., 0.5, 0.146446..., 0]
    (Cosine(4, 0.1), [1.0, 0.8681980515339464, 0.55, 0.23180194846605365, 0.1]),
    (Warmup(Constant(), 4), [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]),
    (Warmup(Cosine(4), 2), [0.0, 0.5, 1.0, 0.8535533905932737, 0.5]),
    (Warmup(Cosine(4), 2, 0.5), [0.5, 0.75, 1.0, 0.8535533905932737, 0.5]),
    (Warmup(InverseSqrt(), 3), [0.0, 1 / 3, 2 / 3, 1.0, 0.7071067811865476]),
    (CosineRestarts(2), [1.0, 0.5, 1.0, 0.5, 1.0]),
    # cycles of 2, 4, 8 steps starting at t = 0, 2, 6
    (
        CosineRestarts(2, 2),
        [1.0, 0.5, 1.0, 0.8535533905932737, 0.5, 0.14644660940672627, 1.0],
    ),
    (CosineRestarts(2, 1, 0.5), [1.0, 0.75, 1.0]),
    # E1 = 0.6 * 5 - 1 = 2, E2 = 4; start 1/25 = 0.04, final 0.04 / 1e4 = 4e-6;
    # t=1: 1 - 0.96 / 2 = 0.52; t=3: halfway down, (1 + 4e-6) / 2 = 0.500002
    (OneCycle(5, pct_start=0.6), [0.04, 0.52, 1.0, 0.500002, 4e-6, 4e-6, 4e-6]),
    # E1 = 1.5: the peak falls between steps 1 and 2 and is never hit exactly;
    # t=1: 0.04 + 0.96 * (1 - cos(2 pi / 3)) / 2 = 0.04 + 0.96 * 0.75 = 0.76
    (OneCycle(10, 0.25), [0.04, 0.76]),
]


@pytest.mark.parametrize(("schedule", "values"), HAND_VALUES, ids=repr)
def test_hand_computed_values(schedule, values):
    got = factors(schedule, len(values))
    assert got == pytest.approx(values, rel=1e-12, abs=1e-15)


def test_factors_is_the_schedule_over_a_range():
    schedule = Warmup(Cosine(20, 0.1), 5)
    assert factors(schedule, 30) == [schedule(t) for t in range(30)]
    assert factors(schedule, 0) == []


def test_numpy_integer_steps_are_accepted():
    assert Cosine(10)(np.int64(3)) == Cosine(10)(3)


def test_cosine_departs_from_torch_after_total_steps():
    # Torch's cosine has period 2T: at 2T it is back at the base lr.
    got = record_lrs(lambda o: CosineAnnealingLR(o, 4), 9)
    assert got[8] == pytest.approx(list(BASE_LRS), rel=REL)
    assert factors(Cosine(4), 9)[4:] == [0.0] * 5


def test_torch_eta_min_is_shared_by_all_groups():
    # eta_min = 0.05 is 0.1 * the first group's lr; the second group starts at
    # 0.05 already, so torch never moves it. Ours floors each group at 0.1 * lr.
    got = record_lrs(lambda o: CosineAnnealingLR(o, 10, eta_min=0.05), 11)
    assert [row[1] for row in got] == pytest.approx([0.05] * 11, rel=REL)
    ours = record_lrs(lambda o: LambdaLR(o, Cosine(10, 0.1)), 11)
    assert ours[10] == pytest.approx([0.05, 0.005], rel=REL)


def test_one_cycle_departs_from_torch_at_and_after_total_steps():
    optimizer = make_optimizer()
    scheduler = one_cycle(10)(optimizer)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    # torch's phase fraction exceeds 1 at t = T, so the cosine turns back up:
    # 0.0495 * max_lr, about 12,000 times the final 4e-6 * max_lr.
    at_total = optimizer.param_groups[0]["lr"] / BASE_LRS[0]
    assert at_total == pytest.approx(0.04951936798652623, rel=REL)
    optimizer.step()
    with pytest.raises(ValueError, match="Tried to step 11 times"):
        scheduler.step()
    assert OneCycle(10)(10) == OneCycle(10)(11) == OneCycle(10)(9) == 4e-6


def bad_values(cls, name, values, **fixed):
    """One validation case per bad value of argument name."""
    make = [lambda v=v: cls(**fixed, **{name: v}) for v in values]
    ids = [f"{cls.__name__}-{name}={v!r}" for v in values]
    return [pytest.param(m, name, id=i) for m, i in zip(make, ids, strict=True)]


NAN, INF = math.nan, math.inf
NOT_POSITIVE_INT = [0, -1, True, 2.0, "3", None]
BAD_GAMMA = [0, -0.1, 1.5, NAN, True, "0.1"]
BAD_UNIT = [-0.1, 1.01, NAN, INF, True, None]  # for [0, 1] and [0, 1)
BAD_POSITIVE = [0, -1.0, INF, NAN, False, "1"]

VALIDATION = [
    *bad_values(StepDecay, "step_size", NOT_POSITIVE_INT),
    *bad_values(StepDecay, "gamma", BAD_GAMMA, step_size=3),
    *bad_values(
        MultiStep,
        "milestones",
        [(), (3, 3), (5, 2), (0, 4), (-1,), (1.0, 2), (True, 2), "12", {1, 2}, 5],
    ),
    *bad_values(MultiStep, "gamma", BAD_GAMMA, milestones=(3,)),
    *bad_values(Exponential, "gamma", [*BAD_GAMMA, 1.0000001, INF]),
    *bad_values(Inverse, "k", BAD_POSITIVE),
    *bad_values(InverseSqrt, "k", BAD_POSITIVE),
    *bad_values(LinearDecay, "total_steps", NOT_POSITIVE_INT),
    *bad_values(LinearDecay, "end_factor", BAD_UNIT, total_steps=10),
    *bad_values(Cosine, "total_steps", NOT_POSITIVE_INT),
    *bad_values(Cosine, "min_factor", [*BAD_UNIT, 1.0], total_steps=10),
    *bad_values(Warmup, "schedule", [None, 3, "cosine", Cosine], warmup_steps=5),
    *bad_values(Warmup, "warmup_steps", NOT_POSITIVE_INT, schedule=Constant()),
    *bad_values(Warmup, "start_factor", BAD_UNIT, schedule=Constant(), warmup_steps=5),
    *bad_values(CosineRestarts, "period", NOT_POSITIVE_INT),
    *bad_values(CosineRestarts, "period_mult", [*NOT_POSITIVE_INT, 1.5], period=5),
    *bad_values(CosineRestarts, "min_factor", [*BAD_UNIT, 1.0], period=5),
    *bad_values(OneCycle, "total_steps", NOT_POSITIVE_INT),
    # 0.1 * 10 == 1: torch divides by zero; 0.05 * 10 < 1: torch skips the peak
    *bad_values(OneCycle, "pct_start", [0.0, 1.0, -0.3, NAN, True, 0.1, 0.05],
                total_steps=10),
    *bad_values(OneCycle, "pct_start", [0.3], total_steps=1),
    *bad_values(OneCycle, "div_factor", [0, 0.5, -25.0, INF, NAN, True],
                total_steps=10),
    *bad_values(OneCycle, "final_div_factor", [0, 0.9, INF, True], total_steps=10),
]  # fmt: skip


@pytest.mark.parametrize(("make", "name"), VALIDATION)
def test_bad_argument_raises_value_error_naming_it(make, name):
    with pytest.raises(ValueError, match=rf"^{name} must be "):
        make()


EVERY_SCHEDULE = [
    Constant(),
    StepDecay(3),
    MultiStep((2, 4)),
    Exponential(0.9),
    Inverse(0.5),
    InverseSqrt(),
    LinearDecay(10),
    Cosine(10),
    Warmup(Cosine(10), 3),
    CosineRestarts(3, 2),
    OneCycle(10),
]


@pytest.mark.parametrize("schedule", EVERY_SCHEDULE, ids=repr)
@pytest.mark.parametrize("step", [-1, -100, 1.0, 2.5, True, False, "3", None])
def test_bad_step_raises_value_error_naming_step(schedule, step):
    with pytest.raises(ValueError, match=r"^step must be a non-negative integer"):
        schedule(step)


@pytest.mark.parametrize(
    ("schedule", "num_steps", "name"),
    [
        ("cosine", 5, "schedule"),
        (Cosine, 5, "schedule"),  # the class, not an instance
        (Cosine(10), -1, "num_steps"),
        (Cosine(10), 2.5, "num_steps"),
        (Cosine(10), True, "num_steps"),
    ],
)
def test_factors_validates_its_arguments(schedule, num_steps, name):
    with pytest.raises(ValueError, match=rf"^{name} must be "):
        factors(schedule, num_steps)


@pytest.mark.parametrize("schedule", EVERY_SCHEDULE, ids=repr)
def test_pickle_round_trip(schedule):
    copy = pickle.loads(pickle.dumps(schedule))
    assert copy == schedule
    assert factors(copy, 25) == factors(schedule, 25)


def test_repr_of_composed_schedule_reads_as_its_constructor():
    schedule = Warmup(Cosine(100, min_factor=0.1), warmup_steps=10)
    expected = (
        "Warmup(schedule=Cosine(total_steps=100, min_factor=0.1), "
        "warmup_steps=10, start_factor=0.0)"
    )
    assert repr(schedule) == expected
    assert eval(expected) == schedule  # the repr is valid Python


def test_schedules_are_frozen_and_hashable():
    schedule = MultiStep([30, 60])
    assert schedule.milestones == (30, 60)  # the list is stored as a tuple
    assert hash(schedule) == hash(MultiStep((30, 60)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.gamma = 0.5


def run_steps(optimizer, scheduler, num_steps):
    lrs = []
    for _ in range(num_steps):
        optimizer.step()
        scheduler.step()
        lrs.append([group["lr"] for group in optimizer.param_groups])
    return lrs


def test_lambda_lr_state_dict_round_trip_through_torch_save():
    schedule = Warmup(Cosine(20, 0.1), 5)
    optimizer = make_optimizer()
    scheduler = LambdaLR(optimizer, schedule)
    run_steps(optimizer, scheduler, 7)
    buffer = io.BytesIO()
    torch.save({"opt": optimizer.state_dict(), "sched": scheduler.state_dict()}, buffer)

    # LambdaLR saves the schedule's fields; a composed schedule's field is
    # itself a schedule, which torch.load(weights_only=True) must be allowed.
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(buffer)
    buffer.seek(0)
    with torch.serialization.safe_globals([Cosine]):
        checkpoint = torch.load(buffer)

    resumed_optimizer = make_optimizer()
    resumed = LambdaLR(resumed_optimizer, Warmup(Cosine(20, 0.1), 5))
    resumed_optimizer.load_state_dict(checkpoint["opt"])
    resumed.load_state_dict(checkpoint["sched"])
    assert resumed.last_epoch == scheduler.last_epoch == 7
    assert run_steps(resumed_optimizer, resumed, 20) == run_steps(
        optimizer, scheduler, 20
    )


def test_lambda_lr_state_dict_of_a_plain_schedule_needs_no_allow_list():
    optimizer = make_optimizer()
    scheduler = LambdaLR(optimizer, OneCycle(30))
    run_steps(optimizer, scheduler, 4)
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)  # weights_only=True, the default
    assert state["lr_lambdas"] == [dataclasses.asdict(OneCycle(30))] * len(BASE_LRS)


def test_lambda_lr_load_state_dict_overwrites_the_schedule_fields():
    # Torch writes the saved fields straight into the object's __dict__, past
    # the frozen dataclass: the checkpoint's schedule wins over the one given.
    saved = LambdaLR(make_optimizer(), Cosine(10)).state_dict()
    schedule = Cosine(20)
    LambdaLR(make_optimizer(), schedule).load_state_dict(saved)
    assert schedule == Cosine(10)


TORCH_CLASSES = [
    (Constant(), "ConstantLR"),
    (StepDecay(7, 0.5), "StepLR"),
    (MultiStep((5, 12), 0.3), "MultiStepLR"),
    (Exponential(0.9), "ExponentialLR"),
    (Inverse(0.3), "MultiplicativeLR"),
    (InverseSqrt(0.5), "MultiplicativeLR"),
    (LinearDecay(20, 0.1), "LinearLR"),
    (Cosine(20, 0.1), "CosineAnnealingLR"),
    (CosineRestarts(6, 2, 0.05), "CosineAnnealingWarmRestarts"),
    (OneCycle(25), "OneCycleLR"),
    (Warmup(Cosine(15), 5, start_factor=0.2), "SequentialLR"),
]


@pytest.mark.parametrize("schedule, class_name", TORCH_CLASSES)
def test_torch_scheduler_is_the_matching_class_with_equal_rates(schedule, class_name):
    param = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=0.5)
    scheduler = torch_scheduler(schedule, optimizer)
    assert type(scheduler).__name__ == class_name
    lrs = []
    for _ in range(21):  # within every run's length: beyond it some differ on purpose
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx(
        [0.5 * schedule(t) for t in range(21)], rel=1e-12, abs=0
    )


def test_torch_scheduler_rejects_what_torch_cannot_do():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    with pytest.raises(ValueError, match="start_factor"):
        torch_scheduler(Warmup(Cosine(10), 5), optimizer)  # torch's LinearLR needs > 0
    with pytest.raises(ValueError, match="schedule"):
        torch_scheduler(lambda t: 1.0, optimizer)


NUMPY_ARGUMENTS = [
    ("step_size", lambda v: StepDecay(v, 0.5), np.int64(3)),
    ("gamma", lambda v: StepDecay(3, v), np.float32(0.5)),
    ("milestones", lambda v: MultiStep(v), (np.int64(2), np.int32(4))),
    ("total_steps", lambda v: Cosine(v), np.int64(10)),
    ("min_factor", lambda v: Cosine(10, v), np.float64(0.1)),
    ("warmup_steps", lambda v: Warmup(Cosine(10), v), np.int64(3)),
    ("period_mult", lambda v: CosineRestarts(3, v), np.int64(2)),
    ("div_factor", lambda v: OneCycle(10, div_factor=v), np.float32(25.0)),
    ("k", lambda v: Inverse(v), np.float64(0.5)),
    ("num_steps", lambda v: factors(Cosine(10), v), np.int64(4)),
]


@pytest.mark.parametrize(("name", "make", "value"), NUMPY_ARGUMENTS)
def test_numpy_scalars_pass_bools_and_strings_do_not(name, make, value):
    made = make(value)
    if dataclasses.is_dataclass(made):  # stored as plain Python numbers
        stored = getattr(made, name)
        assert stored == (tuple(value) if name == "milestones" else value)
        assert type(stored) in (int, float, tuple)
        assert "np." not in repr(made)  # a clean legend label
        assert factors(made, 12) == factors(make(_plain(value)), 12)
    for bad in (True, "3"):
        with pytest.raises(ValueError, match=rf"^{name} must be "):
            make((bad, bad) if name == "milestones" else bad)


def _plain(value):
    return tuple(map(int, value)) if isinstance(value, tuple) else value.item()


@pytest.mark.parametrize("schedule", EVERY_SCHEDULE, ids=repr)
def test_a_numpy_step_gives_the_same_factor(schedule):
    assert schedule(np.int64(7)) == schedule(7)
    assert schedule(np.uint8(0)) == schedule(0)
