"""Training regions for R-CNN and Fast R-CNN: proposals labelled by their overlap with the ground truth, sampled.

Labelling (`label_regions`; Girshick et al. 2014, Girshick 2015): each region takes the ground-truth box it
overlaps most (IoU, ties to the lower index).

- foreground: IoU >= `fg_iou` (0.5): the class of that box, and the regression target
  `ops.boxes.encode(box, region, box_weights)` that moves the region onto it;
- background: IoU in [`bg_iou_low`, `fg_iou`) (0.1 .. 0.5): class 0. Fast R-CNN's lower bound keeps the
  negatives near objects, "a heuristic for hard example mining";
- below `bg_iou_low`: not a preferred training region (label -1), but see the fill rule below.

Sampling (`sample_regions`), per image: the ground-truth boxes are added to the proposals (both papers do:
they are the best foreground there is, and an image whose proposals miss an object still teaches it); then
up to `fg_fraction * num_regions` foreground regions are drawn at random, and the rest of the
`num_regions` from the background. When an image has too few regions in [`bg_iou_low`, `fg_iou`) and
`fill_background` is set, the background is topped up with regions below `bg_iou_low`, so that images
without objects (or with proposals far from them) still teach "background"; torchvision's Fast R-CNN
head takes its negatives from all of IoU < 0.5 for the same reason. Rows that remain (fewer usable
regions than `num_regions`) are padding with class target -1, which the losses skip.

Regions are clipped to the image first; regions left empty (e.g. wholly outside it) are never sampled.

Why not `data.targets.match_anchors`: it matches one set of anchors shared by the batch, while proposals
differ per image; the labelling here is the same rule on per-image regions (batched IoU), and the box
targets come from the same `ops.boxes.encode`.

Everything is plain TensorFlow on batched, padded tensors with static shapes, so it runs in `tf.data` after
`.batch()`; the random draws are stateless (from a `seed`), so a pipeline is reproducible.
"""

from __future__ import annotations

import tensorflow as tf

from tfvision.ops import boxes as box_ops

BELOW_BACKGROUND = -1  # label of regions under bg_iou_low (and of empty ones)


def _check(fg_iou, bg_iou_low, where):
    if not 0.0 <= bg_iou_low <= fg_iou <= 1.0 or fg_iou <= 0.0:
        raise ValueError(
            f"{where}: need 0 <= bg_iou_low <= fg_iou <= 1 and fg_iou > 0 (foreground at IoU >= fg_iou, "
            f"background in [bg_iou_low, fg_iou)); got fg_iou={fg_iou}, bg_iou_low={bg_iou_low}."
        )


def _batched(regions, gt_boxes, gt_classes, where):
    regions = tf.cast(tf.convert_to_tensor(regions), tf.float32)
    gt_boxes = tf.cast(tf.convert_to_tensor(gt_boxes), tf.float32)
    gt_classes = tf.cast(tf.convert_to_tensor(gt_classes), tf.int32)
    if regions.shape.rank != 3 or regions.shape[-1] not in (None, 4):
        raise ValueError(f"{where}: regions must be [B, P, 4] yxyx pixels, got shape {regions.shape}.")
    if gt_boxes.shape.rank != 3 or gt_boxes.shape[-1] not in (None, 4):
        raise ValueError(f"{where}: gt_boxes must be [B, N, 4] yxyx pixels, got shape {gt_boxes.shape}.")
    if gt_classes.shape.rank != 2:
        raise ValueError(f"{where}: gt_classes must be [B, N] (-1 padding), got shape {gt_classes.shape}.")
    return regions, gt_boxes, gt_classes


