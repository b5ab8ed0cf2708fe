"""Tests for tfvision.data.targets: hand-worked matches, a NumPy loop reference, and tf.data use."""

import numpy as np
import pytest
import tensorflow as tf

from tfvision.data.targets import encode_anchor_targets, match_anchors
from tfvision.ops import boxes as box_ops

# --- NumPy references (slow loops, written independently of the library) ---


def np_iou(boxes1, boxes2):
    """[N, M] IoU in float32 arithmetic; with integer coordinates the intersections and unions are exact, so
    the ratios are bitwise those TensorFlow computes, and threshold and tie decisions agree."""
    out = np.zeros((len(boxes1), len(boxes2)), np.float32)
    for i, a in enumerate(np.asarray(boxes1, np.float32)):
        for j, b in enumerate(np.asarray(boxes2, np.float32)):
            ih = max(min(a[2], b[2]) - max(a[0], b[0]), np.float32(0))
            iw = max(min(a[3], b[3]) - max(a[1], b[1]), np.float32(0))
            inter = np.float32(ih * iw)
            area_a = max(a[2] - a[0], 0) * max(a[3] - a[1], 0)
            area_b = max(b[2] - b[0], 0) * max(b[3] - b[1], 0)
            union = np.float32(area_a + area_b - inter)
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def np_match(gt_boxes, gt_classes, anchors, positive_iou, negative_iou, allow_low_quality):
    """One image: the documented rules, anchor by anchor and ground truth by ground truth."""
    positive_iou = np.float32(positive_iou)
    negative_iou = positive_iou if negative_iou is None else np.float32(negative_iou)
    real = [n for n in range(len(gt_classes)) if gt_classes[n] >= 0]
    iou = np_iou(gt_boxes, anchors) if len(gt_boxes) else np.zeros((0, len(anchors)), np.float32)
    out = np.zeros(len(anchors), np.int64)
    for a in range(len(anchors)):
        best, best_n = -1.0, -1
        for n in real:
            if iou[n, a] > best:  # strict: among equal IoUs the first (lowest) index stays
                best, best_n = iou[n, a], n
        if best >= positive_iou:
            out[a] = best_n
        elif best < negative_iou:
            out[a] = -1
        else:
            out[a] = -2
    if allow_low_quality:
        claims = {}  # anchor -> (iou, gt index) of the winning claim
        for n in real:
            top = iou[n].max()
            if top <= 0:
                continue
            for a in np.flatnonzero(iou[n] == top):
                if a not in claims or iou[n, a] > claims[a][0]:
                    claims[a] = (iou[n, a], n)
        for a, (_, n) in claims.items():
            out[a] = n
    return out


def np_encode(box, anchor, weights):
    ya, xa = (anchor[0] + anchor[2]) / 2, (anchor[1] + anchor[3]) / 2
    ha, wa = anchor[2] - anchor[0], anchor[3] - anchor[1]
    y, x = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    h, w = box[2] - box[0], box[3] - box[1]
    return np.array([(y - ya) / ha, (x - xa) / wa, np.log(h / ha), np.log(w / wa)]) * np.asarray(weights)


def np_targets(gt_boxes, gt_classes, anchors, positive_iou, negative_iou, allow_low_quality, weights):
    matches = np_match(gt_boxes, gt_classes, anchors, positive_iou, negative_iou, allow_low_quality)
    box_targets = np.zeros((len(anchors), 4))
    class_targets = np.zeros(len(anchors), np.int64)
    for a, m in enumerate(matches):
        if m >= 0:
            box_targets[a] = np_encode(np.float64(gt_boxes[m]), np.float64(anchors[a]), weights)
            class_targets[a] = gt_classes[m]
        elif m == -2:
            class_targets[a] = -1
    return matches, box_targets, class_targets


# --- Hand-worked cases ---

# yxyx pixels. IoUs: gt0 with a0 = 1, with a1 = 50 / 150 = 1/3; gt1 with a2 = 100 / 250 = 0.4; the padding
# row sits exactly on a3 (IoU 1) and must still never match.
ANCHORS = [[0, 0, 10, 10], [0, 5, 10, 15], [20, 20, 30, 30], [40, 40, 50, 50]]
GT_BOXES = [[0, 0, 10, 10], [20, 20, 30, 45], [40, 40, 50, 50]]
GT_CLASSES = [1, 2, -1]


