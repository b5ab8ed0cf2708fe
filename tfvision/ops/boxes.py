"""Box operations: formats, normalization, area, IoU / GIoU, clipping, validity and the R-CNN box coder.

Inside tfvision a box is float32 `[ymin, xmin, ymax, xmax]` ("yxyx") in absolute pixels. Other formats
appear only at the edges and are converted here:

- "yxyx":   `[ymin, xmin, ymax, xmax]` (tfvision, TF Object Detection API)
- "xyxy":   `[xmin, ymin, xmax, ymax]` (torchvision, Pascal VOC files once made 0-based)
- "xywh":   `[xmin, ymin, width, height]` (COCO files)
- "center": `[ycenter, xcenter, height, width]` (as the TF Object Detection API orders it)

Every function takes boxes of shape `[..., 4]` with any leading dimensions and works eagerly, inside
`tf.function` and inside `tf.data` maps. Inputs are cast to float32.
"""

from __future__ import annotations

import math

import tensorflow as tf

# Deltas th/tw are clamped here before exp() so a wild regression cannot overflow: a box may grow at most
# 1000/16 times its anchor (torchvision's `_utils.BoxCoder.bbox_xform_clip`).
BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)

# Heights and widths are floored at this before division and log() so zero-size boxes stay finite.
_EPSILON = 1e-8


def _as_boxes(boxes, name="boxes") -> tf.Tensor:
    """Casts `boxes` to float32 and checks that the last dimension is 4 (when it is known)."""
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    last = boxes.shape[-1] if boxes.shape.rank else None
    if boxes.shape.rank == 0 or (last is not None and last != 4):
        raise ValueError(
            f"`{name}` must have shape [..., 4] (one box per row), got shape {boxes.shape}. "
            "Pass boxes as [ymin, xmin, ymax, xmax] rows."
        )
    return boxes


# --- Formats: each format converts to and from the hub format yxyx (2N functions, not N^2). ---


def _xyxy_to_yxyx(b):
    x1, y1, x2, y2 = tf.unstack(b, axis=-1)
    return tf.stack([y1, x1, y2, x2], axis=-1)


def _xywh_to_yxyx(b):
    x, y, w, h = tf.unstack(b, axis=-1)
    return tf.stack([y, x, y + h, x + w], axis=-1)


def _center_to_yxyx(b):
    yc, xc, h, w = tf.unstack(b, axis=-1)
    return tf.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1)


def _yxyx_to_xywh(b):
    y1, x1, y2, x2 = tf.unstack(b, axis=-1)
    return tf.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)


def _yxyx_to_center(b):
    y1, x1, y2, x2 = tf.unstack(b, axis=-1)
    return tf.stack([(y1 + y2) / 2, (x1 + x2) / 2, y2 - y1, x2 - x1], axis=-1)


_TO_YXYX = {
    "yxyx": lambda b: b,
    "xyxy": _xyxy_to_yxyx,
    "xywh": _xywh_to_yxyx,
    "center": _center_to_yxyx,
}
_FROM_YXYX = {
    "yxyx": lambda b: b,
    "xyxy": _xyxy_to_yxyx,  # swapping the (y, x) pairs is its own inverse
    "xywh": _yxyx_to_xywh,
    "center": _yxyx_to_center,
}
FORMATS = tuple(_TO_YXYX)


def convert(boxes, source: str, target: str) -> tf.Tensor:
    """Converts boxes between formats, through yxyx.

    Args:
        boxes: `[..., 4]` boxes in the `source` format.
        source: one of "yxyx", "xyxy", "xywh" (COCO), "center" (`[yc, xc, h, w]`).
        target: one of the same formats.

    Returns:
        float32 `[..., 4]` boxes in the `target` format.

    Raises:
        ValueError: if `source` or `target` is not a known format.
    """
    for arg, fmt in (("source", source), ("target", target)):
        if fmt not in _TO_YXYX:
            raise ValueError(f"convert(): unknown box format {arg}={fmt!r}; valid formats are {list(FORMATS)}.")
    boxes = _as_boxes(boxes)
    if source == target:
        return boxes
    return _FROM_YXYX[target](_TO_YXYX[source](boxes))


