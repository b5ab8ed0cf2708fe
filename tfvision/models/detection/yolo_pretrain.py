"""YOLOv1's classification pretraining (Redmon et al. 2016, section 2.2), on object crops of the detection data.

The paper pretrains its first 20 convolutional layers on ImageNet classification at 224 px (those layers,
an average pool and a fully connected layer), then adds four convolutions and the two fully connected
layers and trains detection at 448 px. With no ImageNet here, the analogue classifies single objects cut
from the detection training images: each ground-truth box becomes a square crop around it (with context,
jittered in position and scale, flipped), resized to `crop_size` (by default half the detection input, as
224 is half of 448), and the classifier is

    crop -> the detector's trunk (the SAME layer objects, so the weights are shared) -> global average pool
         -> Dense(num_classes) -> softmax cross entropy.

Departure: every convolution before Flatten is pretrained, the paper's four added ones and the 1x1
`fc_input` conv included (tfvision's `yolov1_network` has no seam there); only the two fully connected
layers start random. Why it matters for v1 (configs/shapes/yolov1.yaml records the runs): each grid cell's
class outputs are read by the fully connected layers from ~1/S**2 of the objects, and a trunk trained from
scratch through them never learned to tell the shapes apart; the classifier's head is shared over every
object, so every crop teaches the trunk.

`pretrain_trunk` runs it on a detector's network; `pretrain_from_config` is what `tfvision train` calls
(`model.yolo.pretrain_steps` > 0).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfvision.data.pipeline import example_seeds, fusion_options

# Crop side = the box's longer side times a context factor drawn from this range in training (the middle
# value for evaluation): the object fills most of the crop, with a margin of its surroundings. Measured on
# shapes_8k (800 steps, 64-px crops): val crop accuracy 0.87 with (1.1, 1.5) and jitter 0.1, 0.74 with
# (1.25, 2.0) and jitter 0.15 (wider crops hold more of the other, overlapping shapes: label noise).
# Objects are magnified to fill the crop (a 16-px shape becomes ~50 px at 64-px crops), as ImageNet objects
# fill theirs. Tried instead: windows of at least 64 image pixels, so that objects keep the detector's scale
# (128-px input): 0.81 val crop accuracy after 2000 steps against 0.92, and AP50 0.324 against 0.360 after
# the same detection training (one run each).
CONTEXT_RANGE = (1.1, 1.5)
# In training the crop centre moves by up to this fraction of the crop side (per axis), so the object is not
# always in the middle (in detection it sits anywhere in a cell's receptive field).
CENTRE_JITTER = 0.1
# Layers of `yolov1_network` that come after the trunk: the trunk ends before the first of them.
_HEAD_LAYERS = ("flatten",)
_TRUNK_PREFIXES = ("normalize", "trunk", "pool", "fc_input")


def crop_windows(boxes, image_size, crop_size, seed=None) -> tf.Tensor:
    """The crop window of each box, in the normalized coordinates of `tf.image.crop_and_resize`.

    Args:
        boxes: float32 `[N, 4]` yxyx pixels (padding rows are fine; their windows are ignored later).
        image_size: `(height, width)` of the image, int or scalar tensors.
        crop_size: the output side in pixels (to place the samples at pixel centres).
        seed: a stateless seed, int32/int64 `[2]`, for training jitter (context factor, centre shift, a
            horizontal flip); None for the fixed evaluation crop (centred, middle context, unflipped).

    Returns:
        float32 `[N, 4]` (y1, x1, y2, x2) for `tf.image.crop_and_resize`; x1 > x2 means mirrored. The window
        is the square of side `context * max(h, w)` around the box centre (shifted in training by up to
        `CENTRE_JITTER` of that side); parts outside the image are filled with 0 (black).
    """
    boxes = tf.cast(boxes, tf.float32)
    n = tf.shape(boxes)[0]
    height = tf.cast(image_size[0], tf.float32)
    width = tf.cast(image_size[1], tf.float32)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    cy, cx = (ymin + ymax) / 2, (xmin + xmax) / 2
    side = tf.maximum(tf.maximum(ymax - ymin, xmax - xmin), 1.0)
    if seed is None:
        side *= sum(CONTEXT_RANGE) / 2
        flip = tf.zeros([n], tf.bool)
    else:
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
        side *= tf.random.stateless_uniform([n], seeds[0], *CONTEXT_RANGE)
        shift = tf.random.stateless_uniform([n, 2], seeds[1], -CENTRE_JITTER, CENTRE_JITTER) * side[:, None]
        cy, cx = cy + shift[:, 0], cx + shift[:, 1]
        flip = tf.random.stateless_uniform([n], seeds[2]) < 0.5
    # crop_and_resize puts its first and last samples at y1 * (H - 1) and y2 * (H - 1) in pixel-index units
    # (pixel i's centre is at i + 0.5 in box units): place them at the centres of the crop's first and last
    # output pixels, half a step inside the window's edges.
    half = side / 2 - side / (2 * float(crop_size))
    y1 = (cy - half - 0.5) / tf.maximum(height - 1, 1.0)
    y2 = (cy + half - 0.5) / tf.maximum(height - 1, 1.0)
    x1 = (cx - half - 0.5) / tf.maximum(width - 1, 1.0)
    x2 = (cx + half - 0.5) / tf.maximum(width - 1, 1.0)
    x1, x2 = tf.where(flip, x2, x1), tf.where(flip, x1, x2)
    return tf.stack([y1, x1, y2, x2], axis=-1)


def object_crops(image, boxes, classes, crop_size, seed=None):
    """One square crop per box of one image.

    Args:
        image: uint8 or float `[H, W, 3]`, pixels 0..255.
        boxes: float32 `[N, 4]` yxyx pixels. classes: int32 `[N]`, 1..K, -1 (or 0) for padding.
        crop_size: output side in pixels.
        seed: see `crop_windows` (None = the evaluation crop).

    Returns:
        (crops float32 `[N, crop_size, crop_size, 3]` 0..255, labels int32 `[N]` = class - 1, i.e. 0..K-1 for
        objects and < 0 for padding rows).
    """
    image = tf.cast(image, tf.float32)
    windows = crop_windows(boxes, tf.shape(image)[:2], crop_size, seed)
    n = tf.shape(boxes)[0]
    crops = tf.image.crop_and_resize(image[None], windows, tf.zeros([n], tf.int32), [crop_size, crop_size])
    labels = tf.cast(classes, tf.int32) - 1
    return crops, tf.where(labels < 0, -1, labels)


def crop_dataset(examples: tf.data.Dataset, crop_size: int, batch_size: int, training: bool, seed=None,
                 shuffle_buffer: int = 2048) -> tf.data.Dataset:
    """Example dicts -> batches of single-object crops and their labels.

    Args:
        examples: unbatched example dicts of a tfvision loader (`images` uint8 `[H, W, 3]`, `boxes` float32
            `[N, 4]` yxyx pixels, `classes` int32 `[N]` with -1 padding; other keys are dropped unread).
        crop_size: crop side in pixels. batch_size: crops per batch.
        training: jittered crops (`crop_windows`), shuffled, repeated forever, full batches; otherwise the
            fixed crops, in order, once, the last batch possibly smaller.
        seed: makes the shuffle and the jitter reproducible (None: fresh randomness).
        shuffle_buffer: crops in the shuffle buffer (crops of one image arrive together; this mixes them).

    Returns:
        `tf.data.Dataset` of (crops float32 `[B, crop_size, crop_size, 3]` 0..255, labels int32 `[B]`, 0..K-1).
        Crowd objects are skipped (their boxes cover groups).
    """
    crop_size = int(crop_size)

    def select(example):
        classes = example["classes"]
        if "is_crowd" in example:
            classes = tf.where(example["is_crowd"], -1, classes)
        return {"images": example["images"], "boxes": example["boxes"], "classes": classes}

    # Map fusion lets tf.data prune what the loader decodes for the dropped keys (semantic maps, masks).
    data = examples.map(select, num_parallel_calls=tf.data.AUTOTUNE).with_options(fusion_options())
    if training:
        data = tf.data.Dataset.zip((data.repeat(), example_seeds(seed))).map(
            lambda example, s: object_crops(example["images"], example["boxes"], example["classes"], crop_size, s),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        data = data.map(
            lambda example: object_crops(example["images"], example["boxes"], example["classes"], crop_size),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    data = data.unbatch().filter(lambda crop, label: label >= 0)
    if training:
        data = data.shuffle(shuffle_buffer, seed=seed)
    return data.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


def trunk_layers(network: keras.Model) -> list:
    """The trunk of a `yolov1_network`: its layers from the input normalization up to Flatten (the 1x1
    `fc_input` conv included, when there is one), in order.

    Raises:
        ValueError: `network` is not a YOLOv1 network (no such chain of layers).
    """
    layers = []
    for layer in network.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if layer.name in _HEAD_LAYERS:
            break
        if not layer.name.startswith(_TRUNK_PREFIXES):
            raise ValueError(
                f"yolo_pretrain: layer {layer.name!r} of {network.name!r} is not part of a YOLOv1 trunk; pass the "
                "`network` of a YOLOv1 detector (yolo.build_yolo with model.yolo.version v1)."
            )
        layers.append(layer)
    if not layers or layers[0].name != "normalize":
        raise ValueError(f"yolo_pretrain: {network.name!r} has no YOLOv1 trunk (no 'normalize' layer first).")
    return layers


def trunk_classifier(network: keras.Model, crop_size: int, num_classes: int) -> keras.Model:
    """crops -> the YOLOv1 trunk of `network` (the same layer objects: training this trains the detector's
    trunk) -> global average pool -> Dense(num_classes) logits.

    Args:
        network: a `yolov1_network`.
        crop_size: input side in pixels; at least 2**(stride-2 steps the trunk keeps), so a map is left.
        num_classes: K.

    Returns:
        functional `keras.Model`: float32 `[B, crop_size, crop_size, 3]` 0..255 -> float32 logits `[B, K]`.
    """
    layers = trunk_layers(network)
    halvings = sum(
        isinstance(layer, keras.layers.MaxPooling2D)
        or (isinstance(layer, keras.layers.Conv2D) and layer.strides[0] > 1)
        for layer in layers
    )
    if int(crop_size) < 2 ** halvings:
        raise ValueError(
            f"model.yolo.pretrain_crop_size: {crop_size} px is too small for the trunk, which halves the resolution "
            f"{halvings} times; use at least {2 ** halvings} (0 = half of data.image_size)."
        )
    inputs = keras.Input((int(crop_size), int(crop_size), 3), name="crops")
    x = inputs
    for layer in layers:
        x = layer(x)
    x = keras.layers.GlobalAveragePooling2D(name="pretrain_pool")(x)
    logits = keras.layers.Dense(int(num_classes), name="pretrain_logits", dtype="float32")(x)
    return keras.Model(inputs, logits, name="yolov1_trunk_classifier")


class _Progress(keras.callbacks.Callback):
    """Prints loss and crop accuracy averaged over every `every` steps (metrics are reset after each print)."""

    def __init__(self, steps, every, log):
        super().__init__()
        self.steps, self.every, self.log = steps, every, log
        self.last = {}

    def on_train_batch_end(self, batch, logs=None):
        step = batch + 1
        if step % self.every and step != self.steps:
            return
        self.last = {k: float(v) for k, v in (logs or {}).items()}
        self.log(f"pretrain step {step}/{self.steps}: loss {self.last.get('loss', float('nan')):.3f}, "
                 f"crop accuracy {self.last.get('accuracy', float('nan')):.3f}")
        self.model.reset_metrics()


def pretrain_trunk(network: keras.Model, train_examples: tf.data.Dataset, *, num_classes: int, steps: int,
                   crop_size: int, batch_size: int = 32, learning_rate: float = 1e-3, val_examples=None,
                   seed: int | None = 0, log=print) -> dict:
    """Trains the trunk of a YOLOv1 `network` to classify object crops (its weights change in place).

    Adam with a cosine decay to 0 over `steps`; sparse softmax cross entropy.

    Args:
        network: a `yolov1_network` (e.g. `detector.network`).
        train_examples: unbatched example dicts of the detection training split (see `crop_dataset`).
        num_classes: K. steps: optimizer steps (>= 1). crop_size: crop side in pixels.
        batch_size: crops per step. learning_rate: Adam's initial rate.
        val_examples: optional unbatched example dicts; their fixed crops give `val_accuracy`.
        seed: for the crop jitter and shuffle. log: where progress lines go (None: nowhere).

    Returns:
        {"steps", "train_loss", "train_accuracy" (the last ~10% of the steps), "val_accuracy" (or None),
        "classifier" (the trunk classifier, for inspection)}.
    """
    if steps < 1:
        raise ValueError(f"pretrain_trunk: steps must be >= 1, got {steps}.")
    log = log or (lambda _line: None)
    classifier = trunk_classifier(network, crop_size, num_classes)
    schedule = keras.optimizers.schedules.CosineDecay(float(learning_rate), decay_steps=int(steps))
    classifier.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    crops = crop_dataset(train_examples, crop_size, batch_size, training=True, seed=seed)
    progress = _Progress(int(steps), max(1, math.ceil(steps / 10)), log)
    classifier.fit(crops, steps_per_epoch=int(steps), epochs=1, verbose=0, callbacks=[progress], shuffle=False)
    result = {
        "steps": int(steps),
        "train_loss": progress.last.get("loss"),
        "train_accuracy": progress.last.get("accuracy"),
        "val_accuracy": None,
        "classifier": classifier,
    }
    if val_examples is not None:
        # A plain loop, not evaluate(): Keras warns "ran out of data" at the end of a filtered (unknown-length)
        # dataset.
        correct = total = 0
        for crops, labels in crop_dataset(val_examples, crop_size, batch_size, training=False):
            predicted = tf.argmax(classifier(crops, training=False), axis=-1, output_type=tf.int32)
            correct += int(tf.reduce_sum(tf.cast(predicted == labels, tf.int32)))
            total += int(tf.size(labels))
        result["val_accuracy"] = correct / max(total, 1)
    return result


def pretrain_from_config(config, detector, train_examples, val_examples=None, log=print) -> dict:
    """`pretrain_trunk` with the settings of an `ExperimentConfig` (`model.yolo.pretrain_*`, `train.seed`),
    on `detector.network`; logs what it did. Called by `tfvision.tasks.detection.train` for YOLOv1.

    Returns:
        `pretrain_trunk`'s result, without the classifier.
    """
    yolo = config.model.yolo
    crop_size = yolo.pretrain_crop_size or max(1, config.data.image_size // 2)
    log(f"YOLOv1 pretraining: {yolo.pretrain_steps} steps classifying {crop_size}-px object crops "
        f"({yolo.pretrain_batch_size} per step, Adam {yolo.pretrain_learning_rate:g} cosine)")
    result = pretrain_trunk(
        detector.network, train_examples, num_classes=config.model.num_classes, steps=yolo.pretrain_steps,
        crop_size=crop_size, batch_size=yolo.pretrain_batch_size, learning_rate=yolo.pretrain_learning_rate,
        val_examples=val_examples, seed=config.train.seed, log=log,
    )
    result.pop("classifier")
    val = "n/a" if result["val_accuracy"] is None else f"{result['val_accuracy']:.3f}"
    log(f"YOLOv1 pretraining done: {result['steps']} steps, crop accuracy {result['train_accuracy']:.3f} "
        f"(train, last steps), {val} (val crops; chance {1 / config.model.num_classes:.3f})")
    return result
