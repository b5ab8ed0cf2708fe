"""Tests for DetectionDecoder: decode + per-class thresholds + NMS against a plain-NumPy pipeline, padding,
options, serialization and use inside a functional model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from layer_testing import assert_serialization_round_trip
from tfvision.layers.detection_decoder import DetectionDecoder, decoder_from_config
from tfvision.config import DetectionConfig


def np_iou(a, b):
    ih = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    iw = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def np_decode(deltas, anchors, weights):
    """R-CNN decoding written out: centre offsets scaled by anchor size, log-size ratios."""
    wy, wx, wh, ww = weights
    ha, wa = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ya, xa = anchors[:, 0] + ha / 2, anchors[:, 1] + wa / 2
    y = deltas[:, 0] / wy * ha + ya
    x = deltas[:, 1] / wx * wa + xa
    h = np.exp(deltas[:, 2] / wh) * ha
    w = np.exp(deltas[:, 3] / ww) * wa
    return np.stack([y - h / 2, x - w / 2, y + h / 2, x + w / 2], axis=1)


def np_detect(boxes, scores, thresholds, iou_threshold, max_detections, class_agnostic=False):
    """Candidates (box, class) above the class threshold; greedy NMS per class (or all together); top K."""
    candidates = [(float(scores[n, c]), n, c) for n in range(scores.shape[0]) for c in range(scores.shape[1])
                  if scores[n, c] > thresholds[c]]
    candidates.sort(key=lambda t: (-t[0], t[1] * scores.shape[1] + t[2]))
    kept = []
    for s, n, c in candidates:
        rivals = [k for k in kept if class_agnostic or k[2] == c]
        if all(np_iou(boxes[n], boxes[k[1]]) <= iou_threshold for k in rivals):
            kept.append((s, n, c))
    kept = kept[:max_detections]
    return (np.array([boxes[n] for _, n, _ in kept]).reshape(-1, 4), np.array([s for s, _, _ in kept]),
            np.array([c + 1 for _, _, c in kept], np.int64))


def _random_case(rng, batch, n, c):
    centres = rng.uniform(10, 90, (batch, n, 2))
    sizes = rng.uniform(5, 40, (batch, n, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (batch, n, c)).astype(np.float32)
    return boxes, scores


def test_hand_worked_two_overlapping_boxes_and_one_apart():
    boxes = np.array([[[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]]], np.float32)
    scores = np.array([[[0.9, 0.1], [0.8, 0.7], [0.3, 0.05]]], np.float32)
    out = DetectionDecoder(max_detections=4, iou_threshold=0.5, score_threshold=0.2)(boxes, scores)
    # Class 1: box 0 (0.9) suppresses box 1 (IoU 81/119 = 0.68); box 2 (0.3) survives. Class 2: box 1 (0.7).
    np.testing.assert_allclose(out["scores"][0], [0.9, 0.7, 0.3, 0.0])
    np.testing.assert_array_equal(out["classes"][0], [1, 2, 1, -1])
    np.testing.assert_allclose(out["boxes"][0], [[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 0, 0]])
    assert int(out["num_detections"][0]) == 3


@pytest.mark.parametrize("class_agnostic", [False, True])
def test_matches_numpy_reference_with_decoding_and_per_class_thresholds(class_agnostic):
    rng = np.random.default_rng(0)
    batch, n, c, k = 3, 40, 3, 15
    anchors, _ = _random_case(rng, 1, n, 1)
    anchors = anchors[0]
    deltas = rng.normal(0, 0.5, (batch, n, 4)).astype(np.float32)
    _, scores = _random_case(rng, batch, n, c)
    thresholds = [0.3, 0.5, 0.7]
    weights = (10.0, 10.0, 5.0, 5.0)
    decoder = DetectionDecoder(max_detections=k, iou_threshold=0.4, score_threshold=thresholds,
                               class_agnostic=class_agnostic, box_weights=weights, pre_nms_top_k=None)
    out = decoder(deltas, scores, anchors=anchors, image_size=(100, 100))
    for b in range(batch):
        decoded = np.clip(np_decode(deltas[b].astype(np.float64), anchors.astype(np.float64), weights), 0, 100)
        want_boxes, want_scores, want_classes = np_detect(decoded, scores[b], thresholds, 0.4, k, class_agnostic)
        count = int(out["num_detections"][b])
        assert count == len(want_scores)
        np.testing.assert_allclose(out["scores"][b, :count], want_scores, rtol=1e-6)
        np.testing.assert_array_equal(out["classes"][b, :count], want_classes)
        np.testing.assert_allclose(out["boxes"][b, :count], want_boxes, rtol=1e-4, atol=1e-3)
        assert np.all(out["classes"][b, count:] == -1) and np.all(out["scores"][b, count:] == 0)


def test_soft_nms_decays_instead_of_removing():
    boxes = np.array([[[0, 0, 10, 10], [1, 1, 11, 11]]], np.float32)
    scores = np.array([[[0.9], [0.8]]], np.float32)
    hard = DetectionDecoder(max_detections=2, iou_threshold=0.5, score_threshold=0.01)(boxes, scores)
    soft = DetectionDecoder(max_detections=2, iou_threshold=0.5, score_threshold=0.01, soft_nms_sigma=0.5)(
        boxes, scores)
    assert int(hard["num_detections"][0]) == 1
    iou = 81 / 119
    np.testing.assert_allclose(soft["scores"][0], [0.9, 0.8 * np.exp(-iou**2 / (2 * 0.5))], rtol=1e-5)


def test_empty_when_nothing_passes_the_threshold():
    boxes, scores = _random_case(np.random.default_rng(1), 2, 10, 2)
    out = DetectionDecoder(max_detections=5, score_threshold=0.99)(boxes, scores * 0.5)
    np.testing.assert_array_equal(out["num_detections"], [0, 0])
    assert out["boxes"].shape == (2, 5, 4) and np.all(out["classes"].numpy() == -1)


def test_runs_in_a_tf_function_with_unknown_batch_and_count():
    decoder = DetectionDecoder(max_detections=7)
    fn = tf.function(decoder.call, input_signature=[tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None, 2])])
    boxes, scores = _random_case(np.random.default_rng(2), 3, 12, 2)
    out = fn(boxes, scores)
    assert out["boxes"].shape == (3, 7, 4) and out["num_detections"].shape == (3,)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="max_detections"):
        DetectionDecoder(max_detections=0)
    with pytest.raises(ValueError, match="iou_threshold"):
        DetectionDecoder(iou_threshold=1.5)
    with pytest.raises(ValueError, match="box_weights"):
        DetectionDecoder(box_weights=(1, 2))
    with pytest.raises(ValueError, match="per-class score thresholds"):
        DetectionDecoder(score_threshold=[0.1, 0.2])(np.zeros((1, 3, 4), np.float32), np.zeros((1, 3, 3), np.float32))


def test_config_and_serialization_round_trip(tmp_path):
    decoder = decoder_from_config(DetectionConfig(max_detections=9, iou_threshold=0.6), box_weights=(10, 10, 5, 5))
    assert decoder.max_detections == 9 and decoder.box_weights == [10.0, 10.0, 5.0, 5.0]
    boxes, scores = _random_case(np.random.default_rng(3), 2, 16, 3)

    def model_around(layer):
        box_input, score_input = keras.Input((16, 4)), keras.Input((16, 3))
        return keras.Model([box_input, score_input], layer(box_input, score_input))

    assert_serialization_round_trip(
        DetectionDecoder, {"max_detections": 6, "score_threshold": [0.2, 0.3, 0.4], "soft_nms_sigma": 0.3},
        [boxes, scores], build_model=model_around, tmp_path=tmp_path,
    )