# --- Image-size scaling ---


def _size_scale(image_size) -> tf.Tensor:
    """`[h, w, h, w]` from image_size `[..., 2]` (height, width), shaped to broadcast against `[..., N, 4]`.

    A single size `[2]` gives `[4]`, which broadcasts over any boxes; a per-batch size `[B, 2]` gives
    `[B, 1, 4]`, which broadcasts over `[B, N, 4]`.
    """
    size = tf.cast(tf.convert_to_tensor(image_size), tf.float32)
    if size.shape.rank is None or size.shape.rank == 0 or size.shape[-1] not in (None, 2):
        raise ValueError(f"image_size must be (height, width) or [B, 2], got shape {size.shape}.")
    scale = tf.concat([size, size], axis=-1)
    if size.shape.rank > 1:
        scale = tf.expand_dims(scale, axis=-2)
    return scale


def normalize(boxes, image_size) -> tf.Tensor:
    """Divides absolute yxyx boxes by the image size, giving coordinates in [0, 1] for boxes inside it.

    Args:
        boxes: `[..., N, 4]` yxyx boxes in pixels.
        image_size: `(height, width)`, a `[2]` tensor, or per-image `[B, 2]` for boxes `[B, N, 4]`.

    Returns:
        float32 `[..., N, 4]` normalized yxyx boxes.
    """
    return _as_boxes(boxes) / _size_scale(image_size)


def denormalize(boxes, image_size) -> tf.Tensor:
    """Multiplies normalized yxyx boxes by the image size (the inverse of `normalize`).

    Args:
        boxes: `[..., N, 4]` yxyx boxes in [0, 1].
        image_size: `(height, width)`, a `[2]` tensor, or per-image `[B, 2]` for boxes `[B, N, 4]`.

    Returns:
        float32 `[..., N, 4]` yxyx boxes in pixels.
    """
    return _as_boxes(boxes) * _size_scale(image_size)


def clip(boxes, image_size) -> tf.Tensor:
    """Clips yxyx boxes to the image: y into [0, height], x into [0, width].

    Args:
        boxes: `[..., N, 4]` yxyx boxes in pixels.
        image_size: `(height, width)`, a `[2]` tensor, or per-image `[B, 2]` for boxes `[B, N, 4]`.

    Returns:
        float32 `[..., N, 4]` clipped boxes (a box wholly outside the image becomes degenerate).
    """
    return tf.minimum(tf.maximum(_as_boxes(boxes), 0.0), _size_scale(image_size))


# --- Geometry ---


def area(boxes) -> tf.Tensor:
    """Area of yxyx boxes; degenerate or inverted boxes have area 0.

    Args:
        boxes: `[..., 4]` yxyx boxes.

    Returns:
        float32 `[...]` areas.
    """
    y1, x1, y2, x2 = tf.unstack(_as_boxes(boxes), axis=-1)
    return tf.maximum(y2 - y1, 0.0) * tf.maximum(x2 - x1, 0.0)


def _pairwise(boxes1, boxes2):
    """Expands `[..., N, 4]` and `[..., M, 4]` to `[..., N, 1, 4]` and `[..., 1, M, 4]`."""
    boxes1 = _as_boxes(boxes1, "boxes1")
    boxes2 = _as_boxes(boxes2, "boxes2")
    if boxes1.shape.rank == 1 or boxes2.shape.rank == 1:
        raise ValueError(
            f"iou/giou take lists of boxes [..., N, 4] and [..., M, 4], got shapes {boxes1.shape} and "
            f"{boxes2.shape}; wrap a single box as [box]."
        )
    return tf.expand_dims(boxes1, -2), tf.expand_dims(boxes2, -3)


