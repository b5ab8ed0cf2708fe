"""The Trainer (run folder, periodic evaluation, resume, NaN stop, backbone freezing, precision, XLA) and the
learning-rate schedules, on a tiny two-layer segmenter and 16 x 16 random images."""

import glob
import json
import math
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from multiworker_worker import NUM_CLASSES, pattern_arrays, pattern_pairs, tiny_segmenter
from tfvision.config import ExperimentConfig, TrainConfig, load_config
from tfvision.evaluation.segmentation import MeanIoU
from tfvision.losses import SegmentationLoss
from tfvision.training import Trainer, build_schedule, segmentation_pairs
from tfvision.training.schedules import Constant, LinearWarmup, StepDecay
from tfvision.training import trainer as trainer_module
from tfvision.training.trainer import build_optimizer


def make_config(tmp_path, name="run", **train):
    config = ExperimentConfig()
    config.train.model_dir = str(tmp_path / name)
    config.train.schedule = "constant"
    config.train.learning_rate = 0.05
    config.train.epochs = 2
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


def make_trainer(config, build=tiny_segmenter, metrics=False):
    metrics_fn = (lambda: [MeanIoU(NUM_CLASSES)]) if metrics else None
    return Trainer(config, build, loss=SegmentationLoss(), metrics_fn=metrics_fn)


def snapshot(layer):
    return [w.numpy().copy() for w in layer.weights]


def assert_weights_equal(a, b, atol=0.0):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


