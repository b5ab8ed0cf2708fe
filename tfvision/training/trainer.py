"""The Trainer: builds any model under the configured `tf.distribute` strategy and runs `model.fit` with the
callbacks every run wants (checkpoints, resume, TensorBoard, NaN guard, periodic evaluation, backbone freezing).

It knows nothing of any one model: it receives a zero-argument function that builds a `keras.Model`, a loss
(or None when the model computes its own in `compute_loss`) and a function making the metrics, and datasets
of `(inputs, targets)` pairs.

What lands in `config.train.model_dir`:
    config.yaml                 the experiment config, as trained
    checkpoints/last.keras      the model after the latest epoch (skipped when the epoch's loss is not finite)
    checkpoints/best.keras      the model with the best val_loss so far (or loss, without validation data);
    checkpoints/best.json       ... and that value, so a resumed run only replaces it with a better one
    backup/                     `BackupAndRestore` state: a killed run started again resumes at the epoch
                                after the last completed one (an interrupted epoch replays from its first
                                batch); removed when training completes
    logs/                       TensorBoard
Under `multi_worker`, the chief writes there and every other worker into `model_dir/workers/<task>/`, so no
two processes write one file.

Freezing (`model.backbone.freeze_epochs` > 0) sets the layer named "backbone" `trainable=False` for the first
epochs. Keras' TensorFlow trainer reads `model.trainable_weights` when it traces the train step, and keeps
that trace until `compile()` or `make_train_function(force=True)`: a `trainable` change is *not* picked up
by itself (weights set untrainable after the first step keep being updated). Recompiling in the middle of
`fit` would drop the compiled metrics and the train function that `fit` is about to call, so the callback
retraces with `make_train_function(force=True)` instead, having built the optimizer for every weight when
training began (Keras builds it lazily from the weights trainable at the first step, and then refuses the
backbone's weights when they are unfrozen).

Weight averaging (`train.ema_momentum` > 0): the optimizer keeps the weights' moving average (Keras'
`use_ema`), and `SwapEMAWeights` puts it into the model for validation and at each epoch's end, after the
backup is written: checkpoints, periodic AP and the final model get the averaged weights, while a resumed run
continues from the raw ones.

Multi-worker: Keras 3.15's `fit` fails under `MultiWorkerMirroredStrategy` in two places (its first-batch
build and its averaging of scalar step outputs, keras-team/keras#20585); the Trainer works around both, see
`Trainer._build_for_multi_worker`.

Mixed precision: Keras 3 needs only the global policy before the model is built (`mixed_float16` on GPUs,
`mixed_bfloat16` on TPUs and on CPUs with bfloat16 instructions, float32 on other CPUs, see `_policy_name`);
under float16 `compile` wraps the optimizer in a `LossScaleOptimizer` itself (`auto_scale_loss=True`), and
losses are computed in float32 (`SegmentationLoss` casts its inputs).

Example:
    trainer = Trainer(config, lambda: build_model(config), loss=build_segmentation_loss(config.train.loss),
                      metrics_fn=lambda: [MeanIoU(config.model.num_classes + 1)])
    history = trainer.fit(segmentation_pairs(train_ds), segmentation_pairs(val_ds))
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping

import keras
import tensorflow as tf

from tfvision.config import ExperimentConfig, TrainConfig, save_config
from tfvision.cpu_features import CPUINFO, has_bfloat16
from tfvision.training.schedules import build_schedule
from tfvision.training.strategy import create_strategy, is_chief, task_name

BACKBONE_LAYER = "backbone"


class Trainer:
    """Compiles a model under a `tf.distribute` strategy and fits it with checkpoints and resume.

    Args:
        config: the experiment; `config.train` sets strategy, optimizer, schedule, precision, epochs,
            model_dir, and `config.model.backbone.freeze_epochs` the freezing.
        build_model: zero-argument function returning a `keras.Model` (called inside `strategy.scope()`).
        loss: a Keras loss (e.g. `SegmentationLoss`), or None when the model computes its own loss.
        metrics_fn: zero-argument function returning a list of metrics (called inside `strategy.scope()`,
            where metric variables must be made), or None.
        strategy: a strategy to use instead of creating `config.train.strategy` (tests, notebooks).

    Attributes:
        model: the built (and, after `fit` / `evaluate`, compiled) model.
        strategy: the `tf.distribute.Strategy`.
        model_dir: where this process writes (see the module docstring).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        build_model: Callable[[], keras.Model],
        loss=None,
        metrics_fn: Callable[[], list] | None = None,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self.config = config
        train = config.train
        if train.epochs < 1:
            raise ValueError(f"train.epochs must be >= 1, got {train.epochs}.")
        if train.eval_every_epochs < 1:
            raise ValueError(f"train.eval_every_epochs must be >= 1, got {train.eval_every_epochs}.")
        if train.steps_per_epoch < 0:
            raise ValueError(f"train.steps_per_epoch must be >= 0 (0 = a full pass), got {train.steps_per_epoch}.")
        if importlib.util.find_spec("tensorboard") is None:
            # TensorFlow 2.21 no longer installs it, and Keras' TensorBoard callback fails without it mid-epoch.
            raise ImportError(
                "the Trainer logs to TensorBoard, which needs the 'tensorboard' package; install tfvision's "
                "dependencies (pip install -e .) or pip install 'tensorboard~=2.21.0'."
            )
        # The strategy first: multi-worker and TPU strategies must exist before any other TensorFlow work.
        self.strategy = strategy if strategy is not None else create_strategy(train.strategy)
        keras.utils.set_random_seed(train.seed)
        # Process-wide, as Keras intends: layers a model creates lazily (in build) must see the same policy.
        keras.mixed_precision.set_global_policy(_policy_name(train.mixed_precision, self.strategy))
        self.model_dir = (
            train.model_dir
            if is_chief(self.strategy)
            else os.path.join(train.model_dir, "workers", task_name(self.strategy))
        )
        with self.strategy.scope():
            self.model = build_model()
            if not isinstance(self.model, keras.Model):
                raise TypeError(f"build_model must return a keras.Model, got {type(self.model).__name__}.")
            self.metrics = list(metrics_fn()) if metrics_fn is not None else []
        self.loss = loss
        self.freeze_epochs = config.model.backbone.freeze_epochs
        if self.freeze_epochs > 0:
            _backbone_layer(self.model)  # fail now, not after the first epoch
        self._schedule_steps = None

    def fit(self, train_ds, val_ds=None, callbacks=(), verbose="auto") -> keras.callbacks.History:
        """Trains for `config.train.epochs` epochs (resuming from `model_dir/backup/` if a run was cut short).

        Args:
            train_ds: `tf.data.Dataset` of batched `(inputs, targets)` pairs (see `segmentation_pairs`).
            val_ds: optional dataset of the same structure, evaluated every `train.eval_every_epochs` epochs
                and after the last epoch.
            callbacks: extra Keras callbacks, run after the built-in ones.
            verbose: Keras verbosity (`"auto"`, 0, 1, 2).

        Returns:
            The `keras.callbacks.History`; a resumed run's history holds only the epochs it ran
            (`history.epoch` continues the count). Training stops early, keeping the backup of the last
            finite epoch, when the loss becomes NaN or infinite.
        """
        train = self.config.train
        steps = train.steps_per_epoch or None
        if steps is None and int(train_ds.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
            raise ValueError(
                "train.steps_per_epoch is 0 (one full pass per epoch) but the training dataset repeats forever; "
                "set train.steps_per_epoch, or do not repeat the dataset."
            )
        self._compile(self.steps_for_schedule(train_ds))
        train_ds = epochs_of_steps(train_ds, steps)
        self._build_for_multi_worker(train_ds)
        if is_chief(self.strategy):
            os.makedirs(self.model_dir, exist_ok=True)
            save_config(self.config, os.path.join(self.model_dir, "config.yaml"))
        with self.strategy.scope():
            return self.model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=train.epochs,
                steps_per_epoch=steps,
                validation_freq=_eval_epochs(train.epochs, train.eval_every_epochs),
                callbacks=self._callbacks(val_ds is not None) + list(callbacks),
                shuffle=False,  # datasets come shuffled (or not) from the input pipeline
                verbose=verbose,
            )

    def evaluate(self, val_ds, verbose="auto") -> dict:
        """Loss and metrics of the current model on `val_ds` (batched `(inputs, targets)` pairs), by name."""
        if not self.model.compiled:
            self._compile(max(1, self.config.train.steps_per_epoch))
        self._build_for_multi_worker(val_ds)
        with self.strategy.scope():
            return self.model.evaluate(val_ds, return_dict=True, verbose=verbose)

    # -- compile ------------------------------------------------------------------------------------------

    def _compile(self, steps_per_epoch):
        """Compiles with a fresh optimizer unless one has already taken steps (fit again = continue)."""
        optimizer = getattr(self.model, "optimizer", None)
        if self.model.compiled and optimizer is not None and int(optimizer.iterations.numpy()) > 0:
            return
        if self.model.compiled and self._schedule_steps == steps_per_epoch:
            return
        with self.strategy.scope():
            optimizer = build_optimizer(self.config.train, steps_per_epoch)
            self.model.compile(
                optimizer=optimizer,
                loss=self.loss,
                metrics=self.metrics or None,
                jit_compile=self.config.train.jit_compile,
            )
        self._schedule_steps = steps_per_epoch

    def _build_for_multi_worker(self, dataset):
        """Builds model, loss, metrics and optimizer from one local batch, and makes Keras skip its own build.

        Keras 3.15 builds them at the start of `fit` / `evaluate` from a first batch that it reduces across
        replicas with `strategy.reduce`, which fails in eager mode when the replicas span several workers
        ("Attempt to convert a value (PerReplica ...)", keras-team/keras#20585). The build needs only shapes,
        which this worker's own (undistributed) batch has. With the model's recorded strategy cleared, Keras
        skips that step and takes the strategy from the enclosing `strategy.scope()` instead.
        """
        if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return
        _patch_multi_worker_scalar_reduce()
        batch = next(iter(dataset))  # builds only what is not built yet (e.g. a new optimizer), so every time
        with self.strategy.scope():
            self.model._symbolic_build(data_batch=batch)
        self.model._distribute_strategy = None

    def steps_for_schedule(self, train_ds) -> int:
        """Steps per epoch the learning-rate schedule counts with: `train.steps_per_epoch`, else the data's length."""
        train = self.config.train
        if train.steps_per_epoch > 0:
            return train.steps_per_epoch
        count = int(train_ds.cardinality())
        if count > 0:
            return count
        if train.schedule == "constant":
            return 1  # the constant rate does not depend on the length of training
        raise ValueError(
            f"train.schedule '{train.schedule}' needs the number of steps per epoch, but train.steps_per_epoch "
            "is 0 and the training dataset's length is unknown (e.g. after filter()); set "
            "train.steps_per_epoch, or use dataset.apply(tf.data.experimental.assert_cardinality(n))."
        )

    # -- callbacks ----------------------------------------------------------------------------------------

    def _callbacks(self, has_validation) -> list:
        checkpoints = os.path.join(self.model_dir, "checkpoints")
        backup = os.path.join(self.model_dir, "backup")
        os.makedirs(checkpoints, exist_ok=True)
        monitor = "val_loss" if has_validation else "loss"
        resuming = os.path.isdir(backup) and bool(os.listdir(backup))
        callbacks = [
            keras.callbacks.TerminateOnNaN(),
            _BackupAndRestore(backup, double_checkpoint=True),
            # After the backup, which must hold the raw weights to resume from; the callbacks after it see the
            # averaged weights at each epoch's end, and training ends with them.
            *ema_callbacks(self.config.train, swap_on_epoch=True),
            _Checkpoint(os.path.join(checkpoints, "last.keras")),
            _Checkpoint(
                os.path.join(checkpoints, "best.keras"),
                monitor=monitor,
                mode="min",
                save_best_only=True,
                # Only a resumed run continues the previous best; a new run into the same folder starts over.
                initial_value_threshold=_read_best(checkpoints, monitor) if resuming else None,
            ),
            keras.callbacks.TensorBoard(log_dir=os.path.join(self.model_dir, "logs")),
        ]
        if self.freeze_epochs > 0:
            callbacks.append(FreezeBackbone(self.freeze_epochs))
        return callbacks