def _intersection_and_union(b1, b2):
    y1 = tf.maximum(b1[..., 0], b2[..., 0])
    x1 = tf.maximum(b1[..., 1], b2[..., 1])
    y2 = tf.minimum(b1[..., 2], b2[..., 2])
    x2 = tf.minimum(b1[..., 3], b2[..., 3])
    intersection = tf.maximum(y2 - y1, 0.0) * tf.maximum(x2 - x1, 0.0)
    union = area(b1) + area(b2) - intersection
    return intersection, union


def iou(boxes1, boxes2) -> tf.Tensor:
    """Pairwise intersection over union.

    A pair whose union is empty (both boxes zero-area) has IoU 0, never NaN.

    Args:
        boxes1: `[N, 4]` or batched `[B, N, 4]` yxyx boxes.
        boxes2: `[M, 4]` or batched `[B, M, 4]` yxyx boxes (any leading dims that broadcast with boxes1's).

    Returns:
        float32 `[N, M]` (or `[B, N, M]`) IoU in [0, 1].
    """
    b1, b2 = _pairwise(boxes1, boxes2)
    intersection, union = _intersection_and_union(b1, b2)
    return tf.math.divide_no_nan(intersection, union)


def giou(boxes1, boxes2) -> tf.Tensor:
    """Pairwise generalized IoU (Rezatofighi et al., 2019): IoU - (C - U) / C, C the enclosing box's area.

    Pairs whose enclosing box has zero area get GIoU 0, never NaN.

    Args:
        boxes1: `[N, 4]` or batched `[B, N, 4]` yxyx boxes.
        boxes2: `[M, 4]` or batched `[B, M, 4]` yxyx boxes.

    Returns:
        float32 `[N, M]` (or `[B, N, M]`) GIoU in [-1, 1].
    """
    b1, b2 = _pairwise(boxes1, boxes2)
    intersection, union = _intersection_and_union(b1, b2)
    enclosing = tf.concat([tf.minimum(b1[..., :2], b2[..., :2]), tf.maximum(b1[..., 2:], b2[..., 2:])], -1)
    enclosing_area = area(enclosing)
    return tf.math.divide_no_nan(intersection, union) - tf.math.divide_no_nan(
        enclosing_area - union, enclosing_area
    )


def is_valid(boxes, min_size: float = 0.0) -> tf.Tensor:
    """Which boxes are non-degenerate: height and width both greater than `min_size`.

    Args:
        boxes: `[..., 4]` yxyx boxes.
        min_size: smallest height/width (exclusive) a box must exceed, in the boxes' units.

    Returns:
        bool `[...]` mask.
    """
    y1, x1, y2, x2 = tf.unstack(_as_boxes(boxes), axis=-1)
    return tf.logical_and(y2 - y1 > min_size, x2 - x1 > min_size)


def drop_degenerate(boxes, *aligned, min_size: float = 0.0) -> tuple:
    """Keeps only valid boxes (see `is_valid`) and the matching rows of tensors aligned with them.

    For unbatched use, e.g. after clipping: `boxes, classes = drop_degenerate(boxes, classes)`.

    Args:
        boxes: `[N, 4]` yxyx boxes.
        *aligned: tensors whose first dimension is N (classes `[N]`, masks `[N, H, W]`, ...).
        min_size: as in `is_valid`.

    Returns:
        A tuple `(boxes [K, 4], *aligned with first dim K)`, always a tuple, even with no aligned tensors.
    """
    boxes = _as_boxes(boxes)
    if boxes.shape.rank != 2:
        raise ValueError(f"drop_degenerate() takes unbatched boxes [N, 4], got shape {boxes.shape}.")
    aligned = [tf.convert_to_tensor(t) for t in aligned]
    for i, tensor in enumerate(aligned):
        n, k = boxes.shape[0], (tensor.shape[0] if tensor.shape.rank else None)
        if tensor.shape.rank == 0 or (n is not None and k is not None and n != k):
            raise ValueError(
                f"drop_degenerate(): aligned tensor #{i} has shape {tensor.shape}, but its first dimension "
                f"must equal the number of boxes ({n}); pass tensors with one row per box."
            )
    keep = is_valid(boxes, min_size)
    return tuple(tf.boolean_mask(t, keep) for t in [boxes, *aligned])


