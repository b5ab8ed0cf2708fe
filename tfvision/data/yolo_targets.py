"""YOLO training targets, encoded from padded ground truth inside `tf.data`: v1 grid cells and v3 priors.

YOLOv1 (Redmon et al., 2016) divides the image into an S x S grid; the cell that holds an object's centre is
responsible for it. `encode_yolov1_targets` gives each cell at most one object, in the paper's terms:

    x, y: the object's centre as an offset inside its cell, in [0, 1) (x along the width, first);
    w, h: the object's width and height as fractions of the image width and height.

YOLOv3 (Redmon & Farhadi, 2018) predicts at every cell of three feature maps (strides 8, 16, 32), once per
prior (a (w, h) box shape in pixels, A per level). `encode_yolov3_targets` assigns each object to the one
prior whose shape fits it best (IoU of the two boxes centred on each other) at the cell of the object's
centre on that prior's level (optionally also to other priors that fit it well enough: `assign_iou`); every other
prediction is a negative (or ignored, which the loss decides).

One object per slot (cell, or cell and prior): when several objects fall on the same slot, the one with the
largest box area keeps it, and among equal areas the one listed first; the others get no target (as in the
papers, where a cell or prior can only predict one object).

Both encoders are pure TensorFlow on batched inputs (`boxes [B, N, 4]` yxyx pixels, `classes [B, N]` int32,
1..K, -1 = padding) with static output shapes, so they run after `.batch()` in a `tf.data` map. A row is an
object when its class is >= 1 and its box has positive width and height.

`yolov3_prior_table` is the flat order in which the YOLOv3 head emits its predictions; the model's decoding and
these targets both follow it.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfvision.data.transforms import check_output_size

# YOLOv3's COCO priors (k-means on COCO boxes at 416 x 416), (w, h) pixels, 3 per level, stride 8 first.
YOLOV3_COCO_PRIORS = (
    (10.0, 13.0), (16.0, 30.0), (33.0, 23.0),
    (30.0, 61.0), (62.0, 45.0), (59.0, 119.0),
    (116.0, 90.0), (156.0, 198.0), (373.0, 326.0),
)
YOLOV3_PRIOR_SIZE = 416  # the input size the COCO priors were made for
YOLOV3_STRIDES = (8, 16, 32)

# Columns of the prior table.
TABLE_COLUMNS = ("col", "row", "stride", "prior_w", "prior_h")


def default_priors(image_size) -> tuple[tuple[float, float], ...]:
    """YOLOv3's 9 COCO priors scaled from 416 px to `image_size` (int or (height, width))."""
    height, width = check_output_size(image_size, "default_priors", "image_size")
    return tuple((w * width / YOLOV3_PRIOR_SIZE, h * height / YOLOV3_PRIOR_SIZE) for w, h in YOLOV3_COCO_PRIORS)


def check_priors(priors, strides, where="model.yolo.anchors") -> tuple[tuple[float, float], ...]:
    """`priors` as a tuple of (w, h) float pairs, the same number per level; a ValueError otherwise."""
    priors = tuple(tuple(float(v) for v in p) for p in priors)
    if not priors or len(priors) % len(strides) or any(len(p) != 2 or min(p) <= 0 for p in priors):
        raise ValueError(
            f"{where}: need (w, h) pairs of positive pixel sizes, the same number for each of the {len(strides)} "
            f"levels (strides {list(strides)}), e.g. 3 per level as YOLOv3; got {[list(p) for p in priors]}."
        )
    return priors


