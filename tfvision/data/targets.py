"""Anchor matching and target encoding for anchor-based detectors (SSD, YOLO conv head, OverFeat-style heads).

Each anchor is assigned the ground-truth box it overlaps most (by IoU), if that overlap is high enough; the
detector then learns the matched box's class and its offset from the anchor (`ops.boxes.encode`). Both
functions are plain TensorFlow, so they run inside `tf.data` maps (after `.batch()`, batched) as well as
eagerly, and keep the anchor dimension static.

Matching rules (torchvision's `Matcher` and `SSDMatcher`, made deterministic):

1. Threshold match: anchor a takes its highest-IoU real ground truth n if IoU >= `positive_iou`; it is
   background (-1) if that IoU < `negative_iou` and ignored (-2) in between. Ties between ground truths go
   to the lower index.
2. Low-quality matches (`allow_low_quality=True`): every real ground truth n also claims the anchor(s) where
   its own IoU is highest, all anchors tied at that maximum, unless that maximum is 0. A claim overrides the
   threshold match (as SSD's "best default box per object" does), so every ground truth that overlaps some
   anchor keeps at least one anchor unless another ground truth wins it. When several ground truths claim
   one anchor, the one with the larger IoU at that anchor wins, then the lower index.
   (torchvision's `allow_low_quality_matches` instead gives a claimed anchor to the anchor's own best ground
   truth, which may leave the claiming ground truth with nothing.)

Padding rows (class < 0, e.g. -1) never match anything.
"""

from __future__ import annotations

import tensorflow as tf

from tfvision.ops import boxes as box_ops

# Match values other than a ground-truth index.
BACKGROUND = -1
IGNORE = -2


def _check_thresholds(positive_iou, negative_iou):
    """`negative_iou` resolved (None -> `positive_iou`) and checked against `positive_iou`."""
    negative_iou = positive_iou if negative_iou is None else negative_iou
    if negative_iou > positive_iou:
        raise ValueError(
            f"match_anchors(): negative_iou={negative_iou} is above positive_iou={positive_iou}; anchors with "
            "max IoU below negative_iou are background and those at or above positive_iou are positive, so "
            "negative_iou must be <= positive_iou (None means equal: no ignore band)."
        )
    return float(positive_iou), float(negative_iou)


def _standardize(gt_boxes, gt_classes, anchors, where):
    """Converts and checks inputs; returns batched `[B, N, 4]`, `[B, N]`, `[A, 4]` and whether input was batched."""
    gt_boxes = tf.cast(tf.convert_to_tensor(gt_boxes), tf.float32)
    gt_classes = tf.cast(tf.convert_to_tensor(gt_classes), tf.int32)
    anchors = tf.cast(tf.convert_to_tensor(anchors), tf.float32)
    rank = gt_boxes.shape.rank
    if rank not in (2, 3) or gt_boxes.shape[-1] not in (None, 4):
        raise ValueError(
            f"{where}: gt_boxes must be [B, N, 4] (or unbatched [N, 4]) yxyx pixels, got shape {gt_boxes.shape}."
        )
    if gt_classes.shape.rank != rank - 1:
        raise ValueError(
            f"{where}: gt_classes must be [B, N] (or [N]) to go with gt_boxes of shape {gt_boxes.shape}, got shape "
            f"{gt_classes.shape}."
        )
    if anchors.shape.rank != 2 or anchors.shape[-1] not in (None, 4):
        raise ValueError(f"{where}: anchors must be [A, 4] yxyx pixels, got shape {anchors.shape}.")
    batched = rank == 3
    if not batched:
        gt_boxes, gt_classes = gt_boxes[tf.newaxis], gt_classes[tf.newaxis]
    return gt_boxes, gt_classes, anchors, batched


def _lowest_index_where(mask, axis):
    """Index of the first True along `axis` (the size of that axis where none is True), int32."""
    size = tf.shape(mask)[axis]
    shape = [1] * mask.shape.rank
    shape[axis] = -1
    index = tf.reshape(tf.range(size, dtype=tf.int32), shape)
    return tf.reduce_min(tf.where(mask, index, size), axis=axis)


def _match(gt_boxes, gt_classes, anchors, positive_iou, negative_iou, allow_low_quality):
    """match_anchors on standardized, batched inputs: int32 `[B, A]`."""
    valid = gt_classes >= 0  # [B, N]
    iou = box_ops.iou(gt_boxes, anchors)  # [B, N, A]
    # Padding rows get -1, below any real IoU, so they never win a max; 0 would tie with real non-overlaps.
    iou = tf.where(valid[:, :, tf.newaxis], iou, -1.0)

    # 1. Threshold match on each anchor's best ground truth (lowest index among ties).
    # With N = 0, reduce_max gives the lowest float, so every anchor is background.
    max_iou = tf.reduce_max(iou, axis=1)  # [B, A]
    best_gt = _lowest_index_where(iou == max_iou[:, tf.newaxis, :], axis=1)  # [B, A]
    matches = tf.where(
        max_iou >= positive_iou,
        best_gt,
        tf.where(max_iou < negative_iou, tf.constant(BACKGROUND, tf.int32), tf.constant(IGNORE, tf.int32)),
    )
    if not allow_low_quality:
        return matches

    # 2. Each real ground truth claims the anchors at its highest IoU (if above 0).
    gt_max = tf.reduce_max(iou, axis=2, keepdims=True)  # [B, N, 1]; -1 for padding rows
    claims = tf.logical_and(iou == gt_max, gt_max > 0.0)  # [B, N, A]
    claim_iou = tf.where(claims, iou, -1.0)
    best_claim_iou = tf.reduce_max(claim_iou, axis=1)  # [B, A]
    winner = _lowest_index_where(tf.logical_and(claims, claim_iou == best_claim_iou[:, tf.newaxis, :]), axis=1)
    return tf.where(tf.reduce_any(claims, axis=1), winner, matches)


