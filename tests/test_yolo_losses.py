"""YOLO losses (tfvision.losses.yolo): hand-worked values and plain NumPy loop references."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfvision.losses.yolo import yolov1_loss, yolov3_loss


# --- YOLOv1 ---


def _center_iou(a, b):
    """IoU of (xc, yc, w, h) boxes, plain Python."""
    ax1, ax2, ay1, ay2 = a[0] - a[2] / 2, a[0] + a[2] / 2, a[1] - a[3] / 2, a[1] + a[3] / 2
    bx1, bx2, by1, by2 = b[0] - b[2] / 2, b[0] + b[2] / 2, b[1] - b[3] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _yolov1_loss_loop(boxes, mask, class_probs, grid, nb, lambda_coord, lambda_noobj, confidence_target,
                      class_weight=1.0, small_box_weight=False):
    """The paper's eq. 3, one cell and one predictor at a time."""
    batch, s = grid.shape[:2]
    terms = dict(coord_loss=0.0, object_loss=0.0, noobject_loss=0.0, class_loss=0.0)
    for b in range(batch):
        for i in range(s):
            for j in range(s):
                cell = grid[b, i, j]
                tx, ty, tw, th = boxes[b, i, j]
                has_object = mask[b, i, j] > 0
                ious = []
                for k in range(nb):
                    x, y, sw, sh = cell[5 * k:5 * k + 4]
                    ious.append(_center_iou((x / s, y / s, max(sw, 0) ** 2, max(sh, 0) ** 2), (tx / s, ty / s, tw, th)))
                responsible = int(np.argmax(ious)) if has_object else -1
                for k in range(nb):
                    x, y, sw, sh, c = cell[5 * k:5 * k + 5]
                    if k == responsible:
                        terms["coord_loss"] += lambda_coord * (2.0 - tw * th if small_box_weight else 1.0) * (
                            (x - tx) ** 2 + (y - ty) ** 2 + (sw - math.sqrt(tw)) ** 2 + (sh - math.sqrt(th)) ** 2
                        )
                        goal = ious[k] if confidence_target == "iou" else 1.0
                        terms["object_loss"] += (c - goal) ** 2
                    else:
                        terms["noobject_loss"] += lambda_noobj * c ** 2
                if has_object:
                    terms["class_loss"] += class_weight * float(np.sum((cell[5 * nb:] - class_probs[b, i, j]) ** 2))
    terms = {k: v / batch for k, v in terms.items()}
    terms["loss"] = sum(terms.values())
    return terms