def yolov3_grid_sizes(image_size, strides=YOLOV3_STRIDES) -> list[tuple[int, int]]:
    """`(rows, cols)` of each level's grid; the image sides must be multiples of every stride."""
    height, width = check_output_size(image_size, "yolov3_grid_sizes", "image_size")
    for stride in strides:
        if height % stride or width % stride:
            raise ValueError(
                f"YOLOv3: image size {height}x{width} is not a multiple of stride {stride}; use a data.image_size "
                f"divisible by {max(strides)} (e.g. {max(strides) * max(1, round(height / max(strides)))})."
            )
    return [(height // s, width // s) for s in strides]


def yolov3_prior_table(image_size, strides=YOLOV3_STRIDES, priors=None) -> np.ndarray:
    """The YOLOv3 head's predictions in emission order, one row per prediction.

    Order: level (stride 8 first), then grid row, then grid column, then the level's priors in order, i.e.
    a level's `[rows, cols, A, 5 + K]` head output flattened row-major.

    Args:
        image_size: int or (height, width), multiples of every stride.
        strides: the levels' strides.
        priors: (w, h) pixel pairs, A per level, the first A for the first level; None = `default_priors`.

    Returns:
        float32 `[P, 5]` with columns `TABLE_COLUMNS`: the cell's column and row index, the level's stride,
        the prior's width and height in pixels. P = sum over levels of rows * cols * A.
    """
    strides = tuple(int(s) for s in strides)
    priors = check_priors(default_priors(image_size) if priors is None else priors, strides)
    per_level = len(priors) // len(strides)
    tables = []
    for level, ((rows, cols), stride) in enumerate(zip(yolov3_grid_sizes(image_size, strides), strides)):
        row, col, prior = np.meshgrid(np.arange(rows), np.arange(cols), np.arange(per_level), indexing="ij")
        level_priors = np.asarray(priors[level * per_level:(level + 1) * per_level], np.float32)
        table = np.stack(
            [col.ravel(), row.ravel(), np.full(row.size, stride), *level_priors[prior.ravel()].T], axis=-1
        )
        tables.append(table.astype(np.float32))
    return np.concatenate(tables, axis=0)


def _standardize(boxes, classes, num_classes, where):
    """float32 boxes `[B, N, 4]`, int32 classes `[B, N]`, bool `valid [B, N]`, with shape checks."""
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    classes = tf.cast(tf.convert_to_tensor(classes), tf.int32)
    if boxes.shape.rank != 3 or boxes.shape[-1] != 4 or classes.shape.rank != 2:
        raise ValueError(
            f"{where}: takes batched boxes [B, N, 4] (yxyx pixels) and classes [B, N]; got shapes {boxes.shape} "
            f"and {classes.shape}. Apply it after .batch()."
        )
    check = tf.debugging.assert_less_equal(
        classes, num_classes, message=f"{where}: a class id exceeds model.num_classes={num_classes}"
    )
    with tf.control_dependencies([check]):
        classes = tf.identity(classes)
    heights = boxes[..., 2] - boxes[..., 0]
    widths = boxes[..., 3] - boxes[..., 1]
    valid = (classes >= 1) & (heights > 0) & (widths > 0)
    return boxes, classes, valid


def _one_per_slot(slots, valid, priority, num_slots):
    """Which objects keep their slot: per (image, slot) the valid object of highest priority, then lowest index.

    Args:
        slots: int32 `[B, N]` slot index of each object (0..num_slots-1).
        valid: bool `[B, N]`.
        priority: float32 `[B, N]`.
        num_slots: int, slots per image.

    Returns:
        (bool `[B, N]` winners, int32 `[B, N]` flat slot ids `b * num_slots + slot`, int32 B * num_slots).
    """
    batch = tf.shape(slots)[0]
    count = tf.shape(slots)[1]
    flat = tf.range(batch)[:, None] * num_slots + slots
    total = batch * num_slots
    priority = tf.where(valid, priority, -np.inf)
    best = tf.math.unsorted_segment_max(tf.reshape(priority, [-1]), tf.reshape(flat, [-1]), total)
    candidate = valid & (priority >= tf.gather(best, flat))
    index = tf.where(candidate, tf.range(count)[None, :], count)
    first = tf.math.unsorted_segment_min(tf.reshape(index, [-1]), tf.reshape(flat, [-1]), total)
    return candidate & (index == tf.gather(first, flat)), flat, total


def _gather_winners(values, winners, flat, total):
    """`[B*num_slots, ...]` holding each winner's `values` row in its slot and zeros elsewhere."""
    mask = tf.cast(winners, values.dtype)
    mask = tf.reshape(mask, tf.concat([tf.shape(mask), tf.ones([values.shape.rank - 2], tf.int32)], 0))
    # At most one winner per slot, so the segment sum is that winner's row.
    return tf.math.unsorted_segment_sum(values * mask, flat, total)


def _batch_shape(boxes, rest):
    batch = boxes.shape[0] if boxes.shape[0] is not None else -1
    return [batch, *rest]


def encode_yolov1_targets(boxes, classes, image_size, grid_size, num_classes) -> dict:
    """YOLOv1 targets: per grid cell at most one object (see the module docstring for the rule).

    Args:
        boxes: float32 `[B, N, 4]` yxyx pixels of the network input.
        classes: int32 `[B, N]` contiguous ids 1..K, -1 for padding.
        image_size: int or (height, width) of the network input.
        grid_size: S.
        num_classes: K.

    Returns:
        dict of float32 tensors:
        `boxes` `[B, S, S, 4]`: (x, y, w, h), x and y the centre's offset inside its cell (0..1, in cell
        units), w and h fractions of the image width and height; zeros in cells without an object.
        `object_mask` `[B, S, S]`: 1 where a cell is responsible for an object.
        `class_probs` `[B, S, S, K]`: the object's class one-hot (column c is class id c + 1); zeros elsewhere.
        Cell `[i, j]` is grid row i (top to bottom), column j.
    """
    where = "encode_yolov1_targets"
    height, width = check_output_size(image_size, where, "image_size")
    s = int(grid_size)
    boxes, classes, valid = _standardize(boxes, classes, num_classes, where)
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    # Grid units: the centre's cell is the integer part, the offset inside it the fraction.
    gy = (y1 + y2) / 2 / height * s
    gx = (x1 + x2) / 2 / width * s
    row = tf.clip_by_value(tf.cast(tf.floor(gy), tf.int32), 0, s - 1)
    col = tf.clip_by_value(tf.cast(tf.floor(gx), tf.int32), 0, s - 1)
    winners, flat, total = _one_per_slot(row * s + col, valid, (y2 - y1) * (x2 - x1), s * s)
    values = tf.stack(
        [gx - tf.cast(col, tf.float32), gy - tf.cast(row, tf.float32), (x2 - x1) / width, (y2 - y1) / height],
        axis=-1,
    )
    one_hot = tf.one_hot(classes - 1, num_classes, dtype=tf.float32)  # padding (-2) gives a zero row
    return {
        "boxes": tf.reshape(_gather_winners(values, winners, flat, total), _batch_shape(boxes, [s, s, 4])),
        "object_mask": tf.reshape(
            tf.math.unsorted_segment_sum(tf.cast(winners, tf.float32), flat, total), _batch_shape(boxes, [s, s])
        ),
        "class_probs": tf.reshape(
            _gather_winners(one_hot, winners, flat, total), _batch_shape(boxes, [s, s, num_classes])
        ),
    }


def encode_yolov3_targets(boxes, classes, image_size, num_classes, strides=YOLOV3_STRIDES, priors=None,
                          assign_iou=1.0) -> dict:
    """YOLOv3 targets: each object assigned to its best-fitting prior at its centre's cell on that level.

    Args:
        boxes: float32 `[B, N, 4]` yxyx pixels of the network input.
        classes: int32 `[B, N]` contiguous ids 1..K, -1 for padding.
        image_size: int or (height, width) of the network input (multiples of every stride).
        num_classes: K.
        strides: the levels' strides.
        priors: (w, h) pixel pairs, the same number per level; None = `default_priors(image_size)`.
        assign_iou: an object is also assigned to every other prior whose shape IoU with it exceeds this
            (each at the object's centre cell on that prior's level), as YOLOv4 does; 1.0 (the default) keeps
            YOLOv3's single best prior. More positives per object make a short training learn faster.

    Returns:
        dict, P predictions in `yolov3_prior_table` order:
        `boxes` float32 `[B, P, 4]`: the assigned object's yxyx box in pixels, zeros elsewhere.
        `object_mask` float32 `[B, P]`: 1 where a prediction is assigned an object.
        `classes` int32 `[B, P]`: the assigned object's class id 1..K, 0 elsewhere.
        `gt_boxes` float32 `[B, N, 4]`: every object's box, zeros for padding (for the loss's ignore rule).
    """
    where = "encode_yolov3_targets"
    height, width = check_output_size(image_size, where, "image_size")
    strides = tuple(int(s) for s in strides)
    priors = check_priors(default_priors((height, width)) if priors is None else priors, strides)
    grids = yolov3_grid_sizes((height, width), strides)
    per_level = len(priors) // len(strides)
    num_priors = len(priors)
    num_predictions = sum(r * c for r, c in grids) * per_level
    boxes, classes, valid = _standardize(boxes, classes, num_classes, where)

    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    box_w, box_h = x2 - x1, y2 - y1
    prior_wh = tf.constant(priors, tf.float32)  # [Q, 2]
    # Shape IoU of every object with every prior, both boxes centred on the same point: [B, N, Q].
    inter = tf.minimum(box_w[..., None], prior_wh[:, 0]) * tf.minimum(box_h[..., None], prior_wh[:, 1])
    union = (box_w * box_h)[..., None] + prior_wh[:, 0] * prior_wh[:, 1] - inter
    shape_iou = tf.math.divide_no_nan(inter, union)
    best = tf.argmax(shape_iou, axis=-1, output_type=tf.int32)  # ties: the first prior
    assigned = tf.one_hot(best, num_priors, on_value=True, off_value=False) | (shape_iou > assign_iou)
    assigned &= valid[..., None]

    # Each (object, prior) pair's prediction: the object's centre cell on the prior's level. Per-prior constants:
    prior_index = np.arange(num_priors)
    level = prior_index // per_level
    stride = tf.constant(np.asarray(strides, np.float32)[level])
    rows = tf.constant(np.asarray([r for r, _ in grids], np.int32)[level])
    cols = tf.constant(np.asarray([c for _, c in grids], np.int32)[level])
    offsets = np.cumsum([0] + [r * c * per_level for r, c in grids])[:-1]
    offset = tf.constant((offsets[level] + prior_index % per_level).astype(np.int32))
    row = tf.clip_by_value(tf.cast(tf.floor(((y1 + y2) / 2)[..., None] / stride), tf.int32), 0, rows - 1)
    col = tf.clip_by_value(tf.cast(tf.floor(((x1 + x2) / 2)[..., None] / stride), tf.int32), 0, cols - 1)
    slot = offset + (row * cols + col) * per_level  # [B, N, Q]

    def pairs(t):  # [B, N, ...] per object -> [B, N * Q, ...] per (object, prior) pair
        t = tf.repeat(t[:, :, None], num_priors, axis=2)
        return tf.reshape(t, tf.concat([tf.shape(t)[:1], [-1], tf.shape(t)[3:]], 0))

    flat_slot = tf.reshape(slot, [tf.shape(slot)[0], -1])
    winners, flat, total = _one_per_slot(
        flat_slot, tf.reshape(assigned, tf.shape(flat_slot)), pairs(box_w * box_h), num_predictions
    )
    return {
        "boxes": tf.reshape(
            _gather_winners(pairs(boxes), winners, flat, total), _batch_shape(boxes, [num_predictions, 4])
        ),
        "object_mask": tf.reshape(
            tf.math.unsorted_segment_sum(tf.cast(winners, tf.float32), flat, total), _batch_shape(boxes, [num_predictions])
        ),
        "classes": tf.reshape(
            tf.math.unsorted_segment_sum(pairs(classes) * tf.cast(winners, tf.int32), flat, total),
            _batch_shape(boxes, [num_predictions]),
        ),
        "gt_boxes": boxes * tf.cast(valid, tf.float32)[..., None],
    }