def epochs_of_steps(train_ds: tf.data.Dataset, steps_per_epoch: int | None) -> tf.data.Dataset:
    """The training data for `model.fit(steps_per_epoch=...)`: repeated when a number of steps is set, so every
    epoch has exactly that many (where a finite dataset runs out, Keras ends the epoch early with a warning, and
    the learning-rate schedule, sized by `train.steps_per_epoch`, never reaches its end); the next epoch goes on
    where the last one stopped, with a new shuffle and new augmentation draws for each pass."""
    if steps_per_epoch and int(train_ds.cardinality()) != int(tf.data.INFINITE_CARDINALITY):
        return train_ds.repeat()
    return train_ds


def build_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The optimizer that `config.optimizer` names, with the learning-rate schedule of `build_schedule`.

    `weight_decay` is Keras' decoupled decay (each step `w -= lr * weight_decay * w`) for all three; `sgd`
    uses `momentum`. With `ema_momentum` > 0 the optimizer also keeps the weights' moving average (pair it
    with `ema_callbacks`). Create it inside `strategy.scope()`.
    """
    schedule = build_schedule(config, steps_per_epoch)
    weight_decay = config.weight_decay or None
    ema = _ema_options(config)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=schedule, weight_decay=weight_decay, **ema)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay, **ema)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(
            learning_rate=schedule, momentum=config.momentum, weight_decay=weight_decay, **ema
        )
    raise ValueError(f"unknown train.optimizer {config.optimizer!r}; choose adam, adamw or sgd.")


def _ema_options(config: TrainConfig) -> dict:
    """The optimizer's weight-averaging arguments for `train.ema_momentum` (none when it is 0)."""
    momentum = config.ema_momentum
    if not 0.0 <= momentum < 1.0:
        raise ValueError(
            f"train.ema_momentum must be in [0, 1) (0 turns weight averaging off; 0.999 is typical), got {momentum}."
        )
    return {"use_ema": True, "ema_momentum": momentum} if momentum else {}