def label_regions(regions, gt_boxes, gt_classes, fg_iou=0.5, bg_iou_low=0.1, image_size=None) -> dict:
    """Labels each region by its best IoU with the image's ground truth (module docstring).

    Args:
        regions: float `[B, P, 4]` yxyx pixel boxes (proposals).
        gt_boxes: float `[B, N, 4]` yxyx pixel ground truth; rows with class < 0 are padding.
        gt_classes: int `[B, N]`, 1..K, -1 padding.
        fg_iou: foreground at IoU >= this.
        bg_iou_low: background at IoU in [bg_iou_low, fg_iou).
        image_size: optional `(height, width)`; regions are clipped to it first.

    Returns:
        dict of `[B, P]` tensors: "labels" int32 (1..K foreground, 0 background, -1 below `bg_iou_low` or
        empty), "matched" int32 (index of the best ground truth, -1 when there is none), "max_iou" float32
        (0 without ground truth), "valid" bool (non-empty region); and "regions" float32 `[B, P, 4]`, the
        (clipped) regions.
    """
    _check(fg_iou, bg_iou_low, "label_regions")
    regions, gt_boxes, gt_classes = _batched(regions, gt_boxes, gt_classes, "label_regions")
    if image_size is not None:
        regions = box_ops.clip(regions, image_size)
    valid = box_ops.is_valid(regions)
    real = gt_classes >= 0  # [B, N]
    iou = box_ops.iou(regions, gt_boxes)  # [B, P, N]
    iou = tf.where(real[:, tf.newaxis, :], iou, -1.0)  # padding never wins
    # Appending a column of 0 keeps reduce_max / argmax defined when N = 0 and makes "no ground truth" IoU 0.
    iou = tf.concat([iou, tf.zeros_like(iou[..., :1])], axis=-1)
    max_iou = tf.reduce_max(iou, axis=-1)
    best = tf.argmax(iou, axis=-1, output_type=tf.int32)  # first maximum: ties go to the lower index
    num_gt = tf.shape(gt_boxes)[1]
    has_match = (best < num_gt) & (max_iou > 0.0)
    matched = tf.where(has_match, best, -1)
    matched_class = tf.gather(tf.pad(gt_classes, [[0, 0], [0, 1]]), tf.maximum(matched, 0), batch_dims=1)
    labels = tf.where(
        valid & has_match & (max_iou >= fg_iou),
        matched_class,
        tf.where(valid & (max_iou >= bg_iou_low) & (max_iou < fg_iou), 0, BELOW_BACKGROUND),
    )
    return {"labels": labels, "matched": matched, "max_iou": tf.maximum(max_iou, 0.0), "valid": valid,
            "regions": regions}


def _first_k(keys, k):
    """Indices of the k largest `keys` `[B, M]` per row (ties to the lower index) and whether each is > -1."""
    values, indices = tf.math.top_k(keys, k=k, sorted=True)
    return indices, values > -1.0


