"""What a two-stage detector trains on: the sampled anchors of the RPN, the sampled rois of the ROI head, and
the rois' targets (class, box deltas, mask).

Faster R-CNN does not train on every anchor or proposal: most are easy background. Each image contributes a
fixed number of samples with a capped share of foreground (the RPN 256 anchors, half foreground at most; the
ROI head 512 rois, a quarter foreground at most), chosen uniformly at random inside each group, the rest
filled with background. The choices need the ground truth *and* the model's proposals, so they run in the
model's loss (`FasterRCNN.losses_from`), not in `tf.data`. These are plain functions of tensors, batched, with
static output shapes; they hold no state, so unlike the other modules in `layers/` there is no Keras layer
here. Randomness: `seed` None draws from TF's global generator (different every step); an int makes the
choice reproducible (stateless ops), for tests.

Sampling rules (torchvision's `BalancedPositiveNegativeSampler` and `RoIHeads.select_training_samples`):
- foreground: `min(#candidates, floor(num_samples * fg_fraction))` drawn from the foreground candidates;
- background: `min(#candidates, num_samples - #foreground drawn)` from the background candidates;
- slots left over (too few candidates) are marked unused (-1): losses skip them.
"""

from __future__ import annotations

import math

import tensorflow as tf

from tfvision.ops import boxes as box_ops
from tfvision.ops import masks as mask_ops

# Labels of sampled anchors / rois.
UNUSED = -1


def _uniform(shape, seed):
    if seed is None:
        return tf.random.uniform(shape)
    return tf.random.stateless_uniform(shape, seed=tf.constant([int(seed), 0], tf.int64))


def random_subset(mask, count, seed=None) -> tf.Tensor:
    """A uniformly random choice of `count[b]` True entries of each row of `mask` (all of them if fewer).

    Args:
        mask: bool `[B, N]`, the candidates.
        count: int32 `[B]` (or a scalar), how many to choose per row.
        seed: None, or an int for a reproducible choice.

    Returns:
        bool `[B, N]`, True at the chosen entries (a subset of `mask`).
    """
    mask = tf.convert_to_tensor(mask)
    count = tf.cast(count, tf.int32)
    if count.shape.rank == 0:
        count = tf.fill(tf.shape(mask)[:1], count)
    key = tf.where(mask, _uniform(tf.shape(mask), seed), -1.0)
    order = tf.argsort(key, axis=-1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=-1, stable=True)  # the inverse permutation: each entry's place in the draw
    return mask & (rank < count[:, tf.newaxis])


def sample_anchors(matches, num_samples=256, fg_fraction=0.5, seed=None) -> tf.Tensor:
    """The RPN's training anchors: up to `num_samples` per image, at most `fg_fraction` of them positive.

    Args:
        matches: int32 `[B, A]` from `tfvision.data.targets.match_anchors`: gt index >= 0 (positive), -1
            background, -2 ignored (never sampled).
        num_samples: anchors per image. Defaults to 256.
        fg_fraction: the largest share of positives. Defaults to 0.5.
        seed: None or an int (module docstring).

    Returns:
        int32 `[B, A]`: 1 sampled positive, 0 sampled background, -1 not sampled.
    """
    matches = tf.cast(matches, tf.int32)
    foreground = matches >= 0
    background = matches == -1
    take_fg = random_subset(
        foreground, tf.minimum(_count(foreground), int(num_samples * fg_fraction)), seed
    )
    room = num_samples - _count(take_fg)
    take_bg = random_subset(background, tf.minimum(_count(background), room), None if seed is None else seed + 1)
    return tf.where(take_fg, 1, tf.where(take_bg, 0, UNUSED))


