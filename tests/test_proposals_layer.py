"""ProposalLayer: hand-worked proposals, a plain-NumPy reference (decode, clip, drop tiny, per-level top-N, NMS,
top-N), static output shapes in training and at test time, no gradient, serialization."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from layer_testing import assert_serialization_round_trip
from tfvision.layers.anchor_generator import AnchorGenerator
from tfvision.layers.proposals import ProposalLayer


def _logit(p):
    return np.log(p / (1 - p)).astype(np.float32)


def _run(layer, objectness, deltas, anchors, size=(64, 64), training=False):
    images = np.zeros((np.shape(objectness)[0], *size, 3), np.float32)
    out = layer([np.asarray(objectness, np.float32), np.asarray(deltas, np.float32),
                 np.asarray(anchors, np.float32), images], training=training)
    return {k: v.numpy() for k, v in out.items()}


def test_hand_worked_proposals():
    # Five anchors, zero deltas, so proposals are the (clipped) anchors themselves.
    anchors = np.array([
        [0, 0, 20, 20],      # p=0.9
        [1, 1, 21, 21],      # p=0.8, IoU with the first = 361/439 = 0.82 > 0.7: suppressed
        [30, 30, 50, 50],    # p=0.7
        [50, 50, 80, 80],    # p=0.6, clipped to [50, 50, 64, 64]
        [10, 40, 10.5, 60],  # p=0.95 but 0.5 px high: dropped as tiny (min_size 1)
    ], np.float32)
    scores = _logit(np.array([[0.9, 0.8, 0.7, 0.6, 0.95]]))
    layer = ProposalLayer(pre_nms_top_n_test=5, post_nms_top_n_test=4, nms_iou_threshold=0.7, min_size=1.0)
    out = _run(layer, scores, np.zeros((1, 5, 4)), anchors)
    np.testing.assert_allclose(out["boxes"][0], [[0, 0, 20, 20], [30, 30, 50, 50], [50, 50, 64, 64], [0, 0, 0, 0]])
    np.testing.assert_allclose(out["scores"][0], [0.9, 0.7, 0.6, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(out["valid"][0], [True, True, True, False])

    # pre_nms_top_n=2 keeps the two best (0.95: tiny, dropped; 0.9) before anything else.
    layer = ProposalLayer(pre_nms_top_n_test=2, post_nms_top_n_test=4, min_size=1.0)
    out = _run(layer, scores, np.zeros((1, 5, 4)), anchors)
    np.testing.assert_array_equal(out["valid"][0], [True, False, False, False])
    np.testing.assert_allclose(out["boxes"][0, 0], [0, 0, 20, 20])


def test_deltas_are_decoded_and_two_class_logits_score_like_sigmoid():
    anchors = np.array([[10, 10, 30, 30]], np.float32)
    # ty = 0.5 moves the centre down by half the height (10 px); tw = log 2 doubles the width.
    deltas = np.array([[[0.5, 0.0, 0.0, np.log(2.0)]]], np.float32)
    two_class = np.array([[[0.3, 1.5]]], np.float32)  # softmax(...)[1] = sigmoid(1.2)
    out = _run(ProposalLayer(post_nms_top_n_test=2), two_class, deltas, anchors)
    np.testing.assert_allclose(out["boxes"][0, 0], [20, 0, 40, 40], atol=1e-5)  # x clipped at 0
    np.testing.assert_allclose(out["scores"][0, 0], 1 / (1 + np.exp(-1.2)), rtol=1e-6)


# --- plain NumPy reference ---


def _np_decode(deltas, anchors):
    ha, wa = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ya, xa = anchors[:, 0] + ha / 2, anchors[:, 1] + wa / 2
    ty, tx = deltas[:, 0], deltas[:, 1]
    th, tw = np.minimum(deltas[:, 2], np.log(1000 / 16)), np.minimum(deltas[:, 3], np.log(1000 / 16))
    y, x, h, w = ty * ha + ya, tx * wa + xa, np.exp(th) * ha, np.exp(tw) * wa
    return np.stack([y - h / 2, x - w / 2, y + h / 2, x + w / 2], 1)


def _np_iou(a, b):
    y0, x0 = np.maximum(a[0], b[0]), np.maximum(a[1], b[1])
    y1, x1 = np.minimum(a[2], b[2]), np.minimum(a[3], b[3])
    inter = max(y1 - y0, 0) * max(x1 - x0, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _np_proposals(logits, deltas, anchors, level_sizes, pre, post, iou_threshold, min_size, size):
    """One image: per level top `pre` by logit, decode, clip, drop tiny, greedy NMS per level, best `post`."""
    kept = []
    start = 0
    for level, count in enumerate(level_sizes):
        idx = np.arange(start, start + count)
        start += count
        order = idx[np.argsort(-logits[idx], kind="stable")][:pre]
        boxes = _np_decode(deltas[order], anchors[order])
        boxes = np.clip(boxes, 0, [size, size, size, size])
        scores = 1 / (1 + np.exp(-logits[order]))
        ok = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
        ok &= ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
        survivors = []
        for i in np.flatnonzero(ok):  # already in descending score order
            if all(_np_iou(boxes[i], boxes[j]) <= iou_threshold for j in survivors):
                survivors.append(i)
        kept += [(scores[i], boxes[i]) for i in survivors]
    kept.sort(key=lambda item: -item[0])
    kept = kept[:post]
    out_boxes = np.zeros((post, 4), np.float32)
    out_scores = np.zeros((post,), np.float32)
    for i, (score, box) in enumerate(kept):
        out_boxes[i], out_scores[i] = box, score
    return out_boxes, out_scores, len(kept)


@pytest.mark.parametrize("training", [False, True])
def test_matches_numpy_reference_on_two_levels(training):
    rng = np.random.default_rng(3)
    size = 64
    generator = AnchorGenerator(strides=(8, 16), sizes=(16, 32), aspect_ratios=(0.5, 1.0, 2.0))
    anchors = generator.anchors_for((size, size)).numpy()
    level_sizes = [8 * 8 * 3, 4 * 4 * 3]
    num = anchors.shape[0]
    logits = rng.normal(size=(2, num)).astype(np.float32)
    deltas = (rng.normal(size=(2, num, 4)) * 0.3).astype(np.float32)
    layer = ProposalLayer(pre_nms_top_n_train=60, post_nms_top_n_train=40, pre_nms_top_n_test=30,
                          post_nms_top_n_test=20, nms_iou_threshold=0.6, min_size=4.0, level_sizes=level_sizes)
    out = _run(layer, logits, deltas, anchors, (size, size), training=training)
    pre, post = (60, 40) if training else (30, 20)
    assert out["boxes"].shape == (2, post, 4)
    for b in range(2):
        boxes, scores, count = _np_proposals(logits[b], deltas[b], anchors, level_sizes, pre, post, 0.6, 4.0, size)
        assert out["valid"][b].sum() == count
        np.testing.assert_allclose(out["boxes"][b], boxes, atol=1e-4)
        np.testing.assert_allclose(out["scores"][b], scores, atol=1e-6)


def test_static_output_shapes_with_unknown_batch():
    layer = ProposalLayer(pre_nms_top_n_train=50, post_nms_top_n_train=30, pre_nms_top_n_test=40,
                          post_nms_top_n_test=10)
    anchors = tf.constant(np.random.default_rng(0).uniform(0, 32, (24, 4)).astype(np.float32) + [0, 0, 32, 32])
    for training, post in ((True, 30), (False, 10)):
        fn = tf.function(
            lambda o, d, i, training=training: layer([o, d, anchors, i], training=training),
            input_signature=[tf.TensorSpec([None, 24]), tf.TensorSpec([None, 24, 4]),
                             tf.TensorSpec([None, None, None, 3])],
        )
        spec = fn.get_concrete_function().structured_outputs
        assert spec["boxes"].shape.as_list() == [None, post, 4]
        assert spec["scores"].shape.as_list() == [None, post]
        assert spec["valid"].shape.as_list() == [None, post]
        # Fewer anchors (24) than post_nms_top_n (30) still gives post rows, padded.
        out = fn(tf.zeros([3, 24]), tf.zeros([3, 24, 4]), tf.zeros([3, 64, 64, 3]))
        assert out["boxes"].shape == (3, post, 4)
    symbolic = layer([keras.Input((24,)), keras.Input((24, 4)), anchors, keras.Input((64, 64, 3))])
    assert symbolic["boxes"].shape == (None, 10, 4)


def test_proposals_carry_no_gradient():
    anchors = tf.constant([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 24.0, 24.0]])
    logits = tf.Variable([[0.5, -0.5]])
    deltas = tf.Variable(tf.fill([1, 2, 4], 0.1))
    with tf.GradientTape() as tape:
        out = ProposalLayer(post_nms_top_n_test=2)([logits, deltas, anchors, tf.zeros([1, 32, 32, 3])])
        total = tf.reduce_sum(out["boxes"]) + tf.reduce_sum(out["scores"])
    assert all(g is None for g in tape.gradient(total, [logits, deltas]))


def test_inconsistent_inputs_are_rejected():
    layer = ProposalLayer()
    with pytest.raises(ValueError, match="number of anchors"):
        layer([tf.zeros([1, 10]), tf.zeros([1, 12, 4]), tf.zeros([12, 4]), tf.zeros([1, 8, 8, 3])])
    with pytest.raises(ValueError, match="level_sizes"):
        ProposalLayer(level_sizes=[4, 4])([tf.zeros([1, 10]), tf.zeros([1, 10, 4]), tf.zeros([10, 4]),
                                            tf.zeros([1, 8, 8, 3])])
    with pytest.raises(ValueError, match="post_nms_top_n_test"):
        ProposalLayer(post_nms_top_n_test=0)


def test_serialization_round_trip(tmp_path):
    kwargs = {"pre_nms_top_n_train": 20, "post_nms_top_n_train": 12, "pre_nms_top_n_test": 15,
              "post_nms_top_n_test": 8, "nms_iou_threshold": 0.6, "min_size": 0.5, "box_weights": [1, 1, 1, 1],
              "level_sizes": [48, 12]}

    def build_model(layer):
        objectness, deltas, images = keras.Input((60, 2)), keras.Input((60, 4)), keras.Input((32, 32, 3))
        anchors = AnchorGenerator(strides=(8, 16), sizes=(12, 24))(images)  # 16*3 + 4*3 = 60 anchors
        return keras.Model([objectness, deltas, images], layer([objectness, deltas, anchors, images]))

    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(2, 60, 2)).astype(np.float32), (rng.normal(size=(2, 60, 4)) * 0.2).astype(np.float32),
              np.zeros((2, 32, 32, 3), np.float32)]
    assert_serialization_round_trip(ProposalLayer, kwargs, inputs, build_model=build_model, tmp_path=tmp_path)
