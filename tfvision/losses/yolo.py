"""YOLO losses: YOLOv1's sum-squared error over the S x S grid, and YOLOv3's binary cross entropy + GIoU.

Both take the targets of `tfvision.data.yolo_targets` and return a dict of float32 scalars, each term summed
over the batch's cells (or predictions) and divided by the batch size, as the papers' darknet code does. Every
term is finite for images without objects (their object terms are then 0).
"""

from __future__ import annotations

import tensorflow as tf

from tfvision.ops import boxes as box_ops

CONFIDENCE_TARGETS = ("iou", "one")


def _batch_size(tensor):
    return tf.cast(tf.shape(tensor)[0], tf.float32)


def _cell_iou(pred, target, grid_size):
    """IoU of (x, y, w, h) boxes in the same cell: x, y in cell units, w, h in image units. `pred` `[..., B, 4]`
    against `target` `[..., 1, 4]` -> `[..., B]`.

    IoU does not change when both axes are rescaled, so image fractions serve for any image size.
    """
    def yxyx(b):  # image fractions; the cell's own corner cancels out
        center = tf.stack([b[..., 1] / grid_size, b[..., 0] / grid_size, b[..., 3], b[..., 2]], axis=-1)
        return box_ops.convert(center, "center", "yxyx")

    return box_ops.iou(yxyx(pred), yxyx(target))[..., 0]


def yolov1_loss(targets, grid, *, boxes_per_cell, num_classes, lambda_coord=5.0, lambda_noobj=0.5,
                confidence_target="iou", class_weight=1.0, small_box_weight=False) -> dict:
    """YOLOv1's sum-squared loss (Redmon et al., 2016, eq. 3).

        lambda_coord * sum_obj_ij [(x - x^)^2 + (y - y^)^2 + (sqrt w - sqrt w^)^2 + (sqrt h - sqrt h^)^2]
        + sum_obj_ij (C - C^)^2 + lambda_noobj * sum_noobj_ij C^2 + sum_obj_i sum_c (p(c) - p^(c))^2

    obj_ij marks predictor j of a cell i that holds an object, if j is "responsible": the one of the cell's B
    predictors whose box has the highest IoU with the object (the first on ties). noobj_ij is every other
    predictor, including the others of an object's cell. The confidence target C^ is that IoU (the paper's
    Pr(object) * IoU, held constant) or 1 (`confidence_target="one"`). Summed over the batch, divided by the
    batch size. `class_weight` multiplies the class term (1 = the paper): only object cells carry it, so with
    few objects per image it is a small share of the loss, and a short run learns boxes before classes.
    `small_box_weight` multiplies each object's coordinate error by 2 - w * h (w, h fractions of the image), as
    darknet's YOLOv2/v3 layers scale their box deltas: the square roots of the sizes only partly make a pixel
    of error in a small box count as much as it costs its IoU.

    Args:
        targets: `encode_yolov1_targets` output: `boxes` `[B, S, S, 4]` (x, y, w, h), `object_mask`
            `[B, S, S]`, `class_probs` `[B, S, S, K]`.
        grid: `[B, S, S, B*5 + K]` the network's linear output: per cell B x (x, y, sqrt(w), sqrt(h),
            confidence), then K class probabilities (the paper regresses the square roots of the sizes).
        boxes_per_cell: B.
        num_classes: K.
        lambda_coord, lambda_noobj: the paper's weights (5 and 0.5).
        confidence_target: "iou" (the paper) or "one".
        class_weight: multiplies the class term (the paper: 1).
        small_box_weight: weight the coordinate error by 2 - w * h of the object (the paper: False, 1).

    Returns:
        dict of float32 scalars: `loss` (the sum), `coord_loss`, `object_loss`, `noobject_loss`, `class_loss`.
    """
    if confidence_target not in CONFIDENCE_TARGETS:
        raise ValueError(f"yolov1_loss: confidence_target must be one of {CONFIDENCE_TARGETS}, got {confidence_target!r}.")
    grid = tf.cast(grid, tf.float32)
    nb = int(boxes_per_cell)
    size = grid.shape[1]
    if grid.shape[-1] != nb * 5 + num_classes:
        raise ValueError(
            f"yolov1_loss: grid has {grid.shape[-1]} channels per cell; B={nb} boxes and K={num_classes} classes "
            f"need B*5 + K = {nb * 5 + num_classes}."
        )
    pred = tf.reshape(grid[..., :nb * 5], tf.concat([tf.shape(grid)[:3], [nb, 5]], 0))
    pred_boxes, confidence = pred[..., :4], pred[..., 4]
    class_probs = grid[..., nb * 5:]
    target_boxes = tf.cast(targets["boxes"], tf.float32)[..., None, :]  # [B, S, S, 1, 4]
    has_object = tf.cast(targets["object_mask"], tf.float32)

    # The network predicts sqrt(w), sqrt(h); boxes for the IoU need w, h (a negative root reads as 0).
    pred_wh = tf.square(tf.maximum(pred_boxes[..., 2:], 0.0))
    iou = tf.stop_gradient(_cell_iou(tf.concat([pred_boxes[..., :2], pred_wh], -1), target_boxes, size))
    responsible = tf.one_hot(tf.argmax(iou, axis=-1), nb, dtype=tf.float32) * has_object[..., None]  # [B,S,S,nb]

    coord_error = tf.reduce_sum(
        tf.square(pred_boxes[..., :2] - target_boxes[..., :2]), axis=-1
    ) + tf.reduce_sum(tf.square(pred_boxes[..., 2:] - tf.sqrt(target_boxes[..., 2:])), axis=-1)
    if small_box_weight:
        coord_error *= 2.0 - target_boxes[..., 2] * target_boxes[..., 3]
    confidence_goal = iou if confidence_target == "iou" else tf.ones_like(iou)
    batch = _batch_size(grid)
    coord = lambda_coord * tf.reduce_sum(responsible * coord_error) / batch
    obj = tf.reduce_sum(responsible * tf.square(confidence - confidence_goal)) / batch
    noobj = lambda_noobj * tf.reduce_sum((1.0 - responsible) * tf.square(confidence)) / batch
    cls = class_weight * tf.reduce_sum(
        has_object * tf.reduce_sum(tf.square(class_probs - tf.cast(targets["class_probs"], tf.float32)), -1)
    ) / batch
    return {
        "loss": coord + obj + noobj + cls,
        "coord_loss": coord,
        "object_loss": obj,
        "noobject_loss": noobj,
        "class_loss": cls,
    }


