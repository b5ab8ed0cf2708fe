"""Semantic segmentation losses: per-pixel softmax cross entropy, soft Dice, or their sum.

Labels are int class ids `[B, H, W]` with `ignore_label` (255) for unknown pixels; predictions are logits
`[B, H, W, C]`. Ignored pixels add nothing to either loss and do not count in the cross entropy's mean, so a
batch whose pixels are all ignored has loss 0 (not NaN) and zero gradients. Everything is computed in
float32, so logits from a `mixed_float16` model are safe.

Cross entropy with class weights `w` is the weighted mean `sum(w[y] * ce) / sum(w[y])` over counted pixels
(as PyTorch's `CrossEntropyLoss(weight=...)`), so the weights change the balance between classes, not the
scale of the loss. Soft Dice is `1 - mean_c (2 * sum(p_c * t_c) + s) / (sum(p_c) + sum(t_c) + s)` with
softmax probabilities `p`, one-hot labels `t`, sums over every counted pixel of the batch, and the mean over
all classes (weighted by the class weights when given); a class absent from labels and predictions scores 1.

Under `tf.distribute` each replica normalizes by its own pixels and Keras averages the replicas, as
torchvision and mmsegmentation do per GPU.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from tfvision.config import LossConfig

KINDS = ("cross_entropy", "dice", "cross_entropy+dice")


def softmax_cross_entropy(labels, logits, class_weights=None, ignore_label=255):
    """Mean per-pixel softmax cross entropy over the pixels that are not ignored.

    Args:
        labels: int [B, H, W] (or [B, H, W, 1]) class ids in [0, C), or `ignore_label`.
        logits: float [B, H, W, C] unnormalized scores (any float dtype; computed in float32).
        class_weights: optional C floats, the weight of a pixel by its true class.
        ignore_label: label of pixels to leave out, or None.

    Returns:
        float32 scalar: `sum(w * ce) / sum(w)` over counted pixels, 0 when no pixel counts.
    """
    ce, weight = _pixel_cross_entropy(labels, logits, class_weights, ignore_label)
    return ops.divide_no_nan(ops.sum(ce * weight), ops.sum(weight))


def dice_loss(labels, logits, class_weights=None, ignore_label=255, smooth=1.0):
    """Soft multiclass Dice loss over the pixels that are not ignored.

    Args:
        labels: int [B, H, W] (or [B, H, W, 1]) class ids in [0, C), or `ignore_label`.
        logits: float [B, H, W, C] unnormalized scores (computed in float32).
        class_weights: optional C floats weighting each class's Dice in the mean.
        ignore_label: label of pixels to leave out, or None.
        smooth: s > 0 added to numerator and denominator, so empty classes score 1, not 0 / 0.

    Returns:
        float32 scalar in [0, 1]: 1 - (weighted) mean over classes of the soft Dice coefficient.
    """
    labels, logits, valid = _prepare(labels, logits, ignore_label)
    num_classes = logits.shape[-1]
    valid = ops.expand_dims(ops.cast(valid, "float32"), -1)
    probs = ops.softmax(logits, axis=-1) * valid
    onehot = ops.one_hot(labels, num_classes, dtype="float32") * valid
    axes = tuple(range(len(logits.shape) - 1))
    intersection = ops.sum(probs * onehot, axis=axes)
    total = ops.sum(probs, axis=axes) + ops.sum(onehot, axis=axes)
    dice = (2.0 * intersection + smooth) / (total + smooth)
    weights = _class_weight_vector(class_weights, num_classes)
    if weights is None:
        return 1.0 - ops.mean(dice)
    return 1.0 - ops.sum(weights * dice) / ops.sum(weights)


@keras.saving.register_keras_serializable(package="tfvision")
class SegmentationLoss(keras.losses.Loss):
    """Cross entropy, Dice, or cross entropy + Dice, as a Keras loss for `model.compile`.

    `call` returns a per-pixel map [B, H, W] scaled so that Keras' `sum_over_batch_size` reduction yields the
    normalized losses of `softmax_cross_entropy` / `dice_loss` (a scalar from `call` would skip Keras'
    division by the number of replicas under `tf.distribute`). An optional `sample_weight` [B, H, W] from
    `fit` multiplies each pixel's share of that sum (the divisor stays the counted pixels' weights).

    Args:
        kind: `cross_entropy`, `dice` or `cross_entropy+dice` (the plain sum of both).
        class_weights: optional C floats (C = number of logit channels), used by both terms.
        ignore_label: label of pixels to leave out, or None.
        smooth: Dice smoothing term s > 0.
        name: name in logs.
    """

    def __init__(
        self, kind="cross_entropy", class_weights=None, ignore_label=255, smooth=1.0, name="segmentation_loss",
        **kwargs,
    ):
        kwargs.pop("reduction", None)  # fixed: the scaling in `call` relies on sum_over_batch_size
        kwargs.pop("dtype", None)  # fixed: losses are computed in float32, whatever the model's policy
        super().__init__(name=name, reduction="sum_over_batch_size", dtype="float32", **kwargs)
        if kind not in KINDS:
            raise ValueError(f"SegmentationLoss: unknown kind {kind!r} (train.loss.kind); choose one of {KINDS}.")
        if float(smooth) <= 0:
            raise ValueError(f"SegmentationLoss: smooth must be > 0, got {smooth}.")
        self.kind = kind
        self.class_weights = None if not class_weights else tuple(float(w) for w in class_weights)
        if self.class_weights and (min(self.class_weights) < 0 or sum(self.class_weights) <= 0):
            raise ValueError(
                f"SegmentationLoss: class_weights must be >= 0 with a positive sum, got {self.class_weights}."
            )
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        num_pixels = ops.cast(ops.prod(ops.shape(y_pred)[:-1]), "float32")
        values = ops.zeros(ops.shape(y_pred)[:-1], "float32")
        if self.kind in ("cross_entropy", "cross_entropy+dice"):
            ce, weight = _pixel_cross_entropy(y_true, y_pred, self.class_weights, self.ignore_label)
            values = values + ce * weight * ops.divide_no_nan(num_pixels, ops.sum(weight))
        if self.kind in ("dice", "cross_entropy+dice"):
            values = values + dice_loss(y_true, y_pred, self.class_weights, self.ignore_label, self.smooth)
        return values

    def get_config(self):
        config = super().get_config()
        config.pop("reduction", None)
        config.pop("dtype", None)
        config.update(
            {
                "kind": self.kind,
                "class_weights": None if self.class_weights is None else list(self.class_weights),
                "ignore_label": self.ignore_label,
                "smooth": self.smooth,
            }
        )
        return config


def build_segmentation_loss(config: LossConfig) -> SegmentationLoss:
    """The loss that the `train.loss` section of an experiment describes."""
    return SegmentationLoss(kind=config.kind, class_weights=config.class_weights, ignore_label=config.ignore_label)


def _prepare(labels, logits, ignore_label):
    """float32 logits, int32 labels with ignored pixels set to 0, and the bool map of counted pixels."""
    logits = ops.cast(ops.convert_to_tensor(logits), "float32")
    labels = ops.convert_to_tensor(labels)
    if len(labels.shape) == len(logits.shape) and labels.shape[-1] == 1:
        labels = ops.squeeze(labels, axis=-1)  # Keras pipelines often carry labels as [B, H, W, 1]
    if len(labels.shape) != len(logits.shape) - 1:
        raise ValueError(
            f"segmentation loss: labels {tuple(labels.shape)} must be class ids [B, H, W] for logits "
            f"{tuple(logits.shape)} [B, H, W, C]."
        )
    for axis, (a, b) in enumerate(zip(labels.shape, logits.shape[:-1])):
        if a is not None and b is not None and a != b:
            raise ValueError(
                f"segmentation loss: labels {tuple(labels.shape)} and logits {tuple(logits.shape)} differ in "
                f"axis {axis}; the model must predict at the label resolution (resize one to the other)."
            )
    if keras.backend.is_float_dtype(labels.dtype):
        labels = ops.round(labels)  # Keras converts y_true to the loss dtype before `call`
    labels = ops.cast(labels, "int32")
    num_classes = logits.shape[-1]
    valid = ops.ones_like(labels, dtype="bool") if ignore_label is None else ops.not_equal(labels, ignore_label)
    # Out-of-range labels would otherwise fail deep inside the softmax op (CPU) or give NaN (GPU).
    check = tf.debugging.assert_equal(
        ops.logical_or(ops.logical_not(valid), ops.logical_and(labels >= 0, labels < num_classes)),
        True,
        message=f"segmentation loss: label outside [0, {num_classes}) that is not ignore_label={ignore_label}",
    )
    with tf.control_dependencies([check]):
        labels = ops.where(valid, labels, 0)
    return labels, logits, valid


def _pixel_cross_entropy(labels, logits, class_weights, ignore_label):
    """Per-pixel cross entropy [B, H, W] and each pixel's weight (0 for ignored pixels)."""
    labels, logits, valid = _prepare(labels, logits, ignore_label)
    ce = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    weight = ops.cast(valid, "float32")
    weights = _class_weight_vector(class_weights, logits.shape[-1])
    if weights is not None:
        weight = weight * ops.take(weights, labels)
    return ce, weight


def _class_weight_vector(class_weights, num_classes):
    if class_weights is None or len(class_weights) == 0:
        return None
    if num_classes is not None and len(class_weights) != num_classes:
        raise ValueError(
            f"segmentation loss: {len(class_weights)} class weights (train.loss.class_weights) for logits with "
            f"{num_classes} channels; give one weight per class, background (0) first."
        )
    return ops.convert_to_tensor(list(class_weights), "float32")
