"""Learning-rate schedules from a `TrainConfig`: constant, cosine decay or step decay, with linear warm-up.

Every schedule is a function of the optimizer's step (`optimizer.iterations`, restored on resume, so a resumed
run continues its schedule). The decay part is always evaluated at the absolute step, and warm-up multiplies
it by `min(1, (step + 1) / warmup_steps)`: the first update already has a small non-zero rate, the rate
reaches the decay curve at step `warmup_steps - 1`, and the decay boundaries stay where the config puts them
(in epochs) whatever the warm-up. All schedules are registered Keras objects that round-trip through
`get_config` / `keras.optimizers.schedules.serialize`, so a saved optimizer (in a `.keras` checkpoint)
reloads with its schedule.

Example, `lr = 0.1`, 100 steps, `warmup_steps = 10`, cosine:
    step 0: 0.1 * cos_decay(0) * 1/10 = 0.01;  step 9: 0.1 * 0.5 * (1 + cos(pi * 9 / 100));  step 100: 0.
"""

from __future__ import annotations

import keras
from keras import ops

from tfvision.config import TrainConfig


@keras.saving.register_keras_serializable(package="tfvision")
class Constant(keras.optimizers.schedules.LearningRateSchedule):
    """The same rate at every step.

    Args:
        learning_rate: float, the rate.
    """

    def __init__(self, learning_rate: float):
        self.learning_rate = float(learning_rate)

    def __call__(self, step):
        return ops.convert_to_tensor(self.learning_rate, "float32")

    def get_config(self):
        return {"learning_rate": self.learning_rate}


@keras.saving.register_keras_serializable(package="tfvision")
class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """`learning_rate * decay_rate ** k`, where k counts the boundaries at or before the step.

    Args:
        learning_rate: float, the rate before the first boundary.
        boundaries: increasing ints, optimizer steps at which the rate is multiplied by `decay_rate` (the
            step equal to a boundary already has the lower rate).
        decay_rate: float, the factor applied at each boundary (e.g. 0.1).
    """

    def __init__(self, learning_rate: float, boundaries, decay_rate: float = 0.1):
        boundaries = [int(b) for b in boundaries]
        if any(b1 >= b2 for b1, b2 in zip(boundaries, boundaries[1:])):
            raise ValueError(f"StepDecay boundaries must increase strictly, got {boundaries}.")
        self.learning_rate = float(learning_rate)
        self.boundaries = boundaries
        self.decay_rate = float(decay_rate)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        passed = ops.zeros((), "float32")
        for boundary in self.boundaries:
            passed = passed + ops.cast(step >= boundary, "float32")
        return self.learning_rate * ops.power(ops.convert_to_tensor(self.decay_rate, "float32"), passed)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "boundaries": list(self.boundaries), "decay_rate": self.decay_rate}


@keras.saving.register_keras_serializable(package="tfvision")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule(step) * min(1, (step + 1) / warmup_steps)`: a linear ramp into another schedule.

    Args:
        schedule: the `LearningRateSchedule` to warm up into (evaluated at the absolute step).
        warmup_steps: int >= 1, steps over which the factor ramps from 1 / warmup_steps to 1.
    """

    def __init__(self, schedule, warmup_steps: int):
        if int(warmup_steps) < 1:
            raise ValueError(f"LinearWarmup needs warmup_steps >= 1, got {warmup_steps}.")
        if isinstance(schedule, dict):
            schedule = keras.optimizers.schedules.deserialize(schedule)
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        factor = ops.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
        return ops.cast(self.schedule(step), "float32") * factor

    def get_config(self):
        return {
            "schedule": keras.optimizers.schedules.serialize(self.schedule),
            "warmup_steps": self.warmup_steps,
        }


def build_schedule(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """The schedule that `config.schedule` names, for a run of `config.epochs` epochs.

    Args:
        config: the `train` section: `learning_rate`, `schedule` (`constant` | `cosine` | `step`),
            `warmup_steps`, `epochs`, and for `step` the `decay_epochs` / `decay_rate`.
        steps_per_epoch: optimizer steps in one epoch (cosine decays to 0 over epochs * steps_per_epoch;
            step boundaries are decay_epochs * steps_per_epoch).

    Returns:
        A registered `LearningRateSchedule`.

    Raises:
        ValueError: a non-positive steps_per_epoch, or `step` without valid `train.decay_epochs`.
    """
    if int(steps_per_epoch) < 1:
        raise ValueError(f"build_schedule: steps_per_epoch must be >= 1, got {steps_per_epoch}.")
    total_steps = max(1, config.epochs * int(steps_per_epoch))
    if config.schedule == "constant":
        schedule = Constant(config.learning_rate)
    elif config.schedule == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=total_steps)
    elif config.schedule == "step":
        epochs = list(config.decay_epochs)
        if not epochs or any(not 0 < e < config.epochs for e in epochs) or epochs != sorted(set(epochs)):
            raise ValueError(
                f"train.schedule is 'step' but train.decay_epochs is {epochs}; give the increasing epochs "
                f"after which the rate is multiplied by train.decay_rate, each in 1..{config.epochs - 1} "
                "(e.g. decay_epochs: [6, 9] for 10 epochs)."
            )
        schedule = StepDecay(config.learning_rate, [e * int(steps_per_epoch) for e in epochs], config.decay_rate)
    else:
        raise ValueError(f"unknown train.schedule {config.schedule!r}; choose constant, cosine or step.")
    if config.warmup_steps > 0:
        schedule = LinearWarmup(schedule, config.warmup_steps)
    return schedule