def yolov3_loss(targets, predictions, pred_boxes, *, num_classes, ignore_iou=0.5, box_weight=1.0,
                object_weight=1.0, class_weight=1.0) -> dict:
    """YOLOv3's loss with a GIoU box term.

    - box: 1 - GIoU(decoded prediction, assigned object) over assigned predictions (in place of the paper's
      squared error on the offsets: it needs no per-level scaling and judges boxes as AP does);
    - object: binary cross entropy of the objectness logit, target 1 for assigned predictions, 0 for the
      others except those whose decoded box overlaps some object with IoU > `ignore_iou` (not penalized: they
      are good boxes, just not the assigned ones);
    - class: binary cross entropy of each class logit against the one-hot class, over assigned predictions.

    Each term is summed over the batch and divided by the batch size, then weighted.

    Args:
        targets: `encode_yolov3_targets` output: `boxes` `[B, P, 4]`, `object_mask` `[B, P]`, `classes`
            `[B, P]` int32 (1..K, 0 = none), `gt_boxes` `[B, N, 4]` (zeros for padding).
        predictions: `[B, P, 5 + K]` raw head output: tx, ty, tw, th, objectness logit, K class logits.
        pred_boxes: float32 `[B, P, 4]` the predictions decoded to yxyx pixels (differentiable).
        num_classes: K.
        ignore_iou: see above.
        box_weight, object_weight, class_weight: multiply the terms.

    Returns:
        dict of float32 scalars: `loss` (the weighted sum), `box_loss`, `object_loss`, `class_loss`
        (weighted).
    """
    predictions = tf.cast(predictions, tf.float32)
    pred_boxes = tf.cast(pred_boxes, tf.float32)
    assigned = tf.cast(targets["object_mask"], tf.float32)
    gt_boxes = tf.cast(targets["gt_boxes"], tf.float32)
    batch = _batch_size(predictions)

    target_boxes = tf.cast(targets["boxes"], tf.float32)
    giou = box_ops.giou(pred_boxes[..., None, :], target_boxes[..., None, :])[..., 0, 0]  # [B, P]
    box = tf.reduce_sum(assigned * (1.0 - giou)) / batch

    # Padding rows are zero boxes: IoU 0 with everything, so they never trigger the ignore rule (and with no
    # rows at all the max is -inf, which does not either).
    best_iou = tf.reduce_max(box_ops.iou(tf.stop_gradient(pred_boxes), gt_boxes), axis=-1)
    negative = (1.0 - assigned) * tf.cast(best_iou <= ignore_iou, tf.float32)
    object_bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=assigned, logits=predictions[..., 4])
    obj = tf.reduce_sum((assigned + negative) * object_bce) / batch

    one_hot = tf.one_hot(tf.cast(targets["classes"], tf.int32) - 1, num_classes, dtype=tf.float32)
    class_bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=one_hot, logits=predictions[..., 5:])
    cls = tf.reduce_sum(assigned[..., None] * class_bce) / batch

    box, obj, cls = box_weight * box, object_weight * obj, class_weight * cls
    return {"loss": box + obj + cls, "box_loss": box, "object_loss": obj, "class_loss": cls}