def ema_callbacks(config: TrainConfig, swap_on_epoch: bool = False) -> list:
    """`[SwapEMAWeights]` when `train.ema_momentum` > 0, else `[]`: validation then scores the averaged weights,
    and with `swap_on_epoch` so do the callbacks after it at each epoch's end (checkpoints, periodic AP)."""
    return [keras.callbacks.SwapEMAWeights(swap_on_epoch=swap_on_epoch)] if config.ema_momentum else []


def segmentation_pairs(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Maps batched example dicts to the `(images, segmentation)` pairs that `fit` takes.

    Args:
        dataset: yields dicts with `images` float32 [B, H, W, 3] and `segmentation` int32 [B, H, W].

    Returns:
        A dataset of `(images, segmentation)` tuples.
    """
    spec = dataset.element_spec
    if not isinstance(spec, Mapping) or "images" not in spec or "segmentation" not in spec:
        keys = sorted(spec) if isinstance(spec, Mapping) else spec
        raise ValueError(
            f"segmentation_pairs needs example dicts with 'images' and 'segmentation', got {keys}; load the "
            "data with semantic maps (the loaders' 'segmentation' key) and keep it in the pipeline's keys."
        )
    return dataset.map(lambda ex: (ex["images"], ex["segmentation"]), num_parallel_calls=tf.data.AUTOTUNE)


class FreezeBackbone(keras.callbacks.Callback):
    """Keeps the layer named `layer_name` frozen (`trainable=False`) for the first `epochs` epochs of `fit`.

    A frozen layer's weights get no updates and its BatchNormalization layers run in inference mode. The
    state follows the epoch number, so a resumed run freezes exactly when an uninterrupted one would.

    Args:
        epochs: number of epochs (from epoch 0) to keep the layer frozen.
        layer_name: name of the layer (usually a nested model) to freeze.
    """

    def __init__(self, epochs: int, layer_name: str = BACKBONE_LAYER):
        super().__init__()
        self.epochs = int(epochs)
        self.layer_name = layer_name

    def on_train_begin(self, logs=None):
        # The optimizer must hold slots for the backbone's weights before they are first frozen: Keras builds
        # it lazily, from the weights trainable at the first step, and refuses unknown weights later.
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            with self.model.distribute_strategy.scope():
                optimizer.build(self.model.trainable_variables)

    def on_epoch_begin(self, epoch, logs=None):
        self._set_trainable(epoch >= self.epochs)

    def on_train_end(self, logs=None):
        self._set_trainable(True)  # leave the model as compiled, for later fit / evaluate / save

    def _set_trainable(self, trainable):
        layer = _backbone_layer(self.model, self.layer_name)
        if layer.trainable == trainable:
            return
        layer.trainable = trainable
        # The traced train step holds the old list of trainable weights; trace it again (see module doc).
        self.model.make_train_function(force=True)


class _BackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that does not save an epoch whose loss is not finite, and keeps the backup of the
    last good epoch when training stopped on one (instead of deleting it as after a completed run)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stopped_on_bad_loss = False

    def on_epoch_end(self, epoch, logs=None):
        if _finite_loss(logs):
            super().on_epoch_end(epoch, logs)
        else:
            self._stopped_on_bad_loss = True

    def on_train_end(self, logs=None):
        if not self._stopped_on_bad_loss:
            super().on_train_end(logs)


class _Checkpoint(keras.callbacks.ModelCheckpoint):
    """`ModelCheckpoint` to one file that is written under a temporary name and renamed when complete.

    It skips epochs whose loss is not finite, and with `save_best_only` the epochs that were not evaluated
    (Keras would save those unconditionally); the best value is recorded in `<name>.json` beside the model.
    """

    def __init__(self, filepath, **kwargs):
        folder, name = os.path.split(filepath)
        super().__init__(os.path.join(folder, f".tmp-{os.getpid()}-{name}"), **kwargs)
        self.final_path = filepath

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not _finite_loss(logs) or (self.save_best_only and self.monitor not in logs):
            return
        super().on_epoch_end(epoch, logs)
        if os.path.exists(self.filepath):
            os.replace(self.filepath, self.final_path)
            if self.save_best_only:
                record = {"monitor": self.monitor, "best": float(self.best), "epoch": epoch + 1}
                _write_json(os.path.splitext(self.final_path)[0] + ".json", record)


def _patch_multi_worker_scalar_reduce():
    """Lets Keras 3.15 average scalar step outputs (loss, metric results) across several workers.

    Keras' TensorFlow trainer reduces every step output of a multi-worker run with
    `strategy.reduce("MEAN", value, axis=0)`, which fails for the scalars that `train_step` returns ("Invalid
    reduction dimension 0 for input with 0 dimensions", keras-team/keras#20585). This wraps its
    `reduce_per_replica` so that, in that one case, scalars are averaged with `axis=None`, the reduction
    Keras applies to them on a single machine; every other case goes to the original unchanged.
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as keras_tf_trainer

    original = keras_tf_trainer.reduce_per_replica
    if getattr(original, "tfvision_patched", False):
        return

    def reduce_per_replica(values, strategy, reduction="auto"):
        multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and getattr(
            strategy.extended, "_in_multi_worker_mode", lambda: False
        )()
        if not multi_worker or reduction not in ("auto", "mean"):
            return original(values, strategy, reduction)

        def reduce(value):
            local = strategy.experimental_local_results(value)
            if all(getattr(v, "shape", None) is not None and v.shape.rank == 0 for v in local):
                return strategy.reduce("MEAN", value, axis=None)
            return original(value, strategy, reduction)

        return tree.map_structure(reduce, values)

    reduce_per_replica.tfvision_patched = True
    keras_tf_trainer.reduce_per_replica = reduce_per_replica


def _eval_epochs(epochs, every):
    """1-based epochs to evaluate on: every `every`-th, and always the last."""
    return sorted(set(range(every, epochs + 1, every)) | {epochs})


def _policy_name(mixed_precision, strategy, cpuinfo=CPUINFO):
    """The Keras policy for `train.mixed_precision`: float16 (with a LossScaleOptimizer) where it is fast, on
    GPUs; bfloat16, which needs no loss scaling, on TPUs and on CPUs with bfloat16 instructions; float32, with a
    warning, on other CPUs. CPUs run float16 in slow emulation (a YOLOv1 training step took minutes instead of
    80 ms), and a CPU without bfloat16 instructions emulates bfloat16 too: on an AVX2-only CPU a YOLOv1 step
    took 5 s in bfloat16 against 0.76 s in float32."""
    if not mixed_precision:
        return "float32"
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "mixed_bfloat16"
    if tf.config.list_logical_devices("GPU"):
        return "mixed_float16"
    if has_bfloat16(cpuinfo) is False:
        warnings.warn(
            "train.mixed_precision: this CPU has no bfloat16 instructions (AVX512-BF16, AMX or Arm BF16), so "
            "TensorFlow would emulate bfloat16, several times slower than float32; training in float32. Set "
            "train.mixed_precision to false to silence this.",
            stacklevel=3,
        )
        return "float32"
    return "mixed_bfloat16"


def _backbone_layer(model, name=BACKBONE_LAYER):
    try:
        return model.get_layer(name)
    except ValueError:
        raise ValueError(
            f"model.backbone.freeze_epochs > 0 but the model {model.name!r} has no layer named '{name}'; name the "
            "feature extractor 'backbone' in the model builder, or set model.backbone.freeze_epochs to 0."
        ) from None


def _finite_loss(logs) -> bool:
    loss = (logs or {}).get("loss")
    return loss is None or math.isfinite(float(loss))


def _read_best(folder, monitor):
    path = os.path.join(folder, "best.json")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return float(record["best"]) if record.get("monitor") == monitor and "best" in record else None


def _write_json(path, data):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)