@pytest.mark.parametrize(
    "negative_iou, allow_low_quality, expected",
    [
        (0.3, False, [0, -2, -2, -1]),  # a1 (1/3) and a2 (0.4) fall in the ignore band [0.3, 0.5)
        (0.3, True, [0, -2, 1, -1]),  # gt1's best anchor a2 becomes positive
        (None, False, [0, -1, -1, -1]),  # no ignore band: below 0.5 is background
        (None, True, [0, -1, 1, -1]),
    ],
)
def test_hand_worked_matches(negative_iou, allow_low_quality, expected):
    got = match_anchors(GT_BOXES, GT_CLASSES, ANCHORS, 0.5, negative_iou, allow_low_quality)
    assert got.dtype == tf.int32
    np.testing.assert_array_equal(got.numpy(), expected)


def test_hand_worked_targets():
    out = encode_anchor_targets(
        [GT_BOXES], [GT_CLASSES], ANCHORS, positive_iou=0.5, negative_iou=0.3, box_weights=(10, 10, 5, 5)
    )
    np.testing.assert_array_equal(out["class_targets"].numpy(), [[1, -1, 2, 0]])
    # gt1 [20, 20, 30, 45] on a2 [20, 20, 30, 30]: centres y 25 / 25, x 32.5 / 25; sizes 10 x 25 / 10 x 10.
    expected = np.zeros((1, 4, 4))
    expected[0, 2] = [0, 10 * 7.5 / 10, 5 * np.log(1.0), 5 * np.log(25 / 10)]
    # gt0 equals a0: zero deltas.
    np.testing.assert_allclose(out["box_targets"].numpy(), expected, atol=1e-6)
    assert out["box_targets"].dtype == tf.float32 and out["class_targets"].dtype == tf.int32


def test_threshold_boundaries():
    # IoU exactly 0.5 is positive; exactly negative_iou (0.25) is ignored, not background.
    anchors = [[0, 0, 10, 10], [0, 0, 10, 40]]
    gt = [[0, 0, 10, 20]]  # IoU with a0: 100 / 200 = 0.5; with a1: 200 / 400 = 0.5
    np.testing.assert_array_equal(match_anchors(gt, [3], anchors, 0.5, 0.25, False).numpy(), [0, 0])
    gt = [[0, 0, 10, 40]]  # IoU with a0: 100 / 400 = 0.25
    np.testing.assert_array_equal(match_anchors(gt, [3], anchors, 0.5, 0.25, False).numpy(), [-2, 0])
    np.testing.assert_array_equal(match_anchors(gt, [3], anchors, 0.5, 0.26, False).numpy(), [-1, 0])


def test_low_quality_conflicts_are_deterministic():
    anchors = [[0, 0, 10, 10], [0, 5, 10, 15]]
    gt_a = [0, 0, 10, 12]  # IoU with a0: 100 / 120 = 0.833; with a1: 70 / 150 = 0.467
    gt_b = [0, 2, 10, 10]  # IoU with a0: 80 / 100 = 0.8;    with a1: 50 / 130 = 0.385
    # positive_iou 0.9: only low-quality claims make positives. Both claim a0; the larger IoU (gt_a) wins,
    # whichever index it has, and gt_b is left without an anchor.
    np.testing.assert_array_equal(match_anchors([gt_a, gt_b], [1, 1], anchors, 0.9).numpy(), [0, -1])
    np.testing.assert_array_equal(match_anchors([gt_b, gt_a], [1, 1], anchors, 0.9).numpy(), [1, -1])
    # Equal IoU (the same box twice): the lower index wins, for threshold matches and claims alike.
    np.testing.assert_array_equal(match_anchors([gt_a, gt_a], [1, 2], anchors, 0.5).numpy(), [0, -1])
    np.testing.assert_array_equal(match_anchors([gt_a, gt_a], [1, 2], anchors, 0.9).numpy(), [0, -1])


def test_low_quality_claim_overrides_threshold_match():
    anchors = [[0, 0, 10, 10], [0, 0, 10, 20]]
    gt_x = [0, 0, 10, 20]  # IoU with a0: 0.5 (a threshold match), with a1: 1
    gt_y = [0, -10, 10, 4]  # IoU with a0: 40 / 200 = 0.2 (its best), with a1: 40 / 300
    # Threshold matching gives a0 to gt_x; gt_y's claim on its best anchor takes it (SSD's forced match).
    np.testing.assert_array_equal(match_anchors([gt_x, gt_y], [1, 2], anchors, 0.5, 0.1, False).numpy(), [0, 0])
    np.testing.assert_array_equal(match_anchors([gt_x, gt_y], [1, 2], anchors, 0.5, 0.1, True).numpy(), [1, 0])


