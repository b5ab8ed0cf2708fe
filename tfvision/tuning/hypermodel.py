"""A Keras Tuner hypermodel made from an experiment config: its `search.space` keys are the hyperparameters.

`build(hp)` samples every `search.space` key into a copy of the config (the base config is never changed),
builds that config's model with `tfvision.models.build_model` and compiles it as `tfvision train` does (the
Trainer's `build_optimizer`, the task's loss and metrics); `fit(hp, model)` trains it on the task's
`datasets(config)`. So a trial is exactly a `tfvision train` run of its sampled config, except that it is
scored after every epoch (Keras Tuner follows the objective per epoch) and writes no checkpoints of its own
(the tuner keeps each trial's best epoch).

Example:
    hypermodel = ExperimentHyperModel(load_config("configs/shapes/unet.yaml"))
    hp = keras_tuner.HyperParameters()
    hp.Fixed("model.unet.base_filters", 8)
    model = hypermodel.build(hp)          # other space keys take their first value / minimum
"""

from __future__ import annotations

import copy

import keras
import keras_tuner
import tensorflow as tf

from tfvision.config import ExperimentConfig, SearchParamConfig, from_dict, to_dict


class ExperimentHyperModel(keras_tuner.HyperModel):
    """The model of an experiment config, with its `search.space` keys as tunable hyperparameters.

    Args:
        config: `ExperimentConfig` with a non-empty `search.space`; copied, never changed.

    Raises:
        ValueError: `search.space` is empty, or the model family has no tuning support (see `task_parts`).
    """

    def __init__(self, config: ExperimentConfig):
        if not config.search.space:
            raise ValueError(
                f"experiment '{config.name}' has no search.space, so there is nothing to tune; add a section like\n"
                "search:\n  objective: val_mean_iou\n  space:\n"
                "    train.learning_rate: {type: float, min: 1.0e-4, max: 1.0e-2, sampling: log}"
            )
        super().__init__(name=config.name, tunable=True)
        self.config = copy.deepcopy(config)
        task_parts(self.config)  # fail now for a family that cannot be tuned, not in the first trial

    # -- hyperparameters ------------------------------------------------------------------------------------

    def sample(self, hp: keras_tuner.HyperParameters) -> dict:
        """Registers every space key in `hp` (if it is not there yet) and returns `{key: value}`."""
        return {key: _declare(hp, key, param) for key, param in self.config.search.space.items()}

    def sample_config(self, hp: keras_tuner.HyperParameters) -> ExperimentConfig:
        """A new config: the base config with `hp`'s values at the space keys and no `search` section.

        The values pass the schema's checks again, so a sampled value of the wrong type is an error.
        """
        data = to_dict(self.config)
        data.pop("search")
        for key, value in self.sample(hp).items():
            node = data
            *sections, name = key.split(".")
            for section in sections:
                node = node[section]
            node[name] = value
        return from_dict(ExperimentConfig, data, where=f"experiment '{self.config.name}' (sampled for a trial)")

    # -- keras_tuner.HyperModel -----------------------------------------------------------------------------

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        """The compiled model of the sampled config (call under the strategy's scope; the tuner does)."""
        from tfvision.models import build_model
        from tfvision.training.trainer import _policy_name, build_optimizer

        config = self.sample_config(hp)
        # As the Trainer: every trial starts from the same seed and precision policy, so trials differ only
        # by their sampled values.
        keras.utils.set_random_seed(config.train.seed)
        strategy = tf.distribute.get_strategy()  # the tuner's, inside its scope
        keras.mixed_precision.set_global_policy(_policy_name(config.train.mixed_precision, strategy))
        model = build_model(config)
        loss, metrics = task_parts(config)
        model.compile(
            optimizer=build_optimizer(config.train, self._schedule_steps(config)),
            loss=loss,
            metrics=metrics,
            jit_compile=config.train.jit_compile,
        )
        return model

    def fit(self, hp, model, *args, epochs=None, initial_epoch=0, callbacks=(), verbose="auto", **kwargs):
        """Trains `model` on the sampled config's data for `train.epochs` epochs, scoring after each one.

        Args:
            hp: the trial's `keras_tuner.HyperParameters`.
            model: the model `build(hp)` returned.
            epochs, initial_epoch: set by Hyperband; default `train.epochs` and 0.
            callbacks: the tuner's callbacks (they report each epoch's logs to it).
            verbose: Keras verbosity.

        Returns:
            The `keras.callbacks.History`.
        """
        if args or kwargs:
            raise TypeError(
                "ExperimentHyperModel.fit takes its data and settings from the config; pass only epochs, "
                f"initial_epoch, callbacks and verbose to tuner.search (got {len(args)} positional arguments "
                f"and {sorted(kwargs)})."
            )
        from tfvision.training.trainer import ema_callbacks, epochs_of_steps

        config = self.sample_config(hp)
        train_ds, val_ds = self.datasets(config)
        steps = config.train.steps_per_epoch or None
        return model.fit(
            epochs_of_steps(train_ds, steps),
            validation_data=val_ds,
            epochs=epochs or config.train.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            callbacks=ema_callbacks(config.train) + list(callbacks),  # the tuner scores the averaged weights
            shuffle=False,  # datasets come shuffled (or not) from the input pipeline
            verbose=verbose,
        )

    # -- data -----------------------------------------------------------------------------------------------

    @staticmethod
    def datasets(config: ExperimentConfig):
        """The task's `(train_ds, val_ds)` for `config`, as `tfvision train` makes them.

        Made anew for every trial: a shared dataset would go on to its next shuffle order, so trials would
        see the examples in different orders and differ by more than their sampled values.
        """
        from tfvision.tasks import task_for

        train_ds, val_ds, _ = task_for(config).datasets(config)
        return train_ds, val_ds

    def metric_names(self) -> list[str]:
        """Names that `fit` logs, any of which `search.objective` may name: `loss`, metrics, `val_...`."""
        _, metrics = task_parts(self.config)
        names = ["loss"] + [m.name for m in metrics]
        return names + [f"val_{name}" for name in names]

    def _schedule_steps(self, config) -> int:
        """Steps per epoch for the learning-rate schedule (as the Trainer counts them)."""
        train = config.train
        if train.steps_per_epoch > 0 or train.schedule == "constant":
            return max(1, train.steps_per_epoch)
        count = int(self.datasets(config)[0].cardinality())
        if count > 0:
            return count
        raise ValueError(
            f"train.schedule '{train.schedule}' needs the number of steps per epoch, but train.steps_per_epoch is "
            "0 and the training dataset's length is unknown; set train.steps_per_epoch."
        )


