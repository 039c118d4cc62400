import math

import matplotlib.pyplot as plt
import numpy as np
import pytest

from course_lib.plots import plot_history, plot_schedules, plot_step_loss
from course_lib.schedules import Cosine, StepDecay
from course_lib.train import History


def history(step_loss, epochs=3):
    h = History(steps_per_epoch=len(step_loss) // epochs, step_loss=list(step_loss))
    h.train_loss, h.val_loss = [2.0, 1.5, 1.2][:epochs], [2.1, 1.7, 1.6][:epochs]
    h.train_acc, h.val_acc = [0.3, 0.5, 0.6][:epochs], [0.3, 0.45, 0.5][:epochs]
    return h


def test_plot_history_draws_train_and_val():
    ax = plot_history(history(np.linspace(2, 1, 30)), "acc")
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["train", "val"]
    assert list(lines[1].get_ydata()) == [0.3, 0.45, 0.5]
    assert list(lines[0].get_xdata()) == [1, 2, 3]
    plt.close("all")
    with pytest.raises(ValueError, match="metric"):
        plot_history(history([1.0] * 30), "accuracy")


def test_plot_step_loss_smooths_and_stops_at_the_first_nan():
    diverged = history([2.0, 3.0, 50.0, math.inf, math.nan, math.nan], epochs=3)
    fig, ax = plt.subplots()
    plot_step_loss(
        {"a": history(np.linspace(2, 1, 30)), "b": diverged}, ax=ax, smooth=5, log=True
    )
    raw_a, smooth_a, raw_b, _ = ax.get_lines()
    assert len(raw_b.get_ydata()) == 3  # the finite prefix only
    assert smooth_a.get_ydata()[-1] == pytest.approx(np.mean(raw_a.get_ydata()[-5:]))
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    plt.close(fig)


def test_plot_schedules_scales_by_base_lr():
    ax = plot_schedules({"cos": Cosine(10), "step": StepDecay(4, 0.5)}, 10, base_lr=0.2)
    cos, step = (line.get_ydata() for line in ax.get_lines())
    assert cos[0] == pytest.approx(0.2) and cos[-1] == pytest.approx(
        0.2 * Cosine(10)(9)
    )
    assert list(step) == pytest.approx([0.2] * 4 + [0.1] * 4 + [0.05] * 2)
    plt.close("all")


NUMPY_ARGUMENTS = [
    ("smooth", lambda v: plot_step_loss({"a": history(np.linspace(2, 1, 30))},
                                        smooth=v), np.int64(5)),
    ("num_steps", lambda v: plot_schedules({"c": Cosine(10)}, v), np.int64(12)),
    ("base_lr", lambda v: plot_schedules({"c": Cosine(10)}, 12, base_lr=v),
     np.float32(0.5)),
    ("log", lambda v: plot_history(history(np.linspace(2, 1, 30)), log=v),
     np.bool_(True)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "call", "value"), NUMPY_ARGUMENTS)
def test_numpy_scalars_pass_bools_and_strings_do_not(name, call, value):
    try:
        call(value)
        for bad in (1, "yes") if isinstance(value, np.bool_) else (True, "3"):
            with pytest.raises(ValueError, match=rf"^{name} must be "):
                call(bad)
    finally:
        plt.close("all")