def test_all_tied_anchors_are_claimed_and_zero_overlap_claims_none():
    anchors = [[0, 0, 10, 10], [0, 10, 10, 20], [50, 50, 60, 60]]
    gt = [[0, 5, 10, 15], [100, 100, 110, 110]]  # gt0 has IoU 1/3 with a0 and a1; gt1 overlaps nothing
    np.testing.assert_array_equal(match_anchors(gt, [1, 1], anchors, 0.5).numpy(), [0, 0, -1])


def test_no_objects_and_empty_inputs_give_background():
    padding = np.zeros((2, 3, 4), np.float32)
    classes = -np.ones((2, 3), np.int32)
    out = encode_anchor_targets(padding, classes, ANCHORS)
    np.testing.assert_array_equal(out["class_targets"].numpy(), np.zeros((2, 4)))
    np.testing.assert_array_equal(out["box_targets"].numpy(), np.zeros((2, 4, 4)))
    out = encode_anchor_targets(np.zeros((2, 0, 4), np.float32), np.zeros((2, 0), np.int32), ANCHORS)
    assert out["box_targets"].shape == (2, 4, 4)
    np.testing.assert_array_equal(out["class_targets"].numpy(), np.zeros((2, 4)))
    np.testing.assert_array_equal(match_anchors(np.zeros((0, 4)), np.zeros((0,)), ANCHORS).numpy(), [-1] * 4)


def test_unbatched_equals_batched():
    one = encode_anchor_targets(GT_BOXES, GT_CLASSES, ANCHORS, negative_iou=0.3)
    batch = encode_anchor_targets([GT_BOXES], [GT_CLASSES], ANCHORS, negative_iou=0.3)
    assert one["box_targets"].shape == (4, 4) and one["class_targets"].shape == (4,)
    np.testing.assert_array_equal(one["class_targets"].numpy(), batch["class_targets"].numpy()[0])
    np.testing.assert_array_equal(one["box_targets"].numpy(), batch["box_targets"].numpy()[0])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="negative_iou=0.6 is above positive_iou=0.5"):
        match_anchors(GT_BOXES, GT_CLASSES, ANCHORS, 0.5, 0.6)
    with pytest.raises(ValueError, match="gt_boxes must be"):
        match_anchors(np.zeros((3, 5)), GT_CLASSES, ANCHORS)
    with pytest.raises(ValueError, match="gt_classes must be"):
        encode_anchor_targets([GT_BOXES], GT_CLASSES, ANCHORS)
    with pytest.raises(ValueError, match="anchors must be"):
        encode_anchor_targets(GT_BOXES, GT_CLASSES, np.zeros((2, 2, 4)))


# --- Random cases against the NumPy reference ---


def random_int_boxes(rng, n, size=64, min_side=4, max_side=32):
    y1 = rng.integers(0, size - min_side, n)
    x1 = rng.integers(0, size - min_side, n)
    h = rng.integers(min_side, max_side, n)
    w = rng.integers(min_side, max_side, n)
    return np.stack([y1, x1, y1 + h, x1 + w], -1).astype(np.float32)


def random_problem(seed):
    """Integer boxes with padding, duplicate ground truths (IoU ties), duplicate anchors (claim ties),
    ground truths copied from anchors (IoU 1), and an image with no objects."""
    rng = np.random.default_rng(seed)
    anchors = random_int_boxes(rng, 40)
    anchors[30:34] = anchors[0:4]  # anchors tied for a ground truth's best IoU
    batch, n = 4, 8
    gt_boxes = np.zeros((batch, n, 4), np.float32)
    gt_classes = -np.ones((batch, n), np.int32)
    for b, count in enumerate([6, 0, 8, 3]):
        boxes = random_int_boxes(rng, count)
        if count >= 3:
            boxes[1] = boxes[0]  # two identical ground truths: ties go to the lower index
            boxes[2] = anchors[int(rng.integers(0, 4))]  # IoU 1 with a duplicated anchor
        gt_boxes[b, :count] = boxes
        gt_classes[b, :count] = rng.integers(1, 6, count)
    gt_boxes[3, 5] = anchors[10]  # a padding row lying exactly on an anchor
    return gt_boxes, gt_classes, anchors


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "positive_iou, negative_iou, allow_low_quality",
    [(0.5, None, True), (0.5, 0.4, True), (0.5, 0.4, False), (0.7, 0.3, True), (0.3, 0.1, False)],
)
def test_matches_and_targets_equal_numpy_reference(seed, positive_iou, negative_iou, allow_low_quality):
    gt_boxes, gt_classes, anchors = random_problem(seed)
    weights = (10.0, 10.0, 5.0, 5.0)
    matches = match_anchors(gt_boxes, gt_classes, anchors, positive_iou, negative_iou, allow_low_quality).numpy()
    out = encode_anchor_targets(
        gt_boxes,
        gt_classes,
        anchors,
        positive_iou=positive_iou,
        negative_iou=negative_iou,
        allow_low_quality=allow_low_quality,
        box_weights=weights,
    )
    for b in range(len(gt_boxes)):
        want_matches, want_boxes, want_classes = np_targets(
            gt_boxes[b], gt_classes[b], anchors, positive_iou, negative_iou, allow_low_quality, weights
        )
        np.testing.assert_array_equal(matches[b], want_matches, err_msg=f"image {b}")
        np.testing.assert_array_equal(out["class_targets"].numpy()[b], want_classes, err_msg=f"image {b}")
        np.testing.assert_allclose(out["box_targets"].numpy()[b], want_boxes, rtol=1e-5, atol=1e-5)
    assert np.all(matches[1] == -1), "the image without objects must be all background"
    assert not np.any(matches[3] == 5), "a padding row matched"
    assert np.all(np.isfinite(out["box_targets"].numpy()))