# --- The R-CNN box coder ---


def _weights(weights) -> tf.Tensor:
    if weights is None:
        return tf.ones([4], tf.float32)
    weights = tf.cast(tf.convert_to_tensor(weights), tf.float32)
    if weights.shape != (4,):
        raise ValueError(
            "box coder weights must be 4 numbers (wy, wx, wh, ww), e.g. (10, 10, 5, 5), "
            f"got shape {weights.shape}."
        )
    return weights


def _centers_and_sizes(boxes):
    """yxyx `[..., 4]` -> (yc, xc, h, w), sizes floored at a tiny epsilon."""
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    h = tf.maximum(y2 - y1, _EPSILON)
    w = tf.maximum(x2 - x1, _EPSILON)
    return y1 + 0.5 * (y2 - y1), x1 + 0.5 * (x2 - x1), h, w


def encode(boxes, anchors, weights=None) -> tf.Tensor:
    """Encodes boxes as regression deltas relative to anchors (the R-CNN parametrization).

        ty = wy * (y - ya) / ha     tx = wx * (x - xa) / wa
        th = wh * log(h / ha)       tw = ww * log(w / wa)

    with (y, x) box centers and (h, w) sizes, the `a` terms the anchor's. `weights` scale the deltas so
    they have roughly unit variance: Faster R-CNN's ROI head uses (10, 10, 5, 5) and its RPN (1, 1, 1, 1);
    SSD's "variances" (0.1, 0.1, 0.2, 0.2) are their reciprocals, i.e. weights (10, 10, 5, 5). Sizes are
    floored at 1e-8 so zero-size boxes (e.g. padding) give finite deltas.

    Args:
        boxes: `[..., 4]` yxyx boxes (e.g. matched ground truth).
        anchors: `[..., 4]` yxyx anchors, broadcastable to `boxes` (e.g. `[N, 4]` against `[B, N, 4]`).
        weights: 4 numbers (wy, wx, wh, ww); None means (1, 1, 1, 1).

    Returns:
        float32 `[..., 4]` deltas `[ty, tx, th, tw]`.
    """
    w = _weights(weights)
    y, x, h, wd = _centers_and_sizes(_as_boxes(boxes))
    ya, xa, ha, wa = _centers_and_sizes(_as_boxes(anchors, "anchors"))
    deltas = tf.stack([(y - ya) / ha, (x - xa) / wa, tf.math.log(h / ha), tf.math.log(wd / wa)], axis=-1)
    return deltas * w


def decode(deltas, anchors, weights=None) -> tf.Tensor:
    """Applies regression deltas to anchors (the inverse of `encode`).

    th and tw (after dividing by the weights) are clamped at log(1000 / 16), as torchvision does, so
    exp() cannot overflow on a wild prediction.

    Args:
        deltas: `[..., 4]` `[ty, tx, th, tw]` deltas.
        anchors: `[..., 4]` yxyx anchors, broadcastable to `deltas`.
        weights: the same 4 weights used to encode; None means (1, 1, 1, 1).

    Returns:
        float32 `[..., 4]` yxyx boxes.
    """
    ty, tx, th, tw = tf.unstack(_as_boxes(deltas, "deltas") / _weights(weights), axis=-1)
    ya, xa, ha, wa = _centers_and_sizes(_as_boxes(anchors, "anchors"))
    th = tf.minimum(th, BBOX_XFORM_CLIP)
    tw = tf.minimum(tw, BBOX_XFORM_CLIP)
    y = ty * ha + ya
    x = tx * wa + xa
    h = tf.exp(th) * ha
    w = tf.exp(tw) * wa
    return tf.stack([y - 0.5 * h, x - 0.5 * w, y + 0.5 * h, x + 0.5 * w], axis=-1)