def sample_rois(
    proposals,
    proposal_valid,
    gt_boxes,
    gt_classes,
    *,
    num_samples=512,
    fg_fraction=0.25,
    fg_iou=0.5,
    bg_iou_high=0.5,
    bg_iou_low=0.0,
    add_gt=True,
    seed=None,
) -> dict:
    """The ROI head's training rois: `num_samples` per image from the proposals (plus the ground truth).

    A candidate is foreground if its best IoU with a ground-truth box is >= `fg_iou` (it then takes that box's
    class), background if that IoU is in [`bg_iou_low`, `bg_iou_high`); an image without objects has IoU 0
    everywhere (all background). Sampled rois come foreground first, then background, then unused slots.

    Args:
        proposals: float32 `[B, N, 4]` yxyx pixels (no gradient is taken through them).
        proposal_valid: bool `[B, N]`, False at padding rows.
        gt_boxes: float32 `[B, M, 4]` yxyx pixels.
        gt_classes: int32 `[B, M]`, 1..K, negative for padding.
        num_samples: R, rois per image. Defaults to 512.
        fg_fraction: the largest share of foreground rois. Defaults to 0.25.
        fg_iou, bg_iou_high, bg_iou_low: IoU thresholds (above). Defaults 0.5, 0.5, 0.0.
        add_gt: add the ground-truth boxes to the candidates (so early in training, when proposals are poor,
            the head still sees foreground). Defaults to True.
        seed: None or an int (module docstring).

    Returns:
        dict of `[B, R]`-leading tensors: `rois` float32 `[B, R, 4]`; `classes` int32 (1..K foreground, 0
        background, -1 unused slot); `matched_index` int32 (the ground-truth row of a foreground roi, else -1);
        `valid` bool (background or foreground, not unused); `max_iou` float32 (best IoU with the ground truth).
    """
    proposals = tf.stop_gradient(tf.cast(proposals, tf.float32))
    proposal_valid = tf.cast(proposal_valid, tf.bool)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    gt_classes = tf.cast(gt_classes, tf.int32)
    if gt_boxes.shape[1] == 0:  # no ground-truth rows at all: one padding row keeps the reductions defined
        gt_boxes = tf.zeros(tf.stack([tf.shape(gt_boxes)[0], 1, 4]))
        gt_classes = -tf.ones(tf.stack([tf.shape(gt_classes)[0], 1]), tf.int32)
    gt_valid = gt_classes >= 0
    candidates, candidate_valid = proposals, proposal_valid
    if add_gt:
        candidates = tf.concat([candidates, gt_boxes], axis=1)
        candidate_valid = tf.concat([candidate_valid, gt_valid], axis=1)
    shortfall = num_samples - tf.shape(candidates)[1]  # too few candidates for R slots: pad with unusable rows
    candidates = tf.pad(candidates, [[0, 0], [0, tf.maximum(shortfall, 0)], [0, 0]])
    candidate_valid = tf.pad(candidate_valid, [[0, 0], [0, tf.maximum(shortfall, 0)]])

    iou = box_ops.iou(candidates, gt_boxes)  # [B, C, M]
    iou = tf.where(gt_valid[:, tf.newaxis, :], iou, -1.0)
    max_iou = tf.maximum(tf.reduce_max(iou, axis=2), 0.0)  # no ground truth: IoU 0, background
    matched = tf.argmax(iou, axis=2, output_type=tf.int32)
    foreground = candidate_valid & (max_iou >= fg_iou)
    background = candidate_valid & (max_iou < bg_iou_high) & (max_iou >= bg_iou_low)
    max_fg = int(math.floor(num_samples * fg_fraction))
    take_fg = random_subset(foreground, tf.minimum(_count(foreground), max_fg), seed)
    room = num_samples - _count(take_fg)
    take_bg = random_subset(background, tf.minimum(_count(background), room), None if seed is None else seed + 1)

    # Slots: foreground, then background, then unused; top_k keeps candidate order among equals.
    key = tf.where(take_fg, 2, tf.where(take_bg, 1, 0))
    _, index = tf.math.top_k(key, num_samples)  # [B, R]
    is_fg = tf.gather(take_fg, index, batch_dims=1)
    is_used = tf.gather(take_fg | take_bg, index, batch_dims=1)
    matched = tf.gather(matched, index, batch_dims=1)
    classes = tf.where(is_fg, tf.gather(gt_classes, matched, batch_dims=1), tf.where(is_used, 0, UNUSED))
    rois = tf.gather(candidates, index, batch_dims=1)
    batch = proposals.shape[0]
    rois.set_shape([batch, num_samples, 4])
    return {
        "rois": rois,
        "classes": classes,
        "matched_index": tf.where(is_fg, matched, UNUSED),
        "valid": is_used,
        "max_iou": tf.gather(max_iou, index, batch_dims=1),
    }


