"""The argument rules of course_lib._args, once, for every module that uses them."""

import math
from fractions import Fraction

import numpy as np
import pytest

from course_lib._args import (
    check_bool,
    check_callable,
    check_choice,
    check_int,
    check_int_sequence,
    check_real,
    check_real_sequence,
    require,
)

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), np.uint8(3)])
def test_int_accepts_any_integral_and_returns_a_plain_int(value):
    result = check_int("n", value, low=1)
    assert result == 3 and type(result) is int


@pytest.mark.parametrize(
    "value", [True, False, np.bool_(True), 3.0, np.float64(3), "3", None, [3]]
)
def test_int_refuses_bools_floats_and_strings(value):
    with pytest.raises(ValueError, match=r"^n must be an integer, got "):
        check_int("n", value)


@pytest.mark.parametrize(
    ("bounds", "bad", "accepted"),
    [
        (dict(low=1), 0, "a positive integer"),
        (dict(low=0), -1, "a non-negative integer"),
        (dict(low=2), 1, "an integer >= 2"),
        (dict(high=4), 5, "an integer <= 4"),
        (dict(low=1, high=4), 5, "an integer in [1, 4]"),
        (dict(low=1, high=4), 0, "an integer in [1, 4]"),
    ],
)
def test_int_bounds_are_closed_and_named_in_the_message(bounds, bad, accepted):
    for edge in bounds.values():  # the bounds themselves pass
        assert check_int("n", edge, **bounds) == edge
    with pytest.raises(ValueError) as info:
        check_int("n", bad, **bounds)
    assert str(info.value) == f"n must be {accepted}, got {bad!r}"


@pytest.mark.parametrize(
    "value", [0.5, 1, np.float32(0.5), np.float64(0.5), np.int64(1), Fraction(1, 2)]
)
def test_real_accepts_any_real_and_returns_a_plain_float(value):
    result = check_real("lr", value, "[0, inf)")
    assert result == float(value) and type(result) is float


@pytest.mark.parametrize(
    "value", [True, False, np.bool_(True), "0.1", None, [0.1], 1j, 10**400]
)
def test_real_refuses_bools_strings_and_non_reals(value):
    with pytest.raises(ValueError, match=r"^lr must be a real number >= 0, got "):
        check_real("lr", value, "[0, inf)")


@pytest.mark.parametrize("value", [NAN, INF, -INF, np.float32("nan"), np.inf])
def test_real_refuses_nan_and_infinity_by_default(value):
    with pytest.raises(ValueError, match=r"^x must be a finite real number, got "):
        check_real("x", value)


def test_infinity_passes_only_where_the_interval_closes_on_it():
    assert check_real("timeout", INF, "(0, inf]") == INF
    assert check_real("x", -INF, "[-inf, 0]") == -INF
    with pytest.raises(ValueError, match=r"^timeout must be a real number > 0"):
        check_real("timeout", INF, "(0, inf)")
    with pytest.raises(ValueError, match=r"> 0 \(or inf\), got nan$"):
        check_real("timeout", NAN, "(0, inf]")  # NaN never passes


@pytest.mark.parametrize(
    ("interval", "inside", "outside", "accepted"),
    [
        ("[0, 1)", [0, 0.5, 0.999], [-0.1, 1, 1.5], "a real number in [0, 1)"),
        ("(0, 1]", [1e-9, 1], [0, 1.01], "a real number in (0, 1]"),
        ("[0, 1]", [0, 1], [-1e-9, 1 + 1e-9], "a real number in [0, 1]"),
        ("(0, 1)", [0.5], [0, 1], "a real number in (0, 1)"),
        ("[0, inf)", [0, 1e300], [-1e-300], "a real number >= 0"),
        ("(0, inf)", [1e-300], [0, -1], "a real number > 0"),
        ("[1, inf)", [1, 25.0], [0.999], "a real number >= 1"),
        ("(-inf, 1]", [1, -1e300], [1.5], "a real number <= 1"),
        ("(-inf, 1)", [0.999], [1], "a real number < 1"),
        ("(-inf, inf)", [-1e300, 0, 1e300], [NAN], "a finite real number"),
    ],
)
def test_real_intervals_open_and_closed(interval, inside, outside, accepted):
    for value in inside:
        assert check_real("beta", value, interval) == value
    for value in outside:
        with pytest.raises(ValueError) as info:
            check_real("beta", value, interval)
        assert str(info.value) == f"beta must be {accepted}, got {value!r}"


