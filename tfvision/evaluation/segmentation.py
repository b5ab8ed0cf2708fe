"""Semantic segmentation scores from a confusion matrix: per-class IoU, mean IoU, pixel accuracy.

The confusion matrix is the one statistic that adds up exactly over batches, replicas and images, so
everything is computed from it: `confusion[t, p]` counts the pixels of true class t predicted as p (rows
truth, columns prediction, as `tf.math.confusion_matrix` and scikit-learn), pixels labelled `ignore_label`
skipped. A class absent from both the truth and the predictions has no IoU (0 / 0): it is NaN per class and
left out of the mean, as the VOC devkit, torchvision's references and mmseg do. Background (id 0) is a class
like any other.

`MeanIoU` is the same as a Keras metric for `model.fit` / `model.evaluate`, accumulating exact integer counts.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops


def confusion_matrix(y_true, y_pred, num_classes, ignore_label=255) -> np.ndarray:
    """Counts (true class, predicted class) pixel pairs.

    Args:
        y_true: int array of any shape, e.g. [B, H, W], class ids in [0, num_classes) or `ignore_label`.
        y_pred: int array of the same shape, predicted class ids in [0, num_classes) (take the argmax of
            scores first). Numpy arrays or eager tensors.
        num_classes: C, the number of classes including background.
        ignore_label: label of pixels to skip (255: unknown/border), or None.

    Returns:
        int64 [C, C], `confusion[t, p]` = pixels of true class t predicted as p.

    Raises:
        ValueError: shapes differ, a prediction outside [0, C), or a label outside [0, C) that is not the
            ignore label.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true has shape {y_true.shape} but y_pred {y_pred.shape}; give predicted class ids of the same "
            "shape (argmax over the class axis of scores)."
        )
    y_true = y_true.astype(np.int64).reshape(-1)
    y_pred = y_pred.astype(np.int64).reshape(-1)
    bad = (y_pred < 0) | (y_pred >= num_classes)
    if np.any(bad):
        raise ValueError(
            f"y_pred holds class id {int(y_pred[bad][0])}, outside [0, {num_classes}); predictions must be "
            "class ids of a model with num_classes outputs."
        )
    valid = np.ones_like(y_true, bool) if ignore_label is None else y_true != ignore_label
    bad = valid & ((y_true < 0) | (y_true >= num_classes))
    if np.any(bad):
        raise ValueError(
            f"y_true holds label {int(y_true[bad][0])}, outside [0, {num_classes}) and not the ignore label "
            f"{ignore_label}; check num_classes and the data set's label map."
        )
    index = y_true[valid] * num_classes + y_pred[valid]
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_iou(confusion) -> np.ndarray:
    """IoU = TP / (TP + FP + FN) of each class; NaN for a class absent from truth and prediction.

    Args:
        confusion: [C, C] counts, rows truth, columns prediction.

    Returns:
        float64 [C].
    """
    confusion = _square(confusion)
    tp = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(confusion) -> float:
    """Mean of `per_class_iou` over the classes present in truth or prediction; NaN if none is."""
    ious = per_class_iou(confusion)
    present = ~np.isnan(ious)
    return float(ious[present].mean()) if present.any() else float("nan")


def pixel_accuracy(confusion) -> float:
    """Fraction of counted pixels whose class is right; NaN for an empty matrix."""
    confusion = _square(confusion)
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total > 0 else float("nan")