def match_anchors(
    gt_boxes, gt_classes, anchors, positive_iou=0.5, negative_iou=None, allow_low_quality=True
) -> tf.Tensor:
    """Assigns each anchor a ground-truth box, background, or ignore (rules in the module docstring).

    Args:
        gt_boxes: float `[B, N, 4]` (or unbatched `[N, 4]`) yxyx ground-truth boxes in pixels; padding rows
            allowed.
        gt_classes: int `[B, N]` (or `[N]`) class ids; rows with class < 0 (padding, -1) never match.
        anchors: float `[A, 4]` yxyx anchors in pixels, the same for every image.
        positive_iou: anchors whose best IoU is >= this are matched to that ground truth.
        negative_iou: anchors whose best IoU is < this are background; those in between are ignored.
            None means `positive_iou` (no ignore band, as SSD).
        allow_low_quality: also give every ground truth its best anchor(s), even below `positive_iou`.

    Returns:
        int32 `[B, A]` (or `[A]`): the matched ground-truth index n >= 0, -1 for background, -2 for ignore.

    Raises:
        ValueError: on wrongly shaped inputs or `negative_iou > positive_iou`.
    """
    positive_iou, negative_iou = _check_thresholds(positive_iou, negative_iou)
    gt_boxes, gt_classes, anchors, batched = _standardize(gt_boxes, gt_classes, anchors, "match_anchors()")
    matches = _match(gt_boxes, gt_classes, anchors, positive_iou, negative_iou, allow_low_quality)
    return matches if batched else matches[0]


def encode_anchor_targets(
    gt_boxes,
    gt_classes,
    anchors,
    *,
    positive_iou=0.5,
    negative_iou=None,
    allow_low_quality=True,
    box_weights=None,
) -> dict:
    """Per-anchor classification and box-regression targets from padded ground truth.

    Args:
        gt_boxes: float `[B, N, 4]` (or unbatched `[N, 4]`) yxyx ground-truth boxes in pixels.
        gt_classes: int `[B, N]` (or `[N]`) contiguous class ids 1..K, -1 for padding rows.
        anchors: float `[A, 4]` yxyx anchors in pixels.
        positive_iou, negative_iou, allow_low_quality: as in `match_anchors`.
        box_weights: the 4 box-coder weights (wy, wx, wh, ww) for `ops.boxes.encode`, e.g. (10, 10, 5, 5)
            for SSD's variances (0.1, 0.1, 0.2, 0.2); None means (1, 1, 1, 1).

    Returns:
        A dict:
            "box_targets": float32 `[B, A, 4]` (or `[A, 4]`), `encode(matched box, anchor, box_weights)` for
                positive anchors, 0 elsewhere.
            "class_targets": int32 `[B, A]` (or `[A]`), the matched class for positives, 0 for background,
                -1 for ignored anchors.
        An image without objects gives all background and zero (finite) box targets.
    """
    positive_iou, negative_iou = _check_thresholds(positive_iou, negative_iou)
    gt_boxes, gt_classes, anchors, batched = _standardize(gt_boxes, gt_classes, anchors, "encode_anchor_targets()")
    matches = _match(gt_boxes, gt_classes, anchors, positive_iou, negative_iou, allow_low_quality)
    positive = matches >= 0

    # Gather through one appended dummy row (index N) for non-positive anchors, so the gather is valid even
    # when N is 0; its values are masked away below.
    num_gt = tf.shape(gt_boxes)[1]
    gather_index = tf.where(positive, matches, num_gt)
    padded_boxes = tf.pad(gt_boxes, [[0, 0], [0, 1], [0, 0]])
    padded_classes = tf.pad(gt_classes, [[0, 0], [0, 1]])
    matched_boxes = tf.gather(padded_boxes, gather_index, batch_dims=1)  # [B, A, 4]
    matched_classes = tf.gather(padded_classes, gather_index, batch_dims=1)  # [B, A]

    deltas = box_ops.encode(matched_boxes, anchors[tf.newaxis], box_weights)
    box_targets = tf.where(positive[..., tf.newaxis], deltas, 0.0)
    class_targets = tf.where(positive, matched_classes, tf.where(matches == IGNORE, -1, 0))
    if not batched:
        box_targets, class_targets = box_targets[0], class_targets[0]
    return {"box_targets": box_targets, "class_targets": class_targets}
