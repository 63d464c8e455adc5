"""The per-stage LR multiplier: warm-up, then constant / step / cosine."""
import math

import pytest

from recondec.config import LRSchedule, ScheduleConf
from recondec.training.schedule import lr_factor


def factors(schedule, steps_per_epoch, epochs):
    return [lr_factor(i, steps_per_epoch, epochs, schedule) for i in range(steps_per_epoch * epochs + 1)]


@pytest.mark.parametrize("warmup", [1, 0.5, 0.3])
def test_warm_up_rises_to_the_base_lr_and_never_above_it(warmup):
    f = factors(ScheduleConf(lr_schedule=LRSchedule.constant, warmup_epochs=warmup), 5, 3)
    ramp = math.ceil(warmup * 5)
    assert all(a < b for a, b in zip(f[:ramp], f[1:ramp]))  # strictly rising during the warm-up
    assert max(f) == 1.0 and f[ramp:] == [1.0] * len(f[ramp:])


def test_cosine_decays_from_the_base_lr_to_zero_at_the_stages_end():
    f = factors(ScheduleConf(lr_schedule=LRSchedule.cosine, warmup_epochs=0.5), 8, 4)  # 32 steps, 4 of warm-up
    assert f[3] == f[4] == 1.0 and all(a > b for a, b in zip(f[4:32], f[5:32]))
    assert 0 < f[31] < 0.01 and f[32] == 0.0  # the last step's LR is the last above 0


def test_step_schedule_multiplies_by_gamma_at_each_milestone():
    f = factors(ScheduleConf(lr_schedule=LRSchedule.step, step_epochs=[1, 2], step_gamma=0.1), 2, 3)
    assert f[:6] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
