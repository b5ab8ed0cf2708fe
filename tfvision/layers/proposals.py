"""`ProposalLayer`: the Faster R-CNN region proposal step, RPN outputs -> a fixed number of proposals per image.

Per image, as torchvision's `RegionProposalNetwork.filter_proposals` does:

1. keep the `pre_nms_top_n` anchors with the highest objectness, per pyramid level when `level_sizes` splits
   the anchors into levels (so that the many fine-level anchors cannot crowd out the coarse levels);
2. decode their deltas against the anchors (`ops.boxes.decode`, RPN weights 1, 1, 1, 1 by default);
3. clip them to the image and drop the tiny ones (height or width below `min_size` pixels);
4. non-maximum suppression at `nms_iou_threshold`, each level on its own;
5. keep the `post_nms_top_n` best survivors (over all levels), padded to exactly that many rows.

The counts differ in training and at test time (train_* / test_*), picked by the `training` call argument.
Outputs have static shapes `[B, post_nms_top_n, ...]` whatever the number of survivors, so the ROI head,
`tf.distribute` and export see fixed shapes. The proposals carry no gradient (`tf.stop_gradient`): Faster
R-CNN's approximate joint training does not differentiate the ROI head's loss through the box coordinates.
"""

from __future__ import annotations

import numbers

import keras
import tensorflow as tf

from tfvision.ops import boxes as box_ops
from tfvision.ops import nms as nms_ops


def _positive_int(value, name, where):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive int, got {value!r}.")
    return int(value)