def roi_box_targets(rois, gt_boxes, matched_index, box_weights=(10.0, 10.0, 5.0, 5.0)) -> tf.Tensor:
    """Box-regression targets of sampled rois: each roi's matched ground-truth box encoded against it.

    Args:
        rois: float32 `[B, R, 4]` yxyx pixels.
        gt_boxes: float32 `[B, M, 4]` yxyx pixels.
        matched_index: int32 `[B, R]` ground-truth row per roi (negative: no match; its target is meaningless
            and must be masked by the caller).
        box_weights: `(wy, wx, wh, ww)` of `ops.boxes.encode`. Defaults to Faster R-CNN's (10, 10, 5, 5).

    Returns:
        float32 `[B, R, 4]` deltas.
    """
    matched = tf.gather(tf.cast(gt_boxes, tf.float32), tf.maximum(matched_index, 0), batch_dims=1)
    return box_ops.encode(matched, rois, box_weights)


def roi_mask_targets(rois, gt_boxes, gt_mask_crops, matched_index, mask_size=28) -> tf.Tensor:
    """Mask targets of sampled rois: the matched ground-truth mask seen through each roi, `mask_size` square.

    Ground-truth masks arrive cropped to their own boxes (`ops.masks.crop_masks`, e.g. 56 x 56); the part of
    the crop under each roi is resampled with `tf.image.crop_and_resize` (via `ops.masks.resample_masks`) to
    `mask_size` and binarized at 0.5 (as Detectron2 does). Outside its box a ground-truth mask is 0.

    Args:
        rois: float32 `[B, R, 4]` yxyx pixels.
        gt_boxes: float32 `[B, M, 4]` yxyx pixels, the boxes the crops were taken over.
        gt_mask_crops: float `[B, M, m, m]` masks cropped to `gt_boxes`.
        matched_index: int32 `[B, R]` (negative: no match; the target is meaningless, mask it).
        mask_size: side of the targets. Defaults to 28.

    Returns:
        float32 `[B, R, mask_size, mask_size]` of 0 and 1.
    """
    rois = tf.cast(rois, tf.float32)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    crops = tf.cast(gt_mask_crops, tf.float32)
    shape = tf.shape(crops)
    batch, num_gt, crop_h, crop_w = shape[0], shape[1], shape[2], shape[3]
    matched = tf.maximum(tf.cast(matched_index, tf.int32), 0)
    box = tf.gather(gt_boxes, matched, batch_dims=1)  # [B, R, 4]
    # The roi in the crop's pixel coordinates (the crop spans its box with crop_h x crop_w pixels).
    scale_y = tf.cast(crop_h, tf.float32) / tf.maximum(box[..., 2] - box[..., 0], 1e-6)
    scale_x = tf.cast(crop_w, tf.float32) / tf.maximum(box[..., 3] - box[..., 1], 1e-6)
    in_crop = tf.stack(
        [
            (rois[..., 0] - box[..., 0]) * scale_y,
            (rois[..., 1] - box[..., 1]) * scale_x,
            (rois[..., 2] - box[..., 0]) * scale_y,
            (rois[..., 3] - box[..., 1]) * scale_x,
        ],
        axis=-1,
    )
    crop_index = tf.range(batch)[:, tf.newaxis] * num_gt + matched  # [B, R] rows of the flattened crops
    targets = mask_ops.resample_masks(
        tf.reshape(crops, [-1, crop_h, crop_w]), tf.reshape(in_crop, [-1, 4]), tf.reshape(crop_index, [-1]),
        (mask_size, mask_size),
    )
    targets = tf.reshape(targets, [batch, tf.shape(rois)[1], mask_size, mask_size])
    targets.set_shape(rois.shape[:2].concatenate([mask_size, mask_size]))
    return tf.cast(targets >= 0.5, tf.float32)


def _count(mask):
    return tf.reduce_sum(tf.cast(mask, tf.int32), axis=-1)
