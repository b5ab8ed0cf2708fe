"""Tests for tfvision.ops.boxes: hand-worked values and plain-NumPy references."""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

from tfvision.ops import boxes as B


def random_boxes(rng, n, size=100.0, min_side=0.0):
    """[n, 4] yxyx boxes inside a size x size image with sides >= min_side."""
    y1 = rng.uniform(0, size * 0.8, n)
    x1 = rng.uniform(0, size * 0.8, n)
    h = rng.uniform(min_side, size * 0.5, n)
    w = rng.uniform(min_side, size * 0.5, n)
    return np.stack([y1, x1, y1 + h, x1 + w], -1).astype(np.float32)


# --- NumPy references (slow loops, written independently of the library) ---


def np_area(b):
    return max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)


def np_iou(boxes1, boxes2):
    out = np.zeros((len(boxes1), len(boxes2)), np.float64)
    for i, a in enumerate(boxes1):
        for j, b in enumerate(boxes2):
            ih = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
            iw = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
            inter = ih * iw
            union = np_area(a) + np_area(b) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def np_giou(boxes1, boxes2):
    out = np_iou(boxes1, boxes2)
    for i, a in enumerate(boxes1):
        for j, b in enumerate(boxes2):
            ih = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
            iw = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
            union = np_area(a) + np_area(b) - ih * iw
            c = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
            out[i, j] -= (c - union) / c if c > 0 else 0.0
    return out


def np_encode(boxes, anchors, weights):
    out = []
    for b, a in zip(boxes.astype(np.float64), anchors.astype(np.float64)):
        h, w = b[2] - b[0], b[3] - b[1]
        ha, wa = a[2] - a[0], a[3] - a[1]
        y, x = b[0] + h / 2, b[1] + w / 2
        ya, xa = a[0] + ha / 2, a[1] + wa / 2
        t = [(y - ya) / ha, (x - xa) / wa, math.log(h / ha), math.log(w / wa)]
        out.append([wi * ti for wi, ti in zip(weights, t)])
    return np.array(out)


def np_decode(deltas, anchors, weights):
    out = []
    for d, a in zip(deltas.astype(np.float64), anchors.astype(np.float64)):
        ty, tx, th, tw = [di / wi for di, wi in zip(d, weights)]
        ha, wa = a[2] - a[0], a[3] - a[1]
        ya, xa = a[0] + ha / 2, a[1] + wa / 2
        y, x = ty * ha + ya, tx * wa + xa
        h, w = math.exp(th) * ha, math.exp(tw) * wa
        out.append([y - h / 2, x - w / 2, y + h / 2, x + w / 2])
    return np.array(out)


# --- convert ---

# One literal box in every format: ymin=1, xmin=2, ymax=5, xmax=10 (height 4, width 8, centre (3, 6)).
LITERAL = {
    "yxyx": [1.0, 2.0, 5.0, 10.0],
    "xyxy": [2.0, 1.0, 10.0, 5.0],
    "xywh": [2.0, 1.0, 8.0, 4.0],
    "center": [3.0, 6.0, 4.0, 8.0],
}


@pytest.mark.parametrize("source,target", list(itertools.product(LITERAL, LITERAL)))
def test_convert_literal_box_between_every_pair_of_formats(source, target):
    out = B.convert([LITERAL[source]], source, target)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), [LITERAL[target]])