def test_yolov1_loss_hand_worked_single_cell():
    # S=1, B=2, C=2. Target: centre (0.5, 0.5) of the cell, w = h = 0.25 of the image, class 2.
    targets = {
        "boxes": np.array([[[[0.5, 0.5, 0.25, 0.25]]]], np.float32),
        "object_mask": np.ones([1, 1, 1], np.float32),
        "class_probs": np.array([[[[0.0, 1.0]]]], np.float32),
    }
    # Box 0: centre (0.6, 0.5), sqrt w = 0.5 (w 0.25), sqrt h = 0.4 (h 0.16), confidence 0.6:
    #   overlap 0.15 x 0.16 = 0.024, union 0.04 + 0.0625 - 0.024 = 0.0785, IoU 0.30573 -> responsible.
    # Box 1: a 0.01-wide box at (0.2, 0.2), confidence 0.3: IoU 0 -> no-object term.
    grid = np.array([[[[0.6, 0.5, 0.5, 0.4, 0.6, 0.2, 0.2, 0.1, 0.1, 0.3, 0.3, 0.8]]]], np.float32)
    iou = 0.024 / 0.0785
    expected = {
        "coord_loss": 5.0 * (0.1**2 + 0.1**2),  # x off by 0.1, sqrt h off by 0.1
        "object_loss": (0.6 - iou) ** 2,
        "noobject_loss": 0.5 * 0.3**2,
        "class_loss": 0.3**2 + 0.2**2,
    }
    expected["loss"] = sum(expected.values())
    got = yolov1_loss(targets, grid, boxes_per_cell=2, num_classes=2)
    for key, value in expected.items():
        np.testing.assert_allclose(float(got[key]), value, rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(float(got["loss"]), 0.3615934, rtol=1e-5)
    # Confidence target 1 instead of the IoU: only the object term changes.
    one = yolov1_loss(targets, grid, boxes_per_cell=2, num_classes=2, confidence_target="one")
    np.testing.assert_allclose(float(one["object_loss"]), 0.4**2, rtol=1e-5)
    # class_weight 3: only the class term changes, to 3 * (0.3^2 + 0.2^2) = 0.39.
    weighted = yolov1_loss(targets, grid, boxes_per_cell=2, num_classes=2, class_weight=3.0)
    np.testing.assert_allclose(float(weighted["class_loss"]), 0.39, rtol=1e-5)
    for key in ("coord_loss", "object_loss", "noobject_loss"):
        np.testing.assert_allclose(float(weighted[key]), expected[key], rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(float(weighted["loss"]), 0.3615934 + 2 * 0.13, rtol=1e-5)
    # small_box_weight: the coordinate term times 2 - w * h = 2 - 0.0625 = 1.9375; the others unchanged.
    small = yolov1_loss(targets, grid, boxes_per_cell=2, num_classes=2, small_box_weight=True)
    np.testing.assert_allclose(float(small["coord_loss"]), 1.9375 * 0.1, rtol=1e-5)
    for key in ("object_loss", "noobject_loss", "class_loss"):
        np.testing.assert_allclose(float(small[key]), expected[key], rtol=1e-5, err_msg=key)


@pytest.mark.parametrize(
    "confidence_target,class_weight,small_box_weight",
    [("iou", 1.0, False), ("one", 1.0, False), ("iou", 2.5, False), ("one", 1.0, True)],
)
def test_yolov1_loss_matches_numpy_loop(confidence_target, class_weight, small_box_weight):
    rng = np.random.default_rng(3)
    batch, s, nb, k = 3, 3, 2, 4
    mask = (rng.random([batch, s, s]) < 0.4).astype(np.float32)
    mask[2] = 0.0  # an image without objects
    boxes = np.concatenate([rng.random([batch, s, s, 2]), rng.uniform(0.05, 0.6, [batch, s, s, 2])], -1)
    boxes = (boxes * mask[..., None]).astype(np.float32)
    class_probs = (np.eye(k)[rng.integers(0, k, [batch, s, s])] * mask[..., None]).astype(np.float32)
    grid = rng.uniform(-0.2, 1.0, [batch, s, s, nb * 5 + k]).astype(np.float32)  # some negative sqrt(w)
    targets = {"boxes": boxes, "object_mask": mask, "class_probs": class_probs}
    got = yolov1_loss(targets, grid, boxes_per_cell=nb, num_classes=k, lambda_coord=5.0, lambda_noobj=0.5,
                      confidence_target=confidence_target, class_weight=class_weight,
                      small_box_weight=small_box_weight)
    want = _yolov1_loss_loop(boxes, mask, class_probs, grid, nb, 5.0, 0.5, confidence_target, class_weight,
                             small_box_weight)
    for key, value in want.items():
        np.testing.assert_allclose(float(got[key]), value, rtol=1e-4, atol=1e-6, err_msg=key)


def test_yolov1_loss_rejects_wrong_channel_count():
    targets = {"boxes": np.zeros([1, 2, 2, 4]), "object_mask": np.zeros([1, 2, 2]), "class_probs": np.zeros([1, 2, 2, 3])}
    with pytest.raises(ValueError, match="B\\*5 \\+ K"):
        yolov1_loss(targets, np.zeros([1, 2, 2, 12], np.float32), boxes_per_cell=2, num_classes=3)


def test_yolov1_loss_empty_images_finite_gradients():
    s, nb, k = 2, 2, 3
    targets = {"boxes": np.zeros([2, s, s, 4], np.float32), "object_mask": np.zeros([2, s, s], np.float32),
               "class_probs": np.zeros([2, s, s, k], np.float32)}
    grid = tf.Variable(np.full([2, s, s, nb * 5 + k], 0.5, np.float32))
    with tf.GradientTape() as tape:
        losses = yolov1_loss(targets, grid, boxes_per_cell=nb, num_classes=k)
    gradient = tape.gradient(losses["loss"], grid)
    # Only the no-object term remains: 0.5 * 0.5^2 for each of 2 images * 4 cells * 2 boxes, over 2 images.
    np.testing.assert_allclose(float(losses["loss"]), 0.5 * 0.25 * 8, rtol=1e-6)
    assert np.all(np.isfinite(gradient.numpy()))


# --- YOLOv3 ---


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _bce(label, logit):
    p = _sigmoid(logit)
    return -(label * np.log(p) + (1 - label) * np.log(1 - p))


def _yxyx_iou_giou(a, b):
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    iou = inter / union if union > 0 else 0.0
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return iou, iou - (hull - union) / hull


def _yolov3_loss_loop(targets, predictions, pred_boxes, ignore_iou, k):
    batch, count = predictions.shape[:2]
    box = obj = cls = 0.0
    for b in range(batch):
        gts = [g for g in targets["gt_boxes"][b] if (g[2] - g[0]) > 0]
        for p in range(count):
            assigned = targets["object_mask"][b, p] > 0
            if assigned:
                box += 1.0 - _yxyx_iou_giou(pred_boxes[b, p], targets["boxes"][b, p])[1]
                obj += _bce(1.0, predictions[b, p, 4])
                one_hot = np.eye(k)[targets["classes"][b, p] - 1]
                cls += sum(_bce(one_hot[c], predictions[b, p, 5 + c]) for c in range(k))
            else:
                best = max([_yxyx_iou_giou(pred_boxes[b, p], g)[0] for g in gts], default=0.0)
                if best <= ignore_iou:
                    obj += _bce(0.0, predictions[b, p, 4])
    return {"box_loss": box / batch, "object_loss": obj / batch, "class_loss": cls / batch,
            "loss": (box + obj + cls) / batch}


def test_yolov3_loss_matches_numpy_loop():
    rng = np.random.default_rng(7)
    batch, count, k, n = 2, 12, 3, 4

    def random_boxes(shape):
        y, x = rng.uniform(0, 40, shape), rng.uniform(0, 40, shape)
        h, w = rng.uniform(4, 30, shape), rng.uniform(4, 30, shape)
        return np.stack([y, x, y + h, x + w], -1).astype(np.float32)

    gt_boxes = random_boxes([batch, n])
    gt_boxes[1, 2:] = 0.0  # padding
    pred_boxes = random_boxes([batch, count])
    pred_boxes[0, 5] = gt_boxes[0, 1] + 1.0  # unassigned but overlapping a real object: ignored
    object_mask = np.zeros([batch, count], np.float32)
    object_mask[0, [0, 3]] = 1.0
    object_mask[1, 7] = 1.0
    target_boxes = np.zeros([batch, count, 4], np.float32)
    target_boxes[0, 0], target_boxes[0, 3], target_boxes[1, 7] = gt_boxes[0, 0], gt_boxes[0, 2], gt_boxes[1, 1]
    classes = np.zeros([batch, count], np.int32)
    classes[0, 0], classes[0, 3], classes[1, 7] = 1, 3, 2
    targets = {"boxes": target_boxes, "object_mask": object_mask, "classes": classes, "gt_boxes": gt_boxes}
    predictions = rng.normal(0, 2, [batch, count, 5 + k]).astype(np.float32)

    got = yolov3_loss(targets, predictions, pred_boxes, num_classes=k, ignore_iou=0.5)
    want = _yolov3_loss_loop(targets, predictions, pred_boxes, 0.5, k)
    for key, value in want.items():
        np.testing.assert_allclose(float(got[key]), value, rtol=1e-4, err_msg=key)
    # The ignore rule applied: the overlapping unassigned prediction adds no object term.
    assert _yxyx_iou_giou(pred_boxes[0, 5], gt_boxes[0, 1])[0] > 0.5


def test_yolov3_loss_hand_worked_single_prediction():
    # One assigned prediction whose box equals its object (GIoU 1), objectness and class logits 0.
    box = np.array([[[10.0, 10.0, 20.0, 30.0]]], np.float32)
    targets = {"boxes": box, "object_mask": np.ones([1, 1], np.float32), "classes": np.array([[2]], np.int32),
               "gt_boxes": box}
    got = yolov3_loss(targets, np.zeros([1, 1, 5 + 2], np.float32), box, num_classes=2, class_weight=2.0)
    np.testing.assert_allclose(float(got["box_loss"]), 0.0, atol=1e-6)
    np.testing.assert_allclose(float(got["object_loss"]), math.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(float(got["class_loss"]), 2.0 * 2 * math.log(2.0), rtol=1e-6)  # weighted


def test_yolov3_loss_empty_images_finite_gradients():
    k, count = 2, 6
    targets = {"boxes": np.zeros([2, count, 4], np.float32), "object_mask": np.zeros([2, count], np.float32),
               "classes": np.zeros([2, count], np.int32), "gt_boxes": np.zeros([2, 3, 4], np.float32)}
    predictions = tf.Variable(np.zeros([2, count, 5 + k], np.float32))
    pred_boxes = tf.Variable(np.tile(np.array([0.0, 0.0, 8.0, 8.0], np.float32), [2, count, 1]))
    with tf.GradientTape() as tape:
        losses = yolov3_loss(targets, predictions, pred_boxes, num_classes=k)
    gradients = tape.gradient(losses["loss"], [predictions, pred_boxes])
    # Every prediction is a negative: BCE(0, logit 0) = log 2 each, 2 images * 6 over 2 images.
    np.testing.assert_allclose(float(losses["loss"]), count * math.log(2.0), rtol=1e-6)
    assert float(losses["box_loss"]) == 0.0 and float(losses["class_loss"]) == 0.0
    assert all(np.all(np.isfinite(g.numpy())) for g in gradients if g is not None)