def test_bool_accepts_true_false_and_numpy_bools():
    assert check_bool("shuffle", True) is True
    assert check_bool("shuffle", False) is False
    assert check_bool("shuffle", np.bool_(True)) is True  # a plain bool back
    assert check_bool("shuffle", np.array([1, 2]).any()) is True


@pytest.mark.parametrize("value", [0, 1, np.int64(1), 1.0, "no", "True", None, []])
def test_bool_coerces_nothing(value):
    with pytest.raises(ValueError) as info:
        check_bool("shuffle", value)
    assert str(info.value) == f"shuffle must be True or False, got {value!r}"


def test_choice_names_the_accepted_strings():
    assert check_choice("mode", "fan_in", ("fan_in", "fan_out")) == "fan_in"
    assert check_choice("mode", "fan_out", ["fan_in", "fan_out"]) == "fan_out"
    for bad in ("fan", "FAN_IN", 0, None, ["fan_in"], np.array(["fan_in"])):
        with pytest.raises(ValueError) as info:
            check_choice("mode", bad, ("fan_in", "fan_out"))
        assert str(info.value) == (
            f"mode must be one of ('fan_in', 'fan_out'), got {bad!r}"
        )


def test_callable_and_classes():
    assert check_callable("fn", len) is len
    assert check_callable("fn", int) is int  # a class is callable
    with pytest.raises(ValueError, match=r"^fn must be a callable, got 3$"):
        check_callable("fn", 3)
    with pytest.raises(ValueError, match=r"^schedule must be a step function, got"):
        check_callable("schedule", int, "a step function", allow_class=False)


def test_int_sequence():
    assert check_int_sequence("hidden", [100, np.int64(50)], low=1) == (100, 50)
    assert check_int_sequence("hidden", (), low=1) == ()
    assert check_int_sequence("hidden", range(1, 3), low=1) == (1, 2)
    for bad in ([100, 0], [100, True], [2.0], "12", 12, None, {1, 2}):
        with pytest.raises(ValueError) as info:
            check_int_sequence("hidden", bad, low=1)
        assert str(info.value) == (
            f"hidden must be a sequence of positive integers, got {bad!r}"
        )
    with pytest.raises(ValueError, match=r"^m must be a non-empty sequence of"):
        check_int_sequence("m", [], low=1, nonempty=True)


def test_real_sequence_and_pairs():
    betas = check_real_sequence("betas", [0.9, np.float32(0.5)], "[0, 1)", length=2)
    assert betas == (0.9, 0.5) and all(type(b) is float for b in betas)
    for bad in ((0.9, 1.0), (0.9,), (0.9, 0.99, 0.999), (0.9, NAN), (True, 0.9),
                "ab", 0.9, None):  # fmt: skip
        with pytest.raises(ValueError) as info:
            check_real_sequence("betas", bad, "[0, 1)", length=2)
        assert str(info.value) == (
            f"betas must be a pair of real numbers in [0, 1), got {bad!r}"
        )
    assert check_real_sequence("xs", [1, -2.5]) == (1.0, -2.5)
    with pytest.raises(ValueError, match=r"^xs must be a sequence of finite real"):
        check_real_sequence("xs", [1, INF])


def test_require_is_the_one_message_form():
    require(True, "k", "anything", 0)
    with pytest.raises(ValueError) as info:
        require(False, "nesterov", "False unless momentum > 0", True)
    assert str(info.value) == "nesterov must be False unless momentum > 0, got True"