def test_random_problem_exercises_every_rule():
    # Guards the reference test above against a degenerate data set: positives, ignores and background all
    # occur, and low-quality matching changes some anchors.
    gt_boxes, gt_classes, anchors = random_problem(0)
    strict = match_anchors(gt_boxes, gt_classes, anchors, 0.5, 0.3, False).numpy()
    loose = match_anchors(gt_boxes, gt_classes, anchors, 0.5, 0.3, True).numpy()
    assert (strict >= 0).any() and (strict == -2).any() and (strict == -1).any()
    assert (strict != loose).any()
    # Image 0's rows 0 and 1 are the same box: row 1 ties with row 0 everywhere, so it never wins an anchor.
    assert (loose[0] == 0).any() and not (loose[0] == 1).any() and not (strict[0] == 1).any()


def test_encode_then_decode_gives_the_ground_truth_back():
    gt_boxes, gt_classes, anchors = random_problem(1)
    weights = (10.0, 10.0, 5.0, 5.0)
    out = encode_anchor_targets(gt_boxes, gt_classes, anchors, negative_iou=0.4, box_weights=weights)
    matches = match_anchors(gt_boxes, gt_classes, anchors, 0.5, 0.4).numpy()
    decoded = box_ops.decode(out["box_targets"], anchors[np.newaxis], weights).numpy()
    positive = matches >= 0
    assert positive.sum() > 10
    b, a = np.nonzero(positive)
    np.testing.assert_allclose(decoded[b, a], gt_boxes[b, matches[b, a]], atol=1e-3)


# --- Graph mode and tf.data ---


def test_static_anchor_dimension_with_unknown_batch_and_objects():
    anchors = tf.constant(ANCHORS, tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None], tf.int32)])
    def targets(boxes, classes):
        out = encode_anchor_targets(boxes, classes, anchors)
        assert out["box_targets"].shape.as_list() == [None, 4, 4]
        assert out["class_targets"].shape.as_list() == [None, 4]
        return out

    out = targets(tf.constant([GT_BOXES], tf.float32), tf.constant([GT_CLASSES], tf.int32))
    np.testing.assert_array_equal(out["class_targets"].numpy(), [[1, 0, 2, 0]])


def test_runs_in_tf_data_map_after_batch():
    gt_boxes, gt_classes, anchors = random_problem(2)
    dataset = tf.data.Dataset.from_tensor_slices({"boxes": gt_boxes, "classes": gt_classes})

    def add_targets(example):
        return {**example, **encode_anchor_targets(example["boxes"], example["classes"], anchors, negative_iou=0.4)}

    mapped = dataset.batch(2, drop_remainder=True).map(add_targets)
    assert mapped.element_spec["box_targets"].shape.as_list() == [2, 40, 4]
    assert mapped.element_spec["class_targets"].shape.as_list() == [2, 40]
    assert mapped.element_spec["class_targets"].dtype == tf.int32
    loose = dataset.batch(3).map(add_targets)
    assert loose.element_spec["box_targets"].shape.as_list() == [None, 40, 4]

    eager = encode_anchor_targets(gt_boxes, gt_classes, anchors, negative_iou=0.4)
    got = list(mapped.as_numpy_iterator())
    np.testing.assert_array_equal(np.concatenate([g["class_targets"] for g in got]), eager["class_targets"].numpy())
    np.testing.assert_allclose(np.concatenate([g["box_targets"] for g in got]), eager["box_targets"].numpy())
