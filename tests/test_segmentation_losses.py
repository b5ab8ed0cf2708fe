"""Segmentation losses: cross entropy and Dice against hand-worked values and a plain NumPy reference."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvision.config import LossConfig
from tfvision.losses import SegmentationLoss, build_segmentation_loss, dice_loss, softmax_cross_entropy


def np_cross_entropy(labels, logits, class_weights=None, ignore_label=255):
    """Weighted mean of -log softmax(logits)[label] over the pixels whose label is not ignored."""
    logits = logits.astype(np.float64)
    valid = labels != ignore_label
    safe = np.where(valid, labels, 0)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    weight = valid * (1.0 if class_weights is None else np.asarray(class_weights)[safe])
    return 0.0 if weight.sum() == 0 else float((ce * weight).sum() / weight.sum())


def np_dice(labels, logits, class_weights=None, ignore_label=255, smooth=1.0):
    """1 - mean over classes of (2 |P.T| + s) / (|P| + |T| + s), sums over every counted pixel."""
    num_classes = logits.shape[-1]
    valid = (labels != ignore_label)[..., None]
    exp = np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True))
    probs = exp / exp.sum(-1, keepdims=True) * valid
    onehot = (np.where(labels == ignore_label, 0, labels)[..., None] == np.arange(num_classes)) * valid
    axes = tuple(range(labels.ndim))
    dice = (2 * (probs * onehot).sum(axes) + smooth) / (probs.sum(axes) + onehot.sum(axes) + smooth)
    weights = np.ones(num_classes) if class_weights is None else np.asarray(class_weights, np.float64)
    return float(1 - (weights * dice).sum() / weights.sum())


def random_case(seed, shape=(2, 5, 6), num_classes=4, ignore_fraction=0.3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, shape + (num_classes,)).astype(np.float32)
    labels = rng.integers(0, num_classes, shape).astype(np.int32)
    labels[rng.random(shape) < ignore_fraction] = 255
    return labels, logits


# Two counted pixels and one ignored, as [1, 1, 3]:
#   pixel 0: logits (0, 0), label 1       -> ce = ln 2
#   pixel 1: logits (ln 3, 0), label 0    -> p(0) = 3 / 4, ce = ln(4 / 3)
#   pixel 2: logits (9, -9), label 255    -> ignored
HAND_LABELS = np.array([[[1, 0, 255]]], np.int32)
HAND_LOGITS = np.array([[[[0.0, 0.0], [math.log(3.0), 0.0], [9.0, -9.0]]]], np.float32)


def test_cross_entropy_hand_worked():
    # Unweighted: the mean over the two counted pixels; the ignored one does not count in the divisor.
    expected = (math.log(2) + math.log(4 / 3)) / 2
    assert float(softmax_cross_entropy(HAND_LABELS, HAND_LOGITS)) == pytest.approx(expected, rel=1e-6)
    # Class weights (3, 1): pixel 1 (class 0) weighs 3, pixel 0 (class 1) weighs 1; divided by 3 + 1.
    expected = (1 * math.log(2) + 3 * math.log(4 / 3)) / 4
    got = softmax_cross_entropy(HAND_LABELS, HAND_LOGITS, class_weights=(3.0, 1.0))
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_dice_hand_worked():
    # One pixel, logits (0, 0) -> p = (.5, .5), label 0 -> t = (1, 0), smooth 1:
    # class 0: (2 * .5 + 1) / (.5 + 1 + 1) = 0.8; class 1: (0 + 1) / (.5 + 0 + 1) = 2 / 3; loss = 1 - 11 / 15.
    labels = np.array([[[0]]], np.int32)
    logits = np.zeros((1, 1, 1, 2), np.float32)
    assert float(dice_loss(labels, logits)) == pytest.approx(4 / 15, rel=1e-6)
    # Class weights (1, 3): 1 - (0.8 + 3 * 2 / 3) / 4 = 0.3.
    assert float(dice_loss(labels, logits, class_weights=(1.0, 3.0))) == pytest.approx(0.3, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("class_weights", [None, (0.5, 1.0, 2.0, 4.0)])
def test_functions_match_numpy(seed, class_weights):
    labels, logits = random_case(seed)
    np.testing.assert_allclose(
        softmax_cross_entropy(labels, logits, class_weights), np_cross_entropy(labels, logits, class_weights),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        dice_loss(labels, logits, class_weights), np_dice(labels, logits, class_weights), rtol=1e-5
    )


@pytest.mark.parametrize("kind", ["cross_entropy", "dice", "cross_entropy+dice"])
@pytest.mark.parametrize("class_weights", [None, (0.5, 1.0, 2.0, 4.0)])
def test_keras_loss_matches_numpy(kind, class_weights):
    # Through keras.losses.Loss.__call__ (the sum_over_batch_size reduction), as model.fit uses it.
    labels, logits = random_case(7)
    expected = 0.0
    if "cross_entropy" in kind:
        expected += np_cross_entropy(labels, logits, class_weights)
    if "dice" in kind:
        expected += np_dice(labels, logits, class_weights)
    loss = SegmentationLoss(kind=kind, class_weights=class_weights)
    np.testing.assert_allclose(float(loss(labels, logits)), expected, rtol=1e-5)
    # Labels as [B, H, W, 1] and as floats (Keras hands y_true over as the loss dtype) give the same.
    np.testing.assert_allclose(float(loss(labels[..., None].astype(np.float32), logits)), expected, rtol=1e-5)


def test_ignored_pixels_contribute_nothing():
    labels, logits = random_case(3)
    other = logits.copy()
    other[labels == 255] = np.random.default_rng(0).normal(0, 50, other[labels == 255].shape)
    for kind in ("cross_entropy", "dice", "cross_entropy+dice"):
        loss = SegmentationLoss(kind=kind)
        np.testing.assert_allclose(float(loss(labels, other)), float(loss(labels, logits)), rtol=1e-6)
    # ... and the mean is over counted pixels only: the same as the loss of just those pixels in one row.
    valid = labels != 255
    flat = softmax_cross_entropy(labels[valid][None, None], logits[valid][None, None])
    np.testing.assert_allclose(float(softmax_cross_entropy(labels, logits)), float(flat), rtol=1e-6)


@pytest.mark.parametrize("kind", ["cross_entropy", "dice", "cross_entropy+dice"])
def test_all_ignored_is_zero_with_zero_gradient(kind):
    _, logits = random_case(4)
    labels = np.full(logits.shape[:-1], 255, np.int32)
    logits = tf.Variable(logits)
    with tf.GradientTape() as tape:
        value = SegmentationLoss(kind=kind, class_weights=(1.0, 2.0, 3.0, 4.0))(labels, logits)
    gradient = tape.gradient(value, logits)
    assert float(value) == 0.0
    np.testing.assert_array_equal(gradient.numpy(), 0.0)


def test_float16_logits_are_computed_in_float32():
    labels, logits = random_case(5)
    for kind in ("cross_entropy", "cross_entropy+dice"):
        value = SegmentationLoss(kind=kind)(labels, tf.constant(logits, tf.float16))
        assert value.dtype == tf.float32
        expected = np_cross_entropy(labels, logits.astype(np.float16).astype(np.float32))
        if "dice" in kind:
            expected += np_dice(labels, logits.astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(float(value), expected, rtol=1e-5)


def test_sample_weight_scales_each_pixel_share():
    # A per-pixel weight [B, H, W] multiplies that pixel's share of the batch's normalized sum; here image 0
    # counts twice and image 1 not at all, while the divisor stays the batch's counted pixels.
    labels, logits = random_case(6)
    valid = labels != 255
    sums = [np_cross_entropy(labels[i : i + 1], logits[i : i + 1]) * valid[i].sum() for i in range(2)]
    expected = (2.0 * sums[0] + 0.0 * sums[1]) / valid.sum()
    sample_weight = np.broadcast_to(np.array([2.0, 0.0])[:, None, None], labels.shape)
    np.testing.assert_allclose(float(SegmentationLoss()(labels, logits, sample_weight)), expected, rtol=1e-5)


def test_config_and_serialization_round_trip():
    loss = build_segmentation_loss(LossConfig(kind="cross_entropy+dice", class_weights=(1.0, 2.0, 3.0, 4.0)))
    assert (loss.kind, loss.class_weights, loss.ignore_label) == ("cross_entropy+dice", (1.0, 2.0, 3.0, 4.0), 255)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, SegmentationLoss)
    assert restored.get_config() == loss.get_config()
    labels, logits = random_case(8)
    assert float(restored(labels, logits)) == pytest.approx(float(loss(labels, logits)))


def test_errors_name_the_problem():
    labels, logits = random_case(9)
    with pytest.raises(ValueError, match="unknown kind"):
        SegmentationLoss(kind="focal")
    with pytest.raises(ValueError, match="3 class weights .* 4 channels"):
        SegmentationLoss(class_weights=(1.0, 1.0, 1.0))(labels, logits)
    with pytest.raises(ValueError, match="differ in axis 1"):
        SegmentationLoss()(labels[:, :3], logits)
    bad = labels.copy()
    bad[0, 0, 0] = 7  # neither a class of the 4 logits nor the ignore label
    with pytest.raises(tf.errors.InvalidArgumentError, match="label outside"):
        SegmentationLoss()(bad, logits)