def _square(confusion):
    confusion = np.asarray(confusion, np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square [C, C] matrix, got shape {confusion.shape}.")
    return confusion


@keras.saving.register_keras_serializable(package="tfvision")
class MeanIoU(keras.metrics.Metric):
    """Mean IoU over the classes present so far, from an accumulated confusion matrix.

    The matrix is an int64 variable (exact counts however many pixels; a float32 matrix stops counting
    single pixels past 2**24), summed across replicas under `tf.distribute`. `result()` equals
    `mean_iou(confusion_matrix(...))` over every batch seen since `reset_state`, except that it is 0.0 (not
    NaN) before any pixel is counted, as Keras metrics are.

    Args:
        num_classes: C, the number of classes including background.
        ignore_label: label of pixels to skip, or None.
        from_logits: True: `y_pred` holds per-class scores [B, H, W, C] (logits or probabilities; the argmax
            is the same) and is reduced by argmax. False: `y_pred` holds class ids [B, H, W].
        name: metric name in logs.

    Call arguments (`update_state`):
        y_true: [B, H, W] (or [B, H, W, 1]) int class ids, `ignore_label` for unknown pixels.
        y_pred: [B, H, W, C] scores or [B, H, W] class ids, see `from_logits`.
        sample_weight: optional, broadcastable to [B, H, W]; pixels of weight 0 are skipped and every other
            pixel counts once (the matrix holds pixel counts, not weighted sums).
    """

    def __init__(self, num_classes, ignore_label=255, from_logits=True, name="mean_iou", dtype=None):
        super().__init__(name=name, dtype=dtype)
        if int(num_classes) < 1:
            raise ValueError(f"MeanIoU needs num_classes >= 1, got {num_classes}.")
        self.num_classes = int(num_classes)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.from_logits = bool(from_logits)
        self.confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes), initializer="zeros", dtype="int64", name="confusion"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        c = self.num_classes
        y_true = ops.convert_to_tensor(y_true)
        y_pred = ops.convert_to_tensor(y_pred)
        expected_rank = len(y_pred.shape) - 1 if self.from_logits else len(y_pred.shape)
        if len(y_true.shape) == expected_rank + 1 and y_true.shape[-1] == 1:
            y_true = ops.squeeze(y_true, axis=-1)  # Keras pipelines often carry labels as [B, H, W, 1]
        if len(y_true.shape) != expected_rank:
            kind = "scores [B, H, W, C]" if self.from_logits else "class ids [B, H, W]"
            raise ValueError(
                f"MeanIoU(from_logits={self.from_logits}) expects y_pred as {kind} for labels y_true "
                f"{tuple(y_true.shape)}, got y_pred {tuple(y_pred.shape)}; set from_logits="
                f"{not self.from_logits} if y_pred holds {'class ids' if self.from_logits else 'scores'}."
            )
        if self.from_logits:
            if y_pred.shape[-1] is not None and y_pred.shape[-1] != c:
                raise ValueError(
                    f"MeanIoU(num_classes={c}) got y_pred with {y_pred.shape[-1]} channels; the model's "
                    "output must have one channel per class."
                )
            y_pred = ops.argmax(y_pred, axis=-1)
        y_true = ops.cast(y_true, "int32")
        y_pred = ops.cast(y_pred, "int32")

        valid = ops.ones_like(y_true, dtype="bool")
        if self.ignore_label is not None:
            valid = ops.not_equal(y_true, self.ignore_label)
        if sample_weight is not None:
            weight = ops.convert_to_tensor(sample_weight)
            # A per-image weight [B] broadcasts over the image.
            while len(weight.shape) < len(y_true.shape):
                weight = ops.expand_dims(weight, -1)
            valid = ops.logical_and(valid, ops.broadcast_to(ops.greater(weight, 0), ops.shape(y_true)))

        # Bad ids would otherwise be dropped or land in another cell without a word (XLA compiles these
        # checks away; eager and graph runs keep them).
        checks = [
            tf.debugging.assert_greater_equal(y_pred, 0, message="MeanIoU: predicted class id below 0"),
            tf.debugging.assert_less(y_pred, c, message=f"MeanIoU: predicted class id >= num_classes={c}"),
            tf.debugging.assert_equal(
                ops.logical_or(ops.logical_not(valid), ops.logical_and(y_true >= 0, y_true < c)),
                True,
                message=f"MeanIoU: label outside [0, {c}) that is not ignore_label={self.ignore_label}",
            ),
        ]
        with tf.control_dependencies(checks):
            index = ops.where(valid, y_true * c + y_pred, 0)
        counts = ops.segment_sum(
            ops.reshape(ops.cast(valid, "int32"), (-1,)), ops.reshape(index, (-1,)), num_segments=c * c
        )
        self.confusion.assign_add(ops.cast(ops.reshape(counts, (c, c)), "int64"))

    def result(self):
        confusion = ops.cast(self.confusion, "float32")
        tp = ops.diagonal(confusion)
        union = ops.sum(confusion, axis=0) + ops.sum(confusion, axis=1) - tp
        present = ops.cast(union > 0, "float32")
        iou = tp / ops.maximum(union, 1.0)
        return ops.cast(ops.sum(iou * present) / ops.maximum(ops.sum(present), 1.0), self.dtype)

    def reset_state(self):
        self.confusion.assign(ops.zeros((self.num_classes, self.num_classes), dtype="int64"))

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_classes": self.num_classes, "ignore_label": self.ignore_label, "from_logits": self.from_logits}
        )
        return config