class Record(keras.callbacks.Callback):
    """Weights and optimizer step at the start of training and at every epoch's begin and end."""

    def __init__(self):
        super().__init__()
        self.begin, self.end, self.steps_at_begin = {}, {}, {}

    def on_train_begin(self, logs=None):
        self.start = snapshot(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self.begin[epoch] = snapshot(self.model)
        self.steps_at_begin[epoch] = int(self.model.optimizer.iterations.numpy())

    def on_epoch_end(self, epoch, logs=None):
        self.end[epoch] = snapshot(self.model)


@pytest.mark.slow
def test_fit_writes_the_run_folder_and_evaluates_periodically(tmp_path):
    config = make_config(tmp_path, epochs=3, eval_every_epochs=2)
    trainer = make_trainer(config, metrics=True)
    val_ds = pattern_pairs(num_images=16, seed=1)
    history = trainer.fit(pattern_pairs(), val_ds, verbose=0)
    model_dir = config.train.model_dir

    assert history.epoch == [0, 1, 2]
    # Evaluated after epoch 2 (every 2nd) and after the last epoch, 3.
    assert len(history.history["val_loss"]) == 2 and len(history.history["val_mean_iou"]) == 2
    assert history.history["loss"][-1] < 0.6 * history.history["loss"][0]
    assert history.history["val_mean_iou"][-1] > 0.6  # chance (random logits) is about 0.2
    # steps_per_epoch 0 = a full pass: 32 images / batch 8 = 4 steps per epoch.
    assert int(trainer.model.optimizer.iterations.numpy()) == 12

    assert load_config(os.path.join(model_dir, "config.yaml")) == config
    last = keras.saving.load_model(os.path.join(model_dir, "checkpoints", "last.keras"))
    images, _ = pattern_arrays(num_images=4, seed=2)
    np.testing.assert_allclose(last.predict(images, verbose=0), trainer.model.predict(images, verbose=0), atol=1e-6)
    assert os.path.isfile(os.path.join(model_dir, "checkpoints", "best.keras"))
    with open(os.path.join(model_dir, "checkpoints", "best.json")) as f:
        best = json.load(f)
    assert best["monitor"] == "val_loss"
    assert best["best"] == pytest.approx(min(history.history["val_loss"]))
    assert glob.glob(os.path.join(model_dir, "logs", "train", "events.out.tfevents.*"))
    assert glob.glob(os.path.join(model_dir, "logs", "validation", "events.out.tfevents.*"))
    assert not os.path.exists(os.path.join(model_dir, "backup"))  # removed once training completed
    assert not glob.glob(os.path.join(model_dir, "**", "*.tmp*"), recursive=True)


@pytest.mark.parametrize("steps", [6, 3])
def test_steps_per_epoch_is_exact_whatever_the_datas_length(tmp_path, steps):
    # 32 images / batch 8 = 4 batches a pass: 6 steps per epoch span passes (Keras alone would end each epoch
    # after 4, with a "ran out of data" warning, under a schedule sized for 6), 3 end mid-pass.
    trainer = make_trainer(make_config(tmp_path, epochs=2, steps_per_epoch=steps, schedule="cosine"))
    recorded = Record()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*ran out of data.*")
        trainer.fit(pattern_pairs(), callbacks=[recorded], verbose=0)
    # Epoch 1 starts after `steps` steps and ends after 2 * `steps`.
    assert recorded.steps_at_begin == {0: 0, 1: steps}
    assert int(trainer.model.optimizer.iterations.numpy()) == 2 * steps
    assert float(trainer.model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-6)  # the cosine's end


def test_evaluate_and_segmentation_pairs(tmp_path):
    images, labels = pattern_arrays(num_images=8, seed=3, ignore_fraction=0.2)
    examples = tf.data.Dataset.from_tensor_slices(
        {"images": images, "segmentation": labels, "image_id": np.arange(8)}
    ).batch(8)
    pairs = segmentation_pairs(examples)
    assert len(pairs.element_spec) == 2
    trainer = make_trainer(make_config(tmp_path), metrics=True)
    result = trainer.evaluate(pairs, verbose=0)  # compiles on first use
    # One batch of all 8 images: the loss is the loss of the model's logits on them.
    logits = trainer.model.predict(images, verbose=0)
    assert result["loss"] == pytest.approx(float(SegmentationLoss()(labels, logits)), rel=1e-5)
    assert set(result) == {"loss", "mean_iou"}
    with pytest.raises(ValueError, match="needs example dicts with 'images' and 'segmentation'"):
        segmentation_pairs(examples.map(lambda ex: {"images": ex["images"]}))


class Kill(keras.callbacks.Callback):
    """Raises in the middle of an epoch, as a killed process would stop."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch, self.batch = epoch, batch

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.current, batch) == (self.epoch, self.batch):
            raise KeyboardInterrupt("killed")


@pytest.mark.slow
def test_resume_after_a_kill_continues_where_it_stopped(tmp_path):
    full = Record()
    make_trainer(make_config(tmp_path, "full", epochs=3)).fit(pattern_pairs(), callbacks=[full], verbose=0)

    config = make_config(tmp_path, "killed", epochs=3)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(config).fit(pattern_pairs(), callbacks=[Kill(epoch=1, batch=1)], verbose=0)
    assert os.listdir(os.path.join(config.train.model_dir, "backup"))

    resumed = Record()
    history = make_trainer(config).fit(pattern_pairs(), callbacks=[resumed], verbose=0)
    # The run restarts at epoch 1 (the interrupted one, from its first batch) and only runs 1 and 2.
    assert history.epoch == [1, 2]
    assert sorted(resumed.begin) == [1, 2]
    # At the resume point: the weights and optimizer step of the uninterrupted run after epoch 0 ...
    assert_weights_equal(resumed.begin[1], full.end[0])
    assert resumed.steps_at_begin[1] == full.steps_at_begin[1] == 4
    # ... (not the fresh initial weights), and so the same end.
    assert not all(np.array_equal(a, b) for a, b in zip(resumed.begin[1], full.start))
    assert_weights_equal(resumed.end[2], full.end[2], atol=1e-6)
    assert not os.path.exists(os.path.join(config.train.model_dir, "backup"))


class RecordSteps(keras.callbacks.Callback):
    """The raw weights after every training step (mid-epoch the model holds them, averaged or not)."""

    def on_train_begin(self, logs=None):
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(snapshot(self.model))


@pytest.mark.slow
def test_weight_averaging_reaches_validation_checkpoints_the_final_model_and_resume(tmp_path):
    momentum = 0.5
    config = make_config(tmp_path, "ema", epochs=3, ema_momentum=momentum)
    trainer = make_trainer(config)
    steps = RecordSteps()
    val_ds = pattern_pairs(num_images=8, seed=1)
    history = trainer.fit(pattern_pairs(), val_ds, callbacks=[steps], verbose=0)
    # Keras' average: the weights after the first step, then momentum * average + (1 - momentum) * weights.
    average = steps.steps[0]
    for weights in steps.steps[1:]:
        average = [momentum * a + (1 - momentum) * w for a, w in zip(average, weights)]
    assert_weights_equal(snapshot(trainer.model), average, atol=1e-5)
    assert not all(np.allclose(a, w, atol=1e-4) for a, w in zip(average, steps.steps[-1]))
    last = keras.saving.load_model(os.path.join(config.train.model_dir, "checkpoints", "last.keras"))
    assert_weights_equal(snapshot(last), average, atol=1e-5)
    # Validation scored the averaged weights.
    assert trainer.evaluate(val_ds, verbose=0)["loss"] == pytest.approx(history.history["val_loss"][-1], rel=1e-4)

    # The backup holds the raw weights and their average: a run killed in epoch 1 ends as the uninterrupted one.
    killed = make_config(tmp_path, "ema_killed", epochs=3, ema_momentum=momentum)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(killed).fit(pattern_pairs(), val_ds, callbacks=[Kill(epoch=1, batch=1)], verbose=0)
    resumed = make_trainer(killed)
    resumed.fit(pattern_pairs(), val_ds, verbose=0)
    assert_weights_equal(snapshot(resumed.model), average, atol=1e-5)


class PoisonHead(keras.callbacks.Callback):
    """Sets the head's kernel to NaN at the start of `epoch`, so that epoch's loss is NaN."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            kernel = self.model.get_layer("logits").kernel
            kernel.assign(np.full(kernel.shape, np.nan, np.float32))


@pytest.mark.slow
def test_nan_loss_stops_training_and_keeps_the_last_good_state(tmp_path):
    config = make_config(tmp_path, epochs=4)
    record = Record()
    history = make_trainer(config).fit(pattern_pairs(), callbacks=[record, PoisonHead(1)], verbose=0)
    assert history.epoch == [0, 1]  # stopped in epoch 1 of 4
    assert math.isfinite(history.history["loss"][0]) and math.isnan(history.history["loss"][1])
    # Neither the last checkpoint nor the backup took the NaN weights; the backup is kept for a resume.
    last = keras.saving.load_model(os.path.join(config.train.model_dir, "checkpoints", "last.keras"))
    assert_weights_equal(snapshot(last), record.end[0])
    history = make_trainer(config).fit(pattern_pairs(), verbose=0)
    assert history.epoch == [1, 2, 3]
    assert all(math.isfinite(loss) for loss in history.history["loss"])


@pytest.mark.slow
def test_backbone_is_frozen_for_the_first_epochs(tmp_path):
    config = make_config(tmp_path, epochs=3)
    config.model.backbone.freeze_epochs = 2
    trainer = make_trainer(config)
    backbone, head = trainer.model.get_layer("backbone"), trainer.model.get_layer("logits")
    frozen = {}

    class Watch(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            frozen["start"] = (snapshot(backbone), snapshot(head))

        def on_epoch_end(self, epoch, logs=None):
            frozen[epoch] = (snapshot(backbone), snapshot(head), backbone.trainable)

    trainer.fit(pattern_pairs(), callbacks=[Watch()], verbose=0)
    start_backbone, start_head = frozen["start"]
    for epoch in (0, 1):
        assert frozen[epoch][2] is False
        assert_weights_equal(frozen[epoch][0], start_backbone)  # not one update while frozen
    assert not np.allclose(frozen[0][1][0], start_head[0])  # ... while the head trains
    assert frozen[2][2] is True
    assert not np.allclose(frozen[2][0][0], frozen[1][0][0])  # and the backbone trains after
    assert backbone.trainable  # left trainable, as compiled


def test_freezing_needs_a_backbone_layer(tmp_path):
    config = make_config(tmp_path)
    config.model.backbone.freeze_epochs = 1

    def no_backbone():
        inputs = keras.Input((None, None, 3))
        return keras.Model(inputs, keras.layers.Conv2D(NUM_CLASSES, 1)(inputs))

    with pytest.raises(ValueError, match="no layer named 'backbone'"):
        make_trainer(config, build=no_backbone)


def test_mixed_precision_policy_is_float16_only_on_gpus(monkeypatch, cpuinfo_file):
    strategy = tf.distribute.get_strategy()
    bf16_cpu = cpuinfo_file("bf16", "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    assert trainer_module._policy_name(False, strategy, bf16_cpu) == "float32"
    assert not tf.config.list_logical_devices("GPU")
    assert trainer_module._policy_name(True, strategy, bf16_cpu) == "mixed_bfloat16"
    gpu = tf.config.LogicalDevice("/device:GPU:0", "GPU")
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: [gpu] if kind == "GPU" else [])
    assert trainer_module._policy_name(True, strategy, bf16_cpu) == "mixed_float16"


def test_mixed_precision_is_float32_on_cpus_that_would_emulate_bfloat16(cpuinfo_file, tmp_path):
    strategy = tf.distribute.get_strategy()
    avx2_cpu = cpuinfo_file("avx2", "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
                                    "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    with pytest.warns(UserWarning, match="no bfloat16 instructions"):
        assert trainer_module._policy_name(True, strategy, avx2_cpu) == "float32"
    arm_cpu = cpuinfo_file("arm", "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    assert trainer_module._policy_name(True, strategy, arm_cpu) == "mixed_bfloat16"
    # Where the features cannot be read (not Linux), the request stands.
    missing = str(tmp_path / "no_such_file")
    assert trainer_module._policy_name(True, strategy, missing) == "mixed_bfloat16"


@pytest.mark.slow
def test_mixed_precision_sets_the_policy_and_trains(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "has_bfloat16", lambda cpuinfo: True)  # as on a bfloat16 CPU
    try:
        trainer = make_trainer(make_config(tmp_path, epochs=1, mixed_precision=True))
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        assert trainer.model.get_layer("logits").compute_dtype == "bfloat16"
        history = trainer.fit(pattern_pairs(), verbose=0)
        # bfloat16 has float32's exponent range: no loss scaling.
        assert not isinstance(trainer.model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert math.isfinite(history.history["loss"][0])
        assert trainer.model.get_layer("logits").kernel.dtype == "float32"  # variables stay float32
        make_trainer(make_config(tmp_path, "fp32", epochs=1))
        assert keras.mixed_precision.global_policy().name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_jit_compile_sgd_and_schedule_reach_the_model(tmp_path):
    config = make_config(
        tmp_path, epochs=1, steps_per_epoch=3, jit_compile=True, optimizer="sgd", momentum=0.5,
        schedule="cosine", warmup_steps=2, learning_rate=0.1,
    )
    trainer = make_trainer(config)
    history = trainer.fit(pattern_pairs().repeat(), verbose=0)
    model = trainer.model
    assert model.jit_compile is True
    assert isinstance(model.optimizer, keras.optimizers.SGD) and model.optimizer.momentum == 0.5
    assert math.isfinite(history.history["loss"][0])
    # After 3 steps the rate is the schedule's at step 3: 0.1 * 0.5 * (1 + cos(pi * 3 / 3)) = 0.
    assert int(model.optimizer.iterations.numpy()) == 3
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-7)


def test_bad_training_setups_are_explained(tmp_path):
    trainer = make_trainer(make_config(tmp_path))
    with pytest.raises(ValueError, match="repeats forever"):
        trainer.fit(pattern_pairs().repeat(), verbose=0)
    trainer = make_trainer(make_config(tmp_path, schedule="cosine"))
    with pytest.raises(ValueError, match="length is unknown"):
        trainer.fit(pattern_pairs().filter(lambda x, y: True), verbose=0)
    with pytest.raises(ValueError, match="train.epochs must be >= 1"):
        make_trainer(make_config(tmp_path, epochs=0))


def test_build_optimizer():
    adam = build_optimizer(TrainConfig(optimizer="adam"), steps_per_epoch=10)
    adamw = build_optimizer(TrainConfig(optimizer="adamw", weight_decay=0.01), steps_per_epoch=10)
    sgd = build_optimizer(TrainConfig(optimizer="sgd", momentum=0.8, weight_decay=1e-4), steps_per_epoch=10)
    assert type(adam) is keras.optimizers.Adam and adam.weight_decay is None
    assert type(adamw) is keras.optimizers.AdamW and adamw.weight_decay == pytest.approx(0.01)
    assert type(sgd) is keras.optimizers.SGD and sgd.momentum == 0.8 and sgd.weight_decay == pytest.approx(1e-4)
    assert not adam.use_ema and not sgd.use_ema
    averaged = build_optimizer(TrainConfig(optimizer="sgd", ema_momentum=0.999), steps_per_epoch=10)
    assert averaged.use_ema and averaged.ema_momentum == pytest.approx(0.999)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"train.ema_momentum must be in \[0, 1\)"):
            build_optimizer(TrainConfig(ema_momentum=bad), steps_per_epoch=10)


# -- schedules --------------------------------------------------------------------------------------------


def values(schedule, steps):
    return np.array([float(schedule(tf.constant(s, tf.int64))) for s in steps])


def np_schedule(kind, lr, total, warmup, boundaries=(), rate=0.1):
    """Independent reference: the decay at step s, times min(1, (s + 1) / warmup)."""
    steps = np.arange(total + 5, dtype=np.float64)
    if kind == "constant":
        base = np.full_like(steps, lr)
    elif kind == "cosine":
        base = lr * 0.5 * (1 + np.cos(np.pi * np.minimum(steps, total) / total))
    else:
        base = lr * rate ** (steps[:, None] >= np.array(boundaries)[None, :]).sum(1)
    return base * (np.minimum(1.0, (steps + 1) / warmup) if warmup else 1.0)


def test_schedules_hand_worked():
    constant = build_schedule(TrainConfig(schedule="constant", learning_rate=0.2, warmup_steps=4), 10)
    np.testing.assert_allclose(values(constant, range(6)), [0.05, 0.1, 0.15, 0.2, 0.2, 0.2], rtol=1e-6)

    # 2 epochs x 5 steps: cosine from 0.1 to 0 over 10 steps.
    cosine = build_schedule(TrainConfig(schedule="cosine", learning_rate=0.1, epochs=2), 5)
    np.testing.assert_allclose(values(cosine, [0, 5, 10, 12]), [0.1, 0.05, 0.0, 0.0], atol=1e-7)
    warm = build_schedule(TrainConfig(schedule="cosine", learning_rate=0.1, epochs=2, warmup_steps=2), 5)
    expected = [0.1 * 0.5, 0.1 * 0.5 * (1 + math.cos(math.pi * 0.1)), 0.1 * 0.5 * (1 + math.cos(math.pi * 0.2))]
    np.testing.assert_allclose(values(warm, [0, 1, 2]), expected, rtol=1e-6)

    # 10 epochs x 10 steps, x0.1 after epochs 3 and 6: boundaries at steps 30 and 60.
    step = build_schedule(TrainConfig(schedule="step", learning_rate=1.0, epochs=10, decay_epochs=(3, 6)), 10)
    np.testing.assert_allclose(values(step, [0, 29, 30, 59, 60, 99]), [1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


@pytest.mark.parametrize("kind", ["constant", "cosine", "step"])
@pytest.mark.parametrize("warmup", [0, 7])
def test_schedules_match_numpy(kind, warmup):
    config = TrainConfig(schedule=kind, learning_rate=0.3, epochs=5, warmup_steps=warmup, decay_epochs=(2, 4),
                         decay_rate=0.5)
    schedule = build_schedule(config, steps_per_epoch=6)
    expected = np_schedule(kind, 0.3, total=30, warmup=warmup, boundaries=(12, 24), rate=0.5)
    np.testing.assert_allclose(values(schedule, range(len(expected))), expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("kind", ["constant", "cosine", "step"])
def test_schedules_round_trip(kind):
    config = TrainConfig(schedule=kind, learning_rate=0.3, epochs=5, warmup_steps=3, decay_epochs=(2,))
    schedule = build_schedule(config, steps_per_epoch=6)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert type(restored) is LinearWarmup and restored.get_config() == schedule.get_config()
    assert type(restored.schedule) is type(schedule.schedule)
    np.testing.assert_allclose(values(restored, range(32)), values(schedule, range(32)))
    # Inside an optimizer's config too, as a .keras checkpoint stores it.
    optimizer = keras.optimizers.Adam.from_config(keras.optimizers.Adam(learning_rate=schedule).get_config())
    assert optimizer.get_config()["learning_rate"] == keras.optimizers.Adam(learning_rate=schedule).get_config()[
        "learning_rate"
    ]
    assert {type(schedule.schedule)} <= {Constant, StepDecay, keras.optimizers.schedules.CosineDecay}


def test_schedule_errors():
    with pytest.raises(ValueError, match="train.decay_epochs"):
        build_schedule(TrainConfig(schedule="step", epochs=10), 5)
    with pytest.raises(ValueError, match="train.decay_epochs"):
        build_schedule(TrainConfig(schedule="step", epochs=10, decay_epochs=(6, 3)), 5)
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1"):
        build_schedule(TrainConfig(), 0)