def sample_regions(
    proposals,
    gt_boxes,
    gt_classes,
    *,
    num_regions: int,
    image_size,
    fg_fraction: float = 0.25,
    fg_iou: float = 0.5,
    bg_iou_low: float = 0.1,
    add_gt: bool = True,
    fill_background: bool = True,
    box_weights=None,
    seed=None,
) -> dict:
    """Draws a fixed number of labelled training regions per image (module docstring).

    Args:
        proposals: float `[B, P, 4]` yxyx pixel proposals.
        gt_boxes: float `[B, N, 4]` yxyx pixel ground truth; gt_classes int `[B, N]` (1..K, -1 padding).
        num_regions: R, the regions per image (static).
        image_size: `(height, width)` of the images; proposals and ground truth are clipped to it.
        fg_fraction: at most this fraction of R is foreground (Fast R-CNN: 0.25).
        fg_iou, bg_iou_low: the labelling thresholds of `label_regions`.
        add_gt: add the ground-truth boxes to the proposals.
        fill_background: top up the background with regions below `bg_iou_low` when there are too few in
            [bg_iou_low, fg_iou).
        box_weights: the box coder's (wy, wx, wh, ww) for `ops.boxes.encode`; None means 1.
        seed: int `[2]` stateless seed of the draw; None draws one (not reproducible).

    Returns:
        dict: "rois" float32 `[B, R, 4]` yxyx pixels (padding rows 0), "class_targets" int32 `[B, R]` (1..K
        foreground, 0 background, -1 padding), "box_targets" float32 `[B, R, 4]` (encoded deltas from the
        roi to its ground truth for foreground rows, 0 elsewhere). Foreground rows come first.
    """
    _check(fg_iou, bg_iou_low, "sample_regions")
    if isinstance(num_regions, bool) or not isinstance(num_regions, int) or num_regions < 1:
        raise ValueError(f"sample_regions: num_regions must be a positive int, got {num_regions!r}.")
    if not 0.0 <= fg_fraction <= 1.0:
        raise ValueError(f"sample_regions: fg_fraction must be in [0, 1], got {fg_fraction!r}.")
    proposals, gt_boxes, gt_classes = _batched(proposals, gt_boxes, gt_classes, "sample_regions")
    gt_boxes = box_ops.clip(gt_boxes, image_size)
    candidates = proposals
    usable = tf.ones_like(proposals[..., 0], tf.bool)
    if add_gt:
        # Padding rows of the ground truth (class -1: padding, or crowd regions left out) are no candidates.
        candidates = tf.concat([gt_boxes, proposals], axis=1)
        usable = tf.concat([gt_classes >= 0, usable], axis=1)
    count = candidates.shape[1]
    if count is None:
        raise ValueError("sample_regions: the number of proposals (and ground-truth rows) must be static.")
    if count < num_regions:  # top_k needs at least R candidates; the added rows are never drawn
        candidates = tf.pad(candidates, [[0, 0], [0, num_regions - count], [0, 0]])
        usable = tf.pad(usable, [[0, 0], [0, num_regions - count]])
    labelled = label_regions(candidates, gt_boxes, gt_classes, fg_iou, bg_iou_low, image_size)
    labels, regions = labelled["labels"], labelled["regions"]

    seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64) if seed is None else seed
    fg_seed, bg_seed = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
    shape = tf.shape(labels)
    foreground = usable & (labels > 0)
    hard_background = usable & (labels == 0)
    low_background = usable & labelled["valid"] & (labels == BELOW_BACKGROUND)
    # Random keys in [0, 1); -1 marks regions not in a pool, so top_k takes pool members in random order.
    fg_keys = tf.where(foreground, tf.random.stateless_uniform(shape, fg_seed), -1.0)
    bg_random = tf.random.stateless_uniform(shape, bg_seed)
    bg_keys = tf.where(hard_background, 1.0 + bg_random, -1.0)  # hard background before the fill
    if fill_background:
        bg_keys = tf.where(low_background, bg_random, bg_keys)

    max_fg = int(round(fg_fraction * num_regions))
    num_fg = tf.minimum(tf.reduce_sum(tf.cast(foreground, tf.int32), axis=1), max_fg)  # [B]
    fg_index, fg_ok = _first_k(fg_keys, num_regions)
    bg_index, bg_ok = _first_k(bg_keys, num_regions)
    rank = tf.range(num_regions)[tf.newaxis, :]
    fg_take = fg_ok & (rank < num_fg[:, tf.newaxis])
    bg_take = bg_ok & (rank < num_regions - num_fg[:, tf.newaxis])
    # Foreground first, then background, then padding: a stable sort of the 2R picks by "not taken".
    index = tf.concat([fg_index, bg_index], axis=1)
    take = tf.concat([fg_take, bg_take], axis=1)
    order = tf.argsort(tf.cast(~take, tf.int32), axis=1, stable=True)[:, :num_regions]
    picked = tf.gather(index, order, batch_dims=1)
    kept = tf.gather(take, order, batch_dims=1)

    rois = tf.where(kept[..., tf.newaxis], tf.gather(regions, picked, batch_dims=1), 0.0)
    roi_labels = tf.gather(labels, picked, batch_dims=1)
    class_targets = tf.where(kept, tf.maximum(roi_labels, 0), -1)
    matched = tf.gather(labelled["matched"], picked, batch_dims=1)
    matched_boxes = tf.gather(gt_boxes, tf.maximum(matched, 0), batch_dims=1)
    deltas = box_ops.encode(matched_boxes, rois, box_weights)
    box_targets = tf.where((class_targets > 0)[..., tf.newaxis], deltas, 0.0)
    return {"rois": rois, "class_targets": class_targets, "box_targets": box_targets}