@keras.saving.register_keras_serializable(package="tfvision")
class ProposalLayer(keras.layers.Layer):
    """Turns RPN objectness and box deltas into `post_nms_top_n` proposals per image (module docstring).

    Args:
        pre_nms_top_n_train, post_nms_top_n_train: anchors kept before NMS (per level) and proposals kept
            after it, in training. Defaults to 2000 and 2000.
        pre_nms_top_n_test, post_nms_top_n_test: the same at test time. Defaults to 1000 and 1000.
        nms_iou_threshold: NMS suppresses a proposal whose IoU with a better one exceeds this. Defaults to 0.7.
        min_size: proposals whose height or width (pixels, after clipping) is below this are dropped.
            Defaults to 1e-3.
        box_weights: the `(wy, wx, wh, ww)` the RPN deltas are encoded with; None means 1.
        level_sizes: anchors per pyramid level, in anchor order (e.g. `[16*16*3, 8*8*3]`); None means one level.

    Call arguments:
        inputs: list `[objectness, box_deltas, anchors, images]`:
            objectness: float `[B, A]` logits of "object", or `[B, A, 2]` two-class logits
                (background, object) as the lecture's 2k-score RPN emits.
            box_deltas: float `[B, A, 4]` deltas relative to the anchors.
            anchors: float32 `[A, 4]` yxyx pixel anchors, the order of the RPN's outputs.
            images: `[B, H, W, C]`, only their height and width are read (to clip to).
        training: picks the train or test counts.

    Returns:
        dict: `boxes` float32 `[B, N, 4]` yxyx pixels (padding rows 0), `scores` float32 `[B, N]` objectness
        probabilities, highest first (padding 0), `valid` bool `[B, N]`; N = `post_nms_top_n_train` in training,
        else `post_nms_top_n_test`.
    """

    def __init__(self, pre_nms_top_n_train=2000, post_nms_top_n_train=2000, pre_nms_top_n_test=1000,
                 post_nms_top_n_test=1000, nms_iou_threshold=0.7, min_size=1e-3, box_weights=None,
                 level_sizes=None, **kwargs):
        # Box arithmetic and NMS stay float32 under mixed_float16 (half precision moves corners).
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        where = f"ProposalLayer '{self.name}'"
        self.pre_nms_top_n_train = _positive_int(pre_nms_top_n_train, "pre_nms_top_n_train", where)
        self.post_nms_top_n_train = _positive_int(post_nms_top_n_train, "post_nms_top_n_train", where)
        self.pre_nms_top_n_test = _positive_int(pre_nms_top_n_test, "pre_nms_top_n_test", where)
        self.post_nms_top_n_test = _positive_int(post_nms_top_n_test, "post_nms_top_n_test", where)
        if not 0.0 <= float(nms_iou_threshold) <= 1.0:
            raise ValueError(f"{where}: nms_iou_threshold must be in [0, 1], got {nms_iou_threshold!r}.")
        if float(min_size) < 0:
            raise ValueError(f"{where}: min_size must be >= 0 pixels, got {min_size!r}.")
        if box_weights is not None:
            box_weights = [float(w) for w in box_weights]
            if len(box_weights) != 4 or min(box_weights) <= 0:
                raise ValueError(
                    f"{where}: box_weights must be 4 positive numbers (wy, wx, wh, ww), got {box_weights}."
                )
        if level_sizes is not None:
            level_sizes = [_positive_int(n, "level_sizes entries", where) for n in level_sizes]
            if not level_sizes:
                raise ValueError(f"{where}: level_sizes must be None or a non-empty list of anchor counts.")
        self.nms_iou_threshold = float(nms_iou_threshold)
        self.min_size = float(min_size)
        self.box_weights = box_weights
        self.level_sizes = level_sizes
        self.supports_jit = False  # NMS has no XLA kernel

    def counts(self, training) -> tuple[int, int]:
        """(pre_nms_top_n, post_nms_top_n) for training (True) or test time."""
        if training:
            return self.pre_nms_top_n_train, self.post_nms_top_n_train
        return self.pre_nms_top_n_test, self.post_nms_top_n_test

    def _split(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 4:
            raise ValueError(
                f"ProposalLayer '{self.name}' must be called on [objectness, box_deltas, anchors, images] "
                f"(objectness [B, A] or [B, A, 2], box_deltas [B, A, 4], anchors [A, 4], images [B, H, W, C]); "
                f"got {type(inputs).__name__}{'' if not isinstance(inputs, (list, tuple)) else f' of {len(inputs)}'}."
            )
        return inputs

    def _check_shapes(self, objectness, deltas, anchors, images):
        where = f"ProposalLayer '{self.name}'"
        objectness, deltas, anchors, images = (tuple(s) for s in (objectness, deltas, anchors, images))
        if len(objectness) not in (2, 3) or (len(objectness) == 3 and objectness[-1] not in (None, 2)):
            raise ValueError(f"{where}: objectness must be [B, A] or [B, A, 2] logits; got shape {objectness}.")
        if len(deltas) != 3 or deltas[-1] not in (None, 4):
            raise ValueError(f"{where}: box_deltas must be [B, A, 4]; got shape {deltas}.")
        if len(anchors) != 2 or anchors[-1] not in (None, 4):
            raise ValueError(f"{where}: anchors must be [A, 4] yxyx pixels; got shape {anchors}.")
        if len(images) != 4:
            raise ValueError(f"{where}: images must be [B, H, W, C]; got shape {images}.")
        counts = {objectness[1], deltas[1], anchors[0]} - {None}
        if len(counts) > 1:
            raise ValueError(
                f"{where}: objectness, box_deltas and anchors disagree on the number of anchors A: shapes "
                f"{objectness}, {deltas}, {anchors}. The RPN must emit one score and one delta per anchor."
            )
        if self.level_sizes is not None and counts and sum(self.level_sizes) != counts.pop():
            raise ValueError(
                f"{where}: level_sizes {self.level_sizes} sum to {sum(self.level_sizes)} anchors, but the inputs "
                f"have {anchors[0]}."
            )

    def build(self, input_shape):
        self._check_shapes(*self._split(input_shape))

    def call(self, inputs, training=None):
        objectness, deltas, anchors, images = self._split(inputs)
        self._check_shapes(objectness.shape, deltas.shape, anchors.shape, images.shape)
        pre_nms, post_nms = self.counts(bool(training))
        logits = tf.cast(objectness, tf.float32)
        if logits.shape.rank == 3:
            logits = logits[..., 1] - logits[..., 0]  # softmax([l0, l1])[1] == sigmoid(l1 - l0)
        logits = tf.stop_gradient(logits)
        deltas = tf.stop_gradient(tf.cast(deltas, tf.float32))
        anchors = tf.cast(anchors, tf.float32)
        image_size = tf.shape(images)[1:3]

        # 1. The best pre_nms anchors of each level, tagged with their level (the NMS group).
        sizes = self.level_sizes or [None]
        starts = [0]
        for size in sizes[:-1]:
            starts.append(starts[-1] + size)
        picked_logits, picked_deltas, picked_anchors, picked_levels = [], [], [], []
        for level, (start, size) in enumerate(zip(starts, sizes)):
            level_logits = logits if size is None else logits[:, start:start + size]
            count = level_logits.shape[1]
            k = min(pre_nms, count) if count is not None else tf.minimum(pre_nms, tf.shape(level_logits)[1])
            top_logits, index = tf.math.top_k(level_logits, k)  # [B, k]
            level_deltas = deltas if size is None else deltas[:, start:start + size]
            level_anchors = anchors if size is None else anchors[start:start + size]
            picked_logits.append(top_logits)
            picked_deltas.append(tf.gather(level_deltas, index, batch_dims=1))
            picked_anchors.append(tf.gather(level_anchors, index))
            picked_levels.append(tf.fill(tf.shape(index), level))
        top_logits = tf.concat(picked_logits, axis=1)
        # 2-3. Decode, clip, drop tiny boxes (their group becomes -1: ignored by NMS).
        decoded = box_ops.decode(tf.concat(picked_deltas, 1), tf.concat(picked_anchors, 1), self.box_weights)
        boxes = box_ops.clip(decoded, image_size)
        levels = tf.concat(picked_levels, axis=1)
        keep = box_ops.is_valid(boxes, 0.0) & _min_side(boxes, self.min_size)
        levels = tf.where(keep, levels, -1)
        scores = tf.sigmoid(top_logits)
        # 4-5. NMS per level, the post_nms best over all levels, padded.
        result = nms_ops.padded_batched_nms(
            boxes, scores, levels, max_detections=post_nms, iou_threshold=self.nms_iou_threshold,
            score_threshold=None, pre_nms_top_k=None,
        )
        valid = tf.range(post_nms)[tf.newaxis, :] < result["num_detections"][:, tf.newaxis]
        batch = objectness.shape[0]
        out_boxes = tf.stop_gradient(result["boxes"])
        out_boxes.set_shape([batch, post_nms, 4])
        out_scores = tf.stop_gradient(result["scores"])
        out_scores.set_shape([batch, post_nms])
        valid.set_shape([batch, post_nms])
        return {"boxes": out_boxes, "scores": out_scores, "valid": valid}

    def compute_output_spec(self, inputs, training=None):
        objectness, deltas, anchors, images = self._split(inputs)
        self._check_shapes(objectness.shape, deltas.shape, anchors.shape, images.shape)
        _, post_nms = self.counts(bool(training))
        batch = objectness.shape[0]
        return {
            "boxes": keras.KerasTensor((batch, post_nms, 4), dtype="float32"),
            "scores": keras.KerasTensor((batch, post_nms), dtype="float32"),
            "valid": keras.KerasTensor((batch, post_nms), dtype="bool"),
        }

    def get_config(self):
        config = super().get_config()
        config.update({
            "pre_nms_top_n_train": self.pre_nms_top_n_train,
            "post_nms_top_n_train": self.post_nms_top_n_train,
            "pre_nms_top_n_test": self.pre_nms_top_n_test,
            "post_nms_top_n_test": self.post_nms_top_n_test,
            "nms_iou_threshold": self.nms_iou_threshold,
            "min_size": self.min_size,
            "box_weights": self.box_weights,
            "level_sizes": self.level_sizes,
        })
        return config


def _min_side(boxes, min_size):
    """bool `[...]`: both sides of the yxyx boxes are at least `min_size`."""
    height = boxes[..., 2] - boxes[..., 0]
    width = boxes[..., 3] - boxes[..., 1]
    return (height >= min_size) & (width >= min_size)