def test_convert_keeps_leading_dims_and_round_trips():
    boxes = random_boxes(np.random.default_rng(0), 24).reshape(2, 3, 4, 4)
    for fmt in B.FORMATS:
        there = B.convert(boxes, "yxyx", fmt)
        assert there.shape == (2, 3, 4, 4)
        np.testing.assert_allclose(B.convert(there, fmt, "yxyx").numpy(), boxes, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("source,target", [("cxcywh", "yxyx"), ("yxyx", "YXYX"), ("xywh", "")])
def test_convert_unknown_format_raises_and_lists_valid_ones(source, target):
    with pytest.raises(ValueError, match="valid formats are .*'yxyx'.*'xyxy'.*'xywh'.*'center'"):
        B.convert([[0.0, 0.0, 1.0, 1.0]], source, target)


def test_wrong_last_dimension_raises():
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        B.area(tf.zeros([3, 5]))


# --- normalize / denormalize / clip ---


def test_normalize_and_denormalize_literal():
    boxes = [[10.0, 20.0, 50.0, 80.0]]  # yxyx in a 100 (h) x 200 (w) image
    np.testing.assert_allclose(B.normalize(boxes, (100, 200)).numpy(), [[0.1, 0.1, 0.5, 0.4]])
    np.testing.assert_allclose(B.denormalize([[0.1, 0.1, 0.5, 0.4]], tf.constant([100, 200])).numpy(), boxes)


def test_normalize_per_batch_image_size():
    boxes = np.array([[[10, 20, 50, 80]] * 3, [[10, 20, 50, 80]] * 3], np.float32)  # [2, 3, 4]
    sizes = tf.constant([[100, 200], [50, 40]])  # [B, 2] (height, width)
    out = B.normalize(boxes, sizes).numpy()
    assert out.shape == (2, 3, 4)
    np.testing.assert_allclose(out[0], [[0.1, 0.1, 0.5, 0.4]] * 3)
    np.testing.assert_allclose(out[1], [[0.2, 0.5, 1.0, 2.0]] * 3)
    np.testing.assert_allclose(B.denormalize(out, sizes).numpy(), boxes, rtol=1e-6)


def test_clip_literal_and_per_batch():
    boxes = [[-5.0, 3.0, 20.0, 50.0], [1.0, -2.0, 3.0, 4.0]]
    np.testing.assert_allclose(B.clip(boxes, (10, 40)).numpy(), [[0, 3, 10, 40], [1, 0, 3, 4]])
    batched = B.clip([boxes, boxes], [[10, 40], [30, 3]]).numpy()
    np.testing.assert_allclose(batched[1], [[0, 3, 20, 3], [1, 0, 3, 3]])


# --- area, iou, giou ---


def test_area_literal_and_degenerate():
    np.testing.assert_allclose(
        B.area([[0, 0, 10, 10], [5, 5, 15, 20], [3, 3, 3, 9], [5, 5, 1, 1]]).numpy(), [100, 150, 0, 0]
    )


def test_iou_hand_worked():
    # yxyx; overlap is the 5x5 square [5, 5, 10, 10]: 25 / (100 + 100 - 25).
    out = B.iou([[0.0, 0.0, 10.0, 10.0]], [[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 10.0, 10.0], [20, 20, 30, 30]])
    np.testing.assert_allclose(out.numpy(), [[25 / 175, 1.0, 0.0]], rtol=1e-6)


def test_giou_hand_worked():
    # Enclosing box of [0,0,10,10] and [5,5,15,15] is 15 x 15 = 225; union 175.
    out = B.giou([[0.0, 0.0, 10.0, 10.0]], [[5.0, 5.0, 15.0, 15.0], [20.0, 0.0, 30.0, 10.0]])
    # Second pair: disjoint, enclosing 30 x 10 = 300, union 200 -> 0 - 100 / 300.
    np.testing.assert_allclose(out.numpy(), [[25 / 175 - 50 / 225, -1 / 3]], rtol=1e-6)


@pytest.mark.parametrize("fn,reference", [(B.iou, np_iou), (B.giou, np_giou)])
def test_iou_and_giou_match_numpy_reference(fn, reference):
    rng = np.random.default_rng(1)
    boxes1, boxes2 = random_boxes(rng, 13), random_boxes(rng, 7)
    out = fn(boxes1, boxes2)
    assert out.shape == (13, 7)
    np.testing.assert_allclose(out.numpy(), reference(boxes1, boxes2), rtol=1e-5, atol=1e-6)
    assert np.any(out.numpy() > 0.05)  # the random boxes do overlap, so the check means something


@pytest.mark.parametrize("fn,reference", [(B.iou, np_iou), (B.giou, np_giou)])
def test_iou_and_giou_batched(fn, reference):
    rng = np.random.default_rng(2)
    boxes1 = random_boxes(rng, 3 * 5).reshape(3, 5, 4)
    boxes2 = random_boxes(rng, 3 * 4).reshape(3, 4, 4)
    out = fn(boxes1, boxes2).numpy()
    assert out.shape == (3, 5, 4)
    for b in range(3):
        np.testing.assert_allclose(out[b], reference(boxes1[b], boxes2[b]), rtol=1e-5, atol=1e-6)


def test_zero_area_boxes_give_zero_iou_and_finite_giou():
    zero = [[5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 8.0]]  # points and a line
    normal = [[0.0, 0.0, 10.0, 10.0]]
    for a, b in [(zero, zero), (zero, normal), (normal, zero)]:
        out_iou = B.iou(a, b).numpy()
        out_giou = B.giou(a, b).numpy()
        np.testing.assert_array_equal(out_iou, np.zeros_like(out_iou))
        assert np.all(np.isfinite(out_giou))
        assert np.all(out_giou >= -1.0) and np.all(out_giou <= 0.0)


def test_iou_of_a_single_unbatched_box_raises():
    with pytest.raises(ValueError, match="wrap a single box"):
        B.iou([0.0, 0.0, 1.0, 1.0], [[0.0, 0.0, 1.0, 1.0]])


# --- is_valid / drop_degenerate ---


def test_is_valid_and_min_size():
    boxes = [[0, 0, 10, 10], [0, 0, 0, 10], [0, 0, 10, -1], [0, 0, 2, 3]]
    np.testing.assert_array_equal(B.is_valid(boxes).numpy(), [True, False, False, True])
    np.testing.assert_array_equal(B.is_valid(boxes, min_size=2.0).numpy(), [True, False, False, False])


def test_drop_degenerate_filters_aligned_tensors():
    boxes = tf.constant([[0, 0, 10, 10], [5, 5, 5, 9], [1, 1, 3, 4]], tf.float32)
    classes = tf.constant([3, 7, 1])
    masks = tf.cast(tf.reshape(tf.range(3 * 2 * 2), [3, 2, 2]), tf.uint8)
    kept_boxes, kept_classes, kept_masks = B.drop_degenerate(boxes, classes, masks)
    np.testing.assert_allclose(kept_boxes.numpy(), [[0, 0, 10, 10], [1, 1, 3, 4]])
    np.testing.assert_array_equal(kept_classes.numpy(), [3, 1])
    np.testing.assert_array_equal(kept_masks.numpy(), masks.numpy()[[0, 2]])
    (only_boxes,) = B.drop_degenerate(boxes)
    assert only_boxes.shape == (2, 4)


def test_drop_degenerate_misaligned_tensor_raises():
    with pytest.raises(ValueError, match="aligned tensor #1"):
        B.drop_degenerate(tf.zeros([3, 4]), tf.zeros([3]), tf.zeros([2]))


# --- encode / decode ---


def test_encode_hand_worked():
    # Anchor [0,0,10,10]: centre (5, 5), 10 x 10. Box [2,4,12,24]: centre (7, 14), 10 high, 20 wide.
    # ty = (7-5)/10 = 0.2, tx = (14-5)/10 = 0.9, th = log(10/10) = 0, tw = log(20/10) = log 2.
    anchors = [[0.0, 0.0, 10.0, 10.0]]
    boxes = [[2.0, 4.0, 12.0, 24.0]]
    np.testing.assert_allclose(B.encode(boxes, anchors).numpy(), [[0.2, 0.9, 0.0, math.log(2)]], rtol=1e-6)
    np.testing.assert_allclose(
        B.encode(boxes, anchors, weights=(10, 10, 5, 5)).numpy(), [[2.0, 9.0, 0.0, 5 * math.log(2)]], rtol=1e-6
    )
    decoded = B.decode([[2.0, 9.0, 0.0, 5 * math.log(2)]], anchors, (10, 10, 5, 5))
    np.testing.assert_allclose(decoded.numpy(), boxes, rtol=1e-6)


@pytest.mark.parametrize("weights", [None, (10.0, 10.0, 5.0, 5.0), (1.0, 2.0, 3.0, 4.0)])
def test_encode_decode_match_numpy_and_round_trip(weights):
    rng = np.random.default_rng(3)
    boxes, anchors = random_boxes(rng, 50, min_side=1.0), random_boxes(rng, 50, min_side=1.0)
    w = weights or (1.0, 1.0, 1.0, 1.0)
    deltas = B.encode(boxes, anchors, weights)
    np.testing.assert_allclose(deltas.numpy(), np_encode(boxes, anchors, w), rtol=1e-4, atol=1e-4)
    random_deltas = rng.normal(0, 1, (50, 4)).astype(np.float32)
    decoded = B.decode(random_deltas, anchors, weights).numpy()
    np.testing.assert_allclose(decoded, np_decode(random_deltas, anchors, w), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(B.decode(deltas, anchors, weights).numpy(), boxes, rtol=1e-4, atol=1e-3)


def test_encode_decode_broadcast_anchors_over_batch():
    rng = np.random.default_rng(4)
    anchors = random_boxes(rng, 6, min_side=1.0)  # [N, 4]
    boxes = random_boxes(rng, 12, min_side=1.0).reshape(2, 6, 4)  # [B, N, 4]
    deltas = B.encode(boxes, anchors)
    assert deltas.shape == (2, 6, 4)
    np.testing.assert_allclose(deltas.numpy()[1], np_encode(boxes[1], anchors, (1, 1, 1, 1)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(B.decode(deltas, anchors).numpy(), boxes, rtol=1e-4, atol=1e-3)


def test_encode_zero_size_boxes_is_finite():
    anchors = [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]]
    boxes = [[0.0, 0.0, 0.0, 0.0], [3.0, 3.0, 3.0, 3.0]]  # padding-style zero boxes
    assert np.all(np.isfinite(B.encode(boxes, anchors, (10, 10, 5, 5)).numpy()))
    assert np.all(np.isfinite(B.decode(tf.zeros([2, 4]), anchors).numpy()))


def test_decode_clamps_huge_size_deltas():
    anchors = [[0.0, 0.0, 16.0, 16.0]]
    out = B.decode([[0.0, 0.0, 1e4, 1e4]], anchors).numpy()
    assert np.all(np.isfinite(out))
    # Clamped at log(1000/16): the 16-px anchor grows to at most 1000 px.
    np.testing.assert_allclose(out, [[8 - 500, 8 - 500, 8 + 500, 8 + 500]], rtol=1e-4)


def test_bad_weights_raise():
    with pytest.raises(ValueError, match="4 numbers"):
        B.encode([[0.0, 0.0, 1.0, 1.0]], [[0.0, 0.0, 1.0, 1.0]], weights=(10, 10, 5))


# --- graph and tf.data ---


def test_ops_work_in_tf_function_with_unknown_shapes():
    @tf.function(input_signature=[tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, 4])])
    def run(boxes, anchors):
        overlaps = B.iou(boxes, anchors[tf.newaxis])
        deltas = B.encode(boxes, anchors)
        return overlaps, B.decode(deltas, anchors), B.convert(boxes, "yxyx", "xywh")

    rng = np.random.default_rng(5)
    boxes, anchors = random_boxes(rng, 8, min_side=1.0).reshape(2, 4, 4), random_boxes(rng, 4, min_side=1.0)
    overlaps, decoded, xywh = run(boxes, anchors)
    np.testing.assert_allclose(overlaps.numpy()[0], np_iou(boxes[0], anchors), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(decoded.numpy(), boxes, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(xywh.numpy()[..., 2], boxes[..., 3] - boxes[..., 1], rtol=1e-5)


def test_ops_work_in_tf_data_map():
    rng = np.random.default_rng(6)
    boxes = random_boxes(rng, 12).reshape(3, 4, 4)
    ds = tf.data.Dataset.from_tensor_slices({"boxes": boxes, "size": np.array([[100, 100]] * 3, np.int32)})

    def to_normalized_xyxy(example):
        clipped = B.clip(example["boxes"], example["size"])
        return B.convert(B.normalize(clipped, example["size"]), "yxyx", "xyxy"), B.iou(clipped, clipped)

    clipped = np.clip(boxes, 0.0, 100.0)
    assert np.any(clipped != boxes)  # some boxes do stick out of the image
    for i, (xyxy, overlaps) in enumerate(ds.map(to_normalized_xyxy)):
        np.testing.assert_allclose(xyxy.numpy(), clipped[i][:, [1, 0, 3, 2]] / 100.0, rtol=1e-6)
        np.testing.assert_allclose(overlaps.numpy(), np_iou(clipped[i], clipped[i]), rtol=1e-5, atol=1e-6)