def task_parts(config: ExperimentConfig):
    """The loss and a fresh list of metrics that `tfvision train` uses for `config`'s model family.

    Raises:
        ValueError: the model family has no tuning support yet.
    """
    from tfvision.tasks import segmentation, task_for

    if task_for(config) is segmentation:
        from tfvision.evaluation.segmentation import MeanIoU
        from tfvision.losses.segmentation import build_segmentation_loss

        loss = config.train.loss
        return build_segmentation_loss(loss), [MeanIoU(config.model.num_classes + 1, ignore_label=loss.ignore_label)]
    raise ValueError(f"model.name '{config.model.name}': tfvision tune supports segmentation models so far.")


def _declare(hp: keras_tuner.HyperParameters, key: str, param: SearchParamConfig):
    """Registers (or reads) the hyperparameter `key` with the range `param` describes; returns its value."""
    sampling = param.sampling or "linear"
    if param.type == "float":
        return hp.Float(key, param.min, param.max, step=param.step, sampling=sampling)
    if param.type == "int":
        return hp.Int(key, int(param.min), int(param.max), step=None if param.step is None else int(param.step),
                      sampling=sampling)
    if param.type == "choice":
        return hp.Choice(key, list(param.values))
    if param.type == "boolean":
        return hp.Boolean(key)
    raise ValueError(f"search.space['{key}']: unknown type {param.type!r}.")  # the config check prevents this
