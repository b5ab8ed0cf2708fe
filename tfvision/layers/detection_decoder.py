"""`DetectionDecoder`: a detector's raw per-anchor outputs to final, padded detections, inside the graph.

It decodes box deltas against anchors (the R-CNN parametrization of `ops.boxes.decode`), clips boxes to the
image, applies per-class score thresholds and runs batched multi-class NMS (`ops.nms.padded_batched_nms`), so
the same graph runs in `model.predict`, under `tf.distribute` and in an exported SavedModel.
"""

from __future__ import annotations

import numbers

import keras
import tensorflow as tf

from tfvision.ops import boxes as box_ops
from tfvision.ops import nms as nms_ops


@keras.saving.register_keras_serializable(package="tfvision")
class DetectionDecoder(keras.layers.Layer):
    """Decodes boxes and keeps the best non-overlapping ones per image and class.

    Args:
        max_detections: K, the fixed number of output rows per image (padding after the valid ones).
        iou_threshold: NMS suppresses a box whose IoU with a better one of its class exceeds this.
        score_threshold: a float, or one float per foreground class; a (box, class) pair is a candidate
            only if its score exceeds its class's threshold.
        pre_nms_top_k: at most this many candidates per image enter NMS (bounds the work); None keeps all.
        class_agnostic: boxes of different classes suppress each other too.
        soft_nms_sigma: 0 for hard NMS; > 0 for Gaussian soft-NMS (scores decay instead of vanishing).
        box_weights: the `(wy, wx, wh, ww)` weights the deltas were encoded with (e.g. SSD's 10, 10, 5, 5);
            None means 1.

    Call arguments:
        boxes: float `[B, N, 4]` box deltas when `anchors` is given, else decoded yxyx boxes in pixels
            (`[B, N, C, 4]` for class-specific boxes).
        scores: float `[B, N, C]` probabilities of the C foreground classes (column c is class id c + 1).
        anchors: optional float32 `[N, 4]` yxyx pixel anchors the deltas are relative to.
        image_size: optional `(height, width)` of the network input; boxes are clipped to it.

    Returns:
        dict of batch-major tensors: `boxes` float32 `[B, K, 4]` yxyx pixels, `scores` float32 `[B, K]`
        (highest first), `classes` int32 `[B, K]` (1..C, -1 for padding), `num_detections` int32 `[B]`.
    """

    def __init__(self, max_detections=100, iou_threshold=0.5, score_threshold=0.05, pre_nms_top_k=1000,
                 class_agnostic=False, soft_nms_sigma=0.0, box_weights=None, **kwargs):
        # NMS and box arithmetic stay float32 whatever the policy: half precision moves corners on big images.
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        where = f"DetectionDecoder '{self.name}'"
        if not isinstance(max_detections, numbers.Integral) or max_detections < 1:
            raise ValueError(f"{where}: max_detections must be a positive int, got {max_detections!r}.")
        if pre_nms_top_k is not None and (not isinstance(pre_nms_top_k, numbers.Integral) or pre_nms_top_k < 1):
            raise ValueError(f"{where}: pre_nms_top_k must be a positive int or None, got {pre_nms_top_k!r}.")
        if not 0.0 <= float(iou_threshold) <= 1.0:
            raise ValueError(f"{where}: iou_threshold must be in [0, 1], got {iou_threshold!r}.")
        if float(soft_nms_sigma) < 0:
            raise ValueError(f"{where}: soft_nms_sigma must be >= 0 (0 = hard NMS), got {soft_nms_sigma!r}.")
        if isinstance(score_threshold, (list, tuple)):
            score_threshold = [float(t) for t in score_threshold]
            if not score_threshold:
                raise ValueError(f"{where}: score_threshold is an empty list; give a float or one per class.")
        else:
            score_threshold = float(score_threshold)
        if box_weights is not None:
            box_weights = [float(w) for w in box_weights]
            if len(box_weights) != 4 or min(box_weights) <= 0:
                raise ValueError(f"{where}: box_weights must be 4 positive numbers (wy, wx, wh, ww), got {box_weights}.")
        self.max_detections = int(max_detections)
        self.iou_threshold = float(iou_threshold)
        self.score_threshold = score_threshold
        self.pre_nms_top_k = None if pre_nms_top_k is None else int(pre_nms_top_k)
        self.class_agnostic = bool(class_agnostic)
        self.soft_nms_sigma = float(soft_nms_sigma)
        self.box_weights = box_weights
        self.supports_jit = False  # NMS has no XLA kernel

    def call(self, boxes, scores, anchors=None, image_size=None):
        boxes = tf.cast(boxes, tf.float32)
        scores = tf.cast(scores, tf.float32)
        if anchors is not None:
            boxes = box_ops.decode(boxes, tf.cast(anchors, tf.float32), self.box_weights)
        if image_size is not None:
            boxes = box_ops.clip(boxes, image_size)
        threshold = self.score_threshold
        if isinstance(threshold, list):
            num_classes = scores.shape[-1]
            if num_classes is not None and num_classes != len(threshold):
                raise ValueError(
                    f"DetectionDecoder '{self.name}': {len(threshold)} per-class score thresholds for "
                    f"{num_classes} classes; give one threshold per foreground class."
                )
            # Pairs at or below their class's threshold get score 0, which no threshold >= 0 keeps.
            scores = tf.where(scores > tf.constant(threshold, tf.float32), scores, 0.0)
            threshold = max(0.0, min(threshold))
        detections = nms_ops.padded_batched_nms(
            boxes, scores, max_detections=self.max_detections, iou_threshold=self.iou_threshold,
            score_threshold=threshold, pre_nms_top_k=self.pre_nms_top_k, class_agnostic=self.class_agnostic,
            soft_nms_sigma=self.soft_nms_sigma, class_offset=1,
        )
        return {key: detections[key] for key in ("boxes", "scores", "classes", "num_detections")}

    def get_config(self):
        config = super().get_config()
        config.update({
            "max_detections": self.max_detections,
            "iou_threshold": self.iou_threshold,
            "score_threshold": self.score_threshold,
            "pre_nms_top_k": self.pre_nms_top_k,
            "class_agnostic": self.class_agnostic,
            "soft_nms_sigma": self.soft_nms_sigma,
            "box_weights": self.box_weights,
        })
        return config


def decoder_from_config(detection_config, box_weights=None, name="decoder") -> DetectionDecoder:
    """A `DetectionDecoder` with the settings of a `tfvision.config.DetectionConfig`."""
    return DetectionDecoder(
        max_detections=detection_config.max_detections,
        iou_threshold=detection_config.iou_threshold,
        score_threshold=detection_config.score_threshold,
        pre_nms_top_k=detection_config.pre_nms_top_k,
        class_agnostic=detection_config.class_agnostic,
        soft_nms_sigma=detection_config.soft_nms_sigma,
        box_weights=box_weights,
        name=name,
    )
