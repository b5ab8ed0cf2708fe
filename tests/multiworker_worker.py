"""One worker of the two-process `MultiWorkerMirroredStrategy` test, and the tiny model and data that the
trainer tests share.

As a script: reads TF_CONFIG (set by the test), trains the tiny segmenter for a few steps with
`train.strategy = multi_worker` into the model_dir given as argv[1], and prints one JSON line
`{"task": i, "losses": [...], "weights_sum": s}` on stdout. The test runs `train` in its own process with the
default strategy too, for the single-machine result the workers must reproduce.

The data: random 16 x 16 images in [-1, 1) whose per-pixel class is the channel with the largest value,
something the tiny model learns within a few steps.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

NUM_CLASSES = 3


def tiny_segmenter(num_classes=NUM_CLASSES, width=8, seed=0) -> keras.Model:
    """A nested `backbone` (one 3x3 conv) and a 1x1 conv head: logits [B, H, W, num_classes].

    Initializers are seeded, so every build (in any process, under any strategy) starts from the same weights.
    """
    backbone = keras.Sequential(
        [
            keras.Input((None, None, 3)),
            keras.layers.Conv2D(
                width, 3, padding="same", activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed)
            ),
        ],
        name="backbone",
    )
    inputs = keras.Input((None, None, 3), name="images")
    logits = keras.layers.Conv2D(
        num_classes, 1, kernel_initializer=keras.initializers.GlorotUniform(seed + 1), name="logits"
    )(backbone(inputs))
    return keras.Model(inputs, logits, name="tiny_segmenter")


def pattern_arrays(num_images=32, size=16, seed=0, ignore_fraction=0.0):
    """images float32 [N, size, size, 3] in [-1, 1) and labels int32 [N, size, size] (argmax; 255 = ignore)."""
    rng = np.random.default_rng(seed)
    images = rng.random((num_images, size, size, 3), dtype=np.float32) * 2 - 1
    labels = np.argmax(images, axis=-1).astype(np.int32)
    labels[rng.random(labels.shape) < ignore_fraction] = 255
    return images, labels


def pattern_pairs(num_images=32, batch_size=8, size=16, seed=0, ignore_fraction=0.0) -> tf.data.Dataset:
    """Batched `(images, labels)` pairs of `pattern_arrays`, in a fixed order."""
    images, labels = pattern_arrays(num_images, size, seed, ignore_fraction)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size, drop_remainder=True)


def train(model_dir, strategy="multi_worker"):
    """Trains the tiny segmenter for 2 epochs of 4 steps; returns the losses and the sum of all weights."""
    from tfvision.config import ExperimentConfig
    from tfvision.losses import SegmentationLoss
    from tfvision.training import Trainer

    config = ExperimentConfig()
    config.train.strategy = strategy
    config.train.epochs = 2
    config.train.schedule = "constant"
    config.train.learning_rate = 0.05
    config.train.model_dir = model_dir
    # The strategy must exist before any other TensorFlow work, so the Trainer comes before the data.
    trainer = Trainer(config, tiny_segmenter, loss=SegmentationLoss())
    history = trainer.fit(pattern_pairs(num_images=32, batch_size=8), verbose=0)
    weights_sum = float(sum(np.sum(w) for w in trainer.model.get_weights()))
    return {"losses": history.history["loss"], "weights_sum": weights_sum}


if __name__ == "__main__":
    result = train(sys.argv[1])
    result["task"] = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    print(json.dumps(result), flush=True)
